//! The token-signing connection pool: bb8 manager, connection registry, refresh, statistics.
//!
//! Every new physical connection signs a fresh IAM token (tokens are only checked when a
//! connection opens), connects over TLS and records who it is (session ID, timing, TLS
//! version) in a registry. A refresh makes before it breaks: it opens the replacements while
//! the old connections serve, then bumps the *generation*: connections of an older generation
//! are never handed out again, and each is swapped for a replacement in its pool slot, idle
//! ones at once, busy ones when they are returned, so no checkout waits for an open. There is
//! one pool for the program's life; no holder of a [`Pool`] ever sees it swapped, and the query
//! path takes no lock. [`Pool::close`] lets every connection say Terminate before the program
//! exits.
//!
//! Files: `open` (one connection, phase by phase), `early_password` (the IAM token sent in
//! the startup's flight, before the server asks), `manager` (the bb8 manager and the
//! checked-out connection), `registry` (what is open, counters, [`PoolStats`]), `refresh`
//! (generations and the periodic refresher), `error` ([`ConnectError`] and its
//! [`ConnectPhase`]).
//!
//! ```no_run
//! # async fn demo() -> dsql_pgx::Result<()> {
//! let settings: dsql_pgx::ConnSettings =
//!     "postgres://admin@abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws/postgres".parse()?;
//! let pool = dsql_pgx::Pool::new(&settings).await?;
//! let conn = pool.get().await?;
//! let rows = conn.query("select 1::int4", &[]).await?;
//! assert_eq!(rows[0].get::<_, i32>(0), 1);
//! drop(conn);
//! let report = pool.refresh().await?; // every connection replaced, none interrupted
//! assert!(report.overlap.is_empty());
//! # Ok(()) }
//! ```

mod early_password;
mod manager;
mod open;
mod refresh;
mod registry;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::manager::RecordErrors;
pub use self::manager::{Manager, PooledConn};
pub use self::open::PgConn;
use self::open::{Opener, Password, SessionSql};
pub use self::refresh::Refresher;
pub use self::registry::{ConnInfo, ConnectTiming, PoolStats, RefreshReport};
use self::registry::{Shared, lock, ms};
use crate::auth::{Action, TokenSigner};
pub use crate::error::{ConnectError, ConnectPhase, Hint};
use crate::error::{Error, Result};
use crate::settings::{Auth, ConfigError, ConnSettings, SslMode, SslNegotiation};
use crate::tls::TlsConnector;

/// How long [`Pool::close`] waits for connections to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The token-refreshing pool. Cheap to clone; every clone is the same pool.
#[derive(Clone)]
pub struct Pool {
    bb8: bb8::Pool<Manager>,
    shared: Arc<Shared>,
    opener: Arc<Opener>,
    signer: Option<(Arc<TokenSigner>, Action)>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// Builds the pool and opens its minimum idle connections, failing with the first
    /// real connection error.
    pub async fn new(settings: &ConnSettings) -> Result<Pool> {
        let signer = match settings.auth {
            Auth::Iam => Some(Arc::new(TokenSigner::new(&settings.target).await)),
            Auth::Password(_) => None,
        };
        Self::with_signer(settings, signer).await
    }

    /// Builds the pool with a signer of the caller's (custom credentials or clock).
    pub async fn with_signer(
        settings: &ConnSettings,
        signer: Option<Arc<TokenSigner>>,
    ) -> Result<Pool> {
        let tls = TlsConnector::new(&settings.tls, &settings.target.endpoint)?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&settings.target.user)
            .dbname(&settings.database)
            .application_name(&settings.application_name)
            .ssl_mode(match settings.tls.mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                _ => tokio_postgres::config::SslMode::Require,
            })
            .ssl_negotiation(match settings.tls.negotiation {
                SslNegotiation::Postgres => tokio_postgres::config::SslNegotiation::Postgres,
                SslNegotiation::Direct => tokio_postgres::config::SslNegotiation::Direct,
            });
        let action = Action::for_user(&settings.target.user);
        let password = match (&settings.auth, &signer) {
            (Auth::Iam, Some(signer)) => Password::Iam {
                signer: signer.clone(),
                action,
            },
            (Auth::Password(secret), _) => Password::Fixed(secret.clone()),
            (Auth::Iam, None) => {
                return Err(ConfigError("IAM authentication needs a token signer".into()).into());
            }
        };
        let pool_settings = settings.pool.clone();
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(1),
            next_number: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            swapped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            registry: Mutex::new(BTreeMap::new()),
            errors: watch::Sender::new(0),
            last_error: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(None),
            settings: pool_settings.clone(),
            staged: Mutex::new(Vec::new()),
            tasks: Arc::new(watch::Sender::new(0)),
        });
        let opener = Arc::new(Opener {
            password,
            config,
            host: settings.host.clone(),
            port: settings.port,
            addr: format!("{}:{}", settings.host, settings.port),
            tls,
            connect_timeout: pool_settings.connect_timeout,
            session_sql: match settings.auth {
                Auth::Iam => SessionSql::Dsql,
                Auth::Password(_) => SessionSql::BackendPid,
            },
            session_id_on_connect: pool_settings.session_id_on_connect,
            early_password: pool_settings.early_password,
            iam_hint: matches!(settings.auth, Auth::Iam),
        });
        let manager = Manager {
            opener: opener.clone(),
            shared: shared.clone(),
        };
        let reaper = [
            Duration::from_secs(30),
            pool_settings.max_lifetime / 2,
            pool_settings.idle_timeout / 2,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_millis(100));
        let bb8 = bb8::Pool::builder()
            .max_size(pool_settings.max_size)
            .min_idle(Some(pool_settings.min_idle))
            // Ours, not bb8's: a refresh swaps a fresh connection into an old one's slot, and
            // bb8 would age it from the slot's birth. The manager checks each connection's
            // own age on checkout and return.
            .max_lifetime(None)
            .idle_timeout(Some(pool_settings.idle_timeout))
            .connection_timeout(pool_settings.connect_timeout + Duration::from_secs(1))
            .reaper_rate(reaper)
            .test_on_check_out(true)
            .retry_connection(false)
            // The most recently returned connection is handed out first: a lightly loaded
            // pool keeps using a few warm connections (a warm server backend, warm caches)
            // instead of rotating through all of them, and the rest can idle out. Measured
            // with `dsql-pgx bench --clients 1`: about 3x the throughput of first-in-first-out.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .error_sink(Box::new(RecordErrors(shared.clone())))
            // Waits for the minimum idle connections; with retries off, the first
            // connection error comes back at once.
            .build(manager)
            .await
            .map_err(Error::from_connect)?;
        Ok(Pool {
            bb8,
            shared,
            opener,
            signer: signer.map(|s| (s, action)),
        })
    }

    /// Checks out `count` connections at once and returns them, so that many are open.
    pub async fn warm(&self, count: usize) -> Result<()> {
        self.get_many(count).await.map(drop)
    }

    /// Checks out `count` connections at once (each a distinct physical connection).
    pub async fn get_many(&self, count: usize) -> Result<Vec<PooledConn>> {
        let mut set = JoinSet::new();
        for _ in 0..count {
            let pool = self.clone();
            set.spawn(async move { pool.get().await });
        }
        let mut conns = Vec::with_capacity(count);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(conn)) => conns.push(conn),
                Ok(Err(error)) => return Err(error),
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
        conns.sort_by_key(|c| c.inner.meta.number);
        Ok(conns)
    }

    /// Checks out a connection. A connection error that happens while waiting is returned
    /// at once rather than after the acquire timeout.
    pub async fn get(&self) -> Result<PooledConn> {
        let mut errors = self.shared.errors.subscribe();
        let result = tokio::select! {
            biased;
            result = self.bb8.get_owned() => result,
            _ = errors.changed() => {
                return Err(self.shared.last_error().map_or(
                    Error::PoolTimeout(self.shared.settings.connect_timeout),
                    Error::from_connect,
                ));
            }
        };
        match result {
            Ok(inner) => {
                inner.meta.in_use.store(true, Ordering::Relaxed);
                Ok(PooledConn { inner })
            }
            Err(bb8::RunError::User(error)) => Err(Error::from_connect(error)),
            Err(bb8::RunError::TimedOut) => {
                // With room in the pool, the wait was not for a free connection but for one
                // that could not be opened: report why (an error raised before this checkout
                // subscribed, say), not "raise --max-conns".
                let full = self.bb8.state().connections >= self.shared.settings.max_size;
                match self.shared.last_error() {
                    Some(error) if !full => Err(Error::from_connect(error)),
                    _ => Err(Error::PoolTimeout(
                        self.shared.settings.connect_timeout + Duration::from_secs(1),
                    )),
                }
            }
        }
    }

    /// Closes the pool: every connection this handle's pool holds sends Terminate and closes
    /// (waiting at most a second for them), so servers log a clean goodbye, not a reset.
    /// Connections still checked out, or held by other clones of the pool, close when those
    /// are dropped.
    pub async fn close(self) {
        let mut live = self.shared.tasks.subscribe();
        lock(&self.shared.staged).clear();
        drop(self);
        let _ = tokio::time::timeout(CLOSE_WAIT, live.wait_for(|&n| n == 0)).await;
    }

    /// The live connections, by connection number.
    pub fn connections(&self) -> Vec<ConnInfo> {
        lock(&self.shared.registry)
            .values()
            .map(|meta| meta.info())
            .collect()
    }

    /// The current refresh generation (starts at 1).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> PoolStats {
        let state = self.bb8.state();
        let s = &state.statistics;
        let retired = self.shared.retired.load(Ordering::Relaxed);
        let expired = self.shared.expired.load(Ordering::Relaxed);
        PoolStats {
            generation: self.generation(),
            total: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            // Ours, not bb8's: a refresh adds the connections it opens itself.
            opened: self.shared.opened.load(Ordering::Relaxed),
            closed_lifetime: s.connections_closed_max_lifetime + expired,
            closed_idle: s.connections_closed_idle_timeout,
            // bb8 counts every closure on return or failed checkout as "broken" (a failed
            // checkout also as "invalid"); retirements and expiries are ours to subtract.
            closed_broken: s
                .connections_closed_broken
                .saturating_sub(retired + expired),
            closed_retired: retired + self.shared.swapped.load(Ordering::Relaxed),
            gets: s.get_direct + s.get_waited + s.get_timed_out,
            waits: s.get_waited,
            timeouts: s.get_timed_out,
            wait_ms: ms(s.get_wait_time),
        }
    }
}

impl Pool {
    /// Asks the server to cancel whatever the connection behind `token` is running.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) -> Result<()> {
        let opener = &self.opener;
        let tcp = TcpStream::connect((opener.host.as_str(), opener.port))
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: opener.addr.clone(),
                phase: ConnectPhase::Tcp,
                source,
            })
            .map_err(|e| Error::from_connect(Arc::new(e)))?;
        let (tls, _) = opener.tls.connect_once();
        token
            .cancel_query_raw(tcp, tls)
            .await
            .map_err(|source| Error::from_connect(Arc::new(opener.rejected(source))))
    }
}
