//! The sled store: key layout, the synchronous writer core, readers, pruning.
//!
//! Layout of the single sled tree in `<dir>/db` (one tree, so that a batch of records and the
//! metadata that describes them are applied atomically by `apply_batch`):
//!
//! | key | value |
//! |---|---|
//! | `r` + seq (u64 big-endian) | leaf hash (32 bytes) + canonical record JSON |
//! | `c` + size (u64 big-endian) | checkpoint JSON |
//! | `m/frontier` | JSON: tree size, frontier nodes, last timestamp |
//! | `m/base` | u64 big-endian: records below it were pruned (a checkpoint exists at it) |
//! | `m/probe` | scratch value written while recovering from a failure |
//!
//! The latest checkpoint is also written to `<dir>/checkpoint.latest.json`, outside sled, so that
//! a store that lost records together with their checkpoints (truncated by hand, or by a
//! damaged log) still fails verification.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::AuditError;
use crate::keys::{self, Keys};
use crate::merkle::{Frontier, Hash};
use crate::record::{NewRecord, Record, Timestamp};

/// Subdirectory of the store directory that holds the sled database.
pub const DB_DIR: &str = "db";
/// File holding a copy of the latest checkpoint.
pub const LATEST_CHECKPOINT_FILE: &str = "checkpoint.latest.json";

const META_FRONTIER: &[u8] = b"m/frontier";
const META_BASE: &[u8] = b"m/base";
const META_PROBE: &[u8] = b"m/probe";

/// Key of record `seq`.
pub fn record_key(seq: u64) -> [u8; 9] {
    prefixed(b'r', seq)
}

/// Key of the checkpoint at `size`.
pub fn checkpoint_key(size: u64) -> [u8; 9] {
    prefixed(b'c', size)
}

fn prefixed(p: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = p;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn key_num(k: &[u8]) -> Option<u64> {
    (k.len() == 9).then(|| u64::from_be_bytes(k[1..].try_into().expect("length checked")))
}

/// A record as stored, with the leaf hash stored beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredRecord {
    /// The record.
    pub record: Record,
    /// The stored leaf hash (equal to `record.leaf_hash()` unless the store was altered).
    #[serde(with = "crate::merkle::hex_hash")]
    pub leaf: Hash,
}

pub(crate) fn encode_value(leaf: &Hash, canonical: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + canonical.len());
    v.extend_from_slice(leaf);
    v.extend_from_slice(canonical);
    v
}

/// Decodes a stored value; the error says what is wrong with it.
pub(crate) fn decode_value(v: &[u8]) -> Result<StoredRecord, String> {
    if v.len() < 33 {
        return Err(format!("stored value is only {} bytes", v.len()));
    }
    let leaf: Hash = v[..32].try_into().expect("length checked");
    let record = Record::from_canonical(&v[32..])?;
    Ok(StoredRecord { record, leaf })
}

#[derive(Serialize, Deserialize)]
struct FrontierMeta {
    size: u64,
    nodes: Vec<String>,
    last_ts: Timestamp,
}

/// Where a fault can be injected ([`crate::AuditConfig::fault_hook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Before records or metadata are written to sled.
    Write,
    /// Before sled is flushed (fsync).
    Flush,
    /// Before the store is reopened during recovery.
    Open,
}

/// A fault-injection hook: returning an error makes that step fail as a real I/O error would.
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> std::io::Result<()> + Send + Sync>;

pub(crate) fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, AuditError> {
    let open = || {
        sled::Config::new()
            .path(dir.join(DB_DIR))
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
    };
    // sled releases its file lock from a background thread after the last handle is dropped, so
    // a store closed a moment ago (a daemon that just exited, a reader just dropped) can still
    // look locked for a few milliseconds. Wait briefly before calling it locked.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// What the writer keeps in memory, reloaded from disk after a failure.
#[derive(Clone)]
pub(crate) struct State {
    pub frontier: Frontier,
    pub last_ts: Timestamp,
    pub base: u64,
    pub last_cp: Option<Checkpoint>,
}

fn read_checkpoint(v: &[u8]) -> Result<Checkpoint, AuditError> {
    serde_json::from_slice(v).map_err(|e| AuditError::Corrupt(format!("checkpoint: {e}")))
}

pub(crate) fn read_base(db: &sled::Db) -> Result<u64, AuditError> {
    Ok(match db.get(META_BASE)? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| AuditError::Corrupt("m/base is not 8 bytes".into()))?,
        ),
        None => 0,
    })
}

pub(crate) fn read_frontier(db: &sled::Db) -> Result<(Frontier, Timestamp), AuditError> {
    Ok(match db.get(META_FRONTIER)? {
        Some(v) => {
            let m: FrontierMeta = serde_json::from_slice(&v)
                .map_err(|e| AuditError::Corrupt(format!("m/frontier: {e}")))?;
            let nodes = m
                .nodes
                .iter()
                .map(|s| crate::record::parse_hash(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(AuditError::Corrupt)?;
            (
                Frontier::from_parts(m.size, nodes).map_err(AuditError::Corrupt)?,
                m.last_ts,
            )
        }
        None => (Frontier::new(), Timestamp { unix_micros: 0 }),
    })
}

pub(crate) fn load_state(db: &sled::Db) -> Result<State, AuditError> {
    let base = read_base(db)?;
    let (frontier, last_ts) = read_frontier(db)?;
    let last = db.scan_prefix([b'r']).keys().next_back().transpose()?;
    let last = last.as_deref().and_then(key_num);
    let expect_last = (frontier.size() > base).then(|| frontier.size() - 1);
    if last != expect_last {
        return Err(AuditError::Corrupt(format!(
            "metadata says {} records (first kept {base}) but the last stored record is {last:?}",
            frontier.size()
        )));
    }
    let last_cp = match db.scan_prefix([b'c']).values().next_back().transpose()? {
        Some(v) => Some(read_checkpoint(&v)?),
        None => None,
    };
    if base > 0 && db.get(checkpoint_key(base))?.is_none() {
        return Err(AuditError::Corrupt(format!(
            "records below {base} were pruned but the checkpoint at {base} is missing"
        )));
    }
    Ok(State {
        frontier,
        last_ts,
        base,
        last_cp,
    })
}

/// What a prune did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Records removed.
    pub removed: u64,
    /// The first record kept.
    pub base: u64,
}

/// The single writer of a store. Synchronous; [`crate::AuditLog`] runs it on its own thread.
pub(crate) struct StoreWriter {
    dir: PathBuf,
    cache_bytes: u64,
    db: Option<sled::Db>,
    shared: Arc<RwLock<Option<sled::Db>>>,
    pub state: State,
    keys: Keys,
    fault: Option<FaultHook>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("{what}: {e}"))
}

impl StoreWriter {
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        fault: Option<FaultHook>,
        shared: Arc<RwLock<Option<sled::Db>>>,
    ) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let keys = keys::load_or_create(dir)?;
        let db = open_db(dir, cache_bytes)?;
        let state = load_state(&db)?;
        set_shared(&shared, Some(db.clone()));
        Ok(StoreWriter {
            dir: dir.to_owned(),
            cache_bytes,
            db: Some(db),
            shared,
            state,
            keys,
            fault,
        })
    }

    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.keys.signing
    }

    pub fn hmac_key(&self) -> [u8; 32] {
        self.keys.hmac
    }

    fn fault(&self, p: FaultPoint) -> Result<(), AuditError> {
        match &self.fault {
            Some(f) => f(p).map_err(|e| unavailable(&format!("{p:?}"), e)),
            None => Ok(()),
        }
    }

    fn db(&self) -> Result<&sled::Db, AuditError> {
        self.db
            .as_ref()
            .ok_or_else(|| AuditError::Unavailable("store is not open".into()))
    }

    fn flush(&self) -> Result<(), AuditError> {
        self.fault(FaultPoint::Flush)?;
        self.db()?.flush().map_err(|e| unavailable("flush", e))?;
        Ok(())
    }

    /// Writes `recs` as one atomic batch, and flushes if `sync`. With `sync`, on `Ok` every
    /// record is durable; without, they are durable once a later flush succeeds.
    pub fn append_batch(
        &mut self,
        recs: Vec<NewRecord>,
        now: Timestamp,
        sync: bool,
    ) -> Result<Vec<u64>, AuditError> {
        let saved = (self.state.frontier.clone(), self.state.last_ts);
        let r = self.append_batch_inner(recs, now, sync);
        if r.is_err() {
            // What reached sled's memory is unknown; recovery reloads the state from disk.
            (self.state.frontier, self.state.last_ts) = saved;
        }
        r
    }

    fn append_batch_inner(
        &mut self,
        recs: Vec<NewRecord>,
        now: Timestamp,
        sync: bool,
    ) -> Result<Vec<u64>, AuditError> {
        self.fault(FaultPoint::Write)?;
        let ts = now.max(self.state.last_ts);
        let mut batch = sled::Batch::default();
        let mut seqs = Vec::with_capacity(recs.len());
        for n in recs {
            let seq = self.state.frontier.size();
            let rec = Record::from_new(n, seq, ts);
            let bytes = rec.canonical_bytes();
            let leaf = crate::merkle::leaf_hash(&bytes);
            self.state.frontier.push(leaf);
            batch.insert(&record_key(seq)[..], encode_value(&leaf, &bytes));
            seqs.push(seq);
        }
        self.state.last_ts = ts;
        let meta = FrontierMeta {
            size: self.state.frontier.size(),
            nodes: self
                .state
                .frontier
                .nodes()
                .iter()
                .map(hex::encode)
                .collect(),
            last_ts: ts,
        };
        batch.insert(
            META_FRONTIER,
            serde_json::to_vec(&meta).map_err(|e| AuditError::Corrupt(e.to_string()))?,
        );
        self.db()?
            .apply_batch(batch)
            .map_err(|e| unavailable("write", e))?;
        if sync {
            self.flush()?;
        }
        Ok(seqs)
    }

    /// Signs and stores a checkpoint of the current tree if it grew since the last one.
    /// Returns the latest checkpoint (new or not); `None` for an empty log.
    pub fn checkpoint(&mut self, now: Timestamp) -> Result<Option<Checkpoint>, AuditError> {
        let size = self.state.frontier.size();
        if size == 0 || self.state.last_cp.as_ref().map(|c| c.size) == Some(size) {
            return Ok(self.state.last_cp.clone());
        }
        let time = now.max(self.state.last_ts);
        let cp = Checkpoint::sign(&self.state.frontier, time, &self.keys.signing);
        self.fault(FaultPoint::Write)?;
        let json = serde_json::to_vec(&cp).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        self.db()?
            .insert(checkpoint_key(size), json.clone())
            .map_err(|e| unavailable("write checkpoint", e))?;
        self.flush()?;
        write_latest_file(&self.dir, &json).map_err(|e| unavailable("checkpoint file", e))?;
        tracing::debug!(target: "audit", size, root = %hex::encode(cp.root), "checkpoint");
        self.state.last_cp = Some(cp.clone());
        Ok(Some(cp))
    }

    /// Removes records older than `cutoff`, but only up to the newest checkpoint that covers
    /// nothing younger, so that every removed record is covered by a signed checkpoint and
    /// verification can restart from that checkpoint's frontier.
    pub fn prune(&mut self, cutoff: Timestamp) -> Result<PruneReport, AuditError> {
        let db = self.db()?.clone();
        let base = self.state.base;
        let mut young = self.state.frontier.size();
        for item in db.range(record_key(base)..record_key(u64::MAX)) {
            let (k, v) = item?;
            let seq = key_num(&k).ok_or_else(|| AuditError::Corrupt("bad record key".into()))?;
            let sr =
                decode_value(&v).map_err(|e| AuditError::Corrupt(format!("seq {seq}: {e}")))?;
            if sr.record.ts >= cutoff {
                young = seq;
                break;
            }
        }
        let mut target = None;
        for v in db.scan_prefix([b'c']).values() {
            let cp = read_checkpoint(&v?)?;
            if cp.size > base && cp.size <= young {
                cp.frontier().map_err(AuditError::Corrupt)?;
                target = Some(cp.size);
            }
        }
        let Some(p) = target else {
            return Ok(PruneReport { removed: 0, base });
        };
        let mut batch = sled::Batch::default();
        for seq in base..p {
            batch.remove(&record_key(seq)[..]);
        }
        for k in db.range(checkpoint_key(0)..checkpoint_key(p)).keys() {
            batch.remove(k?);
        }
        batch.insert(META_BASE, &p.to_be_bytes()[..]);
        self.fault(FaultPoint::Write)?;
        db.apply_batch(batch).map_err(|e| unavailable("prune", e))?;
        self.flush()?;
        self.state.base = p;
        tracing::info!(target: "audit", removed = p - base, base = p, "pruned audit records past retention");
        Ok(PruneReport {
            removed: p - base,
            base: p,
        })
    }

    /// Reopens the store, reloads the state from disk and proves that a write and a flush
    /// succeed. On `Ok` the writer can serve again.
    pub fn recover(&mut self, now: Timestamp) -> Result<(), AuditError> {
        // Drop every handle we own so that sled releases its lock and its poisoned state.
        self.db = None;
        set_shared(&self.shared, None);
        self.fault(FaultPoint::Open)?;
        let db = open_db(&self.dir, self.cache_bytes).map_err(|e| unavailable("reopen", e))?;
        let state = load_state(&db)?;
        self.fault(FaultPoint::Write)?;
        db.insert(META_PROBE, &now.unix_micros.to_be_bytes()[..])
            .map_err(|e| unavailable("probe write", e))?;
        self.db = Some(db);
        self.flush()?;
        self.state = state;
        set_shared(&self.shared, self.db.clone());
        Ok(())
    }

    /// Flushes and releases the store.
    pub fn close(mut self) -> Result<(), AuditError> {
        let r = self.flush();
        self.db = None;
        set_shared(&self.shared, None);
        r
    }
}

/// Flushes whatever store is currently open (used by the flusher thread, which shares the
/// handle with the writer and never keeps it between flushes).
pub(crate) fn flush_shared(
    shared: &RwLock<Option<sled::Db>>,
    fault: Option<&FaultHook>,
) -> Result<(), AuditError> {
    if let Some(f) = fault {
        f(FaultPoint::Flush).map_err(|e| unavailable("Flush", e))?;
    }
    let db = match shared.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
    .ok_or_else(|| AuditError::Unavailable("store is not open".into()))?;
    db.flush().map_err(|e| unavailable("flush", e))?;
    Ok(())
}

fn set_shared(shared: &RwLock<Option<sled::Db>>, db: Option<sled::Db>) {
    // A poisoned lock only means a reader panicked while holding a clone; the slot is still a
    // plain Option that we overwrite.
    match shared.write() {
        Ok(mut g) => *g = db,
        Err(p) => *p.into_inner() = db,
    }
}

fn write_latest_file(dir: &Path, json: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{LATEST_CHECKPOINT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(LATEST_CHECKPOINT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Read access to a store: a stopped daemon's (via [`StoreReader::open`]) or a live log's (via
/// [`crate::AuditLog::reader`]).
#[derive(Clone)]
pub struct StoreReader {
    db: sled::Db,
    dir: PathBuf,
}

impl StoreReader {
    /// Opens a stopped daemon's store. Fails if the daemon still holds it.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        if !dir.join(DB_DIR).is_dir() {
            return Err(AuditError::io(
                dir.join(DB_DIR),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no audit store here"),
            ));
        }
        let db = open_db(dir, 64 << 20).map_err(|e| match e {
            AuditError::Store(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock") =>
            {
                AuditError::Unavailable(
                    "the store is locked by a running daemon; use the daemon's audit API".into(),
                )
            }
            other => other,
        })?;
        Ok(StoreReader {
            db,
            dir: dir.to_owned(),
        })
    }

    pub(crate) fn from_db(db: sled::Db, dir: &Path) -> Self {
        StoreReader {
            db,
            dir: dir.to_owned(),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The public key stored beside the log (for convenience; an auditor should use a copy
    /// obtained independently).
    pub fn public_key(&self) -> Result<ed25519_dalek::VerifyingKey, AuditError> {
        keys::read_public_key(&self.dir.join(keys::PUBLIC_KEY_FILE))
    }

    /// The store's state: size, base and latest checkpoint.
    pub(crate) fn state(&self) -> Result<State, AuditError> {
        load_state(&self.db)
    }

    /// Number of records ever written (the next sequence number).
    pub fn len(&self) -> Result<u64, AuditError> {
        Ok(self.state()?.frontier.size())
    }

    /// True if no record was ever written.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }

    /// All stored checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        self.db
            .scan_prefix([b'c'])
            .values()
            .map(|v| read_checkpoint(&v?))
            .collect()
    }

    /// The newest `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<StoredRecord>, AuditError> {
        let mut out = Vec::with_capacity(n.min(4096));
        for item in self.db.scan_prefix([b'r']).rev().take(n) {
            let (k, v) = item?;
            let seq = key_num(&k).unwrap_or(u64::MAX);
            out.push(decode_value(&v).map_err(|e| AuditError::Corrupt(format!("seq {seq}: {e}")))?);
        }
        out.reverse();
        Ok(out)
    }

    /// The oldest record kept (0 unless pruned), or 0 when empty.
    pub fn first_seq(&self) -> Result<u64, AuditError> {
        match self.db.scan_prefix([b'r']).next() {
            Some(item) => Ok(key_num(&item?.0).unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Records newest first.
    pub fn iter_rev(&self) -> impl Iterator<Item = Result<Record, AuditError>> + '_ {
        self.db.scan_prefix([b'r']).rev().map(|item| {
            let (k, v) = item?;
            let seq = key_num(&k).unwrap_or(u64::MAX);
            decode_value(&v)
                .map(|s| s.record)
                .map_err(|e| AuditError::Corrupt(format!("seq {seq}: {e}")))
        })
    }

    /// Records from `from` on, oldest first.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<Record, AuditError>> + '_ {
        self.raw_from(from).map(|item| {
            let (seq, decoded) = item?;
            decoded
                .map(|s| s.record)
                .map_err(|e| AuditError::Corrupt(format!("seq {seq}: {e}")))
        })
    }

    /// Raw records from `from` on: `(key seq, decoded value or why it does not decode)`.
    pub(crate) fn raw_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, Result<StoredRecord, String>), AuditError>> + '_ {
        self.db
            .range(record_key(from)..record_key(u64::MAX))
            .map(|item| {
                let (k, v) = item?;
                let seq =
                    key_num(&k).ok_or_else(|| AuditError::Corrupt("bad record key".into()))?;
                Ok((seq, decode_value(&v)))
            })
    }

    /// The checkpoint copy kept outside sled, if any.
    pub fn latest_checkpoint_file(&self) -> Result<Option<Checkpoint>, AuditError> {
        let p = self.dir.join(LATEST_CHECKPOINT_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AuditError::Corrupt(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AuditError::io(p, e)),
        }
    }
}
