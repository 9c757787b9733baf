//! What the pool knows about its connections: the registry, the counters, the statistics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::open::{PgConn, SessionSql};
use crate::error::ConnectError;
use crate::settings::PoolSettings;
use crate::tls::TlsInfo;

/// How long each phase of opening a connection took (in JSON: `token_ms`, ..., milliseconds
/// rounded to microseconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[non_exhaustive]
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
    /// Startup and authentication (and the session-id query, when the pool runs it on
    /// connect).
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
#[non_exhaustive]
pub struct ConnInfo {
    /// Client-side connection number, from 1.
    pub number: u64,
    /// Server session ID (`sys.current_session_id()` on DSQL, the backend PID on plain
    /// PostgreSQL); empty while unknown (see [`PoolSettings::session_id_on_connect`]).
    pub session_id: String,
    /// The server's `server_version`, from the startup's parameter status (no query).
    pub server_version: Option<String>,
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

pub(super) struct ConnMeta {
    pub(super) number: u64,
    /// When it became ready, for the lifetime check on checkout.
    pub(super) ready: Instant,
    /// Set on connect, or by the first [`super::PooledConn::fetch_session_id`].
    pub(super) session_id: OnceLock<String>,
    pub(super) session_sql: SessionSql,
    pub(super) server_version: Option<String>,
    pub(super) generation: u64,
    pub(super) opened_at: SystemTime,
    pub(super) token_signed_at: Option<SystemTime>,
    pub(super) tls: Option<TlsInfo>,
    pub(super) timing: ConnectTiming,
    pub(super) in_use: AtomicBool,
    /// Inside a transaction one of our helpers opened (see [`PooledConn::mark_transaction`]).
    pub(super) in_transaction: AtomicBool,
}

impl ConnMeta {
    /// The session ID, or `""` while unknown.
    pub(super) fn session_id(&self) -> &str {
        self.session_id.get().map_or("", String::as_str)
    }

    pub(super) fn info(&self) -> ConnInfo {
        ConnInfo {
            number: self.number,
            session_id: self.session_id().to_string(),
            server_version: self.server_version.clone(),
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

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) struct Shared {
    pub(super) generation: AtomicU64,
    pub(super) next_number: AtomicU64,
    pub(super) retired: AtomicU64,
    /// Old connections replaced in their slot by a staged fresh one.
    pub(super) swapped: AtomicU64,
    pub(super) expired: AtomicU64,
    pub(super) opened: AtomicU64,
    pub(super) registry: Mutex<BTreeMap<u64, Arc<ConnMeta>>>,
    pub(super) errors: watch::Sender<u64>,
    pub(super) last_error: Mutex<Option<Arc<ConnectError>>>,
    pub(super) refresh_lock: tokio::sync::Mutex<Option<RefreshReport>>,
    pub(super) settings: PoolSettings,
    /// Fresh connections a refresh opened before retiring the old ones: each old connection
    /// is swapped for one of these as it is checked out or returned, so no checkout waits
    /// for a connection to open (make before break).
    pub(super) staged: Mutex<Vec<PgConn>>,
    /// Connection tasks still running; [`super::Pool::close`] waits for them to send
    /// Terminate.
    pub(super) tasks: Arc<watch::Sender<usize>>,
}

impl Shared {
    pub(super) fn record_error(&self, error: Arc<ConnectError>) {
        *lock(&self.last_error) = Some(error);
        self.errors.send_modify(|count| *count += 1);
    }

    pub(super) fn last_error(&self) -> Option<Arc<ConnectError>> {
        lock(&self.last_error).clone()
    }

    /// A staged fresh connection to take the place of a retired one, if any is left.
    pub(super) fn take_staged(&self) -> Option<PgConn> {
        lock(&self.staged).pop()
    }

    pub(super) fn is_retired(&self, meta: &ConnMeta) -> bool {
        meta.generation < self.generation.load(Ordering::Acquire)
    }

    /// bb8 checks the lifetime when a connection is returned and when the reaper runs, not
    /// on checkout; between reaper runs an idle connection can outlive it. DSQL closes a
    /// connection at its age limit even mid-query, so it is never handed out once expired.
    pub(super) fn is_expired(&self, meta: &ConnMeta) -> bool {
        meta.ready.elapsed() >= self.settings.max_lifetime
    }
}

/// A snapshot of the pool's statistics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[non_exhaustive]
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
#[non_exhaustive]
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

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
