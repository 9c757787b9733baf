//! Exit codes, and how an error is printed: once, on stderr, with its cause chain.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also a closed stdout pipe) |
//! | 1 | SQL error reported by the server |
//! | 2 | usage or configuration error (flags, environment, credentials, a `local` data dir that is not safe to use) |
//! | 3 | connection, TLS or authentication failure; for `local`, its PostgreSQL died |
//! | 4 | optimistic-concurrency retries exhausted |
//! | 5 | `refresh-demo`: a connection survived a refresh or a query failed |
//! | 130 | interrupted (Ctrl-C or SIGTERM) |
//!
//! Diagnostics go to stderr through [`eprint`], which never panics: a stderr that cannot take
//! them (a closed pipe, a full disk) loses the line, never the exit code. A closed stdin,
//! stdout or stderr (`2>&-`) is already `/dev/null` when `main` starts (Rust's runtime opens
//! it there on Unix), so no socket opened later can become one of them.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io::{self, Write as _};

use crate::auth::AuthError;
use crate::pool::{ConnectError, PoolError, RefreshError};
use crate::settings::ConfigError;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Success = 0,
    /// The server reported an SQL error.
    Sql = 1,
    /// Bad flags, environment or missing credentials.
    Usage = 2,
    /// Could not connect, verify TLS or authenticate.
    Connect = 3,
    /// Optimistic-concurrency conflicts outlasted the retries.
    Conflict = 4,
    /// `refresh-demo` found a surviving connection or a failed query.
    DemoFailed = 5,
    /// Interrupted by Ctrl-C (SIGINT) or SIGTERM.
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// The user pressed Ctrl-C, or the process was sent SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {signal}{}", if *.cancelled { "; the running statement was cancelled" } else { "" })]
pub struct Interrupted {
    /// The signal: `SIGINT` (Ctrl-C) or `SIGTERM`.
    pub signal: &'static str,
    /// Whether a cancel request went to the server for a running statement.
    pub cancelled: bool,
}

/// Writes a diagnostic to stderr, as `eprint!` does but without its panic when stderr is
/// gone (a closed pipe, a full disk): the text is lost, the exit code is not.
pub fn eprint(text: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(text);
}

/// `eprintln!` through [`eprint`]: a line on stderr, never a panic.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::exit::eprint(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use diag;

/// A command finished but its own check failed (exit code carried along).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    /// What failed.
    pub message: String,
    /// The exit code.
    pub exit: Exit,
}

/// The exit code for an error: the first error in the chain that decides it.
pub fn classify(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<Failed>() {
            return e.exit;
        }
        if cause.is::<Interrupted>() {
            return Exit::Interrupted;
        }
        if cause.is::<ConfigError>()
            || cause.is::<clap::Error>()
            || cause.is::<crate::local::PostgresNotFound>()
        {
            return Exit::Usage;
        }
        if let Some(e) = auth_error(cause) {
            return match e {
                AuthError::NoCredentials(_) | AuthError::Unusable(_) => Exit::Usage,
                AuthError::Sign(_) => Exit::Connect,
            };
        }
        if let Some(PoolError::Config(_)) = cause.downcast_ref::<PoolError>() {
            return Exit::Usage;
        }
        if cause.is::<PoolError>() || cause.is::<ConnectError>() || cause.is::<RefreshError>() {
            return Exit::Connect;
        }
        if cause.is::<crate::retry::RetriesExhausted>() {
            return Exit::Conflict;
        }
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return match e.code().map(|c| c.code()) {
                Some(code) if is_connection_class(code) => Exit::Connect,
                Some(_) => Exit::Sql,
                None => Exit::Connect,
            };
        }
    }
    Exit::Usage
}

/// The credential or signing error behind `cause`, also when a pool or connect error wraps it
/// transparently (its `source` then skips the [`AuthError`] itself).
fn auth_error<'a>(cause: &'a (dyn StdError + 'static)) -> Option<&'a AuthError> {
    let connect = match cause.downcast_ref::<PoolError>() {
        Some(PoolError::Connect(connect)) => Some(&**connect),
        _ => cause.downcast_ref::<ConnectError>(),
    };
    match connect {
        Some(ConnectError::Auth(e)) => Some(e),
        _ => cause.downcast_ref::<AuthError>(),
    }
}

fn is_connection_class(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("28") || code.starts_with("53") || code == "57P01"
}

/// Whether the error is only a closed stdout (`dsql-pgx query ... | head -1`).
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<csv::Error>()
                .is_some_and(|e| matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe))
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(io::ErrorKind::BrokenPipe))
    })
}

/// The cause chain on one line, `outer: inner: innermost`, with database errors rendered
/// from their fields (SQLSTATE, message, then DETAIL and HINT on their own lines).
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut line = String::new();
    let mut extra = String::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut last = String::new();
    while let Some(cause) = current {
        let text = if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
            current = None;
            render_db_error(db, &mut extra)
        } else if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>()
            && let Some(db) = pg.as_db_error()
        {
            current = None;
            render_db_error(db, &mut extra)
        } else {
            current = cause.source();
            first_line(&cause.to_string())
        };
        // Some errors repeat their source's text; print each piece once.
        if !text.is_empty() && !last.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        last = text;
    }
    line + &extra
}

/// The first line of a message (some SDK errors list every provider they tried on the
/// lines after; `-vv` logs those).
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim_end();
    let line = line.strip_suffix("Attempted:").unwrap_or(line);
    let line = line.trim_end_matches([' ', ':']);
    // A sentence's full stop goes (the chain joins pieces with ": "); an ellipsis stays.
    match line.strip_suffix('.') {
        Some(rest) if !rest.ends_with('.') => rest.to_string(),
        _ => line.to_string(),
    }
}

/// A clap usage error on one line: the message, the possible values and any "a similar
/// name exists" tip, the variable that can also set a bad value, and where to read more
/// (the help of the subcommand named in `args`, the command line).
pub fn usage_line(error: &clap::Error, cmd: &clap::Command, args: &[String]) -> String {
    use clap::error::{ContextKind, ContextValue};
    let mut line = clap_message(error);
    let sub = args
        .iter()
        .skip(1)
        .find(|a| cmd.get_subcommands().any(|s| s.get_name() == a.as_str()));
    // The variable that can also set a bad value (in the subcommand that was run); an unknown
    // flag has none.
    let bad_value = matches!(
        error.kind(),
        clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
    );
    if bad_value && let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) {
        let long = arg.split([' ', '=']).next().unwrap_or_default();
        let scope = sub
            .and_then(|name| cmd.find_subcommand(name))
            .unwrap_or(cmd);
        if let Some(var) = env_of(scope, long.trim_start_matches("--")) {
            let quoted = format!("'{arg}'");
            line = line.replacen(&quoted, &format!("{quoted} (or {var})"), 1);
        }
    }
    let text = error.render().to_string();
    for rest in text.lines().skip(1).map(str::trim) {
        if rest.starts_with("[possible values:") {
            line = format!("{line} {rest}");
        } else if let Some(tip) = rest.strip_prefix("tip: ")
            && tip.contains("similar")
        {
            line = format!("{line} ({tip})");
        }
    }
    match sub {
        Some(sub) => format!("{line}; see 'dsql-pgx {sub} --help'"),
        None => format!("{line}; see 'dsql-pgx --help'"),
    }
}

/// A clap error's message alone: its first line, without clap's `error: ` prefix.
pub fn clap_message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().trim();
    let mut message = first.trim_start_matches("error: ").to_string();
    // "the following required arguments were not provided:" lists them on indented lines.
    if message.ends_with(':') {
        let listed: Vec<&str> = lines
            .take_while(|line| line.starts_with(char::is_whitespace) && !line.trim().is_empty())
            .map(str::trim)
            .collect();
        if !listed.is_empty() {
            message = format!("{} {}", message, listed.join(", "));
        }
    }
    message
}

/// The variable behind the flag `--long`, in any subcommand.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    let own = cmd
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env());
    match own {
        Some(var) => Some(var.to_string_lossy().into_owned()),
        None => cmd.get_subcommands().find_map(|sub| env_of(sub, long)),
    }
}

fn render_db_error(db: &tokio_postgres::error::DbError, extra: &mut String) -> String {
    let mut text = format!("{} (SQLSTATE {}", db.message(), db.code().code());
    if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
        let _ = write!(text, ", at character {position}");
    }
    text.push(')');
    if let Some(detail) = db.detail() {
        let _ = write!(extra, "\n  DETAIL: {detail}");
    }
    if let Some(hint) = db.hint() {
        let _ = write!(extra, "\n  HINT: {hint}");
    }
    text
}

/// Prints the error once, as `dsql-pgx: error: ...`, and returns its exit code.
pub fn report(error: &anyhow::Error) -> Exit {
    if is_broken_pipe(error) {
        return Exit::Success;
    }
    let exit = classify(error);
    let root: &(dyn StdError + 'static) = error.as_ref();
    eprint(format_args!(
        "dsql-pgx: error: {}\n",
        crate::output::escape_control(&chain(root))
    ));
    exit
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn config_errors_are_usage_errors() {
        let e = anyhow::Error::new(ConfigError("bad".into())).context("reading flags");
        assert_eq!(classify(&e), Exit::Usage);
        assert_eq!(chain(e.as_ref()), "reading flags: bad");
    }

    #[test]
    fn missing_credentials_are_usage_errors_however_wrapped() {
        let missing = || AuthError::NoCredentials("no provider".into());
        let wrapped = [
            anyhow::Error::new(missing()),
            anyhow::Error::new(ConnectError::Auth(missing())),
            anyhow::Error::new(PoolError::Connect(Arc::new(ConnectError::Auth(missing()))))
                .context("opening the pool"),
        ];
        for e in wrapped {
            assert_eq!(classify(&e), Exit::Usage, "{e:#}");
        }
        let signing = ConnectError::Auth(AuthError::Sign("clock".into()));
        let e = anyhow::Error::new(PoolError::Connect(Arc::new(signing)));
        assert_eq!(classify(&e), Exit::Connect);
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_variable_and_the_help() {
        let cmd = crate::cli::command();
        let line = |argv: &[&str]| {
            let args: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            let error = cmd.clone().try_get_matches_from(&args).unwrap_err();
            usage_line(&error, &cmd, &args)
        };
        assert_eq!(
            line(&["dsql-pgx", "query", "--max-conns", "x", "select 1"]),
            "invalid value 'x' for '--max-conns <N>' (or DB_MAX_CONNS): invalid digit found \
             in string; see 'dsql-pgx query --help'"
        );
        assert_eq!(
            line(&["dsql-pgx", "query", "--format", "xml", "select 1"]),
            "invalid value 'xml' for '--format <FORMAT>' [possible values: table, csv, tsv, \
             json]; see 'dsql-pgx query --help'"
        );
        assert_eq!(
            line(&["dsql-pgx", "qury"]),
            "unrecognized subcommand 'qury' (a similar subcommand exists: 'query'); see \
             'dsql-pgx --help'"
        );
        assert_eq!(
            line(&["dsql-pgx", "query", "--refresh-interval", "1s", "select 1"]),
            "unexpected argument '--refresh-interval' found; see 'dsql-pgx query --help'"
        );
        assert_eq!(
            line(&["dsql-pgx", "bench", "--bogus"]),
            "unexpected argument '--bogus' found; see 'dsql-pgx bench --help'"
        );
    }

    #[test]
    fn first_lines_lose_a_full_stop_but_keep_an_ellipsis() {
        assert_eq!(
            first_line("cannot connect.\nretried 3 times"),
            "cannot connect"
        );
        assert_eq!(first_line("no provider: Attempted:"), "no provider");
        assert_eq!(first_line("without $1, $2, ..."), "without $1, $2, ...");
    }

    #[test]
    fn interrupted_is_130() {
        let interrupted = Interrupted {
            signal: "SIGTERM",
            cancelled: true,
        };
        assert_eq!(
            interrupted.to_string(),
            "interrupted by SIGTERM; the running statement was cancelled"
        );
        assert_eq!(
            classify(&anyhow::Error::new(interrupted)),
            Exit::Interrupted
        );
        assert_eq!(Exit::Interrupted as u8, 130);
    }

    #[test]
    fn broken_pipe_is_quiet_success() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        assert_eq!(report(&e), Exit::Success);
    }
}
