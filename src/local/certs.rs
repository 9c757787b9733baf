//! Throw-away X.509 material for local TLS: a CA (`dsql-pgx local CA`) and a server
//! certificate it signs for `localhost`, `127.0.0.1`, `::1` and any extra names.
//!
//! The CA is valid from a day before it is made for two years, and carries X.509 name
//! constraints for the endpoint's names only: a client that trusts `ca.pem` cannot be
//! made to accept it for any other host. It can be persisted (certificate and key PEM)
//! and reloaded, so clients that trust `ca.pem` keep working across restarts with the
//! same data directory; [`LocalCa::check_fits`] says when a persisted one must be
//! replaced.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Common name of the local certificate authority.
pub const CA_NAME: &str = "dsql-pgx local CA";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Certificates start this long before they are made, so a clock a little behind accepts them.
const BACKDATE: Duration = DAY;
/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);
/// A persisted CA that ends within this long is replaced.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long a server certificate is valid (a new one is issued at every start).
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A name no endpoint has: a CA that vouches for it is not limited to the endpoint's names.
const PROBE_NAME: &str = "name-constraints-probe.invalid";

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

/// The names every endpoint certificate carries, then `extra_names` (without repeats).
fn endpoint_names(extra_names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in extra_names {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push((*name).to_owned());
        }
    }
    names
}

/// Name constraints permitting exactly `names` (and, for host names, their subdomains, as
/// RFC 5280 defines a DNS name constraint): IP addresses as single-address subnets.
fn name_constraints(names: &[String]) -> NameConstraints {
    let permitted_subtrees = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 32))
            }
            Ok(ip @ IpAddr::V6(_)) => {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 128))
            }
            Err(_) => GeneralSubtree::DnsName(name.clone()),
        })
        .collect();
    NameConstraints {
        permitted_subtrees,
        excluded_subtrees: Vec::new(),
    }
}

/// The CA's identity: what its certificate and every issuer built from its key share.
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
    /// Generates a new CA with a fresh key that may vouch only for `localhost`, 127.0.0.1
    /// and ::1.
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_for(&[])
    }

    /// Generates a new CA with a fresh key, valid from a day ago for [`CA_VALIDITY`], that
    /// may vouch only for `localhost`, 127.0.0.1, ::1 and `extra_names`.
    pub fn generate_for(extra_names: &[&str]) -> anyhow::Result<Self> {
        Self::generate_at(extra_names, SystemTime::now())
    }

    fn generate_at(extra_names: &[&str], now: SystemTime) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.name_constraints = Some(name_constraints(&endpoint_names(extra_names)));
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self {
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
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

    /// The CA certificate's validity: not before, not after.
    fn validity(&self) -> Result<(SystemTime, SystemTime), String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| format!("is not a readable certificate ({e})"))?;
        let at = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            match u64::try_from(secs) {
                Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
                Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
            }
        };
        let validity = cert.validity();
        Ok((at(&validity.not_before), at(&validity.not_after)))
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

    /// Issues a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`,
    /// valid from a day ago for a year. Clients accept it only for names the CA's
    /// constraints permit.
    pub fn issue_server_cert(&self, extra_names: &[&str]) -> anyhow::Result<ServerCert> {
        let now = SystemTime::now();
        self.issue(
            endpoint_names(extra_names),
            now - BACKDATE,
            now + SERVER_VALIDITY,
        )
    }

    fn issue(
        &self,
        names: Vec<String>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<ServerCert> {
        let mut params = CertificateParams::new(names).context("server certificate names")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "dsql-pgx local endpoint");
        params.is_ca = IsCa::NoCa;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("generating the server key")?;
        // The issuer is rebuilt from the CA's identity and key, so issuer name and
        // authority key identifier match the CA certificate.
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

    /// Whether this (persisted) CA can keep serving an endpoint with `extra_names` at
    /// `now`: `Err` says why not, for a log line ("the local CA ...").
    ///
    /// The CA must be valid now and for [`CA_RENEW_BEFORE`] more, for no longer than
    /// [`CA_VALIDITY`] in all (CAs of earlier dsql-pgx versions ran from 1975 to 4096 without
    /// constraints). Names are judged as a client would, with rustls' webpki verifier
    /// trusting only this CA: a certificate for every endpoint name must verify, one for
    /// another name must not. (webpki ignores a trust anchor's own validity; libpq's
    /// OpenSSL does not, hence the explicit dates.)
    pub fn check_fits(&self, extra_names: &[&str], now: SystemTime) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| format!("is not a usable CA certificate ({e})"))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("is not a usable CA certificate ({e})"))?;
        // Leaf certificates valid long around `now`, so that only the CA's validity counts
        // (within 1950-2049, where X.509 times are UTCTime, as webpki insists).
        let (from, to) = (now - 10 * 365 * DAY, now + 10 * 365 * DAY);
        let issue = |names: Vec<String>| {
            self.issue(names, from, to)
                .map_err(|e| format!("cannot sign certificates ({e:#})"))
        };
        let verify = |cert: &ServerCert, name: &str, at: SystemTime| {
            let name = ServerName::try_from(name.to_owned())
                .map_err(|_| rustls::Error::General(format!("bad name {name}")))?;
            let at = UnixTime::since_unix_epoch(
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            verifier
                .verify_server_cert(&cert.cert_der, &[], &name, &[], at)
                .map(|_| ())
        };
        let (not_before, not_after) = self.validity()?;
        if not_after <= now {
            return Err("has expired".into());
        }
        if not_before > now {
            return Err("is not valid yet".into());
        }
        if not_after <= now + CA_RENEW_BEFORE {
            return Err(format!(
                "expires within {} days",
                CA_RENEW_BEFORE.as_secs() / DAY.as_secs()
            ));
        }
        if not_after.duration_since(not_before).unwrap_or_default() > BACKDATE + CA_VALIDITY {
            return Err(format!(
                "is valid for longer than {} days",
                CA_VALIDITY.as_secs() / DAY.as_secs()
            ));
        }
        // One certificate per name: a client refuses a certificate if any of its names is
        // outside the constraints.
        for name in endpoint_names(extra_names) {
            if verify(&issue(vec![name.clone()])?, &name, now).is_err() {
                return Err(format!("does not cover {name}"));
            }
        }
        let probe = issue(vec![PROBE_NAME.to_owned()])?;
        if verify(&probe, PROBE_NAME, now).is_ok() {
            return Err("is not limited to the endpoint's names".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;

    /// A client's verifier trusting only `ca_pem`, as `sslrootcert=ca.pem` does.
    fn client_trusting(ca_pem: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap()
    }

    fn verify_at(
        verifier: &rustls::client::WebPkiServerVerifier,
        cert: &ServerCert,
        name: &str,
        at: SystemTime,
    ) -> Result<(), rustls::Error> {
        let sn = ServerName::try_from(name.to_owned()).unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier
            .verify_server_cert(&cert.cert_der, &[], &sn, &[], at)
            .map(|_| ())
    }

    #[test]
    fn server_cert_verifies_against_reloaded_ca() {
        let ca = LocalCa::generate_for(&["db.example"]).unwrap();
        let reloaded = LocalCa::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let server = reloaded.issue_server_cert(&["db.example"]).unwrap();
        let verifier = client_trusting(ca.cert_pem());
        let now = SystemTime::now();
        for name in ["localhost", "127.0.0.1", "::1", "db.example"] {
            verify_at(&verifier, &server, name, now).unwrap();
        }
        assert!(verify_at(&verifier, &server, "other.example", now).is_err());
    }

    /// A trusted ca.pem vouches for the endpoint's names only: a certificate it signs for
    /// any other host (alone, or next to the endpoint's names) is refused by a client.
    #[test]
    fn the_ca_cannot_vouch_for_another_host() {
        let ca = LocalCa::generate_for(&["db.example"]).unwrap();
        let verifier = client_trusting(ca.cert_pem());
        let now = SystemTime::now();
        let (from, to) = (now - DAY, now + DAY);
        for other in ["other.example", "example", "10.0.0.1", "127.0.0.2", "::2"] {
            let cert = ca.issue(vec![other.to_owned()], from, to).unwrap();
            let err = verify_at(&verifier, &cert, other, now).expect_err(other);
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(_)),
                "{other}: {err:?}"
            );
            let mixed = ca
                .issue(vec!["localhost".to_owned(), other.to_owned()], from, to)
                .unwrap();
            assert!(
                verify_at(&verifier, &mixed, "localhost", now).is_err(),
                "{other}"
            );
        }
        // Subdomains of a permitted host name are inside its constraint (RFC 5280).
        let sub = ca.issue(vec!["a.db.example".to_owned()], from, to).unwrap();
        verify_at(&verifier, &sub, "a.db.example", now).unwrap();
    }

    /// Valid from a day before it is made for two years: not 1975 to 4096.
    #[test]
    fn the_ca_is_valid_from_a_day_ago_for_two_years() {
        let made = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = LocalCa::generate_at(&[], made).unwrap();
        let (not_before, not_after) = ca.validity().unwrap();
        assert_eq!(not_before, made - BACKDATE);
        assert_eq!(not_after, made + CA_VALIDITY);
        // The server certificate: from a day ago, for a year.
        let now = SystemTime::now();
        let fresh = LocalCa::generate().unwrap();
        let server = fresh.issue_server_cert(&[]).unwrap();
        let verifier = client_trusting(fresh.cert_pem());
        let at = |t| verify_at(&verifier, &server, "localhost", t);
        at(now - BACKDATE + Duration::from_secs(60)).unwrap();
        assert!(matches!(
            at(now - BACKDATE - Duration::from_secs(60)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
            ))
        ));
        at(now + SERVER_VALIDITY - Duration::from_secs(60)).unwrap();
        assert!(matches!(
            at(now + SERVER_VALIDITY + Duration::from_secs(60)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn a_persisted_ca_is_replaced_when_it_no_longer_fits() {
        let now = SystemTime::now();
        let fresh = LocalCa::generate_for(&["db.example"]).unwrap();
        let reloaded = LocalCa::load(fresh.cert_pem(), &fresh.key_pem()).unwrap();
        assert_eq!(reloaded.check_fits(&["db.example"], now), Ok(()));
        assert_eq!(reloaded.check_fits(&[], now), Ok(()));
        assert_eq!(
            reloaded.check_fits(&["other.example"], now),
            Err("does not cover other.example".into())
        );
        let near = LocalCa::generate_at(&[], now - CA_VALIDITY + 10 * DAY).unwrap();
        assert_eq!(
            near.check_fits(&[], now),
            Err("expires within 30 days".into())
        );
        let old = LocalCa::generate_at(&[], now - CA_VALIDITY - DAY).unwrap();
        assert_eq!(old.check_fits(&[], now), Err("has expired".into()));
        // A CA as earlier versions made them: 1975 to 4096, no name constraints.
        let key = KeyPair::generate().unwrap();
        let legacy = ca_params().self_signed(&key).unwrap();
        let legacy = LocalCa::load(&legacy.pem(), &key.serialize_pem()).unwrap();
        assert_eq!(
            legacy.check_fits(&[], now),
            Err("is valid for longer than 730 days".into())
        );
        // Unconstrained but with a bounded validity: still refused.
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params();
        params.not_before = (now - DAY).into();
        params.not_after = (now + 365 * DAY).into();
        let open = params.self_signed(&key).unwrap();
        let open = LocalCa::load(&open.pem(), &key.serialize_pem()).unwrap();
        assert_eq!(
            open.check_fits(&[], now),
            Err("is not limited to the endpoint's names".into())
        );
    }
}
