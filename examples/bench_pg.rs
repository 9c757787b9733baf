//! A private PostgreSQL with TLS and a password, started exactly as the test harness
//! starts it, for `bench/run.sh` (pgbench, psql and `dsql-pgx bench` connect to it).
//!
//! ```text
//! cargo run --release --example bench_pg -- DIR
//! ```
//!
//! Prints one line for a shell to `eval`:
//! `PG_PORT=... PG_PASSWORD=... PG_CA=...` (host `localhost`, user `admin`, database
//! `postgres`), then serves until SIGTERM or SIGINT, and stops the server.
//! The CA and the cluster live in DIR (created if missing; removed by the caller).

use std::path::PathBuf;

use anyhow::Context as _;
use dsql_pgx::local::certs::LocalCa;
use dsql_pgx::local::{PgOptions, PgServer, TcpTls};
use rand::RngExt as _;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args_os().nth(1).context("usage: bench_pg DIR")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = LocalCa::generate()?;
    let cert = ca.issue_server_cert(&[])?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).context("writing ca.pem")?;
    let password: String = (0..24)
        .map(|_| rand::rng().sample(rand::distr::Alphanumeric) as char)
        .collect();
    let pg = PgServer::start(PgOptions {
        data_dir: dir.join("data"),
        superuser: dsql_pgx::local::postgres::INTERNAL_SUPERUSER.into(),
        tcp: Some(TcpTls {
            port: 0,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            password: password.clone(),
        }),
        dsql_mimic: true,
        max_connections: 100,
    })
    .await?;
    println!(
        "PG_PORT={} PG_PASSWORD={password} PG_CA={}",
        pg.port().context("TCP listener")?,
        ca_path.display()
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    pg.stop().await
}
