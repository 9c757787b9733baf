//! Refresh: re-sign, bump the generation, replace every connection without interrupting any;
//! and the periodic refresher.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Pool;
use super::registry::{RefreshReport, lock, ms};
use crate::error::{Error, chain};

/// How long one sweep checkout in a refresh waits before letting busy users retire the
/// remaining old idle connections.
const SWEEP_WAIT: Duration = Duration::from_millis(50);

impl Pool {
    /// Replaces every connection, making before it breaks: re-resolves credentials, proves a
    /// token can be signed, opens the replacements while the old connections keep serving,
    /// then bumps the generation. From then on an old connection is swapped for a fresh one
    /// in its pool slot as it is checked out (idle ones at once, by the refresh itself) or
    /// returned (busy ones, after their query), so no checkout waits for a connection to
    /// open because of a refresh. Concurrent calls coalesce into one.
    ///
    /// If credentials or signing fail ([`Error::Credentials`]), or the replacements cannot be
    /// opened, nothing is retired, the old connections keep serving and the error says why.
    pub async fn refresh(&self) -> Result<RefreshReport, Error> {
        let seen = self.generation();
        let mut last = self.shared.refresh_lock.lock().await;
        if self.generation() != seen
            && let Some(report) = last.as_ref()
        {
            return Ok(report.clone());
        }
        let started = Instant::now();
        if let Some((signer, action)) = &self.signer {
            signer.reload_credentials().await?;
            signer.sign(*action).await?;
        }
        // Replacements a previous refresh staged and nobody took (their old connection was
        // held past that refresh): into the pool while there is room, else closed.
        self.settle_staged();
        let before: BTreeSet<String> = self.known_session_ids(|_| true);
        let settings = &self.shared.settings;
        let open_now = lock(&self.shared.registry).len();
        let want = open_now
            .max(settings.min_idle as usize)
            .clamp(1, settings.max_size as usize);
        let generation = seen + 1;
        // Make: open the replacements side by side, while the old connections serve.
        let mut opening = JoinSet::new();
        for _ in 0..want {
            let (opener, shared) = (self.opener.clone(), self.shared.clone());
            opening.spawn(async move { opener.open_retrying(&shared, Some(generation)).await });
        }
        let mut fresh = Vec::with_capacity(want);
        while let Some(joined) = opening.join_next().await {
            match joined {
                Ok(Ok(conn)) => fresh.push(conn),
                // Nothing retired: the fresh ones close as they drop, the old keep serving.
                Ok(Err(error)) => return Err(Error::from_connect(Arc::new(error))),
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
        lock(&self.shared.staged).extend(fresh);
        // Break: from here old connections are swapped for the staged ones.
        self.shared.generation.store(generation, Ordering::Release);
        // The idle old ones now: each checkout swaps one (last-in-first-out, so the
        // checkouts are held until all are done). Each waits only briefly: when other tasks
        // keep the pool busy, they take, and so swap, the old idle connections themselves.
        let mut held = Vec::new();
        let until = Instant::now() + settings.connect_timeout;
        while self.stale_idle(generation)
            && held.len() < settings.max_size as usize
            && Instant::now() < until
        {
            match tokio::time::timeout(SWEEP_WAIT, self.get()).await {
                Ok(Ok(conn)) => held.push(conn),
                Ok(Err(error)) => return Err(error),
                Err(_) => {}
            }
        }
        drop(held);
        // Busy old connections take theirs when returned; any staged beyond those go into
        // the pool now.
        let busy_old = lock(&self.shared.registry)
            .values()
            .filter(|m| m.generation < generation)
            .count();
        self.settle_staged_beyond(busy_old);
        let opened = self.known_session_ids(|g| g == generation);
        let report = RefreshReport {
            generation,
            overlap: before.intersection(&opened).cloned().collect(),
            retired: before.into_iter().collect(),
            opened: opened.into_iter().collect(),
            took_ms: ms(started.elapsed()),
        };
        tracing::info!(
            generation,
            retired = report.retired.len(),
            opened = report.opened.len(),
            "refresh done"
        );
        *last = Some(report.clone());
        Ok(report)
    }

    /// The session IDs known of the connections whose generation passes `keep`.
    fn known_session_ids(&self, keep: impl Fn(u64) -> bool) -> BTreeSet<String> {
        lock(&self.shared.registry)
            .values()
            .filter(|m| keep(m.generation))
            .map(|m| m.session_id().to_string())
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// Moves every staged connection into the pool while there is room; closes the rest.
    fn settle_staged(&self) {
        self.settle_staged_beyond(0);
    }

    /// Keeps `keep` staged connections for old ones still to be returned; moves the others
    /// into the pool while there is room and closes the rest.
    fn settle_staged_beyond(&self, keep: usize) {
        let extra: Vec<_> = {
            let mut staged = lock(&self.shared.staged);
            let keep = keep.min(staged.len());
            staged.drain(keep..).collect()
        };
        for conn in extra {
            // Err: the pool is full; dropping the connection closes it.
            let _ = self.bb8.add(conn);
        }
    }

    /// Whether an old connection (of a generation before `generation`) is idle.
    pub(super) fn stale_idle(&self, generation: u64) -> bool {
        lock(&self.shared.registry)
            .values()
            .any(|m| m.generation < generation && !m.in_use.load(Ordering::Relaxed))
    }

    /// Starts a task that refreshes every `interval`, retrying failures with backoff.
    /// Outcomes arrive on the returned [`Refresher`]; dropping it stops the task.
    pub fn spawn_refresher(&self, interval: Duration) -> Refresher {
        let (tx, reports) = mpsc::unbounded_channel();
        let pool = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let mut backoff = Duration::from_millis(500);
                loop {
                    match pool.refresh().await {
                        Ok(report) => {
                            let _ = tx.send(Ok(report));
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(
                                "token refresh failed, existing connections keep serving: {}",
                                chain(&error)
                            );
                            let _ = tx.send(Err(Arc::new(error)));
                            tokio::time::sleep(backoff.min(interval)).await;
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            }
        });
        Refresher { task, reports }
    }
}

/// A running periodic refresher. Dropping it stops refreshing.
#[derive(Debug)]
pub struct Refresher {
    task: tokio::task::JoinHandle<()>,
    /// One entry per refresh attempt.
    pub reports: mpsc::UnboundedReceiver<Result<RefreshReport, Arc<Error>>>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
