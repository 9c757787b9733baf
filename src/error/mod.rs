//! The library's errors, and how a cause chain is written on one line.
//!
//! Every error type lives here, below the modules that raise them, so that imports point one
//! way: `auth` raises [`AuthError`], `tls` [`TlsError`], `pool` [`ConnectError`], `retry`
//! reports a [`ConflictKind`].
//!
//! [`Error`] is what every fallible public function returns. A configuration problem is a
//! [`ConfigError`]; the others carry what went wrong where (the connect phase, the server's
//! SQLSTATE, the attempts an optimistic-concurrency retry made). [`chain`] renders any error
//! with its causes as `outer: inner: innermost`, database errors from their fields.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

mod connect;

pub use self::connect::{ConnectError, ConnectPhase, Hint, TlsError};

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials could be resolved.
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, pick a profile with --profile or AWS_PROFILE, or run `aws sso login`"
    )]
    NoCredentials(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The credentials resolved but cannot make a token (one far too long to be a URL).
    #[error("the AWS credentials cannot sign a token: {0}")]
    Unusable(String),
    /// Signing itself failed.
    #[error("cannot sign an auth token")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Which optimistic-concurrency conflict DSQL reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictKind {
    /// `OC000`: data the transaction read or wrote changed.
    Data,
    /// `OC001`: the schema changed.
    Schema,
    /// SQLSTATE 40001 without an `OC` code (plain PostgreSQL's serialization failure).
    Serialization,
}

impl ConflictKind {
    /// `OC000`, `OC001`, or `None` for a bare serialization failure.
    pub fn code(self) -> Option<&'static str> {
        match self {
            ConflictKind::Data => Some("OC000"),
            ConflictKind::Schema => Some("OC001"),
            ConflictKind::Serialization => None,
        }
    }
}

/// What the library's fallible functions return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, one variant per kind a caller handles differently.
///
/// ```no_run
/// # async fn demo(pool: dsql_pgx::Pool) {
/// match pool.get().await {
///     Ok(conn) => drop(conn),
///     Err(dsql_pgx::Error::Credentials(e)) => eprintln!("fix the AWS credentials: {e}"),
///     Err(dsql_pgx::Error::Authentication(e)) => eprintln!("token refused: {e}"),
///     Err(dsql_pgx::Error::Connect(e)) => eprintln!("network, during {}: {e}", e.phase()),
///     Err(dsql_pgx::Error::PoolTimeout(waited)) => eprintln!("pool busy for {waited:?}"),
///     Err(other) => eprintln!("{}", dsql_pgx::error::chain(&other)),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting cannot be used; nothing was attempted.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// AWS credentials could not be resolved, or a token could not be signed with them.
    #[error(transparent)]
    Credentials(Arc<AuthError>),
    /// A connection could not be opened: name resolution, TCP, a time-out, or the server
    /// refusing the startup (a database that does not exist, a connection limit).
    /// [`ConnectError::phase`] says where.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// The TLS handshake failed or the certificate was not trusted
    /// ([`ConnectError::tls_error`] has the details).
    #[error(transparent)]
    Tls(Arc<ConnectError>),
    /// The server refused the credentials (SQLSTATE class 28: a token for another host,
    /// region or role, an expired token, a role that does not exist).
    #[error(transparent)]
    Authentication(Arc<ConnectError>),
    /// The database reported an error for a statement; [`Error::sqlstate`] gives its code.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection became free within this long.
    #[error(
        "no pooled connection became free within {}; raise the pool's size (PoolSettings::max_size)",
        humantime::format_duration(*.0)
    )]
    PoolTimeout(Duration),
    /// Optimistic-concurrency conflicts outlasted the retry policy.
    #[error(
        "optimistic-concurrency conflict persisted after {attempts} attempt(s); allow more retries (RetryPolicy::retries) or reduce contention"
    )]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last conflict's kind.
        kind: ConflictKind,
        /// The last conflict.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// The SQLSTATE the server sent, if this error carries one (a statement's error, or a
    /// refusal while connecting).
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Error::Db(e) => e.code(),
            Error::Connect(e) | Error::Authentication(e) | Error::Tls(e) => e.sqlstate(),
            Error::RetriesExhausted { last, .. } => last.sqlstate(),
            _ => None,
        }
    }

    /// The driver's error underneath, if any.
    pub fn as_db_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Db(e) => Some(e),
            Error::Connect(e) | Error::Authentication(e) | Error::Tls(e) => e.driver_error(),
            Error::RetriesExhausted { last, .. } => last.as_db_error(),
            _ => None,
        }
    }

    /// Sorts a connection failure into its variant.
    pub(crate) fn from_connect(error: Arc<ConnectError>) -> Error {
        if let ConnectError::Auth(auth) = &*error {
            return Error::Credentials(auth.clone());
        }
        if error.tls_error().is_some() {
            return Error::Tls(error);
        }
        match error.phase() {
            ConnectPhase::Auth => Error::Authentication(error),
            _ => Error::Connect(error),
        }
    }
}

impl From<AuthError> for Error {
    fn from(error: AuthError) -> Error {
        Error::Credentials(Arc::new(error))
    }
}

/// A setting that cannot be used, and why (one line, naming the setting and the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// A configuration error with this message.
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// The cause chain on one line, `outer: inner: innermost`, with database errors rendered
/// from their fields (SQLSTATE, message, then DETAIL and HINT on their own lines).
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    chain_with(error, &|_| None)
}

/// [`chain`], with `text` able to word a cause its own way (the binary names its flags).
/// A cause it words ends the chain: its text covers its sources.
#[doc(hidden)]
pub fn chain_with(
    error: &(dyn StdError + 'static),
    word: &dyn Fn(&(dyn StdError + 'static)) -> Option<String>,
) -> String {
    let mut line = String::new();
    let mut extra = String::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut last = String::new();
    while let Some(cause) = current {
        let text = if let Some(db) = db_error(cause) {
            current = None;
            render_db_error(db, &mut extra)
        } else if let Some(own) = word(cause) {
            current = cause.source();
            own
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

/// The server's error behind `cause`: a `DbError`, or a driver or library error holding one.
fn db_error<'a>(cause: &'a (dyn StdError + 'static)) -> Option<&'a tokio_postgres::error::DbError> {
    if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
        return Some(db);
    }
    let driver = cause.downcast_ref::<tokio_postgres::Error>().or_else(|| {
        let library = cause
            .downcast_ref::<Error>()
            .or_else(|| cause.downcast_ref::<Box<Error>>().map(|e| &**e));
        match library {
            Some(Error::Db(e)) => Some(e),
            _ => None,
        }
    });
    driver.and_then(tokio_postgres::Error::as_db_error)
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

/// A user's value quoted for a message, cut short when it is long (a 70,000-character
/// value makes a line nobody reads).
pub(crate) fn shown(value: &str) -> String {
    const KEEP: usize = 64;
    let length = value.chars().count();
    if length <= KEEP {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(KEEP).collect();
        format!("{head:?}... ({length} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn long_values_are_cut_short_in_messages() {
        assert_eq!(shown("us-east-1"), "\"us-east-1\"");
        let long = shown(&"é".repeat(70_000));
        assert!(long.ends_with("... (70000 characters)"), "{long}");
        assert!(long.chars().count() < 100, "{long}");
    }
}
