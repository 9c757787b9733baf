//! Throw-away X.509 material for local TLS: a CA (`dsql-pgx local CA`) and a server
//! certificate it signs for `localhost`, `127.0.0.1`, `::1` and any extra names.
//!
//! The CA can be persisted (certificate and key PEM) and reloaded, so clients that
//! trust `ca.pem` keep working across restarts with the same data directory.

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Common name of the local certificate authority.
pub const CA_NAME: &str = "dsql-pgx local CA";

/// A local certificate authority able to sign server certificates.
pub struct LocalCa {
    key: KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("name", &CA_NAME)
            .finish_non_exhaustive()
    }
}

/// A server certificate and its key, as PEM (for PostgreSQL) and DER (for rustls).
pub struct ServerCert {
    /// Server certificate, PEM.
    pub cert_pem: String,
    /// Server private key (PKCS#8), PEM.
    pub key_pem: String,
    /// Server certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Server private key, DER.
    pub key_der: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl LocalCa {
    /// Generates a new CA with a fresh key.
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        Self::from_key(key)
    }

    /// Rebuilds the CA from a persisted key and certificate PEM (as written by
    /// [`LocalCa::key_pem`] and [`LocalCa::cert_pem`]).
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("parsing the CA key")?;
        let cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .context("parsing the CA certificate")?;
        Ok(Self {
            key,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    fn from_key(key: KeyPair) -> anyhow::Result<Self> {
        let cert = ca_params()
            .self_signed(&key)
            .context("self-signing the CA")?;
        Ok(Self {
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// The CA certificate, PEM: what clients put in `sslrootcert`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM. Keep it private (0600).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`.
    pub fn issue_server_cert(&self, extra_names: &[&str]) -> anyhow::Result<ServerCert> {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for name in extra_names {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push((*name).to_owned());
            }
        }
        let mut params = CertificateParams::new(names).context("server certificate names")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "dsql-pgx local endpoint");
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("generating the server key")?;
        // The issuer is rebuilt from the same parameters and key as the CA certificate,
        // so issuer name and authority key identifier match it.
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the server certificate")?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn server_cert_verifies_against_reloaded_ca() {
        let ca = LocalCa::generate().unwrap();
        let reloaded = LocalCa::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let server = reloaded.issue_server_cert(&["db.example"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        for name in ["localhost", "127.0.0.1", "db.example"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &server.cert_der,
                    &[],
                    &sn,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("other.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &server.cert_der,
                    &[],
                    &other,
                    &[],
                    rustls_pki_types::UnixTime::now()
                )
                .is_err()
        );
    }
}
