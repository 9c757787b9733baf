//! Clients users reach DSQL with, against `dsql-pgx local` as README tells them to run it
//! (`--env-file`, its DSQL-shaped default name): AWS's Python connector with psycopg, AWS's
//! Node connector over node-postgres and pgJDBC each connect, read
//! `sys.current_session_id()`, run a DDL transaction and then a DML transaction, and see a
//! badly signed token refused. The programs are in tests/clients/; `.ci/run` installs the
//! pinned libraries (a missing one fails, naming how to install it). The env file's own
//! rules (private, atomic, removed on exit, no link followed) are checked here too.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Output;

use common::clients::{EnvFileLocal, node_modules, pgjdbc_jar, program, python};
use common::dsql::{assert_code, dsql_pgx, output, stderr, stdout};

/// The lines every client program prints: `session <id>`, `rows 2`, then `refused <SQLSTATE>
/// <message>` for the token signed with the wrong key (`-` where the driver gives none).
fn assert_client_did_it_all(out: &Output, local: &EnvFileLocal, sqlstate: &str) {
    assert_client_did_it_all_and(out, local, sqlstate, &[]);
}

/// The same, with the `also` lines between `rows 2` and `refused`.
fn assert_client_did_it_all_and(out: &Output, local: &EnvFileLocal, sqlstate: &str, also: &[&str]) {
    let (out_text, err_text) = (stdout(out), stderr(out));
    assert!(
        out.status.success(),
        "client failed ({})\n--- stdout\n{out_text}\n--- stderr\n{err_text}\n--- local\n{}",
        out.status,
        local.log()
    );
    let lines: Vec<&str> = out_text.lines().collect();
    assert_eq!(lines.len(), 3 + also.len(), "{out_text}");
    let id = lines[0].strip_prefix("session ").expect("a session line");
    assert!(
        id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "a DSQL session id: {id}"
    );
    assert_eq!(lines[1], "rows 2", "{out_text}");
    assert_eq!(&lines[2..2 + also.len()], also, "{out_text}");
    let refused = lines[2 + also.len()]
        .strip_prefix("refused ")
        .expect("a refused line");
    let (state, message) = refused.split_once(' ').unwrap();
    assert_eq!(state, sqlstate, "{refused}");
    assert!(
        message.ends_with("IAM authentication failed for user \"admin\""),
        "{refused}"
    );
    let secret = local.var("AWS_SECRET_ACCESS_KEY");
    assert!(
        !out_text.contains(&secret) && !err_text.contains(&secret),
        "no secret printed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_python_connector_with_psycopg() {
    let python = python();
    let local = EnvFileLocal::start(&[]).await;
    let out = local
        .run(
            "exec \"$PYTHON\" \"$PROGRAM\"",
            &[
                ("PYTHON", &python),
                ("PROGRAM", &program("dsql_psycopg.py")),
            ],
        )
        .await;
    // libpq reports a refused login without its SQLSTATE.
    assert_client_did_it_all(&out, &local, "-");
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_node_postgres_connector() {
    let modules = node_modules();
    let local = EnvFileLocal::start(&[]).await;
    let out = local
        .run(
            "exec node \"$PROGRAM\"",
            &[
                ("NODE_PATH", &modules),
                ("PROGRAM", &program("node_postgres_connector.cjs")),
            ],
        )
        .await;
    assert_client_did_it_all(&out, &local, "28000");
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgjdbc() {
    let jar = pgjdbc_jar();
    let local = EnvFileLocal::start(&[]).await;
    // README's recipe: the name resolves through a hosts file of the JVM's own.
    let hosts = local.dir().join("hosts");
    let out = local
        .run(
            "echo \"$DB_HOST $CLUSTER_ENDPOINT\" >\"$HOSTS\"
             PGPASSWORD=$(\"$DSQL_PGX\" token) \
             DSQL_BAD_TOKEN=$(AWS_SECRET_ACCESS_KEY=wrong \"$DSQL_PGX\" token) \
             exec java -Djdk.net.hosts.file=\"$HOSTS\" -cp \"$JAR\" \"$PROGRAM\"",
            &[
                ("HOSTS", &hosts),
                ("JAR", &jar),
                ("PROGRAM", &program("Jdbc.java")),
            ],
        )
        .await;
    let conflict = "conflict 40001 ERROR: change conflicts with another transaction (OC000)";
    assert_client_did_it_all_and(&out, &local, "28000", &[conflict]);
    local.stop().await;
}

/// pgJDBC with a name without a dot sends no SNI: the refusal says so and names the fix.
#[tokio::test(flavor = "multi_thread")]
async fn pgjdbc_without_sni_is_told_why() {
    let jar = pgjdbc_jar();
    let local = EnvFileLocal::start(&["--hostname", "localhost"]).await;
    let out = local
        .run(
            "PGPASSWORD=$(\"$DSQL_PGX\" token) DSQL_BAD_TOKEN=x \
             exec java -cp \"$JAR\" \"$PROGRAM\"",
            &[("JAR", &jar), ("PROGRAM", &program("Jdbc.java"))],
        )
        .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("08P01") || err.contains("SNI"),
        "the SNI refusal reaches the client: {err}"
    );
    assert!(
        err.contains("this client sent none")
            && err.contains("run dsql-pgx local with a --hostname that has a dot"),
        "{err}"
    );
    local.stop().await;
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// The env file is ours and 0600, holds exactly what stdout would, leaves no temporary file,
/// replaces a link at its path without following it, and is gone after SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn env_file_is_private_atomic_and_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    let path = dir.path().join("env");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let mut cmd = tokio::process::Command::from(common::dsql::dsql_pgx_std());
    cmd.args(["local", "--port", "0", "--env-file"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    common::eventually("the env file", std::time::Duration::from_secs(90), || {
        assert!(child.try_wait().unwrap().is_none(), "local exited");
        std::future::ready(std::fs::symlink_metadata(&path).unwrap().is_file())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert_eq!(mode(&path), 0o600);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("unset AWS_SESSION_TOKEN AWS_PROFILE"));
    let export = lines.next().unwrap();
    assert!(
        export.starts_with(
            "export CLUSTER_ENDPOINT=dsqlpgxlocal00000000000000.dsql.us-east-1.on.aws REGION=us-east-1 DB_HOST=127.0.0.1 DB_PORT="
        ),
        "{export}"
    );
    for var in [
        " PGHOST=dsqlpgxlocal00000000000000.dsql.us-east-1.on.aws ",
        " PGHOSTADDR=127.0.0.1 ",
        " PGSSLMODE=verify-full ",
        " DSQL_JDBC_URL='jdbc:postgresql://dsqlpgxlocal00000000000000.dsql.us-east-1.on.aws:",
        " DSQL_IAM_ARN=arn:aws:iam::000000000000:role/dsql-pgx-local ",
        " AWS_SECRET_ACCESS_KEY=",
    ] {
        assert!(export.contains(var), "{var} in {export}");
    }
    assert_eq!(lines.next(), None);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

    let status = common::dsql::sigterm(&mut child).await;
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    use tokio::io::AsyncReadExt as _;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .await
        .unwrap();
    assert_eq!(rest, "", "nothing on stdout with --env-file");
    assert!(!path.exists(), "removed on exit");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
}

/// A directory others may write (not sticky) is refused before anything starts: they could
/// replace the file between our writing it and a script reading it.
#[tokio::test(flavor = "multi_thread")]
async fn env_file_in_a_directory_others_may_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("env");
    let mut cmd = dsql_pgx();
    cmd.args(["local", "--port", "0", "--env-file"]).arg(&path);
    let out = output(cmd).await;
    assert_code(&out, 2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "dsql-pgx: error: --env-file {}: its directory {} (owner ",
            path.display(),
            dir.path().display()
        )) && err.contains("mode 777) can be changed by others"),
        "{err}"
    );
    assert!(!path.exists());
    assert_eq!(stdout(&out), "");
}
