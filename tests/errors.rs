//! Script-facing contracts: every error is one `dsql-pgx: error:` line with a documented
//! exit code and no secret in it; conflicts are retried; a closed pipe is not an error;
//! Ctrl-C cancels and exits 130.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt as _;

use common::dsql::{
    assert_code, dsql_pgx, dsql_pgx_std, output, plain_flags, run_at, stderr, stdout,
    stop_with_sigterm,
};
use common::{TestEndpoint, TestPg};

/// Where a row's command runs.
#[derive(Clone, Copy)]
enum At {
    Nowhere,
    Endpoint,
    Plain,
    /// The plain PostgreSQL, but with IAM signing on.
    PlainIam,
}

struct Case {
    name: &'static str,
    at: At,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    fragment: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "missing endpoint",
        at: At::Nowhere,
        args: &["query", "select 1"],
        env: &[],
        code: 2,
        fragment: "set --endpoint or CLUSTER_ENDPOINT (or use --local)",
    },
    Case {
        name: "missing endpoint for a token (no --local there)",
        at: At::Nowhere,
        args: &["token"],
        env: &[],
        code: 2,
        fragment: "set --endpoint or CLUSTER_ENDPOINT\n",
    },
    Case {
        name: "unparsable region",
        at: At::Nowhere,
        args: &["token", "--endpoint", "db.example.com"],
        env: &[],
        code: 2,
        fragment: "set --region or REGION",
    },
    Case {
        name: "bad region",
        at: At::Nowhere,
        args: &[
            "token",
            "--endpoint",
            "db.example.com",
            "--region",
            "Mars 1",
        ],
        env: &[],
        code: 2,
        fragment: "is not a region name",
    },
    // `--data-dir /dev/null` cannot be created: were the flag accepted, `local` would fail
    // there at once instead of serving.
    Case {
        name: "local with a bad region",
        at: At::Nowhere,
        args: &[
            "local",
            "--region",
            "Bad Region!",
            "--data-dir",
            "/dev/null",
        ],
        env: &[],
        code: 2,
        fragment: "--region \"Bad Region!\" is not a region name such as us-east-1",
    },
    Case {
        name: "local with an ARN of no IAM role or user",
        at: At::Nowhere,
        args: &[
            "local",
            "--iam-arn",
            "arn:aws:sts::111122223333:assumed-role/r/s",
            "--data-dir",
            "/dev/null",
        ],
        env: &[],
        code: 2,
        fragment: "--iam-arn \"arn:aws:sts::111122223333:assumed-role/r/s\" is not an IAM role's or user's ARN such as arn:aws:iam::000000000000:role/dsql-pgx-local",
    },
    Case {
        name: "local with a zero connection age",
        at: At::Nowhere,
        args: &[
            "local",
            "--max-connection-age",
            "0s",
            "--data-dir",
            "/dev/null",
        ],
        env: &[],
        code: 2,
        fragment: "--max-connection-age must be above 0, got \"0s\"",
    },
    Case {
        name: "bad duration",
        at: At::Nowhere,
        args: &["token", "--endpoint", "localhost", "--region", "us-east-1"],
        env: &[("TOKEN_EXPIRES_IN", "soon")],
        code: 2,
        fragment: "--token-expires-in (or TOKEN_EXPIRES_IN): invalid duration",
    },
    Case {
        name: "lifetime over DSQL's limit",
        at: At::Endpoint,
        args: &["query", "select 1", "--max-lifetime", "2h"],
        env: &[],
        code: 2,
        fragment: "below DSQL's 60-minute connection limit",
    },
    Case {
        name: "unknown format",
        at: At::Nowhere,
        args: &["query", "--format", "xml", "select 1"],
        env: &[],
        code: 2,
        fragment: "invalid value 'xml' for '--format",
    },
    Case {
        name: "sslmode disable with IAM",
        at: At::Endpoint,
        args: &["query", "select 1", "--sslmode", "disable"],
        env: &[],
        code: 2,
        fragment: "DSQL requires TLS",
    },
    Case {
        name: "no AWS credentials",
        at: At::Nowhere,
        args: &[
            "token",
            "--endpoint",
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
        ],
        env: &[],
        code: 2,
        fragment: "no AWS credentials: set AWS_ACCESS_KEY_ID",
    },
    Case {
        name: "no AWS credentials, through the pool",
        at: At::Nowhere,
        args: &[
            "query",
            "select 1",
            "--endpoint",
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
        ],
        env: &[],
        code: 2,
        fragment: "no AWS credentials: set AWS_ACCESS_KEY_ID",
    },
    Case {
        name: "bad value from a variable",
        at: At::Endpoint,
        args: &["query", "select 1"],
        env: &[("DB_MAX_CONNS", "many")],
        code: 2,
        fragment: "invalid value 'many' for '--max-conns <N>' (or DB_MAX_CONNS)",
    },
    Case {
        name: "misspelt flag",
        at: At::Nowhere,
        args: &["query", "--max-con", "3", "select 1"],
        env: &[],
        code: 2,
        fragment: "(a similar argument exists: '--max-conns'); see 'dsql-pgx query --help'",
    },
    Case {
        name: "a missing required flag is named",
        at: At::Nowhere,
        args: &["local", "--access-key-id", "AKIDEXAMPLE"],
        env: &[],
        code: 2,
        fragment: "the following required arguments were not provided: <--secret-access-key <SECRET>|--secret-access-key-file <PATH>>; see 'dsql-pgx local --help'",
    },
    Case {
        name: "--database reaches a --local endpoint, which has only postgres",
        at: At::Nowhere,
        args: &["query", "--local", "--database", "other", "select 1"],
        env: &[],
        code: 3,
        fragment: "database \"other\" does not exist (SQLSTATE 3D000)",
    },
    Case {
        name: "a bad value names only the variable of its own command",
        at: At::Nowhere,
        args: &["local", "--port", "99999"],
        env: &[],
        code: 2,
        fragment: "invalid value '99999' for '--port <PORT>': 99999 is not in 0..=65535; see 'dsql-pgx local --help'",
    },
    Case {
        name: "a data dir too long for PostgreSQL's socket path",
        at: At::Nowhere,
        args: &[
            "local",
            "--port",
            "0",
            "--data-dir",
            "/nonexistent/dsql-pgx-test-a-data-dir-whose-socket-path-would-not-fit-in-a-unix-socket-address",
        ],
        env: &[],
        code: 2,
        fragment: "is too long: PostgreSQL's socket there, pgdata/.s.PGSQL.5432, would take 115 bytes of a Unix socket path's 107; choose a shorter path",
    },
    Case {
        name: "an empty variable counts as unset",
        at: At::Nowhere,
        args: &[
            "query",
            "select 1",
            "--endpoint",
            "localhost",
            "--region",
            "us-east-1",
            "--port",
            "1",
        ],
        env: &[("PGSSLROOTCERT", ""), ("DB_USE_IAM", "false")],
        code: 3,
        fragment: "cannot reach localhost:1",
    },
    Case {
        name: "csv for a command without rows",
        at: At::Nowhere,
        args: &["connect", "--format", "csv"],
        env: &[],
        code: 2,
        fragment: "invalid value 'csv' for '--format <FORMAT>' [possible values: table, json]; see 'dsql-pgx connect --help'",
    },
    Case {
        name: "csv for local",
        at: At::Nowhere,
        args: &["local", "--format", "csv"],
        env: &[],
        code: 2,
        fragment: "invalid value 'csv' for '--format <FORMAT>' [possible values: text, json]; see 'dsql-pgx local --help'",
    },
    Case {
        name: "no-header where there is no header",
        at: At::Nowhere,
        args: &["token", "--no-header"],
        env: &[],
        code: 2,
        fragment: "unexpected argument '--no-header' found",
    },
    Case {
        name: "refused host",
        at: At::Endpoint,
        args: &["query", "select 1", "--port", "1"],
        env: &[],
        code: 3,
        fragment: "cannot reach localhost:1",
    },
    Case {
        name: "wrong secret",
        at: At::Endpoint,
        args: &["query", "select 1"],
        env: &[(
            "AWS_SECRET_ACCESS_KEY",
            "wrong-secret-wrong-secret-wrong-secret00",
        )],
        code: 3,
        fragment: "IAM authentication failed for user \"admin\" (SQLSTATE 28000); check the system clock",
    },
    Case {
        name: "unknown role",
        at: At::Endpoint,
        args: &["query", "select 1", "--user", "nobody"],
        env: &[],
        code: 3,
        fragment: "role \"nobody\" does not exist (SQLSTATE 28000); create role nobody and grant it to your IAM identity (as admin: CREATE ROLE nobody WITH LOGIN; AWS IAM GRANT nobody TO '<IAM role ARN>')",
    },
    Case {
        name: "wrong CA",
        at: At::Endpoint,
        args: &[
            "query",
            "select 1",
            "--ca-file",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        env: &[],
        code: 3,
        fragment: "TLS certificate of localhost was rejected by the CA file",
    },
    Case {
        name: "SQL syntax error",
        at: At::Endpoint,
        args: &["query", "select from from"],
        env: &[],
        code: 1,
        fragment: "syntax error at or near \"from\" (SQLSTATE 42601, at character 13)",
    },
    Case {
        name: "unreadable file",
        at: At::Endpoint,
        args: &["query", "-f", "/nonexistent/q.sql"],
        env: &[],
        code: 2,
        fragment: "cannot read SQL file /nonexistent/q.sql",
    },
    Case {
        name: "count above pool size",
        at: At::Endpoint,
        args: &["connect", "--count", "50"],
        env: &[],
        code: 2,
        fragment: "--count 50 exceeds --max-conns 10",
    },
    Case {
        name: "bad password without IAM",
        at: At::Plain,
        args: &["query", "select 1"],
        env: &[("PGPASSWORD", "not-the-password")],
        code: 3,
        fragment: "password authentication failed for user \"admin\"",
    },
    Case {
        // The token went out with the startup; PostgreSQL asks for SCRAM instead.
        name: "IAM against plain PostgreSQL",
        at: At::PlainIam,
        args: &["query", "select 1"],
        env: &[],
        code: 3,
        fragment: "the server asked for SASL (SCRAM) authentication instead of the cleartext password sent with the startup, so it is not DSQL: connect to it with a password, not IAM (--no-iam)",
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_fix_with_documented_codes() {
    let ep = TestEndpoint::start().await;
    let pg = TestPg::start().await;
    let secrets = [
        ep.secret_access_key().to_string(),
        pg.password().to_string(),
    ];
    for case in CASES {
        let mut cmd = dsql_pgx();
        let mut extra: Vec<String> = Vec::new();
        match case.at {
            At::Nowhere => {}
            At::Endpoint => {
                cmd.envs(ep.env());
            }
            At::Plain => {
                cmd.env("PGSSLROOTCERT", pg.ca_path());
                extra = plain_flags(&pg);
            }
            At::PlainIam => {
                cmd.env("PGSSLROOTCERT", pg.ca_path())
                    .env("AWS_ACCESS_KEY_ID", ep.access_key_id())
                    .env("AWS_SECRET_ACCESS_KEY", ep.secret_access_key());
                let port = pg.port().to_string();
                extra = ["--endpoint", "localhost", "--region", "us-east-1", "--iam"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["--port".to_string(), port])
                    .collect();
            }
        }
        cmd.args(case.args)
            .args(&extra)
            .envs(case.env.iter().copied());
        let out = output(cmd).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(case.code), "{}: {err}", case.name);
        assert!(err.starts_with("dsql-pgx: error: "), "{}: {err}", case.name);
        assert!(
            err.contains(case.fragment),
            "{}: {err:?} lacks {:?}",
            case.name,
            case.fragment
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{}: {err}",
            case.name
        );
        let all = format!("{}{err}", stdout(&out));
        for secret in &secrets {
            assert!(
                !all.contains(secret.as_str()),
                "{} leaked a secret",
                case.name
            );
        }
        assert!(
            !all.contains("X-Amz-Signature"),
            "{} leaked a token",
            case.name
        );
        if case.at != At::Plain {
            assert_eq!(err.lines().count(), 1, "{}: one line: {err}", case.name);
        }
    }
}

impl PartialEq for At {
    fn eq(&self, other: &At) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connect_timeout_is_honoured() {
    // A listener that accepts TCP but never answers the TLS request.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let mut cmd = dsql_pgx();
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .args([
            "query",
            "select 1",
            "--endpoint",
            "localhost",
            "--region",
            "us-east-1",
        ])
        .args(["--port", &port, "--connect-timeout", "1s"]);
    let out = output(cmd).await;
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("timed out after 1s (during TLS and authentication)"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_is_retried_until_it_succeeds() {
    let ep = TestEndpoint::start().await;
    let admin = ep.connect("admin").await.unwrap();
    admin
        .batch_execute("create table acct (id int primary key, v int)")
        .await
        .unwrap();
    admin
        .batch_execute("insert into acct values (1, 0)")
        .await
        .unwrap();

    // Hold a transaction that updated the row. The CLI's transaction does not wait for it
    // (DSQL's optimistic concurrency): its COMMIT fails with OC000 and it retries, after a
    // backoff long enough (full jitter up to 2 s, then 4 s, 8 s) for the holder to commit.
    let holder = ep.connect("admin").await.unwrap();
    holder
        .batch_execute(
            "begin isolation level repeatable read; update acct set v = v + 1 where id = 1",
        )
        .await
        .unwrap();
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.envs(ep.env())
        .args([
            "query",
            "--transaction",
            "--retry-base",
            "2s",
            "--retry-max",
            "8s",
            "select v from acct where id = 1; update acct set v = v + 10 where id = 1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err = String::new();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            err.push_str(&line);
            err.push('\n');
            if line.contains("conflict on attempt 1/") {
                return;
            }
        }
    });
    first
        .await
        .expect("the CLI's first attempt conflicts without waiting");
    holder.batch_execute("commit").await.unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        err.push_str(&line);
        err.push('\n');
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("conflict on attempt 1/4 (SQLSTATE 40001, OC000)"),
        "{err}"
    );
    let v: i32 = admin
        .query_one("select v from acct where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 11, "both updates applied once");
    assert!(stdout(&out).contains("UPDATE 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_only_oc000_is_a_conflict_and_exhaustion_exits_4() {
    // A DO block stands in for the service's own wording; DSQL's dialect refuses DO, so
    // this endpoint speaks plain PostgreSQL.
    let ep = TestEndpoint::start_dialect(dsql_pgx::local::Dialect::Postgres).await;
    let raise = "do $$ begin raise exception 'change conflicts with another transaction, please retry: (OC000)'; end $$";
    let out = run_at(
        &ep,
        &["query", "--retries", "2", "--retry-base", "1ms", raise],
    )
    .await;
    assert_code(&out, 4);
    let err = stderr(&out);
    assert_eq!(err.matches("conflict on attempt").count(), 2, "{err}");
    assert!(err.contains("OC000"), "{err}");
    assert!(
        err.contains(
            "dsql-pgx: error: optimistic-concurrency conflict persisted after 3 attempt(s)"
        ),
        "{err}"
    );

    let out = run_at(&ep, &["query", "--no-retry", raise]).await;
    assert_code(&out, 4);
    assert!(!stderr(&out).contains("conflict on attempt"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unique_violation_is_not_retried() {
    let ep = TestEndpoint::start().await;
    let out = run_at(&ep, &["query", "create table u (id int primary key); insert into u values (1); insert into u values (1)"]).await;
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("SQLSTATE 23505"), "{err}");
    assert!(
        err.contains("DETAIL: Key (id)=(1) already exists."),
        "{err}"
    );
    assert!(!err.contains("conflict on attempt"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_quietly() {
    let pg = TestPg::start().await;
    let mut cmd = dsql_pgx_std();
    cmd.env("PGPASSWORD", pg.password())
        .env("PGSSLROOTCERT", pg.ca_path())
        .args([
            "query",
            "--format",
            "csv",
            "select generate_series(1, 500000) as n",
        ])
        .args(plain_flags(&pg))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "n");
        drop(lines); // `| head -1`
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "stderr: {}", status.1);
    assert!(!status.1.contains("error"), "quiet: {}", status.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_the_running_query_and_exits_130() {
    let ep = TestEndpoint::start().await;
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.envs(ep.env())
        .args(["query", "select pg_sleep(60)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let running = "query = 'select pg_sleep(60)' and state = 'active'";
    let started = "the query started";
    ep.wait_for_sessions(started, running, 1, Duration::from_secs(10))
        .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits promptly")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("dsql-pgx: error: interrupted"));
    // The cancel reached the server: the backend is no longer sleeping.
    let cancelled = "the query was cancelled";
    ep.wait_for_sessions(cancelled, running, 0, Duration::from_secs(5))
        .await;
}

/// Starts `dsql-pgx local` on a free port with its data in `dir`; returns the process and
/// the environment it printed, as a user's `eval` would set it.
async fn spawn_local(dir: &Path) -> (tokio::process::Child, Vec<(String, String)>) {
    let mut cmd = tokio::process::Command::from(dsql_pgx_std());
    cmd.args(["local", "--port", "0", "--data-dir"]).arg(dir);
    spawn_local_with(cmd).await
}

/// Spawns a prepared `dsql-pgx local` command and waits for the environment it prints.
async fn spawn_local_with(
    mut cmd: tokio::process::Command,
) -> (tokio::process::Child, Vec<(String, String)>) {
    cmd.stderr(Stdio::null());
    let (child, exports) = common::dsql::spawn_local(cmd).await;
    (child, common::dsql::exported(&exports))
}

/// The postmaster's PID, from `postmaster.pid` in the endpoint's data dir.
fn postmaster_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("pgdata").join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether `pid` still runs (a zombie waiting for its new parent to reap it does not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Runs `select current_user` with the environment `local` printed: the endpoint serves.
async fn assert_serves_admin(env: Vec<(String, String)>) {
    let mut query = dsql_pgx();
    query.envs(env).args([
        "query",
        "-q",
        "--format",
        "csv",
        "--no-header",
        "select current_user",
    ]);
    let out = output(query).await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "admin\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, env) = spawn_local(dir.path()).await;
    assert_serves_admin(env).await;

    let pid_file = dir.path().join("pgdata").join("postmaster.pid");
    let postmaster = postmaster_pid(dir.path());
    stop_with_sigterm(&mut child).await;
    assert!(!pid_file.exists(), "PostgreSQL shut down cleanly");
    assert!(!running(postmaster), "no PostgreSQL process survives");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_killed_with_sigkill_leaves_no_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, env) = spawn_local(dir.path()).await;
    assert_serves_admin(env).await;
    let postmaster = postmaster_pid(dir.path());
    assert!(running(postmaster));
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(postmaster) {
        assert!(
            Instant::now() < deadline,
            "postmaster {postmaster} outlived its killed endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The data dir is free again: a new endpoint starts on it and serves.
    let (_child, env) = spawn_local(dir.path()).await;
    assert_serves_admin(env).await;
}

/// The path most laptops take: no root, so PostgreSQL runs as the user running dsql-pgx
/// (the rest of the suite, as root in CI, runs it as the `postgres` user).
#[tokio::test(flavor = "multi_thread")]
async fn local_runs_postgres_as_a_normal_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // The binary runs from a copy the other user can reach (the checkout may be private).
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("dsql-pgx");
    std::fs::copy(env!("CARGO_BIN_EXE_dsql-pgx"), &bin).unwrap();
    let mut cmd = tokio::process::Command::from(common::dsql::scrubbed(&bin));
    cmd.args(["local", "--port", "0", "--data-dir"])
        .arg(dir.path());
    let euid = nix::unistd::geteuid();
    let runs_as = if euid.is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres OS user (Debian's postgresql package creates it)");
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .current_dir(dir.path());
        user.uid
    } else {
        euid
    };
    let (mut child, env) = spawn_local_with(cmd).await;
    assert_serves_admin(env).await;
    let owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap()
    };
    let postmaster = postmaster_pid(dir.path());
    assert_eq!(owner(child.id().unwrap()), runs_as.as_raw());
    assert_eq!(
        owner(postmaster as u32),
        runs_as.as_raw(),
        "PostgreSQL runs as the endpoint's own user"
    );

    stop_with_sigterm(&mut child).await;
    assert!(!running(postmaster), "no PostgreSQL process survives");
}

/// As root, PostgreSQL runs as `postgres`: a data dir below a directory that user cannot
/// enter (a home such as /root; here a fresh 0700 one) is refused with one line before
/// anything is created or chowned. Without root, PostgreSQL runs as ourselves and the same
/// data dir serves.
#[tokio::test(flavor = "multi_thread")]
async fn local_refuses_a_data_dir_postgres_cannot_reach() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.path().join("data");
    std::fs::create_dir(&data).unwrap();
    if !nix::unistd::geteuid().is_root() {
        let (mut child, env) = spawn_local(&data).await;
        assert_serves_admin(env).await;
        stop_with_sigterm(&mut child).await;
        return;
    }
    let before = std::fs::metadata(&data).unwrap();
    let mut cmd = dsql_pgx();
    cmd.args(["local", "--port", "0", "--data-dir"]).arg(&data);
    let out = output(cmd).await;
    assert_code(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "dsql-pgx: error: --data-dir {}: PostgreSQL runs as user postgres, which cannot enter {} (mode 700); choose a directory it can reach, such as /var/lib/dsql-pgx/local (what --persist uses)\n",
            data.display(),
            std::fs::canonicalize(private.path()).unwrap().display()
        )
    );
    assert_eq!(stdout(&out), "");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing created"
    );
    let after = std::fs::metadata(&data).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode()),
        "nothing chowned or chmodded"
    );
}

/// A second `local` on a data dir in use fails with one line naming the holder, before it
/// touches a file there; the first one keeps serving, its files as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_local_on_the_same_data_dir_is_refused() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (mut first, env) = spawn_local(dir.path()).await;
    let snapshot = || {
        ["credentials", "ca.key", "ca.pem", "pg_hba.conf"].map(|file| {
            let path = dir.path().join(file);
            let meta = std::fs::metadata(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            (file, meta.ino(), meta.mtime(), meta.mtime_nsec(), bytes)
        })
    };
    let before = snapshot();

    let mut second = tokio::process::Command::from(dsql_pgx_std());
    second
        .args(["local", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), second.output())
        .await
        .expect("the second local exits instead of serving")
        .unwrap();
    assert_code(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "dsql-pgx: error: --data-dir {} is in use by another dsql-pgx local (pid {})\n",
            dir.path().display(),
            first.id().unwrap()
        )
    );
    assert_eq!(stdout(&out), "");
    assert!(
        before == snapshot(),
        "the first endpoint's files were rewritten"
    );

    assert_serves_admin(env).await;
    stop_with_sigterm(&mut first).await;
}

/// Hostile but plausible inputs, each refused with one line and exit 2, never a panic: huge
/// values (an endpoint, a session token, a region, a role, a duration) and endpoint names that
/// are not host names, in every command that takes one.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_inputs_get_one_line_and_exit_2() {
    let endpoint = "a".repeat(70_000);
    let session_token = "b".repeat(120_000);
    let region = "r".repeat(10_000);
    let role = "u".repeat(64);
    let huge = "18446744073709551615s";
    let dsql = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws";
    let no_server = ["--region", "us-east-1", "--port", "1"];
    /// Arguments, extra environment, and what the error line says.
    type Refused<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let mut cases: Vec<Refused> = Vec::new();
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for command in [
        &["token"][..],
        &["query", "select 1"],
        &["connect"],
        &["bench", "--duration", "1s"],
        &["refresh-demo", "--refreshes", "1"],
    ] {
        let mut long = owned(command);
        long.extend(owned(&["--endpoint", &endpoint]));
        long.extend(owned(&no_server));
        cases.push((long, vec![], "... (70000 characters) is not a host name"));
        for name in ["a@b.example", "a#b", "db.example:5432", "a/b", "a b", "::1"] {
            let mut args = owned(command);
            args.extend(owned(&["--endpoint", name]));
            args.extend(owned(&no_server));
            cases.push((args, vec![], "is not a host name; give e.g."));
        }
    }
    for command in [&["token"][..], &["query", "select 1"], &["connect"]] {
        let mut args = owned(command);
        args.extend(owned(&["--endpoint", dsql, "--port", "1"]));
        cases.push((
            args,
            vec![("AWS_SESSION_TOKEN", session_token.as_str())],
            "the session token (AWS_SESSION_TOKEN) has 120000 characters",
        ));
    }
    cases.push((
        owned(&["token", "--endpoint", dsql, "--region", &region]),
        vec![],
        "... (10000 characters) is not a region name",
    ));
    cases.push((
        owned(&["token", "--endpoint", dsql, "--user", &role]),
        vec![],
        "is longer than a role name's 63 bytes",
    ));
    cases.push((
        owned(&["query", "select 1", "--local", "--user", &role]),
        vec![],
        "is longer than a role name's 63 bytes",
    ));
    for flag in ["--connect-timeout", "--idle-timeout", "--retry-max"] {
        let mut args = owned(&["query", "select 1", "--endpoint", "localhost"]);
        args.extend(owned(&no_server));
        args.extend(owned(&[flag, huge]));
        cases.push((args, vec![], "is longer than 100 years"));
    }
    for flag in ["--duration", "--warmup"] {
        let mut args = owned(&["bench", "--endpoint", "localhost"]);
        args.extend(owned(&no_server));
        args.extend(owned(&[flag, huge]));
        cases.push((args, vec![], "is longer than 100 years"));
    }
    cases.push((
        owned(&[
            "query",
            "select 1",
            "--endpoint",
            dsql,
            "--host",
            "a@b",
            "--port",
            "1",
        ]),
        vec![],
        "--host (or DB_HOST) \"a@b\" is neither a host name nor an IP address",
    ));
    cases.push((
        owned(&["local", "--hostname", "a@b", "--data-dir", "/dev/null"]),
        vec![],
        "--hostname \"a@b\" is not a DNS host name",
    ));
    for (args, env, fragment) in &cases {
        let mut cmd = dsql_pgx();
        cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .envs(env.iter().copied())
            .args(args);
        let out = output(cmd).await;
        let err = stderr(&out);
        let shown: Vec<String> = args.iter().map(|a| a.chars().take(40).collect()).collect();
        assert_eq!(out.status.code(), Some(2), "{shown:?}: {err}");
        assert!(err.starts_with("dsql-pgx: error: "), "{shown:?}: {err}");
        assert!(
            err.contains(fragment),
            "{shown:?}: {err:?} lacks {fragment:?}"
        );
        assert_eq!(err.lines().count(), 1, "{shown:?}: one line: {err}");
        assert!(err.len() < 400, "{shown:?}: a short line: {err}");
        assert!(!err.contains("panicked"), "{shown:?}: {err}");
        assert_eq!(stdout(&out), "", "{shown:?}: no token for a bad input");
    }
}

/// A stderr that cannot take the error line (a full disk, a closed pipe) loses the line, not
/// the exit code: no panic turns a usage error (2) into 101.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_stderr_keeps_the_exit_code() {
    type Sink = fn() -> Stdio;
    let sinks: [(&str, Sink); 2] = [
        ("a full disk", || {
            Stdio::from(std::fs::File::create("/dev/full").unwrap())
        }),
        ("a closed pipe", || {
            let (read, write) = nix::unistd::pipe().unwrap();
            drop(read);
            Stdio::from(write)
        }),
    ];
    for (what, sink) in sinks {
        for args in [
            &["token", "--endpoint", "a b", "--region", "us-east-1"][..],
            &["query", "--max-conns", "many", "select 1"],
        ] {
            let mut cmd = dsql_pgx_std();
            cmd.args(args).stdout(Stdio::null()).stderr(sink());
            let status = tokio::task::spawn_blocking(move || cmd.status().unwrap())
                .await
                .unwrap();
            assert_eq!(status.code(), Some(2), "{what}, {args:?}: {status:?}");
        }
    }
}

/// `2>&-`: the runtime opens /dev/null on a closed descriptor before `main`, so the socket of
/// the database connection never becomes fd 2 and the `-vv` diagnostics written while it is
/// open reach nobody (were they written into it, the session would break). A closed stdout
/// is /dev/null too; an unwritable one (a full disk) is one line and exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn closed_std_descriptors_never_reach_the_database() {
    use std::os::unix::process::CommandExt as _;
    let ep = TestEndpoint::start().await;
    let env = ep.env();
    let close = |fd: i32| {
        let mut cmd = dsql_pgx_std();
        cmd.envs(env.clone());
        // SAFETY: only close(2) runs between fork and exec, an async-signal-safe call.
        unsafe {
            cmd.pre_exec(move || {
                let _ = nix::libc::close(fd);
                Ok(())
            });
        }
        cmd
    };
    let run = async |mut cmd: std::process::Command| {
        cmd.stdout(Stdio::piped());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let mut cmd = close(2);
    cmd.args(["query", "-vv", "--format", "csv", "--no-header"])
        .arg("select 1; select pg_sleep(0.2); select 'still in sync'");
    let out = run(cmd).await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "1\n\n\"\"\n\nstill in sync\n");

    let mut cmd = close(2);
    cmd.args(["query", "-vv", "select from from"]);
    assert_code(&run(cmd).await, 1);

    let mut cmd = close(1);
    cmd.args(["query", "select 1"]).stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_code(&out, 0);

    let mut cmd = dsql_pgx_std();
    cmd.envs(ep.env())
        .args(["token"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_code(&out, 2);
    assert_eq!(
        stderr(&out),
        "dsql-pgx: error: cannot write the token to stdout: No space left on device (os error 28)\n"
    );
}

/// SIGTERM stops a `--local` command as Ctrl-C does: the running statement is cancelled, the
/// exit code is 130, and the ephemeral endpoint is shut down with its temporary directory
/// removed (TMPDIR is empty afterwards). `bench`, which runs no statement to cancel, stops the
/// same way.
#[tokio::test(flavor = "multi_thread")]
async fn signals_cancel_and_remove_the_local_temporary_directory() {
    use nix::sys::signal::Signal;
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncBufReadExt as _;
    let runs: [(&[&str], &str, Signal, &str); 3] = [
        (
            &["query", "select pg_sleep(60)"],
            "running a statement",
            Signal::SIGTERM,
            "dsql-pgx: error: interrupted by SIGTERM; the running statement was cancelled\n",
        ),
        (
            &["query", "select pg_sleep(60)"],
            "running a statement",
            Signal::SIGINT,
            "dsql-pgx: error: interrupted by SIGINT; the running statement was cancelled\n",
        ),
        (
            &["bench", "--duration", "60s", "--warmup", "0s"],
            "connection opened",
            Signal::SIGTERM,
            "dsql-pgx: error: interrupted by SIGTERM\n",
        ),
    ];
    for (args, ready, signal, last_line) in runs {
        let tmp = tempfile::tempdir().unwrap();
        // As root PostgreSQL runs as `postgres`, which must reach the data dir inside.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = tokio::process::Command::from(dsql_pgx_std());
        cmd.env("TMPDIR", tmp.path())
            .args(args)
            .args(["--local", "-vv"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let hit = line.contains(ready);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "{args:?}: never got to {ready:?}: {seen:#?}"
        );
        nix::sys::signal::kill(pid, signal).unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(30), async {
            let mut rest = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                rest.push(line);
            }
            (rest, child.wait().await.unwrap())
        })
        .await;
        let (rest, status) = rest.expect("exits long before the 60 s statement ends");
        let text = rest.join("\n") + "\n";
        assert_eq!(status.code(), Some(130), "{args:?} {signal}: {text}");
        assert!(text.ends_with(last_line), "{args:?} {signal}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{args:?} {signal}: left behind {left:?}");
    }
}
/// `local` with fewer descriptors than its advertised connections need says so on stderr;
/// when its PostgreSQL is killed it exits 3 within seconds, with one line naming the log.
#[tokio::test(flavor = "multi_thread")]
async fn local_warns_of_a_low_fd_limit_and_exits_3_when_postgres_dies() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let dir = tempfile::tempdir().unwrap();
    // The binary's clean environment, run through `sh -c 'ulimit -n 512 && exec ...'`:
    // `ulimit -n` lowers both the soft and the hard limit, so it cannot be raised again.
    let clean = dsql_pgx_std();
    let mut sh = std::process::Command::new("sh");
    for (key, value) in clean.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    sh.args(["-c", "ulimit -n 512 && exec \"$0\" \"$@\""])
        .arg(clean.get_program())
        .args(["local", "--port", "0", "--data-dir"])
        .arg(dir.path());
    let mut cmd = tokio::process::Command::from(sh);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut exports = String::new();
    while !exports.contains("export ") {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), out.read_line(&mut line))
            .await
            .expect("local prints its exports")
            .unwrap();
        assert!(n > 0, "local exited early");
        exports.push_str(&line);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster_pid(dir.path())),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("local exits once its PostgreSQL is gone")
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(
            "the open-file limit (512) allows about 0 of the 500 connections --max-connections advertises; raise it (ulimit -n) or lower --max-connections or --burst (the handshakes in progress at once)"
        )),
        "{err}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "dsql-pgx: error: the private PostgreSQL exited unexpectedly; see {} and start dsql-pgx local again",
                dir.path().join("postgres.log").display()
            )
            .as_str()
        ),
        "{err}"
    );
}
