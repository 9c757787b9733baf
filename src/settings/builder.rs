//! [`ConnSettingsBuilder`]: every setting, its default, and every rule checked once in
//! [`ConnSettingsBuilder::build`].

use std::path::PathBuf;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;

use super::{
    Auth, ConnSettings, DEFAULT_APPLICATION_NAME, DEFAULT_DATABASE, DEFAULT_PORT,
    DEFAULT_TOKEN_LIFETIME, DSQL_MAX_CONNECTION_AGE, MAX_DURATION, MAX_ROLE_LEN, PoolSettings,
    SslMode, SslNegotiation, Tls, is_cluster_id, region_from_endpoint, shown, valid_region,
};
use crate::auth::{ADMIN_USER, CredentialSource, MAX_TOKEN_LIFETIME, Secret, Target, is_host_name};
use crate::error::ConfigError;

/// A setting a validation message is about (the binary names each by its flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    /// The endpoint signed for.
    Endpoint,
    /// The region signed for.
    Region,
    /// The role.
    User,
    /// The token lifetime.
    TokenLifetime,
    /// The host connected to.
    Host,
    /// The CA file.
    CaFile,
    /// The TLS mode.
    SslMode,
    /// The TLS negotiation.
    SslNegotiation,
    /// The pool's maximum size.
    MaxSize,
    /// The pool's minimum idle connections.
    MinIdle,
    /// The connections' maximum lifetime.
    MaxLifetime,
    /// The idle timeout.
    IdleTimeout,
    /// The connect timeout.
    ConnectTimeout,
    /// The application name.
    ApplicationName,
}

/// How validation messages name a setting and say how to set it: the library's own names
/// (`region`), or the binary's flags (`--region (or REGION)`).
pub(crate) trait Names {
    /// What a message calls `setting`.
    fn name(&self, setting: Setting) -> String;
    /// How to set `setting` when it is missing.
    fn fix(&self, setting: Setting) -> String {
        format!("set the {}", self.name(setting))
    }
}

/// The library's names: the builder's setters.
pub(super) struct Library;

impl Names for Library {
    fn name(&self, setting: Setting) -> String {
        match setting {
            Setting::Endpoint => "endpoint",
            Setting::Region => "region",
            Setting::User => "user",
            Setting::TokenLifetime => "token lifetime",
            Setting::Host => "host",
            Setting::CaFile => "CA file",
            Setting::SslMode => "sslmode",
            Setting::SslNegotiation => "sslnegotiation",
            Setting::MaxSize => "max_size",
            Setting::MinIdle => "min_idle",
            Setting::MaxLifetime => "max_lifetime",
            Setting::IdleTimeout => "idle_timeout",
            Setting::ConnectTimeout => "connect_timeout",
            Setting::ApplicationName => "application_name",
        }
        .to_string()
    }
}

/// Builds [`ConnSettings`]; see [`ConnSettings::builder`]. Unset values take the command
/// line's defaults: region from the endpoint, user `admin`, database `postgres`, port 5432,
/// IAM tokens valid 15 minutes from aws-config's default credential chain, TLS verify-full
/// against the Mozilla/webpki roots, [`PoolSettings::default`].
#[derive(Debug, Clone)]
pub struct ConnSettingsBuilder {
    endpoint: String,
    region: Option<String>,
    user: Option<String>,
    database: Option<String>,
    port: Option<u16>,
    host: Option<String>,
    credentials: CredentialSource,
    token_lifetime: Duration,
    auth: Auth,
    tls: Tls,
    /// `None` until set: then [`SslNegotiation::default_for`] the endpoint.
    negotiation: Option<SslNegotiation>,
    pool: PoolSettings,
    application_name: Option<String>,
}

impl ConnSettingsBuilder {
    pub(super) fn new(endpoint: String) -> ConnSettingsBuilder {
        ConnSettingsBuilder {
            endpoint,
            region: None,
            user: None,
            database: None,
            port: None,
            host: None,
            credentials: CredentialSource::DefaultChain { profile: None },
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            auth: Auth::Iam,
            tls: Tls {
                mode: SslMode::VerifyFull,
                ca_file: None,
                negotiation: SslNegotiation::Postgres,
            },
            negotiation: None,
            pool: PoolSettings::default(),
            application_name: None,
        }
    }

    /// The AWS region tokens are signed for (default: the endpoint's).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The database role (default `admin`, which gets `DbConnectAdmin` tokens).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The database (default `postgres`, DSQL's only one).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The port (default 5432).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The host to connect to, when it differs from the endpoint signed for (a tunnel,
    /// PrivateLink). TLS still verifies the endpoint's name.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Credentials from aws-config's default chain with this named profile.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.credentials = CredentialSource::DefaultChain {
            profile: Some(profile.into()),
        };
        self
    }

    /// Credentials from a provider of the program's own.
    pub fn credentials_provider(mut self, provider: SharedCredentialsProvider) -> Self {
        self.credentials = CredentialSource::Provider(provider);
        self
    }

    /// Credentials from any [`CredentialSource`].
    pub fn credentials(mut self, source: CredentialSource) -> Self {
        self.credentials = source;
        self
    }

    /// How long each token stays valid for opening connections (1 s to 1 week; default
    /// 15 minutes). An open connection outlives its token.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// A fixed password instead of IAM tokens (plain PostgreSQL).
    pub fn password(mut self, password: Option<Secret>) -> Self {
        self.auth = Auth::Password(password);
        self
    }

    /// IAM or a password (default IAM).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The TLS mode (default verify-full).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.tls.mode = mode;
        self
    }

    /// How TLS starts (default: direct TLS for a `*.dsql.<region>.on.aws` endpoint, an
    /// SSLRequest otherwise; see [`SslNegotiation::default_for`]).
    pub fn ssl_negotiation(mut self, negotiation: SslNegotiation) -> Self {
        self.negotiation = Some(negotiation);
        self
    }

    /// A PEM file of CAs to trust instead of the Mozilla/webpki roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Sizing and lifetimes of the pool, all at once.
    pub fn pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The pool's maximum connections (default 10).
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.pool.max_size = max_size;
        self
    }

    /// Idle connections the pool keeps open (default 2).
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.pool.min_idle = min_idle;
        self
    }

    /// Connections older than this are closed (below DSQL's hour; default 55 minutes).
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.pool.max_lifetime = lifetime;
        self
    }

    /// Connections idle longer than this are closed (default 10 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool.idle_timeout = timeout;
        self
    }

    /// A new connection (token, TCP, TLS, authentication) must be ready within this
    /// (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pool.connect_timeout = timeout;
        self
    }

    /// With IAM, whether each token goes out with the startup rather than after the server
    /// asks for it (default `true`; see [`PoolSettings::early_password`]).
    pub fn early_password(mut self, early: bool) -> Self {
        self.pool.early_password = early;
        self
    }

    /// `application_name` sent at startup (default `dsql-pgx/<version>`).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Checks every setting and expands a bare cluster id.
    pub fn build(self) -> crate::Result<ConnSettings> {
        Ok(self.build_as(&Library)?)
    }

    /// [`ConnSettingsBuilder::build`] with messages naming settings as `names` does.
    pub(crate) fn build_as(self, names: &dyn Names) -> Result<ConnSettings, ConfigError> {
        let name = |setting| names.name(setting);
        let bad = |message: String| Err(ConfigError(message));
        let raw = self.endpoint.trim();
        if raw.is_empty() {
            return bad(format!(
                "no cluster endpoint: {}",
                names.fix(Setting::Endpoint)
            ));
        }
        if !is_host_name(raw) {
            return bad(format!(
                "{} {} is not a host name; give e.g. <id>.dsql.us-east-1.on.aws (an address to connect to goes in {})",
                name(Setting::Endpoint),
                shown(raw),
                name(Setting::Host)
            ));
        }
        let iam = matches!(self.auth, Auth::Iam);
        // Only signing needs a region (and expanding a bare cluster id).
        let region = match self.region.or_else(|| region_from_endpoint(raw)) {
            Some(region) => region,
            None if !iam && !is_cluster_id(raw) => String::new(),
            None => {
                return bad(format!(
                    "cannot tell the region of endpoint {}: {}",
                    shown(raw),
                    names.fix(Setting::Region)
                ));
            }
        };
        if !(region.is_empty() && !iam || valid_region(&region)) {
            return bad(format!(
                "{} {} is not a region name such as us-east-1",
                name(Setting::Region),
                shown(&region)
            ));
        }
        let endpoint = if is_cluster_id(raw) {
            format!("{raw}.dsql.{region}.on.aws")
        } else {
            raw.to_ascii_lowercase()
        };
        let user = self.user.unwrap_or_else(|| ADMIN_USER.to_string());
        check_role(&user).map_err(|why| ConfigError(format!("{} {why}", name(Setting::User))))?;
        let lifetime = self.token_lifetime;
        check_token_lifetime(lifetime, names)?;
        check_pool(&self.pool, names)?;
        if iam && self.tls.mode == SslMode::Disable {
            return bad(format!(
                "{} disable cannot be used with IAM: DSQL requires TLS; use verify-full",
                name(Setting::SslMode)
            ));
        }
        if self.tls.mode == SslMode::Disable && self.negotiation == Some(SslNegotiation::Direct) {
            return bad(format!(
                "{} direct needs TLS; drop {} disable",
                name(Setting::SslNegotiation),
                name(Setting::SslMode)
            ));
        }
        if let Some(ca) = &self.tls.ca_file
            && !ca.is_file()
        {
            return bad(format!(
                "{} {} is not a readable file",
                name(Setting::CaFile),
                ca.display()
            ));
        }
        if let Some(host) = &self.host
            && rustls_pki_types::ServerName::try_from(host.as_str()).is_err()
        {
            return bad(format!(
                "{} {} is neither a host name nor an IP address",
                name(Setting::Host),
                shown(host)
            ));
        }
        let application_name = self
            .application_name
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());
        if application_name.contains('\0') || application_name.len() > MAX_ROLE_LEN {
            return bad(format!(
                "{} {} must be at most {MAX_ROLE_LEN} bytes without NUL",
                name(Setting::ApplicationName),
                shown(&application_name)
            ));
        }
        let mut tls = self.tls;
        tls.negotiation = match self.negotiation {
            Some(negotiation) => negotiation,
            None if tls.mode == SslMode::Disable => SslNegotiation::Postgres,
            // The endpoint, not the host: a tunnel to DSQL still ends at DSQL.
            None => SslNegotiation::default_for(&endpoint),
        };
        Ok(ConnSettings {
            host: self.host.unwrap_or_else(|| endpoint.clone()),
            port: self.port.unwrap_or(DEFAULT_PORT),
            database: self
                .database
                .unwrap_or_else(|| DEFAULT_DATABASE.to_string()),
            auth: self.auth,
            tls,
            pool: self.pool,
            application_name,
            target: Target {
                endpoint,
                region,
                user,
                credentials: self.credentials,
                token_expires_in: lifetime,
            },
        })
    }
}

/// Whether `user` can be a role name: not empty, no NUL, at most [`MAX_ROLE_LEN`] bytes.
/// The error says why, after the setting's name.
pub(crate) fn check_role(user: &str) -> Result<(), String> {
    if user.is_empty() || user.contains('\0') {
        return Err("must be a role name".to_string());
    }
    if user.len() > MAX_ROLE_LEN {
        return Err(format!(
            "{} is longer than a role name's {MAX_ROLE_LEN} bytes",
            shown(user)
        ));
    }
    Ok(())
}

/// Whether tokens can live this long: 1 s to DSQL's week.
pub(crate) fn check_token_lifetime(
    lifetime: Duration,
    names: &dyn Names,
) -> Result<(), ConfigError> {
    if lifetime < Duration::from_secs(1) || lifetime > MAX_TOKEN_LIFETIME {
        return Err(ConfigError(format!(
            "{} must be between 1s and 1 week ({}s), got {}",
            names.name(Setting::TokenLifetime),
            MAX_TOKEN_LIFETIME.as_secs(),
            humantime::format_duration(lifetime)
        )));
    }
    Ok(())
}

/// The pool's rules: a lifetime below DSQL's hour, timeouts above 0, a size of at least one.
pub(crate) fn check_pool(pool: &PoolSettings, names: &dyn Names) -> Result<(), ConfigError> {
    let name = |setting| names.name(setting);
    let bad = |message: String| Err(ConfigError(message));
    if pool.max_lifetime >= DSQL_MAX_CONNECTION_AGE || pool.max_lifetime.is_zero() {
        return bad(format!(
            "{} {} must be above 0 and below DSQL's 60-minute connection limit; use 55m or less",
            name(Setting::MaxLifetime),
            humantime::format_duration(pool.max_lifetime)
        ));
    }
    for (setting, value) in [
        (Setting::IdleTimeout, pool.idle_timeout),
        (Setting::ConnectTimeout, pool.connect_timeout),
    ] {
        if value.is_zero() {
            return bad(format!("{} must be above 0", name(setting)));
        }
        if value > MAX_DURATION {
            return bad(format!("{} is longer than 100 years", name(setting)));
        }
    }
    if pool.max_size == 0 {
        return bad(format!("{} must be at least 1", name(Setting::MaxSize)));
    }
    if pool.min_idle > pool.max_size {
        return bad(format!(
            "{} {} exceeds {} {}",
            name(Setting::MinIdle),
            pool.min_idle,
            name(Setting::MaxSize),
            pool.max_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws";

    fn refused(builder: ConnSettingsBuilder) -> String {
        builder.build_as(&Library).expect_err("refused").0
    }

    #[test]
    fn defaults_match_the_command_line() {
        let s = ConnSettings::builder(HOST).build().unwrap();
        assert_eq!(s.target.region, "eu-west-1");
        assert_eq!(s.target.user, "admin");
        assert!(s.target.is_admin());
        assert_eq!(s.host, HOST);
        assert_eq!(s.port, 5432);
        assert_eq!(s.database, "postgres");
        assert!(matches!(s.auth, Auth::Iam));
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.pool, PoolSettings::default());
        assert_eq!(s.target.token_expires_in, Duration::from_secs(900));
        assert_eq!(s.application_name, DEFAULT_APPLICATION_NAME);
    }

    #[test]
    fn a_bare_cluster_id_is_expanded_with_the_region() {
        let s = ConnSettings::builder("abcdefghijklmnopqrstuvwxyz")
            .region("us-east-1")
            .build()
            .unwrap();
        assert_eq!(
            s.target.endpoint,
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
        );
        assert_eq!(s.host, s.target.endpoint);
        let err = refused(ConnSettings::builder("abcdefghijklmnopqrstuvwxyz"));
        assert!(err.contains("cannot tell the region"), "{err}");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let b = || ConnSettings::builder(HOST);
        let cases = [
            (
                ConnSettings::builder(" "),
                "no cluster endpoint: set the endpoint",
            ),
            (
                ConnSettings::builder("https://x"),
                "endpoint \"https://x\" is not a host",
            ),
            (
                b().region("Not A Region"),
                "region \"Not A Region\" is not a region",
            ),
            (b().user(""), "user must be a role name"),
            (
                b().user("r".repeat(64)),
                "longer than a role name's 63 bytes",
            ),
            (b().token_lifetime(Duration::from_secs(604_801)), "1 week"),
            (
                b().token_lifetime(Duration::ZERO),
                "token lifetime must be between",
            ),
            (b().max_lifetime(Duration::from_secs(3600)), "60-minute"),
            (
                b().idle_timeout(Duration::ZERO),
                "idle_timeout must be above 0",
            ),
            (b().max_size(0), "max_size must be at least 1"),
            (b().min_idle(20), "min_idle 20 exceeds max_size 10"),
            (b().ssl_mode(SslMode::Disable), "DSQL requires TLS"),
            (b().ca_file("/nonexistent/ca.pem"), "is not a readable file"),
            (b().host("a@b"), "host \"a@b\" is neither"),
        ];
        for (builder, fragment) in cases {
            let err = refused(builder);
            assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
            assert!(
                !err.contains("--"),
                "a library message names no flag: {err}"
            );
        }
        let plain = b()
            .password(None)
            .ssl_mode(SslMode::Disable)
            .ssl_negotiation(SslNegotiation::Direct);
        assert!(refused(plain).contains("sslnegotiation direct needs TLS"));
    }

    #[test]
    fn the_week_is_allowed_and_the_role_limit_is_inclusive() {
        let s = ConnSettings::builder(HOST)
            .token_lifetime(MAX_TOKEN_LIFETIME)
            .user("r".repeat(MAX_ROLE_LEN))
            .build()
            .unwrap();
        assert_eq!(s.target.token_expires_in, Duration::from_secs(604_800));
        assert!(!s.target.is_admin());
    }

    #[test]
    fn negotiation_defaults_to_direct_for_dsql_endpoints_only() {
        let direct = ConnSettings::builder(HOST).build().unwrap();
        assert_eq!(direct.tls.negotiation, SslNegotiation::Direct);
        let tunnel = ConnSettings::builder(HOST)
            .host("127.0.0.1")
            .build()
            .unwrap();
        assert_eq!(tunnel.tls.negotiation, SslNegotiation::Direct);
        let back = ConnSettings::builder(HOST)
            .ssl_negotiation(SslNegotiation::Postgres)
            .build()
            .unwrap();
        assert_eq!(back.tls.negotiation, SslNegotiation::Postgres);
        let plain = ConnSettings::builder("db.example.com")
            .region("us-east-1")
            .password(None)
            .build()
            .unwrap();
        assert_eq!(plain.tls.negotiation, SslNegotiation::Postgres);
        let cleartext = ConnSettings::builder(HOST)
            .password(None)
            .ssl_mode(SslMode::Disable)
            .build()
            .unwrap();
        assert_eq!(cleartext.tls.negotiation, SslNegotiation::Postgres);
    }
}
