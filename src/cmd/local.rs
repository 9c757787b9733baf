//! `dsql-pgx local`: serve a local DSQL-compatible endpoint until Ctrl-C or SIGTERM, and
//! the ephemeral endpoint behind every command's `--local`.

use std::io::Write;
use std::net::SocketAddr;

use serde::Serialize;

use super::StopSignal;
use crate::cli::{Format, LocalArgs};
use crate::exit::{Exit, Failed};
use crate::local::{EndpointOptions, Limits, LocalEndpoint, files};
use crate::output::Output;
use crate::settings::{self, ConfigError, ConnSettings, Destination};

#[derive(Serialize)]
struct ClientEnv<'a> {
    #[serde(rename = "CLUSTER_ENDPOINT")]
    endpoint: &'a str,
    #[serde(rename = "REGION")]
    region: &'a str,
    #[serde(rename = "DB_HOST")]
    host: String,
    #[serde(rename = "DB_PORT")]
    port: u16,
    #[serde(rename = "PGSSLROOTCERT")]
    ca: String,
    #[serde(rename = "AWS_ACCESS_KEY_ID")]
    access_key_id: &'a str,
    #[serde(rename = "AWS_SECRET_ACCESS_KEY")]
    secret_access_key: &'a str,
}

fn client_env(endpoint: &LocalEndpoint) -> ClientEnv<'_> {
    ClientEnv {
        endpoint: endpoint.hostname(),
        region: endpoint.region(),
        host: endpoint.local_addr().ip().to_string(),
        port: endpoint.port(),
        ca: endpoint.ca_path().display().to_string(),
        access_key_id: endpoint.access_key_id(),
        secret_access_key: endpoint.secret_access_key(),
    }
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
    if !settings::is_host_name(&args.hostname)
        || args.hostname.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(ConfigError(format!(
            "--hostname {} is not a DNS host name (clients send it as TLS SNI, which an IP address cannot be); give one such as localhost or db.example.test",
            settings::shown(&args.hostname)
        ))
        .into());
    }
    let max_connection_age =
        settings::duration(&args.max_connection_age, "--max-connection-age", None)?;
    if max_connection_age.is_zero() {
        return Err(ConfigError(format!(
            "--max-connection-age must be above 0, got {}",
            settings::shown(&args.max_connection_age)
        ))
        .into());
    }
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
        hostname: args.hostname.clone(),
        region: args.region.clone(),
        access_key_id: args.access_key_id.clone(),
        secret_access_key,
        limits: Limits {
            max_connection_age,
            max_connections: args.max_connections,
            rate_per_sec: args.rate,
            burst: args.burst,
        },
        ..EndpointOptions::default()
    });
    // A signal during the start drops it: PostgreSQL is stopped, a temporary dir removed.
    let endpoint = tokio::select! {
        started = starting => started?,
        _ = stop.recv() => return Ok(()),
    };
    let env = client_env(&endpoint);
    let mut stdout = std::io::stdout().lock();
    if out.format == Format::Json {
        serde_json::to_writer(&mut stdout, &env)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "unset AWS_SESSION_TOKEN AWS_PROFILE")?;
        writeln!(
            stdout,
            "export CLUSTER_ENDPOINT={} REGION={} DB_HOST={} DB_PORT={} PGSSLROOTCERT={} AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
            shell_quote(env.endpoint),
            shell_quote(env.region),
            shell_quote(&env.host),
            env.port,
            shell_quote(&env.ca),
            shell_quote(env.access_key_id),
            shell_quote(env.secret_access_key),
        )?;
    }
    stdout.flush()?;
    drop(stdout);
    if !out.quiet {
        crate::exit::diag!(
            "dsql-pgx local: serving {} on {} (data in {}); Ctrl-C or SIGTERM stops it",
            endpoint.hostname(),
            endpoint.local_addr(),
            endpoint.data_dir().display()
        );
    }
    let stopped = wait_for_stop(&endpoint, &mut stop).await;
    endpoint.shutdown().await?;
    stopped
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
    settings.tls.negotiation = negotiation;
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
