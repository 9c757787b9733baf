//! Reading a token into its parts: the `<host>/?<query>` shape, the query parameters by
//! name, and the format of each (algorithm, signed headers, credential scope, date,
//! expiry). Nothing here depends on who connects, on the endpoint's keys or on the time:
//! those are `check`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ALGORITHM, MAX_EXPIRES_SECS, MAX_TOKEN_LEN, SERVICE, VerifyError};

/// A token read into its parts, every part well-formed. Nothing in it is checked yet
/// against the connection, the endpoint's keys or the time.
pub(super) struct Token<'a> {
    /// The host the token was signed for, as written.
    pub(super) host: &'a str,
    /// `Action`: `DbConnect` or `DbConnectAdmin` (or anything else, refused by the check).
    pub(super) action: String,
    /// The access key id of `X-Amz-Credential`.
    pub(super) access_key_id: String,
    /// The region of `X-Amz-Credential`.
    pub(super) region: String,
    /// `X-Amz-Date`.
    pub(super) signed_at: SystemTime,
    /// `X-Amz-Expires`, in 1..=[`MAX_EXPIRES_SECS`].
    pub(super) expires_secs: u64,
    /// `X-Amz-Signature`, as written.
    pub(super) signature: String,
    /// `X-Amz-Security-Token`, when present.
    pub(super) security_token: Option<String>,
}

impl<'a> Token<'a> {
    /// Reads `token`, refusing anything that is not a well-formed DSQL token.
    pub(super) fn parse(token: &'a str) -> Result<Token<'a>, VerifyError> {
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
        let signed_at = parse_amz_date(&date).ok_or(VerifyError::BadDate)?;
        if scope_date.len() != 8 || !date.starts_with(scope_date) {
            return Err(VerifyError::CredentialScope(
                "date differs from X-Amz-Date's date",
            ));
        }
        if expires.is_empty() || expires.len() > 7 || !expires.bytes().all(|c| c.is_ascii_digit()) {
            return Err(VerifyError::BadExpires);
        }
        let expires_secs: u64 = expires.parse().map_err(|_| VerifyError::BadExpires)?;
        if !(1..=MAX_EXPIRES_SECS).contains(&expires_secs) {
            return Err(VerifyError::BadExpires);
        }
        Ok(Token {
            host,
            action,
            access_key_id: akid.to_owned(),
            region: scope_region.to_owned(),
            signed_at,
            expires_secs,
            signature,
            security_token: p.security_token,
        })
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
pub(super) fn shown(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    /// Parsing needs no key, user or clock, and reads every part the check uses.
    #[test]
    fn a_token_reads_into_its_parts() {
        let t = Token::parse(KAT).unwrap();
        assert_eq!(t.host, HOST);
        assert_eq!(t.action, "DbConnect");
        assert_eq!(t.access_key_id, "akid");
        assert_eq!(t.region, "us-east-1");
        assert_eq!(t.signed_at, t0());
        assert_eq!(t.expires_secs, 450);
        assert!(t.signature.starts_with("f5f2ad76"));
        assert_eq!(t.security_token, None);
        // A format fault is found before any check: here with a wrong action for the user too.
        let bad_date = KAT_ADMIN.replace("X-Amz-Date=20240827T000000Z", "X-Amz-Date=2024");
        assert_eq!(
            kat_verifier().verify("r", &bad_date, None, t0()),
            Err(VerifyError::BadDate)
        );
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
}
