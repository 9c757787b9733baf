//! Raw flags and environment become validated settings, once.
//!
//! Clap already applied `flag > environment > default` for every flag with a single variable.
//! This module adds the fallbacks that span several variables (`REGION`, `AWS_REGION`, ...),
//! parses durations, checks ranges and combinations, and expands a bare cluster id. Nothing
//! downstream reads an environment variable or re-validates a flag.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{CredentialSource, Secret};
use crate::cli::{self, ConnArgs, TargetArgs};
pub use crate::cli::{SslMode, SslNegotiation};

/// DSQL closes every connection after an hour; the pool must retire them before that.
pub const DSQL_MAX_CONNECTION_AGE: Duration = Duration::from_secs(60 * 60);
/// The longest token lifetime DSQL accepts (one week).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(604_800);
/// The built-in role that needs a `DbConnectAdmin` token.
pub const ADMIN_USER: &str = "admin";

/// A bad flag or environment value; exits with the usage code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// Where environment values come from: the process environment, or a map in tests.
pub trait Environment {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Who a token is signed for and with what.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint host name tokens are signed for (and TLS verifies).
    pub endpoint: String,
    /// The AWS region tokens are signed for.
    pub region: String,
    /// The database role.
    pub user: String,
    /// Where AWS credentials come from.
    pub credentials: CredentialSource,
    /// How long a token stays valid for opening connections.
    pub token_expires_in: Duration,
}

impl Target {
    /// Whether this role needs a `DbConnectAdmin` token.
    pub fn is_admin(&self) -> bool {
        self.user == ADMIN_USER
    }
}

/// How a connection proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A fresh IAM token per connection.
    Iam,
    /// A fixed password (plain PostgreSQL, `--no-iam`).
    Password(Option<Secret>),
}

/// TLS settings.
#[derive(Debug, Clone)]
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
        }
    }
}

/// Everything needed to open connections.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Token target.
    pub target: Target,
    /// Host to connect to (the endpoint unless `--host` says otherwise).
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
}

impl ConnSettings {
    /// Settings as `dsql-pgx` builds them without flags: from the environment
    /// (`CLUSTER_ENDPOINT`, `REGION`, `DB_USER`, ...) and the defaults.
    pub fn from_env() -> Result<ConnSettings, ConfigError> {
        Self::from_flags(&[])
    }

    /// Settings for one endpoint (a host name or a bare cluster id), the rest as
    /// [`ConnSettings::from_env`]: the process environment (`REGION`, `DB_USER`,
    /// `DB_MAX_CONNS`, `PGSSLROOTCERT`, ...) applies, as it does for the command line. Build
    /// a [`ConnSettings`] field by field to be independent of it.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// let settings = dsql_pgx::settings::ConnSettings::for_endpoint(
    ///     "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws",
    /// )?;
    /// let pool = dsql_pgx::Pool::new(&settings).await?;
    /// let _refresher = pool.spawn_refresher(std::time::Duration::from_secs(15 * 60));
    /// let conn = pool.get().await?;
    /// let row = conn.query_one("select sys.current_session_id()", &[]).await?;
    /// println!("session {}", row.get::<_, String>(0));
    /// # Ok(()) }
    /// ```
    pub fn for_endpoint(endpoint: &str) -> Result<ConnSettings, ConfigError> {
        Self::from_flags(&["--endpoint", endpoint])
    }

    /// Settings from command-line style flags (as `dsql-pgx connect` takes them).
    pub fn from_flags(flags: &[&str]) -> Result<ConnSettings, ConfigError> {
        use clap::{Args as _, FromArgMatches as _};
        let command = ConnArgs::augment_args(clap::Command::new("dsql-pgx"));
        let matches = command
            .try_get_matches_from(std::iter::once("dsql-pgx").chain(flags.iter().copied()))
            .map_err(|e| bad(crate::exit::clap_message(&e)))?;
        let args = ConnArgs::from_arg_matches(&matches).map_err(|e| bad(e.to_string()))?;
        match destination(&args, &ProcessEnv)? {
            Destination::Remote(settings) => Ok(settings),
            Destination::Local { .. } => Err(bad(
                "--local starts an endpoint: use dsql_pgx::local::LocalEndpoint from a program",
            )),
        }
    }
}

/// What a connecting command asked for: a real cluster, or an ephemeral local endpoint.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Connect as configured.
    Remote(ConnSettings),
    /// Start a local endpoint first, then connect to it with these pool settings and role.
    Local {
        /// Pool sizing and lifetimes.
        pool: PoolSettings,
        /// Role to connect as.
        user: String,
        /// Database to connect to (the endpoint, as DSQL, has only `postgres`).
        database: String,
        /// Token lifetime.
        token_expires_in: Duration,
        /// TLS negotiation style.
        negotiation: SslNegotiation,
    },
}

/// Periodic refresh settings.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    /// Whether the periodic refresher runs.
    pub enabled: bool,
    /// Its period.
    pub interval: Duration,
}

/// The longest duration any flag takes: longer is no longer a wait but an overflow (a clock
/// plus `18446744073709551615s` panics).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The longest role name PostgreSQL keeps (NAMEDATALEN - 1 bytes): it cuts a longer one
/// short, which would name another role.
pub const MAX_ROLE_LEN: usize = 63;

/// Parses a duration flag, naming the flag and its variable on error.
pub fn duration(value: &str, flag: &str, var: Option<&str>) -> Result<Duration, ConfigError> {
    let parsed =
        cli::parse_duration(value).map_err(|e| bad(format!("{}: {e}", names(flag, var))))?;
    if parsed > MAX_DURATION {
        return Err(bad(format!(
            "{} {} is longer than 100 years",
            names(flag, var),
            shown(value)
        )));
    }
    Ok(parsed)
}

/// The role to connect as: `--user`, DB_USER, CLUSTER_USER or `admin`.
fn role(args: &TargetArgs, env: &dyn Environment) -> Result<String, ConfigError> {
    let user = args
        .user
        .clone()
        .or_else(|| first_env(env, &["DB_USER", "CLUSTER_USER"]))
        .unwrap_or_else(|| ADMIN_USER.to_string());
    if user.is_empty() || user.contains('\0') {
        return Err(bad("--user (or DB_USER) must be a role name"));
    }
    if user.len() > MAX_ROLE_LEN {
        return Err(bad(format!(
            "--user (or DB_USER) {} is longer than a role name's {MAX_ROLE_LEN} bytes",
            shown(&user)
        )));
    }
    Ok(user)
}

fn names(flag: &str, var: Option<&str>) -> String {
    match var {
        Some(var) => format!("{flag} (or {var})"),
        None => flag.to_string(),
    }
}

fn first_env(env: &dyn Environment, vars: &[&str]) -> Option<String> {
    vars.iter().find_map(|v| env.var(v))
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

/// Whether `region` is shaped like an AWS region name (`us-east-1`).
pub(crate) fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether tokens can be signed for `name` and TLS can verify it: a DNS host name as rustls
/// checks a server name (letters, digits, `-` and `_` in dot-separated labels of at most 63
/// characters, 253 in all) or an IPv4 address. `@`, `#`, `:`, `/`, spaces and the like are not
/// part of a host name; an IPv6 address cannot stand as a token's host unbracketed.
pub fn is_host_name(name: &str) -> bool {
    use rustls_pki_types::{IpAddr, ServerName};
    matches!(
        ServerName::try_from(name),
        Ok(ServerName::DnsName(_) | ServerName::IpAddress(IpAddr::V4(_)))
    )
}

/// A user's value quoted for a message, cut short when it is long (a 70,000-character
/// value makes a line nobody reads).
pub(crate) fn shown(value: &str) -> String {
    const KEEP: usize = 64;
    let length = value.chars().count();
    if length <= KEEP {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(KEEP).collect();
        format!("{head:?}... ({length} characters)")
    }
}

fn is_cluster_id(text: &str) -> bool {
    text.len() == 26
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

const NO_ENDPOINT: &str = "no cluster endpoint: set --endpoint or CLUSTER_ENDPOINT";

/// Validates the token target: endpoint, region, user, credentials, expiry.
pub fn target(args: &TargetArgs, env: &dyn Environment) -> Result<Target, ConfigError> {
    target_for(args, env, true)
}

/// [`target`], where only `signing` needs a region: without IAM a missing one is left empty
/// (a bare cluster id still needs one, to expand it).
fn target_for(
    args: &TargetArgs,
    env: &dyn Environment,
    signing: bool,
) -> Result<Target, ConfigError> {
    let raw = args.endpoint.as_deref().map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(bad(NO_ENDPOINT));
    }
    if !is_host_name(raw) {
        return Err(bad(format!(
            "--endpoint (or CLUSTER_ENDPOINT) {} is not a host name; give e.g. <id>.dsql.us-east-1.on.aws (an address to connect to goes in --host)",
            shown(raw)
        )));
    }
    let explicit = args.region.clone().or_else(|| env.var("REGION"));
    let region = explicit
        .or_else(|| region_from_endpoint(raw))
        .or_else(|| first_env(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]));
    let region = match region {
        Some(region) => region,
        None if !signing && !is_cluster_id(raw) => String::new(),
        None => {
            return Err(bad(format!(
                "cannot tell the region of endpoint {}: set --region or REGION (or AWS_REGION)",
                shown(raw)
            )));
        }
    };
    if !(region.is_empty() || valid_region(&region)) {
        return Err(bad(format!(
            "--region (or REGION) {} is not a region name such as us-east-1",
            shown(&region)
        )));
    }
    let endpoint = if is_cluster_id(raw) {
        format!("{raw}.dsql.{region}.on.aws")
    } else {
        raw.to_ascii_lowercase()
    };
    let user = role(args, env)?;
    let token_expires_in = token_lifetime(&args.token_expires_in)?;
    Ok(Target {
        endpoint,
        region,
        user,
        credentials: CredentialSource::DefaultChain {
            profile: args.profile.clone(),
        },
        token_expires_in,
    })
}

fn token_lifetime(value: &str) -> Result<Duration, ConfigError> {
    let flag = "--token-expires-in";
    let lifetime = duration(value, flag, Some("TOKEN_EXPIRES_IN"))?;
    if lifetime < Duration::from_secs(1) || lifetime > MAX_TOKEN_LIFETIME {
        return Err(bad(format!(
            "{flag} (or TOKEN_EXPIRES_IN) must be between 1s and 1 week (604800s), got {value:?}"
        )));
    }
    Ok(lifetime)
}

fn pool(args: &ConnArgs) -> Result<PoolSettings, ConfigError> {
    let max_lifetime = duration(&args.max_lifetime, "--max-lifetime", None)?;
    if max_lifetime >= DSQL_MAX_CONNECTION_AGE || max_lifetime.is_zero() {
        return Err(bad(format!(
            "--max-lifetime {} must be above 0 and below DSQL's 60-minute connection limit; use 55m or less",
            args.max_lifetime
        )));
    }
    let idle_timeout = duration(&args.idle_timeout, "--idle-timeout", None)?;
    let connect_timeout = duration(&args.connect_timeout, "--connect-timeout", None)?;
    if idle_timeout.is_zero() || connect_timeout.is_zero() {
        return Err(bad("--idle-timeout and --connect-timeout must be above 0"));
    }
    if args.max_conns == 0 {
        return Err(bad("--max-conns (or DB_MAX_CONNS) must be at least 1"));
    }
    if args.min_idle > args.max_conns {
        return Err(bad(format!(
            "--min-idle (or DB_MIN_CONNS) {} exceeds --max-conns (or DB_MAX_CONNS) {}",
            args.min_idle, args.max_conns
        )));
    }
    Ok(PoolSettings {
        max_size: args.max_conns,
        min_idle: args.min_idle,
        max_lifetime,
        idle_timeout,
        connect_timeout,
    })
}

fn iam_enabled(args: &ConnArgs, env: &dyn Environment) -> Result<bool, ConfigError> {
    if args.no_iam {
        return Ok(false);
    }
    if args.iam {
        return Ok(true);
    }
    match env.var("DB_USE_IAM") {
        None => Ok(true),
        Some(v) => parse_bool(&v).ok_or_else(|| {
            bad(format!(
                "DB_USE_IAM={v:?} is not true or false (or use --iam / --no-iam)"
            ))
        }),
    }
}

/// Parses the boolean spellings environment variables use.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// Validates a connecting command's arguments.
pub fn destination(args: &ConnArgs, env: &dyn Environment) -> Result<Destination, ConfigError> {
    let pool = pool(args)?;
    if args.local {
        let user = role(&args.target, env)?;
        return Ok(Destination::Local {
            pool,
            user,
            database: args.address.database.clone(),
            token_expires_in: token_lifetime(&args.target.token_expires_in)?,
            negotiation: args.ssl_negotiation,
        });
    }
    if args
        .target
        .endpoint
        .as_deref()
        .is_none_or(|e| e.trim().is_empty())
    {
        return Err(bad(format!("{NO_ENDPOINT} (or use --local)")));
    }
    let iam = iam_enabled(args, env)?;
    let target = target_for(&args.target, env, iam)?;
    if iam && args.sslmode == SslMode::Disable {
        return Err(bad(
            "--sslmode disable (or PGSSLMODE) cannot be used with IAM: DSQL requires TLS; use verify-full",
        ));
    }
    if args.sslmode == SslMode::Disable && args.ssl_negotiation == SslNegotiation::Direct {
        return Err(bad(
            "--ssl-negotiation direct needs TLS; drop --sslmode disable",
        ));
    }
    if let Some(ca) = &args.address.ca_file
        && !ca.is_file()
    {
        return Err(bad(format!(
            "--ca-file (or PGSSLROOTCERT) {} is not a readable file",
            ca.display()
        )));
    }
    if let Some(host) = &args.address.host
        && rustls_pki_types::ServerName::try_from(host.as_str()).is_err()
    {
        return Err(bad(format!(
            "--host (or DB_HOST) {} is neither a host name nor an IP address",
            shown(host)
        )));
    }
    let auth = if iam {
        Auth::Iam
    } else {
        Auth::Password(env.var("PGPASSWORD").map(Secret::new))
    };
    Ok(Destination::Remote(ConnSettings {
        host: args
            .address
            .host
            .clone()
            .unwrap_or_else(|| target.endpoint.clone()),
        port: args.address.port,
        database: args.address.database.clone(),
        auth,
        tls: Tls {
            mode: args.sslmode,
            ca_file: args.address.ca_file.clone(),
            negotiation: args.ssl_negotiation,
        },
        pool,
        target,
    }))
}

/// Validates the retry flags.
pub fn retry(args: &cli::RetryArgs) -> Result<crate::retry::RetryPolicy, ConfigError> {
    let base = duration(&args.retry_base, "--retry-base", None)?;
    let max = duration(&args.retry_max, "--retry-max", None)?;
    if base > max {
        return Err(bad(format!(
            "--retry-base {} exceeds --retry-max {}",
            args.retry_base, args.retry_max
        )));
    }
    Ok(crate::retry::RetryPolicy {
        retries: if args.no_retry { 0 } else { args.retries },
        base,
        max,
    })
}

/// Validates the periodic refresh flags.
pub fn refresh(args: &cli::RefreshArgs) -> Result<RefreshSettings, ConfigError> {
    let interval = duration(
        &args.refresh_interval,
        "--refresh-interval",
        Some("TOKEN_REFRESH_INTERVAL"),
    )?;
    if interval < Duration::from_secs(1) {
        return Err(bad(
            "--refresh-interval (or TOKEN_REFRESH_INTERVAL) must be at least 1s",
        ));
    }
    Ok(RefreshSettings {
        enabled: args.refresh,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    fn conn(argv: &[&str], env: &[(&str, &str)]) -> Result<Destination, ConfigError> {
        let mut full = vec!["dsql-pgx", "connect"];
        full.extend_from_slice(argv);
        let cli = cli::Cli::try_parse_from(full).expect("parses");
        let cli::Command::Connect(args) = cli.command else {
            unreachable!()
        };
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        destination(&args.conn, &move |k: &str| map.get(k).cloned())
    }

    fn remote(argv: &[&str], env: &[(&str, &str)]) -> ConnSettings {
        match conn(argv, env).expect("valid") {
            Destination::Remote(s) => s,
            Destination::Local { .. } => panic!("expected remote"),
        }
    }

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
    fn explicit_region_wins_then_endpoint_then_aws_region() {
        let s = remote(&["--endpoint", HOST], &[("AWS_REGION", "us-east-2")]);
        assert_eq!(s.target.region, "eu-west-1");
        let s = remote(&["--endpoint", HOST], &[("REGION", "us-east-2")]);
        assert_eq!(s.target.region, "us-east-2");
        let s = remote(
            &["--endpoint", HOST, "--region", "ap-south-1"],
            &[("REGION", "x")],
        );
        assert_eq!(s.target.region, "ap-south-1");
        let s = remote(
            &["--endpoint", "localhost"],
            &[("AWS_DEFAULT_REGION", "us-west-2")],
        );
        assert_eq!(s.target.region, "us-west-2");
    }

    #[test]
    fn bare_cluster_id_is_expanded() {
        let s = remote(
            &[
                "--endpoint",
                "abcdefghijklmnopqrstuvwxyz",
                "--region",
                "us-east-1",
            ],
            &[],
        );
        assert_eq!(
            s.target.endpoint,
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
        );
        assert_eq!(s.host, s.target.endpoint);
    }

    #[test]
    fn defaults_match_the_go_example() {
        let s = remote(&["--endpoint", HOST], &[]);
        assert_eq!(s.target.user, "admin");
        assert!(s.target.is_admin());
        assert_eq!(s.port, 5432);
        assert_eq!(s.database, "postgres");
        assert!(matches!(s.auth, Auth::Iam));
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.pool.max_size, 10);
        assert_eq!(s.pool.min_idle, 2);
        assert_eq!(s.pool.max_lifetime, Duration::from_secs(55 * 60));
        assert_eq!(
            s.pool,
            PoolSettings::default(),
            "the library's default is the CLI's"
        );
        assert_eq!(s.target.token_expires_in, Duration::from_secs(900));
    }

    #[test]
    fn only_signing_needs_a_region() {
        // Plain PostgreSQL without IAM: nothing is signed, so no region is asked for.
        let s = remote(&["--endpoint", "localhost", "--no-iam"], &[]);
        assert_eq!(s.target.region, "");
        assert!(matches!(s.auth, Auth::Password(_)));
        let s = remote(&["--endpoint", "localhost"], &[("DB_USE_IAM", "false")]);
        assert_eq!(s.target.region, "");
        // A region given is still checked, and a bare cluster id still needs one to expand.
        let error = conn(
            &["--endpoint", "localhost", "--no-iam", "--region", "x y"],
            &[],
        );
        assert!(error.unwrap_err().0.contains("--region (or REGION)"));
        let error = conn(&["--endpoint", &HOST[..26], "--no-iam"], &[]);
        assert!(error.unwrap_err().0.contains("set --region or REGION"));
    }

    #[test]
    fn user_falls_back_to_cluster_user() {
        let s = remote(&["--endpoint", HOST], &[("CLUSTER_USER", "app")]);
        assert_eq!(s.target.user, "app");
        let s = remote(
            &["--endpoint", HOST],
            &[("CLUSTER_USER", "app"), ("DB_USER", "web")],
        );
        assert_eq!(s.target.user, "web");
    }

    #[test]
    fn bad_values_name_the_flag_and_the_variable() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[], &[], "set --endpoint or CLUSTER_ENDPOINT"),
            (&["--endpoint", "localhost"], &[], "set --region or REGION"),
            (
                &["--endpoint", HOST, "--region", "Not A Region"],
                &[],
                "--region (or REGION)",
            ),
            (
                &["--endpoint", HOST, "--max-lifetime", "2h"],
                &[],
                "60-minute",
            ),
            (
                &["--endpoint", HOST, "--max-lifetime", "60m"],
                &[],
                "60-minute",
            ),
            (
                &["--endpoint", HOST, "--token-expires-in", "soon"],
                &[],
                "TOKEN_EXPIRES_IN",
            ),
            (
                &["--endpoint", HOST, "--token-expires-in", "2w"],
                &[],
                "1 week",
            ),
            (
                &["--endpoint", HOST, "--sslmode", "disable"],
                &[],
                "DSQL requires TLS",
            ),
            (
                &["--endpoint", HOST, "--min-idle", "20"],
                &[],
                "exceeds --max-conns",
            ),
            (
                &["--endpoint", HOST],
                &[("DB_USE_IAM", "maybe")],
                "DB_USE_IAM",
            ),
            (
                &["--endpoint", "https://x.dsql.us-east-1.on.aws"],
                &[],
                "not a host name",
            ),
        ];
        for (argv, env, fragment) in cases {
            let err = conn(argv, env).expect_err("should be refused");
            assert!(
                err.0.contains(fragment),
                "{argv:?}: {:?} lacks {fragment:?}",
                err.0
            );
        }
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
        let err = conn(&["--endpoint", "a@b.example"], &[]).expect_err("refused");
        assert!(
            err.0.contains("\"a@b.example\" is not a host name"),
            "{}",
            err.0
        );
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        assert_eq!(shown("us-east-1"), "\"us-east-1\"");
        let long = shown(&"é".repeat(70_000));
        assert!(long.ends_with("... (70000 characters)"), "{long}");
        assert!(long.chars().count() < 100, "{long}");
    }

    #[test]
    fn library_settings_use_the_cli_defaults() {
        let s =
            ConnSettings::from_flags(&["--endpoint", HOST, "--user", "app", "--max-conns", "4"])
                .unwrap();
        assert_eq!(s.target.region, "eu-west-1");
        assert_eq!(s.target.user, "app");
        assert_eq!(s.pool.max_size, 4);
        assert_eq!(s.pool.max_lifetime, Duration::from_secs(55 * 60));
        let err = ConnSettings::from_flags(&["--endpoint", HOST, "--bogus"]).unwrap_err();
        assert!(err.0.contains("--bogus"), "{}", err.0);
    }

    #[test]
    fn no_iam_reads_pgpassword() {
        let s = remote(
            &[
                "--endpoint",
                "localhost",
                "--region",
                "us-east-1",
                "--no-iam",
            ],
            &[("PGPASSWORD", "pw")],
        );
        match s.auth {
            Auth::Password(Some(p)) => assert_eq!(p.expose(), "pw"),
            other => panic!("unexpected {other:?}"),
        }
        let s = remote(&["--endpoint", HOST], &[("DB_USE_IAM", "false")]);
        assert!(matches!(s.auth, Auth::Password(None)));
    }
}
