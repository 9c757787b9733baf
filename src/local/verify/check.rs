//! Checking a parsed token: that it fits the user (`DbConnectAdmin` iff `admin`), this
//! endpoint (region, host, the client's TLS server name) and one of its keys, that it is
//! within its time window, and finally that its signature is the one `aws-sigv4` computes,
//! compared in constant time.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use subtle::ConstantTimeEq as _;

use super::parse::{Token, shown};
use super::{MAX_FUTURE_SKEW, SERVICE, TokenVerifier, VerifyError};

impl TokenVerifier {
    /// Checks a well-formed token as the password of `user`, given the client's TLS SNI
    /// (when known) and the current time.
    pub(super) fn check(
        &self,
        token: &Token<'_>,
        user: &str,
        sni: Option<&str>,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let expected_action = crate::dsql::Action::for_user(user).as_str();
        if token.action != expected_action {
            return Err(VerifyError::WrongAction {
                user: shown(user),
                expected: expected_action,
                got: shown(&token.action),
            });
        }
        if token.region != self.region {
            return Err(VerifyError::WrongRegion {
                expected: self.region.clone(),
                got: shown(&token.region),
            });
        }
        let (secret, session_token) = self
            .keys
            .get(&token.access_key_id)
            .ok_or_else(|| VerifyError::UnknownAccessKey(shown(&token.access_key_id)))?;
        if !token.host.eq_ignore_ascii_case(&self.hostname) {
            return Err(VerifyError::WrongHost {
                expected: self.hostname.clone(),
                got: shown(token.host),
            });
        }
        if let Some(sni) = sni
            && !sni.eq_ignore_ascii_case(token.host)
        {
            return Err(VerifyError::SniMismatch {
                sni: shown(sni),
                host: shown(token.host),
            });
        }

        if let Ok(ahead) = token.signed_at.duration_since(now)
            && ahead > MAX_FUTURE_SKEW
        {
            return Err(VerifyError::FutureDate(ahead.as_secs()));
        }
        let expires_at = token.signed_at + Duration::from_secs(token.expires_secs);
        if let Ok(ago) = now.duration_since(expires_at)
            && ago > Duration::ZERO
        {
            return Err(VerifyError::Expired(ago.as_secs().max(1)));
        }

        match (session_token, token.security_token.as_deref()) {
            (None, None) => {}
            (Some(_), None) => return Err(VerifyError::SecurityTokenMissing),
            (None, Some(_)) => return Err(VerifyError::SecurityTokenUnexpected),
            (Some(expected), Some(got)) => {
                if !bool::from(expected.as_bytes().ct_eq(got.as_bytes())) {
                    return Err(VerifyError::SecurityTokenMismatch);
                }
            }
        }

        let computed = compute_signature(token, secret, session_token.clone())?;
        if bool::from(computed.as_bytes().ct_eq(token.signature.as_bytes())) {
            Ok(())
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

/// Recomputes the presigned-URL signature the way `aws-sdk-dsql`'s `AuthTokenGenerator` does.
fn compute_signature(
    token: &Token<'_>,
    secret: &str,
    session_token: Option<String>,
) -> Result<String, VerifyError> {
    let identity = Credentials::new(
        &token.access_key_id,
        secret,
        session_token,
        None,
        "dsql-pgx-local",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(Duration::from_secs(token.expires_secs));
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&token.region)
        .name(SERVICE)
        .time(token.signed_at)
        .settings(settings)
        .build()
        .map_err(|e| VerifyError::Signing(e.to_string()))?;
    let url = format!("https://{}/?Action={}", token.host, token.action);
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| VerifyError::Signing(e.to_string()))?;
    let (_, signature) = sign(request, &params.into())
        .map_err(|e| VerifyError::Signing(e.to_string()))?
        .into_parts();
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;

    use super::super::fixtures::*;
    use super::*;

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
}
