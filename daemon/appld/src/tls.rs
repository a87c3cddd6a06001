//! TLS on the TCP listener: the `[tls]` settings, loading the server's certificate and key and
//! the site CA bundle into a rustls `ServerConfig`, and what a connection's client certificate
//! turned out to be ([`PeerCert`]).
//!
//! **Client certificates are checked right after the handshake, not inside it.** The handshake
//! still proves that the client holds the private key of the certificate it presents (rustls
//! checks its signature with the same WebPKI verifier), and the certificate chain is then
//! checked against the site CA bundle (and CRLs) by rustls' `WebPkiClientVerifier`, once per
//! connection. A connection whose certificate fails carries the reason, and every request on
//! it is refused with `UNAUTHENTICATED` naming it (`expired`, `unknown CA`) and recorded as
//! `auth.denied`, where a failed handshake would tell the client and the audit log nothing.
//! Health checks are the one thing such a connection may do.
//!
//! Crypto is rustls with the ring provider; TLS 1.3 and 1.2; ALPN `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// `[tls]`: how the TCP listener is secured.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM; PKCS#8, PKCS#1 or SEC1). Keep it mode 0600.
    pub key: PathBuf,
    /// The site CA bundle (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) for client certificates; empty for none.
    pub client_crl: PathBuf,
    /// `required`: every TCP request needs a valid client certificate. `optional`: clients
    /// without one may connect and identify with an API key (or get `auth.anonymous_roles`).
    pub client_certs: ClientCerts,
    /// Serve `server.listen` without TLS. Anyone on the network can read and alter the
    /// traffic, API keys included. For a demo on 127.0.0.1 only; the daemon warns at start
    /// and in `applctl status`.
    pub insecure_plaintext: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            client_crl: PathBuf::new(),
            client_certs: ClientCerts::Required,
            insecure_plaintext: false,
        }
    }
}

/// Whether TCP clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    Required,
    Optional,
}

impl TlsSettings {
    /// Relative paths are relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.cert,
            &mut self.key,
            &mut self.client_ca,
            &mut self.client_crl,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the settings for a daemon that listens on TCP (`tcp`); returns the key and why.
    pub fn validate(&self, tcp: bool) -> Result<(), (&'static str, &'static str)> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if self.insecure_plaintext {
            if set(&self.cert) || set(&self.key) {
                return Err((
                    "tls.insecure_plaintext",
                    "is true while tls.cert or tls.key is set; choose TLS or plaintext",
                ));
            }
            return Ok(());
        }
        if !tcp {
            return Ok(());
        }
        if !set(&self.cert) {
            return Err((
                "tls.cert",
                "is empty but server.listen is set; give the server certificate (applctl certs \
                 issue), or set tls.insecure_plaintext = true for a local demo",
            ));
        }
        if !set(&self.key) {
            return Err(("tls.key", "is empty; give the server's private key"));
        }
        if !set(&self.client_ca) {
            return Err((
                "tls.client_ca",
                "is empty; give the site CA bundle that client certificates chain to",
            ));
        }
        Ok(())
    }

    /// How TCP is served, in a word, for status and logs.
    pub fn mode(&self, tcp: bool) -> &'static str {
        match (tcp, self.insecure_plaintext, self.client_certs) {
            (false, _, _) => "none",
            (true, true, _) => "plaintext",
            (true, false, ClientCerts::Required) => "mtls",
            (true, false, ClientCerts::Optional) => "tls",
        }
    }
}

/// Why TLS material could not be loaded. The message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` ({path}): {why}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub why: String,
}

/// One certificate the daemon serves with or trusts, for status and expiry warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// `server` or `client_ca`.
    pub role: &'static str,
    pub subject: String,
    pub not_after: SystemTime,
}

/// Loaded TLS material: what new connections are served with. SIGHUP swaps it whole; open
/// connections keep the one they started with.
#[derive(Debug)]
pub struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    /// The verifier that decides client certificates (also used inside the handshake for the
    /// proof of key possession).
    verifier: Arc<dyn ClientCertVerifier>,
    pub certificates: Vec<CertSummary>,
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError {
        key,
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Loads `[tls]` from disk and builds the server config. Fails naming the file and why.
pub fn load(s: &TlsSettings) -> Result<TlsMaterial, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("tls.cert", &s.cert)?;
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| TlsError {
        key: "tls.key",
        path: s.key.clone(),
        why: e.to_string(),
    })?;
    let cas = read_certs("tls.client_ca", &s.client_ca)?;
    let mut roots = RootCertStore::empty();
    for c in &cas {
        roots.add(c.clone()).map_err(|e| TlsError {
            key: "tls.client_ca",
            path: s.client_ca.clone(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if !s.client_crl.as_os_str().is_empty() {
        let crl_err = |why: String| TlsError {
            key: "tls.client_crl",
            path: s.client_crl.clone(),
            why,
        };
        let crls = CertificateRevocationListDer::pem_file_iter(&s.client_crl)
            .map_err(|e| crl_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crl_err(e.to_string()))?;
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().map_err(|e| TlsError {
        key: "tls.client_ca",
        path: s.client_ca.clone(),
        why: e.to_string(),
    })?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "tls.cert",
            path: s.cert.clone(),
            why: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(AfterHandshake(Arc::clone(&verifier))))
        .with_single_cert(chain.clone(), key)
        .map_err(|e| TlsError {
            key: "tls.key",
            path: s.key.clone(),
            why: format!("does not fit tls.cert, or is not a usable key: {e}"),
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut certificates = Vec::new();
    if let Some(info) = chain.first().and_then(|c| CertInfo::parse(c)) {
        certificates.push(CertSummary {
            role: "server",
            subject: info.subject,
            not_after: info.not_after,
        });
    }
    for c in &cas {
        if let Some(info) = CertInfo::parse(c) {
            certificates.push(CertSummary {
                role: "client_ca",
                subject: info.subject,
                not_after: info.not_after,
            });
        }
    }
    Ok(TlsMaterial {
        server: Arc::new(server),
        verifier,
        certificates,
    })
}

impl TlsMaterial {
    /// Decides a connection's client certificate chain (`None`: it presented none).
    pub fn check_peer(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerCert {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return PeerCert::None;
        };
        let info = CertInfo::parse(leaf);
        match self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => match info {
                Some(info) => PeerCert::Verified(info),
                None => PeerCert::Rejected {
                    reason: "tls_cert_unreadable",
                    why: "the certificate chains to the site CA but its subject cannot be read"
                        .into(),
                    subject: None,
                },
            },
            Err(e) => {
                let (reason, why) = rejection(&e);
                PeerCert::Rejected {
                    reason,
                    why,
                    subject: info.map(|i| i.subject),
                }
            }
        }
    }

    /// Certificates that expire within `within` (or already have), for warnings.
    pub fn expiring(&self, within: Duration) -> Vec<&CertSummary> {
        let horizon = SystemTime::now() + within;
        self.certificates
            .iter()
            .filter(|c| c.not_after <= horizon)
            .collect()
    }
}

/// A stable reason and a sentence for a rejected client certificate.
fn rejection(e: &rustls::Error) -> (&'static str, String) {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "tls_cert_expired",
                "the client certificate has expired; issue a new one".into(),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "tls_cert_not_yet_valid",
                "the client certificate is not valid yet (check the clocks)".into(),
            ),
            CertificateError::UnknownIssuer => (
                "tls_cert_unknown_ca",
                "the client certificate is not issued by the site CA (tls.client_ca)".into(),
            ),
            CertificateError::Revoked => (
                "tls_cert_revoked",
                "the client certificate is revoked (tls.client_crl)".into(),
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
                "tls_cert_wrong_purpose",
                "the certificate is not for client authentication (extended key usage)".into(),
            ),
            other => (
                "tls_cert_invalid",
                format!("the client certificate is invalid: {other:?}"),
            ),
        },
        other => (
            "tls_cert_invalid",
            format!("the client certificate is invalid: {other}"),
        ),
    }
}

/// What a TLS connection's client certificate turned out to be.
#[derive(Debug, Clone)]
pub enum PeerCert {
    /// No certificate was presented.
    None,
    /// It chains to the site CA and is valid now.
    Verified(CertInfo),
    /// It does not; `reason` is stable (`tls_cert_expired`), `why` is for people.
    Rejected {
        reason: &'static str,
        why: String,
        subject: Option<String>,
    },
}

/// What identity resolution and status read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as an RFC 4514 string (`CN=ward-a-app,O=Hospital`).
    pub subject: String,
    pub cn: Option<String>,
    /// DNS, e-mail and URI subject alternative names.
    pub sans: Vec<String>,
    pub not_after: SystemTime,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
}

impl CertInfo {
    /// Reads a DER certificate; `None` if it cannot be parsed.
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        sans.push((*s).to_owned())
                    }
                    _ => {}
                }
            }
        }
        let secs = cert.validity().not_after.timestamp();
        let not_after = if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        };
        Some(CertInfo {
            subject: cert.subject().to_string(),
            cn,
            sans,
            not_after,
            sha256: hex::encode(Sha256::digest(der)),
        })
    }
}

/// The handshake's client certificate verifier: it offers client authentication, proves the
/// client's possession of its key with the WebPKI verifier, and leaves the chain decision to
/// [`TlsMaterial::check_peer`] right after the handshake (see the module docs).
#[derive(Debug)]
struct AfterHandshake(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for AfterHandshake {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
