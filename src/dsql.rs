//! DSQL's rules, one source each: the admin role and its token action, the longest token
//! lifetime, the connection age limit.
//!
//! Everything that signs, checks or explains a token refers here: the signer, the settings'
//! validation, the local endpoint's verifier, and the advice on a refused login.

use std::time::Duration;

/// The built-in role that needs a `DbConnectAdmin` token; every other role gets `DbConnect`.
pub const ADMIN_USER: &str = "admin";
/// The longest token lifetime DSQL accepts (one week).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// DSQL closes every connection after an hour; a pool must retire them before that.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60 * 60);

/// The two token kinds DSQL knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// For any role but `admin`.
    DbConnect,
    /// For the built-in `admin` role.
    DbConnectAdmin,
}

impl Action {
    /// The action for a role: admin exactly when the user is `admin`.
    pub fn for_user(user: &str) -> Action {
        if user == ADMIN_USER {
            Action::DbConnectAdmin
        } else {
            Action::DbConnect
        }
    }

    /// The `Action` query parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::DbConnect => "DbConnect",
            Action::DbConnectAdmin => "DbConnectAdmin",
        }
    }
}
