//! Faults a real cluster throws, under bench-like load, each bounded in time: PostgreSQL
//! restarting, connections reaching the endpoint's age limit, the connection-rate limit,
//! signing failing mid-run. And untrusted input to the endpoint's parsers: property tests
//! (the cargo-fuzz target in `fuzz/` runs the same entry points for longer).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use dsql_pgx::Pool;
use dsql_pgx::local::Limits;
use dsql_pgx::local::verify::TokenVerifier;
use dsql_pgx::local::wire::{self, FirstPacket, Startup};
use proptest::prelude::*;
use tokio::task::JoinHandle;

use common::dsql::{FlakyCredentials, assert_code, run_at, stderr, stdout};
use common::{TestEndpoint, TestPg, eventually, session_ids as ids};

/// What the workers saw: when each query succeeded, and when and how each one failed.
#[derive(Debug, Default)]
struct Tally {
    ok: Vec<Instant>,
    failed: Vec<(Instant, String)>,
}

/// Bench-like load through the library pool: workers check a connection out, run a
/// query and return it, as fast as they can, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(pool: &Pool, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| tokio::spawn(worker(pool.clone(), stop.clone())))
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and merges what they saw; a worker that panicked fails the test.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for worker in self.workers {
            let mut t = tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("a worker stops within 30 s")
                .expect("a worker never panics");
            tally.ok.append(&mut t.ok);
            tally.failed.append(&mut t.failed);
        }
        tally
    }
}

async fn worker(pool: Pool, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let outcome = match pool.get().await {
            Ok(conn) => conn
                .query_one("select 1::int4", &[])
                .await
                .map(drop)
                .map_err(|e| dsql_pgx::exit::chain(&e)),
            Err(e) => Err(dsql_pgx::exit::chain(&e)),
        };
        match outcome {
            Ok(()) => tally.ok.push(Instant::now()),
            Err(error) => {
                tally.failed.push((Instant::now(), error));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

fn code(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_load_errors_are_counted_and_the_pool_recovers() {
    let mut pg = TestPg::start().await;
    let mut settings = pg.settings();
    settings.pool.min_idle = 4;
    settings.pool.max_size = 8;
    settings.pool.connect_timeout = Duration::from_secs(2);
    let pool = Pool::new(&settings).await.unwrap();
    let before = ids(&pool);
    let load = Load::start(&pool, 8);
    eventually("the load runs", Duration::from_secs(30), || async {
        pool.stats().gets >= 50
    })
    .await;

    pg.stop_server().await;
    eventually(
        "the pool sees the server go",
        Duration::from_secs(30),
        || async { pool.stats().closed_broken >= 1 },
    )
    .await;
    pg.start_server().await;
    let back = Instant::now();
    // Not a wait for a condition: the window in which no query may fail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.finish().await;

    assert!(!tally.failed.is_empty(), "the restart was felt");
    let first_ok = tally
        .ok
        .iter()
        .filter(|&&t| t >= back)
        .min()
        .expect("queries succeed again after the restart");
    assert!(
        *first_ok - back < Duration::from_secs(2),
        "first success {:?} after the server was back",
        *first_ok - back
    );
    let late: Vec<&String> = tally
        .failed
        .iter()
        .filter(|(t, _)| *t > back + Duration::from_secs(2))
        .map(|(_, e)| e)
        .collect();
    assert!(late.is_empty(), "failures 2 s after recovery: {late:?}");
    assert!(
        ids(&pool).is_disjoint(&before),
        "every connection was replaced"
    );
    pg.stop().await;
}

/// The pool's lifetime below the endpoint's age limit (as the default 55 minutes is below
/// DSQL's 60): connections are replaced before the endpoint closes any in use. The margin
/// (0.6 s against 3 s) is wide enough for a query stalled on a loaded machine.
#[tokio::test(flavor = "multi_thread")]
async fn connections_reaching_the_endpoint_age_limit_are_replaced_without_failed_queries() {
    let ep = TestEndpoint::start_with(Limits {
        max_connection_age: Duration::from_secs(3),
        ..Limits::default()
    })
    .await;
    let mut settings = ep.settings("admin");
    settings.pool.max_lifetime = Duration::from_millis(600);
    let pool = Pool::new(&settings).await.unwrap();
    let before = ids(&pool);
    let load = Load::start(&pool, 8);
    eventually(
        "8 connections replaced for their age",
        Duration::from_secs(60),
        || async { pool.stats().closed_lifetime >= 8 && pool.stats().gets > 200 },
    )
    .await;
    let tally = load.finish().await;

    assert!(
        tally.failed.is_empty(),
        "{} failed queries, first: {:?}",
        tally.failed.len(),
        tally.failed.first()
    );
    assert!(tally.ok.len() > 100, "only {} queries", tally.ok.len());
    let stats = pool.stats();
    assert!(
        stats.closed_lifetime >= 8,
        "connections were replaced for their age: {stats:?}"
    );
    assert!(ids(&pool).is_disjoint(&before));
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_server_closed_while_idle_is_never_handed_out() {
    // A minute, not DSQL's hour: the pool signs its next token on the real clock (for 15
    // minutes), which must still be valid on the endpoint's.
    let age = Duration::from_secs(60);
    let ep = TestEndpoint::start_stepped(Limits {
        max_connection_age: age,
        ..Limits::default()
    })
    .await;
    let mut settings = ep.settings("admin");
    settings.pool.min_idle = 1;
    settings.pool.max_size = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let first = pool.get().await.unwrap().session_id().to_string();
    // A client of the same age, to see when the close has reached the clients.
    let canary = ep.connect("admin").await.unwrap();
    // The endpoint closes the idle connection at its age limit; the pool's own lifetime
    // (55 minutes, on the real clock) has not run out, so only the closed socket tells.
    ep.advance(age);
    let gone = "the endpoint closes both";
    ep.wait_for_sessions(gone, "usename = 'admin'", 0, Duration::from_secs(10))
        .await;
    eventually(gone, Duration::from_secs(10), || async {
        canary.is_closed()
    })
    .await;
    let conn = pool.get().await.unwrap();
    conn.query_one("select 1::int4", &[])
        .await
        .expect("a checked-out connection is open");
    assert_ne!(conn.session_id(), first);
    drop(conn);
    assert!(pool.stats().closed_broken >= 1, "{:?}", pool.stats());
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_refused_for_the_rate_limit_back_off_and_succeed() {
    let ep = TestEndpoint::start_stepped(Limits {
        rate_per_sec: 2,
        burst: 2,
        ..Limits::default()
    })
    .await;
    // The limit is real: once the burst is spent, a new connection gets 53400 (the clock
    // stands still: nothing refills).
    ep.connect("admin").await.unwrap();
    ep.connect("admin").await.unwrap();
    let refused = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&refused), "53400");

    // From here the endpoint's clock runs (about real time), refilling the bucket.
    let clock = ep.manual_clock();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            clock.advance(Duration::from_millis(50));
        }
    });

    let mut settings = ep.settings("admin");
    settings.pool.min_idle = 0;
    settings.pool.max_size = 6;
    let pool = Pool::new(&settings).await.unwrap();
    let conns = tokio::time::timeout(Duration::from_secs(20), pool.get_many(6))
        .await
        .expect("the pool grows within 20 s")
        .expect("every refused connect backs off and succeeds");
    for conn in &conns {
        conn.simple_query("select 1").await.unwrap();
    }
    assert_eq!(pool.stats().opened, 6);
    ticker.abort();
    drop(conns);
    ep.stop().await;
}

/// A refresh while signing fails (the role's session ended) is an error and retires
/// nothing: the open connections keep serving the load. Once credentials are back, a
/// refresh replaces them all. (Merged with refresh.rs's
/// `a_refresh_while_signing_fails_keeps_serving`, the same scenario without load.)
#[tokio::test(flavor = "multi_thread")]
async fn signing_failing_mid_run_leaves_open_connections_serving() {
    let ep = TestEndpoint::start().await;
    let credentials = FlakyCredentials::new(&ep);
    let mut settings = ep.settings_with("admin", credentials.source());
    settings.pool.min_idle = 4;
    settings.pool.max_size = 4;
    let pool = Pool::new(&settings).await.unwrap();
    let before = ids(&pool);
    assert_eq!(before.len(), 4);
    let generation = pool.generation();
    let load = Load::start(&pool, 4);
    eventually("the load runs", Duration::from_secs(30), || async {
        pool.stats().gets >= 20
    })
    .await;

    credentials.set(false);
    let error = pool.refresh().await.expect_err("signing must fail");
    assert!(
        matches!(error, dsql_pgx::Error::Credentials(_)),
        "{error:?}"
    );
    assert_eq!(pool.generation(), generation, "nothing retired");
    let during = Instant::now();
    let gets = pool.stats().gets;
    eventually(
        "queries go on while signing fails",
        Duration::from_secs(30),
        || async { pool.stats().gets >= gets + 20 },
    )
    .await;
    let tally = load.finish().await;

    assert!(tally.failed.is_empty(), "{:?}", tally.failed.first());
    assert!(
        tally.ok.iter().filter(|&&t| t > during).count() > 10,
        "queries kept succeeding while signing failed"
    );
    assert_eq!(ids(&pool), before, "the same connections kept serving");

    credentials.set(true);
    let report = pool.refresh().await.unwrap();
    assert!(before.is_disjoint(&ids(&pool)));
    assert!(report.overlap.is_empty());
    ep.stop().await;
}

/// Runs `bench --format json` with `clients`, `duration`, `warmup` and `extra` flags through
/// the endpoint; expects success and no progress output (stderr is not a terminal).
async fn bench_json(
    ep: &TestEndpoint,
    clients: &str,
    duration: &str,
    warmup: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--clients",
        clients,
        "--duration",
        duration,
        "--warmup",
        warmup,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = run_at(ep, &args).await;
    assert_code(&out, 0);
    assert_eq!(
        stderr(&out),
        "",
        "no progress when stderr is not a terminal"
    );
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_json_with_refreshes_and_no_errors() {
    let ep = TestEndpoint::start().await;
    let report = bench_json(&ep, "4", "3s", "500ms", &["--refresh-every", "1s"]).await;
    for key in [
        "qps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "pool",
        "duration_ms",
        "warmup_ms",
    ] {
        assert!(report.get(key).is_some(), "{key} in {report}");
    }
    // Durations are whole microseconds: milliseconds with at most three decimals.
    let ms = report["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 3000.0 && (ms * 1e3 - (ms * 1e3).round()).abs() < 1e-6,
        "{ms}"
    );
    assert!(report["qps"].as_f64().unwrap() > 0.0);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
    assert!(report["refreshes"].as_u64().unwrap() >= 1, "{report}");
    let p = |k: &str| report[k].as_f64().unwrap();
    assert!(p("p50_ms") <= p("p90_ms") && p("p90_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"));
    assert!(report["pool"]["generation"].as_u64().unwrap() >= 2);
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_threads_each_run_their_own_pool() {
    let ep = TestEndpoint::start().await;
    let extra = ["--threads", "2", "--refresh-every", "500ms"];
    let report = bench_json(&ep, "3", "2s", "200ms", &extra).await;
    assert_eq!(report["threads"], 2, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["queries"].as_u64().unwrap() > 0, "{report}");
    // Each thread's pool refreshes on its own timer (about 4 each in 2.2 s), and the
    // statistics add up both pools: together they opened at least their minimum idle
    // sizes (2 clients on one, 1 on the other). How many are open at the very end depends
    // on where the last refresh was.
    assert!(report["refreshes"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(report["connections_opened"], report["pool"]["opened"]);
    assert!(report["pool"]["opened"].as_u64().unwrap() >= 3, "{report}");
    let gets = report["pool"]["gets"].as_u64().unwrap();
    assert!(gets >= report["queries"].as_u64().unwrap(), "{report}");

    // More threads than clients: one thread per client, never an idle thread.
    let report = bench_json(&ep, "2", "300ms", "0s", &["--threads", "4"]).await;
    assert_eq!(report["threads"], 2, "{report}");

    let out = run_at(&ep, &["bench", "--threads", "0", "--duration", "1s"]).await;
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_tables_and_a_bad_statement() {
    let ep = TestEndpoint::start().await;
    let out = run_at(
        &ep,
        &[
            "bench",
            "--clients",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "0s",
        ],
    )
    .await;
    assert_code(&out, 0);
    let text = stdout(&out);
    for row in [
        "throughput",
        "latency p50 / p90 / p99 / max",
        "connections opened",
        "generation",
    ] {
        assert!(text.contains(row), "{row} in\n{text}");
    }

    let out = run_at(&ep, &["bench", "selec 1", "--duration", "1s"]).await;
    assert_code(&out, 1);
    assert!(stderr(&out).contains("SQLSTATE 42601"), "{}", stderr(&out));
    let out = run_at(&ep, &["bench", "select $1::int4", "--duration", "1s"]).await;
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("without $1, $2, ...\n"),
        "{}",
        stderr(&out)
    );
    ep.stop().await;
}

/// The promise's positive half: with stderr a terminal (a pseudo-terminal here), `bench`
/// shows a progress line each second, through warm-up and measuring, then erases it; the
/// JSON on stdout is untouched.
#[tokio::test(flavor = "multi_thread")]
async fn bench_shows_progress_when_stderr_is_a_terminal() {
    let ep = TestEndpoint::start().await;
    let (side, reader) = common::dsql::terminal(None);
    let mut cmd = common::dsql::dsql_pgx_std();
    cmd.envs(ep.env())
        .args([
            "bench",
            "--clients",
            "2",
            "--duration",
            "1500ms",
            "--warmup",
            "2500ms",
        ])
        .args(["--format", "json"])
        .stderr(std::process::Stdio::from(side));
    let (out, shown) = common::dsql::run_on_terminal(cmd, reader).await;
    assert_code(&out, 0);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(report["queries"].as_u64().unwrap() > 0, "{report}");
    for (what, needle) in [
        ("a warm-up line", "s warm-up, "),
        ("a measuring line", "s measuring, "),
        ("a rate", " q/s"),
    ] {
        assert!(shown.contains(needle), "{what} in {shown:?}");
    }
    assert!(
        shown.starts_with("\r\x1b[Kbench: 1/4 s warm-up, "),
        "the first line after a second, of 2.5 s warm-up and 1.5 s measuring: {shown:?}"
    );
    assert!(
        shown.ends_with("\r\x1b[K"),
        "the line erased at the end: {shown:?}"
    );
    ep.stop().await;
}

// ---- untrusted input: random and truncated startup packets and tokens ----

fn startup_body(params: &[(String, String)]) -> Vec<u8> {
    Startup {
        params: params.to_vec(),
    }
    .encode()[4..]
        .to_vec()
}

/// A verifier and a token it accepts (signed with the AWS SDK at a fixed time).
static SIGNED: LazyLock<(TokenVerifier, String, SystemTime)> = LazyLock::new(|| {
    let spec = common::TokenSpec {
        host: "localhost".into(),
        region: "us-east-1".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        expires_in: 900,
    };
    let token = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(spec.sign("admin"));
    let verifier = TokenVerifier::new("localhost", "us-east-1").with_key(
        spec.access_key_id.clone(),
        spec.secret_access_key.clone(),
        None,
    );
    (verifier, token, SystemTime::now())
});

/// A refusal a client can be shown: one short line.
fn clean(reason: &str) -> bool {
    !reason.is_empty() && !reason.contains('\n') && reason.len() <= 200
}

fn param() -> impl Strategy<Value = (String, String)> {
    ("[a-z_]{1,12}", "\\PC{0,16}")
        .prop_filter("no NUL", |(n, v)| !n.contains('\0') && !v.contains('\0'))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Cleanly: a packet is accepted only as what its code says it is, and a refusal is a
    /// one-line reason fit for the client's FATAL.
    #[test]
    fn random_first_packets_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let code = body.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
        match wire::parse_first_packet(&body) {
            Ok(FirstPacket::SslRequest) => prop_assert_eq!((code, body.len()), (Some(wire::SSL_REQUEST), 4)),
            Ok(FirstPacket::GssEncRequest) => prop_assert_eq!((code, body.len()), (Some(wire::GSSENC_REQUEST), 4)),
            Ok(FirstPacket::Cancel(_)) => prop_assert_eq!((code, body.len()), (Some(wire::CANCEL_REQUEST), 12)),
            Ok(FirstPacket::Startup(_)) => prop_assert_eq!(code, Some(wire::PROTOCOL_3_0)),
            Err(e) => prop_assert!(clean(&e.to_string()), "{e}"),
        }
        match wire::parse_password(b'p', &body) {
            Ok(password) => prop_assert_eq!([password.as_bytes(), b"\0"].concat(), body),
            Err(e) => prop_assert!(clean(&e.to_string()), "{e}"),
        }
    }

    #[test]
    fn startup_packets_parse_and_every_truncation_is_refused(
        params in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{0,16}", 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let params: Vec<(String, String)> = params.into_iter().collect();
        let body = startup_body(&params);
        prop_assert_eq!(
            wire::parse_first_packet(&body),
            Ok(FirstPacket::Startup(Startup { params }))
        );
        let cut = cut.index(body.len());
        prop_assert!(wire::parse_first_packet(&body[..cut]).is_err());
    }

    #[test]
    fn mutated_startup_packets_never_panic(
        params in proptest::collection::vec(param(), 0..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut body = startup_body(&params);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = wire::parse_first_packet(&body);
    }

    /// Bytes that end before the message they start: an error, within a bound (a stream
    /// that ends is never waited on). Bytes that hold a whole message may parse.
    #[test]
    fn truncated_streams_end_in_an_error_not_a_hang(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (first, message) = rt.block_on(async {
            let bound = Duration::from_secs(5);
            let mut r: &[u8] = &bytes;
            let first = tokio::time::timeout(bound, wire::read_first_packet(&mut r)).await;
            let mut r: &[u8] = &bytes;
            let message =
                tokio::time::timeout(bound, wire::read_message(&mut r, wire::MAX_PASSWORD_LEN)).await;
            (first, message)
        });
        let first = first.expect("read_first_packet is not a hang");
        let message = message.expect("read_message is not a hang");
        let length = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
        };
        // The length field counts itself: a first packet is `length` bytes, a message one more.
        if length(0).is_none_or(|len| bytes.len() < len) {
            prop_assert!(!matches!(first, Ok(Ok(_))), "{first:?}");
        }
        if length(1).is_none_or(|len| bytes.len() < len + 1) {
            prop_assert!(!matches!(message, Ok(Ok(_))), "{message:?}");
        }
    }

    #[test]
    fn random_tokens_are_refused(token in "\\PC{0,300}", user in "\\PC{0,20}", sni in proptest::option::of("[a-z.]{0,20}")) {
        let (verifier, _, now) = &*SIGNED;
        prop_assert!(verifier.verify(&user, &token, sni.as_deref(), *now).is_err());
    }

    #[test]
    fn truncated_and_mutated_tokens_never_panic_and_truncations_are_refused(
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let (verifier, token, now) = &*SIGNED;
        prop_assert!(verifier.verify("admin", token, Some("localhost"), *now).is_ok());
        let cut = cut.index(token.len());
        prop_assert!(verifier.verify("admin", &token[..cut], Some("localhost"), *now).is_err());
        let mut mutated: Vec<char> = token.chars().collect();
        let i = at.index(mutated.len());
        mutated[i] = replacement;
        let mutated: String = mutated.into_iter().collect();
        let _ = verifier.verify("admin", &mutated, Some("localhost"), *now);
    }
}

// ---- the library's own guarantees when its caller gives up or the server is gone ----

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_transaction_never_reaches_the_next_user() {
    let pg = TestPg::start().await;
    let mut settings = pg.settings();
    settings.pool.max_size = 1;
    settings.pool.min_idle = 1;
    let pool = Pool::new(&settings).await.unwrap();
    let first = ids(&pool);
    // The caller's timeout drops the unit between BEGIN and COMMIT.
    let unit = dsql_pgx::retry::transaction(&pool, async |tx| {
        tx.batch_execute("select pg_sleep(0.5)").await?;
        Ok(())
    });
    let cancelled = tokio::time::timeout(Duration::from_millis(150), unit).await;
    assert!(cancelled.is_err(), "the caller gave up first");
    // The one connection in the pool is not inside that transaction: outside a transaction
    // block, SAVEPOINT is an error.
    let conn = pool.get().await.unwrap();
    let probe = conn.batch_execute("savepoint probe").await;
    assert!(
        probe.is_err(),
        "the next user ran inside the abandoned transaction"
    );
    assert!(
        ids(&pool).is_disjoint(&first),
        "the connection was closed, not reused"
    );
    drop(conn);
    // A transaction that ends normally keeps its connection.
    let kept = ids(&pool);
    dsql_pgx::retry::transaction(&pool, async |tx| Ok(tx.batch_execute("select 1").await?))
        .await
        .unwrap();
    assert_eq!(ids(&pool), kept);
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_server_gone_refresh_fails_and_checkouts_say_why() {
    let mut pg = TestPg::start().await;
    let mut settings = pg.settings();
    settings.pool.max_size = 1;
    settings.pool.min_idle = 1;
    settings.pool.connect_timeout = Duration::from_secs(1);
    let pool = Pool::new(&settings).await.unwrap();
    pg.stop_server().await;
    // Every checkout names the real failure at once: none waits out the checkout timeout
    // (2 s here) to blame the pool's size.
    for attempt in 0..6 {
        let started = Instant::now();
        let error = pool.get().await.expect_err("no server, no connection");
        assert!(
            matches!(error, dsql_pgx::Error::Connect(_)),
            "checkout {attempt}: {error}"
        );
        assert!(
            error.to_string().starts_with("cannot reach"),
            "checkout {attempt}: {error}"
        );
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "checkout {attempt} waited {waited:?}"
        );
    }
    // A refresh that cannot open a single fresh connection is an error, not a report of none.
    let refreshed = pool.refresh().await;
    assert!(
        matches!(refreshed, Err(dsql_pgx::Error::Connect(_))),
        "{refreshed:?}"
    );
    pg.start_server().await;
    let report = pool.refresh().await.expect("the server is back");
    assert_eq!(report.opened.len(), 1, "{report:?}");
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spawned_transactions_that_conflict_are_retried_to_both_updates() {
    let ep = TestEndpoint::start().await;
    let pool = Pool::new(&ep.settings("admin")).await.unwrap();
    let setup = pool.get().await.unwrap();
    // One DDL statement per transaction, as on DSQL.
    setup
        .batch_execute("create table counter (id int primary key, v int)")
        .await
        .unwrap();
    setup
        .batch_execute("insert into counter values (7, 0)")
        .await
        .unwrap();
    drop(setup);
    // Both take their snapshot before either updates, so the second updater gets 40001 (the
    // endpoint's PostgreSQL runs repeatable read, as DSQL does) and must run again.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let spawn = |id: i32| {
        let (pool, barrier) = (pool.clone(), barrier.clone());
        // `async move`: the unit owns what it uses, so the retry future is Send and can be
        // spawned (a borrowing `async |tx|` is not, a limit of async closures today).
        tokio::spawn(async move {
            let mut conflicts = Vec::new();
            let mut attempts = 0;
            let policy = dsql_pgx::retry::RetryPolicy::default();
            let mut seen = |event: &dsql_pgx::retry::RetryEvent| {
                conflicts.push(event.conflict.sqlstate.clone())
            };
            let done = dsql_pgx::retry::run(&pool, &policy, true, &mut seen, async move |tx| {
                attempts += 1;
                tx.query_one("select v from counter where id = $1", &[&id])
                    .await?;
                if attempts == 1 {
                    barrier.wait().await;
                }
                tx.execute("update counter set v = v + 1 where id = $1", &[&id])
                    .await?;
                Ok(attempts)
            })
            .await;
            (done.unwrap(), conflicts)
        })
    };
    let (first, second) = (spawn(7), spawn(7));
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    let mut attempts = [a.0, b.0];
    attempts.sort();
    assert_eq!(
        attempts,
        [1, 2],
        "one ran once, the other again after its conflict"
    );
    let conflicts: Vec<String> = a.1.into_iter().chain(b.1).collect();
    assert_eq!(conflicts, ["40001"]);
    let row = pool
        .get()
        .await
        .unwrap()
        .query_one("select v from counter where id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "both updates are in");
    ep.stop().await;
}
