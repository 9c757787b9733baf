//! End to end through the built binary: `query`, `connect`, `token` against a real
//! PostgreSQL (`--no-iam`, TLS with the harness's CA) and through the local endpoint
//! (IAM tokens checked).

mod common;

use common::dsql::{assert_code, dsql_pgx, output, plain_flags, run_at, run_plain, stderr, stdout};
use common::{TestEndpoint, TestPg};

#[tokio::test(flavor = "multi_thread")]
async fn query_prints_every_format() {
    let pg = TestPg::start().await;
    let sql = "select 1 as n, 'a,b' as s, true as b, null::text as z, '{\"k\":[1]}'::jsonb as j";

    let out = run_plain(&pg, &["query", sql]).await;
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("| n | s   | b | z | j"), "{text}");
    assert!(
        text.contains("| 1 | a,b | t |   | {\"k\": [1]} |"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("SELECT 1"), "{text}");
    assert!(
        stderr(&out).starts_with("session ") && stderr(&out).contains("; pool gen 1: "),
        "statistics go to stderr: {}",
        stderr(&out)
    );

    let out = run_plain(&pg, &["query", "--format", "csv", sql]).await;
    assert_code(&out, 0);
    assert_eq!(
        stdout(&out),
        "n,s,b,z,j\n1,\"a,b\",t,,\"{\"\"k\"\": [1]}\"\n"
    );

    let out = run_plain(
        &pg,
        &[
            "query",
            "--format",
            "tsv",
            "--no-header",
            "select 'x\ty' as a, 2 as b",
        ],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "x\\ty\t2\n");

    let out = run_plain(&pg, &["query", "--format", "json", sql]).await;
    assert_code(&out, 0);
    let row: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(
        row,
        serde_json::json!({"n": 1, "s": "a,b", "b": true, "z": null, "j": {"k": [1]}})
    );

    let out = run_plain(&pg, &["query", "-q", "--format", "csv", "select 1 as a"]).await;
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "", "-q prints results only");

    // JSON describes each statement for its types, pipelined with the run: writes run once,
    // and in a transaction a statement that fails reports its own error, not 25P02.
    let json_transaction = async |sql: &str| {
        run_plain(&pg, &["query", "--format", "json", "--transaction", sql]).await
    };
    let out = json_transaction(
        "create table jt (a int); insert into jt values (1) returning a; select count(*)::int as n from jt",
    )
    .await;
    assert_code(&out, 0);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [serde_json::json!({"a": 1}), serde_json::json!({"n": 1})]
    );
    let out = json_transaction("insert into jt values (2); select * from no_such_table").await;
    assert_code(&out, 1);
    assert!(stderr(&out).contains("42P01"), "{}", stderr(&out));
    let out = run_plain(
        &pg,
        &[
            "query",
            "--format",
            "csv",
            "--no-header",
            "select count(*) from jt",
        ],
    )
    .await;
    assert_eq!(stdout(&out), "1\n", "the failed transaction left nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_runs_statements_from_argument_file_and_stdin() {
    let pg = TestPg::start().await;
    let out = run_plain(
        &pg,
        &["query", "create table t (a int); insert into t values (1), (2); select sum(a) as s from t; drop table t"],
    )
    .await;
    assert_code(&out, 0);
    let text = stdout(&out);
    for tag in [
        "CREATE TABLE",
        "INSERT 0 2",
        "| 3 |",
        "SELECT 1",
        "DROP TABLE",
    ] {
        assert!(text.contains(tag), "{tag} missing in {text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "select 'from file' as src;\n-- trailing comment\n").unwrap();
    let out = run_plain(
        &pg,
        &["query", "--format", "csv", "-f", file.to_str().unwrap()],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "src\nfrom file\n");

    let mut cmd = dsql_pgx();
    cmd.env("PGPASSWORD", pg.password())
        .env("PGSSLROOTCERT", pg.ca_path())
        .args(["query", "--format", "csv", "-"])
        .args(plain_flags(&pg))
        .write_stdin("select 'from stdin' as src");
    let out = output(cmd).await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "src\nfrom stdin\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_errors_exit_1_with_sqlstate_and_position() {
    let pg = TestPg::start().await;
    let out = run_plain(&pg, &["query", "selec 1"]).await;
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.starts_with("dsql-pgx: error: "), "{err}");
    assert!(err.contains("syntax error at or near \"selec\""), "{err}");
    assert!(err.contains("SQLSTATE 42601"), "{err}");
    assert!(err.contains("at character 1"), "{err}");
    assert_eq!(stdout(&out), "");

    let out = run_plain(&pg, &["query", "select 1/0 as x"]).await;
    assert_code(&out, 1);
    assert!(stderr(&out).contains("SQLSTATE 22012"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verification_follows_sslmode() {
    let pg = TestPg::start().await;
    // The harness's CA (via PGSSLROOTCERT) verifies the server.
    let out = run_plain(
        &pg,
        &["query", "-q", "--format", "csv", "--no-header", "select 1"],
    )
    .await;
    assert_code(&out, 0);

    // Another CA: a clear message naming host, CA file and fix; exit 3.
    let other = TestPg::start().await;
    let out = run_plain(
        &pg,
        &[
            "query",
            "select 1",
            "--ca-file",
            other.ca_path().to_str().unwrap(),
        ],
    )
    .await;
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("TLS certificate of localhost was rejected by the CA file"),
        "{err}"
    );
    assert!(err.contains("--ca-file"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // The Mozilla roots do not know the harness's CA either.
    let mut cmd = dsql_pgx();
    cmd.env("PGPASSWORD", pg.password())
        .args(["query", "select 1"])
        .args(plain_flags(&pg));
    let out = output(cmd).await;
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("Mozilla/webpki roots"),
        "{}",
        stderr(&out)
    );

    // require encrypts without verifying.
    let out = run_plain(
        &pg,
        &[
            "query",
            "select 1",
            "--sslmode",
            "require",
            "--ca-file",
            other.ca_path().to_str().unwrap(),
        ],
    )
    .await;
    assert_code(&out, 0);
}

/// A JSON duration: a number of milliseconds with at most three decimals, no float noise.
fn assert_millis(value: &serde_json::Value) {
    let text = value.to_string();
    assert!(value.is_number(), "{text}");
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3 && !text.contains('e'), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_shows_distinct_connections_and_statistics() {
    let pg = TestPg::start().await;
    let out = run_plain(&pg, &["connect", "--count", "3", "--format", "json"]).await;
    assert_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let conns = doc["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 3);
    let mut ids: Vec<&str> = conns
        .iter()
        .map(|c| c["session_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct sessions");
    for conn in conns {
        assert_eq!(conn["tls_version"], "TLSv1.3");
        assert!(
            conn["server_version"]
                .as_str()
                .unwrap()
                .starts_with(char::is_numeric)
        );
        // Durations: milliseconds rounded to microseconds, the unit in the key.
        let timing = conn["timing"].as_object().expect("timing");
        let keys: Vec<&str> = timing.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["auth_ms", "tcp_ms", "tls_ms", "token_ms", "total_ms"],
            "{conn}"
        );
        for value in timing.values() {
            assert_millis(value);
        }
        assert!(conn["timing"]["total_ms"].as_f64().unwrap() > 0.0);
    }
    // Exactly the connections asked for, numbered as opened.
    assert_eq!(doc["pool"]["opened"], 3, "{doc}");
    let numbers: Vec<u64> = conns
        .iter()
        .map(|c| c["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);

    let out = run_plain(&pg, &["connect", "--count", "0"]).await;
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--count"), "{}", stderr(&out));

    let out = run_plain(&pg, &["connect"]).await;
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("session id") && text.contains("TLSv1.3"),
        "{text}"
    );
    assert!(
        stderr(&out).starts_with("pool gen 1: "),
        "the pool in one line on stderr: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn iam_through_the_local_endpoint() {
    let ep = TestEndpoint::start().await;
    let out = run_at(
        &ep,
        &[
            "query",
            "--format",
            "json",
            "select sys.current_session_id() as id, current_user as u",
        ],
    )
    .await;
    assert_code(&out, 0);
    let row: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(row["u"], "admin");
    let id = row["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);

    // Direct TLS negotiation (PostgreSQL 17 style, ALPN postgresql).
    let out = run_at(
        &ep,
        &[
            "connect",
            "--format",
            "json",
            "--ssl-negotiation",
            "direct",
            "--count",
            "2",
        ],
    )
    .await;
    assert_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for conn in doc["connections"].as_array().unwrap() {
        assert_eq!(conn["alpn"], true);
        assert!(conn["token_signed_at"].is_string());
        assert_millis(&conn["token_age_ms"]);
        assert_eq!(conn["session_id"].as_str().unwrap().len(), 26);
    }

    // A custom role gets a DbConnect token.
    let admin = ep.admin_client().await;
    admin.batch_execute("create role app login").await.unwrap();
    ep.grant_iam("app").await;
    let out = run_at(
        &ep,
        &[
            "query",
            "--user",
            "app",
            "--format",
            "csv",
            "--no-header",
            "select current_user",
        ],
    )
    .await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "app\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_tokens_explain_and_never_leak() {
    let ep = TestEndpoint::start().await;
    let secret = ep.secret_access_key().to_string();
    let out = run_at(&ep, &["query", "select 1", "--region", "eu-west-1"]).await;
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("IAM authentication failed for user \"admin\""),
        "{err}"
    );
    assert!(err.contains("SQLSTATE 28000"), "{err}");
    assert!(err.contains("check the system clock"), "{err}");
    assert!(
        !err.contains(&secret) && !err.contains("X-Amz-Signature"),
        "no secrets: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_works_for_psql_and_as_json() {
    let ep = TestEndpoint::start().await;
    let out = run_at(&ep, &["token"]).await;
    assert_code(&out, 0);
    let token = stdout(&out);
    assert!(token.ends_with('\n') && token.lines().count() == 1);
    assert!(
        token.starts_with("localhost/?Action=DbConnectAdmin&"),
        "{token}"
    );
    assert_eq!(stderr(&out), "");

    let out = run_at(
        &ep,
        &[
            "token",
            "--user",
            "app",
            "--format",
            "json",
            "--expires-in",
            "60",
        ],
    )
    .await;
    assert_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["action"], "DbConnect");
    assert_eq!(doc["hostname"], "localhost");
    assert_eq!(doc["region"], "us-east-1");
    assert!(doc["token"].as_str().unwrap().contains("X-Amz-Expires=60&"));
    assert!(doc["expires_at"].as_str().unwrap().ends_with('Z'));

    // psql, a client we did not write, accepts the token.
    let psql = tokio::process::Command::new("psql")
        .env("PGPASSWORD", token.trim_end())
        .env("PGSSLROOTCERT", ep.ca_path())
        .args(["-X", "-A", "-t", "-c", "select sys.current_session_id()"])
        .arg(format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=admin dbname=postgres sslmode=verify-full",
            ep.port()
        ))
        .output()
        .await
        .expect("psql is installed (Debian package postgresql-client)");
    assert!(
        psql.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim().len(), 26);

    // `token --url` is all psql needs: no environment, the token percent-encoded inside.
    let out = run_at(&ep, &["token", "--url"]).await;
    assert_code(&out, 0);
    let url = stdout(&out).trim_end().to_string();
    assert!(
        url.starts_with("postgresql://admin:localhost%2F%3FAction%3DDbConnectAdmin%26"),
        "{url}"
    );
    let mut psql = tokio::process::Command::new("psql");
    psql.env_clear()
        .args(["-X", "-A", "-t", "-c", "select current_user", &url]);
    let psql = psql.output().await.expect("psql");
    assert!(
        psql.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_never_shows_secret_values() {
    for args in [
        &["local", "--help"][..],
        &["query", "--help"],
        &["token", "--help"],
        &["--help"],
    ] {
        let mut cmd = dsql_pgx();
        cmd.env("DSQL_LOCAL_SECRET_ACCESS_KEY", "topsecret-value")
            .env("AWS_SECRET_ACCESS_KEY", "topsecret-value")
            .env("PGPASSWORD", "topsecret-value")
            .args(args);
        let out = output(cmd).await;
        assert_code(&out, 0);
        assert!(
            !stdout(&out).contains("topsecret"),
            "{args:?} shows a secret"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_adds_connect_and_query_timing_on_stderr() {
    let ep = TestEndpoint::start().await;
    let out = run_at(&ep, &["query", "-v", "--format", "csv", "select 1 as one"]).await;
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "one\n1\n", "timing never reaches stdout");
    let err = stderr(&out);
    for field in ["token_ms=", "tcp_ms=", "tls_ms=", "auth_ms=", "query_ms="] {
        assert!(err.contains(field), "{field} missing: {err}");
    }
    assert!(!err.contains(ep.secret_access_key()) && !err.contains("X-Amz-Signature"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_verbose_log_never_shows_credentials() {
    // The SDK's signer traces its canonical request, session token included: RUST_LOG=trace
    // (or naming the signer's target) must not bring it out.
    for filter in ["trace", "trace,aws_sigv4=trace"] {
        let mut cmd = dsql_pgx();
        cmd.env("RUST_LOG", filter)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "topsecret-value")
            .env("AWS_SESSION_TOKEN", "session-token-value")
            .args([
                "token",
                "--endpoint",
                "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
            ]);
        let out = output(cmd).await;
        assert_code(&out, 0);
        assert!(stdout(&out).contains("X-Amz-Security-Token=session-token-value"));
        let log = stderr(&out);
        assert!(log.lines().count() > 10, "{filter}: a trace log: {log}");
        for secret in ["topsecret-value", "session-token-value", "X-Amz-"] {
            assert!(
                !log.contains(secret),
                "{filter}: {secret} in the log: {log}"
            );
        }
    }
}

/// `bench --clients 1 --max-conns 1` works as given (the idle minimum follows `--max-conns`
/// when not set), and more clients than connections are told they wait.
#[tokio::test(flavor = "multi_thread")]
async fn bench_sizes_its_pool_as_given() {
    let ep = TestEndpoint::start().await;
    let one = [
        "bench",
        "--clients",
        "1",
        "--max-conns",
        "1",
        "--duration",
        "1s",
    ];
    let out = run_at(
        &ep,
        &[&one[..], &["--warmup", "0s", "--format", "json"]].concat(),
    )
    .await;
    assert_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["queries"].as_u64().unwrap() > 0, "{doc}");
    assert_eq!(doc["pool"]["total"], 1);
    let out = run_at(
        &ep,
        &[
            "bench",
            "--clients",
            "3",
            "--max-conns",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "0s",
        ],
    )
    .await;
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("some wait for one"),
        "{}",
        stderr(&out)
    );
}
