//! `applctl diagnose`: one archive (`.tar.gz`) for the vendor, built from what can be read,
//! whether the daemon runs or not. It holds:
//!
//! - `versions.txt`: applctl's and appld's versions, the daemon's build (GPU features, CPU
//!   variant) when it answers, the OS and kernel;
//! - `config.toml`: appld's config with every value under a secret-looking key (`key`,
//!   `secret`, `password`, `passphrase`, `token`, `private`, `credential`, `psk` as a word of
//!   the key) and any PEM private key redacted;
//! - `inventory.json`: the hardware, as `applctl check --record` writes it;
//! - `logs.txt`: the daemon's last log lines (the journal, or `--log-file`); appld never logs
//!   prompt or completion text;
//! - `status.txt`: `Admin.Status`, when the daemon answers;
//! - `audit-verify.json`: the audit log's verify report (through the daemon, or on the stopped
//!   daemon's store);
//! - `MANIFEST.txt`: what is in it, and what was left out and why.
//!
//! It never holds a prompt, a completion, an audit record (nor the store), a key file, or a
//! certificate's private part: nothing is copied from the audit directory or the key paths,
//! only the reports above.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

use anyhow::Context;
use appl_audit::{verify_store, StoreReader, Timestamp};
use appl_firmware_profiles::probe;
use appl_proto::v1 as pb;

use crate::client::ConnArgs;

/// Write a diagnostic archive for the vendor.
#[derive(Debug, clap::Args)]
pub struct DiagnoseArgs {
    /// The archive to write; by default `appl-diagnose-<host>-<time>.tar.gz` here.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// appld's config file.
    #[arg(long, env = "APPLD_CONFIG", default_value = "/etc/appl/appld.toml")]
    pub config: PathBuf,
    /// Read the daemon's log from this file instead of the journal (`journalctl -u appld`).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// How many of the last log lines.
    #[arg(long, default_value_t = 2000)]
    pub log_lines: usize,
    /// The appld binary to ask for its version; by default the one beside applctl, else
    /// `appld` on the PATH.
    #[arg(long, value_name = "FILE")]
    pub appld: Option<PathBuf>,
}

/// The archive being assembled, with its manifest.
#[derive(Default)]
struct Bundle {
    files: Vec<(String, Vec<u8>)>,
    manifest: Vec<String>,
}

impl Bundle {
    fn add(&mut self, name: &str, what: &str, bytes: Vec<u8>) {
        self.manifest
            .push(format!("included  {name} ({} bytes): {what}", bytes.len()));
        self.files.push((name.to_owned(), bytes));
    }

    fn skip(&mut self, name: &str, why: impl std::fmt::Display) {
        self.manifest.push(format!("left out  {name}: {why}"));
    }
}

/// Whether a config key names a secret: one of its words (split at `_`, `-`, `.`) is.
pub fn secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().split(['_', '-', '.']).any(|w| {
        matches!(
            w,
            "key"
                | "secret"
                | "secrets"
                | "password"
                | "passphrase"
                | "token"
                | "private"
                | "credential"
                | "credentials"
                | "psk"
        )
    })
}

/// Redacts secrets in a parsed config, in place.
pub fn redact(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => {
            for (k, val) in t.iter_mut() {
                let nested = matches!(val, toml::Value::Table(_))
                    || matches!(val, toml::Value::Array(a) if a.iter().any(|x| x.is_table()));
                if secret_key(k) && !nested {
                    *val = toml::Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        toml::Value::String(s) if s.contains("PRIVATE KEY") => {
            *s = "<redacted: a private key>".into();
        }
        _ => {}
    }
}

/// The config with its secrets redacted, and the audit store it names.
fn config_part(path: &Path) -> anyhow::Result<(String, PathBuf)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut v: toml::Value = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid TOML, so it cannot be redacted safely: {e}",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = v
        .get("audit")
        .and_then(|a| a.get("dir"))
        .and_then(|d| d.as_str())
        .map_or_else(|| PathBuf::from("/var/lib/appl/audit"), PathBuf::from);
    let dir = if dir.is_relative() {
        base.join(dir)
    } else {
        dir
    };
    redact(&mut v);
    let out = format!(
        "# {} as applctl diagnose read it; values under secret-looking keys are redacted\n{}",
        path.display(),
        toml::to_string_pretty(&v)?
    );
    Ok((out, dir))
}

fn run_text(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("failed")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn appld_binary(a: &DiagnoseArgs) -> PathBuf {
    if let Some(p) = &a.appld {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("appld")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("appld"))
}

/// The last `n` lines of the daemon's log.
fn logs(a: &DiagnoseArgs) -> anyhow::Result<(String, String)> {
    match &a.log_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(a.log_lines)..].join("\n");
            Ok((
                tail + "\n",
                format!("the last {} lines of {}", a.log_lines, p.display()),
            ))
        }
        None => {
            let text = run_text(Command::new("journalctl").args([
                "--unit",
                "appld",
                "--no-pager",
                "--output",
                "short-iso",
                "--lines",
                &a.log_lines.to_string(),
            ]))
            .context("journalctl -u appld")?;
            Ok((
                text,
                format!("the last {} journal lines of appld", a.log_lines),
            ))
        }
    }
}

/// Runs `applctl diagnose`.
pub async fn run(conn: &ConnArgs, a: &DiagnoseArgs) -> anyhow::Result<ExitCode> {
    let mut b = Bundle::default();
    let inventory = probe::probe_system();
    let host = inventory
        .as_ref()
        .ok()
        .and_then(|i| i.hostname.clone())
        .unwrap_or_else(|| "appliance".into());
    let now = Timestamp::from_system(SystemTime::now()).to_string();
    // The daemon, if it answers.
    let status = match conn.connect().await {
        Ok(ch) => pb::admin_client::AdminClient::new(ch.clone())
            .status(pb::StatusRequest {})
            .await
            .map(|r| (ch, r.into_inner()))
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message())),
        Err(e) => Err(e),
    };
    // versions.txt
    let mut v = format!("collected {now}\napplctl {}\n", env!("CARGO_PKG_VERSION"));
    match run_text(Command::new(appld_binary(a)).arg("--version")) {
        Ok(t) => v.push_str(t.trim_end()),
        Err(e) => v.push_str(&format!("appld --version: {e}")),
    }
    v.push('\n');
    match &status {
        Ok((_, s)) => {
            if let Some(build) = &s.build {
                v.push_str(&format!(
                    "running appld {}; GPU features: {}; CPU variant: {}\n",
                    build.version,
                    if build.features.is_empty() {
                        "none (CPU build)".to_owned()
                    } else {
                        build.features.join(", ")
                    },
                    if build.cpu_variant.is_empty() {
                        "not reported"
                    } else {
                        &build.cpu_variant
                    }
                ));
            }
        }
        Err(e) => v.push_str(&format!("the daemon did not answer: {e:#}\n")),
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        v.push_str(&format!("kernel {}\n", k.trim()));
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release") {
        if let Some(p) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
            v.push_str(&format!("os {}\n", p.trim_matches('"')));
        }
    }
    b.add("versions.txt", "versions and build", v.into_bytes());
    // config.toml
    let audit_dir = match config_part(&a.config) {
        Ok((text, dir)) => {
            b.add(
                "config.toml",
                "appld's config, secrets redacted",
                text.into_bytes(),
            );
            Some(dir)
        }
        Err(e) => {
            b.skip("config.toml", format!("{e:#}"));
            None
        }
    };
    // inventory.json
    match &inventory {
        Ok(inv) => b.add(
            "inventory.json",
            "the hardware, as `applctl check --record` writes it",
            (inv.to_json() + "\n").into_bytes(),
        ),
        Err(e) => b.skip("inventory.json", format!("probing failed: {e}")),
    }
    // logs.txt
    match logs(a) {
        Ok((text, what)) => b.add("logs.txt", &what, text.into_bytes()),
        Err(e) => b.skip("logs.txt", format!("{e:#}")),
    }
    // status.txt and audit-verify.json
    match status {
        Ok((ch, s)) => {
            b.add(
                "status.txt",
                "Admin.Status",
                format!("{s:#?}\n").into_bytes(),
            );
            match pb::audit_client::AuditClient::new(ch)
                .verify_store(pb::VerifyRequest {})
                .await
            {
                Ok(r) => b.add(
                    "audit-verify.json",
                    "the live audit log's verify report (through the daemon)",
                    (r.into_inner().report_json + "\n").into_bytes(),
                ),
                Err(s) => b.skip(
                    "audit-verify.json",
                    format!("Audit.VerifyStore: {:?}: {}", s.code(), s.message()),
                ),
            }
        }
        Err(e) => {
            b.skip("status.txt", format!("the daemon did not answer: {e:#}"));
            match audit_dir {
                Some(dir) => match verify_stopped(&dir) {
                    Ok(json) => b.add(
                        "audit-verify.json",
                        &format!(
                            "the verify report of the stopped daemon's store {}",
                            dir.display()
                        ),
                        json.into_bytes(),
                    ),
                    Err(e) => b.skip("audit-verify.json", format!("{e:#}")),
                },
                None => b.skip("audit-verify.json", "no config to find the audit store in"),
            }
        }
    }
    let output = a.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "appl-diagnose-{host}-{}.tar.gz",
            now.replace([':', '-', '.'], "").get(..15).unwrap_or("now")
        ))
    });
    write_archive(&output, &mut b)?;
    println!("wrote {}", output.display());
    for line in &b.manifest {
        println!("  {line}");
    }
    println!(
        "  never included: prompts, completions, audit records, keys, private parts of certificates"
    );
    Ok(ExitCode::SUCCESS)
}

/// The verify report of a stopped daemon's store, against the public key kept beside it.
fn verify_stopped(dir: &Path) -> anyhow::Result<String> {
    let reader = StoreReader::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let vk = reader.public_key()?;
    let report = verify_store(&reader, &vk)?;
    Ok(serde_json::to_string_pretty(&report)? + "\n")
}

/// Writes the archive (mode 0600) under a temporary name, then renames it into place.
fn write_archive(output: &Path, b: &mut Bundle) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut manifest = b.manifest.join("\n");
    manifest.push_str(
        "\nnever included: prompts, completions, audit records, keys, private parts of certificates\n",
    );
    b.files.push(("MANIFEST.txt".into(), manifest.into_bytes()));
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".appl-diagnose.partial-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let res = (|| -> anyhow::Result<()> {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, bytes) in &b.files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_cksum();
            tar.append_data(&mut h, format!("appl-diagnose/{name}"), bytes.as_slice())?;
        }
        let mut gz = tar.into_inner()?;
        gz.flush()?;
        gz.finish()?.sync_all()?;
        std::fs::rename(&tmp, output)
            .with_context(|| format!("renaming to {}", output.display()))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_config_are_redacted() {
        let text = r#"
[server]
listen = "127.0.0.1:50051"
[limits]
max_tokens_cap = 512
[queue]
prefix_reuse_min_tokens = 16
[tls]
key_file = "/etc/appl/tls/server.key"
client_ca = "/etc/appl/tls/ca.pem"
password = "hunter2"
inline = """-----BEGIN PRIVATE KEY-----
MIIEvQ
-----END PRIVATE KEY-----"""
[[tenants]]
name = "clinic"
api_token = "t0ps3cret"
"#;
        let mut v: toml::Value = toml::from_str(text).expect("toml");
        redact(&mut v);
        let out = toml::to_string_pretty(&v).expect("toml");
        for secret in ["hunter2", "t0ps3cret", "MIIEvQ", "server.key"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        for kept in [
            "127.0.0.1:50051",
            "prefix_reuse_min_tokens = 16",
            "clinic",
            "ca.pem",
        ] {
            assert!(out.contains(kept), "{kept} missing:\n{out}");
        }
    }

    #[test]
    fn secret_keys_are_whole_words() {
        for k in [
            "key",
            "tls_key",
            "key-file",
            "api_token",
            "Password",
            "private_key_path",
        ] {
            assert!(secret_key(k), "{k}");
        }
        for k in [
            "prefix_reuse_min_tokens",
            "max_tokens_cap",
            "keyboard",
            "monkey",
            "tokens_per_minute",
        ] {
            assert!(!secret_key(k), "{k}");
        }
    }
}
