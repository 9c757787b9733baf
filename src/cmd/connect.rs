//! `dsql-pgx connect`: open connections and show who they are, how they were made, and
//! the pool's statistics.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use crate::cli::{ConnectArgs, Format, resolve};
use crate::output::{self, Output};
use crate::pool::{ConnInfo, PoolStats};
use crate::settings::ConfigError;

use super::Session;

#[derive(Serialize)]
struct ConnectionJson {
    #[serde(flatten)]
    info: ConnInfo,
    token_age_ms: Option<f64>,
}

#[derive(Serialize)]
struct ConnectJson {
    endpoint: String,
    host: String,
    port: u16,
    user: String,
    connections: Vec<ConnectionJson>,
    pool: PoolStats,
}

/// The version number that starts `server_version` (`15.18` of `15.18 (Debian 15.18-0+deb12u1)`).
fn version_number(server_version: &str) -> &str {
    server_version.split_whitespace().next().unwrap_or_default()
}

/// Opens `--count` connections at once and prints them.
pub async fn run(args: ConnectArgs, out: &Output) -> anyhow::Result<()> {
    let count = args.count.unwrap_or_else(|| {
        let conn = &args.conn;
        conn.min_idle
            .unwrap_or(resolve::DEFAULT_MIN_IDLE.min(conn.max_conns))
            .max(1)
    });
    // No idle minimum to keep: the pool opens exactly the connections checked out below.
    let session = Session::open(&args.conn, Some(0), true).await?;
    if count > session.settings.pool.max_size {
        return Err(ConfigError(format!(
            "--count {count} exceeds --max-conns {}; raise --max-conns",
            session.settings.pool.max_size
        ))
        .into());
    }
    let conns = session.pool.get_many(count as usize).await?;
    let mut rows = Vec::new();
    // Everything shown arrived while the connections opened (the server version in the
    // startup's parameter status): no query per connection.
    for conn in &conns {
        let info = conn.info();
        let token_age_ms = info.token_signed_at.map(|signed| {
            output::json_millis(SystemTime::now().duration_since(signed).unwrap_or_default())
        });
        rows.push(ConnectionJson { info, token_age_ms });
    }
    drop(conns);
    let stats = session.pool.stats();
    let mut stdout = std::io::stdout().lock();
    if out.format == Format::Json {
        let settings = &session.settings;
        serde_json::to_writer_pretty(
            &mut stdout,
            &ConnectJson {
                endpoint: settings.target.endpoint.clone(),
                host: settings.host.clone(),
                port: settings.port,
                user: settings.target.user.clone(),
                connections: rows,
                pool: stats,
            },
        )?;
        writeln!(stdout)?;
    } else {
        // What fits in 80 columns: the version number, the connect time; -v adds its parts
        // (token, TCP, TLS handshake, auth), which a narrow terminal gets as records.
        let mut header = vec!["#", "session id", "server", "tls", "connect", "token age"];
        if out.verbose > 0 {
            header.extend(["token", "tcp", "tls hs", "auth"]);
        }
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let t = &r.info.timing;
                let mut row = vec![
                    r.info.number.to_string(),
                    r.info.session_id.clone(),
                    version_number(r.info.server_version.as_deref().unwrap_or("-")).to_string(),
                    r.info.tls_version.clone().unwrap_or_else(|| "none".into()),
                    output::millis(t.total),
                    r.token_age_ms
                        .map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms / 1000.0)),
                ];
                if out.verbose > 0 {
                    row.extend([t.token, t.tcp, t.tls, t.auth].map(output::millis));
                }
                row
            })
            .collect();
        writeln!(stdout, "{}", out.table(&header, &body))?;
        if out.verbose > 0 {
            writeln!(
                stdout,
                "{}",
                out.table(&["pool", "value"], &output::stats_rows(&stats))
            )?;
        } else if !out.quiet {
            crate::exit::diag!("{}", output::stats_line(&stats));
        }
    }
    stdout.flush()?;
    session.close().await;
    Ok(())
}
