//! The library on its own: a pool from a `postgres://` URL, a query, an optimistic-concurrency
//! transaction with retry, and matching on [`dsql_pgx::Error`].
//!
//! ```text
//! cargo run --example library -- 'postgres://admin@<cluster id>.dsql.us-east-1.on.aws/postgres'
//! cargo run --example library            # starts a LocalEndpoint instead (feature `local`)
//! ```
//!
//! Without a URL it starts a [`dsql_pgx::local::LocalEndpoint`], the DSQL-compatible endpoint
//! that checks IAM tokens for real in front of a private PostgreSQL: how a program's own
//! tests reach "DSQL" without an AWS account (it needs PostgreSQL's server binaries).

use dsql_pgx::{ConnSettings, Error, Pool};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(std::env::args().nth(1)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One variant per kind a program handles differently.
            let what = match &error {
                Error::Config(_) => "bad settings",
                Error::Credentials(_) => "no usable AWS credentials",
                Error::Connect(e) => match e.phase() {
                    dsql_pgx::pool::ConnectPhase::Dns => "unknown host",
                    _ => "cannot connect",
                },
                Error::Tls(_) => "TLS failed",
                Error::Authentication(_) => "token refused",
                Error::Db(_) => "query failed",
                Error::RetriesExhausted { .. } => "too much contention",
                _ => "failed",
            };
            let code = error.sqlstate().map(|s| s.code()).unwrap_or("-");
            eprintln!(
                "{what} (SQLSTATE {code}): {}",
                dsql_pgx::error::chain(&error)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(url: Option<String>) -> dsql_pgx::Result<()> {
    match url {
        Some(url) => work(&url.parse()?).await,
        None => with_local_endpoint().await,
    }
}

/// The program's own work, given settings.
async fn work(settings: &ConnSettings) -> dsql_pgx::Result<()> {
    let pool = Pool::new(settings).await?;
    // Replaces every connection (fresh tokens) every 15 minutes; dropped, it stops.
    let _refresher = pool.spawn_refresher(std::time::Duration::from_secs(15 * 60));

    let conn = pool.get().await?;
    let row = conn.query_one("select 1::int4 + 1", &[]).await?;
    println!("1 + 1 = {}", row.get::<_, i32>(0));
    conn.batch_execute(
        "create table if not exists accounts (id int primary key, balance int not null)",
    )
    .await?;
    drop(conn);

    // An optimistic-concurrency conflict (40001, OC000, OC001) re-runs the whole transaction.
    let moved = dsql_pgx::retry::transaction(&pool, async |tx| {
        tx.execute(
            "insert into accounts values (1, 100), (2, 0) on conflict (id) do nothing",
            &[],
        )
        .await?;
        tx.execute(
            "update accounts set balance = balance - 10 where id = 1",
            &[],
        )
        .await?;
        Ok(tx
            .execute(
                "update accounts set balance = balance + 10 where id = 2",
                &[],
            )
            .await?)
    })
    .await?;
    println!("moved 10 ({moved} row)");
    Ok(())
}

#[cfg(feature = "local")]
async fn with_local_endpoint() -> dsql_pgx::Result<()> {
    use dsql_pgx::local::{EndpointOptions, LocalEndpoint};
    let endpoint = LocalEndpoint::start(EndpointOptions::default())
        .await
        .map_err(|e| dsql_pgx::error::ConfigError::new(format!("{e:#}")))?;
    let outcome = work(&endpoint.conn_settings("admin")).await;
    let _ = endpoint.shutdown().await;
    outcome
}

#[cfg(not(feature = "local"))]
async fn with_local_endpoint() -> dsql_pgx::Result<()> {
    Err(dsql_pgx::error::ConfigError::new(
        "give a postgres:// URL (or build with --features local)",
    )
    .into())
}
