//! Certificates for a test daemon, made with rcgen in the test: a site CA, the server's
//! certificate (for 127.0.0.1 and localhost), and client certificates on demand, valid, expired,
//! or from another CA.

use std::path::{Path, PathBuf};

use appl_proto::client::TlsClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A client's certificate and key, in PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("self-sign the CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, and its key.
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.distinguished_name.push(DnType::CommonName, "appld e2e");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p
            .signed_by(&key, &self.issuer)
            .expect("sign the server cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with subject CN `cn`, valid from yesterday for a year.
    pub fn client(&self, cn: &str) -> ClientCert {
        let now = time::OffsetDateTime::now_utc();
        self.client_valid(
            cn,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
    }

    /// A client certificate with subject CN `cn` that expired yesterday.
    pub fn expired_client(&self, cn: &str) -> ClientCert {
        let now = time::OffsetDateTime::now_utc();
        self.client_valid(
            cn,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
    }

    fn client_valid(
        &self,
        cn: &str,
        from: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> ClientCert {
        let key = KeyPair::generate().expect("client key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = from;
        p.not_after = until;
        let cert = p
            .signed_by(&key, &self.issuer)
            .expect("sign the client cert");
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl ClientCert {
    /// Writes the certificate and key as `<dir>/<name>.crt` and `.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

/// The TLS client settings for a daemon whose CA is `ca_pem`, presenting `client` if given.
pub fn tls_client(ca_pem: &str, client: Option<&ClientCert>) -> TlsClient {
    TlsClient {
        ca_pem: ca_pem.as_bytes().to_vec(),
        identity: client.map(|c| {
            (
                c.cert_pem.as_bytes().to_vec(),
                c.key_pem.as_bytes().to_vec(),
            )
        }),
        server_name: None,
    }
}
