//! `applctl certs`: a site CA and certificates for offline sites with no PKI of their own
//! (rcgen, ECDSA P-256), and `show` for subjects and expiry. `applctl keys new`: an API key
//! and the digest the config stores.
//!
//! Roles and tenants are not written into certificates: the daemon maps a certificate's CN or
//! SAN to them through `[[identities]]`, so `issue` prints the entry to add.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

/// Certificates expiring within this many days are warned about.
pub const WARN_DAYS: u64 = 30;

const ROLES: [&str; 4] = ["inference", "operator", "auditor", "gateway"];

#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Create a site CA: DIR/ca.crt (hand it to clients and set tls.client_ca to it) and
    /// DIR/ca.key (mode 0600; keep it offline if you can).
    InitCa {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "appl site CA")]
        cn: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA in --ca-dir: a client certificate (mapped by its
    /// CN through [[identities]]; the entry to add is printed), or with --server the daemon's.
    Issue {
        /// The folder holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Subject common name: the identity a client certificate is mapped by.
        #[arg(long)]
        cn: String,
        /// Roles for the printed [[identities]] entry (inference, operator, auditor, gateway).
        #[arg(long = "role", value_parser = ROLES)]
        roles: Vec<String>,
        /// Tenant for the printed [[identities]] entry.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A server certificate (for tls.cert) instead of a client one.
        #[arg(long)]
        server: bool,
        /// DNS names the server certificate is valid for (repeat).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the server certificate is valid for (repeat).
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write NAME.crt and NAME.key; defaults to --ca-dir.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Show certificates: subject, SANs, issuer, validity, days left, SHA-256. Exit 1 if one
    /// has expired; warns when one expires within 30 days.
    Show {
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: &CertsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCmd::InitCa { dir, cn, days } => init_ca(dir, cn, *days),
        CertsCmd::Issue {
            ca_dir,
            cn,
            roles,
            tenant,
            server,
            dns,
            ip,
            days,
            out_dir,
        } => {
            let req = IssueRequest {
                cn,
                server: *server,
                dns,
                ip,
                days: *days,
            };
            issue(ca_dir, out_dir.as_deref().unwrap_or(ca_dir), &req)?;
            if !server {
                let roles = if roles.is_empty() {
                    vec!["inference".to_owned()]
                } else {
                    roles.clone()
                };
                let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
                println!(
                    "\nAdd to appld.toml (then SIGHUP the daemon):\n\n[[identities]]\ncn = {cn:?}\n\
                     tenant = {tenant:?}\nroles = [{}]",
                    roles.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCmd::Show { files, json } => show(files, *json),
    }
}

fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks that disagree a little.
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    )
}

/// Writes a new file; refuses to replace one. `secret` files are mode 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn init_ca(dir: &Path, cn: &str, days: u32) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.not_before, p.not_after) = validity(days);
    let cert = p.self_signed(&key)?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write_new(&dir.join("ca.crt"), &cert.pem(), false)?;
    println!(
        "created {} and {} (mode 0600)",
        dir.join("ca.crt").display(),
        dir.join("ca.key").display()
    );
    Ok(ExitCode::SUCCESS)
}

struct IssueRequest<'a> {
    cn: &'a str,
    server: bool,
    dns: &'a [String],
    ip: &'a [IpAddr],
    days: u32,
}

fn issue(ca_dir: &Path, out: &Path, r: &IssueRequest<'_>) -> anyhow::Result<()> {
    if r.cn.is_empty() || r.cn.len() > 64 {
        bail!("--cn must be 1 to 64 characters");
    }
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt"))
        .with_context(|| format!("reading {}/ca.crt", ca_dir.display()))?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(ca_dir.join("ca.key"))
            .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?,
    )
    .context("ca.key is not a PEM private key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("ca.crt is not a CA certificate")?;
    let mut names = r.dns.to_vec();
    if r.server && names.is_empty() && r.ip.is_empty() {
        names.push(r.cn.to_owned());
    }
    let mut p = CertificateParams::new(names)?;
    for a in r.ip {
        p.subject_alt_names.push(SanType::IpAddress(*a));
    }
    p.distinguished_name.push(DnType::CommonName, r.cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if r.server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    (p.not_before, p.not_after) = validity(r.days);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out)?;
    let stem: String =
        r.cn.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    let (c, k) = (
        out.join(format!("{stem}.crt")),
        out.join(format!("{stem}.key")),
    );
    write_new(&k, &key.serialize_pem(), true)?;
    write_new(&c, &cert.pem(), false)?;
    println!("created {} and {} (mode 0600)", c.display(), k.display());
    Ok(())
}

/// What `show` and `status` read from a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    pub file: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub sha256: String,
}

/// Reads every certificate in a PEM file.
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<Shown>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&text) {
        let pem = pem.with_context(|| format!("{}: not PEM", path.display()))?;
        let cert = pem
            .parse_x509()
            .with_context(|| format!("{}: not an X.509 certificate", path.display()))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                sans.push(n.to_string());
            }
        }
        let not_after = cert.validity().not_after.timestamp();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as i64;
        out.push(Shown {
            file: path.display().to_string(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
            days_left: (not_after - now).div_euclid(86_400),
            sha256: hex::encode(Sha256::digest(&pem.contents)),
        });
    }
    if out.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(out)
}

fn show(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    if files.is_empty() {
        bail!("name at least one certificate file");
    }
    let mut all = Vec::new();
    for f in files {
        all.extend(read_pem_certs(f)?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for c in &all {
            println!("{}", c.file);
            println!("  subject:   {}", c.subject);
            println!("  issuer:    {}", c.issuer);
            if !c.sans.is_empty() {
                println!("  SANs:      {}", c.sans.join(", "));
            }
            println!("  valid:     {} .. {}", c.not_before, c.not_after);
            println!("  days left: {}", c.days_left);
            println!("  sha256:    {}", c.sha256);
            if c.days_left < 0 {
                println!("  EXPIRED");
            } else if c.days_left < WARN_DAYS as i64 {
                println!("  WARNING: expires within {WARN_DAYS} days; issue a new one");
            }
        }
    }
    Ok(if all.iter().any(|c| c.days_left < 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Make a new API key. The key is printed once and stored nowhere; the config keeps only
    /// its SHA-256 (printed as an [[api_keys]] entry to add).
    New {
        /// The key's name, recorded in the audit log as key:<name>.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long = "role", value_parser = ROLES)]
        roles: Vec<String>,
    },
    /// Print the SHA-256 (as the config stores it) of a key read from standard input.
    Digest,
}

pub fn keys(cmd: &KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::New {
            name,
            tenant,
            roles,
        } => {
            let mut raw = [0u8; 32];
            getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let key = format!("appl_{}", hex::encode(raw));
            let roles = if roles.is_empty() {
                vec!["inference".to_owned()]
            } else {
                roles.clone()
            };
            let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
            println!("API key (shown once; give it to the client, e.g. as APPL_API_KEY):\n{key}\n");
            println!(
                "Add to appld.toml (then SIGHUP the daemon):\n\n[[api_keys]]\nname = {name:?}\n\
                 sha256 = \"{}\"\ntenant = {tenant:?}\nroles = [{}]\nenabled = true",
                hex::encode(Sha256::digest(key.as_bytes())),
                roles.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Digest => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!("{}", hex::encode(Sha256::digest(key.trim().as_bytes())));
            Ok(ExitCode::SUCCESS)
        }
    }
}
