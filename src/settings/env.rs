//! Settings from environment variables: the names `dsql-pgx` and AWS's connectors read.
//!
//! Only [`super::ConnSettings::from_env`] reads the process; everything here takes an
//! [`Environment`], so tests pass a map.

use super::{ConnSettings, ConnSettingsBuilder, Names, Setting, parse_bool, parse_duration};
use crate::auth::Secret;
use crate::error::ConfigError;

/// Where environment values come from: the process environment, or a map in tests.
pub trait Environment {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name).filter(|v| !v.is_empty())
    }
}

/// Messages name the variables.
pub(super) struct EnvNames;

impl Names for EnvNames {
    fn name(&self, setting: Setting) -> String {
        match setting {
            Setting::Endpoint => "CLUSTER_ENDPOINT",
            Setting::Region => "REGION",
            Setting::User => "DB_USER",
            Setting::TokenLifetime => "TOKEN_EXPIRES_IN",
            Setting::Host => "DB_HOST",
            Setting::CaFile => "PGSSLROOTCERT",
            Setting::SslMode => "PGSSLMODE",
            Setting::SslNegotiation => "PGSSLNEGOTIATION",
            Setting::MaxSize => "DB_MAX_CONNS",
            Setting::MinIdle => "DB_MIN_CONNS",
            Setting::MaxLifetime => "max_lifetime",
            Setting::IdleTimeout => "idle_timeout",
            Setting::ConnectTimeout => "connect_timeout",
            Setting::ApplicationName => "application_name",
        }
        .to_string()
    }

    fn fix(&self, setting: Setting) -> String {
        match setting {
            Setting::Region => "set REGION (or AWS_REGION)".to_string(),
            other => format!("set {}", self.name(other)),
        }
    }
}

/// The first of `vars` that is set.
pub(crate) fn first(env: &dyn Environment, vars: &[&str]) -> Option<String> {
    vars.iter().find_map(|v| env.var(v))
}

/// The region `REGION` names, else `AWS_REGION` or `AWS_DEFAULT_REGION` unless the endpoint
/// names one (the endpoint's wins over the SDK's variables, not over `REGION`).
pub(crate) fn region(env: &dyn Environment, endpoint: &str) -> Option<String> {
    env.var("REGION").or_else(|| {
        super::region_from_endpoint(endpoint)
            .or_else(|| first(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]))
    })
}

/// The role `DB_USER` or `CLUSTER_USER` names.
pub(crate) fn user(env: &dyn Environment) -> Option<String> {
    first(env, &["DB_USER", "CLUSTER_USER"])
}

/// Whether IAM is on per `DB_USE_IAM` (default on).
pub(crate) fn use_iam(env: &dyn Environment) -> Result<bool, String> {
    match env.var("DB_USE_IAM") {
        None => Ok(true),
        Some(v) => parse_bool(&v).ok_or_else(|| format!("DB_USE_IAM={v:?} is not true or false")),
    }
}

/// The builder `from_env` checks.
pub(super) fn builder(env: &dyn Environment) -> Result<ConnSettingsBuilder, ConfigError> {
    let bad = |message: String| ConfigError(message);
    let endpoint = env.var("CLUSTER_ENDPOINT").unwrap_or_default();
    let mut b = ConnSettings::builder(endpoint.clone());
    if let Some(region) = region(env, endpoint.trim()) {
        b = b.region(region);
    }
    if let Some(user) = user(env) {
        b = b.user(user);
    }
    if let Some(host) = env.var("DB_HOST") {
        b = b.host(host);
    }
    if let Some(port) = env.var("DB_PORT") {
        let port = port
            .trim()
            .parse()
            .map_err(|_| bad(format!("DB_PORT={port:?} is not a port number")))?;
        b = b.port(port);
    }
    if let Some(database) = env.var("DB_NAME") {
        b = b.database(database);
    }
    if let Some(profile) = env.var("AWS_PROFILE") {
        b = b.profile(profile);
    }
    if let Some(lifetime) = env.var("TOKEN_EXPIRES_IN") {
        let lifetime =
            parse_duration(&lifetime).map_err(|e| bad(format!("TOKEN_EXPIRES_IN: {e}")))?;
        b = b.token_lifetime(lifetime);
    }
    if let Some(mode) = env.var("PGSSLMODE") {
        b = b.ssl_mode(
            mode.parse()
                .map_err(|e: ConfigError| bad(format!("PGSSLMODE: {e}")))?,
        );
    }
    if let Some(negotiation) = env.var("PGSSLNEGOTIATION") {
        let negotiation = negotiation
            .parse()
            .map_err(|e: ConfigError| bad(format!("PGSSLNEGOTIATION: {e}")))?;
        b = b.ssl_negotiation(negotiation);
    }
    if let Some(ca) = env.var("PGSSLROOTCERT") {
        b = b.ca_file(ca);
    }
    let count = |var: &str| -> Result<Option<u32>, ConfigError> {
        env.var(var)
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("{var}={value:?} is not a number")))
            })
            .transpose()
    };
    if let Some(n) = count("DB_MAX_CONNS")? {
        b = b.max_size(n);
    }
    if let Some(n) = count("DB_MIN_CONNS")? {
        b = b.min_idle(n);
    }
    if !use_iam(env).map_err(bad)? {
        b = b.password(env.var("PGPASSWORD").map(Secret::new));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::settings::{Auth, SslMode};

    fn from(vars: &[(&str, &str)]) -> Result<ConnSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        builder(&env)?.build_as(&EnvNames)
    }

    const HOST: &str = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws";

    #[test]
    fn the_variables_apply() {
        let s = from(&[
            ("CLUSTER_ENDPOINT", HOST),
            ("CLUSTER_USER", "app"),
            ("DB_MAX_CONNS", "4"),
            ("DB_MIN_CONNS", "1"),
            ("TOKEN_EXPIRES_IN", "10m"),
            ("PGSSLMODE", "require"),
            ("DB_PORT", "6543"),
        ])
        .unwrap();
        assert_eq!(s.target.region, "eu-west-1");
        assert_eq!(s.target.user, "app");
        assert_eq!((s.pool.max_size, s.pool.min_idle), (4, 1));
        assert_eq!(s.target.token_expires_in, Duration::from_secs(600));
        assert_eq!(s.tls.mode, SslMode::Require);
        assert_eq!(s.port, 6543);
    }

    #[test]
    fn region_precedence_is_region_then_endpoint_then_aws_region() {
        let s = from(&[("CLUSTER_ENDPOINT", HOST), ("AWS_REGION", "us-east-2")]).unwrap();
        assert_eq!(s.target.region, "eu-west-1");
        let s = from(&[("CLUSTER_ENDPOINT", HOST), ("REGION", "us-east-2")]).unwrap();
        assert_eq!(s.target.region, "us-east-2");
        let s = from(&[
            ("CLUSTER_ENDPOINT", "localhost"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
        ])
        .unwrap();
        assert_eq!(s.target.region, "us-west-2");
        let s = from(&[
            ("CLUSTER_ENDPOINT", HOST),
            ("CLUSTER_USER", "app"),
            ("DB_USER", "web"),
        ])
        .unwrap();
        assert_eq!(s.target.user, "web");
    }

    #[test]
    fn no_iam_reads_pgpassword() {
        let s = from(&[
            ("CLUSTER_ENDPOINT", HOST),
            ("DB_USE_IAM", "false"),
            ("PGPASSWORD", "pw"),
        ])
        .unwrap();
        match s.auth {
            Auth::Password(Some(p)) => assert_eq!(p.expose(), "pw"),
            other => panic!("unexpected {other:?}"),
        }
        let err = from(&[("CLUSTER_ENDPOINT", HOST), ("DB_USE_IAM", "maybe")]).unwrap_err();
        assert!(err.0.contains("DB_USE_IAM"), "{err}");
        let err = from(&[("CLUSTER_ENDPOINT", HOST), ("DB_MAX_CONNS", "x")]).unwrap_err();
        assert!(err.0.contains("DB_MAX_CONNS"), "{err}");
    }
}
