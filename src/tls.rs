//! The rustls client configuration and the TLS connector tokio-postgres drives.
//!
//! One crypto provider (ring) is passed explicitly to every rustls builder; the process-wide
//! default is never installed or read. The connector is our own small `TlsConnect` over
//! tokio-rustls rather than `tokio-postgres-rustls`, because each connection must report its
//! negotiated TLS version and handshake time, and a certificate failure must say which host
//! and which CA set it was checked against.

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

pub use crate::error::TlsError;
use crate::settings::{ConfigError, SslMode, Tls};

/// The ALPN protocol name PostgreSQL 17 direct TLS requires.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The one crypto provider dsql-pgx uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// What a finished handshake negotiated, and how long it took.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// Time from the first ClientHello to the finished handshake.
    pub handshake: Duration,
    /// Whether ALPN `postgresql` was agreed.
    pub alpn: bool,
}

/// Builds connectors for one endpoint.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    roots: Arc<str>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .field("roots", &self.roots)
            .finish()
    }
}

impl TlsConnector {
    /// A connector that verifies (or, with `require`, only encrypts) `server_name`.
    pub fn new(tls: &Tls, server_name: &str) -> Result<TlsConnector, ConfigError> {
        let provider = crypto_provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError(format!("TLS setup failed: {e}")))?;
        let (mut config, roots) = match tls.mode {
            SslMode::Require | SslMode::Disable => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                    .with_no_client_auth(),
                "no verification (sslmode require)".to_string(),
            ),
            SslMode::VerifyFull => {
                let (store, roots) = match &tls.ca_file {
                    Some(path) => (
                        load_ca_file(path)?,
                        format!("the CA file {}", path.display()),
                    ),
                    None => (
                        RootCertStore {
                            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                        },
                        "the Mozilla/webpki roots".to_string(),
                    ),
                };
                (
                    builder.with_root_certificates(store).with_no_client_auth(),
                    roots,
                )
            }
        };
        // libpq 17 offers ALPN in both negotiation styles; direct TLS requires it.
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let server_name = parse_server_name(server_name)?;
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name,
            roots: roots.into(),
        })
    }

    /// A connector over a rustls configuration of the caller's (the trust anchors, ALPN and
    /// provider are theirs); `server_name` is verified by [`TlsConnector::connect_once`].
    pub fn with_config(
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConnector, ConfigError> {
        let server_name = parse_server_name(server_name)?;
        Ok(TlsConnector {
            config,
            server_name,
            roots: "the caller's rustls configuration".into(),
        })
    }

    /// A one-shot connector for one connection, recording what its handshake negotiated.
    pub fn connect_once(&self) -> (PgTlsConnect, Arc<OnceLock<TlsInfo>>) {
        self.connect_to(self.server_name.clone())
    }

    fn connect_to(
        &self,
        server_name: ServerName<'static>,
    ) -> (PgTlsConnect, Arc<OnceLock<TlsInfo>>) {
        let info = Arc::new(OnceLock::new());
        let connect = PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            server_name,
            roots: self.roots.clone(),
            info: info.clone(),
        };
        (connect, info)
    }
}

/// For `tokio_postgres::Config::connect`: the server name is each connection's host, as
/// libpq verifies it.
impl<S> tokio_postgres::tls::MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = ConfigError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, ConfigError> {
        Ok(self.connect_to(parse_server_name(domain)?).0)
    }
}

/// The name a certificate must carry: a DNS name or an IP address.
fn parse_server_name(name: &str) -> Result<ServerName<'static>, ConfigError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| ConfigError(format!("{name:?} is not a valid TLS server name")))
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, ConfigError> {
    let fail = |why: String| ConfigError(format!("CA file {}: {why}", path.display()));
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        store.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(fail("no PEM certificates in it".to_string()));
    }
    Ok(store)
}

/// tokio-postgres's TLS hook for one connection.
pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    roots: Arc<str>,
    info: Arc<OnceLock<TlsInfo>>,
}

impl fmt::Debug for PgTlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsConnect")
            .field("server_name", &self.server_name)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let started = Instant::now();
            let host = server_name_text(&self.server_name);
            let stream = self
                .connector
                .connect(self.server_name, stream)
                .await
                .map_err(|source| {
                    let (message, certificate) = describe_failure(&source, &host, &self.roots);
                    TlsError {
                        message,
                        certificate,
                        source,
                    }
                })?;
            let (_, session) = stream.get_ref();
            let version = match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                Some(other) => format!("{other:?}"),
                None => "unknown".to_string(),
            };
            let _ = self.info.set(TlsInfo {
                version,
                handshake: started.elapsed(),
                alpn: session.alpn_protocol() == Some(ALPN_POSTGRESQL),
            });
            Ok(PgTlsStream(stream))
        })
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The failure in words, and whether it was the certificate.
fn describe_failure(error: &io::Error, host: &str, roots: &str) -> (String, bool) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => {
            let why = match cert {
                rustls::CertificateError::UnknownIssuer => "its issuer is unknown".to_string(),
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    format!("it is not valid for the name {host}")
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => "it has expired".to_string(),
                other => format!("{other:?}"),
            };
            (
                format!("TLS certificate of {host} was rejected by {roots}: {why}"),
                true,
            )
        }
        Some(other) => (format!("TLS handshake with {host} failed: {other}"), false),
        None => (format!("TLS handshake with {host} failed: {error}"), false),
    }
}

/// A TLS stream to the server.
#[derive(Debug)]
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // DSQL authenticates with a cleartext token inside TLS; SCRAM channel binding is
        // not used (plain PostgreSQL falls back to SCRAM without binding).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `--sslmode require`: encrypt, check the handshake signature, trust any certificate.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SslNegotiation;

    fn tls(mode: SslMode, ca_file: Option<&Path>) -> Tls {
        Tls {
            mode,
            ca_file: ca_file.map(Path::to_path_buf),
            negotiation: SslNegotiation::Postgres,
        }
    }

    #[test]
    fn default_roots_include_amazon_root_ca_1() {
        let connector =
            TlsConnector::new(&tls(SslMode::VerifyFull, None), "x.dsql.us-east-1.on.aws").unwrap();
        assert!(connector.roots.contains("webpki"));
        let has_amazon = webpki_roots::TLS_SERVER_ROOTS.iter().any(|anchor| {
            String::from_utf8_lossy(anchor.subject.as_ref()).contains("Amazon Root CA 1")
        });
        assert!(has_amazon);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate\n").unwrap();
        let err = TlsConnector::new(&tls(SslMode::VerifyFull, Some(file.path())), "localhost")
            .unwrap_err();
        assert!(err.0.contains("no PEM certificates"), "{}", err.0);
    }
}
