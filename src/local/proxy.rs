//! The local DSQL-compatible endpoint: a TCP listener speaking TLS, checking IAM tokens
//! and DSQL's limits for every connection, in front of a private PostgreSQL.
//!
//! State lives in a data directory: `credentials` (0600, generated on first use),
//! `ca.pem`/`ca.key` (the local CA, reused across restarts) and `pgdata/`. One endpoint
//! uses a data directory at a time: it holds a lock on `dsql-pgx-local.lock` there.

use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rand::RngExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::certs::LocalCa;
use super::postgres::{MAX_CLIENT_CONNECTIONS, PgOptions, PgServer, check_data_dir};
pub use super::session::Limits;
use super::session::{Shared, handshake_cap, serve, shutdown_signaled};
use super::verify::TokenVerifier;
use crate::auth::{CredentialSource, Secret};
use crate::settings::{
    Auth, ConfigError, ConnSettings, PoolSettings, SslMode, SslNegotiation, Target, Tls,
};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lock file in the data directory, held by the endpoint using it (its pid inside).
const LOCK_FILE: &str = "dsql-pgx-local.lock";
/// File descriptors the endpoint needs besides its connections (listener, log, runtime,
/// PostgreSQL's admin and cancel sockets).
const FD_RESERVE: u64 = 64;

/// How to start a [`LocalEndpoint`].
#[derive(Clone)]
pub struct EndpointOptions {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// State directory; `None` uses a fresh temporary directory removed on shutdown.
    pub data_dir: Option<PathBuf>,
    /// Hostname tokens must be signed for (and the certificate names).
    pub hostname: String,
    /// Region tokens must be signed for.
    pub region: String,
    /// Access key id to accept; generated (and persisted) when `None`.
    pub access_key_id: Option<String>,
    /// Secret access key to accept; generated (and persisted) when `None`.
    pub secret_access_key: Option<String>,
    /// Connection limits.
    pub limits: Limits,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            hostname: "localhost".into(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            limits: Limits::default(),
        }
    }
}

impl fmt::Debug for EndpointOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointOptions")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("hostname", &self.hostname)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

/// A running local endpoint. Stop it with [`LocalEndpoint::shutdown`]; dropping it
/// also closes every connection and stops PostgreSQL, synchronously.
pub struct LocalEndpoint {
    local_addr: SocketAddr,
    hostname: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    ca_path: PathBuf,
    data_dir: PathBuf,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    /// Becomes `true` once the private PostgreSQL has exited on its own.
    failed: watch::Receiver<bool>,
    monitor_task: Option<JoinHandle<()>>,
    // Dropped in this order: PostgreSQL first, then the lock, then the (temporary) directory.
    pg: Option<PgServer>,
    _lock: Flock<fs::File>,
    temp_dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for LocalEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEndpoint")
            .field("local_addr", &self.local_addr)
            .field("hostname", &self.hostname)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("ca_path", &self.ca_path)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Generates an access key id shaped like AWS's: `AKIA` + 16 uppercase letters/digits.
fn generate_access_key_id() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    format!("AKIA{tail}")
}

/// Generates a 40-character secret access key.
fn generate_secret() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..40)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn parse_credentials(text: &str) -> Option<(String, String)> {
    let mut akid = None;
    let mut secret = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => akid = Some(v.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some((akid?, secret?)).filter(|(a, s)| !a.is_empty() && !s.is_empty())
}

/// Explicit credentials, or those in `<data_dir>/credentials`, or new ones saved there.
fn load_credentials(
    data_dir: &Path,
    akid: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<(String, String)> {
    match (akid, secret) {
        (Some(a), Some(s)) => return Ok((a, s)),
        (None, None) => {}
        _ => bail!("give both the access key id and the secret access key, or neither"),
    }
    let path = data_dir.join("credentials");
    if path.exists() {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return parse_credentials(&text).with_context(|| {
            format!(
                "{} is not a valid credentials file; delete it to generate new credentials",
                path.display()
            )
        });
    }
    let (akid, secret) = (generate_access_key_id(), generate_secret());
    write_private(
        &path,
        &format!("aws_access_key_id = {akid}\naws_secret_access_key = {secret}\n"),
    )?;
    Ok((akid, secret))
}

/// Takes the data directory for this endpoint: an exclusive lock on `<data_dir>/LOCK_FILE`,
/// held until the returned file is dropped, with our pid inside for the next one to name.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<fs::File>> {
    let path = data_dir.join(LOCK_FILE);
    // Not truncated on open: until we hold the lock, the pid inside is the holder's.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text
                .trim()
                .parse::<u32>()
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(ConfigError(format!(
                "--data-dir {} is in use by another dsql-pgx local{holder}",
                data_dir.display()
            ))
            .into());
        }
        Err((_, errno)) => {
            return Err(errno).with_context(|| format!("locking {}", path.display()));
        }
    };
    lock.set_len(0)
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(lock)
}

/// The limits the endpoint enforces: the open connections at most what the private
/// PostgreSQL takes ([`MAX_CLIENT_CONNECTIONS`]), so a client beyond them gets the
/// endpoint's 53300, never PostgreSQL's "sorry, too many clients already".
fn capped_limits(limits: &Limits) -> Limits {
    let max = match limits.max_connections {
        0 => MAX_CLIENT_CONNECTIONS,
        n => n.min(MAX_CLIENT_CONNECTIONS),
    };
    if max != limits.max_connections {
        tracing::info!(
            requested = limits.max_connections,
            max,
            "open connections capped at what the private PostgreSQL takes"
        );
    }
    Limits {
        max_connections: max,
        ..limits.clone()
    }
}

/// The CA in `<data_dir>/ca.pem` + `ca.key`, or a new one saved there.
fn load_ca(data_dir: &Path) -> anyhow::Result<LocalCa> {
    let cert_path = data_dir.join("ca.pem");
    let key_path = data_dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        let cert = fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        return LocalCa::load(&cert, &key);
    }
    let ca = LocalCa::generate()?;
    write_private(&key_path, &ca.key_pem())?;
    fs::write(&cert_path, ca.cert_pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(ca)
}

impl LocalEndpoint {
    /// Library settings that reach this endpoint as `user` (`admin` or a role created in its
    /// database) with IAM tokens signed by its credentials, TLS verified against its CA, and
    /// the default pool.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use dsql_pgx::local::{EndpointOptions, LocalEndpoint};
    /// let endpoint = LocalEndpoint::start(EndpointOptions::default()).await?;
    /// let pool = dsql_pgx::Pool::new(&endpoint.conn_settings("admin")).await?;
    /// let row = pool.get().await?.query_one("select 1::int4", &[]).await?;
    /// assert_eq!(row.get::<_, i32>(0), 1);
    /// drop(pool);
    /// endpoint.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn conn_settings(&self, user: &str) -> ConnSettings {
        ConnSettings {
            target: Target {
                endpoint: self.hostname().to_string(),
                region: self.region().to_string(),
                user: user.to_string(),
                credentials: CredentialSource::Static {
                    access_key_id: self.access_key_id().to_string(),
                    secret_access_key: Secret::new(self.secret_access_key()),
                },
                token_expires_in: Duration::from_secs(15 * 60),
            },
            host: self.local_addr().ip().to_string(),
            port: self.port(),
            database: "postgres".to_string(),
            auth: Auth::Iam,
            tls: Tls {
                mode: SslMode::VerifyFull,
                ca_file: Some(self.ca_path().to_path_buf()),
                negotiation: SslNegotiation::Postgres,
            },
            pool: PoolSettings::default(),
        }
    }

    /// Prepares the data directory, starts PostgreSQL and starts accepting connections.
    pub async fn start(opts: EndpointOptions) -> anyhow::Result<LocalEndpoint> {
        let (temp_dir, data_dir) = match &opts.data_dir {
            Some(dir) => {
                check_data_dir(dir)?;
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("dsql-pgx-local-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let lock = lock_data_dir(&data_dir)?;
        let (access_key_id, secret_access_key) = load_credentials(
            &data_dir,
            opts.access_key_id.clone(),
            opts.secret_access_key.clone(),
        )?;
        let ca = load_ca(&data_dir)?;
        let cert = ca.issue_server_cert(&[opts.hostname.as_str()])?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der], cert.key_der)
        .context("TLS server certificate")?;
        tls.alpn_protocols = vec![b"postgresql".to_vec()];

        raise_open_file_limit(&opts.limits);
        let listener = TcpListener::bind(opts.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (choose another with --listen or --port; 0 picks a free port)",
                opts.listen
            )
        })?;
        let local_addr = listener.local_addr().context("listener address")?;

        let limits = capped_limits(&opts.limits);
        let mut pg_opts = PgOptions::new(&data_dir);
        pg_opts.dsql_mimic = true;
        pg_opts.max_connections = limits.max_connections;
        let pg = PgServer::start(pg_opts)
            .await
            .context("starting the private PostgreSQL")?;

        let verifier = TokenVerifier::new(opts.hostname.clone(), opts.region.clone()).with_key(
            access_key_id.clone(),
            secret_access_key.clone(),
            None,
        );
        let shared = Arc::new(Shared::new(
            verifier,
            TlsAcceptor::from(Arc::new(tls)),
            pg.socket_path(),
            limits,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let (failed_tx, failed) = watch::channel(false);
        let monitor_task = tokio::spawn(watch_postgres(pg.exited(), shared.clone(), failed_tx));
        let accept_task = tokio::spawn(accept_loop(listener, shared, stop_rx));
        tracing::info!(%local_addr, hostname = %opts.hostname, region = %opts.region, "local DSQL endpoint ready");
        Ok(LocalEndpoint {
            local_addr,
            hostname: opts.hostname,
            region: opts.region,
            access_key_id,
            secret_access_key,
            ca_path: data_dir.join("ca.pem"),
            data_dir,
            stop,
            accept_task: Some(accept_task),
            failed,
            monitor_task: Some(monitor_task),
            pg: Some(pg),
            _lock: lock,
            temp_dir,
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP port the endpoint listens on.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The hostname tokens must be signed for (use it as the connection host, for SNI).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The region tokens must be signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Path of the CA certificate clients must trust (`sslrootcert`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The access key id tokens must be signed with.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key tokens must be signed with. A secret: do not log it.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The private PostgreSQL behind the endpoint.
    pub fn postgres(&self) -> &PgServer {
        self.pg
            .as_ref()
            .expect("PostgreSQL is present until shutdown consumes the endpoint")
    }

    /// Resolves once the private PostgreSQL has exited on its own (killed, crashed): the
    /// endpoint then answers every new client with FATAL 08006 and should be shut down.
    /// Never resolves while PostgreSQL runs. Poll it with, e.g., `now_or_never`.
    pub async fn failed(&self) {
        let mut failed = self.failed.clone();
        if failed.wait_for(|failed| *failed).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops accepting, closes client connections (with a FATAL 57P01) and stops
    /// PostgreSQL cleanly.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(task) = self.monitor_task.take() {
            task.abort();
        }
        let _ = self.stop.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
        if let Some(pg) = self.pg.take() {
            pg.stop().await?;
        }
        if let Some(t) = self.temp_dir.take() {
            t.close().context("removing the temporary data directory")?;
        }
        Ok(())
    }
}

/// Dropping an endpoint without [`LocalEndpoint::shutdown`] still stops PostgreSQL, but
/// synchronously: it waits (up to 30 s) on the thread that drops it. In async code, call
/// `shutdown().await` instead.
impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        if let Some(task) = self.monitor_task.take() {
            task.abort();
        }
        // `pg` then `temp_dir` are dropped next: PostgreSQL stops synchronously.
    }
}

/// Raises the open-file soft limit to the hard limit, and warns when even that cannot hold
/// the advertised connections (two descriptors each: client and PostgreSQL) and handshakes.
fn raise_open_file_limit(limits: &Limits) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut available = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => available = hard,
            Err(e) => tracing::debug!("cannot raise the open-file limit to {hard}: {e}"),
        }
    }
    if let Some(warning) = fd_shortfall(available, limits) {
        tracing::warn!("{warning}");
    }
}

/// The warning to give when `available` descriptors cannot hold `limits`' connections.
fn fd_shortfall(available: u64, limits: &Limits) -> Option<String> {
    let max = u64::from(limits.max_connections);
    let fixed = u64::from(handshake_cap(limits)) + FD_RESERVE;
    if max == 0 || available >= 2 * max + fixed {
        return None;
    }
    let reachable = available.saturating_sub(fixed) / 2;
    Some(format!(
        "the open-file limit ({available}) allows about {reachable} of the {max} connections --max-connections advertises; raise it (ulimit -n) or lower --max-connections"
    ))
}

/// Waits for the private PostgreSQL to exit, then says so: an error in the log, FATAL 08006
/// for new clients, `failed` for the endpoint's owner.
async fn watch_postgres(
    exited: impl std::future::Future<Output = ()>,
    shared: Arc<Shared>,
    failed: watch::Sender<bool>,
) {
    exited.await;
    tracing::error!(
        "the private PostgreSQL exited unexpectedly; new connections are refused (see postgres.log in the data directory)"
    );
    shared.mark_upstream_failed();
    let _ = failed.send(true);
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Beyond the cap a socket is closed at once, before any TLS work.
                    let Some(handshake) = shared.admit() else {
                        tracing::debug!(%peer, cap = shared.handshake_cap(), "connection closed: too many handshakes in progress");
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve(shared.clone(), tcp, peer, handshake, stop.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown_signaled(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_look_like_aws() {
        let akid = generate_access_key_id();
        assert_eq!(akid.len(), 20);
        assert!(akid.starts_with("AKIA"));
        assert!(
            akid.bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_eq!(generate_secret().len(), 40);
        assert_ne!(generate_secret(), generate_secret());
    }

    #[test]
    fn credentials_persist_with_private_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = load_credentials(dir.path(), None, None).unwrap();
        let mode = fs::metadata(dir.path().join("credentials"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_credentials(dir.path(), None, None).unwrap(), first);
        let explicit = load_credentials(dir.path(), Some("A".into()), Some("B".into())).unwrap();
        assert_eq!(explicit, ("A".into(), "B".into()));
        assert!(load_credentials(dir.path(), Some("A".into()), None).is_err());
    }

    #[test]
    fn open_connections_are_capped_at_what_postgres_takes() {
        let max = |n| {
            capped_limits(&Limits {
                max_connections: n,
                ..Limits::default()
            })
            .max_connections
        };
        assert_eq!(max(3), 3);
        assert_eq!(max(MAX_CLIENT_CONNECTIONS), MAX_CLIENT_CONNECTIONS);
        assert_eq!(max(10_000), MAX_CLIENT_CONNECTIONS);
        assert_eq!(max(0), MAX_CLIENT_CONNECTIONS);
        let limits = Limits {
            rate_per_sec: 7,
            ..Limits::default()
        };
        assert_eq!(capped_limits(&limits).rate_per_sec, 7);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let opts = EndpointOptions {
            secret_access_key: Some("hunter2-secret".into()),
            ..EndpointOptions::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn a_short_open_file_limit_is_reported() {
        let limits = Limits::default();
        assert_eq!(fd_shortfall(1 << 20, &limits), None);
        assert_eq!(fd_shortfall(2 * 10_000 + 1000 + FD_RESERVE, &limits), None);
        let warning = fd_shortfall(1024, &limits).unwrap();
        assert_eq!(
            warning,
            "the open-file limit (1024) allows about 0 of the 10000 connections --max-connections advertises; raise it (ulimit -n) or lower --max-connections"
        );
        let small = Limits {
            max_connections: 100,
            burst: 10,
            ..Limits::default()
        };
        // 2 × 100 connections + 64 handshakes (the floor) + the reserve.
        assert!(fd_shortfall(328, &small).is_none());
        assert!(
            fd_shortfall(327, &small)
                .unwrap()
                .contains("about 99 of the 100")
        );
        let unlimited = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(fd_shortfall(16, &unlimited), None);
    }
}
