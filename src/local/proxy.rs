//! The local DSQL-compatible endpoint: a TCP listener speaking TLS, checking IAM tokens
//! and DSQL's limits for every connection, in front of a private PostgreSQL.
//!
//! State lives in a data directory: `credentials` (0600, generated on first use),
//! `ca.pem`/`ca.key` (the local CA, reused across restarts while it fits) and `pgdata/`,
//! all reached through `files`, which refuses a directory or file that
//! anyone else could have planted or changed. One endpoint uses a data directory at a
//! time: it holds a lock on `dsql-pgx-local.lock` there. Temporary data directories
//! (`--local`) that a killed run left behind are removed by the next one.

use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rand::RngExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::DEFAULT_IAM_ARN;
use super::certs::LocalCa;
use super::clock::Clock;
use super::dialect::{self, Classifier, Dialect};
use super::files::{self, Dir};
use super::postgres::{
    DEFAULT_UNIX_PORT, MAX_CLIENT_CONNECTIONS, PgOptions, PgServer, check_data_dir,
    check_socket_path, check_temp_parent,
};
pub use super::session::Limits;
use super::session::{Shared, handshake_cap, serve, shutdown_signaled};
use super::verify::TokenVerifier;
use crate::auth::{CredentialSource, Secret};
use crate::settings::{
    Auth, ConfigError, ConnSettings, DEFAULT_APPLICATION_NAME, DEFAULT_TOKEN_LIFETIME,
    PoolSettings, SslMode, SslNegotiation, Target, Tls,
};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lock file in the data directory, held by the endpoint using it (its pid inside).
const LOCK_FILE: &str = "dsql-pgx-local.lock";
/// File descriptors the endpoint needs besides its connections (listener, log, runtime,
/// PostgreSQL's admin and cancel sockets).
const FD_RESERVE: u64 = 64;
/// Name prefix of temporary data directories (in the system's temporary directory).
const TEMP_PREFIX: &str = "dsql-pgx-local-";

/// The cluster id of `dsql-pgx local`'s default hostname ([`default_hostname`]): 26
/// characters of `[a-z0-9]`, as a DSQL cluster id is.
pub const LOCAL_CLUSTER_ID: &str = "dsqlpgxlocal00000000000000";

/// The default hostname of `dsql-pgx local` in `region`:
/// `dsqlpgxlocal00000000000000.dsql.<region>.on.aws`, shaped like a DSQL endpoint, so that
/// AWS's connectors and ORM dialects, which expand a name without a dot into
/// `<name>.dsql.<region>.on.aws`, take it as it is and read the region from it.
pub fn default_hostname(region: &str) -> String {
    format!("{LOCAL_CLUSTER_ID}.dsql.{region}.on.aws")
}

/// How to start a [`LocalEndpoint`].
#[derive(Clone)]
pub struct EndpointOptions {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// State directory; `None` uses a fresh temporary directory removed on shutdown.
    pub data_dir: Option<PathBuf>,
    /// Hostname tokens must be signed for (and the certificate names). The default is
    /// `localhost`, which only dsql-pgx's own clients and libpq take; `dsql-pgx local` uses
    /// [`default_hostname`], which AWS's connectors take too.
    pub hostname: String,
    /// Region tokens must be signed for.
    pub region: String,
    /// Access key id to accept; generated (and persisted) when `None`.
    pub access_key_id: Option<String>,
    /// Secret access key to accept; generated (and persisted) when `None`.
    pub secret_access_key: Option<String>,
    /// Connection limits.
    pub limits: Limits,
    /// Where the endpoint reads the time for tokens, connection ages, timeouts and rates:
    /// the system's, or a [`ManualClock`](super::ManualClock) a test steps.
    pub clock: Clock,
    /// The SQL dialect spoken behind IAM (default: DSQL's).
    pub dialect: Dialect,
    /// DSQL's transaction age limit (default 5 minutes): the next statement of a transaction
    /// older than this fails with 54000.
    pub max_transaction_age: Duration,
    /// The IAM identity (ARN) the endpoint's keys stand for (default
    /// [`DEFAULT_IAM_ARN`]): with DSQL's dialect, a role other than `admin` logs in only
    /// once `AWS IAM GRANT role TO '<this ARN>'` mapped it.
    pub iam_arn: String,
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
            clock: Clock::system(),
            dialect: Dialect::default(),
            max_transaction_age: Duration::from_secs(300),
            iam_arn: DEFAULT_IAM_ARN.to_string(),
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
            .field("clock", &self.clock)
            .field("dialect", &self.dialect)
            .field("max_transaction_age", &self.max_transaction_age)
            .field("iam_arn", &self.iam_arn)
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
    iam_arn: String,
    ca_path: PathBuf,
    data_dir: PathBuf,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    /// Becomes `true` once the private PostgreSQL has exited on its own.
    failed: watch::Receiver<bool>,
    monitor_task: Option<JoinHandle<()>>,
    // Dropped in this order: PostgreSQL first, then the (temporary) directory, then the
    // lock: a directory is removed while its lock is held, so a later run sweeping dead
    // temporary directories never races the removal.
    pg: Option<PgServer>,
    temp_dir: Option<tempfile::TempDir>,
    _lock: Flock<fs::File>,
}

impl fmt::Debug for LocalEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEndpoint")
            .field("local_addr", &self.local_addr)
            .field("hostname", &self.hostname)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("iam_arn", &self.iam_arn)
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
/// The file is refused unless it is ours and private (0600).
fn load_credentials(
    dir: &Dir,
    akid: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<(String, String)> {
    match (akid, secret) {
        (Some(a), Some(s)) => return Ok((a, s)),
        (None, None) => {}
        _ => bail!("give both the access key id and the secret access key, or neither"),
    }
    if let Some(text) = dir.read("credentials", true)? {
        return parse_credentials(&text).with_context(|| {
            format!(
                "{} is not a valid credentials file; delete it to generate new credentials",
                dir.path().join("credentials").display()
            )
        });
    }
    let (akid, secret) = (generate_access_key_id(), generate_secret());
    dir.write(
        "credentials",
        format!("aws_access_key_id = {akid}\naws_secret_access_key = {secret}\n").as_bytes(),
        0o600,
        None,
    )?;
    Ok((akid, secret))
}

/// Takes the data directory for this endpoint: an exclusive lock on `<data_dir>/LOCK_FILE`,
/// held until the returned file is dropped, with our pid inside for the next one to name.
/// `wait`: wait for the lock (a fresh temporary directory, where only a sweeping run may
/// hold it, briefly) rather than refuse.
fn lock_data_dir(dir: &Dir, wait: bool) -> anyhow::Result<Flock<fs::File>> {
    let path = dir.path().join(LOCK_FILE);
    // Not truncated on open: until we hold the lock, the pid inside is the holder's.
    let file = dir.open_lock(LOCK_FILE)?;
    let how = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let mut lock = match Flock::lock(file, how) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = (&mut file).take(64).read_to_string(&mut text);
            let holder = text
                .trim()
                .parse::<u32>()
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(ConfigError(format!(
                "--data-dir {} is in use by another dsql-pgx local{holder}",
                dir.path().display()
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

/// The CA in `<data_dir>/ca.pem` + `ca.key`, or a new one saved there: also when the
/// persisted one no longer fits (expired or near it, or not covering `hostname`), which
/// the log says, as clients must then trust the new `ca.pem`.
fn load_ca(dir: &Dir, hostname: &str, now: SystemTime) -> anyhow::Result<LocalCa> {
    let cert = dir.read("ca.pem", false)?;
    let key = dir.read("ca.key", true)?;
    if let (Some(cert), Some(key)) = (cert, key) {
        let ca = LocalCa::load(&cert, &key)?;
        match ca.check_fits(&[hostname], now) {
            Ok(()) => return Ok(ca),
            Err(why) => tracing::warn!(
                "replacing the local CA in {}: it {why}; clients must trust the new ca.pem",
                dir.path().display()
            ),
        }
    }
    let ca = LocalCa::generate_for(&[hostname])?;
    dir.write("ca.key", ca.key_pem().as_bytes(), 0o600, None)?;
    dir.write("ca.pem", ca.cert_pem().as_bytes(), 0o644, None)?;
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
                token_expires_in: DEFAULT_TOKEN_LIFETIME,
            },
            host: self.local_addr().ip().to_string(),
            port: self.port(),
            database: "postgres".to_string(),
            auth: Auth::Iam,
            tls: Tls {
                mode: SslMode::VerifyFull,
                ca_file: Some(self.ca_path().to_path_buf()),
                negotiation: SslNegotiation::default_for(self.hostname()),
            },
            pool: PoolSettings::default(),
            application_name: DEFAULT_APPLICATION_NAME.to_string(),
        }
    }

    /// Prepares the data directory, starts PostgreSQL and starts accepting connections.
    pub async fn start(opts: EndpointOptions) -> anyhow::Result<LocalEndpoint> {
        if !super::is_iam_arn(&opts.iam_arn) {
            return Err(ConfigError(format!(
                "{} is not an IAM role's or user's ARN such as {DEFAULT_IAM_ARN}",
                crate::settings::shown(&opts.iam_arn)
            ))
            .into());
        }
        let (temp_dir, data_dir) = match &opts.data_dir {
            Some(dir) => {
                // Absolute, so the exports (PGSSLROOTCERT) work from any directory.
                let dir = &std::path::absolute(dir)
                    .with_context(|| format!("resolving {}", dir.display()))?;
                check_socket_path(dir, DEFAULT_UNIX_PORT, "--data-dir")?;
                check_data_dir(dir)?;
                (None, files::open_data_dir(dir)?)
            }
            None => {
                let parent = std::env::temp_dir();
                // The name tempfile makes: the prefix and six random characters.
                let example = parent.join(format!("{TEMP_PREFIX}XXXXXX"));
                check_socket_path(
                    &example,
                    DEFAULT_UNIX_PORT,
                    "the temporary directory (TMPDIR)",
                )?;
                check_temp_parent(&parent)?;
                let swept = parent.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    files::sweep_stale_temp_dirs(&swept, TEMP_PREFIX, LOCK_FILE)
                })
                .await
                .context("sweeping temporary directories")?;
                for dir in removed {
                    tracing::info!(
                        "removed {}, left by a dsql-pgx local that was killed",
                        dir.display()
                    );
                }
                let t = tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .permissions(fs::Permissions::from_mode(0o700))
                    .tempdir_in(&parent)
                    .context("creating a temporary data directory")?;
                let dir = files::open_data_dir(t.path())?;
                (Some(t), dir)
            }
        };
        let lock = lock_data_dir(&data_dir, temp_dir.is_some())?;
        let (access_key_id, secret_access_key) = load_credentials(
            &data_dir,
            opts.access_key_id.clone(),
            opts.secret_access_key.clone(),
        )?;
        let ca = load_ca(&data_dir, &opts.hostname, SystemTime::now())?;
        let cert = ca.issue_server_cert(&[opts.hostname.as_str()])?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der], cert.key_der)
        .context("TLS server certificate")?;
        tls.alpn_protocols = vec![crate::tls::ALPN_POSTGRESQL.to_vec()];

        let limits = capped_limits(&opts.limits);
        raise_open_file_limit(&limits);
        let listener = TcpListener::bind(opts.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (choose another with --listen or --port; 0 picks a free port)",
                opts.listen
            )
        })?;
        let local_addr = listener.local_addr().context("listener address")?;

        let mut pg_opts = PgOptions::new(data_dir.path());
        pg_opts.dsql_mimic = true;
        pg_opts.max_connections = limits.max_connections;
        // A refused data dir file is already the one line to show.
        let pg = PgServer::start(pg_opts).await.map_err(|e| {
            if e.is::<ConfigError>() {
                e
            } else {
                e.context("starting the private PostgreSQL")
            }
        })?;

        let verifier = TokenVerifier::new(opts.hostname.clone(), opts.region.clone()).with_key(
            access_key_id.clone(),
            secret_access_key.clone(),
            None,
        );
        let mut shared = Shared::new(
            verifier,
            TlsAcceptor::from(Arc::new(tls)),
            pg.upstream()
                .context("the private PostgreSQL is not running")?,
            limits,
            opts.clock.clone(),
        );
        if opts.dialect == Dialect::Dsql {
            let classifier = Classifier::start().context("starting the SQL parser threads")?;
            let jobs = dialect::jobs::Jobs::start(&pg)
                .await
                .context("starting the job runner of CREATE INDEX ASYNC")?;
            shared = shared
                .with_dialect(classifier, opts.max_transaction_age)
                .with_jobs(jobs)
                .with_iam_grants(opts.iam_arn.clone());
        }
        let shared = Arc::new(shared);
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
            iam_arn: opts.iam_arn,
            ca_path: data_dir.path().join("ca.pem"),
            data_dir: data_dir.path().to_path_buf(),
            stop,
            accept_task: Some(accept_task),
            failed,
            monitor_task: Some(monitor_task),
            pg: Some(pg),
            temp_dir,
            _lock: lock,
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

    /// The IAM identity (ARN) the endpoint's keys stand for: `AWS IAM GRANT role TO
    /// '<this>'` lets `role` log in (with DSQL's dialect; `admin` needs no grant).
    pub fn iam_arn(&self) -> &str {
        &self.iam_arn
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
        "the open-file limit ({available}) allows about {reachable} of the {max} connections --max-connections advertises; raise it (ulimit -n) or lower --max-connections or --burst (the handshakes in progress at once)"
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
                    // At the cap, the oldest handshake in progress gives its slot up.
                    let handshake = shared.admit();
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = files::open_data_dir(tmp.path()).unwrap();
        let first = load_credentials(&dir, None, None).unwrap();
        let mode = fs::metadata(tmp.path().join("credentials"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_credentials(&dir, None, None).unwrap(), first);
        let explicit = load_credentials(&dir, Some("A".into()), Some("B".into())).unwrap();
        assert_eq!(explicit, ("A".into(), "B".into()));
        assert!(load_credentials(&dir, Some("A".into()), None).is_err());
    }

    /// A credentials file others may read is refused, never used.
    #[test]
    fn credentials_others_can_read_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = files::open_data_dir(tmp.path()).unwrap();
        let path = tmp.path().join("credentials");
        fs::write(&path, "aws_access_key_id = A\naws_secret_access_key = B\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_credentials(&dir, None, None).unwrap_err();
        assert!(err.is::<ConfigError>(), "{err:#}");
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let p = path.display();
        assert_eq!(
            err.to_string(),
            format!(
                "{p} holds a secret but is readable by group or others (owner {me}, mode 644); run chmod 600 {p}"
            )
        );
    }

    /// A persisted CA is kept while it fits, replaced once it does not cover the hostname.
    #[test]
    fn a_ca_for_another_hostname_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = files::open_data_dir(tmp.path()).unwrap();
        let now = SystemTime::now();
        let first = load_ca(&dir, "db.example", now).unwrap();
        let kept = load_ca(&dir, "db.example", now).unwrap();
        assert_eq!(first.cert_pem(), kept.cert_pem());
        let replaced = load_ca(&dir, "other.example", now).unwrap();
        assert_ne!(first.cert_pem(), replaced.cert_pem());
        assert_eq!(
            fs::read_to_string(tmp.path().join("ca.pem")).unwrap(),
            replaced.cert_pem()
        );
        assert_eq!(replaced.check_fits(&["other.example"], now), Ok(()));
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
            "the open-file limit (1024) allows about 0 of the 10000 connections --max-connections advertises; raise it (ulimit -n) or lower --max-connections or --burst (the handshakes in progress at once)"
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
