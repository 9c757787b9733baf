//! `postgres://` and `postgresql://` URLs, with the query parameters AWS's DSQL connectors
//! and libpq use.
//!
//! `postgres://[user@]host[:port][/database][?param=value&...]`, where host is a full
//! endpoint or a bare cluster id. Parameters: `region`, `profile`, `tokenDurationSecs`,
//! `applicationName` (or libpq's `application_name`), `maxConnections`, `minConnections`,
//! `maxLifetimeSecs`, `idleTimeoutSecs` (AWS's connectors' names), and libpq's `sslmode`,
//! `sslnegotiation`, `sslrootcert` and `connect_timeout` (seconds). A password in the URL is
//! refused: DSQL takes IAM tokens, and a secret does not belong in a URL. An unknown parameter
//! is refused rather than ignored, so a typo does not silently fall back to a default.

use std::str::FromStr;
use std::time::Duration;

use super::{ConnSettings, SslMode, SslNegotiation, shown};
use crate::error::ConfigError;

/// The parameters [`ConnSettings::from_str`] takes.
const PARAMS: &[&str] = &[
    "region",
    "profile",
    "tokenDurationSecs",
    "applicationName",
    "application_name",
    "maxConnections",
    "minConnections",
    "maxLifetimeSecs",
    "idleTimeoutSecs",
    "connect_timeout",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
];

impl FromStr for ConnSettings {
    type Err = crate::Error;

    /// Parses `postgres://[user@]host[:port][/database][?param=value&...]`, host a full
    /// endpoint or a bare cluster id. Parameters: `region`, `profile`, `tokenDurationSecs`,
    /// `applicationName` (or `application_name`), `maxConnections`, `minConnections`,
    /// `maxLifetimeSecs`, `idleTimeoutSecs`, and libpq's `sslmode`, `sslnegotiation`,
    /// `sslrootcert` and `connect_timeout` (seconds). A password in the URL and an unknown
    /// parameter are refused. Reads no environment.
    ///
    /// ```
    /// let s: dsql_pgx::ConnSettings =
    ///     "postgres://app@abcdefghijklmnopqrstuvwxyz/postgres?region=us-east-1&tokenDurationSecs=600"
    ///         .parse()?;
    /// assert_eq!(s.target.endpoint, "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws");
    /// assert_eq!(s.target.token_expires_in.as_secs(), 600);
    /// # Ok::<(), dsql_pgx::Error>(())
    /// ```
    fn from_str(text: &str) -> crate::Result<ConnSettings> {
        Ok(parse(text)?)
    }
}

fn parse(text: &str) -> Result<ConnSettings, ConfigError> {
    let bad = |message: String| ConfigError(message);
    // Never echo the URL: it may hold a password.
    let url =
        url::Url::parse(text.trim()).map_err(|e| bad(format!("not a postgres:// URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad(format!(
            "URL scheme {} is not postgres or postgresql",
            shown(url.scheme())
        )));
    }
    if url.password().is_some() {
        return Err(bad(
            "a password in the URL is refused: DSQL takes IAM tokens; set a password with ConnSettingsBuilder::password".to_string(),
        ));
    }
    let host = url.host_str().unwrap_or_default();
    let mut b = ConnSettings::builder(decode(host)?);
    if !url.username().is_empty() {
        b = b.user(decode(url.username())?);
    }
    if let Some(port) = url.port() {
        b = b.port(port);
    }
    let database = url.path().trim_start_matches('/');
    if !database.is_empty() {
        b = b.database(decode(database)?);
    }
    for (key, value) in url.query_pairs() {
        let value = value.into_owned();
        let secs = || -> Result<Duration, ConfigError> {
            value
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| {
                    bad(format!(
                        "{key}={} is not a number of seconds",
                        shown(&value)
                    ))
                })
        };
        let count = || -> Result<u32, ConfigError> {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("{key}={} is not a number", shown(&value))))
        };
        b = match key.as_ref() {
            "region" => b.region(value),
            "profile" => b.profile(value),
            "tokenDurationSecs" => b.token_lifetime(secs()?),
            "applicationName" | "application_name" => b.application_name(value),
            "maxConnections" => b.max_size(count()?),
            "minConnections" => b.min_idle(count()?),
            "maxLifetimeSecs" => b.max_lifetime(secs()?),
            "idleTimeoutSecs" => b.idle_timeout(secs()?),
            "connect_timeout" => b.connect_timeout(secs()?),
            "sslmode" => b.ssl_mode(value.parse::<SslMode>()?),
            "sslnegotiation" => b.ssl_negotiation(value.parse::<SslNegotiation>()?),
            "sslrootcert" => b.ca_file(value),
            other => {
                return Err(bad(format!(
                    "unknown URL parameter {}; known: {}",
                    shown(other),
                    PARAMS.join(", ")
                )));
            }
        };
    }
    b.build_as(&super::builder::Library)
}

fn decode(text: &str) -> Result<String, ConfigError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConfigError("the URL is not UTF-8 once decoded".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Auth;

    const HOST: &str = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws";

    #[test]
    fn a_full_url_sets_everything_it_names() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let s: ConnSettings = format!(
            "postgresql://app@{HOST}:6543/postgres?profile=dev&tokenDurationSecs=600\
             &sslrootcert={ca}&maxConnections=4&minConnections=1&maxLifetimeSecs=1800\
             &applicationName=shop&sslnegotiation=direct&connect_timeout=3"
        )
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.target.endpoint, HOST);
        assert_eq!(s.target.region, "eu-west-1");
        assert_eq!(s.target.user, "app");
        assert_eq!(s.port, 6543);
        assert_eq!(s.target.token_expires_in, Duration::from_secs(600));
        assert_eq!((s.pool.max_size, s.pool.min_idle), (4, 1));
        assert_eq!(s.pool.max_lifetime, Duration::from_secs(1800));
        assert_eq!(s.pool.connect_timeout, Duration::from_secs(3));
        assert_eq!(s.application_name, "shop");
        assert_eq!(s.tls.negotiation, SslNegotiation::Direct);
        assert!(matches!(s.auth, Auth::Iam));
        assert!(format!("{:?}", s.target.credentials).contains("dev"));
    }

    #[test]
    fn a_bare_cluster_id_takes_the_region_parameter() {
        let s: ConnSettings = "postgres://abcdefghijklmnopqrstuvwxyz?region=us-east-1"
            .parse()
            .unwrap();
        assert_eq!(
            s.target.endpoint,
            "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
        );
        assert_eq!(s.target.user, "admin");
        assert_eq!(s.database, "postgres");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        let refused = |url: &str| match url.parse::<ConnSettings>() {
            Err(crate::Error::Config(e)) => e.0,
            other => panic!("{url}: {other:?}"),
        };
        assert!(refused("mysql://h/db").contains("scheme"));
        let with_password = refused(&format!("postgres://admin:hunter2@{HOST}/postgres"));
        assert!(!with_password.contains("hunter2"), "{with_password}");
        assert!(refused(&format!("postgres://{HOST}?regoin=x")).contains("unknown URL parameter"));
        assert!(
            refused(&format!("postgres://{HOST}?tokenDurationSecs=soon"))
                .contains("tokenDurationSecs")
        );
        assert!(refused(&format!("postgres://{HOST}?sslmode=allow")).contains("sslmode"));
        assert!(refused("postgres://abcdefghijklmnopqrstuvwxyz").contains("region"));
        assert!(refused(&format!("postgres://{HOST}?tokenDurationSecs=604801")).contains("1 week"));
    }
}
