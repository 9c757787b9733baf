//! Raw flags and environment become validated settings, once.
//!
//! Clap already applied `flag > environment > default` for every flag with a single variable.
//! This module adds the fallbacks that span several variables (`REGION`, `AWS_REGION`, ...,
//! read as [`crate::ConnSettings::from_env`] reads them), parses durations, and hands
//! everything to [`crate::settings::ConnSettingsBuilder`], which checks every rule; its
//! messages name our flags ([`Flags`]). Nothing downstream reads an environment variable or
//! re-validates a flag.

use std::time::Duration;

/// Idle connections kept open unless `--min-idle` says (at most `--max-conns`).
pub const DEFAULT_MIN_IDLE: u32 = 2;

use super::{ConnArgs, RefreshArgs, RetryArgs, SslMode as CliSslMode, TargetArgs};
use crate::auth::Secret;
use crate::error::ConfigError;
use crate::settings::{
    self, ConnSettings, ConnSettingsBuilder, Environment, MAX_DURATION, Names, PoolSettings,
    Setting, SslNegotiation, Target, env, shown,
};

pub(crate) use crate::settings::ProcessEnv;

/// Validation messages name the flags and their variables.
#[derive(Debug, Clone, Copy)]
pub struct Flags;

impl Names for Flags {
    fn name(&self, setting: Setting) -> String {
        match setting {
            Setting::Endpoint => "--endpoint (or CLUSTER_ENDPOINT)",
            Setting::Region => "--region (or REGION)",
            Setting::User => "--user (or DB_USER)",
            Setting::TokenLifetime => "--token-expires-in (or TOKEN_EXPIRES_IN)",
            Setting::Host => "--host (or DB_HOST)",
            Setting::CaFile => "--ca-file (or PGSSLROOTCERT)",
            Setting::SslMode => "--sslmode (or PGSSLMODE)",
            Setting::SslNegotiation => "--ssl-negotiation (or PGSSLNEGOTIATION)",
            Setting::MaxSize => "--max-conns (or DB_MAX_CONNS)",
            Setting::MinIdle => "--min-idle (or DB_MIN_CONNS)",
            Setting::MaxLifetime => "--max-lifetime",
            Setting::IdleTimeout => "--idle-timeout",
            Setting::ConnectTimeout => "--connect-timeout",
            Setting::ApplicationName => "application_name",
        }
        .to_string()
    }

    fn fix(&self, setting: Setting) -> String {
        match setting {
            Setting::Endpoint => "set --endpoint or CLUSTER_ENDPOINT".to_string(),
            Setting::Region => "set --region or REGION (or AWS_REGION)".to_string(),
            other => format!("set {}", self.name(other)),
        }
    }
}

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
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
        /// TLS negotiation style (`None`: the endpoint's default).
        negotiation: Option<SslNegotiation>,
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

/// Parses a duration flag, naming the flag and its variable on error.
pub fn duration(value: &str, flag: &str, var: Option<&str>) -> Result<Duration, ConfigError> {
    let parsed =
        settings::parse_duration(value).map_err(|e| bad(format!("{}: {e}", names(flag, var))))?;
    if parsed > MAX_DURATION {
        return Err(bad(format!(
            "{} {} is longer than 100 years",
            names(flag, var),
            shown(value)
        )));
    }
    Ok(parsed)
}

fn names(flag: &str, var: Option<&str>) -> String {
    match var {
        Some(var) => format!("{flag} (or {var})"),
        None => flag.to_string(),
    }
}

/// The builder for the token target: endpoint, region, user, credentials, expiry.
fn target_builder(
    args: &TargetArgs,
    env: &dyn Environment,
) -> Result<ConnSettingsBuilder, ConfigError> {
    let raw = args.endpoint.as_deref().map(str::trim).unwrap_or_default();
    let mut b = ConnSettings::builder(raw);
    let region = args.region.clone().or_else(|| env::region(env, raw));
    if let Some(region) = region {
        b = b.region(region);
    }
    if let Some(user) = args.user.clone().or_else(|| env::user(env)) {
        b = b.user(user);
    }
    if let Some(profile) = &args.profile {
        b = b.profile(profile.clone());
    }
    let lifetime = duration(
        &args.token_expires_in,
        "--token-expires-in",
        Some("TOKEN_EXPIRES_IN"),
    )?;
    Ok(b.token_lifetime(lifetime))
}

/// Validates the token target (for `token`, which opens no connection).
pub fn target(args: &TargetArgs, env: &dyn Environment) -> Result<Target, ConfigError> {
    Ok(target_builder(args, env)?.build_as(&Flags)?.target)
}

/// The role for `--local`: `--user`, DB_USER, CLUSTER_USER or `admin`, checked as the
/// builder checks it.
fn local_role(args: &TargetArgs, env: &dyn Environment) -> Result<String, ConfigError> {
    let user = args
        .user
        .clone()
        .or_else(|| env::user(env))
        .unwrap_or_else(|| settings::ADMIN_USER.to_string());
    settings::check_role(&user)
        .map_err(|why| bad(format!("{} {why}", Flags.name(Setting::User))))?;
    Ok(user)
}

fn pool(args: &ConnArgs) -> Result<PoolSettings, ConfigError> {
    let pool = PoolSettings {
        max_lifetime: duration(&args.max_lifetime, "--max-lifetime", None)?,
        idle_timeout: duration(&args.idle_timeout, "--idle-timeout", None)?,
        connect_timeout: duration(&args.connect_timeout, "--connect-timeout", None)?,
        max_size: args.max_conns,
        min_idle: args
            .min_idle
            .unwrap_or(DEFAULT_MIN_IDLE.min(args.max_conns)),
        session_id_on_connect: true,
        early_password: true,
    };
    settings::check_pool(&pool, &Flags)?;
    Ok(pool)
}

fn iam_enabled(args: &ConnArgs, env: &dyn Environment) -> Result<bool, ConfigError> {
    if args.no_iam {
        return Ok(false);
    }
    if args.iam {
        return Ok(true);
    }
    env::use_iam(env).map_err(|why| bad(format!("{why} (or use --iam / --no-iam)")))
}

/// Validates a connecting command's arguments.
pub fn destination(args: &ConnArgs, env: &dyn Environment) -> Result<Destination, ConfigError> {
    let pool = pool(args)?;
    let negotiation = args.ssl_negotiation.map(SslNegotiation::from);
    if args.local {
        let token_expires_in = duration(
            &args.target.token_expires_in,
            "--token-expires-in",
            Some("TOKEN_EXPIRES_IN"),
        )?;
        settings::check_token_lifetime(token_expires_in, &Flags)?;
        return Ok(Destination::Local {
            pool,
            user: local_role(&args.target, env)?,
            database: args.address.database.clone(),
            token_expires_in,
            negotiation,
        });
    }
    if args
        .target
        .endpoint
        .as_deref()
        .is_none_or(|e| e.trim().is_empty())
    {
        return Err(bad(format!(
            "no cluster endpoint: {} (or use --local)",
            Flags.fix(Setting::Endpoint)
        )));
    }
    let iam = iam_enabled(args, env)?;
    let mut b = target_builder(&args.target, env)?
        .pool(pool)
        .port(args.address.port)
        .database(args.address.database.clone())
        .ssl_mode(args.sslmode.into());
    if let Some(negotiation) = negotiation {
        b = b.ssl_negotiation(negotiation);
    }
    if !iam {
        b = b.password(env.var("PGPASSWORD").map(Secret::new));
    }
    if let Some(ca) = &args.address.ca_file {
        b = b.ca_file(ca.clone());
    }
    if let Some(host) = &args.address.host {
        b = b.host(host.clone());
    }
    Ok(Destination::Remote(b.build_as(&Flags)?))
}

/// Validates the retry flags.
pub fn retry(args: &RetryArgs) -> Result<crate::retry::RetryPolicy, ConfigError> {
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
pub fn refresh(args: &RefreshArgs) -> Result<RefreshSettings, ConfigError> {
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

impl From<CliSslMode> for settings::SslMode {
    fn from(mode: CliSslMode) -> settings::SslMode {
        match mode {
            CliSslMode::VerifyFull => settings::SslMode::VerifyFull,
            CliSslMode::Require => settings::SslMode::Require,
            CliSslMode::Disable => settings::SslMode::Disable,
        }
    }
}

impl From<super::SslNegotiation> for SslNegotiation {
    fn from(negotiation: super::SslNegotiation) -> SslNegotiation {
        match negotiation {
            super::SslNegotiation::Postgres => SslNegotiation::Postgres,
            super::SslNegotiation::Direct => SslNegotiation::Direct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;
    use crate::settings::{Auth, SslMode};
    use std::collections::HashMap;

    fn conn(argv: &[&str], env: &[(&str, &str)]) -> Result<Destination, ConfigError> {
        let mut full = vec!["dsql-pgx", "connect"];
        full.extend_from_slice(argv);
        let cli = cli::parse_isolated(&full).expect("parses");
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
        assert_eq!(
            s.pool,
            PoolSettings::default(),
            "the library's default is the CLI's"
        );
        assert_eq!(s.target.token_expires_in, Duration::from_secs(900));
        assert!(matches!(
            s.target.credentials,
            crate::auth::CredentialSource::DefaultChain { profile: None }
        ));
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
            (
                &[],
                &[],
                "set --endpoint or CLUSTER_ENDPOINT (or use --local)",
            ),
            (&["--endpoint", "localhost"], &[], "set --region or REGION"),
            (
                &["--endpoint", HOST, "--region", "Not A Region"],
                &[],
                "--region (or REGION) \"Not A Region\" is not a region name",
            ),
            (
                &["--endpoint", HOST, "--max-lifetime", "2h"],
                &[],
                "--max-lifetime 2h must be above 0 and below DSQL's 60-minute",
            ),
            (
                &["--endpoint", HOST, "--max-lifetime", "60m"],
                &[],
                "60-minute",
            ),
            (
                &["--endpoint", HOST, "--token-expires-in", "soon"],
                &[],
                "--token-expires-in (or TOKEN_EXPIRES_IN): invalid duration",
            ),
            (
                &["--endpoint", HOST, "--token-expires-in", "2w"],
                &[],
                "--token-expires-in (or TOKEN_EXPIRES_IN) must be between 1s and 1 week",
            ),
            (
                &["--endpoint", HOST, "--sslmode", "disable"],
                &[],
                "DSQL requires TLS",
            ),
            (
                &["--endpoint", HOST, "--min-idle", "20"],
                &[],
                "--min-idle (or DB_MIN_CONNS) 20 exceeds --max-conns (or DB_MAX_CONNS) 10",
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
            (
                &["--endpoint", "a@b.example"],
                &[],
                "\"a@b.example\" is not a host name",
            ),
            (
                &["--endpoint", HOST, "--host", "a@b"],
                &[],
                "--host (or DB_HOST) \"a@b\" is neither a host name nor an IP address",
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

    #[test]
    fn the_shell_environment_does_not_reach_these_tests() {
        // `conn` passes a map: the process's REGION or DB_MIN_CONNS must not matter.
        let s = remote(&["--endpoint", HOST], &[]);
        assert_eq!(s.target.region, "eu-west-1");
    }
}
