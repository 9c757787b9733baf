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

mod client;
mod report;
mod shard;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::cli::BenchArgs;
use crate::cli::resolve;
use crate::error::ConfigError;
use crate::output::{self, Output};
use crate::pool::PoolStats;

use super::Session;
use client::{ClientReport, Window};
use report::{BenchJson, print_report, progress};
use shard::{Plan, run_shard, shard_thread, split};

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
    let session = Session::open(&args.conn, Some(shares[0]), false).await?;
    let pool = session.pool.clone();
    let max_size = session.settings.pool.max_size;
    if shares[0] > max_size && !out.quiet {
        crate::exit::diag!(
            "bench: {} clients per thread share at most {max_size} connections, so some wait for one (the wait is in their latency); raise --max-conns to give each its own",
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
        duration_ms: output::json_millis(measured),
        warmup_ms: output::json_millis(warmup),
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
