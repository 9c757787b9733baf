//! dsql-pgx: reach Amazon Aurora DSQL from a shell, a script or a Rust program.
//!
//! The binary is a thin layer over this library; a Rust program can build the same
//! token-refreshing [`Pool`] from [`settings::ConnSettings`].
//!
//! # Layout
//!
//! Data flows one way: cli → settings → auth/tls → pool → command → output.
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | every clap type |
//! | [`settings`] | flags and environment → validated settings, once |
//! | [`auth`] | credentials, token signing, the credential cache |
//! | [`tls`] | the rustls configuration and the TLS connector |
//! | [`pool`] | the bb8 manager, connection registry, refresh, statistics |
//! | [`latency`] | latency histograms (constant memory) and percentiles, for the commands that measure |
//! | [`retry`] | optimistic-concurrency conflict detection and retry |
//! | [`sql`] | splitting SQL into statements, running them, command tags |
//! | [`output`] | tables, csv, tsv, json, terminal detection, escaping |
//! | [`exit`] | exit codes and error reporting |
//! | [`cmd`] | one module per subcommand |
//! | [`local`] | the local DSQL-compatible endpoint and its private PostgreSQL |

#![warn(missing_debug_implementations)]

pub mod auth;
pub mod cli;
pub mod cmd;
pub mod exit;
pub mod latency;
pub mod local;
pub mod output;
pub mod pool;
pub mod retry;
pub mod settings;
pub mod sql;
pub mod tls;

/// The AWS credential types a program needs for [`auth::CredentialSource::Provider`].
pub use aws_credential_types;
pub use pool::Pool;
/// The driver underneath, re-exported so a program can name its types (`Row`, `Error`,
/// `types::ToSql`) without depending on a matching version itself.
pub use tokio_postgres;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
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
