//! DSQL's map from IAM identities to roles through the real endpoint: a role logs in only once
//! admin ran `AWS IAM GRANT role TO '<arn>'` for the endpoint's identity, `AWS IAM REVOKE`
//! takes it back, `sys.iam_pg_role_mappings` shows the map, and only admin may change it.

mod common;

use common::TestEndpoint;
use dsql_pgx::local::Dialect;
use tokio_postgres::Client;

/// The SQLSTATE and message of a statement that must fail.
async fn refused(client: &Client, sql: &str) -> (String, String) {
    let err = client
        .batch_execute(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql:?} succeeded"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql:?}: expected a database error, got {err:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// The SQLSTATE and message with which a login as `user` is refused.
async fn login_refused(ep: &TestEndpoint, user: &str) -> (String, String) {
    let err = ep
        .connect(user)
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} logged in"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{user}: expected a database error, got {err:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// psql's output (`-A -t`, tags included) for `sql` as `user`, through the endpoint.
async fn psql(ep: &TestEndpoint, user: &str, sql: &str) -> String {
    let out = tokio::process::Command::new("psql")
        .env("PGPASSWORD", ep.token(user).await)
        .env("PGSSLROOTCERT", ep.ca_path())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "host={} hostaddr=127.0.0.1 port={} user={user} dbname=postgres sslmode=verify-full",
            ep.host(),
            ep.port()
        ))
        .output()
        .await
        .expect("psql is installed (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn not_granted(user: &str) -> (String, String) {
    (
        "28000".into(),
        format!("IAM authentication failed for user \"{user}\""),
    )
}

#[tokio::test]
async fn a_role_logs_in_only_while_granted_to_the_identity() {
    let ep = TestEndpoint::start().await;
    let arn = ep.endpoint().iam_arn().to_owned();
    assert_eq!(arn, dsql_pgx::local::DEFAULT_IAM_ARN);
    let admin = ep.connect("admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE app WITH LOGIN")
        .await
        .unwrap();
    // A valid DbConnect token, a role that exists, no grant: refused as DSQL refuses it.
    assert_eq!(login_refused(&ep, "app").await, not_granted("app"));
    // Granted to another identity only: still refused.
    let other = "arn:aws:iam::111122223333:role/someone-else";
    assert_eq!(
        psql(&ep, "admin", &format!("AWS IAM GRANT app TO '{other}'")).await,
        "AWS IAM GRANT\n"
    );
    assert_eq!(login_refused(&ep, "app").await, not_granted("app"));

    // Granted to the endpoint's identity (a second time is no error): in.
    for _ in 0..2 {
        assert_eq!(
            psql(&ep, "admin", &format!("aws iam grant APP to '{arn}';")).await,
            "AWS IAM GRANT\n"
        );
    }
    let app = ep.connect("app").await.unwrap();
    let me: String = app
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, "app");
    let rows = admin
        .query(
            "SELECT arn, pg_role_name::text, grantor_pg_role_name::text, iam_oid > 0,
                    pg_role_oid = 'app'::regrole::oid
               FROM sys.iam_pg_role_mappings ORDER BY arn",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, String, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let row = |a: &str| (a.to_owned(), "app".into(), "admin".into(), true, true);
    assert_eq!(seen, vec![row(&arn), row(other)]);

    // Revoked: the open session stays, a new login is refused.
    assert_eq!(
        psql(&ep, "admin", &format!("AWS IAM REVOKE app FROM '{arn}'")).await,
        "AWS IAM REVOKE\n"
    );
    assert_eq!(login_refused(&ep, "app").await, not_granted("app"));
    app.query_one("SELECT 1", &[]).await.unwrap();

    // A grant rolled back was never made; one in the extended protocol (a Parse) holds.
    admin
        .batch_execute(&format!("BEGIN; AWS IAM GRANT app TO '{arn}'; ROLLBACK"))
        .await
        .unwrap();
    assert_eq!(login_refused(&ep, "app").await, not_granted("app"));
    let n = admin
        .execute(&format!("AWS IAM GRANT app TO '{arn}'"), &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    ep.connect("app").await.unwrap();

    // A dropped role's grants do not pass to a new role of its name.
    drop(app);
    admin.batch_execute("DROP ROLE app").await.unwrap();
    admin
        .batch_execute("CREATE ROLE app WITH LOGIN")
        .await
        .unwrap();
    assert_eq!(login_refused(&ep, "app").await, not_granted("app"));
    ep.stop().await;
}

#[tokio::test]
async fn only_admin_changes_the_map_and_every_word_is_checked() {
    let ep = TestEndpoint::start().await;
    let arn = ep.endpoint().iam_arn().to_owned();
    let admin = ep.connect("admin").await.unwrap();
    admin
        .batch_execute("CREATE ROLE app WITH LOGIN CREATEROLE")
        .await
        .unwrap();
    ep.grant_iam("app").await;
    let app = ep.connect("app").await.unwrap();
    for sql in [
        "AWS IAM GRANT app TO 'arn:aws:iam::111122223333:role/x'".to_string(),
        format!("AWS IAM REVOKE app FROM '{arn}'"),
    ] {
        assert_eq!(refused(&app, &sql).await.0, "42501", "{sql}");
    }
    // The endpoint's own functions are nobody's to call, nor to hide in a body: the IAM
    // map's, and the row check's (calling it would reset the transaction's row count).
    for sql in [
        format!("SELECT sys.dsql_pgx_aws_iam('grant', 'app', '{arn}')"),
        format!("CALL sys.dsql_pgx_aws_iam_call('grant', 'app', '{arn}')"),
        "SELECT dsql_pgx_rows.modified(true)".to_string(),
        "SELECT * FROM \"dsql_pgx_rows\".modified(true)".to_string(),
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT dsql_pgx_rows.modified(true)'"
            .to_string(),
    ] {
        for client in [&app, &admin] {
            assert_eq!(refused(client, &sql).await.0, "42883", "{sql}");
        }
    }
    // A role may read the map, not the table behind it.
    app.query("SELECT * FROM sys.iam_pg_role_mappings", &[])
        .await
        .unwrap();
    assert_eq!(
        refused(&app, "SELECT * FROM dsql_pgx.iam_grants").await.0,
        "42501"
    );

    assert_eq!(
        refused(&admin, &format!("AWS IAM GRANT nosuch TO '{arn}'")).await,
        ("42704".into(), "role \"nosuch\" does not exist".into())
    );
    assert_eq!(
        refused(&admin, "AWS IAM GRANT app TO 'not-an-arn'").await,
        ("22023".into(), "invalid IAM ARN \"not-an-arn\"".into())
    );
    assert_eq!(
        refused(&admin, &format!("AWS IAM GRANT admin TO '{arn}'"))
            .await
            .0,
        "42501"
    );
    // With comments around it, still the statement.
    assert_eq!(
        psql(
            &ep,
            "admin",
            &format!("/* c */ AWS IAM GRANT app TO '{arn}' -- trailing")
        )
        .await,
        "AWS IAM GRANT\n"
    );
    // Not the statement's shape, or inside another statement: PostgreSQL's syntax error.
    for sql in [
        format!("AWS IAM GRANT app FROM '{arn}'"),
        format!("AWS IAM GRANT app, admin TO '{arn}'"),
        format!(
            "CREATE RULE r AS ON INSERT TO t DO INSTEAD (DELETE FROM t; AWS IAM GRANT app TO '{arn}'; SELECT 1)"
        ),
        format!(
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT pg_advisory_lock(1); AWS IAM GRANT app TO '{arn}'; END"
        ),
    ] {
        assert_eq!(refused(&admin, &sql).await.0, "42601", "{sql}");
    }
    // DDL in DSQL's transaction rules: one per transaction.
    assert_eq!(
        refused(
            &admin,
            &format!("BEGIN; CREATE TABLE t (a int); AWS IAM GRANT app TO '{arn}'")
        )
        .await,
        (
            "0A000".into(),
            "multiple ddl statements not supported in a transaction".into()
        )
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    ep.stop().await;
}

#[tokio::test]
async fn plain_postgresql_behind_iam_needs_no_grant() {
    let ep = TestEndpoint::start_dialect(Dialect::Postgres).await;
    ep.admin_client()
        .await
        .batch_execute("CREATE ROLE app LOGIN")
        .await
        .unwrap();
    ep.connect("app").await.unwrap();
    ep.stop().await;
}
