//! The config sections of running the appliance: `[health]` (how often the hardware is sampled,
//! and a recorded file that stands in for GPUs) and `[model_store]` (where imported models
//! live). Kept apart from `config.rs` so that file stays about serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[health]`: live hardware health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often appld samples each GPU (NVML, AMD sysfs), host memory and its own resident
    /// set, in milliseconds.
    pub interval_ms: u64,
    /// A recorded health file (JSON, `{"gpus": [...]}`) read at every sample instead of
    /// probing the GPUs: for tests, demos and fault drills. Empty means probe. Relative paths
    /// are relative to the config file's folder.
    pub recorded: PathBuf,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5000,
            recorded: PathBuf::new(),
        }
    }
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `[model_store]`: where `applctl models import` puts GGUF files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelStoreConfig {
    /// The model directory. `applctl models load ID` loads `ID.gguf` from here (with the
    /// `[[models]]` defaults) when no `[[models]]` entry has that id.
    pub dir: PathBuf,
}

impl Default for ModelStoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/appl/models"),
        }
    }
}

fn resolve(p: &mut PathBuf, base: &Path) {
    if !p.as_os_str().is_empty() && p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Relative paths of these sections are relative to the config file's folder.
pub fn resolve_paths(h: &mut HealthConfig, s: &mut ModelStoreConfig, base: &Path) {
    resolve(&mut h.recorded, base);
    resolve(&mut s.dir, base);
}

/// The first bad key of these sections and why.
pub fn validate(h: &HealthConfig, s: &ModelStoreConfig) -> Result<(), (String, &'static str)> {
    if !(100..=3_600_000).contains(&h.interval_ms) {
        return Err((
            "health.interval_ms".into(),
            "must be between 100 (0.1 s) and 3600000 (an hour)",
        ));
    }
    if s.dir.as_os_str().is_empty() {
        return Err((
            "model_store.dir".into(),
            "is empty; name the folder that imported models go to",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const MODEL: &str = "[[models]]\nid = \"a\"\npath = \"a\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::parse(Path::new("/etc/appl/appld.toml"), MODEL).expect("valid");
        assert_eq!(c.health.interval_ms, 5000);
        assert!(c.health.recorded.as_os_str().is_empty());
        assert_eq!(c.model_store.dir, Path::new("/var/lib/appl/models"));
        let text =
            format!("[health]\nrecorded = \"h.json\"\n[model_store]\ndir = \"models\"\n{MODEL}");
        let c = Config::parse(Path::new("/etc/appl/appld.toml"), &text).expect("valid");
        assert_eq!(c.health.recorded, Path::new("/etc/appl/h.json"));
        assert_eq!(c.model_store.dir, Path::new("/etc/appl/models"));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[health]\ninterval_ms = 5\n", "health.interval_ms"),
            ("[health]\nsample_every = 5\n", "sample_every"),
            ("[model_store]\ndir = \"\"\n", "model_store.dir"),
        ] {
            let err = Config::parse(Path::new("/etc/appl/appld.toml"), &format!("{text}{MODEL}"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}
