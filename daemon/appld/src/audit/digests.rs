//! The SHA-256 of each model's GGUF file, for the audit records and the check against the
//! digest verified at import: computed streaming on its own thread while llama.cpp loads the
//! file, and cached in the audit directory keyed by the file's identity and change time, so an
//! unchanged file is not hashed again at the next load.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use appl_audit::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

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

fn sha256_file(path: &Path, hashed: &AtomicU64) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        hashed.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(h.finalize().into())
}

/// What a model file was when it was hashed: if this differs later, the file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(FileId);

impl FileStamp {
    /// The file's identity now.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        FileId::of(path).map(FileStamp)
    }
}

/// The digest of a model file known without reading it: the cached one when the file is
/// unchanged since it was hashed, else the one `applctl models import` verified and wrote
/// beside it. For the record of a load refused before the file was hashed.
pub fn known_sha256(cache_dir: &Path, path: &Path) -> Option<Digest> {
    let hex_to = |h: &str| {
        let mut d = [0u8; 32];
        hex::decode_to_slice(h, &mut d).ok().map(|()| Digest(d))
    };
    let id = FileId::of(path).ok();
    let cache: Option<DigestCache> = std::fs::read(cache_dir.join(DIGEST_CACHE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let cached = cache.and_then(|c| {
        c.entries
            .into_iter()
            .find(|(k, _)| Some(k) == id.as_ref())
            .and_then(|(_, h)| hex_to(&h))
    });
    cached.or_else(|| {
        let mut side = path.as_os_str().to_owned();
        side.push(".sha256");
        let text = std::fs::read_to_string(PathBuf::from(side)).ok()?;
        hex_to(text.split_whitespace().next()?)
    })
}

/// SHA-256 of a model's GGUF file, streaming, counting the bytes read in `hashed`; reuses the
/// digest cached in `cache_dir` (the audit directory) for a file that has not changed, and
/// caches a new one. Returns the digest and the file's identity when it was hashed. Blocking:
/// run it on its own thread (it overlaps with llama.cpp reading the same file).
pub fn file_sha256(
    cache_dir: &Path,
    path: &Path,
    hashed: &AtomicU64,
) -> std::io::Result<(Digest, FileStamp)> {
    let cache_path = cache_dir.join(DIGEST_CACHE_FILE);
    let mut cache: DigestCache = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let id = FileId::of(path)?;
    let cached = cache
        .entries
        .iter()
        .find(|(k, _)| *k == id)
        .and_then(|(_, h)| {
            let mut d = [0u8; 32];
            hex::decode_to_slice(h, &mut d).ok().map(|()| d)
        });
    if let Some(d) = cached {
        hashed.store(id.size, Ordering::Relaxed);
        return Ok((Digest(d), FileStamp(id)));
    }
    let t = Instant::now();
    let d = sha256_file(path, hashed)?;
    // The file must not have changed while it was read.
    if FileId::of(path)? != id {
        return Err(std::io::Error::other(
            "the model file changed while it was being hashed",
        ));
    }
    info!(target: "audit", path = %path.display(), ms = t.elapsed().as_millis() as u64, "hashed the model file");
    cache.entries.retain(|(k, _)| k.path != id.path);
    cache.entries.push((id.clone(), hex::encode(d)));
    let tmp = cache_path.with_extension("json.tmp");
    let res = serde_json::to_vec(&cache)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &cache_path));
    if let Err(e) = res {
        warn!(target: "audit", path = %cache_path.display(), error = %e,
            "could not cache the model digest; it will be computed again at the next load");
    }
    Ok((Digest(d), FileStamp(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_sha256_and_cached_until_the_file_changes() {
        let d = tempfile::tempdir().expect("tempdir");
        let model = d.path().join("m.gguf");
        std::fs::write(&model, b"abc").expect("write");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hashed = AtomicU64::new(0);
        let (got, stamp) = file_sha256(d.path(), &model, &hashed).expect("hash");
        assert_eq!(hex::encode(got.0), abc);
        assert_eq!(hashed.load(Ordering::Relaxed), 3);
        assert!(d.path().join(DIGEST_CACHE_FILE).exists());
        assert_eq!(FileStamp::of(&model).expect("stat"), stamp);
        // Cached: same answer.
        let (again, _) = file_sha256(d.path(), &model, &AtomicU64::new(0)).expect("hash");
        assert_eq!(hex::encode(again.0), abc);
        // Rewritten: hashed again, and the stamp tells.
        std::fs::write(&model, b"abd").expect("write");
        assert_ne!(FileStamp::of(&model).expect("stat"), stamp);
        let (changed, _) = file_sha256(d.path(), &model, &AtomicU64::new(0)).expect("hash");
        assert_ne!(hex::encode(changed.0), abc);
    }
}
