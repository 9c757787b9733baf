//! Validated connection settings: what a pool needs, checked once.
//!
//! [`ConnSettings`] comes from [`ConnSettings::builder`], from a `postgres://` URL
//! (`"postgres://admin@<id>.dsql.us-east-1.on.aws/postgres?tokenDurationSecs=600".parse()`),
//! or from the environment ([`ConnSettings::from_env`], the variables the command line reads
//! too). Only `from_env` reads the process environment. Every rule (DSQL's one-hour
//! connection age, the one-week token cap, the shapes of regions, roles and host names) is
//! checked in [`ConnSettingsBuilder::build`], in one place; the binary feeds its flags into the
//! same builder and puts its flag names into the messages.

mod builder;
pub(crate) mod env;
mod url;

use std::path::PathBuf;
use std::time::Duration;

pub use self::builder::ConnSettingsBuilder;
pub(crate) use self::builder::{Names, Setting};
#[cfg(feature = "cli")]
pub(crate) use self::builder::{check_pool, check_role, check_token_lifetime};
pub use self::env::Environment;
#[cfg(feature = "cli")]
pub(crate) use self::env::ProcessEnv;
use crate::auth::Secret;
pub use crate::auth::{ADMIN_USER, MAX_TOKEN_LIFETIME, Target, is_host_name};
pub use crate::error::ConfigError;
pub(crate) use crate::error::shown;

/// DSQL closes every connection after an hour; the pool must retire them before that.
pub const DSQL_MAX_CONNECTION_AGE: Duration = crate::dsql::MAX_CONNECTION_AGE;
/// The token lifetime when none is given.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The port when none is given.
pub const DEFAULT_PORT: u16 = 5432;
/// The database when none is given (DSQL has only `postgres`).
pub const DEFAULT_DATABASE: &str = "postgres";
/// `application_name` sent at startup unless the settings name another (on DSQL's
/// allow-list).
pub const DEFAULT_APPLICATION_NAME: &str = concat!("dsql-pgx/", env!("CARGO_PKG_VERSION"));
/// The longest duration any setting takes: longer is no longer a wait but an overflow (a
/// clock plus `18446744073709551615s` panics).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// The longest role name PostgreSQL keeps (NAMEDATALEN - 1 bytes): it cuts a longer one
/// short, which would name another role.
pub const MAX_ROLE_LEN: usize = 63;

/// TLS modes, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Encrypt and verify the certificate chain and host name (DSQL's production setting).
    #[default]
    VerifyFull,
    /// Encrypt without verifying the certificate (testing only).
    Require,
    /// No TLS: refused with IAM, since DSQL rejects plaintext.
    Disable,
}

/// How the TLS session is started, as libpq's `sslnegotiation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslNegotiation {
    /// Classic SSLRequest, then TLS.
    #[default]
    Postgres,
    /// PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less.
    Direct,
}

impl SslNegotiation {
    /// The negotiation used when none is set: direct TLS for a DSQL endpoint
    /// (`*.dsql.<region>.on.aws`, which accepts it, as AWS's JDBC and .NET connectors
    /// assume), the classic SSLRequest for any other server, which may predate PostgreSQL 17.
    pub fn default_for(endpoint: &str) -> SslNegotiation {
        if is_dsql_endpoint(endpoint) {
            SslNegotiation::Direct
        } else {
            SslNegotiation::Postgres
        }
    }
}

/// How a connection proves who it is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// A fresh IAM token per connection.
    Iam,
    /// A fixed password (plain PostgreSQL).
    Password(Option<Secret>),
}

/// TLS settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Tls {
    /// verify-full, require or disable.
    pub mode: SslMode,
    /// PEM file of trusted CAs; `None` means the Mozilla/webpki roots.
    pub ca_file: Option<PathBuf>,
    /// SSLRequest or direct TLS.
    pub negotiation: SslNegotiation,
}

/// Pool sizing and lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSettings {
    /// Maximum connections.
    pub max_size: u32,
    /// Idle connections kept open.
    pub min_idle: u32,
    /// Connections older than this are closed.
    pub max_lifetime: Duration,
    /// Connections idle longer than this are closed.
    pub idle_timeout: Duration,
    /// A new connection must be ready within this.
    pub connect_timeout: Duration,
    /// Read each connection's session ID as it opens (default `true`; one round trip per
    /// connection). When `false`, [`crate::pool::PooledConn::session_id`] is empty until
    /// [`crate::pool::PooledConn::fetch_session_id`] reads it, and refresh reports list
    /// only the IDs known.
    pub session_id_on_connect: bool,
    /// With IAM, send each connection's token with its startup instead of waiting for the
    /// server to ask for it (default `true`; one round trip less per connection). DSQL asks
    /// every connection for a cleartext password, so the answer is known in advance; a server
    /// that asks for anything else fails the connection with an error that says so. Password
    /// connections always wait to be asked, since PostgreSQL may ask for SCRAM or MD5.
    pub early_password: bool,
}

impl Default for PoolSettings {
    /// The command line's defaults: 10 connections, 2 idle, 55 min lifetime (below DSQL's
    /// hour), 10 min idle timeout, 10 s to connect.
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            min_idle: 2,
            max_lifetime: Duration::from_secs(55 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
            connect_timeout: Duration::from_secs(10),
            session_id_on_connect: true,
            early_password: true,
        }
    }
}

/// Everything needed to open connections, validated. Build it with
/// [`ConnSettings::builder`], parse it from a URL, or read it with [`ConnSettings::from_env`].
///
/// ```
/// use dsql_pgx::ConnSettings;
/// let settings = ConnSettings::builder("abcdefghijklmnopqrstuvwxyz")
///     .region("us-east-1")
///     .user("app")
///     .build()?;
/// assert_eq!(settings.target.endpoint, "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws");
/// let same: ConnSettings =
///     "postgres://app@abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws/postgres".parse()?;
/// assert_eq!(same.target.user, "app");
/// # Ok::<(), dsql_pgx::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnSettings {
    /// Token target.
    pub target: Target,
    /// Host to connect to (the endpoint unless another host is given: a tunnel, PrivateLink).
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// IAM or password.
    pub auth: Auth,
    /// TLS.
    pub tls: Tls,
    /// Pool.
    pub pool: PoolSettings,
    /// `application_name` sent at startup.
    pub application_name: String,
}

impl ConnSettings {
    /// A builder for settings that reach `endpoint`: a DSQL host name, a bare 26-character
    /// cluster id (expanded with the region), or any host name for plain PostgreSQL. Reads no
    /// environment.
    pub fn builder(endpoint: impl Into<String>) -> ConnSettingsBuilder {
        ConnSettingsBuilder::new(endpoint.into())
    }

    /// Settings as `dsql-pgx` reads them without flags, from the process environment:
    /// `CLUSTER_ENDPOINT`, `REGION` (else the endpoint's, else `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`), `DB_USER` or `CLUSTER_USER`, `DB_HOST`, `DB_PORT`, `DB_NAME`,
    /// `AWS_PROFILE`, `TOKEN_EXPIRES_IN`, `PGSSLMODE`, `PGSSLNEGOTIATION`, `PGSSLROOTCERT`,
    /// `DB_MAX_CONNS`, `DB_MIN_CONNS`, `DB_USE_IAM` and `PGPASSWORD`; the defaults otherwise.
    /// An empty variable counts as unset.
    pub fn from_env() -> crate::Result<ConnSettings> {
        Self::from_environment(&env::ProcessEnv)
    }

    /// [`ConnSettings::from_env`] over another source of variables (a map, in tests).
    pub fn from_environment(env: &dyn Environment) -> crate::Result<ConnSettings> {
        Ok(env::builder(env)?.build_as(&env::EnvNames)?)
    }
}

/// The region named by a DSQL endpoint (`\.dsql[^.]*\.([^.]+)\.on\.aws$`).
pub fn region_from_endpoint(endpoint: &str) -> Option<String> {
    let rest = endpoint.to_ascii_lowercase();
    let rest = rest.strip_suffix(".on.aws")?;
    let (head, region) = rest.rsplit_once('.')?;
    let service = head.rsplit('.').next()?;
    (service.starts_with("dsql") && head.contains('.') && valid_region(region))
        .then(|| region.to_string())
}

/// Whether `endpoint` is a DSQL cluster endpoint, `<id>.dsql.<region>.on.aws` (any case).
pub fn is_dsql_endpoint(endpoint: &str) -> bool {
    let name = endpoint.to_ascii_lowercase();
    let Some(rest) = name.strip_suffix(".on.aws") else {
        return false;
    };
    let Some((head, region)) = rest.rsplit_once('.') else {
        return false;
    };
    head.strip_suffix(".dsql")
        .is_some_and(|id| !id.is_empty() && !id.ends_with('.'))
        && valid_region(region)
}

/// Whether `region` is shaped like an AWS region name (`us-east-1`).
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `text` is a bare cluster id (26 lowercase letters and digits).
pub fn is_cluster_id(text: &str) -> bool {
    text.len() == 26
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Parses a duration as every duration setting takes it: humantime (`90s`, `15m`, `1h30m`)
/// or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 90s, 15m, 1h or seconds"))
}

/// Parses the boolean spellings environment variables and URLs use.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

impl std::str::FromStr for SslMode {
    type Err = ConfigError;

    /// `verify-full`, `require` or `disable` (libpq's names).
    fn from_str(text: &str) -> Result<SslMode, ConfigError> {
        match text {
            "verify-full" => Ok(SslMode::VerifyFull),
            "require" => Ok(SslMode::Require),
            "disable" => Ok(SslMode::Disable),
            other => Err(ConfigError(format!(
                "sslmode {} is not verify-full, require or disable",
                shown(other)
            ))),
        }
    }
}

impl std::str::FromStr for SslNegotiation {
    type Err = ConfigError;

    /// `postgres` or `direct` (libpq's names).
    fn from_str(text: &str) -> Result<SslNegotiation, ConfigError> {
        match text {
            "postgres" => Ok(SslNegotiation::Postgres),
            "direct" => Ok(SslNegotiation::Direct),
            other => Err(ConfigError(format!(
                "sslnegotiation {} is not postgres or direct",
                shown(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws";

    #[test]
    fn region_is_parsed_from_the_endpoint() {
        assert_eq!(region_from_endpoint(HOST).as_deref(), Some("eu-west-1"));
        assert_eq!(
            region_from_endpoint("x.dsql-fips.us-gov-west-1.on.aws").as_deref(),
            Some("us-gov-west-1")
        );
        assert_eq!(region_from_endpoint("localhost"), None);
        assert_eq!(region_from_endpoint("x.rds.us-east-1.on.aws"), None);
        assert_eq!(region_from_endpoint("dsql.on.aws"), None);
    }

    #[test]
    fn only_host_names_and_ipv4_addresses_are_endpoints() {
        for good in [
            HOST,
            "localhost",
            "db-1.example.com",
            "10.0.0.7",
            "my_host.example",
        ] {
            assert!(is_host_name(good), "{good}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = ["abcdefghi"; 26].join(".");
        for bad in [
            "",
            "a@b.example",
            "a#b",
            "db.example:5432",
            "a/b",
            "a b",
            "::1",
            "[::1]",
            "-a.example",
            "a..b",
            "user:pw@host",
            "h\u{0}",
            "ü.example",
            &long_label,
            &long_name,
        ] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn durations_accept_humantime_and_seconds() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(parse_duration("-3").is_err());
    }

    #[test]
    fn tls_names_are_libpqs() {
        assert_eq!("verify-full".parse::<SslMode>(), Ok(SslMode::VerifyFull));
        assert_eq!("disable".parse::<SslMode>(), Ok(SslMode::Disable));
        assert!("verify-ca".parse::<SslMode>().is_err());
        assert_eq!(
            "direct".parse::<SslNegotiation>(),
            Ok(SslNegotiation::Direct)
        );
    }

    #[test]
    fn dsql_endpoints_get_direct_tls_by_default() {
        for dsql in [
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
            "dsqlpgxlocal00000000000000.dsql.eu-west-2.on.aws",
            "ABC.DSQL.US-EAST-1.ON.AWS",
        ] {
            assert!(is_dsql_endpoint(dsql), "{dsql}");
            assert_eq!(SslNegotiation::default_for(dsql), SslNegotiation::Direct);
        }
        for other in [
            "localhost",
            "127.0.0.1",
            "db.example.com",
            ".dsql.us-east-1.on.aws",
            "dsql.us-east-1.on.aws",
            "a.dsql-fnh4.us-east-1.on.aws",
            "a.dsql.us-east-1.on.aws.example.com",
            "a.dsql..on.aws",
        ] {
            assert!(!is_dsql_endpoint(other), "{other}");
            assert_eq!(SslNegotiation::default_for(other), SslNegotiation::Postgres);
        }
    }
}
