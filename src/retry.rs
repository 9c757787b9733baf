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

use rand::RngExt;
use tokio_postgres::error::SqlState;

pub use crate::error::ConflictKind;
use crate::error::Error;
use crate::pool::{Pool, PooledConn};

/// How conflicts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct Conflict {
    /// The SQLSTATE (normally 40001).
    pub sqlstate: String,
    /// `OC000`, `OC001`, or `None` when only the SQLSTATE said so.
    pub code: Option<&'static str>,
    /// The same as a kind.
    pub kind: ConflictKind,
}

/// Classifies a server error: `Some` for a conflict worth retrying.
pub fn conflict(error: &tokio_postgres::Error) -> Option<Conflict> {
    let db = error.as_db_error()?;
    let message = db.message();
    let kind = [ConflictKind::Data, ConflictKind::Schema]
        .into_iter()
        .find(|k| k.code().is_some_and(|c| message.contains(c)));
    let serialization = *db.code() == SqlState::T_R_SERIALIZATION_FAILURE;
    (serialization || kind.is_some()).then(|| {
        let kind = kind.unwrap_or(ConflictKind::Serialization);
        Conflict {
            sqlstate: db.code().code().to_string(),
            code: kind.code(),
            kind,
        }
    })
}

/// An error that may be an optimistic-concurrency conflict: what a unit of work can fail with.
pub trait MaybeConflict {
    /// The conflict, if this is one.
    fn conflict(&self) -> Option<Conflict>;
}

impl MaybeConflict for tokio_postgres::Error {
    fn conflict(&self) -> Option<Conflict> {
        conflict(self)
    }
}

impl MaybeConflict for Error {
    fn conflict(&self) -> Option<Conflict> {
        match self {
            Error::Db(e) => conflict(e),
            _ => None,
        }
    }
}

impl MaybeConflict for Box<dyn std::error::Error + Send + Sync> {
    fn conflict(&self) -> Option<Conflict> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self.as_ref());
        while let Some(error) = cause {
            if let Some(found) = error
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(conflict)
            {
                return Some(found);
            }
            if let Some(found) = error.downcast_ref::<Error>().and_then(Error::conflict) {
                return Some(found);
            }
            cause = error.source();
        }
        None
    }
}

/// One retry about to happen.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

/// Why [`run_with`] gave up, over the unit's own error type `E`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// No connection could be checked out.
    #[error(transparent)]
    Pool(Error),
    /// Conflicts outlasted the policy.
    #[error(
        "optimistic-concurrency conflict persisted after {attempts} attempt(s); allow more retries (RetryPolicy::retries) or reduce contention"
    )]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        conflict: Conflict,
        /// The unit's last error.
        #[source]
        last: E,
    },
    /// The unit failed with something other than a conflict (never retried).
    #[error(transparent)]
    Unit(E),
}

impl From<RetryError<Error>> for Error {
    fn from(error: RetryError<Error>) -> Error {
        match error {
            RetryError::Pool(e) | RetryError::Unit(e) => e,
            RetryError::Exhausted {
                attempts,
                conflict,
                last,
            } => Error::RetriesExhausted {
                attempts,
                kind: conflict.kind,
                last: Box::new(last),
            },
        }
    }
}

/// Runs `unit` with conflict retry. With `transaction`, the unit runs between `BEGIN` and
/// `COMMIT` (a conflict at commit re-runs it from the start). `on_retry` sees each retry.
///
/// The error is the pool's (no connection could be checked out), the unit's own (never
/// retried; [`Error::Db`] for a database error), or [`Error::RetriesExhausted`] when
/// conflicts outlasted the policy. [`run_with`] is the same over an error type of the
/// caller's.
///
/// ```no_run
/// # async fn demo(pool: dsql_pgx::Pool) {
/// use dsql_pgx::retry::{self, RetryPolicy};
/// let outcome = retry::run(&pool, &RetryPolicy::default(), true, &mut |_| {}, async |tx| {
///     Ok(tx.execute("update t set v = v + 1 where id = 1", &[]).await?)
/// })
/// .await;
/// match outcome {
///     Ok(rows) => println!("updated {rows}"),
///     Err(dsql_pgx::Error::RetriesExhausted { attempts, .. }) => {
///         eprintln!("too much contention after {attempts} attempts")
///     }
///     Err(e) if e.sqlstate().is_some() => eprintln!("SQLSTATE {}: {e}", e.sqlstate().unwrap().code()),
///     Err(e) => eprintln!("{}", dsql_pgx::error::chain(&e)),
/// }
/// # }
/// ```
pub async fn run<T>(
    pool: &Pool,
    policy: &RetryPolicy,
    transaction: bool,
    on_retry: &mut (dyn FnMut(&RetryEvent) + Send),
    unit: impl AsyncFnMut(&PooledConn) -> Result<T, Error>,
) -> Result<T, Error> {
    Ok(run_with(pool, policy, transaction, on_retry, unit).await?)
}

/// [`run`] over the unit's own error type: anything a driver error converts into that can
/// say whether it is a conflict ([`MaybeConflict`]).
pub async fn run_with<T, E>(
    pool: &Pool,
    policy: &RetryPolicy,
    transaction: bool,
    on_retry: &mut (dyn FnMut(&RetryEvent) + Send),
    mut unit: impl AsyncFnMut(&PooledConn) -> Result<T, E>,
) -> Result<T, RetryError<E>>
where
    E: From<tokio_postgres::Error> + MaybeConflict,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let conn = pool.get().await.map_err(RetryError::Pool)?;
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
        let Some(conflict) = error.conflict() else {
            return Err(RetryError::Unit(error));
        };
        if attempt > policy.retries {
            return Err(RetryError::Exhausted {
                attempts: attempt,
                conflict,
                last: error,
            });
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

async fn in_transaction<T, E: From<tokio_postgres::Error>>(
    client: &PooledConn,
    unit: &mut impl AsyncFnMut(&PooledConn) -> Result<T, E>,
) -> Result<T, E> {
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
/// # async fn demo(pool: dsql_pgx::Pool) -> dsql_pgx::Result<()> {
/// let moved = dsql_pgx::retry::transaction(&pool, async |tx| {
///     tx.execute("update accounts set balance = balance - 10 where id = 1", &[]).await?;
///     Ok(tx.execute("update accounts set balance = balance + 10 where id = 2", &[]).await?)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn transaction<T>(
    pool: &Pool,
    unit: impl AsyncFnMut(&PooledConn) -> Result<T, Error>,
) -> Result<T, Error> {
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
