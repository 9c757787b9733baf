//! Refresh: re-sign, bump the generation, replace every connection without interrupting any;
//! and the periodic refresher.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Pool;
use super::registry::{RefreshReport, lock, ms};
use crate::error::{Error, chain};

/// How long one sweep checkout in a refresh waits before letting busy users retire the
/// remaining old idle connections.
const SWEEP_WAIT: Duration = Duration::from_millis(50);

impl Pool {
    /// Replaces every connection: re-resolves credentials, proves a token can be signed,
    /// bumps the generation, closes idle old connections at once (busy ones when returned)
    /// and opens fresh ones up to the minimum idle size. Concurrent calls coalesce into one.
    ///
    /// If credentials or signing fail ([`Error::Credentials`]), nothing is retired and the
    /// old connections keep serving; if fresh connections cannot be opened, the error says
    /// why (the old ones keep serving until returned).
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
        let before: BTreeSet<String> = self
            .connections()
            .into_iter()
            .map(|c| c.session_id)
            .collect();
        let errors_seen = *self.shared.errors.borrow();
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let settings = &self.shared.settings;
        // Idle old connections are retired now: a checkout pops and drops each one, and bb8
        // replaces each with a fresh connection, up to the minimum idle size. The refresh
        // waits (bounded) until the fresh generation is there, so the next query does not pay
        // for a connect, retiring any old connection that goes idle meanwhile (one still
        // being returned, say). Sweep checkouts are held until the end, since the idle queue
        // is last-in-first-out, and each waits only briefly: when other tasks keep the pool
        // busy, they pop, and so retire, the old idle connections themselves.
        let want = settings.min_idle.max(1).min(settings.max_size) as usize;
        let mut held = Vec::new();
        let until = Instant::now() + settings.connect_timeout;
        while Instant::now() < until {
            if self.stale_idle(generation) && held.len() < settings.max_size as usize {
                match tokio::time::timeout(SWEEP_WAIT, self.get()).await {
                    Ok(Ok(conn)) => held.push(conn),
                    Ok(Err(error)) => return Err(error),
                    Err(_) => {}
                }
                continue;
            }
            if self.fresh_count(generation) >= want {
                break;
            }
            if let Some(error) = self.shared.last_error_since(errors_seen) {
                return Err(Error::from_connect(error));
            }
            // Nothing old left idle and too few fresh: a checkout makes bb8 open connections
            // up to the minimum idle size (and reports at once if it cannot).
            match tokio::time::timeout(SWEEP_WAIT, self.get()).await {
                Ok(Ok(conn)) => drop(conn),
                Ok(Err(error)) => return Err(error),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(held);
        // Too few fresh connections with room for them means they could not be opened in
        // time. (A pool full of busy old connections is fine: each retires when returned.)
        if self.fresh_count(generation) < want && self.bb8.state().connections < settings.max_size {
            let error = self.shared.last_error_since(errors_seen).map_or(
                Error::PoolTimeout(settings.connect_timeout),
                Error::from_connect,
            );
            return Err(error);
        }
        let opened: BTreeSet<String> = self
            .connections()
            .into_iter()
            .filter(|c| c.generation == generation)
            .map(|c| c.session_id)
            .collect();
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

    /// Open connections of `generation`.
    pub(super) fn fresh_count(&self, generation: u64) -> usize {
        lock(&self.shared.registry)
            .values()
            .filter(|m| m.generation == generation)
            .count()
    }

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
