//! `dsql-pgx local`: serve a local DSQL-compatible endpoint until Ctrl-C or SIGTERM, and
//! the ephemeral endpoint behind every command's `--local`.

use std::io::Write;
use std::net::SocketAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::ser::SerializeMap as _;
use serde_json::Value;

use super::StopSignal;
use crate::cli::resolve::{self, Destination};
use crate::cli::{Format, LocalArgs};
use crate::exit::{Exit, Failed};
use crate::local::{EndpointOptions, Limits, LocalEndpoint, files};
use crate::output::Output;
use crate::settings::{self, ConfigError, ConnSettings};

/// What stays literal in the JDBC URL's `sslrootcert`: RFC 3986's unreserved characters
/// and `/`, so the path stays readable.
const URL_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// What `local` exports, in order: dsql-pgx's own variables, libpq's (`PGHOST` the
/// endpoint's name for TLS, `PGHOSTADDR` the address to reach it at), a pgJDBC URL, and
/// the keys (the secret last).
struct ClientEnv(Vec<(&'static str, Value)>);

impl Serialize for ClientEnv {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

fn client_env(endpoint: &LocalEndpoint) -> ClientEnv {
    let name = endpoint.hostname();
    let ip = endpoint.local_addr().ip().to_string();
    let port = endpoint.port();
    let ca = endpoint.ca_path().display().to_string();
    let jdbc_url = format!(
        "jdbc:postgresql://{name}:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        utf8_percent_encode(&ca, URL_PATH)
    );
    ClientEnv(vec![
        ("CLUSTER_ENDPOINT", name.into()),
        ("REGION", endpoint.region().into()),
        ("DB_HOST", ip.clone().into()),
        ("DB_PORT", port.into()),
        ("PGHOST", name.into()),
        ("PGHOSTADDR", ip.into()),
        ("PGPORT", port.into()),
        ("PGUSER", "admin".into()),
        ("PGDATABASE", "postgres".into()),
        ("PGSSLMODE", "verify-full".into()),
        ("PGSSLROOTCERT", ca.into()),
        ("DSQL_JDBC_URL", jdbc_url.into()),
        ("DSQL_IAM_ARN", endpoint.iam_arn().into()),
        ("AWS_ACCESS_KEY_ID", endpoint.access_key_id().into()),
        ("AWS_SECRET_ACCESS_KEY", endpoint.secret_access_key().into()),
    ])
}

/// The exports as `--format` asks: one JSON object, or the shell lines `eval` or `.` takes.
fn render(env: &ClientEnv, format: Format) -> anyhow::Result<String> {
    if format == Format::Json {
        return Ok(serde_json::to_string(env)? + "\n");
    }
    let assignments: Vec<String> = env
        .0
        .iter()
        .map(|(name, value)| match value {
            Value::String(text) => format!("{name}={}", shell_quote(text)),
            other => format!("{name}={other}"),
        })
        .collect();
    Ok(format!(
        "unset AWS_SESSION_TOKEN AWS_PROFILE\nexport {}\n",
        assignments.join(" ")
    ))
}

fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:+=@".contains(&b))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// Starts the endpoint, prints what a client needs, serves until a signal.
pub async fn run(args: LocalArgs, out: &Output) -> anyhow::Result<()> {
    // From here on Ctrl-C and SIGTERM stop the endpoint cleanly, also during its start.
    let mut stop = StopSignal::new()?;
    let mut listen: SocketAddr = args.listen.parse().map_err(|_| {
        ConfigError(format!(
            "--listen {} is not an address such as 127.0.0.1:5432",
            settings::shown(&args.listen)
        ))
    })?;
    if let Some(port) = args.port {
        listen.set_port(port);
    }
    if !settings::valid_region(&args.region) {
        return Err(ConfigError(format!(
            "--region {} is not a region name such as us-east-1",
            settings::shown(&args.region)
        ))
        .into());
    }
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => crate::local::default_hostname(&args.region),
    };
    if !settings::is_host_name(&hostname) || hostname.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(ConfigError(format!(
            "--hostname {} is not a DNS host name (clients send it as TLS SNI, which an IP address cannot be); give one such as localhost or db.example.test",
            settings::shown(&hostname)
        ))
        .into());
    }
    if !crate::local::is_iam_arn(&args.iam_arn) {
        return Err(ConfigError(format!(
            "--iam-arn {} is not an IAM role's or user's ARN such as {}",
            settings::shown(&args.iam_arn),
            crate::local::DEFAULT_IAM_ARN
        ))
        .into());
    }
    let max_connection_age = positive_duration(&args.max_connection_age, "--max-connection-age")?;
    let max_transaction_age =
        positive_duration(&args.max_transaction_age, "--max-transaction-age")?;
    // Judged before the (slow) start, written once the endpoint accepts connections.
    let env_file = match &args.env_file {
        Some(path) => Some(files::PrivateFile::at(path, "--env-file")?),
        None => None,
    };
    let data_dir = match &args.data_dir {
        Some(dir) => Some(dir.clone()),
        None if args.persist => Some(files::default_data_dir()?),
        None => None,
    };
    let secret_access_key = match &args.secret_access_key_file {
        Some(path) => Some(files::read_secret_file(path, "--secret-access-key-file")?),
        None => args.secret_access_key.clone(),
    };
    let cap = crate::local::postgres::MAX_CLIENT_CONNECTIONS;
    if (args.max_connections == 0 || args.max_connections > cap) && !out.quiet {
        crate::exit::diag!(
            "dsql-pgx local: warning: --max-connections {} is capped at {cap}, what the private PostgreSQL is sized for",
            args.max_connections
        );
    }
    let starting = LocalEndpoint::start(EndpointOptions {
        listen,
        data_dir,
        hostname,
        region: args.region.clone(),
        access_key_id: args.access_key_id.clone(),
        secret_access_key,
        limits: Limits {
            max_connection_age,
            max_connections: args.max_connections,
            rate_per_sec: args.rate,
            burst: args.burst,
        },
        dialect: args.dialect.into(),
        max_transaction_age,
        iam_arn: args.iam_arn.clone(),
        ..EndpointOptions::default()
    });
    // A signal during the start drops it: PostgreSQL is stopped, a temporary dir removed.
    let endpoint = tokio::select! {
        started = starting => started?,
        _ = stop.recv() => return Ok(()),
    };
    let exports = render(&client_env(&endpoint), out.format)?;
    let env_file = match env_file {
        Some(file) => Some(file.write(exports.as_bytes())?),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(exports.as_bytes())?;
            stdout.flush()?;
            None
        }
    };
    if !out.quiet {
        let exports_in = match &args.env_file {
            Some(path) => format!(", exports in {}", path.display()),
            None => String::new(),
        };
        crate::exit::diag!(
            "dsql-pgx local: serving {} on {} as IAM identity {} (data in {}{exports_in}); Ctrl-C or SIGTERM stops it",
            endpoint.hostname(),
            endpoint.local_addr(),
            endpoint.iam_arn(),
            endpoint.data_dir().display()
        );
    }
    let stopped = wait_for_stop(&endpoint, &mut stop).await;
    // The exports name an endpoint that is going away: a script waiting for the file
    // next time must not find this one.
    if let Some(file) = env_file {
        file.remove();
    }
    endpoint.shutdown().await?;
    stopped
}

/// `value` of `flag` as a duration above zero (a bad one exits 2).
fn positive_duration(value: &str, flag: &str) -> anyhow::Result<std::time::Duration> {
    let d = resolve::duration(value, flag, None)?;
    if d.is_zero() {
        return Err(ConfigError(format!(
            "{flag} must be above 0, got {}",
            settings::shown(value)
        ))
        .into());
    }
    Ok(d)
}

/// Waits for Ctrl-C or SIGTERM (`Ok`), or for the private PostgreSQL to die (an error
/// with exit code 3: the endpoint can no longer connect anyone).
async fn wait_for_stop(endpoint: &LocalEndpoint, stop: &mut StopSignal) -> anyhow::Result<()> {
    tokio::select! {
        _ = stop.recv() => {}
        () = endpoint.failed() => {
            return Err(Failed {
                message: format!(
                    "the private PostgreSQL exited unexpectedly; see {} and start dsql-pgx local again",
                    endpoint.data_dir().join("postgres.log").display()
                ),
                exit: Exit::Connect,
            }
            .into());
        }
    }
    Ok(())
}

/// Starts an ephemeral endpoint for `--local` and the settings that reach it.
pub async fn ephemeral(
    destination: Destination,
) -> anyhow::Result<(ConnSettings, Option<LocalEndpoint>)> {
    let (pool, user, database, token_expires_in, negotiation) = match destination {
        Destination::Remote(settings) => return Ok((settings, None)),
        Destination::Local {
            pool,
            user,
            database,
            token_expires_in,
            negotiation,
        } => (pool, user, database, token_expires_in, negotiation),
    };
    let endpoint = LocalEndpoint::start(EndpointOptions::default()).await?;
    let mut settings = endpoint.conn_settings(&user);
    settings.pool = pool;
    settings.database = database;
    settings.target.token_expires_in = token_expires_in;
    if let Some(negotiation) = negotiation {
        settings.tls.negotiation = negotiation;
    }
    Ok((settings, Some(endpoint)))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_values_are_quoted_when_needed() {
        assert_eq!(shell_quote("us-east-1"), "us-east-1");
        assert_eq!(shell_quote("/tmp/a b/ca.pem"), "'/tmp/a b/ca.pem'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
