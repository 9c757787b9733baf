//! The token-signing connection pool: bb8 manager, connection registry, refresh, statistics.
//!
//! Every new physical connection signs a fresh IAM token (tokens are only checked when a
//! connection opens), connects over TLS and records who it is (session ID, timing, TLS
//! version) in a registry. A refresh is a *generation bump*: connections of an older
//! generation are never handed out again, idle ones close at once, busy ones close when they
//! are returned, and fresh ones are opened at once. There is one pool for the program's life;
//! no holder of a [`Pool`] ever sees it swapped, and the query path takes no lock.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let settings = dsql_pgx::settings::ConnSettings::for_endpoint(
//!     "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
//! )?;
//! let pool = dsql_pgx::Pool::new(&settings).await?;
//! let conn = pool.get().await?;
//! let rows = conn.query("select 1::int4", &[]).await?;
//! assert_eq!(rows[0].get::<_, i32>(0), 1);
//! drop(conn);
//! let report = pool.refresh().await?; // every connection replaced, none interrupted
//! assert!(report.overlap.is_empty());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout_at;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::auth::{Action, AuthError, Secret, TokenSigner};
use crate::cli::{SslMode, SslNegotiation};
use crate::settings::{Auth, ConfigError, ConnSettings, PoolSettings};
use crate::tls::{TlsConnector, TlsInfo};

/// `application_name` sent at startup (on DSQL's allow-list).
pub const APPLICATION_NAME: &str = concat!("dsql-pgx/", env!("CARGO_PKG_VERSION"));

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The token could not be signed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// TCP connect failed.
    #[error("cannot reach {addr}")]
    Tcp {
        /// host:port
        addr: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A phase did not finish within the connect timeout.
    #[error("connecting to {addr} timed out after {} (during {phase}); check the host, port and network, or raise --connect-timeout", humantime::format_duration(*timeout))]
    Timeout {
        /// host:port
        addr: String,
        /// The configured timeout.
        timeout: Duration,
        /// Which phase was running.
        phase: &'static str,
    },
    /// TLS or the PostgreSQL startup/authentication failed.
    #[error("connection to {addr} failed: {}{hint}", crate::exit::chain(error))]
    Rejected {
        /// host:port
        addr: String,
        /// Advice for authentication failures (empty otherwise).
        hint: String,
        /// The driver's error (already part of the message, so not a `source`).
        error: tokio_postgres::Error,
    },
    /// The connection opened but identifying its session failed.
    #[error("cannot read the session id on {addr}")]
    Session {
        /// host:port
        addr: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An idle connection belongs to an older generation (internal: it is closed and replaced).
    #[error("connection retired by a refresh")]
    Retired,
    /// An idle connection was found closed (internal: it is closed and replaced).
    #[error("connection closed")]
    Closed,
    /// An idle connection reached its maximum lifetime (internal: it is closed and replaced).
    #[error("connection reached its maximum lifetime")]
    Expired,
}

impl ConnectError {
    /// The server refused the connection for a limit that lifts by itself: too many
    /// connections (SQLSTATE 53300) or too many new connections per second (53400).
    /// Worth retrying after a pause, unlike authentication, TLS or configuration errors.
    pub fn is_limit(&self) -> bool {
        matches!(self, ConnectError::Rejected { error, .. }
            if matches!(error.code().map(|c| c.code()), Some("53300" | "53400")))
    }
}

/// How long one sweep checkout in a refresh waits before letting busy users retire the
/// remaining old idle connections.
const SWEEP_WAIT: Duration = Duration::from_millis(50);

/// The first pause before connecting again after the server refused for a limit.
const LIMIT_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between such attempts.
const LIMIT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause before attempt `retry` (from 0) after a limit refusal: a ceiling doubling from
/// [`LIMIT_BACKOFF_FIRST`] to [`LIMIT_BACKOFF_MAX`], and a random point in its upper half,
/// so connections refused together do not come back together.
fn limit_backoff(retry: u32, unit: f64) -> Duration {
    let ceiling = LIMIT_BACKOFF_FIRST
        .saturating_mul(1u32 << retry.min(16))
        .min(LIMIT_BACKOFF_MAX);
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Why a connection could not be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// Opening a connection failed: the first real error, not a time-out.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// No connection became free in time.
    #[error("no pooled connection became free within {}; raise the pool's size (--max-conns, PoolSettings::max_size)", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The settings could not be turned into a pool.
    #[error(transparent)]
    Config(Arc<ConfigError>),
}

/// Why a refresh did not happen; the old connections keep serving.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Credentials or signing failed, so nothing was retired.
    #[error("token refresh failed, existing connections keep serving")]
    Sign(#[source] AuthError),
    /// Fresh connections could not be opened.
    #[error("token refresh could not open fresh connections")]
    Connect(#[source] PoolError),
}

/// How long each phase of opening a connection took (in JSON: `token_ms`, ..., milliseconds
/// rounded to microseconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnectTiming {
    /// Token signing (including credential resolution when not cached).
    #[serde(rename = "token_ms", serialize_with = "ser_ms")]
    pub token: Duration,
    /// TCP connect (including name resolution).
    #[serde(rename = "tcp_ms", serialize_with = "ser_ms")]
    pub tcp: Duration,
    /// TLS handshake.
    #[serde(rename = "tls_ms", serialize_with = "ser_ms")]
    pub tls: Duration,
    /// Startup, authentication and the session-id query.
    #[serde(rename = "auth_ms", serialize_with = "ser_ms")]
    pub auth: Duration,
    /// All of it.
    #[serde(rename = "total_ms", serialize_with = "ser_ms")]
    pub total: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// A live connection as the registry sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    /// Client-side connection number, from 1.
    pub number: u64,
    /// Server session ID (`sys.current_session_id()`, or the backend PID on plain PostgreSQL).
    pub session_id: String,
    /// Refresh generation the connection belongs to.
    pub generation: u64,
    /// When it opened.
    #[serde(serialize_with = "ser_time")]
    pub opened_at: SystemTime,
    /// When its token was signed (`None` without IAM).
    #[serde(serialize_with = "ser_opt_time")]
    pub token_signed_at: Option<SystemTime>,
    /// Negotiated TLS version (`None` without TLS).
    pub tls_version: Option<String>,
    /// Whether ALPN `postgresql` was agreed.
    pub alpn: bool,
    /// Connect timing.
    pub timing: ConnectTiming,
    /// `idle` or `in use`.
    pub state: &'static str,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

struct ConnMeta {
    number: u64,
    /// When it became ready, for the lifetime check on checkout.
    ready: Instant,
    session_id: String,
    generation: u64,
    opened_at: SystemTime,
    token_signed_at: Option<SystemTime>,
    tls: Option<TlsInfo>,
    timing: ConnectTiming,
    in_use: AtomicBool,
    /// Inside a transaction one of our helpers opened (see [`PooledConn::mark_transaction`]).
    in_transaction: AtomicBool,
}

impl ConnMeta {
    fn info(&self) -> ConnInfo {
        ConnInfo {
            number: self.number,
            session_id: self.session_id.clone(),
            generation: self.generation,
            opened_at: self.opened_at,
            token_signed_at: self.token_signed_at,
            tls_version: self.tls.as_ref().map(|t| t.version.clone()),
            alpn: self.tls.as_ref().is_some_and(|t| t.alpn),
            timing: self.timing,
            state: if self.in_use.load(Ordering::Relaxed) {
                "in use"
            } else {
                "idle"
            },
        }
    }
}

/// A physical connection owned by the pool. Dereferences to a tokio-postgres [`Client`].
pub struct PgConn {
    client: Client,
    meta: Arc<ConnMeta>,
    shared: Weak<Shared>,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("number", &self.meta.number)
            .field("session_id", &self.meta.session_id)
            .field("generation", &self.meta.generation)
            .finish_non_exhaustive()
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.registry).remove(&self.meta.number);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Shared {
    generation: AtomicU64,
    next_number: AtomicU64,
    retired: AtomicU64,
    expired: AtomicU64,
    opened: AtomicU64,
    registry: Mutex<BTreeMap<u64, Arc<ConnMeta>>>,
    errors: watch::Sender<u64>,
    last_error: Mutex<Option<Arc<ConnectError>>>,
    refresh_lock: tokio::sync::Mutex<Option<RefreshReport>>,
    settings: PoolSettings,
}

impl Shared {
    fn record_error(&self, error: Arc<ConnectError>) {
        *lock(&self.last_error) = Some(error);
        self.errors.send_modify(|count| *count += 1);
    }

    fn last_error(&self) -> Option<Arc<ConnectError>> {
        lock(&self.last_error).clone()
    }

    /// The last connection error, if any happened after the error count was `seen`.
    fn last_error_since(&self, seen: u64) -> Option<Arc<ConnectError>> {
        (*self.errors.borrow() != seen)
            .then(|| self.last_error())
            .flatten()
    }

    fn is_retired(&self, meta: &ConnMeta) -> bool {
        meta.generation < self.generation.load(Ordering::Acquire)
    }

    /// bb8 checks the lifetime when a connection is returned and when the reaper runs, not
    /// on checkout; between reaper runs an idle connection can outlive it. DSQL closes a
    /// connection at its age limit even mid-query, so it is never handed out once expired.
    fn is_expired(&self, meta: &ConnMeta) -> bool {
        meta.ready.elapsed() >= self.settings.max_lifetime
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionSql {
    Dsql,
    BackendPid,
}

impl SessionSql {
    fn sql(self) -> &'static str {
        match self {
            SessionSql::Dsql => "select sys.current_session_id()",
            SessionSql::BackendPid => "select pg_backend_pid()::text",
        }
    }
}

enum Password {
    Iam {
        signer: Arc<TokenSigner>,
        action: Action,
    },
    Fixed(Option<Secret>),
}

/// Opens physical connections: sign, TCP, TLS, startup, session id.
struct Opener {
    password: Password,
    config: tokio_postgres::Config,
    host: String,
    port: u16,
    addr: String,
    tls: TlsConnector,
    connect_timeout: Duration,
    session_sql: OnceLock<SessionSql>,
    iam_hint: bool,
}

impl Opener {
    async fn open(&self, shared: &Arc<Shared>) -> Result<PgConn, ConnectError> {
        let number = shared.next_number.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.connect_timeout);
        let timed_out = |phase| ConnectError::Timeout {
            addr: self.addr.clone(),
            timeout: self.connect_timeout,
            phase,
        };

        let (password, token_signed_at) = match &self.password {
            Password::Iam { signer, action } => {
                let token = timeout_at(deadline, signer.sign(*action))
                    .await
                    .map_err(|_| timed_out("token signing"))??;
                (Some(token.value), Some(token.signed_at))
            }
            Password::Fixed(secret) => (secret.clone(), None),
        };
        let token_done = Instant::now();

        let tcp = timeout_at(
            deadline,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| timed_out("TCP connect"))?
        .map_err(|source| ConnectError::Tcp {
            addr: self.addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let tcp_done = Instant::now();

        let mut config = self.config.clone();
        if let Some(password) = &password {
            config.password(password.expose());
        }
        let (tls, tls_info) = self.tls.connect_once();
        let (client, connection) = timeout_at(deadline, config.connect_raw(tcp, tls))
            .await
            .map_err(|_| timed_out("TLS and authentication"))?
            .map_err(|source| self.rejected(source))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("connection closed: {error}");
            }
        });

        let session_id = timeout_at(deadline, self.session_id(&client))
            .await
            .map_err(|_| timed_out("session id query"))?
            .map_err(|source| ConnectError::Session {
                addr: self.addr.clone(),
                source,
            })?;
        let done = Instant::now();
        let tls = tls_info.get().cloned();
        let tls_time = tls.as_ref().map_or(Duration::ZERO, |t| t.handshake);
        let timing = ConnectTiming {
            token: token_done - started,
            tcp: tcp_done - token_done,
            tls: tls_time,
            auth: (done - tcp_done).saturating_sub(tls_time),
            total: done - started,
        };
        tracing::info!(
            number,
            session_id,
            token_ms = ms(timing.token),
            tcp_ms = ms(timing.tcp),
            tls_ms = ms(timing.tls),
            auth_ms = ms(timing.auth),
            "connection opened"
        );
        // The generation it joins is the one current when it joins: a connection that was
        // being opened across a refresh was never among the connections the refresh retired.
        let generation = shared.generation.load(Ordering::Acquire);
        let meta = Arc::new(ConnMeta {
            number,
            ready: done,
            session_id,
            generation,
            opened_at: SystemTime::now() - timing.total,
            token_signed_at,
            tls,
            timing,
            in_use: AtomicBool::new(false),
            in_transaction: AtomicBool::new(false),
        });
        lock(&shared.registry).insert(number, meta.clone());
        shared.opened.fetch_add(1, Ordering::Relaxed);
        Ok(PgConn {
            client,
            meta,
            shared: Arc::downgrade(shared),
        })
    }

    /// Opens a connection. A refusal for a connection limit (53300, 53400) is retried with
    /// a jittered, doubling backoff until the connect timeout; any other error, and the
    /// last refusal, is returned at once.
    async fn open_retrying(&self, shared: &Arc<Shared>) -> Result<PgConn, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut retry = 0;
        loop {
            let error = match self.open(shared).await {
                Ok(conn) => return Ok(conn),
                Err(error) => error,
            };
            let pause = limit_backoff(retry, rand::random());
            if !error.is_limit() || Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(
                "connection refused for a limit, retrying in {}: {}",
                humantime::format_duration(pause),
                crate::exit::chain(&error)
            );
            tokio::time::sleep(pause).await;
            retry += 1;
        }
    }

    fn rejected(&self, source: tokio_postgres::Error) -> ConnectError {
        let code = source
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_default();
        let message = source.as_db_error().map_or("", |e| e.message());
        let user = self.config.get_user().unwrap_or_default();
        let hint = rejection_hint(&code, message, user, self.iam_hint);
        ConnectError::Rejected {
            addr: self.addr.clone(),
            hint,
            error: source,
        }
    }

    async fn session_id(&self, client: &Client) -> Result<String, tokio_postgres::Error> {
        if let Some(kind) = self.session_sql.get() {
            return first_value(client, kind.sql()).await;
        }
        match first_value(client, SessionSql::Dsql.sql()).await {
            Ok(id) => {
                let _ = self.session_sql.set(SessionSql::Dsql);
                Ok(id)
            }
            // 3F000: schema "sys" does not exist; 42883: no such function. Plain PostgreSQL.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("3F000" | "42883")) => {
                let _ = self.session_sql.set(SessionSql::BackendPid);
                first_value(client, SessionSql::BackendPid.sql()).await
            }
            Err(e) => Err(e),
        }
    }
}

/// Advice for a connection the server refused, matched to its error: a role that does not
/// exist (or is not granted to the IAM identity) gets the statements that make it, a bad
/// token the clock, credentials and region.
fn rejection_hint(code: &str, message: &str, user: &str, iam: bool) -> String {
    if code == "0A000" {
        return "; a startup parameter is not on DSQL's allow-list".into();
    }
    if !iam || !code.starts_with("28") {
        return String::new();
    }
    let role = quote_ident(user);
    let grant = format!(
        "as admin: CREATE ROLE {role} WITH LOGIN; AWS IAM GRANT {role} TO '<IAM role ARN>'"
    );
    if message.starts_with("role ") && message.ends_with(" does not exist") {
        // The token was accepted; the role is missing.
        format!("; create role {role} and grant it to your IAM identity ({grant})")
    } else if user == "admin" {
        "; check the system clock, the AWS credentials and the region".into()
    } else {
        format!(
            "; check that role {role} exists and is granted to your IAM identity ({grant}), \
             then the system clock, the AWS credentials and the region"
        )
    }
}

/// A role name as SQL names it: bare when PostgreSQL would keep it as typed, else quoted.
fn quote_ident(name: &str) -> String {
    let bare = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn first_value(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

/// The bb8 manager: opens connections and retires those of older generations.
pub struct Manager {
    opener: Arc<Opener>,
    shared: Arc<Shared>,
}

/// Hands the pool's connection failures to [`Shared::record_error`], which wakes waiting
/// checkouts. bb8 calls it after releasing the failed attempt's slot, so a checkout that
/// starts on the news gets an attempt of its own (recorded any earlier, it could find the slot
/// still taken, wait on an attempt already over, and time out).
#[derive(Clone)]
struct RecordErrors(Arc<Shared>);

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
            .open_retrying(&self.shared)
            .await
            .map_err(|error| {
                let error = Arc::new(error);
                tracing::debug!("cannot open a connection: {}", crate::exit::chain(&*error));
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
    inner: bb8::PooledConnection<'static, Manager>,
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

    /// The server session ID.
    pub fn session_id(&self) -> &str {
        &self.inner.meta.session_id
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
            .field("session_id", &self.inner.meta.session_id)
            .finish()
    }
}

/// A snapshot of the pool's statistics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PoolStats {
    /// Current refresh generation.
    pub generation: u64,
    /// Open connections.
    pub total: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out.
    pub in_use: u32,
    /// Connections opened since start.
    pub opened: u64,
    /// Closed for reaching the maximum lifetime.
    pub closed_lifetime: u64,
    /// Closed for idling too long.
    pub closed_idle: u64,
    /// Closed because they broke.
    pub closed_broken: u64,
    /// Closed because a refresh retired them.
    pub closed_retired: u64,
    /// Checkouts.
    pub gets: u64,
    /// Checkouts that had to wait.
    pub waits: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
    /// Total time spent waiting, in milliseconds.
    pub wait_ms: f64,
}

impl PoolStats {
    /// The statistics of several pools as one: counts add up, the generation is the
    /// highest (each pool refreshes on its own).
    pub fn combined(all: impl IntoIterator<Item = PoolStats>) -> PoolStats {
        all.into_iter()
            .fold(PoolStats::default(), |a, b| PoolStats {
                generation: a.generation.max(b.generation),
                total: a.total + b.total,
                idle: a.idle + b.idle,
                in_use: a.in_use + b.in_use,
                opened: a.opened + b.opened,
                closed_lifetime: a.closed_lifetime + b.closed_lifetime,
                closed_idle: a.closed_idle + b.closed_idle,
                closed_broken: a.closed_broken + b.closed_broken,
                closed_retired: a.closed_retired + b.closed_retired,
                gets: a.gets + b.gets,
                waits: a.waits + b.waits,
                timeouts: a.timeouts + b.timeouts,
                wait_ms: a.wait_ms + b.wait_ms,
            })
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// The new generation.
    pub generation: u64,
    /// Session IDs open before the refresh (all retired).
    pub retired: Vec<String>,
    /// Session IDs of the fresh generation right after it.
    pub opened: Vec<String>,
    /// Session IDs present both before and after (must be empty).
    pub overlap: Vec<String>,
    /// Time the refresh took, in milliseconds.
    pub took_ms: f64,
}

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
    pub async fn new(settings: &ConnSettings) -> Result<Pool, PoolError> {
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
    ) -> Result<Pool, PoolError> {
        let tls = TlsConnector::new(&settings.tls, &settings.target.endpoint)
            .map_err(|e| PoolError::Config(Arc::new(e)))?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&settings.target.user)
            .dbname(&settings.database)
            .application_name(APPLICATION_NAME)
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
                return Err(PoolError::Config(Arc::new(ConfigError(
                    "IAM authentication needs a token signer".into(),
                ))));
            }
        };
        let pool_settings = settings.pool.clone();
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(1),
            next_number: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            registry: Mutex::new(BTreeMap::new()),
            errors: watch::Sender::new(0),
            last_error: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(None),
            settings: pool_settings.clone(),
        });
        let opener = Arc::new(Opener {
            password,
            config,
            host: settings.host.clone(),
            port: settings.port,
            addr: format!("{}:{}", settings.host, settings.port),
            tls,
            connect_timeout: pool_settings.connect_timeout,
            session_sql: OnceLock::new(),
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
            .max_lifetime(Some(pool_settings.max_lifetime))
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
            .map_err(PoolError::Connect)?;
        Ok(Pool {
            bb8,
            shared,
            opener,
            signer: signer.map(|s| (s, action)),
        })
    }

    /// Checks out `count` connections at once and returns them, so that many are open.
    pub async fn warm(&self, count: usize) -> Result<(), PoolError> {
        self.get_many(count).await.map(drop)
    }

    /// Checks out `count` connections at once (each a distinct physical connection).
    pub async fn get_many(&self, count: usize) -> Result<Vec<PooledConn>, PoolError> {
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
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        let mut errors = self.shared.errors.subscribe();
        let result = tokio::select! {
            biased;
            result = self.bb8.get_owned() => result,
            _ = errors.changed() => {
                return Err(self.shared.last_error().map_or(
                    PoolError::Timeout(self.shared.settings.connect_timeout),
                    PoolError::Connect,
                ));
            }
        };
        match result {
            Ok(inner) => {
                inner.meta.in_use.store(true, Ordering::Relaxed);
                Ok(PooledConn { inner })
            }
            Err(bb8::RunError::User(error)) => Err(PoolError::Connect(error)),
            Err(bb8::RunError::TimedOut) => {
                // With room in the pool, the wait was not for a free connection but for one
                // that could not be opened: report why (an error raised before this checkout
                // subscribed, say), not "raise --max-conns".
                let full = self.bb8.state().connections >= self.shared.settings.max_size;
                match self.shared.last_error() {
                    Some(error) if !full => Err(PoolError::Connect(error)),
                    _ => Err(PoolError::Timeout(
                        self.shared.settings.connect_timeout + Duration::from_secs(1),
                    )),
                }
            }
        }
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
            closed_retired: retired,
            gets: s.get_direct + s.get_waited + s.get_timed_out,
            waits: s.get_waited,
            timeouts: s.get_timed_out,
            wait_ms: ms(s.get_wait_time),
        }
    }

    /// Replaces every connection: re-resolves credentials, proves a token can be signed,
    /// bumps the generation, closes idle old connections at once (busy ones when returned)
    /// and opens fresh ones up to the minimum idle size. Concurrent calls coalesce into one.
    ///
    /// If credentials or signing fail, nothing is retired and the old connections keep
    /// serving.
    pub async fn refresh(&self) -> Result<RefreshReport, RefreshError> {
        let seen = self.generation();
        let mut last = self.shared.refresh_lock.lock().await;
        if self.generation() != seen
            && let Some(report) = last.as_ref()
        {
            return Ok(report.clone());
        }
        let started = Instant::now();
        if let Some((signer, action)) = &self.signer {
            signer
                .reload_credentials()
                .await
                .map_err(RefreshError::Sign)?;
            signer.sign(*action).await.map_err(RefreshError::Sign)?;
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
                    Ok(Err(error)) => return Err(RefreshError::Connect(error)),
                    Err(_) => {}
                }
                continue;
            }
            if self.fresh_count(generation) >= want {
                break;
            }
            if let Some(error) = self.shared.last_error_since(errors_seen) {
                return Err(RefreshError::Connect(PoolError::Connect(error)));
            }
            // Nothing old left idle and too few fresh: a checkout makes bb8 open connections
            // up to the minimum idle size (and reports at once if it cannot).
            match tokio::time::timeout(SWEEP_WAIT, self.get()).await {
                Ok(Ok(conn)) => drop(conn),
                Ok(Err(error)) => return Err(RefreshError::Connect(error)),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(held);
        // Too few fresh connections with room for them means they could not be opened in
        // time. (A pool full of busy old connections is fine: each retires when returned.)
        if self.fresh_count(generation) < want && self.bb8.state().connections < settings.max_size {
            let error = self.shared.last_error_since(errors_seen).map_or(
                PoolError::Timeout(settings.connect_timeout),
                PoolError::Connect,
            );
            return Err(RefreshError::Connect(error));
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
    fn fresh_count(&self, generation: u64) -> usize {
        lock(&self.shared.registry)
            .values()
            .filter(|m| m.generation == generation)
            .count()
    }

    fn stale_idle(&self, generation: u64) -> bool {
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
                            tracing::warn!("{}", crate::exit::chain(&error));
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
    pub reports: mpsc::UnboundedReceiver<Result<RefreshReport, Arc<RefreshError>>>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pool {
    /// Asks the server to cancel whatever the connection behind `token` is running.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) -> Result<(), ConnectError> {
        let opener = &self.opener;
        let tcp = TcpStream::connect((opener.host.as_str(), opener.port))
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: opener.addr.clone(),
                source,
            })?;
        let (tls, _) = opener.tls.connect_once();
        token
            .cancel_query_raw(tcp, tls)
            .await
            .map_err(|source| opener.rejected(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_match_the_error() {
        // A missing role: the role and how to grant it, not the clock.
        let hint = rejection_hint("28000", "role \"app\" does not exist", "app", true);
        assert!(
            hint.contains("AWS IAM GRANT app TO '<IAM role ARN>'"),
            "{hint}"
        );
        assert!(hint.contains("CREATE ROLE app WITH LOGIN"), "{hint}");
        assert!(!hint.contains("clock"), "{hint}");
        // DSQL's one message for any refusal: the role first for a custom role.
        let hint = rejection_hint(
            "28000",
            "IAM authentication failed for user \"App\"",
            "App",
            true,
        );
        assert!(hint.contains("AWS IAM GRANT \"App\" TO"), "{hint}");
        assert!(hint.contains("clock"), "{hint}");
        let hint = rejection_hint("28P01", "IAM authentication failed", "admin", true);
        assert!(hint.contains("clock") && !hint.contains("GRANT"), "{hint}");
        // Without IAM a password failure is PostgreSQL's own business.
        assert_eq!(
            rejection_hint("28P01", "password authentication failed", "u", false),
            ""
        );
        assert!(rejection_hint("0A000", "", "admin", true).contains("allow-list"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn stats_of_several_pools_add_up() {
        let a = PoolStats {
            generation: 3,
            total: 4,
            idle: 1,
            in_use: 3,
            opened: 9,
            closed_retired: 5,
            gets: 100,
            waits: 2,
            wait_ms: 1.5,
            ..PoolStats::default()
        };
        let b = PoolStats {
            generation: 2,
            total: 2,
            idle: 2,
            opened: 4,
            closed_broken: 1,
            gets: 50,
            timeouts: 1,
            wait_ms: 0.5,
            ..PoolStats::default()
        };
        let all = PoolStats::combined([a, b]);
        assert_eq!(all.generation, 3);
        assert_eq!((all.total, all.idle, all.in_use), (6, 3, 3));
        assert_eq!(
            (all.opened, all.closed_retired, all.closed_broken),
            (13, 5, 1)
        );
        assert_eq!((all.gets, all.waits, all.timeouts), (150, 2, 1));
        assert!((all.wait_ms - 2.0).abs() < 1e-9);
        assert_eq!(PoolStats::combined([a]).gets, 100);
    }

    #[test]
    fn limit_backoff_doubles_with_jitter_up_to_a_ceiling() {
        assert_eq!(limit_backoff(0, 1.0), LIMIT_BACKOFF_FIRST);
        assert_eq!(limit_backoff(0, 0.0), LIMIT_BACKOFF_FIRST / 2);
        assert_eq!(limit_backoff(2, 1.0), LIMIT_BACKOFF_FIRST * 4);
        assert_eq!(limit_backoff(40, 1.0), LIMIT_BACKOFF_MAX);
        assert_eq!(limit_backoff(40, 7.0), LIMIT_BACKOFF_MAX, "unit is clamped");
        for retry in 0..10 {
            let pause = limit_backoff(retry, 0.3);
            assert!(pause >= LIMIT_BACKOFF_FIRST / 2 && pause <= LIMIT_BACKOFF_MAX);
        }
    }
}
