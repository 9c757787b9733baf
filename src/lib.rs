//! dsql-pgx: reach Amazon Aurora DSQL from a shell, a script or a Rust program.
//!
//! The library signs IAM auth tokens, opens verified TLS connections and keeps a
//! self-refreshing [`Pool`] that retires its connections before DSQL's one-hour limit; its
//! [`retry`] re-runs optimistic-concurrency conflicts. Settings come from a builder, a
//! `postgres://` URL or the environment:
//!
//! ```no_run
//! # async fn demo() -> dsql_pgx::Result<()> {
//! use dsql_pgx::{ConnSettings, Pool};
//! let settings: ConnSettings =
//!     "postgres://admin@abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws/postgres".parse()?;
//! let pool = Pool::new(&settings).await?;
//! let _refresher = pool.spawn_refresher(std::time::Duration::from_secs(15 * 60));
//! let row = pool.get().await?.query_one("select sys.current_session_id()", &[]).await?;
//! println!("session {}", row.get::<_, String>(0));
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `cli` (default): the `dsql-pgx` binary (clap, tables, csv, logging); implies `local`.
//! - `local` (default): `local::LocalEndpoint`, a DSQL-compatible endpoint that checks IAM
//!   tokens for real in front of a private PostgreSQL, for tests without an AWS account.
//!
//! With `default-features = false` the crate is the core alone: settings, signing, TLS, the
//! pool and retry.
//!
//! # Layout
//!
//! Imports point one way: the core never reaches into the front, and within the core each
//! module uses only those listed above it.
//!
//! | layer | module | owns |
//! |---|---|---|
//! | core | [`dsql`] | DSQL's rules: the admin role and its token action, the week cap, the hour |
//! | core | [`error`] | [`Error`] and every error type beneath it, cause chains on one line |
//! | core | [`auth`] | credentials, token signing, the credential cache, the token target |
//! | core | [`settings`] | the builder, URLs and the environment → validated settings, once |
//! | core | [`tls`] | the rustls configuration and the TLS connector |
//! | core | [`pool`] | the bb8 manager, connection registry, refresh, statistics |
//! | core | [`retry`] | optimistic-concurrency conflict detection and retry |
//! | core | [`sql`] | splitting SQL into statements, running them, command tags |
//! | `local` | `local` | the local DSQL-compatible endpoint and its private PostgreSQL |
//! | front | `cli` | every clap type; `cli::resolve`: flags and environment → settings |
//! | front | `output` | tables, csv, tsv, json, terminal detection, escaping |
//! | front | `latency` | latency histograms (constant memory) and percentiles, for the commands that measure |
//! | front | `exit` | exit codes and error reporting, with the flags named |
//! | front | `cmd` | one module per subcommand |
//!
//! Data flows cli → settings → auth/tls → pool → command → output. The front modules are the
//! binary's, not part of the library's API.

#![warn(missing_debug_implementations)]
#![deny(missing_docs)]

pub mod auth;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cmd;
pub mod dsql;
pub mod error;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod exit;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod latency;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod output;
pub mod pool;
pub mod retry;
pub mod settings;
pub mod sql;
pub mod tls;

/// The AWS credential types a program needs for [`auth::CredentialSource::Provider`].
pub use aws_credential_types;
pub use error::{Error, Result};
pub use pool::Pool;
pub use settings::ConnSettings;
/// The driver underneath, re-exported so a program can name its types (`Row`, `Error`,
/// `types::ToSql`) without depending on a matching version itself.
pub use tokio_postgres;

#[cfg(feature = "cli")]
use tracing_subscriber::EnvFilter;

#[cfg(feature = "cli")]
use crate::cli::{Cli, Command};
#[cfg(feature = "cli")]
use crate::output::Output;

/// Runs a parsed command line. Errors are returned, not printed: the caller prints once.
///
/// The runtime is chosen here. A client command spends its time waiting on the network, so
/// it runs on one thread: no worker threads to start for a one-shot query, and no wake-ups
/// crossing threads between a query and its connection task (measured with `bench` at 8
/// clients on 2 cores: about 20 % more throughput than the multi-threaded runtime).
/// `bench --threads N` starts N-1 more threads, each with a one-thread runtime and a pool
/// of its own (as pgbench's `-j`); `local` serves many clients, doing TLS for each, so it
/// uses a worker per core.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing(&cli);
    let (format, no_header) = cli.command.output_format();
    let out = Output::new(&cli.global, format, no_header);
    let threads = match &cli.command {
        Command::Completions(args) => return cmd::completions::run(args),
        Command::Local(args) if args.threads > 0 => args.threads as usize,
        Command::Local(_) => std::thread::available_parallelism().map_or(2, usize::from),
        _ => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(cmd::dispatch(cli.command, &out))
}

#[cfg(feature = "cli")]
fn init_tracing(cli: &Cli) {
    let default = if cli.global.quiet {
        "error"
    } else {
        match cli.global.verbose {
            0 => "error,dsql_pgx=warn",
            1 => "warn,dsql_pgx=info",
            _ => "info,dsql_pgx=debug",
        }
    };
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // The SDK's signer traces its canonical request, which holds a session token (and is
    // most of an auth token): never below info, whatever RUST_LOG asks.
    for quiet in ["aws_sigv4=info", "aws_sdk_dsql::auth_token=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
