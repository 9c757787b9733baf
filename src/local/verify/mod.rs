//! IAM auth-token verification, as Aurora DSQL does it.
//!
//! A token is a SigV4 presigned URL without its scheme: `<host>/?<query>`. Parameters are
//! read by name (never by position), every rule DSQL applies is checked, and finally the
//! signature is recomputed with `aws-sigv4` exactly as `aws-sdk-dsql` computes it and
//! compared in constant time. Errors name the precise reason for the endpoint's log but
//! never contain the token, the signature or any secret.
//!
//! Reading a token (`parse`: its shape and the format of every parameter) is apart from
//! checking it (`check`: user, endpoint, key, time window, signature). A token with
//! faults of both kinds is refused for the first fault of its format.

mod check;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use parse::Token;

/// Longest accepted expiry, in seconds (one week).
pub const MAX_EXPIRES_SECS: u64 = crate::dsql::MAX_TOKEN_LIFETIME.as_secs();
/// How far in the future `X-Amz-Date` may be (clock skew allowance).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
/// Longest token accepted at all; real ones are well under 4 KiB even with a session token.
pub const MAX_TOKEN_LEN: usize = 8192;

const SERVICE: &str = "dsql";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a token was refused. The display form is meant for the endpoint's log: it
/// never includes the token, its signature or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is not `<host>/?<query>` or is otherwise unreadable.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A query parameter appears more than once.
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
    /// A required query parameter is absent.
    #[error("missing parameter {0}")]
    MissingParameter(&'static str),
    /// A query parameter DSQL does not sign.
    #[error("unexpected parameter {0}")]
    UnexpectedParameter(String),
    /// `Action` does not fit the user (`DbConnectAdmin` iff user is `admin`).
    #[error("action {got} is not valid for user {user} (expected {expected})")]
    WrongAction {
        /// User from the startup message (escaped).
        user: String,
        /// Action required for that user.
        expected: &'static str,
        /// Action found in the token (escaped).
        got: String,
    },
    /// `X-Amz-Algorithm` is not `AWS4-HMAC-SHA256`.
    #[error("unsupported signing algorithm {0}")]
    Algorithm(String),
    /// `X-Amz-SignedHeaders` is not exactly `host`.
    #[error("signed headers must be exactly \"host\", got {0}")]
    SignedHeaders(String),
    /// `X-Amz-Credential` is not `<akid>/<date>/<region>/dsql/aws4_request`.
    #[error("bad credential scope: {0}")]
    CredentialScope(&'static str),
    /// The access key id is not known to this endpoint.
    #[error("unknown access key id {0}")]
    UnknownAccessKey(String),
    /// The credential scope names another region.
    #[error("token signed for region {got}, endpoint is in {expected}")]
    WrongRegion {
        /// Endpoint region.
        expected: String,
        /// Region in the token (escaped).
        got: String,
    },
    /// The token's host is not this endpoint's hostname.
    #[error("token signed for host {got}, endpoint is {expected}")]
    WrongHost {
        /// Endpoint hostname.
        expected: String,
        /// Host in the token (escaped).
        got: String,
    },
    /// The TLS server name (SNI) differs from the token's host.
    #[error("TLS server name {sni} does not match token host {host}")]
    SniMismatch {
        /// SNI sent by the client (escaped).
        sni: String,
        /// Host in the token (escaped).
        host: String,
    },
    /// `X-Amz-Date` is not `yyyymmddThhmmssZ`.
    #[error("bad X-Amz-Date")]
    BadDate,
    /// `X-Amz-Date` is too far in the future.
    #[error("token date is {0} s in the future")]
    FutureDate(u64),
    /// `X-Amz-Expires` is not an integer in 1..=604800.
    #[error("bad X-Amz-Expires (must be an integer in 1..=604800)")]
    BadExpires,
    /// The token has expired.
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// The key uses a session token but the token carries none.
    #[error("X-Amz-Security-Token missing for temporary credentials")]
    SecurityTokenMissing,
    /// The token carries a session token but the key has none.
    #[error("X-Amz-Security-Token present but the key has no session token")]
    SecurityTokenUnexpected,
    /// The session token differs from the key's.
    #[error("X-Amz-Security-Token does not match the key's session token")]
    SecurityTokenMismatch,
    /// The signature does not match (wrong secret, or a tampered token).
    #[error("signature mismatch")]
    SignatureMismatch,
    /// The signature could not be recomputed.
    #[error("cannot recompute the signature: {0}")]
    Signing(String),
}

/// Checks DSQL auth tokens for one endpoint (hostname + region) and a set of keys.
#[derive(Clone)]
pub struct TokenVerifier {
    hostname: String,
    region: String,
    keys: HashMap<String, (String, Option<String>)>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hostname", &self.hostname)
            .field("region", &self.region)
            .field("access_key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier for tokens addressed to `hostname` in `region`, with no keys yet.
    pub fn new(hostname: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            region: region.into(),
            keys: HashMap::new(),
        }
    }

    /// Adds (or replaces) a signing key.
    pub fn add_key(
        &mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) {
        self.keys.insert(
            access_key_id.into(),
            (secret_access_key.into(), session_token),
        );
    }

    /// Builder-style [`TokenVerifier::add_key`].
    pub fn with_key(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.add_key(access_key_id, secret_access_key, session_token);
        self
    }

    /// The hostname tokens must be signed for.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The region tokens must be signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Verifies `token` as the password of `user`, given the client's TLS SNI and the
    /// current time. `Ok` means DSQL would have accepted the token. The SNI, when given,
    /// must name the token's host; a connection without SNI is refused by the endpoint
    /// before its token is read, so `None` here checks the token alone.
    pub fn verify(
        &self,
        user: &str,
        token: &str,
        sni: Option<&str>,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        self.check(&Token::parse(token)?, user, sni, now)
    }
}

/// Known-answer tokens and helpers shared by the tests of `parse` and `check`.
#[cfg(test)]
mod fixtures {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_sdk_dsql::auth_token::{AuthTokenGenerator, Config};
    use aws_smithy_async::time::StaticTimeSource;

    use super::TokenVerifier;

    pub(super) const HOST: &str = "peccy.dsql.us-east-1.on.aws";
    pub(super) const KAT: &str = "peccy.dsql.us-east-1.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8";
    pub(super) const KAT_ADMIN: &str = "peccy.dsql.us-east-1.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=267cf8d04d84444f7a62d5bdb40c44bfc6cb13dd6c64fa7f772df6bbaa90fff1";

    pub(super) fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_724_716_800)
    }

    pub(super) fn kat_verifier() -> TokenVerifier {
        TokenVerifier::new(HOST, "us-east-1").with_key("akid", "secret", None)
    }

    pub(super) async fn sdk_token(
        host: &str,
        region: &str,
        creds: Credentials,
        admin: bool,
        expires: u64,
        at: SystemTime,
    ) -> String {
        let sdk = aws_config::SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(creds))
            .time_source(StaticTimeSource::new(at))
            .build();
        let generator = AuthTokenGenerator::new(
            Config::builder()
                .hostname(host)
                .region(aws_config::Region::new(region.to_owned()))
                .expires_in(expires)
                .build()
                .unwrap(),
        );
        let token = if admin {
            generator.db_connect_admin_auth_token(&sdk).await
        } else {
            generator.db_connect_auth_token(&sdk).await
        };
        token.unwrap().to_string()
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt as _, SeedableRng as _};

    use super::fixtures::*;
    use super::*;

    #[test]
    fn errors_never_contain_the_secret_or_signature() {
        let v = TokenVerifier::new(HOST, "us-east-1").with_key("akid", "topsecret", None);
        let err = v.verify("r", KAT, None, t0()).unwrap_err().to_string();
        assert!(
            !err.contains("topsecret") && !err.contains("f5f2ad76"),
            "{err}"
        );
        assert!(!format!("{v:?}").contains("topsecret"));
    }

    #[test]
    fn random_and_truncated_tokens_never_panic() {
        let v = kat_verifier();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for cut in 0..KAT.len() {
            let mut s = KAT[..cut].to_owned();
            assert!(v.verify("r", &s, None, t0()).is_err());
            s.push('%');
            assert!(v.verify("r", &s, None, t0()).is_err());
        }
        let alphabet: &[u8] = b"/?&=%+AaZz09-_.:~#\x00\xff";
        for _ in 0..20_000 {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = if rng.random_bool(0.5) {
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut b = KAT.as_bytes().to_vec();
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..b.len());
                    b[i] = alphabet[rng.random_range(0..alphabet.len())];
                }
                b
            };
            let s = String::from_utf8_lossy(&bytes);
            let user = if rng.random_bool(0.5) { "admin" } else { "r" };
            assert!(v.verify(user, &s, None, t0()).is_err() || s == KAT);
        }
    }

    #[test]
    fn known_answer_vectors_are_accepted() {
        let v = kat_verifier();
        v.verify("myrole", KAT, None, t0()).unwrap();
        v.verify("admin", KAT_ADMIN, Some(HOST), t0()).unwrap();
        v.verify("admin", KAT_ADMIN, None, t0() + Duration::from_secs(450))
            .unwrap();
    }
}
