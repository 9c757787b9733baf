// pgJDBC (Debian's libpostgresql-jdbc-java) against the endpoint whose exports
// (`dsql-pgx local --env-file`) are in the environment, run as `java -cp postgresql.jar
// Jdbc.java` (single-file source). pgJDBC has no IAM signer: the token is the password,
// from `dsql-pgx token` (PGPASSWORD), and DSQL_BAD_TOKEN a token the endpoint must refuse.
//
// Prints `session <id>`, `rows <n>`, `conflict <SQLSTATE> <message>` (two writers of a row)
// and `refused <SQLSTATE> <message>` for tests/clients.rs.
// The URL is the exported DSQL_JDBC_URL: the endpoint's name, which Java sends as SNI
// (it sends none for an IP address or a name without a dot); the name resolves through
// `-Djdk.net.hosts.file` or an /etc/hosts entry (README).
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class Jdbc {
    static Connection connect(String token) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", "admin");
        props.setProperty("password", token);
        return DriverManager.getConnection(System.getenv("DSQL_JDBC_URL"), props);
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect(System.getenv("PGPASSWORD"))) {
            try (Statement s = c.createStatement();
                    ResultSet r = s.executeQuery("select sys.current_session_id()")) {
                r.next();
                System.out.println("session " + r.getString(1));
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) { // one DDL statement, alone in its transaction
                s.execute("create table jdbc_items (id int primary key, name text not null)");
            }
            c.commit();
            try (PreparedStatement p = c.prepareStatement("insert into jdbc_items values (?, ?)")) {
                for (int id = 1; id <= 2; id++) {
                    p.setInt(1, id);
                    p.setString(2, id == 1 ? "a" : "b");
                    p.executeUpdate();
                }
            }
            try (Statement s = c.createStatement()) {
                s.executeUpdate("update jdbc_items set name = 'c' where id = 2");
            }
            c.commit();
            try (Statement s = c.createStatement();
                    ResultSet r = s.executeQuery(
                            "select count(*) from jdbc_items where name in ('a', 'c')")) {
                r.next();
                System.out.println("rows " + r.getInt(1));
            }
            c.commit();
            // Optimistic concurrency as pgJDBC meets it (its BEGIN is an extended-protocol
            // one): both updates succeed, the second committer fails at COMMIT.
            try (Connection d = connect(System.getenv("PGPASSWORD"));
                    Statement s = c.createStatement();
                    Statement t = d.createStatement()) {
                d.setAutoCommit(false);
                s.executeUpdate("update jdbc_items set name = 'a' where id = 1");
                int n = t.executeUpdate("update jdbc_items set name = 'x' where id = 1");
                c.commit();
                try {
                    d.commit();
                    System.out.println("conflict none (" + n + " rows)");
                } catch (SQLException e) {
                    String message = e.getMessage().lines().findFirst().orElse("");
                    System.out.println("conflict " + e.getSQLState() + " " + message);
                }
            }
        }
        try (Connection c = connect(System.getenv("DSQL_BAD_TOKEN"))) {
            System.err.println("a bad token was accepted");
            System.exit(1);
        } catch (SQLException e) {
            String message = e.getMessage() == null ? "" : e.getMessage().lines().findFirst().orElse("");
            System.out.println("refused " + e.getSQLState() + " " + message);
        }
    }
}
