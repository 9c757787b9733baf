//! `dsql-pgx query`: run SQL with tokens handled, conflicts retried, results printed.

use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio_postgres::{CancelToken, Client};

use crate::pool::PooledConn;

use crate::cli::QueryArgs;
use crate::cli::resolve;
use crate::exit::Interrupted;
use crate::output::{self, Output};
use crate::retry::{self, RetryEvent};
use crate::settings::ConfigError;
use crate::sql::{self, StatementResult};

use super::{Session, StopSignal};

/// Where the SQL comes from.
fn read_sql(args: &QueryArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("cannot read SQL file {}", path.display()));
    }
    match args.sql.as_deref() {
        Some("-") | None => {
            let mut stdin = std::io::stdin();
            if args.sql.is_none() && stdin.is_terminal() {
                return Err(ConfigError(
                    "no SQL given: pass it as an argument, with -f FILE, or on stdin".into(),
                )
                .into());
            }
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("cannot read SQL from stdin")?;
            Ok(text)
        }
        Some(sql) => Ok(sql.to_string()),
    }
}

/// Runs the statements and prints their results.
pub async fn run(args: QueryArgs, out: &Output) -> anyhow::Result<()> {
    let text = read_sql(&args)?;
    let statements = sql::split(&text);
    if statements.is_empty() {
        return Err(ConfigError("no SQL statement to run".into()).into());
    }
    if args.expanded && out.format != crate::cli::Format::Table {
        return Err(ConfigError(
            "--expanded lays out tables only; drop it or use --format table".into(),
        )
        .into());
    }
    let mut out = out.clone();
    out.expanded = args.expanded;
    let out = &out;
    let policy = resolve::retry(&args.retry)?;
    // From here Ctrl-C and SIGTERM stop the query, also while a `--local` endpoint starts.
    let mut stop = StopSignal::new()?;
    // A one-shot query opens only the connection it uses.
    let session = tokio::select! {
        session = Session::open(&args.conn, Some(0), false) => session?,
        signal = stop.recv() => return Err(Interrupted { signal, cancelled: false }.into()),
    };
    let typed = out.format == crate::cli::Format::Json;
    let current: Arc<Mutex<Option<CancelToken>>> = Arc::default();
    let last_session: Mutex<String> = Mutex::default();
    // The session ID costs a query: run only when it is printed, and then pipelined with the
    // first statement on each connection, so it costs no round trip of its own.
    let show_session = !out.quiet && (out.verbose > 0 || out.format == crate::cli::Format::Table);
    let noted = show_session.then_some(&last_session);
    let quiet = out.quiet;
    let mut on_retry = move |event: &RetryEvent| {
        if !quiet {
            crate::exit::diag!(
                "dsql-pgx: conflict on attempt {}/{} (SQLSTATE {}{}), retrying in {}",
                event.attempt,
                event.retries + 1,
                event.conflict.sqlstate,
                event
                    .conflict
                    .code
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default(),
                output::millis(event.wait)
            );
        }
    };

    let work = async {
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let mut first = true;
        let mut print =
            |results: Vec<StatementResult>, stdout: &mut dyn Write| -> anyhow::Result<()> {
                for result in results {
                    out.write_result(stdout, &result, first)?;
                    first = false;
                }
                stdout.flush()?;
                Ok(())
            };
        if args.transaction {
            let results = retry::run(
                &session.pool,
                &policy,
                true,
                &mut on_retry,
                async |client: &PooledConn| {
                    remember(&current, client);
                    let mut results = Vec::with_capacity(statements.len());
                    tracing::debug!("running a transaction");
                    for statement in &statements {
                        results.push(run_one(client, statement, typed, noted).await?);
                    }
                    Ok(results)
                },
            )
            .await?;
            print(results, &mut stdout)?;
        } else {
            for statement in &statements {
                let result = retry::run(
                    &session.pool,
                    &policy,
                    false,
                    &mut on_retry,
                    async |client: &PooledConn| {
                        remember(&current, client);
                        tracing::debug!("running a statement");
                        Ok(run_one(client, statement, typed, noted).await?)
                    },
                )
                .await?;
                print(vec![result], &mut stdout)?;
            }
        }
        anyhow::Ok(())
    };

    let outcome = tokio::select! {
        outcome = work => outcome,
        signal = stop.recv() => {
            let token = current.lock().unwrap_or_else(|p| p.into_inner()).take();
            let mut cancelled = false;
            if let Some(token) = token {
                match session.pool.cancel(&token).await {
                    Ok(()) => cancelled = true,
                    Err(error) => tracing::warn!("cannot cancel the running query: {error}"),
                }
            }
            // Dropping the session stops a `--local` endpoint and removes its directory.
            drop(session);
            return Err(Interrupted { signal, cancelled }.into());
        }
    };
    outcome?;
    let session_id = last_session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !out.quiet {
        // One line after the results (the session only with a table); every counter with -v.
        let stats = session.pool.stats();
        if out.verbose > 0 {
            let mut rows = vec![vec!["session id".to_string(), session_id]];
            rows.extend(output::stats_rows(&stats));
            crate::exit::diag!("{}", out.stderr_table(&["connection", "value"], &rows));
        } else if show_session {
            crate::exit::diag!("session {session_id}; {}", output::stats_line(&stats));
        } else {
            crate::exit::diag!("{}", output::stats_line(&stats));
        }
    }
    session.close().await;
    Ok(())
}

/// Runs `statement`; with `noted`, the connection's session ID is read alongside (its
/// query goes out in the same flight as the statement, once per connection) and kept there.
async fn run_one(
    client: &PooledConn,
    statement: &str,
    typed: bool,
    noted: Option<&Mutex<String>>,
) -> Result<StatementResult, tokio_postgres::Error> {
    let Some(noted) = noted else {
        return sql::execute(client, statement, typed).await;
    };
    let (id, result) = futures_util::future::join(
        client.fetch_session_id(),
        sql::execute(client, statement, typed),
    )
    .await;
    if let Ok(id) = id {
        *noted.lock().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }
    result
}

fn remember(slot: &Mutex<Option<CancelToken>>, client: &Client) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.cancel_token());
}
