//! One client connection to the local endpoint: TLS negotiation (SSLRequest or direct
//! TLS with ALPN), startup checks, DSQL's limits, IAM token authentication, then a
//! byte-for-byte splice to the private PostgreSQL until the connection's maximum age.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::postgres::INTERNAL_SUPERUSER;
use super::verify::TokenVerifier;
use super::wire::{self, FirstPacket, Startup};

/// Time a client gets from TCP accept to ReadyForQuery.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Token-bucket size for new connections (DSQL: 1,000).
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

/// A token bucket for the connection rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// State shared by all connections of one endpoint.
pub(crate) struct Shared {
    pub(crate) verifier: TokenVerifier,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) upstream: PathBuf,
    pub(crate) limits: Limits,
    bucket: Mutex<Bucket>,
    open: AtomicU32,
}

impl Shared {
    pub(crate) fn new(
        verifier: TokenVerifier,
        acceptor: TlsAcceptor,
        upstream: PathBuf,
        limits: Limits,
    ) -> Self {
        let bucket = Bucket {
            tokens: f64::from(limits.burst.max(1)),
            last: Instant::now(),
        };
        Self {
            verifier,
            acceptor,
            upstream,
            limits,
            bucket: Mutex::new(bucket),
            open: AtomicU32::new(0),
        }
    }

    /// Takes one token from the rate bucket; `false` when the rate is exceeded.
    fn take_rate_token(&self, now: Instant) -> bool {
        let rate = self.limits.rate_per_sec;
        if rate == 0 {
            return true;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * f64::from(rate);
        b.tokens = (b.tokens + refill).min(f64::from(self.limits.burst.max(1)));
        b.last = b.last.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
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

/// Resolves once the endpoint shuts down (or its owner is gone).
pub(crate) async fn shutdown_signaled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// An authenticated client spliced to an upstream backend.
struct Established {
    client: TlsStream<TcpStream>,
    upstream: UnixStream,
    _slot: OpenGuard,
}

/// Serves one client connection to completion. Never panics on client input; errors
/// are logged at debug level (authentication failures at warn).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let opened = Instant::now();
    let established = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, establish(&shared, tcp, peer)) => match r {
            Ok(Ok(Some(e))) => e,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "connection ended during startup: {e:#}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "startup timed out");
                return;
            }
        },
        () = shutdown_signaled(&mut shutdown) => return,
    };
    let Established {
        mut client,
        mut upstream,
        _slot,
    } = established;
    let deadline = opened + shared.limits.max_connection_age;
    let ending = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection closed: {e}");
            }
            None
        }
        () = tokio::time::sleep_until(deadline) => {
            Some(wire::fatal("57P01", "terminating connection: it reached its maximum age"))
        }
        () = shutdown_signaled(&mut shutdown) => {
            Some(wire::fatal("57P01", "terminating connection due to administrator command"))
        }
    };
    if let Some(msg) = ending {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.write_all(&msg).await;
            let _ = client.shutdown().await;
        })
        .await;
    }
    let _ = upstream.shutdown().await;
}

async fn send_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let _ = w.write_all(&wire::fatal(code, message)).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

async fn forward_cancel(shared: &Shared, packet: [u8; 16]) -> anyhow::Result<()> {
    let mut up = UnixStream::connect(&shared.upstream)
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
                    forward_cancel(shared, packet).await?;
                    return Ok(None);
                }
                Ok(FirstPacket::Startup(_)) => {
                    tracing::debug!(%peer, "plaintext connection refused");
                    send_fatal(&mut tcp, "08P01", "SSL/TLS required").await;
                    return Ok(None);
                }
                Err(e) => {
                    send_fatal(&mut tcp, "08P01", &e.to_string()).await;
                    return Ok(None);
                }
            }
        }
    }
    let mut tls = shared.acceptor.accept(tcp).await.context("TLS handshake")?;
    let (alpn_ok, sni) = {
        let conn = tls.get_ref().1;
        (
            conn.alpn_protocol() == Some(b"postgresql".as_slice()),
            conn.server_name().map(str::to_owned),
        )
    };
    if direct && !alpn_ok {
        send_fatal(
            &mut tls,
            "08P01",
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )
        .await;
        return Ok(None);
    }

    let startup = match wire::read_first_packet(&mut tls).await? {
        Ok(FirstPacket::Startup(s)) => s,
        Ok(FirstPacket::Cancel(packet)) => {
            forward_cancel(shared, packet).await?;
            return Ok(None);
        }
        Ok(FirstPacket::SslRequest | FirstPacket::GssEncRequest) => {
            send_fatal(&mut tls, "08P01", "encryption requested twice").await;
            return Ok(None);
        }
        Err(e) => {
            send_fatal(&mut tls, "08P01", &e.to_string()).await;
            return Ok(None);
        }
    };
    // DSQL routes a connection by its TLS server name: without SNI there is no cluster.
    if sni.is_none() {
        tracing::debug!(%peer, "connection refused: no TLS server name (SNI)");
        send_fatal(
            &mut tls,
            "08P01",
            "TLS server name indication (SNI) is required: connect with the cluster's hostname, not an IP address",
        )
        .await;
        return Ok(None);
    }
    if let Some(name) = startup.first_disallowed() {
        let msg = format!(
            "setting configuration parameter \"{}\" not supported",
            wire::escape_for_message(name)
        );
        send_fatal(&mut tls, "0A000", &msg).await;
        return Ok(None);
    }
    let Some(user) = startup.user().map(str::to_owned) else {
        send_fatal(
            &mut tls,
            "28000",
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
        send_fatal(&mut tls, "3D000", &msg).await;
        return Ok(None);
    }
    if !shared.take_rate_token(Instant::now()) {
        tracing::info!(%peer, "connection refused: rate exceeded");
        send_fatal(
            &mut tls,
            "53400",
            "Unable to accept connection, rate exceeded.",
        )
        .await;
        return Ok(None);
    }
    let Some(slot) = shared.open_connection() else {
        tracing::info!(%peer, "connection refused: too many open connections");
        send_fatal(
            &mut tls,
            "53300",
            "Unable to accept connection, too many open connections.",
        )
        .await;
        return Ok(None);
    };

    tls.write_all(&wire::auth_cleartext_request()).await?;
    tls.flush().await?;
    let password = match wire::read_message(&mut tls, wire::MAX_PASSWORD_LEN).await? {
        Ok((tag, body)) => match wire::parse_password(tag, &body) {
            Ok(p) => p.to_owned(),
            Err(e) => {
                send_fatal(&mut tls, "08P01", &e.to_string()).await;
                return Ok(None);
            }
        },
        Err(e) => {
            send_fatal(&mut tls, "08P01", &e.to_string()).await;
            return Ok(None);
        }
    };
    let shown_user = wire::escape_for_message(&user);
    if let Err(reason) = shared
        .verifier
        .verify(&user, &password, sni.as_deref(), SystemTime::now())
    {
        tracing::warn!(%peer, user = %shown_user, %reason, "IAM authentication failed");
        let msg = format!("IAM authentication failed for user \"{shown_user}\"");
        send_fatal(&mut tls, "28000", &msg).await;
        return Ok(None);
    }
    drop(password);
    // The private PostgreSQL's superuser is the endpoint's alone: never relayed, refused as
    // PostgreSQL refuses a role that does not exist.
    if user == INTERNAL_SUPERUSER {
        tracing::warn!(%peer, user = %shown_user, "login as the internal superuser refused");
        let msg = format!("role \"{shown_user}\" does not exist");
        send_fatal(&mut tls, "28000", &msg).await;
        return Ok(None);
    }

    let mut upstream = UnixStream::connect(&shared.upstream)
        .await
        .context("connecting to the private PostgreSQL")?;
    let mut params = startup.params.clone();
    if startup.get("database").is_none() {
        params.push(("database".into(), "postgres".into()));
    }
    upstream.write_all(&Startup { params }.encode()).await?;
    if !relay_until_ready(&mut upstream, &mut tls).await? {
        let _ = tls.shutdown().await;
        return Ok(None);
    }
    tracing::debug!(%peer, user = %shown_user, "connection established");
    Ok(Some(Established {
        client: tls,
        upstream,
        _slot: slot,
    }))
}

/// Relays upstream startup messages to the client until ReadyForQuery (`true`) or an
/// ErrorResponse (`false`).
async fn relay_until_ready<U, C>(upstream: &mut U, client: &mut C) -> anyhow::Result<bool>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    loop {
        let (tag, body) = wire::read_message(upstream, MAX_UPSTREAM_STARTUP_MSG)
            .await
            .context("reading PostgreSQL's startup response")?
            .map_err(|e| anyhow::anyhow!("PostgreSQL startup response: {e}"))?;
        if tag == b'R' && body.get(..4) != Some(&[0, 0, 0, 0][..]) {
            send_fatal(
                client,
                "08006",
                "unexpected authentication request from the database",
            )
            .await;
            return Ok(false);
        }
        let mut msg = Vec::with_capacity(body.len() + 5);
        msg.push(tag);
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        client.write_all(&msg).await?;
        match tag {
            b'Z' => {
                client.flush().await?;
                return Ok(true);
            }
            b'E' => {
                client.flush().await?;
                return Ok(false);
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
            PathBuf::from("/nonexistent"),
            limits,
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
        let mut ok: &[u8] = &[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'];
        let mut out = Vec::new();
        assert!(relay_until_ready(&mut ok, &mut out).await.unwrap());
        assert_eq!(out.len(), 15);
        let err = wire::fatal("28000", "role \"x\" does not exist");
        let mut out = Vec::new();
        assert!(
            !relay_until_ready(&mut err.as_slice(), &mut out)
                .await
                .unwrap()
        );
        assert_eq!(out, err);
        let mut md5: &[u8] = &[b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
        let mut out = Vec::new();
        assert!(!relay_until_ready(&mut md5, &mut out).await.unwrap());
        assert_eq!(out[0], b'E');
    }
}
