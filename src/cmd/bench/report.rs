//! The benchmark's report: the progress line while it runs, and the figures at the end,
//! as JSON or as tables.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::Format;
use crate::output::{self, Output};
use crate::pool::PoolStats;

use super::client::{ErrorCount, Window};

/// The result, as `--format json` prints it.
#[derive(Debug, Serialize)]
pub(super) struct BenchJson {
    pub(super) sql: String,
    pub(super) clients: u32,
    pub(super) pipeline: u32,
    pub(super) threads: u32,
    /// The measured time, milliseconds to three decimals.
    pub(super) duration_ms: f64,
    /// The warm-up before it.
    pub(super) warmup_ms: f64,
    pub(super) queries: u64,
    pub(super) qps: f64,
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    /// Failed queries by SQLSTATE (or kind, when there is none).
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) failed: u64,
    pub(super) connections_opened: u64,
    pub(super) refreshes: u64,
    pub(super) failed_refreshes: u64,
    pub(super) pool: PoolStats,
}

/// Prints a progress line on stderr every second, while stderr is a terminal.
pub(super) async fn progress(window: Window, warmup: Duration, done: Arc<AtomicU64>) {
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

/// Prints the report: JSON, or tables of the figures, the errors by kind and the pool.
pub(super) fn print_report(
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
            format!(
                "{:.1} s ({:.1} s)",
                report.duration_ms / 1e3,
                report.warmup_ms / 1e3
            ),
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
