//! The benchmark's shards: the clients of one thread with the pool they share (and its
//! refresher), on the caller's runtime or, for `--threads` above 1, on a thread of their own.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::pool::{Pool, PoolStats};
use crate::settings::ConnSettings;

use super::client::{ClientReport, Window, client};

/// What every thread's clients share.
#[derive(Clone)]
pub(super) struct Plan {
    pub(super) sql: Arc<str>,
    pub(super) depth: u32,
    pub(super) refresh_every: Option<Duration>,
    pub(super) done: Arc<AtomicU64>,
}

/// What one thread did: its clients, its pool and its pool's refreshes.
pub(super) struct ShardReport {
    pub(super) clients: ClientReport,
    pub(super) stats: PoolStats,
    pub(super) refreshes: u64,
    pub(super) failed_refreshes: u64,
}

/// Runs `clients` client tasks on `pool` (on the current runtime) through `window`.
pub(super) async fn run_shard(
    pool: Pool,
    clients: u32,
    plan: &Plan,
    window: Window,
) -> ShardReport {
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
pub(super) fn shard_thread(
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
        let _ = done.send(run_shard(pool.clone(), clients, &plan, window).await);
        pool.close().await;
    });
}

/// `clients` spread over `threads` as evenly as they go, the first threads taking one more.
pub(super) fn split(clients: u32, threads: u32) -> Vec<u32> {
    let threads = threads.clamp(1, clients.max(1));
    (0..threads)
        .map(|i| clients / threads + u32::from(i < clients % threads))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
