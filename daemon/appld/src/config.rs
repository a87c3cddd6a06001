//! The daemon's one typed configuration, read from a TOML file and validated before start.
//!
//! Every key is documented in `packaging/appld.toml`, the shipped default. Unknown keys are
//! errors, so a typo is reported instead of silently ignored.

use std::path::{Path, PathBuf};

use std::time::Duration;

use appl_engine::QueuePolicy;
use serde::Deserialize;

/// A configuration problem. Its message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A TLS file named by `[tls]` cannot be used (missing, unreadable, not PEM, wrong key).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sizing: SizingConfig,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// `[queue]`: priorities, preemption, prefix reuse.
    #[serde(default)]
    pub queue: QueueConfig,
    /// `[[tenants]]`: weights, limits and default priorities. A request's tenant comes from its
    /// caller's identity; a `gateway` identity may name one in the `x-appl-tenant` metadata.
    #[serde(default)]
    pub tenants: Vec<crate::tenants::TenantConfig>,
    #[serde(default)]
    pub audit: AuditSettings,
    /// `[tls]`: the TCP listener's certificate, key and client CA (see `tls.rs`).
    #[serde(default)]
    pub tls: crate::tls::TlsSettings,
    /// `[auth]`: Unix socket peers and callers without credentials (see `identity/`).
    #[serde(default)]
    pub auth: crate::identity::config::AuthSettings,
    /// `[[identities]]`: client certificates mapped to a tenant and roles.
    #[serde(default)]
    pub identities: Vec<crate::identity::config::IdentityConfig>,
    /// `[[api_keys]]`: SHA-256 digests of API keys, each with a tenant and roles.
    #[serde(default)]
    pub api_keys: Vec<crate::identity::config::ApiKeyConfig>,
    /// `[health]`: live hardware health sampling.
    #[serde(default)]
    pub health: crate::ops_config::HealthConfig,
    /// `[model_store]`: where imported models live.
    #[serde(default)]
    pub model_store: crate::ops_config::ModelStoreConfig,
    /// `[openai]`: the OpenAI-compatible HTTP API.
    #[serde(default)]
    pub openai: crate::openai::config::OpenAiConfig,
}

/// `[queue]`: how engines order, pause and reuse work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Batch work that has waited this long (queued plus paused) goes before new interactive
    /// work and is not paused again.
    pub batch_max_wait_ms: u64,
    /// Pause batch sequences (KV swapped to host memory) for interactive requests when every
    /// slot is busy.
    pub preemption: bool,
    /// Reuse an idle slot's cached KV for a prompt that shares at least this many leading
    /// tokens with it; 0 disables.
    pub prefix_reuse_min_tokens: u32,
    /// Cut a step of batch work short when an interactive request arrives during it, so the
    /// interactive request does not wait for the step to end; the batch tokens are decoded
    /// again in a later step.
    pub interrupt_batch_steps: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let d = QueuePolicy::default();
        Self {
            batch_max_wait_ms: d.batch_max_wait.as_millis() as u64,
            preemption: d.preemption,
            prefix_reuse_min_tokens: d.prefix_reuse_min_tokens,
            interrupt_batch_steps: d.interrupt_batch_steps,
        }
    }
}

impl QueueConfig {
    pub fn policy(&self) -> QueuePolicy {
        QueuePolicy {
            batch_max_wait: Duration::from_millis(self.batch_max_wait_ms),
            preemption: self.preemption,
            prefix_reuse_min_tokens: self.prefix_reuse_min_tokens,
            interrupt_batch_steps: self.interrupt_batch_steps,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// TCP address for gRPC; empty (the default) disables TCP. Port 0 picks a free port. TCP
    /// is served with TLS and client certificates (`[tls]`) unless `tls.insecure_plaintext`.
    pub listen: String,
    /// Unix socket for gRPC (local clients and applctl); empty disables it.
    pub socket: PathBuf,
    /// Permission bits of the Unix socket.
    pub socket_mode: u32,
    /// On SIGTERM, how long requests in flight may take to finish before their connections are
    /// cut.
    pub drain_timeout_secs: u64,
    /// TCP address for Prometheus metrics (plain HTTP, `GET /metrics`); empty disables it.
    /// Keep it on a local or management address.
    pub metrics_listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            socket: PathBuf::from("/run/appl/appld.sock"),
            socket_mode: 0o660,
            drain_timeout_secs: 30,
            metrics_listen: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest prompt accepted, in bytes, before tokenization.
    pub max_prompt_bytes: usize,
    /// max_tokens when a request does not set it.
    pub default_max_tokens: u32,
    /// The largest max_tokens a request may ask for.
    pub max_tokens_cap: u32,
    /// Requests that may wait for a slot, per model; past it requests get RESOURCE_EXHAUSTED.
    pub queue_capacity: u32,
    /// Most stop sequences per request.
    pub max_stop_sequences: usize,
    /// The longest stop sequence, in bytes.
    pub max_stop_bytes: usize,
    /// The longest prompt, in tokens (a slot's context bounds it too).
    pub max_prompt_tokens: usize,
    /// Most chat messages per request.
    pub max_chat_messages: usize,
    /// The largest gRPC request message, in bytes (refused as its length arrives).
    pub max_message_bytes: usize,
    /// The most request metadata (headers), in bytes as HTTP/2 counts them.
    pub max_metadata_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_prompt_bytes: 1 << 20,
            default_max_tokens: 256,
            max_tokens_cap: 4096,
            queue_capacity: 64,
            max_stop_sequences: 16,
            max_stop_bytes: 256,
            max_prompt_tokens: 32_768,
            max_chat_messages: 256,
            max_message_bytes: 4 << 20,
            max_metadata_bytes: 16 << 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, such as `info,engine=debug`. RUST_LOG overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info,llama-cpp-2=warn".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id clients name in requests.
    pub id: String,
    /// Path of the GGUF file.
    pub path: PathBuf,
    /// Sequence slots: requests generating at once.
    #[serde(default = "defaults::slots")]
    pub slots: u32,
    /// Tokens of context per slot (prompt plus completion).
    #[serde(default = "defaults::ctx_per_slot")]
    pub ctx_per_slot: u32,
    /// Most tokens one engine step carries (decode tokens plus prompt chunks).
    #[serde(default = "defaults::batch_tokens")]
    pub batch_tokens: u32,
    /// llama.cpp threads; 0 means the number of physical cores.
    #[serde(default)]
    pub threads: u32,
    /// Layers offloaded to GPUs: `"auto"` lets the sizing rules decide (everything on the GPUs,
    /// or refuse with the numbers), or a count like llama.cpp's `n_gpu_layers`.
    #[serde(default)]
    pub gpu_layers: GpuLayersSetting,
    /// `embedded` (the GGUF's own), a llama.cpp built-in name such as `gemma`, or a file path.
    #[serde(default = "defaults::chat_template")]
    pub chat_template: String,
    /// Serve requests that name no model with this one. The first model is the default if
    /// none says so.
    #[serde(default)]
    pub default: bool,
    /// Load it when the daemon starts; with `false` it waits for `applctl models load ID`.
    #[serde(default = "defaults::autoload")]
    pub autoload: bool,
}

impl ModelConfig {
    /// A model found in the model store, with every setting at its default.
    pub fn with_defaults(id: &str, path: PathBuf) -> ModelConfig {
        ModelConfig {
            id: id.to_owned(),
            path,
            slots: defaults::slots(),
            ctx_per_slot: defaults::ctx_per_slot(),
            batch_tokens: defaults::batch_tokens(),
            threads: 0,
            gpu_layers: GpuLayersSetting::default(),
            chat_template: defaults::chat_template(),
            default: false,
            autoload: true,
        }
    }
}

/// `gpu_layers = "auto"` or `gpu_layers = N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GpuLayersSetting {
    Count(u32),
    Word(AutoWord),
}

/// The one word `gpu_layers` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

impl Default for GpuLayersSetting {
    fn default() -> Self {
        GpuLayersSetting::Word(AutoWord::Auto)
    }
}

/// Where the sizing rules get the machine's hardware from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SizingConfig {
    /// A recorded inventory (JSON, as `applctl check --record` writes) to size against instead
    /// of probing this machine. Empty means probe.
    pub inventory: PathBuf,
}

/// The HIPAA audit log (`[audit]`). It is always on: there is no key to turn it off, and none
/// to log prompt or completion text, which is never written anywhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The audit store: sled database, signing keys, checkpoints. Relative paths are relative
    /// to the config file's folder.
    pub dir: PathBuf,
    /// Sign a checkpoint once this many records are not yet covered by one.
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint once the oldest uncovered record is this many seconds old.
    pub checkpoint_every_secs: u64,
    /// Keep records at least this many years (HIPAA: six). Pruning never removes records that
    /// no signed checkpoint covers.
    pub retention_years: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/appl/audit"),
            checkpoint_every_records: 10_000,
            checkpoint_every_secs: 60,
            retention_years: 6,
        }
    }
}

/// The highest `limits.max_message_bytes` (the gRPC services' own hard ceiling).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The highest `limits.max_metadata_bytes` (the HTTP/2 header list ceiling is above it).
pub const MAX_METADATA_BYTES: usize = 1 << 20;

mod defaults {
    pub fn slots() -> u32 {
        4
    }
    pub fn ctx_per_slot() -> u32 {
        2048
    }
    pub fn batch_tokens() -> u32 {
        512
    }
    pub fn chat_template() -> String {
        "embedded".to_owned()
    }
    pub fn autoload() -> bool {
        true
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in messages and to resolve
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate(path)?;
        Ok(config)
    }

    /// Relative model and template paths are relative to the config file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        for m in &mut self.models {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
        }
        if self.audit.dir.is_relative() && !self.audit.dir.as_os_str().is_empty() {
            self.audit.dir = base.join(&self.audit.dir);
        }
        self.tls.resolve_paths(base);
        let inv = &mut self.sizing.inventory;
        if !inv.as_os_str().is_empty() && inv.is_relative() {
            *inv = base.join(&*inv);
        }
        crate::ops_config::resolve_paths(&mut self.health, &mut self.model_store, base);
    }

    /// Whether anything is served on TCP (gRPC or the HTTP API), and so needs `[tls]`.
    pub fn serves_tcp(&self) -> bool {
        !self.server.listen.is_empty() || self.openai.enabled()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason: reason.to_owned(),
        };
        let s = &self.server;
        if s.listen.is_empty() && s.socket.as_os_str().is_empty() {
            return Err(invalid(
                "server.listen".into(),
                "and `server.socket` are both empty; enable at least one",
            ));
        }
        if !s.listen.is_empty() && s.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen".into(),
                "must be an IP address and port, such as \"127.0.0.1:50051\"",
            ));
        }
        if !s.metrics_listen.is_empty() && s.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "server.metrics_listen".into(),
                "must be an IP address and port, such as \"127.0.0.1:9464\", or empty",
            ));
        }
        if let Err((key, reason)) = crate::tenants::validate_tenants(&self.tenants) {
            return Err(invalid(key, reason));
        }
        if let Err((key, reason)) = self.openai.validate() {
            return Err(invalid(key.into(), reason));
        }
        if let Err((key, reason)) = self.tls.validate(self.serves_tcp()) {
            return Err(invalid(key.into(), reason));
        }
        if let Err((key, reason)) = crate::identity::config::validate(
            &self.auth,
            &self.identities,
            &self.api_keys,
            &self.tenants,
        ) {
            return Err(invalid(key, &reason));
        }
        if s.socket_mode > 0o777 {
            return Err(invalid(
                "server.socket_mode".into(),
                "must be permission bits, such as 0o660",
            ));
        }
        if let Err((key, reason)) = crate::ops_config::validate(&self.health, &self.model_store) {
            return Err(invalid(key, reason));
        }
        let l = &self.limits;
        if l.max_tokens_cap == 0 {
            return Err(invalid(
                "limits.max_tokens_cap".into(),
                "must be at least 1",
            ));
        }
        if l.default_max_tokens == 0 || l.default_max_tokens > l.max_tokens_cap {
            return Err(invalid(
                "limits.default_max_tokens".into(),
                "must be between 1 and `limits.max_tokens_cap`",
            ));
        }
        if l.max_prompt_bytes == 0 {
            return Err(invalid(
                "limits.max_prompt_bytes".into(),
                "must be at least 1",
            ));
        }
        for (key, v, lo, hi) in [
            ("limits.max_prompt_tokens", l.max_prompt_tokens, 1, 1 << 24),
            ("limits.max_stop_bytes", l.max_stop_bytes, 1, 1 << 16),
            ("limits.max_chat_messages", l.max_chat_messages, 1, 1 << 16),
            (
                "limits.max_message_bytes",
                l.max_message_bytes,
                1 << 10,
                MAX_MESSAGE_BYTES,
            ),
            (
                "limits.max_metadata_bytes",
                l.max_metadata_bytes,
                1 << 10,
                MAX_METADATA_BYTES,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(invalid(
                    key.into(),
                    &format!("must be between {lo} and {hi}"),
                ));
            }
        }
        if self.models.is_empty() {
            return Err(invalid(
                "models".into(),
                "is empty; add a [[models]] table with `id` and `path`",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = |k: &str| format!("models[{i}].{k}");
            if m.id.is_empty() || m.id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(key("id"), "must be non-empty, without whitespace"));
            }
            if appl_audit::Ident::new(m.id.as_str()).is_err() {
                return Err(invalid(
                    key("id"),
                    "must be at most 256 of ASCII letters, digits and ._-:@/=,+[]# (the audit log records it)",
                ));
            }
            if !ids.insert(&m.id) {
                return Err(invalid(key("id"), "repeats another model's id"));
            }
            if m.slots == 0 || m.slots > 256 {
                return Err(invalid(key("slots"), "must be between 1 and 256"));
            }
            if m.ctx_per_slot < 16 {
                return Err(invalid(key("ctx_per_slot"), "must be at least 16 tokens"));
            }
            if m.slots
                .checked_mul(m.ctx_per_slot)
                .is_none_or(|n| n > 1 << 24)
            {
                return Err(invalid(
                    key("ctx_per_slot"),
                    "times `slots` exceeds 16M tokens of KV cache",
                ));
            }
            if m.batch_tokens < m.slots {
                return Err(invalid(
                    key("batch_tokens"),
                    "must be at least `slots`, so every slot can decode in each step",
                ));
            }
            if m.chat_template.is_empty() {
                return Err(invalid(
                    key("chat_template"),
                    "is empty; use \"embedded\", a built-in name such as \"gemma\", or a file path",
                ));
            }
        }
        if self.models.iter().filter(|m| m.default).count() > 1 {
            return Err(invalid(
                "models[].default".into(),
                "is true for more than one model",
            ));
        }
        let a = &self.audit;
        if a.dir.as_os_str().is_empty() {
            return Err(invalid(
                "audit.dir".into(),
                "is empty; the audit log cannot be turned off",
            ));
        }
        if !(1..=1_000_000).contains(&a.checkpoint_every_records) {
            return Err(invalid(
                "audit.checkpoint_every_records".into(),
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=86_400).contains(&a.checkpoint_every_secs) {
            return Err(invalid(
                "audit.checkpoint_every_secs".into(),
                "must be between 1 and 86400 (a day)",
            ));
        }
        if !(1..=100).contains(&a.retention_years) {
            return Err(invalid(
                "audit.retention_years".into(),
                "must be between 1 and 100 (HIPAA expects 6)",
            ));
        }
        Ok(())
    }

    /// The id of the model that serves requests naming none.
    pub fn default_model(&self) -> Option<&str> {
        self.models
            .iter()
            .find(|m| m.default)
            .or(self.models.first())
            .map(|m| m.id.as_str())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[cfg(test)]
mod shipped {
    /// The documented default config in packaging/ must always parse and validate.
    #[test]
    fn packaged_default_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/appld.toml");
        let text = std::fs::read_to_string(&path).expect("read packaging/appld.toml");
        let c = super::Config::parse(&path, &text).expect("the shipped config is valid");
        assert_eq!(c.default_model(), Some("gemma-3-270m"));
    }
}
