//! Why a connection could not be opened, and in which phase; why TLS failed.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::{AuthError, chain};
use crate::dsql::{ADMIN_USER, Action};

/// Where opening a connection stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectPhase {
    /// Resolving credentials and signing the token.
    Token,
    /// Resolving the host name.
    Dns,
    /// The TCP connect.
    Tcp,
    /// The TLS handshake.
    Tls,
    /// The PostgreSQL startup (parameters, the database).
    Startup,
    /// Authentication: the server checking the token or password.
    Auth,
    /// Reading the session id once connected.
    Session,
}

impl fmt::Display for ConnectPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectPhase::Token => "token signing",
            ConnectPhase::Dns => "name resolution",
            ConnectPhase::Tcp => "TCP connect",
            ConnectPhase::Tls => "TLS",
            ConnectPhase::Startup => "startup",
            ConnectPhase::Auth => "authentication",
            ConnectPhase::Session => "session id query",
        })
    }
}

impl ConnectPhase {
    /// The phase as a time-out names it: TLS, startup and authentication run as one step.
    pub(crate) fn step(self) -> String {
        match self {
            ConnectPhase::Tls | ConnectPhase::Startup | ConnectPhase::Auth => {
                "TLS and authentication".to_string()
            }
            other => other.to_string(),
        }
    }
}

/// Advice added to a refusal, matched to its error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// None.
    None,
    /// An IAM token was refused for `role` (DSQL gives one message for every cause).
    IamRefused {
        /// The role the connection asked for.
        role: String,
    },
    /// The token was accepted but `role` does not exist (or is not granted to the identity).
    RoleMissing {
        /// The role the connection asked for.
        role: String,
    },
    /// A startup parameter is not on DSQL's allow-list.
    AllowList,
}

impl Hint {
    /// Sorts a refusal with SQLSTATE `code` and `message`, for `role`, signed with IAM or not.
    fn for_refusal(code: &str, message: &str, role: &str, iam: bool) -> Hint {
        if code == SqlState::FEATURE_NOT_SUPPORTED.code() {
            return Hint::AllowList;
        }
        if !iam || !code.starts_with("28") {
            return Hint::None;
        }
        let role = role.to_string();
        if message.starts_with("role ") && message.ends_with(" does not exist") {
            Hint::RoleMissing { role }
        } else {
            Hint::IamRefused { role }
        }
    }

    /// The advice, `user` naming how the role is set (`--user`, or the setting).
    pub fn text(&self, user: &str) -> String {
        let grant = |role: &str| {
            format!(
                "as {ADMIN_USER}: CREATE ROLE {role} WITH LOGIN; AWS IAM GRANT {role} TO '<IAM role ARN>'"
            )
        };
        match self {
            Hint::None => String::new(),
            Hint::RoleMissing { role } => {
                let role = quote_ident(role);
                format!(
                    "; create role {role} and grant it to your IAM identity ({})",
                    grant(&role)
                )
            }
            Hint::IamRefused { role } if role == ADMIN_USER => format!(
                "; check the system clock, the AWS credentials and the region ({ADMIN_USER} needs \
                 a {} token)",
                Action::DbConnectAdmin.as_str()
            ),
            Hint::IamRefused { role } => {
                let role = quote_ident(role);
                format!(
                    "; check that role {role} ({user}) exists and is granted to your IAM identity \
                     ({}), then the system clock, the AWS credentials and the region",
                    grant(&role)
                )
            }
            Hint::AllowList => "; a startup parameter is not on DSQL's allow-list".to_string(),
        }
    }
}

/// A role name as SQL names it: bare when PostgreSQL would keep it as typed, else quoted.
fn quote_ident(name: &str) -> String {
    let bare = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The token could not be signed.
    #[error(transparent)]
    Auth(Arc<AuthError>),
    /// Name resolution or the TCP connect failed.
    #[error("cannot reach {addr}")]
    Tcp {
        /// host:port
        addr: String,
        /// [`ConnectPhase::Dns`] or [`ConnectPhase::Tcp`].
        phase: ConnectPhase,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A phase did not finish within the connect timeout.
    #[error("connecting to {addr} timed out after {} (during {}); check the host, port and network, or raise the connect timeout", humantime::format_duration(*timeout), phase.step())]
    Timeout {
        /// host:port
        addr: String,
        /// The configured timeout.
        timeout: Duration,
        /// Which phase was running.
        phase: ConnectPhase,
    },
    /// TLS, the PostgreSQL startup or authentication failed.
    #[error("connection to {addr} failed: {}{}", chain(error), hint.text("the user"))]
    Rejected {
        /// host:port
        addr: String,
        /// [`ConnectPhase::Tls`], [`ConnectPhase::Auth`] (SQLSTATE class 28) or
        /// [`ConnectPhase::Startup`].
        phase: ConnectPhase,
        /// Advice, for authentication failures and allow-list refusals.
        hint: Hint,
        /// The driver's error (already part of the message, so not a `source`).
        error: tokio_postgres::Error,
    },
    /// The connection opened but identifying its session failed.
    #[error("cannot read the session id on {addr}")]
    Session {
        /// host:port
        addr: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An idle connection belongs to an older generation (internal: it is closed and replaced).
    #[doc(hidden)]
    #[error("connection retired by a refresh")]
    Retired,
    /// An idle connection was found closed (internal: it is closed and replaced).
    #[doc(hidden)]
    #[error("connection closed")]
    Closed,
    /// An idle connection reached its maximum lifetime (internal: it is closed and replaced).
    #[doc(hidden)]
    #[error("connection reached its maximum lifetime")]
    Expired,
}

impl ConnectError {
    /// Where opening the connection stopped.
    pub fn phase(&self) -> ConnectPhase {
        match self {
            ConnectError::Auth(_) => ConnectPhase::Token,
            ConnectError::Tcp { phase, .. }
            | ConnectError::Timeout { phase, .. }
            | ConnectError::Rejected { phase, .. } => *phase,
            ConnectError::Session { .. } => ConnectPhase::Session,
            ConnectError::Retired | ConnectError::Closed | ConnectError::Expired => {
                ConnectPhase::Startup
            }
        }
    }

    /// The TLS failure, when the handshake or the certificate was the problem.
    pub fn tls_error(&self) -> Option<&TlsError> {
        match self {
            ConnectError::Rejected { error, .. } => {
                std::error::Error::source(error)?.downcast_ref::<TlsError>()
            }
            _ => None,
        }
    }

    /// The driver's error, for a refusal or a failed session query.
    pub fn driver_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Rejected { error, .. } => Some(error),
            ConnectError::Session { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The SQLSTATE the server refused with, if it did.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        self.driver_error().and_then(tokio_postgres::Error::code)
    }

    /// The server refused the connection for a limit that lifts by itself: too many
    /// connections (SQLSTATE 53300) or too many new connections per second (53400).
    /// Worth retrying after a pause, unlike authentication, TLS or configuration errors.
    pub fn is_limit(&self) -> bool {
        matches!(self, ConnectError::Rejected { .. })
            && matches!(
                self.sqlstate(),
                Some(&SqlState::TOO_MANY_CONNECTIONS | &SqlState::CONFIGURATION_LIMIT_EXCEEDED)
            )
    }

    /// Sorts a driver error from connecting: TLS, authentication (class 28) or startup.
    pub(crate) fn rejected(
        addr: &str,
        role: &str,
        iam: bool,
        error: tokio_postgres::Error,
    ) -> ConnectError {
        let code = error.code().map(SqlState::code).unwrap_or_default();
        let tls = std::error::Error::source(&error).is_some_and(|e| e.is::<TlsError>());
        let phase = if tls {
            ConnectPhase::Tls
        } else if code.starts_with("28") {
            ConnectPhase::Auth
        } else {
            ConnectPhase::Startup
        };
        let message = error.as_db_error().map_or("", |e| e.message());
        let hint = if tls {
            Hint::None
        } else {
            Hint::for_refusal(code, message, role, iam)
        };
        ConnectError::Rejected {
            addr: addr.to_string(),
            phase,
            hint,
            error,
        }
    }
}

/// A certificate or handshake failure, naming the host and the trusted CA set.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", if *.certificate { "; pass the server's CA as a CA file (sslrootcert)" } else { "" })]
pub struct TlsError {
    pub(crate) message: String,
    pub(crate) certificate: bool,
    // Kept for callers that inspect it; its text is already part of `message`.
    pub(crate) source: io::Error,
}

impl TlsError {
    /// What failed, without advice.
    pub fn summary(&self) -> &str {
        &self.message
    }

    /// Whether the server's certificate was rejected (rather than the handshake failing).
    pub fn is_certificate(&self) -> bool {
        self.certificate
    }

    /// The underlying I/O error from the handshake.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(code: &str, message: &str, role: &str, iam: bool) -> String {
        Hint::for_refusal(code, message, role, iam).text("--user")
    }

    #[test]
    fn hints_match_the_error() {
        // A missing role: the role and how to grant it, not the clock.
        let h = hint("28000", "role \"app\" does not exist", "app", true);
        assert!(h.contains("AWS IAM GRANT app TO '<IAM role ARN>'"), "{h}");
        assert!(h.contains("CREATE ROLE app WITH LOGIN"), "{h}");
        assert!(!h.contains("clock"), "{h}");
        // DSQL's one message for any refusal: the role first for a custom role.
        let h = hint(
            "28000",
            "IAM authentication failed for user \"App\"",
            "App",
            true,
        );
        assert!(h.contains("AWS IAM GRANT \"App\" TO"), "{h}");
        assert!(h.contains("clock") && h.contains("--user"), "{h}");
        let h = hint("28P01", "IAM authentication failed", "admin", true);
        assert!(h.contains("clock") && !h.contains("GRANT"), "{h}");
        assert!(h.contains("DbConnectAdmin"), "{h}");
        // Without IAM a password failure is PostgreSQL's own business.
        assert_eq!(
            hint("28P01", "password authentication failed", "u", false),
            ""
        );
        assert!(hint("0A000", "", "admin", true).contains("allow-list"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
