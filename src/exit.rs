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
use std::io::{self, Write as _};

use crate::auth::AuthError;
pub use crate::error::chain;
use crate::error::{ConfigError, Error, chain_with};
use crate::pool::ConnectError;

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
        let library = cause
            .downcast_ref::<Error>()
            .or_else(|| cause.downcast_ref::<Box<Error>>().map(|e| &**e));
        if let Some(e) = library {
            return match e {
                Error::Config(_) => Exit::Usage,
                Error::Credentials(e) => auth_exit(e),
                Error::RetriesExhausted { .. } => Exit::Conflict,
                Error::Db(e) => db_exit(e),
                _ => Exit::Connect,
            };
        }
        if let Some(e) = cause.downcast_ref::<AuthError>() {
            return auth_exit(e);
        }
        if let Some(e) = cause.downcast_ref::<ConnectError>() {
            return match e {
                ConnectError::Auth(e) => auth_exit(e),
                _ => Exit::Connect,
            };
        }
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return db_exit(e);
        }
    }
    Exit::Usage
}

/// Missing or unusable credentials are the user's to fix; a failed signature is not.
fn auth_exit(error: &AuthError) -> Exit {
    match error {
        AuthError::NoCredentials(_) | AuthError::Unusable(_) => Exit::Usage,
        AuthError::Sign(_) => Exit::Connect,
    }
}

fn db_exit(error: &tokio_postgres::Error) -> Exit {
    match error.code().map(|c| c.code()) {
        Some(code) if is_connection_class(code) => Exit::Connect,
        Some(_) => Exit::Sql,
        None => Exit::Connect,
    }
}

/// A library error's text with our flags named: the library's messages name its own
/// settings (`PoolSettings::max_size`), the binary's name `--max-conns`.
fn with_flags(cause: &(dyn StdError + 'static)) -> Option<String> {
    let library = cause
        .downcast_ref::<Error>()
        .or_else(|| cause.downcast_ref::<Box<Error>>().map(|e| &**e));
    if let Some(error) = library {
        return match error {
            Error::Connect(e) | Error::Tls(e) | Error::Authentication(e) => connect_text(e),
            Error::Credentials(e) => auth_text(e),
            Error::PoolTimeout(waited) => Some(format!(
                "no pooled connection became free within {}; raise the pool's size (--max-conns, PoolSettings::max_size)",
                humantime::format_duration(*waited)
            )),
            Error::RetriesExhausted { attempts, .. } => Some(format!(
                "optimistic-concurrency conflict persisted after {attempts} attempt(s); allow more retries (--retries, RetryPolicy::retries) or reduce contention"
            )),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<ConnectError>() {
        return connect_text(e);
    }
    if let Some(e) = cause.downcast_ref::<AuthError>() {
        return auth_text(e);
    }
    if let Some(e) = cause.downcast_ref::<crate::tls::TlsError>()
        && e.is_certificate()
    {
        return Some(format!(
            "{}; pass the server's CA with --ca-file (or PGSSLROOTCERT)",
            e.summary()
        ));
    }
    if let Some(crate::retry::RetryError::<Error>::Exhausted { attempts, .. }) =
        cause.downcast_ref::<crate::retry::RetryError<Error>>()
    {
        return Some(format!(
            "optimistic-concurrency conflict persisted after {attempts} attempt(s); allow more retries (--retries, RetryPolicy::retries) or reduce contention"
        ));
    }
    None
}

fn connect_text(error: &ConnectError) -> Option<String> {
    match error {
        ConnectError::Timeout {
            addr,
            timeout,
            phase,
        } => Some(format!(
            "connecting to {addr} timed out after {} (during {}); check the host, port and network, or raise --connect-timeout",
            humantime::format_duration(*timeout),
            phase.step()
        )),
        ConnectError::Rejected {
            addr, hint, error, ..
        } => Some(format!(
            "connection to {addr} failed: {}{}",
            chain_with(error, &with_flags),
            hint.text("--user")
        )),
        ConnectError::Auth(e) => auth_text(e),
        _ => None,
    }
}

fn auth_text(error: &AuthError) -> Option<String> {
    match error {
        AuthError::NoCredentials(_) => Some(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, pick a profile with --profile or AWS_PROFILE, or run `aws sso login`".to_string(),
        ),
        _ => None,
    }
}

fn is_connection_class(code: &str) -> bool {
    // Connection exceptions, authorization, insufficient resources, and the server going away.
    ["08", "28", "53"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == tokio_postgres::error::SqlState::ADMIN_SHUTDOWN.code()
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

/// Prints the error once, as `dsql-pgx: error: ...`, and returns its exit code.
pub fn report(error: &anyhow::Error) -> Exit {
    if is_broken_pipe(error) {
        return Exit::Success;
    }
    let exit = classify(error);
    let root: &(dyn StdError + 'static) = error.as_ref();
    eprint(format_args!(
        "dsql-pgx: error: {}\n",
        crate::output::escape_control(&chain_with(root, &with_flags))
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
            anyhow::Error::new(ConnectError::Auth(Arc::new(missing()))),
            anyhow::Error::new(Error::from(missing())).context("opening the pool"),
            anyhow::Error::new(Error::from_connect(Arc::new(ConnectError::Auth(Arc::new(
                missing(),
            ))))),
        ];
        for e in wrapped {
            assert_eq!(classify(&e), Exit::Usage, "{e:#}");
            let root: &(dyn StdError + 'static) = e.as_ref();
            let line = chain_with(root, &with_flags);
            assert!(line.contains("--profile or AWS_PROFILE"), "{line}");
        }
        let signing = Error::from(AuthError::Sign("clock".into()));
        assert_eq!(classify(&anyhow::Error::new(signing)), Exit::Connect);
    }

    #[test]
    fn the_binary_names_its_flags_where_the_library_names_settings() {
        let timeout = Error::PoolTimeout(std::time::Duration::from_secs(2));
        assert!(timeout.to_string().contains("PoolSettings::max_size"));
        assert!(!timeout.to_string().contains("--max-conns"));
        assert!(
            with_flags(&timeout)
                .unwrap()
                .contains("(--max-conns, PoolSettings::max_size)")
        );
        let slow = Error::from_connect(Arc::new(ConnectError::Timeout {
            addr: "h:1".into(),
            timeout: std::time::Duration::from_secs(1),
            phase: crate::pool::ConnectPhase::Tls,
        }));
        assert!(matches!(slow, Error::Connect(_)));
        assert!(!slow.to_string().contains("--connect-timeout"), "{slow}");
        assert_eq!(
            with_flags(&slow).unwrap(),
            "connecting to h:1 timed out after 1s (during TLS and authentication); check the \
             host, port and network, or raise --connect-timeout"
        );
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
