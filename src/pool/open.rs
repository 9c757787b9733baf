//! Opening one physical connection: sign, resolve, TCP, TLS, startup (with the token in the
//! same flight, for IAM) and the session id when asked for, each phase timed and bounded by
//! the connect timeout.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout_at;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::early_password::EarlyPasswordTls;
use super::registry::{ConnMeta, ConnectTiming, Shared, lock, ms};
use crate::auth::{Action, Secret, TokenSigner};
use crate::error::chain;
use crate::error::{ConnectError, ConnectPhase};
use crate::tls::TlsConnector;

/// A physical connection owned by the pool. Dereferences to a tokio-postgres [`Client`].
pub struct PgConn {
    pub(super) client: Client,
    pub(super) meta: Arc<ConnMeta>,
    pub(super) shared: Weak<Shared>,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("number", &self.meta.number)
            .field("session_id", &self.meta.session_id())
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

/// How a connection's session id is read: DSQL's function, or plain PostgreSQL's pid.
///
/// Which one is known before anything is sent: DSQL (and `local`) accept IAM tokens and
/// nothing else, PostgreSQL accepts no IAM token, so a connection the server let in with a
/// token is DSQL's and one it let in with a password is PostgreSQL's. No probe that fails
/// (and logs an ERROR in the server's log) is ever sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SessionSql {
    Dsql,
    BackendPid,
}

impl SessionSql {
    pub(super) fn sql(self) -> &'static str {
        match self {
            SessionSql::Dsql => "select sys.current_session_id()",
            SessionSql::BackendPid => "select pg_backend_pid()::text",
        }
    }
}

pub(super) enum Password {
    Iam {
        signer: Arc<TokenSigner>,
        action: Action,
    },
    Fixed(Option<Secret>),
}

/// Opens physical connections: sign, TCP, TLS, startup, session id.
pub(super) struct Opener {
    pub(super) password: Password,
    pub(super) config: tokio_postgres::Config,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) addr: String,
    pub(super) tls: TlsConnector,
    pub(super) connect_timeout: Duration,
    pub(super) session_sql: SessionSql,
    /// Read the session id as each connection opens (one more round trip), or only when
    /// asked ([`super::PooledConn::fetch_session_id`]).
    pub(super) session_id_on_connect: bool,
    /// Send an IAM token with the startup ([`crate::settings::PoolSettings::early_password`]).
    pub(super) early_password: bool,
    pub(super) iam_hint: bool,
}

/// Counts a running connection task, for [`super::Pool::close`].
struct LiveTask(Arc<watch::Sender<usize>>);

impl LiveTask {
    fn new(tasks: &Arc<watch::Sender<usize>>) -> LiveTask {
        tasks.send_modify(|n| *n += 1);
        LiveTask(tasks.clone())
    }
}

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Opener {
    /// Opens a connection that joins `generation` (`None`: the one current when it is
    /// ready).
    async fn open(
        &self,
        shared: &Arc<Shared>,
        generation: Option<u64>,
    ) -> Result<PgConn, ConnectError> {
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
                    .map_err(|_| timed_out(ConnectPhase::Token))?
                    .map_err(|e| ConnectError::Auth(Arc::new(e)))?;
                (Some(token.value), Some(token.signed_at))
            }
            Password::Fixed(secret) => (secret.clone(), None),
        };
        let token_done = Instant::now();

        let unreachable = |phase| {
            move |source| ConnectError::Tcp {
                addr: self.addr.clone(),
                phase,
                source,
            }
        };
        let addrs: Vec<_> = timeout_at(
            deadline,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| timed_out(ConnectPhase::Dns))?
        .map_err(unreachable(ConnectPhase::Dns))?
        .collect();
        let tcp = timeout_at(deadline, TcpStream::connect(&addrs[..]))
            .await
            .map_err(|_| timed_out(ConnectPhase::Tcp))?
            .map_err(unreachable(ConnectPhase::Tcp))?;
        let _ = tcp.set_nodelay(true);
        let tcp_done = Instant::now();

        let mut config = self.config.clone();
        if let Some(password) = &password {
            config.password(password.expose());
        }
        let (tls, tls_info) = self.tls.connect_once();
        // A token goes out with the startup: DSQL asks every connection for it in cleartext.
        let early = match (&self.password, &password) {
            (Password::Iam { .. }, Some(token)) if self.early_password => Some(token.expose()),
            _ => None,
        };
        let tls = EarlyPasswordTls::new(tls, early);
        let (client, connection) = timeout_at(deadline, config.connect_raw(tcp, tls))
            .await
            .map_err(|_| {
                let shaken = tls_info.get().is_some();
                timed_out(if shaken {
                    ConnectPhase::Startup
                } else {
                    ConnectPhase::Tls
                })
            })?
            .map_err(|source| self.rejected(source))?;
        // Sent in the startup's parameter status: no query needed.
        let server_version = connection.parameter("server_version").map(str::to_string);
        // The task ends after the client is dropped and it has sent Terminate; `close`
        // waits for that, so servers see a clean goodbye rather than a reset.
        let live = LiveTask::new(&shared.tasks);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("connection closed: {error}");
            }
            drop(live);
        });

        let session_id = OnceLock::new();
        if self.session_id_on_connect {
            let id = timeout_at(deadline, first_value(&client, self.session_sql.sql()))
                .await
                .map_err(|_| timed_out(ConnectPhase::Session))?
                .map_err(|source| ConnectError::Session {
                    addr: self.addr.clone(),
                    source,
                })?;
            let _ = session_id.set(id);
        }
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
            session_id = session_id.get().map_or("", String::as_str),
            token_ms = ms(timing.token),
            tcp_ms = ms(timing.tcp),
            tls_ms = ms(timing.tls),
            auth_ms = ms(timing.auth),
            "connection opened"
        );
        // The generation it joins is the one current when it joins: a connection that was
        // being opened across a refresh was never among the connections the refresh retired.
        let generation = generation.unwrap_or_else(|| shared.generation.load(Ordering::Acquire));
        let meta = Arc::new(ConnMeta {
            number,
            ready: done,
            session_id,
            session_sql: self.session_sql,
            server_version,
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
    pub(super) async fn open_retrying(
        &self,
        shared: &Arc<Shared>,
        generation: Option<u64>,
    ) -> Result<PgConn, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut retry = 0;
        loop {
            let error = match self.open(shared, generation).await {
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
                chain(&error)
            );
            tokio::time::sleep(pause).await;
            retry += 1;
        }
    }

    pub(super) fn rejected(&self, source: tokio_postgres::Error) -> ConnectError {
        let role = self.config.get_user().unwrap_or_default();
        ConnectError::rejected(&self.addr, role, self.iam_hint, source)
    }
}

/// The first column of the first row `sql` returns, as text.
pub(super) async fn first_value(
    client: &Client,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

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
