//! AWS credentials, IAM auth token signing and the credential cache.
//!
//! A DSQL token is a SigV4 presigned URL without its `https://`, signed locally by
//! `aws-sdk-dsql`'s [`AuthTokenGenerator`]. The generator re-resolves credentials on every
//! call, and resolving can mean a network round trip (SSO, STS, IMDS), so [`TokenSigner`]
//! caches the credentials and only resolves again when they near expiry or on
//! [`TokenSigner::reload_credentials`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_dsql::auth_token::{AuthTokenGenerator, Config as GeneratorConfig};
use aws_smithy_async::time::{SharedTimeSource, SystemTimeSource};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_types::SdkConfig;
use tokio::sync::Mutex;
use tracing::instrument::WithSubscriber as _;

pub use crate::dsql::{ADMIN_USER, Action, MAX_TOKEN_LIFETIME};
pub use crate::error::AuthError;
use crate::error::shown;

/// Who a token is signed for and with what.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Target {
    /// The endpoint host name tokens are signed for (and TLS verifies).
    pub endpoint: String,
    /// The AWS region tokens are signed for.
    pub region: String,
    /// The database role.
    pub user: String,
    /// Where AWS credentials come from.
    pub credentials: CredentialSource,
    /// How long a token stays valid for opening connections.
    pub token_expires_in: Duration,
}

impl Target {
    /// Whether this role needs a `DbConnectAdmin` token.
    pub fn is_admin(&self) -> bool {
        self.user == ADMIN_USER
    }
}

/// Whether tokens can be signed for `name` and TLS can verify it: a DNS host name as rustls
/// checks a server name (letters, digits, `-` and `_` in dot-separated labels of at most 63
/// characters, 253 in all) or an IPv4 address. `@`, `#`, `:`, `/`, spaces and the like are not
/// part of a host name; an IPv6 address cannot stand as a token's host unbracketed.
pub fn is_host_name(name: &str) -> bool {
    use rustls_pki_types::{IpAddr, ServerName};
    matches!(
        ServerName::try_from(name),
        Ok(ServerName::DnsName(_) | ServerName::IpAddress(IpAddr::V4(_)))
    )
}

/// Credentials closer than this to expiry are resolved again before signing.
const CREDENTIAL_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A secret string (password, token, secret key) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for the wire, or for `token`'s stdout.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where AWS credentials come from.
#[derive(Clone)]
pub enum CredentialSource {
    /// aws-config's default chain: environment, profile (optionally named), SSO, web identity,
    /// container and instance metadata.
    DefaultChain {
        /// A named profile, as `--profile` / `AWS_PROFILE`.
        profile: Option<String>,
    },
    /// Fixed credentials, e.g. the local endpoint's.
    Static {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: Secret,
    },
    /// Any credentials provider, for Rust programs with their own.
    Provider(SharedCredentialsProvider),
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultChain { profile } => f
                .debug_struct("DefaultChain")
                .field("profile", profile)
                .finish(),
            Self::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
            Self::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// The longest URI the SDK's HTTP types accept (`http::Uri`: `u16::MAX - 1` bytes); it
/// panics on a longer one instead of returning an error.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// What a token holds beside the host and the encoded credentials: the scheme the SDK
/// signs with, the action, algorithm, date, scope, expiry, signed headers and signature.
const TOKEN_OVERHEAD: usize = 512;

/// Refuses credentials that would make the token's URL longer than [`MAX_URI_LEN`], before
/// the SDK panics on them.
fn check_token_size(
    hostname: &str,
    region: &str,
    credentials: &Credentials,
) -> Result<(), AuthError> {
    // Query values are percent-encoded: every byte but RFC 3986's unreserved ones takes 3.
    let encoded = |text: &str| {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    1
                } else {
                    3
                }
            })
            .sum::<usize>()
    };
    let session = credentials.session_token().map_or(0, encoded);
    let key_id = encoded(credentials.access_key_id());
    if TOKEN_OVERHEAD + hostname.len() + encoded(region) + key_id + session <= MAX_URI_LEN {
        return Ok(());
    }
    let what = if session >= key_id {
        let length = credentials.session_token().map_or(0, str::len);
        format!("the session token (AWS_SESSION_TOKEN) has {length} characters")
    } else {
        let length = credentials.access_key_id().len();
        format!("the access key id (AWS_ACCESS_KEY_ID) has {length} characters")
    };
    Err(AuthError::Unusable(format!(
        "{what}, and a token must fit in a {MAX_URI_LEN}-byte URL; check the credentials"
    )))
}

/// A signed token and when it was made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Token {
    /// The token: send it as the password.
    pub value: Secret,
    /// Which action it was signed for.
    pub action: Action,
    /// When it was signed (per the signer's clock).
    pub signed_at: SystemTime,
    /// When it stops opening connections.
    pub expires_at: SystemTime,
}

/// Signs tokens for one endpoint, region and expiry, with cached credentials.
pub struct TokenSigner {
    hostname: String,
    region: String,
    expires_in: Duration,
    provider: SharedCredentialsProvider,
    sdk_config: SdkConfig,
    cache: Mutex<Option<Credentials>>,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("hostname", &self.hostname)
            .field("region", &self.region)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `target`, resolving its credential source (credentials themselves are
    /// fetched lazily, on the first signature).
    pub async fn new(target: &Target) -> TokenSigner {
        let provider = provider(&target.credentials, &target.region).await;
        Self::with_clock(
            target,
            provider,
            SharedTimeSource::new(SystemTimeSource::new()),
        )
    }

    /// A signer with an explicit credentials provider and clock (tests, fixed-time signing).
    pub fn with_clock(
        target: &Target,
        provider: SharedCredentialsProvider,
        clock: SharedTimeSource,
    ) -> TokenSigner {
        TokenSigner {
            hostname: target.endpoint.clone(),
            region: target.region.clone(),
            expires_in: target.token_expires_in,
            sdk_config: SdkConfig::builder()
                .time_source(clock)
                .behavior_version(BehaviorVersion::latest())
                .build(),
            provider,
            cache: Mutex::new(None),
        }
    }

    /// The host name tokens are signed for.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The region tokens are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs a token for `action`.
    pub async fn sign(&self, action: Action) -> Result<Token, AuthError> {
        let credentials = self.credentials(false).await?;
        self.sign_with(credentials, action).await
    }

    /// Resolves credentials again (a refresh), keeping the cached ones if that fails.
    pub async fn reload_credentials(&self) -> Result<(), AuthError> {
        self.credentials(true).await.map(drop)
    }

    async fn credentials(&self, force: bool) -> Result<Credentials, AuthError> {
        let mut cache = self.cache.lock().await;
        let now = self.now();
        if !force
            && let Some(cached) = cache.as_ref()
            && cached
                .expiry()
                .is_none_or(|expiry| expiry > now + CREDENTIAL_REFRESH_MARGIN)
        {
            return Ok(cached.clone());
        }
        let fresh = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| AuthError::NoCredentials(Box::new(e)))?;
        *cache = Some(fresh.clone());
        Ok(fresh)
    }

    fn now(&self) -> SystemTime {
        self.sdk_config
            .time_source()
            .map_or_else(SystemTime::now, |clock| clock.now())
    }

    async fn sign_with(
        &self,
        credentials: Credentials,
        action: Action,
    ) -> Result<Token, AuthError> {
        // The SDK panics on a name a URL cannot hold (`a:b`, `a/b`), and a token for a name
        // that is not a host is no use to anyone: settings refuse these, and so does the signer.
        if !is_host_name(&self.hostname) {
            return Err(AuthError::Unusable(format!(
                "{} is not a host name to sign for",
                shown(&self.hostname)
            )));
        }
        check_token_size(&self.hostname, &self.region, &credentials)?;
        let config = GeneratorConfig::builder()
            .hostname(self.hostname.as_str())
            .region(Region::new(self.region.clone()))
            .expires_in(self.expires_in.as_secs())
            .credentials(credentials)
            .build()
            .map_err(AuthError::Sign)?;
        let generator = AuthTokenGenerator::new(config);
        let signed_at = self.now();
        let signing = async {
            match action {
                Action::DbConnect => generator.db_connect_auth_token(&self.sdk_config).await,
                Action::DbConnectAdmin => {
                    generator
                        .db_connect_admin_auth_token(&self.sdk_config)
                        .await
                }
            }
        };
        // The SDK's signer traces its canonical request, which holds the session token and
        // most of the auth token: signing logs nothing, whatever subscriber the program has.
        let token = signing
            .with_subscriber(tracing::subscriber::NoSubscriber::default())
            .await
            .map_err(AuthError::Sign)?;
        Ok(Token {
            value: Secret::new(token.as_str()),
            action,
            signed_at,
            expires_at: signed_at + self.expires_in,
        })
    }
}

async fn provider(source: &CredentialSource, region: &str) -> SharedCredentialsProvider {
    match source {
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
        } => SharedCredentialsProvider::new(Credentials::new(
            access_key_id,
            secret_access_key.expose(),
            None,
            None,
            "dsql-pgx",
        )),
        CredentialSource::Provider(provider) => provider.clone(),
        CredentialSource::DefaultChain { profile } => {
            use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
            // The SDK's HTTP client (SSO, STS, IMDS) uses the same rustls and ring as we do.
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https();
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(SharedHttpClient::new(LazyHttpClient(http)))
                .region(Region::new(region.to_string()));
            if let Some(profile) = profile {
                loader = loader.profile_name(profile);
            }
            let config = loader.load().await;
            config
                .credentials_provider()
                .unwrap_or_else(|| SharedCredentialsProvider::new(NoCredentials))
        }
    }
}

/// The SDK's HTTP client, with its trusted certificates loaded when it first connects.
///
/// The client as built loads the system's CA bundle as soon as any SDK client is built
/// (its `validate_base_client_config`), and aws-config builds several (SSO, STS, IMDS) for
/// the credential chain: about 3 ms of CPU per call, wasted whenever the credentials come
/// from the environment or a profile file and no request is made. This wrapper leaves that
/// validation out; `http_connector` builds (and caches) the connector, certificates and all,
/// on the first request.
#[derive(Debug)]
struct LazyHttpClient(SharedHttpClient);

impl HttpClient for LazyHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no credentials provider is configured",
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_async::time::StaticTimeSource;
    use std::time::UNIX_EPOCH;

    fn vector_signer(host: &str) -> TokenSigner {
        let target = Target {
            endpoint: host.to_string(),
            region: "us-east-1".to_string(),
            user: "admin".to_string(),
            credentials: CredentialSource::DefaultChain { profile: None },
            token_expires_in: Duration::from_secs(450),
        };
        let clock = StaticTimeSource::new(UNIX_EPOCH + Duration::from_secs(1_724_716_800));
        let provider =
            SharedCredentialsProvider::new(Credentials::new("akid", "secret", None, None, "test"));
        TokenSigner::with_clock(&target, provider, SharedTimeSource::new(clock))
    }

    const PREFIX: &str = "peccy.dsql.us-east-1.on.aws/?Action=";
    const REST: &str = "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=";

    #[tokio::test]
    async fn known_answer_vector_non_admin() {
        let token = vector_signer("peccy.dsql.us-east-1.on.aws")
            .sign(Action::DbConnect)
            .await
            .unwrap();
        assert_eq!(
            token.value.expose(),
            format!(
                "{PREFIX}DbConnect{REST}f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8"
            )
        );
        assert_eq!(
            token.expires_at.duration_since(token.signed_at).unwrap(),
            Duration::from_secs(450)
        );
    }

    #[tokio::test]
    async fn known_answer_vector_admin() {
        let token = vector_signer("peccy.dsql.us-east-1.on.aws")
            .sign(Action::DbConnectAdmin)
            .await
            .unwrap();
        assert_eq!(
            token.value.expose(),
            format!(
                "{PREFIX}DbConnectAdmin{REST}267cf8d04d84444f7a62d5bdb40c44bfc6cb13dd6c64fa7f772df6bbaa90fff1"
            )
        );
    }

    #[tokio::test]
    async fn a_different_host_changes_the_signature() {
        let token = vector_signer("other.dsql.us-east-1.on.aws")
            .sign(Action::DbConnect)
            .await
            .unwrap();
        assert!(
            !token
                .value
                .expose()
                .ends_with("f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8")
        );
    }

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn signing_logs_nothing_even_to_a_trace_subscriber() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::trace!("the subscriber records");
        let target = Target {
            endpoint: "peccy.dsql.us-east-1.on.aws".to_string(),
            region: "us-east-1".to_string(),
            user: "admin".to_string(),
            credentials: CredentialSource::DefaultChain { profile: None },
            token_expires_in: Duration::from_secs(450),
        };
        let session = Credentials::new("akid", "secret", Some("SESSION-MARKER".into()), None, "t");
        let signer = TokenSigner::with_clock(
            &target,
            SharedCredentialsProvider::new(session),
            SharedTimeSource::new(SystemTimeSource::new()),
        );
        let token = signer.sign(Action::DbConnectAdmin).await.unwrap();
        assert!(
            token
                .value
                .expose()
                .contains("X-Amz-Security-Token=SESSION-MARKER")
        );
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("the subscriber records"), "{log}");
        for secret in ["SESSION-MARKER", "X-Amz-", "secret"] {
            assert!(!log.contains(secret), "{secret} in the log: {log}");
        }
    }

    #[tokio::test]
    async fn credentials_too_long_for_a_url_are_refused_not_panicked_on() {
        let sign = |session: String| async move {
            let creds = Credentials::new("akid", "secret", Some(session), None, "t");
            let signer = vector_signer("peccy.dsql.us-east-1.on.aws");
            signer.sign_with(creds, Action::DbConnect).await
        };
        let token = sign("b".repeat(60_000))
            .await
            .expect("a long token still fits");
        assert!(token.value.expose().len() > 60_000);
        // '+' is percent-encoded: 22,000 of them take 66,000 bytes of URL.
        for session in ["b".repeat(120_000), "+".repeat(22_000)] {
            match sign(session).await {
                Err(AuthError::Unusable(why)) => {
                    assert!(why.contains("session token (AWS_SESSION_TOKEN)"), "{why}")
                }
                other => panic!("expected Unusable, got {other:?}"),
            }
        }
        let bad_host = vector_signer("a:b").sign(Action::DbConnect).await;
        assert!(
            matches!(bad_host, Err(AuthError::Unusable(_))),
            "{bad_host:?}"
        );
    }

    #[test]
    fn admin_action_exactly_for_admin() {
        assert_eq!(Action::for_user("admin"), Action::DbConnectAdmin);
        assert_eq!(Action::for_user("Admin"), Action::DbConnect);
        assert_eq!(Action::for_user("app"), Action::DbConnect);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        let source = CredentialSource::Static {
            access_key_id: "AKIA".into(),
            secret_access_key: secret,
        };
        assert!(!format!("{source:?}").contains("hunter2"));
    }
}
