//! Key files: the Ed25519 checkpoint key and the prompt HMAC key.
//!
//! Both are created on first start in the store directory with mode 0600 (readable only by the
//! daemon's user); the public key is written beside them with mode 0644 so that it can be
//! handed to auditors for offline verification.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::error::AuditError;

/// File name of the Ed25519 private key (hex seed), mode 0600.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// File name of the Ed25519 public key (hex), mode 0644.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// File name of the prompt HMAC key (hex), mode 0600.
pub const HMAC_KEY_FILE: &str = "prompt-hmac.key";

/// The appliance's secrets.
pub(crate) struct Keys {
    pub signing: SigningKey,
    pub hmac: [u8; 32],
}

fn random32() -> Result<[u8; 32], AuditError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| AuditError::Key(format!("no randomness: {e}")))?;
    Ok(b)
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), AuditError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| AuditError::io(path, e))?;
    // The umask may have narrowed the mode; make it exact.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| AuditError::io(path, e))
}

fn read_secret(path: &Path) -> Result<[u8; 32], AuditError> {
    let meta = fs::metadata(path).map_err(|e| AuditError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::Key(format!(
            "{} has mode {mode:o}; it must be readable only by its owner (chmod 600)",
            path.display()
        )));
    }
    let s = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    crate::record::parse_hash(s.trim())
        .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

/// Loads the keys from `dir`, creating any that are missing.
pub(crate) fn load_or_create(dir: &Path) -> Result<Keys, AuditError> {
    let sk_path = dir.join(SIGNING_KEY_FILE);
    let pk_path = dir.join(PUBLIC_KEY_FILE);
    let hk_path = dir.join(HMAC_KEY_FILE);
    let mut created = false;
    if !sk_path.exists() {
        let seed = random32()?;
        write_new(&sk_path, &format!("{}\n", hex::encode(seed)), 0o600)?;
        let vk = SigningKey::from_bytes(&seed).verifying_key();
        if pk_path.exists() {
            fs::remove_file(&pk_path).map_err(|e| AuditError::io(&pk_path, e))?;
        }
        write_new(
            &pk_path,
            &format!("{}\n", hex::encode(vk.as_bytes())),
            0o644,
        )?;
        tracing::info!(target: "audit", key = %fingerprint(&vk), "created audit signing key");
        created = true;
    }
    if !hk_path.exists() {
        write_new(&hk_path, &format!("{}\n", hex::encode(random32()?)), 0o600)?;
        created = true;
    }
    if created {
        sync_dir(dir)?;
    }
    let signing = SigningKey::from_bytes(&read_secret(&sk_path)?);
    if !pk_path.exists() {
        write_new(
            &pk_path,
            &format!("{}\n", hex::encode(signing.verifying_key().as_bytes())),
            0o644,
        )?;
    }
    let hmac = read_secret(&hk_path)?;
    Ok(Keys { signing, hmac })
}

/// Reads the signing key of the store in `dir` (it must exist: the daemon creates it).
pub(crate) fn load_signing_key(dir: &Path) -> Result<SigningKey, AuditError> {
    Ok(SigningKey::from_bytes(&read_secret(
        &dir.join(SIGNING_KEY_FILE),
    )?))
}

/// Reads a public key file (64 hex digits, surrounding whitespace ignored).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let s = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    parse_public_key(s.trim()).map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

/// Parses a hex public key.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let b = crate::record::parse_hash(s)?;
    VerifyingKey::from_bytes(&b).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// `SHA256:<hex>` of the raw public key: what manifests and reports name a key by.
pub fn fingerprint(vk: &VerifyingKey) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(vk.as_bytes())))
}

/// HMAC-SHA256 of `data` under `key`.
pub(crate) fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let k1 = load_or_create(d.path()).unwrap();
        for f in [SIGNING_KEY_FILE, HMAC_KEY_FILE] {
            let mode = fs::metadata(d.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let k2 = load_or_create(d.path()).unwrap();
        assert_eq!(k1.signing.to_bytes(), k2.signing.to_bytes());
        assert_eq!(k1.hmac, k2.hmac);
        let pk = read_public_key(&d.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(pk, k1.signing.verifying_key());
        // Widen the mode: refused.
        fs::set_permissions(
            d.path().join(SIGNING_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(load_or_create(d.path()), Err(AuditError::Key(_))));
    }

    #[test]
    fn hmac_is_keyed() {
        // RFC 4231 test case 2 uses a 4-byte key; here we check keying and determinism only.
        let a = hmac_sha256(&[1; 32], b"marker");
        assert_eq!(a, hmac_sha256(&[1; 32], b"marker"));
        assert_ne!(a, hmac_sha256(&[2; 32], b"marker"));
        assert_ne!(a, <[u8; 32]>::from(Sha256::digest(b"marker")));
    }
}
