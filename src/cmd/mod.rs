//! One module per subcommand, each with `pub async fn run(..)`, and what they share:
//! turning connection flags into a pool (against a real cluster or a local endpoint), and
//! stopping on Ctrl-C or SIGTERM with the local endpoint torn down, not left behind.

pub mod bench;
pub mod completions;
pub mod connect;
pub mod local;
pub mod query;
pub mod refresh_demo;
pub mod token;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::resolve::{self, ProcessEnv};
use crate::cli::{Command, ConnArgs};
use crate::exit::Interrupted;
use crate::output::Output;
use crate::pool::Pool;
use crate::settings::ConnSettings;

/// Runs a subcommand on the current runtime.
pub async fn dispatch(command: Command, out: &Output) -> anyhow::Result<()> {
    // `query` cancels its statement and `refresh-demo` prints its summary on a signal; `local`
    // shuts its endpoint down. `connect` and `bench` just stop: dropping their session stops
    // a `--local` endpoint and removes its temporary directory.
    match command {
        Command::Query(args) => query::run(args, out).await,
        Command::Connect(args) => until_stopped(connect::run(args, out)).await,
        Command::Token(args) => token::run(args, out).await,
        Command::RefreshDemo(args) => refresh_demo::run(args, out).await,
        Command::Local(args) => local::run(args, out).await,
        Command::Bench(args) => until_stopped(bench::run(args, out)).await,
        Command::Completions(args) => completions::run(&args),
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, the signals that stop a command. From the moment one is made
/// they no longer end the process outright (which would leave a `--local` endpoint's
/// PostgreSQL and temporary directory behind): each arrives at [`StopSignal::recv`], also one
/// sent before the first call.
#[derive(Debug)]
pub struct StopSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignal {
    /// Starts listening for both signals.
    pub fn new() -> anyhow::Result<StopSignal> {
        Ok(StopSignal {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Waits for the next signal and names it (`SIGINT` or `SIGTERM`).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Runs `work` until it ends or a signal stops it; a stopped `work` is dropped, with every
/// connection and local endpoint it holds, and the error is [`Interrupted`] (exit 130).
async fn until_stopped(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut stop = StopSignal::new()?;
    tokio::select! {
        outcome = work => outcome,
        signal = stop.recv() => Err(Interrupted { signal, cancelled: false }.into()),
    }
}

/// A pool and, with `--local`, the endpoint it talks to (torn down with it).
#[derive(Debug)]
pub struct Session {
    /// The pool.
    pub pool: Pool,
    /// The settings it was built from.
    pub settings: ConnSettings,
    local: Option<crate::local::LocalEndpoint>,
}

impl Session {
    /// Validates the flags, starts a local endpoint if asked, and opens the pool with
    /// `min_idle` connections (`None` keeps the configured minimum). With `session_ids`, each
    /// connection's session ID is read as it opens; without, only when asked for.
    pub async fn open(
        args: &ConnArgs,
        min_idle: Option<u32>,
        session_ids: bool,
    ) -> anyhow::Result<Session> {
        let destination = resolve::destination(args, &ProcessEnv)?;
        let (mut settings, local) = local::ephemeral(destination).await?;
        settings.pool.session_id_on_connect = session_ids;
        if let Some(min_idle) = min_idle {
            settings.pool.min_idle = min_idle.min(settings.pool.max_size);
        }
        let pool = Pool::new(&settings)
            .await
            .with_context(|| format!("cannot open the pool for {}", settings.target.endpoint))?;
        Ok(Session {
            pool,
            settings,
            local,
        })
    }

    /// Closes the pool, each connection saying Terminate (and the local endpoint, if any).
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(endpoint) = self.local
            && let Err(error) = endpoint.shutdown().await
        {
            tracing::warn!("stopping the local endpoint: {error:#}");
        }
    }
}
