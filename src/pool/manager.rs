//! The bb8 manager: opens connections through the opener, retires those of older
//! generations, and hands them out as [`PooledConn`].

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_postgres::Client;

use super::open::{Opener, PgConn, first_value};
use super::registry::{ConnInfo, Shared};
use crate::error::ConnectError;
use crate::error::chain;

/// The bb8 manager: opens connections and retires those of older generations.
pub struct Manager {
    pub(super) opener: Arc<Opener>,
    pub(super) shared: Arc<Shared>,
}

/// Hands the pool's connection failures to [`Shared::record_error`], which wakes waiting
/// checkouts. bb8 calls it after releasing the failed attempt's slot, so a checkout that
/// starts on the news gets an attempt of its own (recorded any earlier, it could find the slot
/// still taken, wait on an attempt already over, and time out).
#[derive(Clone)]
pub(super) struct RecordErrors(pub(super) Arc<Shared>);

impl fmt::Debug for RecordErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordErrors")
    }
}

impl bb8::ErrorSink<Arc<ConnectError>> for RecordErrors {
    fn sink(&self, error: Arc<ConnectError>) {
        // A checkout's validation reports these too: connections put aside, not failures.
        if !matches!(
            *error,
            ConnectError::Closed | ConnectError::Retired | ConnectError::Expired
        ) {
            self.0.record_error(error);
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<Arc<ConnectError>>> {
        Box::new(self.clone())
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("addr", &self.opener.addr)
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = Arc<ConnectError>;

    /// Opens a connection (limit refusals retried with backoff); a failure wakes every waiting
    /// checkout with it.
    async fn connect(&self) -> Result<PgConn, Arc<ConnectError>> {
        self.opener
            .open_retrying(&self.shared, None)
            .await
            .map_err(|error| {
                let error = Arc::new(error);
                tracing::debug!("cannot open a connection: {}", chain(&*error));
                // Recorded by `RecordErrors` once bb8 has released the attempt's slot.
                error
            })
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), Arc<ConnectError>> {
        // No round trip: a closed socket or an older generation is all we check on checkout.
        if conn.client.is_closed() {
            return Err(Arc::new(ConnectError::Closed));
        }
        if self.shared.is_retired(&conn.meta) {
            // A refresh opened its replacement already: hand that out in its place.
            if self.swap_for_staged(conn) {
                return Ok(());
            }
            // Counted in `has_broken`, which bb8 calls as it drops the connection.
            return Err(Arc::new(ConnectError::Retired));
        }
        if self.shared.is_expired(&conn.meta) {
            // Counted in `has_broken` too.
            return Err(Arc::new(ConnectError::Expired));
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        self.check_returned(conn)
    }
}

impl Manager {
    /// Puts a staged fresh connection in `conn`'s place and closes the old one (it sends
    /// Terminate as it goes). `false` when no staged connection is left.
    fn swap_for_staged(&self, conn: &mut PgConn) -> bool {
        let Some(mut fresh) = self.shared.take_staged() else {
            return false;
        };
        std::mem::swap(conn, &mut fresh);
        self.shared.swapped.fetch_add(1, Ordering::Relaxed);
        drop(fresh);
        true
    }

    fn check_returned(&self, conn: &mut PgConn) -> bool {
        conn.meta.in_use.store(false, Ordering::Relaxed);
        if conn.client.is_closed() {
            return true;
        }
        // A transaction left open (its owner was cancelled between BEGIN and COMMIT): closing
        // the connection rolls it back; handing it out would run the next user inside it.
        if conn.meta.in_transaction.load(Ordering::Relaxed) {
            return true;
        }
        if self.shared.is_retired(&conn.meta) {
            // Returned into its slot is the replacement a refresh opened, if one is left:
            // the next checkout gets it at once instead of waiting for an open.
            if self.swap_for_staged(conn) {
                return false;
            }
            self.shared.retired.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // Decided here rather than by bb8's own lifetime check (which runs after this one,
        // on a clock started a little later) so every closure is counted once.
        if self.shared.is_expired(&conn.meta) {
            self.shared.expired.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A connection checked out of the pool; returned when dropped.
pub struct PooledConn {
    pub(super) inner: bb8::PooledConnection<'static, Manager>,
}

impl PooledConn {
    /// What the registry knows about this connection.
    pub fn info(&self) -> ConnInfo {
        self.inner.meta.info()
    }

    /// The client-side connection number (from 1, never reused): cheap to read, and a key
    /// for anything cached per physical connection, such as prepared statements.
    pub fn number(&self) -> u64 {
        self.inner.meta.number
    }

    /// The server session ID; `""` while unknown, for a pool built without
    /// [`crate::settings::PoolSettings::session_id_on_connect`] until
    /// [`PooledConn::fetch_session_id`] has read it.
    pub fn session_id(&self) -> &str {
        self.inner.meta.session_id()
    }

    /// The server session ID, read from the server the first time (one simple query, which
    /// can go out pipelined with the caller's first statement: `join` the two futures).
    pub async fn fetch_session_id(&self) -> Result<&str, tokio_postgres::Error> {
        let meta = &self.inner.meta;
        if let Some(id) = meta.session_id.get() {
            return Ok(id);
        }
        let id = first_value(&self.inner.client, meta.session_sql.sql()).await?;
        Ok(meta.session_id.get_or_init(|| id))
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Marks the connection as inside a transaction (set before `BEGIN`, cleared once
    /// `COMMIT` or `ROLLBACK` has answered). A connection returned while still marked, because
    /// the future running the transaction was dropped, is closed instead of reused, so the
    /// server rolls the transaction back. The retry helpers do this for their transactions.
    pub fn mark_transaction(&self, open: bool) {
        self.inner
            .meta
            .in_transaction
            .store(open, Ordering::Relaxed);
    }
}

impl Deref for PooledConn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.inner.client
    }
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("number", &self.inner.meta.number)
            .field("session_id", &self.inner.meta.session_id())
            .finish()
    }
}
