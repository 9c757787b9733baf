//! `dsql-pgx refresh-demo`: live proof that a refresh replaces every connection while
//! workers keep querying: one line per refresh (or a JSON line), then a summary table.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::cli::resolve;
use crate::cli::{Format, RefreshDemoArgs};
use crate::exit::{Exit, Failed};
use crate::latency::Latencies;
use crate::output::Output;
use crate::pool::{Pool, PoolStats};
use crate::settings::ConfigError;

use super::{Session, StopSignal};

/// Query outcomes since the last refresh, shared by the workers.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies: Latencies,
}

/// What one period looked like, as printed.
#[derive(Debug, Serialize)]
struct RefreshLine {
    refresh: u64,
    time: String,
    generation: u64,
    before: Vec<String>,
    /// How many of `before` the pool opened since the previous refresh (for busy workers),
    /// so were not among its `after`.
    grew: usize,
    after: Vec<String>,
    overlap: usize,
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
    took_ms: f64,
    pool: PoolStats,
}

#[derive(Debug, Serialize)]
struct Summary {
    summary: bool,
    refreshes: u64,
    failed_refreshes: u64,
    ok: u64,
    failed: u64,
    overlap: usize,
    p50_ms: f64,
    p99_ms: f64,
    pool: PoolStats,
}

fn take(tally: &Mutex<Tally>) -> Tally {
    std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()))
}

async fn worker(pool: Pool, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = match pool.get().await {
            Ok(conn) => conn
                .simple_query("select 1")
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
            Err(error) => Err(error.into()),
        };
        let elapsed = started.elapsed();
        let failed = {
            let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
            match &outcome {
                Ok(()) => {
                    tally.ok += 1;
                    tally.latencies.push(elapsed);
                }
                Err(_) => tally.failed += 1,
            }
            outcome.err()
        };
        if let Some(error) = failed {
            tracing::warn!(
                "worker query failed: {}",
                crate::exit::chain(error.as_ref())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the demo until `--refreshes`, `--duration` or Ctrl-C.
pub async fn run(args: RefreshDemoArgs, out: &Output) -> anyhow::Result<()> {
    let refresh = resolve::refresh(&args.refresh)?;
    if !refresh.enabled {
        return Err(ConfigError(
            "refresh-demo shows the periodic refresh: drop --refresh false (or DB_REFRESH_TOKEN=false)".into(),
        )
        .into());
    }
    let interval = match &args.interval {
        Some(text) => resolve::duration(text, "--interval", None)?,
        None => refresh.interval,
    };
    if interval < Duration::from_millis(100) {
        return Err(ConfigError("--interval must be at least 100ms".into()).into());
    }
    let deadline = match &args.duration {
        Some(text) => Some(Instant::now() + resolve::duration(text, "--duration", None)?),
        None => None,
    };
    if args.workers == 0 {
        return Err(ConfigError("--workers must be at least 1".into()).into());
    }
    // Listening from here, a signal while the pool opens still ends the run with its summary.
    let mut signals = StopSignal::new()?;
    let session = Session::open(&args.conn, None, true).await?;
    let pool = session.pool.clone();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..args.workers)
        .map(|_| tokio::spawn(worker(pool.clone(), tally.clone(), stop.clone())))
        .collect();
    let mut refresher = pool.spawn_refresher(interval);
    let mut stdout = std::io::stdout().lock();
    // The IDs each refresh left open, to tell which of the next one's `before` are new.
    let mut last_after: BTreeSet<String> = pool
        .connections()
        .into_iter()
        .map(|c| c.session_id)
        .collect();
    if out.format != Format::Json {
        if !out.quiet {
            crate::exit::diag!(
                "refresh-demo: {} workers, a refresh every {}, {} connections open",
                args.workers,
                humantime::format_duration(interval),
                last_after.len()
            );
            if out.verbose > 0 {
                crate::exit::diag!("{}", id_lines("open", &last_after, out.width()));
            }
            crate::exit::diag!("{LEGEND}");
        }
        writeln!(stdout, "{}", header())?;
    }

    let mut all_latencies = Latencies::default();
    let (mut refreshes, mut failed_refreshes, mut total_ok, mut total_failed, mut total_overlap) =
        (0u64, 0u64, 0u64, 0u64, 0usize);
    let sleep_until_deadline = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until_deadline);
    let stopped = signals.recv();
    tokio::pin!(stopped);
    loop {
        if args.refreshes.is_some_and(|n| refreshes >= u64::from(n)) {
            break;
        }
        let outcome = tokio::select! {
            outcome = refresher.reports.recv() => outcome,
            _ = &mut sleep_until_deadline => break,
            _ = &mut stopped => break,
        };
        let Some(outcome) = outcome else { break };
        let report = match outcome {
            Ok(report) => report,
            Err(error) => {
                failed_refreshes += 1;
                if !out.quiet {
                    crate::exit::diag!("refresh-demo: {} (retrying)", crate::exit::chain(&*error));
                }
                continue;
            }
        };
        refreshes += 1;
        let mut period = take(&tally);
        let before: BTreeSet<&String> = report.retired.iter().collect();
        let overlap = report
            .opened
            .iter()
            .filter(|id| before.contains(id))
            .count();
        let grew = before
            .iter()
            .filter(|id| !last_after.contains(**id))
            .count();
        let line = RefreshLine {
            refresh: refreshes,
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            generation: report.generation,
            before: report.retired.clone(),
            grew,
            after: report.opened.clone(),
            overlap,
            ok: period.ok,
            failed: period.failed,
            p50_ms: period.latencies.percentile_ms(0.50),
            p99_ms: period.latencies.percentile_ms(0.99),
            took_ms: report.took_ms,
            pool: pool.stats(),
        };
        total_ok += line.ok;
        total_failed += line.failed;
        total_overlap += overlap;
        all_latencies.append(&mut period.latencies);
        last_after = report.opened.iter().cloned().collect();
        print_line(&mut stdout, out, &line)?;
    }

    stop.store(true, Ordering::Relaxed);
    drop(refresher);
    for worker in workers {
        let _ = worker.await;
    }
    let mut last = take(&tally);
    total_ok += last.ok;
    total_failed += last.failed;
    all_latencies.append(&mut last.latencies);
    let summary = Summary {
        summary: true,
        refreshes,
        failed_refreshes,
        ok: total_ok,
        failed: total_failed,
        overlap: total_overlap,
        p50_ms: all_latencies.percentile_ms(0.50),
        p99_ms: all_latencies.percentile_ms(0.99),
        pool: pool.stats(),
    };
    print_summary(&mut stdout, out, &summary)?;
    stdout.flush()?;
    drop(pool);
    session.close().await;
    if total_overlap > 0 || total_failed > 0 {
        return Err(Failed {
            message: format!(
                "refresh-demo failed: {total_overlap} connection(s) survived a refresh, {total_failed} quer(ies) failed"
            ),
            exit: Exit::DemoFailed,
        }
        .into());
    }
    Ok(())
}

/// A refresh line's cells in fixed widths (77 columns with numbers of up to 9 digits), so
/// each line prints as it comes and they all fit in 80 columns.
fn columns(cells: [&str; 9]) -> String {
    let [
        generation,
        retired,
        opened,
        overlap,
        ok,
        failed,
        p50,
        p99,
        took,
    ] = cells;
    format!(
        "{generation:>4}  {retired:>9} → {opened:<6}  {overlap:>7}  {ok:>9}  {failed:>6}  \
         {p50:>6}  {p99:>6}  {took:>7}"
    )
}

/// The column heads of the refresh lines.
fn header() -> String {
    columns([
        "gen", "retired", "opened", "overlap", "ok", "failed", "p50 ms", "p99 ms", "took ms",
    ])
}

/// What the refresh lines count, for the reader (on stderr, before the first line).
const LEGEND: &str = "\
retired: open when a refresh starts, (+N) of them opened since the last one
opened: fresh when it ends (the pool opens more as workers need them)
ok, failed, p50, p99: queries since the last refresh";

/// One refresh as a line under [`header`].
fn refresh_row(line: &RefreshLine) -> String {
    let retired = if line.grew > 0 {
        format!("{} (+{})", line.before.len(), line.grew)
    } else {
        line.before.len().to_string()
    };
    columns([
        &line.generation.to_string(),
        &retired,
        &line.after.len().to_string(),
        &line.overlap.to_string(),
        &line.ok.to_string(),
        &line.failed.to_string(),
        &format!("{:.2}", line.p50_ms),
        &format!("{:.2}", line.p99_ms),
        &format!("{:.1}", line.took_ms),
    ])
}

/// Session IDs under a label, as many to a line as fit in `width` columns, none split.
fn id_lines<'a>(label: &str, ids: impl IntoIterator<Item = &'a String>, width: usize) -> String {
    let indent = format!("      {label:<8}");
    let mut out = String::new();
    let mut line = indent.clone();
    for id in ids {
        if line.len() > indent.len() && line.len() + 1 + id.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent.len());
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(id);
    }
    out.push_str(line.trim_end());
    out
}

fn print_line(stdout: &mut dyn Write, out: &Output, line: &RefreshLine) -> anyhow::Result<()> {
    if out.format == Format::Json {
        serde_json::to_writer(&mut *stdout, line)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", refresh_row(line))?;
        if out.verbose > 0 {
            writeln!(stdout, "{}", id_lines("retired", &line.before, out.width()))?;
            writeln!(stdout, "{}", id_lines("opened", &line.after, out.width()))?;
        }
    }
    stdout.flush()?;
    Ok(())
}

fn print_summary(stdout: &mut dyn Write, out: &Output, summary: &Summary) -> anyhow::Result<()> {
    if out.format == Format::Json {
        serde_json::to_writer(&mut *stdout, summary)?;
        writeln!(stdout)?;
        return Ok(());
    }
    let rows = vec![
        vec![
            "refreshes (failed attempts)".to_string(),
            format!("{} ({})", summary.refreshes, summary.failed_refreshes),
        ],
        vec![
            "queries ok / failed".to_string(),
            format!("{} / {}", summary.ok, summary.failed),
        ],
        vec![
            "connections surviving a refresh".to_string(),
            summary.overlap.to_string(),
        ],
        vec![
            "latency p50 / p99".to_string(),
            format!("{:.2} / {:.2} ms", summary.p50_ms, summary.p99_ms),
        ],
        vec![
            "connections opened / retired".to_string(),
            format!("{} / {}", summary.pool.opened, summary.pool.closed_retired),
        ],
    ];
    writeln!(stdout, "{}", out.table(&["summary", "value"], &rows))?;
    Ok(())
}
