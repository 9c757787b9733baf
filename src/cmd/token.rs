//! `dsql-pgx token`: print an IAM auth token (and nothing else) on stdout, or a connection
//! URL carrying it.

use std::io::Write;

use anyhow::Context as _;
use std::net::IpAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::auth::{Action, TokenSigner};
use crate::cli::resolve::{self, ProcessEnv};
use crate::cli::{AddressArgs, Format, TokenArgs};
use crate::output::Output;
use crate::settings::{self, ConfigError};

/// What stays literal in a URL component: RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Serialize)]
struct TokenJson<'a> {
    token: &'a str,
    hostname: &'a str,
    region: &'a str,
    action: &'a str,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// A libpq connection URL for `endpoint` with `token` as the password: every component
/// percent-encoded, verify-full TLS, and `hostaddr` when `--host` is an IP address.
fn connection_url(
    endpoint: &str,
    user: &str,
    token: &str,
    address: &AddressArgs,
) -> Result<String, ConfigError> {
    let part = |text: &str| utf8_percent_encode(text, COMPONENT).to_string();
    let root = match &address.ca_file {
        Some(file) => part(&file.display().to_string()),
        None => "system".to_string(),
    };
    let mut url = format!(
        "postgresql://{}:{}@{endpoint}:{}/{}?sslmode=verify-full&sslrootcert={root}",
        part(user),
        part(token),
        address.port,
        part(&address.database),
    );
    match address.host.as_deref().map(str::trim) {
        None | Some("") => {}
        Some(host) if host == endpoint => {}
        Some(host) => match host.parse::<IpAddr>() {
            Ok(ip) => url.push_str(&format!("&hostaddr={ip}")),
            Err(_) => {
                return Err(ConfigError(format!(
                    "--url can route through --host (or DB_HOST) only as an IP address (hostaddr), not {}",
                    settings::shown(host)
                )));
            }
        },
    }
    Ok(url)
}

/// Signs and prints one token.
pub async fn run(args: TokenArgs, out: &Output) -> anyhow::Result<()> {
    let target = resolve::target(&args.target, &ProcessEnv)?;
    let action = if args.admin {
        Action::DbConnectAdmin
    } else {
        Action::for_user(&target.user)
    };
    let signer = TokenSigner::new(&target).await;
    let token = signer.sign(action).await?;
    let url = args
        .url
        .then(|| {
            connection_url(
                signer.hostname(),
                &target.user,
                token.value.expose(),
                &args.address,
            )
        })
        .transpose()?;
    let line = if out.format == Format::Json {
        let json = TokenJson {
            token: token.value.expose(),
            hostname: signer.hostname(),
            region: signer.region(),
            action: action.as_str(),
            expires_at: humantime::format_rfc3339_seconds(token.expires_at).to_string(),
            url,
        };
        serde_json::to_string(&json)?
    } else {
        url.unwrap_or_else(|| token.value.expose().to_string())
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("cannot write the token to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(host: Option<&str>, ca_file: Option<&str>) -> AddressArgs {
        AddressArgs {
            host: host.map(str::to_string),
            port: 5433,
            database: "postgres".into(),
            ca_file: ca_file.map(Into::into),
        }
    }

    #[test]
    fn urls_encode_the_token_and_name_the_tls_roots() {
        let token = "h.example/?Action=DbConnect&X-Amz-Credential=AK%2F1&X-Amz-Signature=ab";
        let url = connection_url("h.example", "app", token, &address(None, None)).unwrap();
        assert_eq!(
            url,
            "postgresql://app:h.example%2F%3FAction%3DDbConnect%26X-Amz-Credential%3DAK%252F1\
             %26X-Amz-Signature%3Dab@h.example:5433/postgres?sslmode=verify-full&sslrootcert=system"
        );
        let url = connection_url(
            "h.example",
            "admin",
            "t",
            &address(Some("10.0.0.7"), Some("/a b/ca.pem")),
        )
        .unwrap();
        assert!(
            url.ends_with("sslrootcert=%2Fa%20b%2Fca.pem&hostaddr=10.0.0.7"),
            "{url}"
        );
        let url =
            connection_url("h.example", "admin", "t", &address(Some("h.example"), None)).unwrap();
        assert!(url.ends_with("sslrootcert=system"), "{url}");
        let err =
            connection_url("h.example", "admin", "t", &address(Some("tunnel"), None)).unwrap_err();
        assert!(err.0.contains("only as an IP address"), "{err}");
    }
}
