//! Optimistic-concurrency retry: recognise DSQL conflicts and re-run the whole unit.
//!
//! DSQL reports a conflict at commit as SQLSTATE 40001 whose message carries `OC000` (data
//! changed) or `OC001` (schema changed); a message carrying either code is treated as a
//! conflict even without the SQLSTATE. The unit — one autocommit statement, or a whole
//! transaction — is re-run on a connection checked out afresh, after an exponential backoff
//! with full jitter. Anything else is never retried.
//!
//! The unit is an async closure taking the connection. Where the retry must be `Send` (inside
//! `tokio::spawn`, a web handler), write it `async move |tx| ...` so it owns what it uses: a
//! closure that borrows from its surroundings yields futures that are not `Send` for every
//! lifetime, a current limit of async closures ("implementation of `Send` is not general
//! enough").

use std::time::Duration;

use crate::pool::{Pool, PooledConn};
use rand::RngExt;

/// How conflicts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub retries: u32,
    /// Backoff ceiling of the first retry; it doubles per retry.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling before retry number `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A full-jitter wait before retry number `retry`: uniform in `[0, ceiling]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_nanos(rand::rng().random_range(0..=ceiling.as_nanos() as u64))
    }
}

/// A recognised optimistic-concurrency conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The SQLSTATE (normally 40001).
    pub sqlstate: String,
    /// `OC000`, `OC001`, or `None` when only the SQLSTATE said so.
    pub code: Option<&'static str>,
}

/// Classifies a server error: `Some` for a conflict worth retrying.
pub fn conflict(error: &tokio_postgres::Error) -> Option<Conflict> {
    let db = error.as_db_error()?;
    let message = db.message();
    let code = ["OC000", "OC001"].into_iter().find(|c| message.contains(c));
    let sqlstate = db.code().code();
    (sqlstate == "40001" || code.is_some()).then(|| Conflict {
        sqlstate: sqlstate.to_string(),
        code,
    })
}

fn conflict_in(error: &anyhow::Error) -> Option<Conflict> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
        .and_then(conflict)
}

/// One retry about to happen.
#[derive(Debug, Clone)]
pub struct RetryEvent {
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// Retries allowed.
    pub retries: u32,
    /// The conflict.
    pub conflict: Conflict,
    /// The wait before the next attempt.
    pub wait: Duration,
}

/// Conflicts persisted through every retry.
#[derive(Debug, thiserror::Error)]
#[error(
    "optimistic-concurrency conflict persisted after {attempts} attempt(s); allow more retries (--retries, RetryPolicy::retries) or reduce contention"
)]
pub struct RetriesExhausted {
    /// Attempts made.
    pub attempts: u32,
    /// The last conflict.
    #[source]
    pub last: anyhow::Error,
}

/// Runs `unit` with conflict retry. With `transaction`, the unit runs between `BEGIN` and
/// `COMMIT` (a conflict at commit re-runs it from the start). `on_retry` sees each retry.
///
/// The error is an [`anyhow::Error`] holding one of three things, told apart by downcasting:
/// a [`crate::pool::PoolError`] (no connection could be checked out), [`RetriesExhausted`]
/// (conflicts outlasted the policy; the last conflict is its source), or the unit's own error
/// (a [`tokio_postgres::Error`] for a database error), which is never retried.
///
/// ```no_run
/// # async fn demo(pool: dsql_pgx::Pool) {
/// use dsql_pgx::retry::{self, RetriesExhausted, RetryPolicy};
/// let outcome = retry::run(&pool, &RetryPolicy::default(), true, &mut |_| {}, async |tx| {
///     Ok(tx.execute("update t set v = v + 1 where id = 1", &[]).await?)
/// })
/// .await;
/// match outcome {
///     Ok(rows) => println!("updated {rows}"),
///     Err(e) if e.is::<RetriesExhausted>() => eprintln!("too much contention: {e:#}"),
///     Err(e) if e.is::<dsql_pgx::pool::PoolError>() => eprintln!("no connection: {e:#}"),
///     Err(e) => match e.downcast_ref::<dsql_pgx::tokio_postgres::Error>().and_then(|e| e.code()) {
///         Some(code) => eprintln!("SQLSTATE {}: {e:#}", code.code()),
///         None => eprintln!("{e:#}"),
///     },
/// }
/// # }
/// ```
pub async fn run<T>(
    pool: &Pool,
    policy: &RetryPolicy,
    transaction: bool,
    on_retry: &mut (dyn FnMut(&RetryEvent) + Send),
    mut unit: impl AsyncFnMut(&PooledConn) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let conn = pool.get().await?;
        let result = if transaction {
            in_transaction(&conn, &mut unit).await
        } else {
            unit(&conn).await
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        drop(conn);
        let Some(conflict) = conflict_in(&error) else {
            return Err(error);
        };
        if attempt > policy.retries {
            return Err(RetriesExhausted {
                attempts: attempt,
                last: error,
            }
            .into());
        }
        let wait = policy.delay(attempt);
        on_retry(&RetryEvent {
            attempt,
            retries: policy.retries,
            conflict,
            wait,
        });
        tokio::time::sleep(wait).await;
    }
}

async fn in_transaction<T>(
    client: &PooledConn,
    unit: &mut impl AsyncFnMut(&PooledConn) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // Marked until COMMIT or ROLLBACK answers: if this future is dropped in between, the
    // pool closes the connection rather than hand the open transaction to the next user.
    client.mark_transaction(true);
    client.batch_execute("BEGIN").await?;
    match unit(client).await {
        Ok(value) => {
            // Whether it succeeds or fails (a conflict), COMMIT ends the transaction.
            let committed = client.batch_execute("COMMIT").await;
            client.mark_transaction(false);
            committed?;
            Ok(value)
        }
        Err(error) => {
            if !client.is_closed() && client.batch_execute("ROLLBACK").await.is_ok() {
                client.mark_transaction(false);
            }
            Err(error)
        }
    }
}

/// Runs `unit` in a transaction with the default policy: the library's OCC helper.
///
/// ```no_run
/// # async fn demo(pool: dsql_pgx::Pool) -> anyhow::Result<()> {
/// let moved = dsql_pgx::retry::transaction(&pool, async |tx| {
///     tx.execute("update accounts set balance = balance - 10 where id = 1", &[]).await?;
///     Ok(tx.execute("update accounts set balance = balance + 10 where id = 2", &[]).await?)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn transaction<T>(
    pool: &Pool,
    unit: impl AsyncFnMut(&PooledConn) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    run(pool, &RetryPolicy::default(), true, &mut |_| {}, unit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.ceiling(1), Duration::from_millis(10));
        assert_eq!(policy.ceiling(2), Duration::from_millis(20));
        assert_eq!(policy.ceiling(4), Duration::from_millis(80));
        assert_eq!(policy.ceiling(40), Duration::from_secs(1));
        for retry in 1..10 {
            assert!(policy.delay(retry) <= policy.ceiling(retry));
        }
    }
}
