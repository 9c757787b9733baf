//! One client connection to the local endpoint: TLS negotiation (SSLRequest or direct
//! TLS with ALPN), startup checks, IAM token authentication, DSQL's limits, then a relay to
//! the private PostgreSQL until the connection's maximum age.
//!
//! What a client without a valid token can spend is bounded apart from what valid clients
//! need: a handshake slot (at most [`handshake_cap`] at once, each for at most
//! [`HANDSHAKE_TIMEOUT`]; when all are taken, a new socket takes the oldest one's, so idle
//! sockets held by a stranger cannot lock valid clients out); the connection rate and the connection slots are taken only once
//! the token verified. Cancel requests are rate-limited per source address, forwarded only
//! when they name an open connection, and a few at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::error::SqlState;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::clock::Clock;
use super::dialect::{self, Classifier};
use super::postgres::{INTERNAL_SUPERUSER, Upstream};
use super::verify::TokenVerifier;
use super::wire::{self, Boundaries, FirstPacket, Startup};

/// Time a client gets from TCP accept to ReadyForQuery. DSQL documents none; a client that
/// holds its token needs a few round trips, so 10 s is ample on a slow link and bounds how
/// long a silent socket holds a handshake slot.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Fewest handshakes allowed in progress at once, whatever the burst.
const MIN_HANDSHAKES: u32 = 64;
/// How long the endpoint's own FATAL waits for the end of the message being relayed.
const BOUNDARY_WAIT: Duration = Duration::from_secs(2);
/// Read buffer of the upstream-to-client relay.
const RELAY_BUFFER: usize = 32 * 1024;
/// Cancel requests per source address: a bucket this size...
const CANCEL_BURST: u32 = 10;
/// ...refilled at this rate per second.
const CANCEL_RATE_PER_SEC: u32 = 5;
/// Source addresses whose cancel budget is tracked; beyond, new sources share one bucket.
const MAX_CANCEL_SOURCES: usize = 1024;
/// Cancel requests forwarded to PostgreSQL at once.
const MAX_CANCELS_IN_FLIGHT: usize = 8;
/// How long a cancel request waits for one of those.
const CANCEL_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// What a client hears once the private PostgreSQL is gone (08006: the endpoint's own
/// connection to its database failed, and nothing will bring it back).
const UPSTREAM_GONE: &str = "the local endpoint's PostgreSQL server is not running; see postgres.log in its data directory and restart dsql-pgx local";
/// Largest upstream message relayed during startup.
const MAX_UPSTREAM_STARTUP_MSG: usize = 1 << 20;

/// DSQL's connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A connection is closed this long after it opened (DSQL: 1 hour).
    pub max_connection_age: Duration,
    /// Open connections at most (DSQL: 10,000); 0 means unlimited. [`LocalEndpoint`] caps
    /// it at what its PostgreSQL takes ([`MAX_CLIENT_CONNECTIONS`]).
    ///
    /// [`LocalEndpoint`]: super::LocalEndpoint
    /// [`MAX_CLIENT_CONNECTIONS`]: super::postgres::MAX_CLIENT_CONNECTIONS
    pub max_connections: u32,
    /// New connections per second, refilled continuously (DSQL: 100); 0 means unlimited.
    pub rate_per_sec: u32,
    /// Token-bucket size for new connections (DSQL: 1,000); also how many connections may
    /// be in their handshake (TLS, startup, authentication) at once, at least 64.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connection_age: Duration::from_secs(3600),
            max_connections: 10_000,
            rate_per_sec: 100,
            burst: 1000,
        }
    }
}

/// A token bucket: `capacity` tokens, refilled continuously at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: u32, capacity: u32) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + refill).min(f64::from(capacity.max(1)));
        self.last = self.last.max(now);
    }

    /// Takes one token; `false` when there is none.
    fn take(&mut self, now: Instant, rate: u32, capacity: u32) -> bool {
        self.refill(now, rate, capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled to the top (then it is the same as a new one).
    fn is_full(&mut self, now: Instant, rate: u32, capacity: u32) -> bool {
        self.refill(now, rate, capacity);
        self.tokens >= f64::from(capacity.max(1))
    }
}

/// Cancel-request budgets per source address, in a bounded map.
#[derive(Debug)]
struct CancelBudget {
    sources: HashMap<IpAddr, Bucket>,
}

impl CancelBudget {
    fn new(_now: Instant) -> Self {
        Self {
            sources: HashMap::new(),
        }
    }

    /// Takes one cancel from `source`'s budget; `false` when it is spent. A new source
    /// always gets a budget of its own: when [`MAX_CANCEL_SOURCES`] are tracked, the ones
    /// whose budget is full again are dropped, else the one heard from least recently, so
    /// sources that keep theirs spent cannot leave a newcomer without one.
    fn take(&mut self, source: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (CANCEL_RATE_PER_SEC, CANCEL_BURST);
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_CANCEL_SOURCES {
            self.sources.retain(|_, b| !b.is_full(now, rate, burst));
            if self.sources.len() >= MAX_CANCEL_SOURCES
                && let Some(stalest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, b)| b.last)
                    .map(|(ip, _)| *ip)
            {
                self.sources.remove(&stalest);
            }
        }
        self.sources
            .entry(source)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, rate, burst)
    }
}

/// Sockets in their handshake, oldest first, each with a way to tell it to give up.
#[derive(Debug)]
struct Handshakes {
    cap: usize,
    next: AtomicU64,
    waiting: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Handshakes {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next: AtomicU64::new(0),
            waiting: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A socket let in for its handshake: its slot, and the news that a newer socket took it.
pub(crate) struct Admitted {
    slot: HandshakeSlot,
    evicted: oneshot::Receiver<()>,
}

/// One handshake slot, given back when dropped (once the token verified, or the socket ends).
struct HandshakeSlot {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared.handshakes.lock().remove(&self.id);
    }
}

/// State shared by all connections of one endpoint.
pub(crate) struct Shared {
    pub(crate) verifier: TokenVerifier,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) upstream: Upstream,
    pub(crate) limits: Limits,
    pub(crate) clock: Clock,
    bucket: Mutex<Bucket>,
    open: AtomicU32,
    handshakes: Handshakes,
    cancel_budget: Mutex<CancelBudget>,
    cancels_in_flight: Semaphore,
    /// BackendKeyData (process id, secret key) of every open relayed connection.
    backend_keys: Mutex<HashSet<[u8; 8]>>,
    upstream_failed: AtomicBool,
    /// DSQL's dialect; `None` relays statements as they are.
    classifier: Option<Arc<Classifier>>,
    /// DSQL's transaction age limit, with the dialect.
    max_transaction_age: Duration,
    /// The runner of `CREATE INDEX ASYNC` jobs, with the dialect.
    jobs: Option<Arc<dialect::jobs::Jobs>>,
    /// Committed schema changes, for OCC's OC001.
    schema: Arc<dialect::occ::SchemaVersion>,
    /// The IAM identity every verified token stands for, when a role other than `admin`
    /// must be granted to it (`AWS IAM GRANT`) to log in.
    iam_arn: Option<String>,
}

impl Shared {
    pub(crate) fn new(
        verifier: TokenVerifier,
        acceptor: TlsAcceptor,
        upstream: Upstream,
        limits: Limits,
        clock: Clock,
    ) -> Self {
        let now = clock.instant();
        let bucket = Bucket::full(limits.burst, now);
        let handshakes = Handshakes::new(handshake_cap(&limits) as usize);
        Self {
            verifier,
            acceptor,
            upstream,
            limits,
            clock,
            bucket: Mutex::new(bucket),
            open: AtomicU32::new(0),
            handshakes,
            cancel_budget: Mutex::new(CancelBudget::new(now)),
            cancels_in_flight: Semaphore::new(MAX_CANCELS_IN_FLIGHT),
            backend_keys: Mutex::new(HashSet::new()),
            upstream_failed: AtomicBool::new(false),
            classifier: None,
            max_transaction_age: Duration::ZERO,
            jobs: None,
            schema: Arc::default(),
            iam_arn: None,
        }
    }

    /// Lets a role other than `admin` log in only when it is granted to `arn`.
    pub(crate) fn with_iam_grants(mut self, arn: String) -> Self {
        self.iam_arn = Some(arn);
        self
    }

    /// Speaks DSQL's dialect with `classifier`; transactions last at most
    /// `max_transaction_age`.
    pub(crate) fn with_dialect(
        mut self,
        classifier: Classifier,
        max_transaction_age: Duration,
    ) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self.max_transaction_age = max_transaction_age;
        self
    }

    /// Runs `ASYNC` statements as background jobs of `jobs`.
    pub(crate) fn with_jobs(mut self, jobs: dialect::jobs::Jobs) -> Self {
        self.jobs = Some(Arc::new(jobs));
        self
    }

    /// A handshake slot for a new socket. When all are taken, the oldest handshake in
    /// progress is told to give its slot up (its socket is closed), and this one takes it.
    pub(crate) fn admit(self: &Arc<Self>) -> Admitted {
        let id = self.handshakes.next.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        let mut waiting = self.handshakes.lock();
        if waiting.len() >= self.handshakes.cap
            && let Some((_, oldest)) = waiting.pop_first()
        {
            let _ = oldest.send(());
        }
        waiting.insert(id, evict);
        drop(waiting);
        Admitted {
            slot: HandshakeSlot {
                id,
                shared: self.clone(),
            },
            evicted,
        }
    }

    /// Handshakes in progress.
    #[cfg(test)]
    pub(crate) fn handshakes_in_progress(&self) -> usize {
        self.handshakes.lock().len()
    }

    /// Records that the private PostgreSQL has exited: new clients get one FATAL 08006.
    pub(crate) fn mark_upstream_failed(&self) {
        self.upstream_failed.store(true, Ordering::SeqCst);
    }

    fn upstream_is_gone(&self) -> bool {
        self.upstream_failed.load(Ordering::SeqCst)
    }

    fn take_cancel(&self, source: IpAddr, now: Instant) -> bool {
        self.cancel_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(source, now)
    }

    /// Registers an open connection's backend key until the guard drops.
    fn register_backend(self: &Arc<Self>, key: [u8; 8]) -> BackendKey {
        self.backend_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        BackendKey(self.clone(), key)
    }

    fn is_open_backend(&self, key: &[u8]) -> bool {
        key.try_into().is_ok_and(|k: [u8; 8]| {
            self.backend_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&k)
        })
    }

    /// Takes one token from the rate bucket; `false` when the rate is exceeded.
    fn take_rate_token(&self, now: Instant) -> bool {
        let rate = self.limits.rate_per_sec;
        if rate == 0 {
            return true;
        }
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now, rate, self.limits.burst)
    }

    /// Counts an open connection, or `None` at the limit.
    fn open_connection(self: &Arc<Self>) -> Option<OpenGuard> {
        let max = self.limits.max_connections;
        let prev = self.open.fetch_add(1, Ordering::SeqCst);
        if max != 0 && prev >= max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(OpenGuard(self.clone()))
    }
}

/// Holds one slot of `max_connections` until dropped.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps a connection's backend key registered (cancel requests may name it) until dropped.
struct BackendKey(Arc<Shared>, [u8; 8]);

impl Drop for BackendKey {
    fn drop(&mut self) {
        self.0
            .backend_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Handshakes allowed at once: a full burst of valid clients may arrive together.
pub(crate) fn handshake_cap(limits: &Limits) -> u32 {
    limits.burst.max(MIN_HANDSHAKES)
}

/// Resolves once the endpoint shuts down (or its owner is gone).
pub(crate) async fn shutdown_signaled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// An authenticated client spliced to an upstream backend.
struct Established {
    client: TlsStream<TcpStream>,
    upstream: UnixStream,
    /// The role the client logged in as.
    user: String,
    _slot: OpenGuard,
    _key: Option<BackendKey>,
}

/// Serves one client connection to completion; `handshake` is its handshake slot, given
/// back once its token verified. Never panics on client input; errors are logged at debug
/// level (authentication failures at warn).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    mut shutdown: watch::Receiver<bool>,
) {
    let opened = shared.clock.instant();
    let Admitted { slot, mut evicted } = admitted;
    let established = tokio::select! {
        r = shared.clock.timeout(HANDSHAKE_TIMEOUT, establish(&shared, tcp, peer, slot)) => match r {
            Some(Ok(Some(e))) => e,
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                tracing::debug!(%peer, "connection ended during startup: {e:#}");
                return;
            }
            None => {
                tracing::debug!(%peer, "startup timed out");
                return;
            }
        },
        // Only a send counts: the sender also goes away when the slot is given back.
        Ok(()) = &mut evicted => {
            tracing::debug!(%peer, "connection closed: its handshake slot went to a newer socket");
            return;
        }
        () = shutdown_signaled(&mut shutdown) => return,
    };
    let Established {
        client,
        mut upstream,
        user,
        _slot,
        _key,
    } = established;
    let deadline = opened + shared.limits.max_connection_age;
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let mut hard_stop_rx = shutdown.clone();
    let hard_stop = async {
        ending(&shared.clock, deadline, &mut hard_stop_rx).await;
        tokio::time::sleep(BOUNDARY_WAIT).await;
    };
    // When the client leaves, PostgreSQL is told (its read side ends) and the relay goes on
    // until PostgreSQL closes: until then its backend lives, may still be cancelled (its key
    // stays registered) and holds its connection slot.
    let refusals = dialect::relay::Refusals::new(shared.schema.clone());
    let mut filter = shared
        .classifier
        .as_ref()
        .map(|_| dialect::relay::ResponseFilter::new(refusals.clone()));
    let client_to_upstream = async {
        let relayed = match &shared.classifier {
            Some(c) => {
                let mut side = dialect::relay::ClientSide::new(
                    c.clone(),
                    refusals.clone(),
                    shared.max_transaction_age,
                    shared.clock.clone(),
                );
                if let Some(jobs) = &shared.jobs {
                    side = side.with_jobs(jobs.clone(), user.clone());
                }
                dialect::relay::relay_from_client(&mut from_client, &mut to_upstream, &mut side)
                    .await
            }
            None => tokio::io::copy(&mut from_client, &mut to_upstream)
                .await
                .map(|_| ()),
        };
        if let Err(e) = relayed {
            tracing::debug!(%peer, "client connection closed: {e}");
        }
        let _ = to_upstream.shutdown().await;
        std::future::pending::<()>().await
    };
    let relayed = tokio::select! {
        () = client_to_upstream => unreachable!("pending forever"),
        r = relay_to_client(&mut from_upstream, &mut to_client, ending(&shared.clock, deadline, &mut shutdown), filter.as_mut()) => r,
        () = hard_stop => {
            tracing::debug!(%peer, "no message boundary within {BOUNDARY_WAIT:?}: closed without a FATAL");
            Ok(())
        }
    };
    if let Err(e) = relayed {
        // The client is gone: wait (at most until the connection's end) for PostgreSQL.
        tracing::debug!(%peer, "connection closed: {e}");
        let mut discard = tokio::io::sink();
        tokio::select! {
            _ = tokio::io::copy(&mut from_upstream, &mut discard) => {}
            _ = ending(&shared.clock, deadline, &mut shutdown) => {}
        }
    }
    let _ = upstream.shutdown().await;
}

/// Resolves with the FATAL that ends a connection: at its maximum age or at shutdown.
async fn ending(clock: &Clock, deadline: Instant, shutdown: &mut watch::Receiver<bool>) -> Vec<u8> {
    tokio::select! {
        () = clock.sleep_until(deadline) => {
            wire::fatal(SqlState::ADMIN_SHUTDOWN.code(), "terminating connection: it reached its maximum age")
        }
        () = shutdown_signaled(shutdown) => {
            wire::fatal(SqlState::ADMIN_SHUTDOWN.code(), "terminating connection due to administrator command")
        }
    }
}

/// Relays PostgreSQL's messages to the client, whole read buffers at a time, following
/// where the messages end. Returns when PostgreSQL closes (the client's side is then shut
/// down too), or, once `ending` resolves, at the next message boundary: the client then
/// gets `ending`'s FATAL and a close. The caller bounds the wait for that boundary.
async fn relay_to_client<U, C>(
    upstream: &mut U,
    client: &mut C,
    ending: impl Future<Output = Vec<u8>>,
    mut filter: Option<&mut dialect::relay::ResponseFilter>,
) -> io::Result<()>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut boundaries = Boundaries::default();
    let mut fatal: Option<Vec<u8>> = None;
    let mut filtered = Vec::new();
    tokio::pin!(ending);
    loop {
        if let Some(msg) = &fatal
            && boundaries.at_boundary()
        {
            client.write_all(msg).await?;
            client.flush().await?;
            return client.shutdown().await;
        }
        let n = if fatal.is_none() {
            tokio::select! {
                biased;
                msg = &mut ending => {
                    fatal = Some(msg);
                    continue;
                }
                r = upstream.read(&mut buf) => r?,
            }
        } else {
            upstream.read(&mut buf).await?
        };
        if n == 0 {
            client.flush().await?;
            return client.shutdown().await;
        }
        let upto = boundaries.advance(&buf[..n], fatal.is_some()).unwrap_or(n);
        match filter.as_deref_mut() {
            Some(f) => {
                filtered.clear();
                f.feed(&buf[..upto], &mut filtered);
                client.write_all(&filtered).await?;
            }
            None => client.write_all(&buf[..upto]).await?,
        }
        client.flush().await?;
    }
}

/// The refusal of a TLS connection without SNI: clients send none when they connect by IP
/// address, and some (pgJDBC, Java's TLS) also for a name without a dot such as
/// `localhost`, so the message names both causes and the endpoint's own name.
fn no_sni_message(hostname: &str) -> String {
    let name = wire::escape_for_message(hostname);
    let cause = "TLS server name indication (SNI) is required and this client sent none, as clients do for an IP address (and pgJDBC for a name without a dot, such as localhost)";
    if hostname.contains('.') {
        format!(
            "{cause}: connect by the name {name} (libpq: host={name} hostaddr=<its IP address>, as PGHOST and PGHOSTADDR from dsql-pgx local)"
        )
    } else {
        format!(
            "{cause}: connect by the name {name}, or, for a client that sends no SNI for it, run dsql-pgx local with a --hostname that has a dot (its default does)"
        )
    }
}

async fn send_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let _ = w.write_all(&wire::fatal(code, message)).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Forwards a cancel request to PostgreSQL if its source has budget left, it names an open
/// connection (else PostgreSQL would fork a process only to ignore it), and a forwarding
/// slot frees up soon; otherwise drops it, as PostgreSQL answers none either.
async fn forward_cancel(shared: &Shared, peer: SocketAddr, packet: [u8; 16]) -> anyhow::Result<()> {
    if !shared.take_cancel(peer.ip(), shared.clock.instant()) {
        tracing::debug!(%peer, "cancel request dropped: this source's cancel rate exceeded");
        return Ok(());
    }
    if !shared.is_open_backend(&packet[8..]) {
        tracing::debug!(%peer, "cancel request dropped: it names no open connection");
        return Ok(());
    }
    let Ok(Ok(_forwarding)) =
        tokio::time::timeout(CANCEL_QUEUE_WAIT, shared.cancels_in_flight.acquire()).await
    else {
        tracing::debug!(%peer, "cancel request dropped: too many being forwarded");
        return Ok(());
    };
    let mut up = shared
        .upstream
        .connect()
        .await
        .context("connecting to PostgreSQL to forward a cancel request")?;
    up.write_all(&packet).await?;
    up.shutdown().await?;
    Ok(())
}

/// Runs the connection up to ReadyForQuery. `Ok(None)`: the client was answered and
/// the connection is over.
async fn establish(
    shared: &Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    handshake: HandshakeSlot,
) -> anyhow::Result<Option<Established>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    let direct = first[0] == 0x16;
    if !direct {
        loop {
            match wire::read_first_packet(&mut tcp).await? {
                Ok(FirstPacket::SslRequest) => {
                    tcp.write_all(b"S").await?;
                    break;
                }
                Ok(FirstPacket::GssEncRequest) => tcp.write_all(b"N").await?,
                Ok(FirstPacket::Cancel(packet)) => {
                    forward_cancel(shared, peer, packet).await?;
                    return Ok(None);
                }
                Ok(FirstPacket::Startup(_)) => {
                    tracing::debug!(%peer, "plaintext connection refused");
                    send_fatal(
                        &mut tcp,
                        SqlState::PROTOCOL_VIOLATION.code(),
                        "SSL/TLS required",
                    )
                    .await;
                    return Ok(None);
                }
                Err(e) => {
                    send_fatal(
                        &mut tcp,
                        SqlState::PROTOCOL_VIOLATION.code(),
                        &e.to_string(),
                    )
                    .await;
                    return Ok(None);
                }
            }
        }
    }
    let mut tls = shared.acceptor.accept(tcp).await.context("TLS handshake")?;
    let (alpn_ok, sni) = {
        let conn = tls.get_ref().1;
        (
            conn.alpn_protocol() == Some(crate::tls::ALPN_POSTGRESQL),
            conn.server_name().map(str::to_owned),
        )
    };
    if direct && !alpn_ok {
        send_fatal(
            &mut tls,
            SqlState::PROTOCOL_VIOLATION.code(),
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )
        .await;
        return Ok(None);
    }

    let startup = match wire::read_first_packet(&mut tls).await? {
        Ok(FirstPacket::Startup(s)) => s,
        Ok(FirstPacket::Cancel(packet)) => {
            forward_cancel(shared, peer, packet).await?;
            return Ok(None);
        }
        Ok(FirstPacket::SslRequest | FirstPacket::GssEncRequest) => {
            send_fatal(
                &mut tls,
                SqlState::PROTOCOL_VIOLATION.code(),
                "encryption requested twice",
            )
            .await;
            return Ok(None);
        }
        Err(e) => {
            send_fatal(
                &mut tls,
                SqlState::PROTOCOL_VIOLATION.code(),
                &e.to_string(),
            )
            .await;
            return Ok(None);
        }
    };
    if shared.upstream_is_gone() {
        send_fatal(&mut tls, SqlState::CONNECTION_FAILURE.code(), UPSTREAM_GONE).await;
        return Ok(None);
    }
    // DSQL routes a connection by its TLS server name: without SNI there is no cluster.
    if sni.is_none() {
        tracing::debug!(%peer, "connection refused: no TLS server name (SNI)");
        send_fatal(
            &mut tls,
            SqlState::PROTOCOL_VIOLATION.code(),
            &no_sni_message(shared.verifier.hostname()),
        )
        .await;
        return Ok(None);
    }
    if let Some(name) = startup.first_disallowed() {
        let msg = format!(
            "setting configuration parameter \"{}\" not supported",
            wire::escape_for_message(name)
        );
        send_fatal(&mut tls, SqlState::FEATURE_NOT_SUPPORTED.code(), &msg).await;
        return Ok(None);
    }
    let Some(user) = startup.user().map(str::to_owned) else {
        send_fatal(
            &mut tls,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION.code(),
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return Ok(None);
    };
    if startup.database() != "postgres" {
        let msg = format!(
            "database \"{}\" does not exist",
            wire::escape_for_message(startup.database())
        );
        send_fatal(&mut tls, SqlState::INVALID_CATALOG_NAME.code(), &msg).await;
        return Ok(None);
    }
    tls.write_all(&wire::auth_cleartext_request()).await?;
    tls.flush().await?;
    let password = match wire::read_message(&mut tls, wire::MAX_PASSWORD_LEN).await? {
        Ok((tag, body)) => match wire::parse_password(tag, &body) {
            Ok(p) => p.to_owned(),
            Err(e) => {
                send_fatal(
                    &mut tls,
                    SqlState::PROTOCOL_VIOLATION.code(),
                    &e.to_string(),
                )
                .await;
                return Ok(None);
            }
        },
        Err(e) => {
            send_fatal(
                &mut tls,
                SqlState::PROTOCOL_VIOLATION.code(),
                &e.to_string(),
            )
            .await;
            return Ok(None);
        }
    };
    let shown_user = wire::escape_for_message(&user);
    let now = shared.clock.now();
    if let Err(reason) = shared
        .verifier
        .verify(&user, &password, sni.as_deref(), now)
    {
        tracing::warn!(%peer, user = %shown_user, %reason, "IAM authentication failed");
        refuse_iam(&mut tls, &shown_user).await;
        return Ok(None);
    }
    drop(password);
    // The private PostgreSQL's superuser is the endpoint's alone: never relayed, refused as
    // PostgreSQL refuses a role that does not exist.
    if user == INTERNAL_SUPERUSER {
        tracing::warn!(%peer, user = %shown_user, "login as the internal superuser refused");
        let msg = format!("role \"{shown_user}\" does not exist");
        send_fatal(
            &mut tls,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION.code(),
            &msg,
        )
        .await;
        return Ok(None);
    }
    // Only a client whose token verified spends the connection rate and a slot.
    drop(handshake);
    if !shared.take_rate_token(shared.clock.instant()) {
        tracing::info!(%peer, "connection refused: rate exceeded");
        send_fatal(
            &mut tls,
            SqlState::CONFIGURATION_LIMIT_EXCEEDED.code(),
            "Unable to accept connection, rate exceeded.",
        )
        .await;
        return Ok(None);
    }
    let Some(slot) = shared.open_connection() else {
        tracing::info!(%peer, "connection refused: too many open connections");
        send_fatal(
            &mut tls,
            SqlState::TOO_MANY_CONNECTIONS.code(),
            "Unable to accept connection, too many open connections.",
        )
        .await;
        return Ok(None);
    };

    let mut upstream = match shared.upstream.connect().await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::error!(%peer, "cannot reach the private PostgreSQL: {e}");
            send_fatal(&mut tls, SqlState::CONNECTION_FAILURE.code(), UPSTREAM_GONE).await;
            return Ok(None);
        }
    };
    let mut params = startup.params.clone();
    if startup.get("database").is_none() {
        params.push(("database".into(), "postgres".into()));
    }
    if shared.classifier.is_some() {
        // Clients may not send `options`: this is the only one.
        let option = dialect::occ::LOCK_TIMEOUT_OPTION;
        params.push(("options".into(), option.into()));
    }
    upstream.write_all(&Startup { params }.encode()).await?;
    let mut key = None;
    let dsql_env = shared.classifier.is_some();
    // A role other than admin needs a grant to the identity: its session answers before
    // the client hears of it.
    let grant_to = shared
        .iam_arn
        .as_deref()
        .filter(|_| user != crate::auth::ADMIN_USER);
    let hold = grant_to.is_some();
    let Some(held) = relay_until_ready(&mut upstream, &mut tls, &mut key, dsql_env, hold).await?
    else {
        let _ = tls.shutdown().await;
        return Ok(None);
    };
    if let Some(arn) = grant_to {
        if !is_granted(&mut upstream, arn).await? {
            tracing::warn!(%peer, user = %shown_user, arn, "IAM authentication failed: role not granted to the identity (AWS IAM GRANT)");
            let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
            refuse_iam(&mut tls, &shown_user).await;
            return Ok(None);
        }
        tls.write_all(&held).await?;
        tls.flush().await?;
    }
    tracing::debug!(%peer, user = %shown_user, "connection established");
    Ok(Some(Established {
        client: tls,
        upstream,
        user,
        _slot: slot,
        _key: key.map(|k| shared.register_backend(k)),
    }))
}

/// DSQL's one answer to every IAM refusal, for `shown_user` (escaped).
async fn refuse_iam<W: AsyncWrite + Unpin>(w: &mut W, shown_user: &str) {
    let msg = format!("IAM authentication failed for user \"{shown_user}\"");
    send_fatal(
        w,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION.code(),
        &msg,
    )
    .await;
}

/// Whether the role of the new session on `upstream` is granted to `arn`: one query, on
/// the session itself. Anything but a `t` is a no.
async fn is_granted<U>(upstream: &mut U, arn: &str) -> anyhow::Result<bool>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut query = dialect::iam::login_check_query(arn).into_bytes();
    query.push(0);
    upstream.write_all(&wire::message(b'Q', &query)).await?;
    upstream.flush().await?;
    let mut granted = false;
    loop {
        let (tag, body) = wire::read_message(upstream, MAX_UPSTREAM_STARTUP_MSG)
            .await
            .context("reading the grant check's answer")?
            .map_err(|e| anyhow::anyhow!("the grant check's answer: {e}"))?;
        match tag {
            // One column, one byte: `t`.
            b'D' => granted = body == [0, 1, 0, 0, 0, 1, b't'],
            b'E' => {
                tracing::error!("the grant check failed in the private PostgreSQL");
                granted = false;
            }
            b'Z' => return Ok(granted && body.first() == Some(&b'I')),
            _ => {}
        }
    }
}

/// Relays upstream startup messages to the client until ReadyForQuery, or an ErrorResponse
/// (`None`); BackendKeyData's process id and secret land in `key`. With `hold`, the
/// messages up to ReadyForQuery are returned instead of written (errors are still relayed).
async fn relay_until_ready<U, C>(
    upstream: &mut U,
    client: &mut C,
    key: &mut Option<[u8; 8]>,
    dsql_env: bool,
    hold: bool,
) -> anyhow::Result<Option<Vec<u8>>>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut held = Vec::new();
    loop {
        let (tag, body) = wire::read_message(upstream, MAX_UPSTREAM_STARTUP_MSG)
            .await
            .context("reading PostgreSQL's startup response")?
            .map_err(|e| anyhow::anyhow!("PostgreSQL startup response: {e}"))?;
        if tag == b'R' && body.get(..4) != Some(&[0, 0, 0, 0][..]) {
            send_fatal(
                client,
                SqlState::CONNECTION_FAILURE.code(),
                "unexpected authentication request from the database",
            )
            .await;
            return Ok(None);
        }
        if tag == b'K' {
            *key = body.as_slice().try_into().ok();
        }
        let body = if dsql_env {
            dialect::env::parameter_status(tag, body)
        } else {
            body
        };
        let msg = wire::message(tag, &body);
        if hold && tag != b'E' {
            held.extend_from_slice(&msg);
        } else {
            client.write_all(&msg).await?;
        }
        match tag {
            b'Z' => {
                client.flush().await?;
                return Ok(Some(held));
            }
            b'E' => {
                client.flush().await?;
                return Ok(None);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(limits: Limits) -> Arc<Shared> {
        let ca = crate::local::certs::LocalCa::generate().unwrap();
        let cert = ca.issue_server_cert(&[]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der], cert.key_der)
        .unwrap();
        Arc::new(Shared::new(
            TokenVerifier::new("localhost", "us-east-1"),
            TlsAcceptor::from(Arc::new(config)),
            Upstream::new("/nonexistent", 1),
            limits,
            Clock::system(),
        ))
    }

    #[tokio::test]
    async fn rate_bucket_refills_over_time() {
        let s = shared(Limits {
            rate_per_sec: 2,
            burst: 3,
            ..Limits::default()
        });
        let t = Instant::now();
        assert!(s.take_rate_token(t) && s.take_rate_token(t) && s.take_rate_token(t));
        assert!(!s.take_rate_token(t));
        let t = t + Duration::from_millis(500);
        assert!(s.take_rate_token(t));
        assert!(!s.take_rate_token(t));
        let t = t + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(s.take_rate_token(t));
        }
        assert!(!s.take_rate_token(t));
        // A clock that goes backwards (racing callers) never adds tokens.
        assert!(!s.take_rate_token(t - Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn connection_slots_are_released() {
        let s = shared(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let a = s.open_connection().unwrap();
        let _b = s.open_connection().unwrap();
        assert!(s.open_connection().is_none());
        drop(a);
        assert!(s.open_connection().is_some());
    }

    #[tokio::test]
    async fn relay_stops_at_error_or_ready() {
        const OK: &[u8] = &[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'];
        let mut out = Vec::new();
        let mut key = None;
        let held = relay_until_ready(&mut { OK }, &mut out, &mut key, false, false)
            .await
            .unwrap();
        assert_eq!((held, out.len()), (Some(Vec::new()), 15));
        // Held: nothing written, all of it returned.
        let mut out = Vec::new();
        let held = relay_until_ready(&mut { OK }, &mut out, &mut key, false, true)
            .await
            .unwrap();
        assert_eq!((held.as_deref(), out.len()), (Some(OK), 0));
        let err = wire::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION.code(),
            "role \"x\" does not exist",
        );
        for hold in [false, true] {
            let mut out = Vec::new();
            let ended = relay_until_ready(&mut err.as_slice(), &mut out, &mut key, false, hold)
                .await
                .unwrap();
            assert_eq!((ended, &out), (None, &err));
        }
        let mut md5: &[u8] = &[b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
        let mut out = Vec::new();
        let ended = relay_until_ready(&mut md5, &mut out, &mut key, false, false)
            .await
            .unwrap();
        assert_eq!((ended, out[0]), (None, b'E'));
    }

    #[tokio::test]
    async fn a_full_handshake_table_evicts_its_oldest_and_slots_come_back() {
        let s = shared(Limits {
            burst: 3,
            ..Limits::default()
        });
        let cap = handshake_cap(&s.limits) as usize;
        assert_eq!(cap, MIN_HANDSHAKES as usize);
        let mut held: Vec<_> = (0..cap).map(|_| s.admit()).collect();
        assert_eq!(s.handshakes_in_progress(), cap);
        let newest = s.admit();
        assert_eq!(s.handshakes_in_progress(), cap, "still at the cap");
        assert_eq!(
            held[0].evicted.try_recv(),
            Ok(()),
            "the oldest is told to go"
        );
        assert!(held[1].evicted.try_recv().is_err(), "the next one stays");
        drop(held);
        assert_eq!(s.handshakes_in_progress(), 1);
        drop(newest);
        assert_eq!(s.handshakes_in_progress(), 0);
        // A full burst of valid clients fits.
        assert_eq!(handshake_cap(&Limits::default()), 1000);
    }

    /// A socket that never completes its handshake is closed after HANDSHAKE_TIMEOUT (10 s;
    /// it was 30 s), measured on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_is_closed_at_the_handshake_timeout() {
        assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(10));
        let s = shared(Limits::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let handshake = s.admit();
        tokio::spawn(serve(s.clone(), tcp, peer, handshake, stop_rx));
        let mut buf = [0u8; 1];
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "closed without a reply");
        let waited = started.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
        // Its handshake slot is free again.
        assert_eq!(s.handshakes_in_progress(), 0);
    }

    #[tokio::test]
    async fn cancel_budget_is_per_source_and_bounded() {
        let mut budget = CancelBudget::new(Instant::now());
        let t = Instant::now();
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..CANCEL_BURST {
            assert!(budget.take(a, t));
        }
        assert!(!budget.take(a, t), "a flooding source runs dry");
        assert!(budget.take(b, t), "another source is not starved");
        let later = t + Duration::from_secs(1);
        assert!(budget.take(a, later), "the budget refills");
        // Many sources that keep their budgets spent: the map stays bounded, and a newcomer
        // still gets a budget of its own (the source heard from least recently makes room).
        for round in 0..2 {
            for i in 0..(MAX_CANCEL_SOURCES as u32 + 10) {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                let now = later + Duration::from_micros(u64::from(i) + round * 10_000);
                for _ in 0..CANCEL_BURST {
                    let _ = budget.take(ip, now);
                }
            }
        }
        assert!(budget.sources.len() <= MAX_CANCEL_SOURCES);
        let newcomer: IpAddr = [192, 168, 0, 1].into();
        let now = later + Duration::from_millis(30);
        assert!(budget.take(newcomer, now), "a newcomer is not starved");
        assert!(budget.sources.len() <= MAX_CANCEL_SOURCES);
        // Once the tracked sources have refilled, they are forgotten to make room.
        let much_later = later + Duration::from_secs(60);
        assert!(budget.take([192, 168, 0, 2].into(), much_later));
        assert!(budget.sources.len() <= 3);
    }

    #[tokio::test]
    async fn cancels_are_forwarded_only_for_open_connections() {
        let s = shared(Limits::default());
        let key = [0, 0, 0, 42, 1, 2, 3, 4];
        assert!(!s.is_open_backend(&key));
        let guard = s.register_backend(key);
        assert!(s.is_open_backend(&key));
        assert!(!s.is_open_backend(&[0, 0, 0, 42, 1, 2, 3, 5]));
        assert!(!s.is_open_backend(&key[..7]));
        drop(guard);
        assert!(!s.is_open_backend(&key));
    }

    fn data_row(len: usize) -> Vec<u8> {
        let mut m = vec![b'D'];
        m.extend_from_slice(&(len as u32 + 4).to_be_bytes());
        m.resize(5 + len, b'x');
        m
    }

    /// The endpoint's FATAL waits for the message being relayed to end; until then the
    /// relay keeps forwarding whatever arrives.
    #[tokio::test]
    async fn the_ending_fatal_waits_for_a_message_boundary() {
        let (mut pg, mut upstream) = tokio::io::duplex(1 << 20);
        let (mut client_end, mut client) = tokio::io::duplex(1 << 20);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let fatal = wire::fatal(
            SqlState::ADMIN_SHUTDOWN.code(),
            "terminating connection: it reached its maximum age",
        );
        let ending = {
            let fatal = fatal.clone();
            async move {
                let _ = end_rx.await;
                fatal
            }
        };
        let relay =
            tokio::spawn(
                async move { relay_to_client(&mut upstream, &mut client, ending, None).await },
            );
        let first = data_row(100);
        let second = data_row(3000);
        pg.write_all(&first).await.unwrap();
        pg.write_all(&second[..1000]).await.unwrap();
        // Wait until the relay has forwarded that much, then end mid-message.
        let mut seen = vec![0u8; first.len() + 1000];
        client_end.read_exact(&mut seen).await.unwrap();
        end_tx.send(()).unwrap();
        let mut rest = second[1000..].to_vec();
        rest.extend_from_slice(&data_row(10)); // never relayed: past the boundary
        pg.write_all(&rest).await.unwrap();
        relay.await.unwrap().unwrap();
        let mut tail = Vec::new();
        client_end.read_to_end(&mut tail).await.unwrap();
        seen.extend_from_slice(&tail);
        let mut expected = first.clone();
        expected.extend_from_slice(&second);
        expected.extend_from_slice(&fatal);
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn the_relay_passes_everything_through_until_postgres_closes() {
        let (mut pg, mut upstream) = tokio::io::duplex(64);
        let (mut client_end, mut client) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move {
            relay_to_client(&mut upstream, &mut client, std::future::pending(), None).await
        });
        let mut stream = Vec::new();
        for len in [0, 1, 700, 5, 70_000] {
            stream.extend_from_slice(&data_row(len));
        }
        let sent = stream.clone();
        let writer = tokio::spawn(async move {
            pg.write_all(&sent).await.unwrap();
        });
        let mut got = Vec::new();
        client_end.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        relay.await.unwrap().unwrap();
        assert_eq!(got, stream);
    }
}
