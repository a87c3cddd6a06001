//! The audit record: what is stored, hashed and exported.
//!
//! Every string in a record is a restricted [`Ident`] (no whitespace, a small ASCII alphabet,
//! bounded length) or an enum, a number, a timestamp or a hex digest. There is deliberately no
//! free-text field, so prompt or completion text (PHI) has nowhere to go.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuditError;

/// Version of the record encoding, stored in every record as `v`.
pub const RECORD_VERSION: u8 = 1;

/// Longest accepted [`Ident`], in bytes.
pub const IDENT_MAX: usize = 256;

/// A restricted identifier: 1 to [`IDENT_MAX`] bytes of ASCII letters, digits and `._-:@/=,+[]#`.
///
/// Used for actor identities (tenant names, `uid:1000`, certificate subjects without spaces or
/// certificate fingerprints), peer addresses, model ids, request ids and stable reason codes.
/// It can hold no whitespace, so it cannot carry a sentence of prompt text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

fn ident_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-:@/=,+[]#".contains(c)
}

impl Ident {
    /// Validates `s` as an identifier.
    pub fn new(s: impl Into<String>) -> Result<Self, AuditError> {
        let s = s.into();
        if s.is_empty() || s.len() > IDENT_MAX {
            return Err(AuditError::InvalidField {
                field: "ident",
                why: format!("length {} not in 1..={IDENT_MAX}", s.len()),
            });
        }
        if let Some(c) = s.chars().find(|c| !ident_char_ok(*c)) {
            return Err(AuditError::InvalidField {
                field: "ident",
                why: format!("character {c:?} not allowed"),
            });
        }
        Ok(Ident(s))
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Ident {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ident::new(s)
    }
}

impl From<SocketAddr> for Ident {
    fn from(a: SocketAddr) -> Self {
        // A formatted socket address only contains digits, hex letters, '.', ':', '[', ']' and
        // '%' (IPv6 scope id); '%' is not in our alphabet, so it is mapped to '#'.
        Ident(a.to_string().replace('%', "#"))
    }
}

impl Serialize for Ident {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ident::new(s).map_err(serde::de::Error::custom)
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `inference.generate`
    InferenceGenerate,
    /// `inference.chat`
    InferenceChat,
    /// `inference.tokenize`
    InferenceTokenize,
    /// `auth.denied`
    AuthDenied,
    /// `daemon.start`
    DaemonStart,
    /// `daemon.stop`
    DaemonStop,
    /// `config.reload`
    ConfigReload,
    /// `audit.export`
    AuditExport,
    /// `model.load`
    ModelLoad,
    /// `admin.<op>`, where `op` is 1 to 64 of `[a-z0-9_.-]`.
    Admin(String),
}

impl Action {
    /// Builds `admin.<op>`.
    pub fn admin(op: &str) -> Result<Self, AuditError> {
        let ok = !op.is_empty()
            && op.len() <= 64
            && op
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if ok {
            Ok(Action::Admin(op.to_owned()))
        } else {
            Err(AuditError::InvalidField {
                field: "action",
                why: format!("admin op {op:?} must be 1-64 of [a-z0-9_.-]"),
            })
        }
    }

    /// The stable dotted name, e.g. `inference.generate`.
    pub fn name(&self) -> String {
        match self {
            Action::InferenceGenerate => "inference.generate".into(),
            Action::InferenceChat => "inference.chat".into(),
            Action::InferenceTokenize => "inference.tokenize".into(),
            Action::AuthDenied => "auth.denied".into(),
            Action::DaemonStart => "daemon.start".into(),
            Action::DaemonStop => "daemon.stop".into(),
            Action::ConfigReload => "config.reload".into(),
            Action::AuditExport => "audit.export".into(),
            Action::ModelLoad => "model.load".into(),
            Action::Admin(op) => format!("admin.{op}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Action {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "inference.generate" => Action::InferenceGenerate,
            "inference.chat" => Action::InferenceChat,
            "inference.tokenize" => Action::InferenceTokenize,
            "auth.denied" => Action::AuthDenied,
            "daemon.start" => Action::DaemonStart,
            "daemon.stop" => Action::DaemonStop,
            "config.reload" => Action::ConfigReload,
            "audit.export" => Action::AuditExport,
            "model.load" => Action::ModelLoad,
            other => match other.strip_prefix("admin.") {
                Some(op) => Action::admin(op)?,
                None => {
                    return Err(AuditError::InvalidField {
                        field: "action",
                        why: format!("unknown action {other:?}"),
                    })
                }
            },
        })
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The caller's role, as decided by authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May run inference.
    Inference,
    /// May administer the daemon.
    Operator,
    /// May read and export the audit log.
    Auditor,
    /// The daemon itself (start, stop, reload, model load).
    System,
    /// Not authenticated (for example an `auth.denied` record).
    Anonymous,
}

/// Where in a request's life a record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written, and durable, before the model sees the prompt.
    Admitted,
    /// Written, and durable, before the client gets its final message.
    Completed,
    /// A one-off event that is not a request (daemon start, denial, reload...).
    Event,
}

/// A 32-byte digest, hex encoded in records (SHA-256 of a GGUF, HMAC of a prompt).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hash(&s).map(Digest).map_err(serde::de::Error::custom)
    }
}

/// Parses 64 lowercase hex digits (the only form we write, so the only form we accept).
pub(crate) fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("expected 64 lowercase hex digits, got {s:?}"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A UTC instant with microsecond precision, written as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Microseconds since the Unix epoch.
    pub unix_micros: i64,
}

const TS_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

impl Timestamp {
    /// Converts a [`SystemTime`] (truncating to microseconds).
    pub fn from_system(t: SystemTime) -> Self {
        let micros = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        };
        Timestamp {
            unix_micros: micros,
        }
    }

    /// Back to a [`SystemTime`].
    pub fn to_system(self) -> SystemTime {
        if self.unix_micros >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.unix_micros.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_micros(self.unix_micros.unsigned_abs())
        }
    }

    /// Parses any RFC 3339 timestamp (any offset, any sub-second precision), for filters.
    pub fn parse_rfc3339(s: &str) -> Result<Self, AuditError> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| AuditError::InvalidField {
                field: "timestamp",
                why: format!("{s:?} is not RFC 3339: {e}"),
            })?;
        let micros = t.unix_timestamp_nanos().div_euclid(1000);
        Ok(Timestamp {
            unix_micros: i64::try_from(micros).map_err(|_| AuditError::InvalidField {
                field: "timestamp",
                why: format!("{s:?} out of range"),
            })?,
        })
    }

    /// Parses exactly the canonical form written by [`fmt::Display`].
    fn parse_canonical(s: &str) -> Result<Self, String> {
        let t = time::PrimitiveDateTime::parse(s, TS_FORMAT).map_err(|e| format!("{s:?}: {e}"))?;
        let micros = t.assume_utc().unix_timestamp_nanos().div_euclid(1000);
        let ts = Timestamp {
            unix_micros: i64::try_from(micros).map_err(|_| format!("{s:?} out of range"))?,
        };
        if ts.to_string() != s {
            return Err(format!("{s:?} is not in canonical form"));
        }
        Ok(ts)
    }

    /// Milliseconds since the epoch (CEF `rt`).
    pub fn unix_millis(self) -> i64 {
        self.unix_micros.div_euclid(1000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.unix_micros) * 1000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(TS_FORMAT).ok())
        {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}us", self.unix_micros),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_canonical(&s).map_err(serde::de::Error::custom)
    }
}

/// What a caller hands to [`crate::AuditLog::append`]; the log adds `seq` and `ts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Who: the authenticated identity (`system` for the daemon itself).
    pub actor: Ident,
    /// The role the action was allowed (or refused) under.
    pub role: Role,
    /// Every role of the actor's identity, `+`-joined (`inference+gateway`).
    pub roles: Option<Ident>,
    /// The tenant the request belongs to.
    pub tenant: Option<Ident>,
    /// The peer address (`127.0.0.1:5000`, `unix:uid=0`), if there is a peer.
    pub peer: Option<Ident>,
    /// What.
    pub action: Action,
    /// Admitted, completed or a one-off event.
    pub phase: Phase,
    /// The request id, shared by a request's admitted and completed records. An `auth.denied`
    /// record has no request; it names the refused method here (`appl.v1.Audit:Export`).
    pub request_id: Option<Ident>,
    /// The model id.
    pub model: Option<Ident>,
    /// SHA-256 of the model's GGUF file.
    pub model_sha256: Option<Digest>,
    /// The status code (gRPC code number; 0 is OK).
    pub status: Option<u32>,
    /// A stable reason code for a non-OK status (`queue_full`, `unknown_certificate`).
    pub reason: Option<Ident>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u32>,
    /// Completion tokens.
    pub completion_tokens: Option<u32>,
    /// End-to-end latency in microseconds.
    pub latency_us: Option<u64>,
    /// HMAC-SHA256 of the prompt under the appliance's key ([`crate::AuditLog::prompt_digest`]).
    /// Never a plain hash: short PHI could be recovered from one by guessing.
    pub prompt_hmac: Option<Digest>,
    /// The API a request came in through (`grpc`, `openai`); absent on records of no request.
    pub api: Option<Ident>,
}

impl NewRecord {
    /// A record with the required fields; set the optional ones on the result.
    pub fn new(action: Action, phase: Phase, actor: Ident, role: Role) -> Self {
        NewRecord {
            actor,
            role,
            roles: None,
            tenant: None,
            peer: None,
            action,
            phase,
            request_id: None,
            model: None,
            model_sha256: None,
            status: None,
            reason: None,
            prompt_tokens: None,
            completion_tokens: None,
            latency_us: None,
            prompt_hmac: None,
            api: None,
        }
    }

    /// A daemon event (`daemon.start`, `config.reload`...) by `system`.
    pub fn system(action: Action) -> Self {
        NewRecord::new(action, Phase::Event, Ident("system".into()), Role::System)
    }
}

/// A stored record. Its canonical encoding ([`Record::canonical_bytes`]) is what is hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Encoding version ([`RECORD_VERSION`]).
    pub v: u8,
    /// Position in the log, from 0, without gaps; also the Merkle leaf index.
    pub seq: u64,
    /// When the log accepted the record (UTC, never earlier than the previous record's).
    pub ts: Timestamp,
    /// See [`NewRecord::actor`].
    pub actor: Ident,
    /// See [`NewRecord::role`].
    pub role: Role,
    /// See [`NewRecord::roles`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Ident>,
    /// See [`NewRecord::tenant`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Ident>,
    /// See [`NewRecord::peer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Ident>,
    /// See [`NewRecord::action`].
    pub action: Action,
    /// See [`NewRecord::phase`].
    pub phase: Phase,
    /// See [`NewRecord::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Ident>,
    /// See [`NewRecord::model`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Ident>,
    /// See [`NewRecord::model_sha256`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<Digest>,
    /// See [`NewRecord::status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// See [`NewRecord::reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Ident>,
    /// See [`NewRecord::prompt_tokens`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// See [`NewRecord::completion_tokens`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
    /// See [`NewRecord::latency_us`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// See [`NewRecord::prompt_hmac`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_hmac: Option<Digest>,
    /// See [`NewRecord::api`]. Last, so that records without it encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Ident>,
}

/// The record's fields in canonical order (the CSV columns, the CEF/syslog parameters).
pub const FIELDS: &[&str] = &[
    "v",
    "seq",
    "ts",
    "actor",
    "role",
    "roles",
    "tenant",
    "peer",
    "action",
    "phase",
    "request_id",
    "model",
    "model_sha256",
    "status",
    "reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_us",
    "prompt_hmac",
    "api",
];

const NUMERIC_FIELDS: &[&str] = &[
    "v",
    "seq",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "latency_us",
];

impl Record {
    pub(crate) fn from_new(n: NewRecord, seq: u64, ts: Timestamp) -> Self {
        Record {
            v: RECORD_VERSION,
            seq,
            ts,
            actor: n.actor,
            role: n.role,
            roles: n.roles,
            tenant: n.tenant,
            peer: n.peer,
            action: n.action,
            phase: n.phase,
            request_id: n.request_id,
            model: n.model,
            model_sha256: n.model_sha256,
            status: n.status,
            reason: n.reason,
            prompt_tokens: n.prompt_tokens,
            completion_tokens: n.completion_tokens,
            latency_us: n.latency_us,
            prompt_hmac: n.prompt_hmac,
            api: n.api,
        }
    }

    /// The canonical encoding: compact JSON, fields in [`FIELDS`] order, absent options left
    /// out. The Merkle leaf is `SHA-256(0x00 || canonical_bytes)`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and enums cannot fail: there are no maps with
        // non-string keys and no fallible custom serializers.
        serde_json::to_vec(self).expect("record serialization is infallible")
    }

    /// Parses a canonical encoding, and insists that it is canonical (re-encodes identically).
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, String> {
        let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.v != RECORD_VERSION {
            return Err(format!("unsupported record version {}", r.v));
        }
        if r.canonical_bytes() != bytes {
            return Err("record is not in canonical form".into());
        }
        Ok(r)
    }

    /// The Merkle leaf hash of this record.
    pub fn leaf_hash(&self) -> [u8; 32] {
        crate::merkle::leaf_hash(&self.canonical_bytes())
    }

    /// The fields as `(name, value)` pairs in [`FIELDS`] order; absent options are `None`.
    pub fn flat(&self) -> Vec<(&'static str, Option<String>)> {
        // See canonical_bytes: infallible.
        let v = serde_json::to_value(self).expect("record serialization is infallible");
        FIELDS
            .iter()
            .map(|f| {
                let s = v.get(*f).map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                (*f, s)
            })
            .collect()
    }

    /// The inverse of [`Record::flat`].
    pub fn from_flat<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut obj = serde_json::Map::new();
        for (k, val) in pairs {
            if !FIELDS.contains(&k) {
                return Err(format!("unknown field {k:?}"));
            }
            let jv = if NUMERIC_FIELDS.contains(&k) {
                if val.is_empty() || !val.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("field {k}: {val:?} is not a number"));
                }
                let n: u64 = val.parse().map_err(|e| format!("field {k}: {e}"))?;
                serde_json::Value::from(n)
            } else {
                serde_json::Value::String(val.to_owned())
            };
            if obj.insert(k.to_owned(), jv).is_some() {
                return Err(format!("field {k} appears twice"));
            }
        }
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
