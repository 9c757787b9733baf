//! What `admin` may do through the local endpoint: what DSQL's admin may (own the database's
//! objects, create roles), and nothing that reaches the OS or the private PostgreSQL's
//! internal superuser. Also the settings that keep that PostgreSQL private, its connection
//! limit, and the refusal of a data dir an earlier dsql-pgx made.

mod common;

use common::{TestEndpoint, connect};
use dsql_pgx::local::postgres::INTERNAL_SUPERUSER;
use dsql_pgx::local::{Dialect, EndpointOptions, Limits, LocalEndpoint, PgOptions, PgServer};

/// The SQLSTATE and message of a statement that must fail.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let err = client
        .batch_execute(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql:?} succeeded as admin"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql:?}: expected a database error, got {err:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Fails unless `sql` is refused with PostgreSQL's permission error, 42501.
async fn assert_no_permission(client: &tokio_postgres::Client, sql: &str) {
    let (code, message) = refused(client, sql).await;
    assert_eq!(code, "42501", "{sql:?}: {message}");
}

async fn scalar(client: &tokio_postgres::Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// PostgreSQL's own privileges hold by themselves: with the dialect off (`--dialect
/// postgres`) nothing refuses these statements before PostgreSQL does.
#[tokio::test]
async fn admin_cannot_reach_the_os_or_the_superuser() {
    let ep = TestEndpoint::start_dialect(Dialect::Postgres).await;
    let admin = ep.connect("admin").await.unwrap();
    assert_eq!(
        scalar(
            &admin,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"
        )
        .await,
        "false"
    );
    admin
        .batch_execute("CREATE TABLE t (line text)")
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("out").display().to_string();
    let internal = INTERNAL_SUPERUSER;
    for sql in [
        "COPY (SELECT 1) TO PROGRAM 'id'".to_string(),
        "COPY t FROM PROGRAM 'id'".into(),
        format!("COPY t TO '{out}'"),
        "COPY t FROM '/etc/passwd'".into(),
        "SELECT pg_read_file('/etc/passwd')".into(),
        "SELECT pg_read_binary_file('/etc/passwd')".into(),
        "SELECT pg_ls_dir('.')".into(),
        "SELECT pg_stat_file('postgresql.conf')".into(),
        "SELECT lo_import('/etc/passwd')".into(),
        format!("SELECT lo_export(lo_from_bytea(0, 'x'), '{out}')"),
        "ALTER SYSTEM SET listen_addresses = '*'".into(),
        "SELECT pg_reload_conf()".into(),
        format!("SET ROLE {internal}"),
        format!("SET SESSION AUTHORIZATION {internal}"),
        format!("ALTER ROLE {internal} PASSWORD 'known'"),
        format!("DROP ROLE {internal}"),
        "GRANT pg_execute_server_program TO admin".into(),
        "GRANT pg_read_server_files TO admin".into(),
        "GRANT pg_write_server_files TO admin".into(),
        "CREATE ROLE x IN ROLE pg_read_server_files".into(),
        "CREATE ROLE x IN ROLE pg_execute_server_program".into(),
        "CREATE ROLE x SUPERUSER".into(),
        "ALTER ROLE admin SUPERUSER".into(),
        "ALTER ROLE admin BYPASSRLS".into(),
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'".into(),
        "CREATE FUNCTION f() RETURNS int LANGUAGE internal AS 'pg_backend_pid'".into(),
        "LOAD 'dblink'".into(),
        "ALTER EVENT TRIGGER dsql_pgx_refuse_create_extension DISABLE".into(),
        "DROP EVENT TRIGGER dsql_pgx_refuse_create_extension".into(),
        "CREATE EVENT TRIGGER mine ON ddl_command_start EXECUTE FUNCTION nothing()".into(),
        "SET session_replication_role = replica".into(),
        "ALTER DATABASE postgres SET session_preload_libraries = 'x'".into(),
        "CREATE TABLESPACE ts LOCATION '/tmp'".into(),
        "CREATE SUBSCRIPTION s CONNECTION 'host=/nonexistent' PUBLICATION p WITH (connect = false)"
            .into(),
    ] {
        assert_no_permission(&admin, &sql).await;
    }

    // Trusted extensions (a database owner may create them in PostgreSQL 15): DSQL's answer.
    for sql in [
        "CREATE EXTENSION pgcrypto",
        "CREATE EXTENSION IF NOT EXISTS dblink",
    ] {
        assert_eq!(
            refused(&admin, sql).await,
            (
                "0A000".to_string(),
                "unsupported statement: CreateExtension".to_string()
            ),
            "{sql}"
        );
    }

    // Grantable predefined roles give no way into the catalogs.
    admin
        .batch_execute("GRANT pg_write_all_data, pg_read_all_data TO admin")
        .await
        .unwrap();
    assert_no_permission(
        &admin,
        "UPDATE pg_authid SET rolsuper = true WHERE rolname = 'admin'",
    )
    .await;

    // A role admin creates, even WITH CREATEROLE, gets no further.
    admin
        .batch_execute("CREATE ROLE app2 WITH LOGIN CREATEROLE")
        .await
        .unwrap();
    ep.grant_iam("app2").await;
    let app2 = ep.connect("app2").await.unwrap();
    for sql in [
        "GRANT pg_execute_server_program TO app2",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "ALTER ROLE app2 SUPERUSER",
    ] {
        assert_no_permission(&app2, sql).await;
    }
    assert_eq!(
        scalar(
            &admin,
            "SELECT count(*)::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
             WHERE r.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files')"
        )
        .await,
        "0"
    );
    assert!(!std::path::Path::new(&out).exists());
    ep.stop().await;
}

#[tokio::test]
async fn admin_owns_the_database_and_manages_roles() {
    let ep = TestEndpoint::start().await;
    let admin = ep.connect("admin").await.unwrap();
    assert_eq!(
        scalar(
            &admin,
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'postgres'"
        )
        .await,
        "admin"
    );
    assert_eq!(
        scalar(
            &admin,
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'public'"
        )
        .await,
        "admin"
    );
    // One DDL statement per transaction, as on DSQL.
    for sql in [
        "CREATE SCHEMA app_data",
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "CREATE TABLE app_data.u (id int)",
        "CREATE INDEX ASYNC t_v ON t (v)",
        "CREATE VIEW tv AS SELECT v FROM t",
        "INSERT INTO t VALUES (1, 'one')",
        "CREATE ROLE app WITH LOGIN",
        "GRANT SELECT ON t TO app",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    ep.grant_iam("app").await;
    assert_eq!(scalar(&admin, "SELECT v FROM tv").await, "one");
    assert_eq!(
        scalar(&admin, "SHOW transaction_isolation").await,
        "repeatable read"
    );

    let app = ep.connect("app").await.unwrap();
    assert_eq!(scalar(&app, "SELECT v FROM t WHERE id = 1").await, "one");
    assert_eq!(
        scalar(&app, "SELECT sys.current_session_id()").await.len(),
        26
    );
    assert_eq!(
        scalar(&admin, "SELECT sys.current_session_id()")
            .await
            .len(),
        26
    );
    assert_no_permission(&app, "INSERT INTO t VALUES (2, 'two')").await;
    drop(app);

    admin
        .batch_execute("REVOKE SELECT ON t FROM app")
        .await
        .unwrap();
    admin.batch_execute("DROP ROLE app").await.unwrap();
    ep.stop().await;
}

#[tokio::test]
async fn a_startup_as_the_internal_superuser_is_refused_as_an_unknown_role() {
    let ep = TestEndpoint::start().await;
    // The role exists behind the endpoint; a correctly signed token does not open it.
    assert_eq!(
        scalar(&ep.admin_client().await, "SELECT current_user::text").await,
        INTERNAL_SUPERUSER
    );
    let unknown = ep.connect("nosuchrole").await.unwrap_err();
    let internal = ep.connect(INTERNAL_SUPERUSER).await.unwrap_err();
    let (unknown, internal) = (
        unknown.as_db_error().unwrap(),
        internal.as_db_error().unwrap(),
    );
    assert_eq!(internal.code(), unknown.code());
    assert_eq!(internal.code().code(), "28000");
    assert_eq!(
        internal.message(),
        format!("role \"{INTERNAL_SUPERUSER}\" does not exist")
    );
    // A bad token gets what any user with a bad token gets.
    let err = connect(&ep.config(INTERNAL_SUPERUSER, "not-a-token"), ep.tls(false))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().message(),
        format!("IAM authentication failed for user \"{INTERNAL_SUPERUSER}\"")
    );
    ep.stop().await;
}

#[tokio::test]
async fn the_connection_limit_is_the_endpoints_not_postgres() {
    let ep = TestEndpoint::start_with(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    let superuser = ep.admin_client().await;
    // Sized for the endpoint's limit (3), headroom (2) and the superuser's reserved slots (3).
    assert_eq!(scalar(&superuser, "SHOW max_connections").await, "8");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ep.connect("admin").await.unwrap());
    }
    let err = ep.connect("admin").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53300");
    assert_eq!(
        db.message(),
        "Unable to accept connection, too many open connections."
    );
    // The superuser still gets in.
    assert_eq!(scalar(&superuser, "SELECT 'ok'").await, "ok");
    assert_eq!(scalar(&ep.admin_client().await, "SELECT 'ok'").await, "ok");
    drop(open);
    ep.stop().await;
}

#[tokio::test]
async fn settings_from_alter_system_do_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EndpointOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let first = LocalEndpoint::start(opts.clone()).await.unwrap();
    let superuser = first.postgres().admin_client().await.unwrap();
    let hba_file = scalar(&superuser, "SHOW hba_file").await;
    // What the superuser (or anyone who once was one) could write to postgresql.auto.conf.
    for (setting, value) in [
        ("listen_addresses", "*"),
        ("hba_file", "/nonexistent/pg_hba.conf"),
        ("unix_socket_permissions", "0777"),
        ("max_connections", "1000"),
        ("superuser_reserved_connections", "0"),
        ("shared_preload_libraries", "pg_stat_statements"),
        ("session_preload_libraries", "auto_explain"),
    ] {
        superuser
            .batch_execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
            .await
            .unwrap();
    }
    drop(superuser);
    first.shutdown().await.unwrap();

    let second = LocalEndpoint::start(opts).await.unwrap();
    let superuser = second.postgres().admin_client().await.unwrap();
    for (setting, expected) in [
        ("listen_addresses", ""),
        ("hba_file", hba_file.as_str()),
        ("unix_socket_permissions", "0700"),
        // The default limit (10,000) capped at 500, plus headroom and reserved slots.
        ("max_connections", "628"),
        ("superuser_reserved_connections", "3"),
        ("shared_preload_libraries", ""),
        ("session_preload_libraries", ""),
        ("ssl", "off"),
    ] {
        assert_eq!(
            scalar(&superuser, &format!("SHOW {setting}")).await,
            expected,
            "{setting}"
        );
    }
    assert!(hba_file.ends_with("pg_hba.conf"), "{hba_file}");
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_data_dir_from_an_earlier_dsql_pgx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // What an earlier dsql-pgx left: a cluster whose bootstrap superuser is admin.
    let old = PgServer::start(PgOptions {
        superuser: "admin".into(),
        ..PgOptions::new(dir.path())
    })
    .await
    .unwrap();
    old.stop().await.unwrap();
    // Owned by us again, as a data dir of this version is; only pgdata/ stays the server's.
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt as _;
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::geteuid()),
            Some(nix::unistd::getegid()),
        )
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }

    let err = LocalEndpoint::start(EndpointOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await
    .expect_err("an endpoint on a data dir whose superuser is admin");
    let text = format!("{err:#}");
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.contains("earlier dsql-pgx")
            && text.contains("\"admin\"")
            && text.contains("remove it or choose another --data-dir"),
        "{text}"
    );
    assert!(
        err.chain()
            .any(|c| c.is::<dsql_pgx::settings::ConfigError>()),
        "{err:?}"
    );
}

/// What `admin` can make the default for its own database or role does not stop the next
/// start of a kept data dir, nor lock `admin` out: the endpoint's sessions override database
/// defaults with startup options, and every start resets `admin`'s connection limit.
#[tokio::test]
async fn admin_cannot_break_the_next_start_or_lock_itself_out() {
    let dir = tempfile::tempdir().unwrap();
    // With the dialect off: DSQL's refuses ALTER DATABASE before PostgreSQL sees it.
    let opts = EndpointOptions {
        data_dir: Some(dir.path().to_path_buf()),
        dialect: Dialect::Postgres,
        ..Default::default()
    };
    let first = LocalEndpoint::start(opts.clone()).await.unwrap();
    {
        let pool = admin_pool(&first).await;
        pool.get()
            .await
            .unwrap()
            .batch_execute(
                "ALTER DATABASE postgres SET default_transaction_read_only = on;
                 ALTER DATABASE postgres SET lock_timeout = 1;
                 ALTER ROLE admin CONNECTION LIMIT 0",
            )
            .await
            .unwrap();
    }
    first.shutdown().await.unwrap();
    let second = LocalEndpoint::start(opts).await.unwrap();
    let superuser = second.postgres().admin_client().await.unwrap();
    assert_eq!(
        scalar(
            &superuser,
            "SELECT rolconnlimit::text FROM pg_roles WHERE rolname = 'admin'"
        )
        .await,
        "-1"
    );
    // admin gets in again.
    let pool = admin_pool(&second).await;
    assert_eq!(
        scalar(&pool.get().await.unwrap(), "SELECT current_user::text").await,
        "admin"
    );
    drop(pool);
    second.shutdown().await.unwrap();
}

/// A pool of the endpoint's `admin`, with tokens signed by its credentials.
async fn admin_pool(ep: &LocalEndpoint) -> dsql_pgx::Pool {
    dsql_pgx::Pool::new(&ep.conn_settings("admin"))
        .await
        .unwrap()
}
