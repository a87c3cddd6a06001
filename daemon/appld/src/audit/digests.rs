//! The SHA-256 of each model's GGUF file, for the audit records: computed streaming on its
//! own thread while the models load, and cached in the audit directory keyed by the file's
//! identity and change time, so an unchanged file is not hashed again at the next start.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use appl_audit::{AuditError, Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::config::Config;

/// File with the digests of model files already hashed, in the audit directory.
const DIGEST_CACHE_FILE: &str = "model-sha256.cache.json";

/// What identifies one version of a file: if any of these changed, it is hashed again. The
/// change time (`ctime`) cannot be set from user space, so a file rewritten in place and
/// touched back to its old `mtime` is still noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DigestCache {
    entries: Vec<(FileId, String)>,
}

fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// SHA-256 of every configured model's GGUF, streaming, reusing digests cached in the audit
/// directory for files that have not changed. Blocking: run it on its own thread (it overlaps
/// with model loading).
pub fn hash_models(config: &Config) -> Result<BTreeMap<String, Digest>, AuditError> {
    let cache_path = config.audit.dir.join(DIGEST_CACHE_FILE);
    let mut cache: DigestCache = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut changed = false;
    for m in &config.models {
        let io = |source| AuditError::Io {
            path: m.path.clone(),
            source,
        };
        let id = FileId::of(&m.path).map_err(io)?;
        let cached = cache
            .entries
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, h)| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(h, &mut d).ok().map(|()| d)
            });
        let d = match cached {
            Some(d) => d,
            None => {
                let t = Instant::now();
                let d = sha256_file(&m.path).map_err(io)?;
                // The file must not have changed while it was read.
                if FileId::of(&m.path).map_err(io)? != id {
                    return Err(io(std::io::Error::other(
                        "the model file changed while it was being hashed",
                    )));
                }
                info!(target: "audit", model = %m.id, ms = t.elapsed().as_millis() as u64, "hashed the model file");
                cache.entries.retain(|(k, _)| k.path != id.path);
                cache.entries.push((id, hex::encode(d)));
                changed = true;
                d
            }
        };
        out.insert(m.id.clone(), Digest(d));
    }
    if changed {
        let tmp = cache_path.with_extension("json.tmp");
        let res = serde_json::to_vec(&cache)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &cache_path));
        if let Err(e) = res {
            warn!(target: "audit", path = %cache_path.display(), error = %e,
                "could not cache model digests; they will be computed again at the next start");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_sha256_and_cached_until_the_file_changes() {
        let d = tempfile::tempdir().expect("tempdir");
        let model = d.path().join("m.gguf");
        std::fs::write(&model, b"abc").expect("write");
        let text = format!(
            "[audit]\ndir = \"{}\"\n[[models]]\nid = \"m\"\npath = \"{}\"\n",
            d.path().join("audit").display(),
            model.display()
        );
        let config = Config::parse(&d.path().join("appld.toml"), &text).expect("config");
        std::fs::create_dir_all(&config.audit.dir).expect("mkdir");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got = hash_models(&config).expect("hash");
        assert_eq!(hex::encode(got["m"].0), abc);
        assert!(config.audit.dir.join(DIGEST_CACHE_FILE).exists());
        // Cached: same answer.
        assert_eq!(hex::encode(hash_models(&config).expect("hash")["m"].0), abc);
        // Rewritten: hashed again.
        std::fs::write(&model, b"abd").expect("write");
        assert_ne!(hex::encode(hash_models(&config).expect("hash")["m"].0), abc);
    }
}
