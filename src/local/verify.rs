//! IAM auth-token verification, as Aurora DSQL does it.
//!
//! A token is a SigV4 presigned URL without its scheme: `<host>/?<query>`. Parameters are
//! read by name (never by position), every rule DSQL applies is checked, and finally the
//! signature is recomputed with `aws-sigv4` exactly as `aws-sdk-dsql` computes it and
//! compared in constant time. Errors name the precise reason for the endpoint's log but
//! never contain the token, the signature or any secret.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use subtle::ConstantTimeEq as _;

/// Longest accepted expiry, in seconds (one week).
pub const MAX_EXPIRES_SECS: u64 = crate::auth::MAX_TOKEN_LIFETIME.as_secs();
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

/// The parameters of a token, by name.
#[derive(Default)]
struct Params {
    action: Option<String>,
    algorithm: Option<String>,
    credential: Option<String>,
    date: Option<String>,
    expires: Option<String>,
    signed_headers: Option<String>,
    signature: Option<String>,
    security_token: Option<String>,
}

/// Escapes and shortens untrusted text before it goes into an error message.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn parse_params(query: &str) -> Result<Params, VerifyError> {
    let mut p = Params::default();
    if query.is_empty() {
        return Err(VerifyError::Malformed("empty query"));
    }
    for pair in query.split('&') {
        let (raw_name, raw_value) = pair
            .split_once('=')
            .ok_or(VerifyError::Malformed("query parameter without '='"))?;
        let name =
            form_decode(raw_name).ok_or(VerifyError::Malformed("bad percent-encoding in name"))?;
        let value = form_decode(raw_value)
            .ok_or(VerifyError::Malformed("bad percent-encoding in value"))?;
        let slot = match name.as_str() {
            "Action" => &mut p.action,
            "X-Amz-Algorithm" => &mut p.algorithm,
            "X-Amz-Credential" => &mut p.credential,
            "X-Amz-Date" => &mut p.date,
            "X-Amz-Expires" => &mut p.expires,
            "X-Amz-SignedHeaders" => &mut p.signed_headers,
            "X-Amz-Signature" => &mut p.signature,
            "X-Amz-Security-Token" => &mut p.security_token,
            _ => return Err(VerifyError::UnexpectedParameter(shown(&name))),
        };
        if slot.is_some() {
            return Err(VerifyError::DuplicateParameter(name));
        }
        *slot = Some(value);
    }
    Ok(p)
}

fn required(v: Option<String>, name: &'static str) -> Result<String, VerifyError> {
    v.ok_or(VerifyError::MissingParameter(name))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `yyyymmddThhmmssZ` into a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    // Bytes, not `&s[r]`: the token is client input, and a multi-byte character may sit
    // across any of these boundaries (found by fuzzing).
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, min, sec) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = u64::try_from(days).ok()? * 86_400
        + u64::from(hour) * 3600
        + u64::from(min) * 60
        + u64::from(sec);
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A host name as it may appear in a token: letters, digits, `-`, `.`, `_`, and `[`/`:`/`]`
/// for IPv6 literals. Anything else cannot be a valid signed host.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
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
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Malformed("token too long"));
        }
        if token.contains("://") {
            return Err(VerifyError::Malformed("token must not carry a URL scheme"));
        }
        let (host, query) = token
            .split_once("/?")
            .ok_or(VerifyError::Malformed("expected <host>/?<query>"))?;
        if !plausible_host(host) {
            return Err(VerifyError::Malformed("invalid host"));
        }
        if query.contains('#') {
            return Err(VerifyError::Malformed("fragment in token"));
        }
        let p = parse_params(query)?;

        let action = required(p.action, "Action")?;
        let algorithm = required(p.algorithm, "X-Amz-Algorithm")?;
        let credential = required(p.credential, "X-Amz-Credential")?;
        let date = required(p.date, "X-Amz-Date")?;
        let expires = required(p.expires, "X-Amz-Expires")?;
        let signed_headers = required(p.signed_headers, "X-Amz-SignedHeaders")?;
        let signature = required(p.signature, "X-Amz-Signature")?;

        let expected_action = crate::auth::Action::for_user(user).as_str();
        if action != expected_action {
            return Err(VerifyError::WrongAction {
                user: shown(user),
                expected: expected_action,
                got: shown(&action),
            });
        }
        if algorithm != ALGORITHM {
            return Err(VerifyError::Algorithm(shown(&algorithm)));
        }
        if signed_headers != "host" {
            return Err(VerifyError::SignedHeaders(shown(&signed_headers)));
        }

        let scope: Vec<&str> = credential.split('/').collect();
        let [akid, scope_date, scope_region, service, terminator] = scope[..] else {
            return Err(VerifyError::CredentialScope(
                "expected <akid>/<date>/<region>/dsql/aws4_request",
            ));
        };
        if service != SERVICE {
            return Err(VerifyError::CredentialScope("service is not dsql"));
        }
        if terminator != "aws4_request" {
            return Err(VerifyError::CredentialScope("does not end in aws4_request"));
        }
        if scope_region != self.region {
            return Err(VerifyError::WrongRegion {
                expected: self.region.clone(),
                got: shown(scope_region),
            });
        }
        let signed_at = parse_amz_date(&date).ok_or(VerifyError::BadDate)?;
        if scope_date.len() != 8 || !date.starts_with(scope_date) {
            return Err(VerifyError::CredentialScope(
                "date differs from X-Amz-Date's date",
            ));
        }
        let (secret, session_token) = self
            .keys
            .get(akid)
            .ok_or_else(|| VerifyError::UnknownAccessKey(shown(akid)))?;

        if !host.eq_ignore_ascii_case(&self.hostname) {
            return Err(VerifyError::WrongHost {
                expected: self.hostname.clone(),
                got: shown(host),
            });
        }
        if let Some(sni) = sni
            && !sni.eq_ignore_ascii_case(host)
        {
            return Err(VerifyError::SniMismatch {
                sni: shown(sni),
                host: shown(host),
            });
        }

        if let Ok(ahead) = signed_at.duration_since(now)
            && ahead > MAX_FUTURE_SKEW
        {
            return Err(VerifyError::FutureDate(ahead.as_secs()));
        }
        if expires.is_empty() || expires.len() > 7 || !expires.bytes().all(|c| c.is_ascii_digit()) {
            return Err(VerifyError::BadExpires);
        }
        let expires_secs: u64 = expires.parse().map_err(|_| VerifyError::BadExpires)?;
        if !(1..=MAX_EXPIRES_SECS).contains(&expires_secs) {
            return Err(VerifyError::BadExpires);
        }
        let expires_at = signed_at + Duration::from_secs(expires_secs);
        if let Ok(ago) = now.duration_since(expires_at)
            && ago > Duration::ZERO
        {
            return Err(VerifyError::Expired(ago.as_secs().max(1)));
        }

        match (session_token, p.security_token.as_deref()) {
            (None, None) => {}
            (Some(_), None) => return Err(VerifyError::SecurityTokenMissing),
            (None, Some(_)) => return Err(VerifyError::SecurityTokenUnexpected),
            (Some(expected), Some(got)) => {
                if !bool::from(expected.as_bytes().ct_eq(got.as_bytes())) {
                    return Err(VerifyError::SecurityTokenMismatch);
                }
            }
        }

        let computed = compute_signature(
            host,
            &action,
            akid,
            secret,
            session_token.clone(),
            &self.region,
            signed_at,
            expires_secs,
        )?;
        if bool::from(computed.as_bytes().ct_eq(signature.as_bytes())) {
            Ok(())
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

/// Recomputes the presigned-URL signature the way `aws-sdk-dsql`'s `AuthTokenGenerator` does.
#[allow(clippy::too_many_arguments)]
fn compute_signature(
    host: &str,
    action: &str,
    akid: &str,
    secret: &str,
    session_token: Option<String>,
    region: &str,
    time: SystemTime,
    expires_secs: u64,
) -> Result<String, VerifyError> {
    let identity = Credentials::new(akid, secret, session_token, None, "dsql-pgx-local").into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(Duration::from_secs(expires_secs));
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| VerifyError::Signing(e.to_string()))?;
    let url = format!("https://{host}/?Action={action}");
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| VerifyError::Signing(e.to_string()))?;
    let (_, signature) = sign(request, &params.into())
        .map_err(|e| VerifyError::Signing(e.to_string()))?
        .into_parts();
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_with_multibyte_characters_are_refused_not_a_panic() {
        assert!(parse_amz_date("20240827T000000Z").is_some());
        let valid = "20240827T000000Z";
        for ch in ['О', '€', '😀'] {
            let width = ch.len_utf8();
            for at in 0..=valid.len() - width {
                let mut bytes = valid.as_bytes().to_vec();
                let mut buf = [0u8; 4];
                bytes.splice(at..at + width, ch.encode_utf8(&mut buf).bytes());
                let text = String::from_utf8(bytes).unwrap();
                assert_eq!(text.len(), 16);
                assert_eq!(parse_amz_date(&text), None, "{text:?}");
            }
        }
        // The input the fuzzer found, as a whole token.
        let v = kat_verifier();
        let token = KAT.replace("20240827T000000Z", "20nОw27T0\0C000Z");
        assert!(v.verify("r", &token, None, t0()).is_err());
    }
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_sdk_dsql::auth_token::{AuthTokenGenerator, Config};
    use aws_smithy_async::time::StaticTimeSource;
    use rand::{RngExt as _, SeedableRng as _};

    const HOST: &str = "peccy.dsql.us-east-1.on.aws";
    const KAT: &str = "peccy.dsql.us-east-1.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8";
    const KAT_ADMIN: &str = "peccy.dsql.us-east-1.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=267cf8d04d84444f7a62d5bdb40c44bfc6cb13dd6c64fa7f772df6bbaa90fff1";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_724_716_800)
    }

    fn kat_verifier() -> TokenVerifier {
        TokenVerifier::new(HOST, "us-east-1").with_key("akid", "secret", None)
    }

    async fn sdk_token(
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

    #[test]
    fn known_answer_vectors_are_accepted() {
        let v = kat_verifier();
        v.verify("myrole", KAT, None, t0()).unwrap();
        v.verify("admin", KAT_ADMIN, Some(HOST), t0()).unwrap();
        v.verify("admin", KAT_ADMIN, None, t0() + Duration::from_secs(450))
            .unwrap();
    }

    #[test]
    fn wrong_action_for_user_is_rejected_both_ways() {
        let v = kat_verifier();
        assert!(matches!(
            v.verify("admin", KAT, None, t0()),
            Err(VerifyError::WrongAction {
                expected: "DbConnectAdmin",
                ..
            })
        ));
        assert!(matches!(
            v.verify("myrole", KAT_ADMIN, None, t0()),
            Err(VerifyError::WrongAction {
                expected: "DbConnect",
                ..
            })
        ));
    }

    #[test]
    fn wrong_secret_region_host_and_sni_are_rejected() {
        let wrong_secret = TokenVerifier::new(HOST, "us-east-1").with_key("akid", "other", None);
        assert_eq!(
            wrong_secret.verify("r", KAT, None, t0()),
            Err(VerifyError::SignatureMismatch)
        );
        let wrong_region = TokenVerifier::new(HOST, "us-west-2").with_key("akid", "secret", None);
        assert!(matches!(
            wrong_region.verify("r", KAT, None, t0()),
            Err(VerifyError::WrongRegion { .. })
        ));
        let other_host =
            TokenVerifier::new("localhost", "us-east-1").with_key("akid", "secret", None);
        assert!(matches!(
            other_host.verify("r", KAT, None, t0()),
            Err(VerifyError::WrongHost { .. })
        ));
        assert!(matches!(
            kat_verifier().verify("r", KAT, Some("localhost"), t0()),
            Err(VerifyError::SniMismatch { .. })
        ));
        let unknown = TokenVerifier::new(HOST, "us-east-1").with_key("other", "secret", None);
        assert!(matches!(
            unknown.verify("r", KAT, None, t0()),
            Err(VerifyError::UnknownAccessKey(_))
        ));
    }

    #[test]
    fn host_and_sni_compare_case_insensitively() {
        kat_verifier()
            .verify("r", KAT, Some("PECCY.dsql.us-east-1.on.aws"), t0())
            .unwrap();
        TokenVerifier::new("Peccy.DSQL.us-east-1.on.aws", "us-east-1")
            .with_key("akid", "secret", None)
            .verify("r", KAT, None, t0())
            .unwrap();
    }

    #[test]
    fn time_window_is_enforced() {
        let v = kat_verifier();
        assert_eq!(
            v.verify("r", KAT, None, t0() + Duration::from_secs(451)),
            Err(VerifyError::Expired(1))
        );
        v.verify("r", KAT, None, t0() - Duration::from_secs(300))
            .unwrap();
        assert_eq!(
            v.verify("r", KAT, None, t0() - Duration::from_secs(301)),
            Err(VerifyError::FutureDate(301))
        );
    }

    #[test]
    fn expires_bounds_are_enforced() {
        let v = kat_verifier();
        for bad in [
            "604801",
            "0",
            "-1",
            "abc",
            "",
            "99999999999999999999",
            "1.5",
        ] {
            let token = KAT.replace("X-Amz-Expires=450", &format!("X-Amz-Expires={bad}"));
            assert_eq!(
                v.verify("r", &token, None, t0()),
                Err(VerifyError::BadExpires),
                "{bad}"
            );
        }
        // In range but different from what was signed: the signature catches it.
        let token = KAT.replace("X-Amz-Expires=450", "X-Amz-Expires=604800");
        assert_eq!(
            v.verify("r", &token, None, t0()),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn tampering_is_rejected() {
        let v = kat_verifier();
        let sig = KAT.replace("a3f8", "a3f9");
        assert_eq!(
            v.verify("r", &sig, None, t0()),
            Err(VerifyError::SignatureMismatch)
        );
        let date = KAT.replace("T000000Z", "T000001Z");
        assert_eq!(
            v.verify("r", &date, None, t0()),
            Err(VerifyError::SignatureMismatch)
        );
        let short_sig = KAT.replace("a3f8", "");
        assert_eq!(
            v.verify("r", &short_sig, None, t0()),
            Err(VerifyError::SignatureMismatch)
        );
        let scope_date = KAT.replace("%2F20240827%2F", "%2F20240828%2F");
        assert!(matches!(
            v.verify("r", &scope_date, None, t0()),
            Err(VerifyError::CredentialScope(_))
        ));
        let headers = KAT.replace("SignedHeaders=host", "SignedHeaders=host%3Bx-amz-date");
        assert!(matches!(
            v.verify("r", &headers, None, t0()),
            Err(VerifyError::SignedHeaders(_))
        ));
        let algo = KAT.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1");
        assert!(matches!(
            v.verify("r", &algo, None, t0()),
            Err(VerifyError::Algorithm(_))
        ));
        let extra = format!("{KAT}&foo=bar");
        assert!(matches!(
            v.verify("r", &extra, None, t0()),
            Err(VerifyError::UnexpectedParameter(_))
        ));
    }

    #[test]
    fn garbage_missing_and_duplicate_params_are_rejected() {
        let v = kat_verifier();
        for garbage in [
            "",
            "x",
            "/?",
            "hunter2",
            "https://",
            &format!("https://{KAT}"),
        ] {
            assert!(
                matches!(
                    v.verify("r", garbage, None, t0()),
                    Err(VerifyError::Malformed(_))
                ),
                "{garbage:?}"
            );
        }
        let missing = KAT.replace("&X-Amz-Expires=450", "");
        assert_eq!(
            v.verify("r", &missing, None, t0()),
            Err(VerifyError::MissingParameter("X-Amz-Expires"))
        );
        let missing_sig = KAT.split("&X-Amz-Signature").next().unwrap().to_owned();
        assert_eq!(
            v.verify("r", &missing_sig, None, t0()),
            Err(VerifyError::MissingParameter("X-Amz-Signature"))
        );
        let dup = format!("{KAT}&Action=DbConnect");
        assert_eq!(
            v.verify("r", &dup, None, t0()),
            Err(VerifyError::DuplicateParameter("Action".into()))
        );
        let dup_encoded = format!("{KAT}&%41ction=DbConnect");
        assert_eq!(
            v.verify("r", &dup_encoded, None, t0()),
            Err(VerifyError::DuplicateParameter("Action".into()))
        );
    }

    #[test]
    fn parameters_are_read_by_name_not_position() {
        let (host, query) = KAT.split_once("/?").unwrap();
        let mut pairs: Vec<&str> = query.split('&').collect();
        pairs.reverse();
        let reordered = format!("{host}/?{}", pairs.join("&"));
        kat_verifier().verify("r", &reordered, None, t0()).unwrap();
    }

    #[tokio::test]
    async fn sdk_tokens_with_session_token_are_accepted_in_any_order() {
        let now = SystemTime::now();
        let session = "FwoGZXIvYXdzEJr//////////wEaDH+session/token==";
        let creds = Credentials::new("ASIAEXAMPLE", "s3cr3t", Some(session.into()), None, "t");
        let token = sdk_token("localhost", "eu-west-1", creds, false, 900, now).await;
        // The Rust SDK appends the security token after the signature.
        let sig_pos = token.find("X-Amz-Signature=").unwrap();
        let tok_pos = token.find("X-Amz-Security-Token=").unwrap();
        assert!(tok_pos > sig_pos, "{token}");
        let v = TokenVerifier::new("localhost", "eu-west-1").with_key(
            "ASIAEXAMPLE",
            "s3cr3t",
            Some(session.into()),
        );
        v.verify("r", &token, Some("localhost"), now).unwrap();

        // boto3 order: security token before the signature, otherwise alphabetical.
        let (host, query) = token.split_once("/?").unwrap();
        let mut pairs: Vec<&str> = query.split('&').collect();
        let sig = pairs
            .iter()
            .position(|p| p.starts_with("X-Amz-Signature="))
            .unwrap();
        let sig = pairs.remove(sig);
        pairs.push(sig);
        let boto = format!("{host}/?{}", pairs.join("&"));
        assert!(
            boto.find("X-Amz-Security-Token=").unwrap() < boto.find("X-Amz-Signature=").unwrap()
        );
        v.verify("r", &boto, None, now).unwrap();

        // Without or with another session token: refused.
        let without = format!(
            "{host}/?{}",
            pairs
                .iter()
                .filter(|p| !p.starts_with("X-Amz-Security-Token="))
                .copied()
                .collect::<Vec<_>>()
                .join("&")
        );
        assert_eq!(
            v.verify("r", &without, None, now),
            Err(VerifyError::SecurityTokenMissing)
        );
        let other = TokenVerifier::new("localhost", "eu-west-1").with_key(
            "ASIAEXAMPLE",
            "s3cr3t",
            Some("another".into()),
        );
        assert_eq!(
            other.verify("r", &token, None, now),
            Err(VerifyError::SecurityTokenMismatch)
        );
        let long_term =
            TokenVerifier::new("localhost", "eu-west-1").with_key("ASIAEXAMPLE", "s3cr3t", None);
        assert_eq!(
            long_term.verify("r", &token, None, now),
            Err(VerifyError::SecurityTokenUnexpected)
        );
    }

    #[tokio::test]
    async fn sdk_tokens_match_the_verifier() {
        let now = SystemTime::now();
        let creds = Credentials::new("AKIAEXAMPLE", "s3cr3t", None, None, "t");
        let v =
            TokenVerifier::new("localhost", "us-east-1").with_key("AKIAEXAMPLE", "s3cr3t", None);
        let admin = sdk_token("localhost", "us-east-1", creds.clone(), true, 900, now).await;
        v.verify("admin", &admin, Some("localhost"), now).unwrap();
        let user = sdk_token("localhost", "us-east-1", creds.clone(), false, 604_800, now).await;
        v.verify("app", &user, None, now + Duration::from_secs(604_000))
            .unwrap();
        let over = sdk_token("localhost", "us-east-1", creds.clone(), false, 604_801, now).await;
        assert_eq!(
            v.verify("app", &over, None, now),
            Err(VerifyError::BadExpires)
        );
        let future = sdk_token(
            "localhost",
            "us-east-1",
            creds,
            false,
            900,
            now + Duration::from_secs(3600),
        )
        .await;
        assert!(matches!(
            v.verify("app", &future, None, now),
            Err(VerifyError::FutureDate(_))
        ));
    }

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
    fn amz_dates_parse_strictly() {
        assert_eq!(parse_amz_date("20240827T000000Z"), Some(t0()));
        assert_eq!(
            parse_amz_date("20000229T235959Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
        );
        for bad in [
            "20230229T000000Z",
            "20241301T000000Z",
            "20240827T240000Z",
            "20240827 000000Z",
            "2024082T0000000Z",
            "+0240827T000000Z",
            "20240827T000000",
            "２０２４0827T000000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
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
}
