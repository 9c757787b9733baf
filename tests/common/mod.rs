//! The one shared harness for integration tests: a real PostgreSQL with TCP+TLS+password
//! ([`TestPg`]), a local DSQL endpoint ([`TestEndpoint`]), a rustls connector for
//! tokio-postgres and DSQL token helpers. Everything stops on drop, leaving no process.
//! A missing PostgreSQL installation fails loudly, it is never a skip.
//!
//! Timing is never left to the machine's speed: an endpoint started with
//! [`TestEndpoint::start_stepped`] runs on a [`ManualClock`] the test steps (token expiry,
//! connection age, the rate bucket), and [`eventually`] polls for a condition, bounded,
//! instead of sleeping.

#![allow(dead_code)]

pub mod clients;
pub mod dsql;
pub mod relay;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_dsql::auth_token::{AuthTokenGenerator, Config as TokenConfig};
use aws_smithy_async::time::StaticTimeSource;
use dsql_pgx::local::certs::LocalCa;
use dsql_pgx::local::{
    EndpointOptions, Limits, LocalEndpoint, ManualClock, PgOptions, PgServer, TcpTls,
};
use dsql_pgx::tls::TlsConnector;
use rand::RngExt as _;

/// A rustls client config (ring provider) trusting only the CA in `ca_pem`.
pub fn client_config(ca_pem: &str, alpn: bool) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Arc::new(config)
}

/// The library's TLS connector over a rustls configuration of the test's choosing (the
/// endpoint's tests need one without ALPN, for instance).
pub fn tls_connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::with_config(config, "localhost").expect("valid server name")
}

/// Connects with `config` and spawns the connection task.
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: TlsConnector,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Everything needed to sign a DSQL token.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// Hostname signed for.
    pub host: String,
    /// Region signed for.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Validity in seconds.
    pub expires_in: u64,
}

/// Polls `check` every 20 ms until it holds; fails the test, naming `what`, if it does not
/// within `within` (a bound for a loaded machine, not an expectation of speed).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The session IDs of the connections a pool has open (in use or idle).
pub fn session_ids(pool: &dsql_pgx::Pool) -> std::collections::BTreeSet<String> {
    pool.connections()
        .into_iter()
        .map(|c| c.session_id)
        .collect()
}

impl TokenSpec {
    /// Signs a token now with aws-sdk-dsql's generator: `DbConnectAdmin` iff `user == "admin"`.
    pub async fn sign(&self, user: &str) -> String {
        self.sign_at(user, SystemTime::now()).await
    }

    /// Signs a token as at `at` (an endpoint's clock, for one on a [`ManualClock`]).
    pub async fn sign_at(&self, user: &str, at: SystemTime) -> String {
        let creds = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "test",
        );
        let sdk = aws_config::SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(creds))
            .time_source(StaticTimeSource::new(at))
            .build();
        let generator = AuthTokenGenerator::new(
            TokenConfig::builder()
                .hostname(&self.host)
                .region(aws_config::Region::new(self.region.clone()))
                .expires_in(self.expires_in)
                .build()
                .expect("token config"),
        );
        let token = if user == "admin" {
            generator.db_connect_admin_auth_token(&sdk).await
        } else {
            generator.db_connect_auth_token(&sdk).await
        };
        token.expect("signing a token").to_string()
    }
}

fn random_password() -> String {
    let mut rng = rand::rng();
    (0..24)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// A real PostgreSQL on 127.0.0.1 with TLS (certificate from a local CA) and a SCRAM
/// password for the superuser `admin`.
pub struct TestPg {
    pg: Option<PgServer>,
    opts: PgOptions,
    password: String,
    ca_pem: String,
    ca_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPg {
    /// Starts a plain PostgreSQL.
    pub async fn start() -> TestPg {
        Self::start_with(false).await
    }

    /// Starts PostgreSQL, DSQL-like when `dsql_mimic`.
    pub async fn start_with(dsql_mimic: bool) -> TestPg {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = LocalCa::generate().expect("CA");
        let cert = ca.issue_server_cert(&[]).expect("server certificate");
        let password = random_password();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).expect("writing ca.pem");
        // A DSQL-like server's `admin` is no superuser: the superuser is the internal one.
        let superuser = if dsql_mimic {
            dsql_pgx::local::postgres::INTERNAL_SUPERUSER
        } else {
            "admin"
        };
        let opts = PgOptions {
            data_dir: dir.path().join("data"),
            superuser: superuser.into(),
            tcp: Some(TcpTls {
                port: 0,
                cert_pem: cert.cert_pem.clone(),
                key_pem: cert.key_pem.clone(),
                password: password.clone(),
            }),
            dsql_mimic,
            max_connections: 200,
        };
        let pg = PgServer::start(opts.clone())
            .await
            .unwrap_or_else(|e| panic!("starting the test PostgreSQL failed: {e:#}"));
        let mut opts = opts;
        if let Some(tcp) = opts.tcp.as_mut() {
            // A restart keeps the port clients know.
            tcp.port = pg.port().expect("TCP enabled");
        }
        TestPg {
            pg: Some(pg),
            opts,
            password,
            ca_pem: ca.cert_pem().to_owned(),
            ca_path,
            _dir: dir,
        }
    }

    /// The server.
    pub fn server(&self) -> &PgServer {
        self.pg.as_ref().expect("running")
    }

    /// Host to connect to.
    pub fn host(&self) -> &str {
        "localhost"
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.server().port().expect("TCP enabled")
    }

    /// The role to log in as over TCP: the superuser `admin` (with `dsql_mimic`, the
    /// DSQL-like `admin`, no superuser).
    pub fn user(&self) -> &str {
        "admin"
    }

    /// Password of [`TestPg::user`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// What the server has written to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.opts.data_dir.join("postgres.log")).unwrap_or_default()
    }

    /// CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client as the bootstrap superuser over the Unix socket.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        self.server().admin_client().await.expect("admin client")
    }

    /// A client over TCP+TLS with the password.
    pub async fn tcp_client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(self.port())
            .user(self.user())
            .password(self.password())
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        connect(&config, tls_connector(client_config(&self.ca_pem, false))).await
    }

    /// Stops the server (fast shutdown: connected clients get FATAL 57P01), keeping its data
    /// directory and port for [`TestPg::start_server`].
    pub async fn stop_server(&mut self) {
        if let Some(pg) = self.pg.take() {
            pg.stop().await.expect("stopping PostgreSQL");
        }
    }

    /// Starts the server again after [`TestPg::stop_server`]: same data, port and password.
    /// Returns once it accepts connections.
    pub async fn start_server(&mut self) {
        assert!(self.pg.is_none(), "the test PostgreSQL is already running");
        let pg = PgServer::start(self.opts.clone())
            .await
            .unwrap_or_else(|e| panic!("restarting the test PostgreSQL failed: {e:#}"));
        self.pg = Some(pg);
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(pg) = self.pg.take() {
            pg.stop().await.expect("stopping PostgreSQL");
        }
    }
}

/// A [`LocalEndpoint`] on 127.0.0.1 (free port) with a temporary data directory.
pub struct TestEndpoint {
    endpoint: Option<LocalEndpoint>,
    ca_pem: String,
    clock: Option<ManualClock>,
    dialect: dsql_pgx::local::Dialect,
}

impl TestEndpoint {
    /// Starts an endpoint with DSQL's default limits.
    pub async fn start() -> TestEndpoint {
        Self::start_with(Limits::default()).await
    }

    /// Starts an endpoint with the given limits.
    pub async fn start_with(limits: Limits) -> TestEndpoint {
        Self::start_on(limits, None).await
    }

    /// Starts an endpoint with the given limits on a [`ManualClock`] standing at the time it
    /// starts: tokens, connection ages and the rate bucket see time pass only when the test
    /// calls [`TestEndpoint::advance`]. A token signed after the start is valid until the
    /// clock is stepped past its expiry (or 5 minutes of real time have passed: tokens from
    /// further in the future than that are refused, as DSQL does).
    pub async fn start_stepped(limits: Limits) -> TestEndpoint {
        Self::start_on(limits, Some(ManualClock::starting_now())).await
    }

    /// Starts an endpoint named `hostname` (certificate and tokens), such as the
    /// DSQL-shaped name `dsql-pgx local` uses by default; clients reach it at 127.0.0.1.
    pub async fn start_named(hostname: &str) -> TestEndpoint {
        Self::start_opts(
            EndpointOptions {
                hostname: hostname.to_string(),
                ..EndpointOptions::default()
            },
            None,
        )
        .await
    }

    /// Starts an endpoint that speaks `dialect`.
    pub async fn start_dialect(dialect: dsql_pgx::local::Dialect) -> TestEndpoint {
        Self::start_opts(
            EndpointOptions {
                dialect,
                ..EndpointOptions::default()
            },
            None,
        )
        .await
    }

    async fn start_on(limits: Limits, clock: Option<ManualClock>) -> TestEndpoint {
        let mut opts = EndpointOptions {
            limits,
            ..EndpointOptions::default()
        };
        if let Some(clock) = &clock {
            opts.clock = clock.clock();
        }
        Self::start_opts(opts, clock).await
    }

    async fn start_opts(opts: EndpointOptions, clock: Option<ManualClock>) -> TestEndpoint {
        let dialect = opts.dialect;
        let endpoint = LocalEndpoint::start(opts)
            .await
            .unwrap_or_else(|e| panic!("starting the local endpoint failed: {e:#}"));
        let ca_pem = std::fs::read_to_string(endpoint.ca_path()).expect("reading ca.pem");
        TestEndpoint {
            endpoint: Some(endpoint),
            ca_pem,
            clock,
            dialect,
        }
    }

    /// Steps the endpoint's clock (one started with [`TestEndpoint::start_stepped`]).
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("an endpoint started with start_stepped")
            .advance(by);
    }

    /// A handle on the endpoint's manual clock, for a task that steps it.
    pub fn manual_clock(&self) -> ManualClock {
        self.clock
            .clone()
            .expect("an endpoint started with start_stepped")
    }

    /// The endpoint's wall-clock time: the system's, or its manual clock's.
    pub fn now(&self) -> SystemTime {
        self.clock
            .as_ref()
            .map_or_else(SystemTime::now, ManualClock::now)
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &LocalEndpoint {
        self.endpoint.as_ref().expect("running")
    }

    /// Hostname to connect to (and sign tokens for).
    pub fn host(&self) -> &str {
        self.endpoint().hostname()
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.endpoint().port()
    }

    /// Region.
    pub fn region(&self) -> &str {
        self.endpoint().region()
    }

    /// CA certificate path.
    pub fn ca_path(&self) -> &Path {
        self.endpoint().ca_path()
    }

    /// CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Access key id.
    pub fn access_key_id(&self) -> &str {
        self.endpoint().access_key_id()
    }

    /// Secret access key.
    pub fn secret_access_key(&self) -> &str {
        self.endpoint().secret_access_key()
    }

    /// Environment for a client process (the CLI) to reach this endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CLUSTER_ENDPOINT".into(), self.host().into()),
            ("REGION".into(), self.region().into()),
            ("DB_PORT".into(), self.port().to_string()),
            (
                "PGSSLROOTCERT".into(),
                self.ca_path().to_string_lossy().into_owned(),
            ),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id().into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key().into(),
            ),
        ]
    }

    /// What a correct token for this endpoint is signed with (900 s validity).
    pub fn token_spec(&self) -> TokenSpec {
        TokenSpec {
            host: self.host().into(),
            region: self.region().into(),
            access_key_id: self.access_key_id().into(),
            secret_access_key: self.secret_access_key().into(),
            expires_in: 900,
        }
    }

    /// A valid token for `user`, signed at the endpoint's time.
    pub async fn token(&self, user: &str) -> String {
        self.token_spec().sign_at(user, self.now()).await
    }

    /// A rustls connector trusting the endpoint's CA (ALPN `postgresql` when `alpn`).
    pub fn tls(&self, alpn: bool) -> TlsConnector {
        tls_connector(client_config(&self.ca_pem, alpn))
    }

    /// A tokio-postgres config for `user` with `password`, TLS required.
    pub fn config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(self.port())
            .user(user)
            .password(password)
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        config
    }

    /// Connects as `user` with a fresh valid token.
    pub async fn connect(
        &self,
        user: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let token = self.token(user).await;
        connect(&self.config(user, &token), self.tls(false)).await
    }

    /// Maps `role` to the endpoint's IAM identity, as admin through the endpoint (`AWS IAM
    /// GRANT`), so that it may log in (DSQL's dialect refuses it otherwise; plain
    /// PostgreSQL's needs no grant and knows no such statement).
    pub async fn grant_iam(&self, role: &str) {
        if self.dialect == dsql_pgx::local::Dialect::Postgres {
            return;
        }
        let admin = self.connect("admin").await.expect("admin connects");
        let sql = format!("AWS IAM GRANT {role} TO '{}'", self.endpoint().iam_arn());
        admin.batch_execute(&sql).await.expect("AWS IAM GRANT");
    }

    /// A client straight to the private PostgreSQL (Unix socket) as its bootstrap superuser,
    /// [`dsql_pgx::local::postgres::INTERNAL_SUPERUSER`]: not `admin`, which is no superuser.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        self.endpoint()
            .postgres()
            .admin_client()
            .await
            .expect("admin client")
    }

    /// Waits, at most `within`, until `count` sessions of the private PostgreSQL match
    /// `filter`, a condition on `pg_stat_activity` (`query = 'select pg_sleep(60)'`,
    /// `wait_event_type = 'Lock'`); fails the test naming `what` otherwise.
    pub async fn wait_for_sessions(&self, what: &str, filter: &str, count: i64, within: Duration) {
        let admin = self.admin_client().await;
        let sql = format!("select count(*) from pg_stat_activity where {filter}");
        eventually(what, within, || async {
            admin.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) == count
        })
        .await;
    }

    /// Shuts the endpoint down cleanly.
    pub async fn stop(mut self) {
        if let Some(ep) = self.endpoint.take() {
            ep.shutdown().await.expect("endpoint shutdown");
        }
    }
}
