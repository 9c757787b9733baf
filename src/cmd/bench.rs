//! `dsql-pgx bench`: throughput and latency of one statement through the pool.
//!
//! Each client task loops: check a connection out of the pool, run the statement, return
//! the connection. That is the pool's real query path, not a connection held for the whole
//! run. tokio-postgres statements belong to one connection, so each task keeps the
//! statement it prepared on each connection, keyed by the connection number: a statement is
//! prepared once per (task, connection), and again only on a connection the task has not
//! used yet (one that replaced a broken or retired one).
//!
//! Every task owns its samples and counters; nothing on the query path takes a lock. The
//! samples are merged when the run ends.

use std::collections::HashMap;
use std::collections::btree_map::{BTreeMap, Entry};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;

use crate::cli::resolve;
use crate::cli::{BenchArgs, Format};
use crate::error::{ConfigError, Error};
use crate::latency::Latencies;
use crate::output::{self, Output};
use crate::pool::{ConnectError, Pool, PoolStats};
use crate::settings::ConnSettings;

use super::Session;

/// A task that sees more connection numbers than this forgets its statements and
/// prepares again: a bound for runs that replace connections for hours.
const STATEMENT_CACHE_MAX: usize = 64;
/// Pause after a failed query, so a down server is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Why one benchmark query failed.
enum Failure {
    Pool(Error),
    Query(tokio_postgres::Error),
}

impl Failure {
    /// Errors are grouped by SQLSTATE when there is one, else by a short kind.
    fn key(&self) -> String {
        let db_code = |e: &tokio_postgres::Error| e.code().map(|c| c.code().to_string());
        match self {
            Failure::Query(e) => db_code(e).unwrap_or_else(|| {
                if e.is_closed() {
                    "connection closed".into()
                } else {
                    "driver error".into()
                }
            }),
            Failure::Pool(Error::Connect(e) | Error::Tls(e) | Error::Authentication(e)) => {
                match &**e {
                    ConnectError::Rejected { error, .. } => {
                        db_code(error).unwrap_or_else(|| "connect: rejected".into())
                    }
                    ConnectError::Session { source, .. } => {
                        db_code(source).unwrap_or_else(|| "connect: session id".into())
                    }
                    ConnectError::Tcp { .. } => "connect: unreachable".into(),
                    ConnectError::Timeout { .. } => "connect: timed out".into(),
                    ConnectError::Auth(_) => "connect: signing failed".into(),
                    _ => "connect: closed".into(),
                }
            }
            Failure::Pool(Error::Credentials(_)) => "connect: signing failed".into(),
            Failure::Pool(Error::PoolTimeout(_)) => "pool: timed out".into(),
            Failure::Pool(Error::Config(_)) => "pool: configuration".into(),
            Failure::Pool(_) => "pool: error".into(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Pool(e) => crate::exit::chain(e),
            Failure::Query(e) => crate::exit::chain(e),
        }
    }

    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Pool(e) => e.into(),
            Failure::Query(e) => e.into(),
        }
    }
}

/// Failures of one kind: how many, and the first one's message.
#[derive(Debug, Clone)]
struct ErrorCount {
    count: u64,
    example: String,
}

/// What one client task did.
#[derive(Default)]
struct ClientReport {
    ok: u64,
    latencies: Latencies,
    errors: BTreeMap<String, ErrorCount>,
    first_error: Option<anyhow::Error>,
}

impl ClientReport {
    /// Records `count` failed queries (all of a pipelined round's failures share one error).
    fn record_error(&mut self, failure: Failure, count: u64) {
        let key = failure.key();
        match self.errors.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().count += count,
            Entry::Vacant(e) => {
                e.insert(ErrorCount {
                    count,
                    example: failure.message(),
                });
            }
        }
        if self.first_error.is_none() {
            self.first_error = Some(failure.into_error());
        }
    }

    fn merge(&mut self, mut other: ClientReport) {
        self.ok += other.ok;
        self.latencies.append(&mut other.latencies);
        for (key, theirs) in other.errors {
            match self.errors.entry(key) {
                Entry::Occupied(mut e) => e.get_mut().count += theirs.count,
                Entry::Vacant(e) => {
                    e.insert(theirs);
                }
            }
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// When a client measures and when it stops.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    until: Instant,
}

/// One round through the pool: check a connection out, run `depth` pipelined queries with
/// this task's statement for that connection, return it. Each query's latency is pushed as
/// it completes; the first failure is returned.
async fn one_round(
    pool: &Pool,
    sql: &str,
    depth: u32,
    statements: &mut HashMap<u64, Statement>,
    latencies: &mut Vec<Duration>,
) -> Result<(), Failure> {
    let conn = pool.get().await.map_err(Failure::Pool)?;
    let number = conn.number();
    if !statements.contains_key(&number) {
        let statement = conn.prepare(sql).await.map_err(Failure::Query)?;
        if statements.len() >= STATEMENT_CACHE_MAX {
            statements.clear();
        }
        statements.insert(number, statement);
    }
    let statement = &statements[&number];
    let started = Instant::now();
    let result = if depth == 1 {
        let result = conn.query(statement, &[]).await.map(drop);
        latencies.push(started.elapsed());
        result
    } else {
        let queries = (0..depth).map(|_| async {
            let result = conn.query(statement, &[]).await.map(drop);
            (result, started.elapsed())
        });
        let mut first_error = Ok(());
        for (result, elapsed) in futures_util::future::join_all(queries).await {
            match result {
                Ok(()) => latencies.push(elapsed),
                Err(error) if first_error.is_ok() => first_error = Err(error),
                Err(_) => {}
            }
        }
        first_error
    };
    if result.is_err() && conn.is_closed() {
        statements.remove(&number);
    }
    result.map_err(Failure::Query)
}

async fn client(
    pool: Pool,
    sql: Arc<str>,
    depth: u32,
    window: Window,
    done: Arc<AtomicU64>,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut statements = HashMap::new();
    let mut round = Vec::with_capacity(depth as usize);
    loop {
        let started = Instant::now();
        if started >= window.until {
            break;
        }
        round.clear();
        let outcome = one_round(&pool, &sql, depth, &mut statements, &mut round).await;
        if started >= window.measure_from {
            report.ok += round.len() as u64;
            done.fetch_add(round.len() as u64, Ordering::Relaxed);
            for latency in &round {
                report.latencies.push(*latency);
            }
        }
        if let Err(failure) = outcome {
            tracing::debug!("bench query failed: {}", failure.message());
            let count = match failure {
                // Queries that ran and failed; a checkout failure ran none and counts once.
                Failure::Query(_) => u64::from(depth).saturating_sub(round.len() as u64).max(1),
                Failure::Pool(_) => 1,
            };
            report.record_error(failure, count);
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    report
}

/// The result, as `--format json` prints it.
#[derive(Debug, Serialize)]
struct BenchJson {
    sql: String,
    clients: u32,
    pipeline: u32,
    threads: u32,
    duration_s: f64,
    warmup_s: f64,
    queries: u64,
    qps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Failed queries by SQLSTATE (or kind, when there is none).
    errors: BTreeMap<String, u64>,
    failed: u64,
    connections_opened: u64,
    refreshes: u64,
    failed_refreshes: u64,
    pool: PoolStats,
}

/// Prints a progress line on stderr every second, while stderr is a terminal.
async fn progress(window: Window, warmup: Duration, done: Arc<AtomicU64>) {
    let start = window.measure_from - warmup;
    let total = window.until - start;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last = 0;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let count = done.load(Ordering::Relaxed);
        let phase = if now < window.measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        crate::exit::eprint(format_args!(
            "\r\x1b[Kbench: {:.0}/{:.0} s {phase}, {} q/s",
            (now - start).as_secs_f64().min(total.as_secs_f64()),
            total.as_secs_f64(),
            count - last
        ));
        let _ = std::io::stderr().flush();
        last = count;
    }
}

/// What every thread's clients share.
#[derive(Clone)]
struct Plan {
    sql: Arc<str>,
    depth: u32,
    refresh_every: Option<Duration>,
    done: Arc<AtomicU64>,
}

/// What one thread did: its clients, its pool and its pool's refreshes.
struct ShardReport {
    clients: ClientReport,
    stats: PoolStats,
    refreshes: u64,
    failed_refreshes: u64,
}

/// Runs `clients` client tasks on `pool` (on the current runtime) through `window`.
async fn run_shard(pool: Pool, clients: u32, plan: &Plan, window: Window) -> ShardReport {
    let refresher = plan.refresh_every.map(|every| pool.spawn_refresher(every));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                pool.clone(),
                plan.sql.clone(),
                plan.depth,
                window,
                plan.done.clone(),
            ))
        })
        .collect();
    let mut report = ClientReport::default();
    for task in tasks {
        match task.await {
            Ok(done) => report.merge(done),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    let (mut refreshes, mut failed_refreshes) = (0, 0);
    if let Some(mut refresher) = refresher {
        while let Ok(outcome) = refresher.reports.try_recv() {
            match outcome {
                Ok(_) => refreshes += 1,
                Err(_) => failed_refreshes += 1,
            }
        }
    }
    ShardReport {
        clients: report,
        stats: pool.stats(),
        refreshes,
        failed_refreshes,
    }
}

/// A thread of its own (for `--threads` above 1): a one-thread runtime, a pool and
/// `clients` clients, as pgbench's `-j` gives each thread its own connections. It reports
/// on `ready` once its pool is open, starts when `go` brings the measuring window, and
/// sends its report on `done`; a dropped `go` stops it.
fn shard_thread(
    settings: ConnSettings,
    clients: u32,
    plan: Plan,
    ready: mpsc::UnboundedSender<anyhow::Result<()>>,
    go: oneshot::Receiver<Window>,
    done: oneshot::Sender<ShardReport>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(
                anyhow::Error::new(error).context("cannot start a runtime")
            ));
            return;
        }
    };
    runtime.block_on(async move {
        let pool = match Pool::new(&settings).await {
            Ok(pool) => pool,
            Err(error) => {
                let error = anyhow::Error::new(error).context(format!(
                    "cannot open the pool for {}",
                    settings.target.endpoint
                ));
                let _ = ready.send(Err(error));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        let Ok(window) = go.await else { return };
        let _ = done.send(run_shard(pool, clients, &plan, window).await);
    });
}

/// `clients` spread over `threads` as evenly as they go, the first threads taking one more.
fn split(clients: u32, threads: u32) -> Vec<u32> {
    let threads = threads.clamp(1, clients.max(1));
    (0..threads)
        .map(|i| clients / threads + u32::from(i < clients % threads))
        .collect()
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs, out: &Output) -> anyhow::Result<()> {
    let duration = resolve::duration(&args.duration, "--duration", None)?;
    let warmup = resolve::duration(&args.warmup, "--warmup", None)?;
    if duration.is_zero() {
        return Err(ConfigError("--duration must be longer than 0s".into()).into());
    }
    if args.clients == 0 {
        return Err(ConfigError("--clients must be at least 1".into()).into());
    }
    if args.threads == 0 {
        return Err(ConfigError("--threads must be at least 1".into()).into());
    }
    if args.pipeline == 0 || args.pipeline > 1024 {
        return Err(ConfigError("--pipeline must be between 1 and 1024".into()).into());
    }
    let refresh_every = match &args.refresh_every {
        Some(text) => {
            let every = resolve::duration(text, "--refresh-every", None)?;
            if every < Duration::from_millis(100) {
                return Err(ConfigError("--refresh-every must be at least 100ms".into()).into());
            }
            Some(every)
        }
        None => None,
    };
    let shares = split(args.clients, args.threads);
    let session = Session::open(&args.conn, Some(shares[0])).await?;
    let pool = session.pool.clone();
    let max_size = session.settings.pool.max_size;
    if shares[0] > max_size && !out.quiet {
        crate::exit::diag!(
            "bench: {} clients per thread share at most {max_size} connections; raise --max-conns to give each its own",
            shares[0]
        );
    }
    // Fail fast on SQL the server rejects, before any client starts.
    {
        let conn = pool.get().await?;
        let statement = conn
            .prepare(&args.sql)
            .await
            .context("cannot prepare the benchmark SQL")?;
        if !statement.params().is_empty() {
            return Err(ConfigError(format!(
                "the benchmark SQL takes {} parameter(s); give a statement without $1, $2, ...",
                statement.params().len()
            ))
            .into());
        }
    }

    let plan = Plan {
        sql: Arc::from(args.sql.as_str()),
        depth: args.pipeline,
        refresh_every,
        done: Arc::new(AtomicU64::new(0)),
    };
    // The other threads open their pools while this one keeps serving (an in-process
    // `--local` endpoint runs here); the clock starts when every pool is open.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut shards = Vec::with_capacity(shares.len() - 1);
    for (i, &clients) in shares.iter().enumerate().skip(1) {
        let mut settings = session.settings.clone();
        settings.pool.min_idle = clients.min(max_size);
        let (go_tx, go_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (plan, ready) = (plan.clone(), ready_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || shard_thread(settings, clients, plan, ready, go_rx, done_tx))
            .context("cannot start a benchmark thread")?;
        shards.push((go_tx, done_rx, thread));
    }
    drop(ready_tx);
    while let Some(opened) = ready_rx.recv().await {
        opened?;
    }

    let started = Instant::now();
    let window = Window {
        measure_from: started + warmup,
        until: started + warmup + duration,
    };
    let ticker = (out.stderr_is_terminal() && !out.quiet)
        .then(|| tokio::spawn(progress(window, warmup, plan.done.clone())));
    let mut waiting = Vec::with_capacity(shards.len());
    for (go, done, thread) in shards {
        let _ = go.send(window);
        waiting.push((done, thread));
    }
    let mut reports = vec![run_shard(pool.clone(), shares[0], &plan, window).await];
    for (done, thread) in waiting {
        let report = done.await;
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining a benchmark thread")?;
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
        reports.push(report.context("a benchmark thread stopped early")?);
    }
    let measured = Instant::now().saturating_duration_since(window.measure_from);
    if let Some(ticker) = ticker {
        ticker.abort();
        crate::exit::eprint(format_args!("\r\x1b[K"));
    }

    let mut total = ClientReport::default();
    let (mut refreshes, mut failed_refreshes) = (0, 0);
    let mut stats = Vec::with_capacity(reports.len());
    for shard in reports {
        total.merge(shard.clients);
        refreshes += shard.refreshes;
        failed_refreshes += shard.failed_refreshes;
        stats.push(shard.stats);
    }
    let stats = PoolStats::combined(stats);
    total.latencies.sort();
    let failed: u64 = total.errors.values().map(|e| e.count).sum();
    let report = BenchJson {
        sql: args.sql.clone(),
        clients: args.clients,
        pipeline: plan.depth,
        threads: shares.len() as u32,
        duration_s: measured.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        queries: total.ok,
        qps: if measured.is_zero() {
            0.0
        } else {
            (total.ok as f64 / measured.as_secs_f64() * 10.0).round() / 10.0
        },
        p50_ms: total.latencies.percentile_ms(0.50),
        p90_ms: total.latencies.percentile_ms(0.90),
        p99_ms: total.latencies.percentile_ms(0.99),
        max_ms: total.latencies.max_ms(),
        errors: total
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), v.count))
            .collect(),
        failed,
        connections_opened: stats.opened,
        refreshes,
        failed_refreshes,
        pool: stats,
    };
    let mut stdout = std::io::stdout().lock();
    print_report(&mut stdout, out, &report, &total.errors)?;
    stdout.flush()?;
    drop(stdout);
    drop(pool);
    session.close().await;
    match total.first_error {
        Some(error) if total.ok == 0 => Err(error.context("every benchmark query failed")),
        _ => Ok(()),
    }
}

fn print_report(
    stdout: &mut dyn Write,
    out: &Output,
    report: &BenchJson,
    errors: &BTreeMap<String, ErrorCount>,
) -> anyhow::Result<()> {
    if out.format == Format::Json {
        serde_json::to_writer(&mut *stdout, report)?;
        writeln!(stdout)?;
        return Ok(());
    }
    let rows = vec![
        vec!["sql".to_string(), report.sql.clone()],
        vec!["clients".to_string(), report.clients.to_string()],
        vec![
            "measured (warm-up)".to_string(),
            format!("{:.1} s ({:.1} s)", report.duration_s, report.warmup_s),
        ],
        vec!["queries".to_string(), report.queries.to_string()],
        vec!["throughput".to_string(), format!("{:.1} q/s", report.qps)],
        vec![
            "latency p50 / p90 / p99 / max".to_string(),
            format!(
                "{:.3} / {:.3} / {:.3} / {:.3} ms",
                report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms
            ),
        ],
        vec!["errors".to_string(), report.failed.to_string()],
        vec![
            "connections opened".to_string(),
            report.connections_opened.to_string(),
        ],
        vec![
            "refreshes (failed attempts)".to_string(),
            format!("{} ({})", report.refreshes, report.failed_refreshes),
        ],
    ];
    writeln!(stdout, "{}", out.table(&["bench", "value"], &rows))?;
    if !errors.is_empty() {
        let rows: Vec<Vec<String>> = errors
            .iter()
            .map(|(key, e)| vec![key.clone(), e.count.to_string(), e.example.clone()])
            .collect();
        writeln!(
            stdout,
            "{}",
            out.table(&["error (SQLSTATE)", "count", "first message"], &rows)
        )?;
    }
    if !out.quiet {
        writeln!(
            stdout,
            "{}",
            out.table(&["pool", "value"], &output::stats_rows(&report.pool))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_merge_counts_and_keep_the_first_example() {
        let mut a = ClientReport::default();
        a.errors.insert(
            "57P01".into(),
            ErrorCount {
                count: 2,
                example: "first".into(),
            },
        );
        a.ok = 3;
        let mut b = ClientReport::default();
        b.errors.insert(
            "57P01".into(),
            ErrorCount {
                count: 5,
                example: "second".into(),
            },
        );
        b.errors.insert(
            "connection closed".into(),
            ErrorCount {
                count: 1,
                example: "closed".into(),
            },
        );
        b.ok = 4;
        b.latencies.push(Duration::from_micros(250));
        a.merge(b);
        assert_eq!(a.ok, 7);
        assert_eq!(a.latencies.len(), 1);
        assert_eq!(a.errors["57P01"].count, 7);
        assert_eq!(a.errors["57P01"].example, "first");
        assert_eq!(a.errors["connection closed"].count, 1);
    }

    #[test]
    fn clients_are_split_evenly_over_threads() {
        assert_eq!(split(8, 1), vec![8]);
        assert_eq!(split(8, 2), vec![4, 4]);
        assert_eq!(split(7, 3), vec![3, 2, 2]);
        // Never a thread without clients.
        assert_eq!(split(2, 4), vec![1, 1]);
        for (clients, threads) in [(1, 1), (9, 4), (100, 7), (5, 5)] {
            let shares = split(clients, threads);
            assert_eq!(shares.iter().sum::<u32>(), clients);
            assert!(shares.iter().all(|&n| n >= 1));
            assert!(shares.first().unwrap() - shares.last().unwrap() <= 1);
        }
    }

    #[test]
    fn pool_failures_are_keyed_by_kind() {
        let timeout = Failure::Pool(Error::PoolTimeout(Duration::from_secs(1)));
        assert_eq!(timeout.key(), "pool: timed out");
        let unreachable = Failure::Pool(Error::Connect(Arc::new(ConnectError::Tcp {
            addr: "127.0.0.1:1".into(),
            phase: crate::pool::ConnectPhase::Tcp,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        })));
        assert_eq!(unreachable.key(), "connect: unreachable");
        assert!(unreachable.message().contains("cannot reach 127.0.0.1:1"));
    }
}
