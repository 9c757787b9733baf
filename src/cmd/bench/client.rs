//! One benchmark client: a task that loops checking a connection out, running the
//! statement it prepared on that connection and returning it, and counts what it saw.

use std::collections::HashMap;
use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Statement;

use crate::error::Error;
use crate::latency::Latencies;
use crate::pool::{ConnectError, Pool};

/// A task that sees more connection numbers than this forgets its statements and
/// prepares again: a bound for runs that replace connections for hours.
const STATEMENT_CACHE_MAX: usize = 64;
/// Pause after a failed query, so a down server is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Why one benchmark query failed.
pub(super) enum Failure {
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
pub(super) struct ErrorCount {
    pub(super) count: u64,
    pub(super) example: String,
}

/// What one client task did.
#[derive(Default)]
pub(super) struct ClientReport {
    pub(super) ok: u64,
    pub(super) latencies: Latencies,
    pub(super) errors: BTreeMap<String, ErrorCount>,
    pub(super) first_error: Option<anyhow::Error>,
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

    pub(super) fn merge(&mut self, mut other: ClientReport) {
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
pub(super) struct Window {
    pub(super) measure_from: Instant,
    pub(super) until: Instant,
}

/// One round through the pool: check a connection out, run `depth` pipelined queries with
/// this task's statement for that connection, return it. Each query's latency, from before
/// the checkout (a wait for a connection is the caller's wait too), is pushed as it
/// completes; the first failure is returned. On a connection new to this task the round is
/// one query, run unprepared while the statement is prepared alongside it: one round trip,
/// as a prepared query takes, so a fresh connection (after a refresh, say) costs no extra.
async fn one_round(
    pool: &Pool,
    sql: &str,
    depth: u32,
    statements: &mut HashMap<u64, Statement>,
    latencies: &mut Vec<Duration>,
) -> Result<(), Failure> {
    let started = Instant::now();
    let conn = pool.get().await.map_err(Failure::Pool)?;
    let number = conn.number();
    if !statements.contains_key(&number) {
        let (prepared, ran) =
            futures_util::future::join(conn.prepare(sql), conn.query_typed(sql, &[])).await;
        let statement = prepared.map_err(Failure::Query)?;
        ran.map_err(Failure::Query)?;
        latencies.push(started.elapsed());
        if statements.len() >= STATEMENT_CACHE_MAX {
            statements.clear();
        }
        statements.insert(number, statement);
        return Ok(());
    }
    let statement = &statements[&number];
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

/// One client task: rounds through the pool until the window closes, measuring those
/// that start inside it.
pub(super) async fn client(
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
