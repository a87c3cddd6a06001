//! `applctl check --measure`: a few seconds of real llama.cpp decode steps on this machine,
//! timed by `appld --measure` in its own process (applctl never links llama.cpp), turned into a
//! decode-speed prediction by `appl_firmware_profiles::calibration`. The calibration is kept in
//! `~/.cache/appl/calibration/MODEL.json`, where `applctl bench` finds it to print the
//! prediction beside what it measures.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use appl_firmware_profiles::calibration::{Calibration, DecodePrediction};

/// Flags of `applctl check` for the calibration.
#[derive(Debug, Clone, clap::Args)]
pub struct MeasureArgs {
    /// Time real decode steps of --model on this machine (a few seconds) and predict decode
    /// speed from them, for one stream and for --slots streams.
    #[arg(long, requires = "model")]
    pub measure: bool,
    /// llama.cpp threads for the calibration; 0 means the physical cores, as appld's default.
    #[arg(long, default_value_t = 0, requires = "measure")]
    pub threads: u32,
    /// The appld binary that runs the calibration [default: next to applctl, then PATH].
    #[arg(long, value_name = "FILE", requires = "measure")]
    pub appld: Option<PathBuf>,
    /// Where to keep the calibration [default: ~/.cache/appl/calibration/MODEL.json].
    #[arg(long, value_name = "FILE", requires = "measure")]
    pub save_calibration: Option<PathBuf>,
}

/// The engine shape to calibrate for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub slots: u32,
    pub ctx_per_slot: u32,
    pub batch_tokens: u32,
}

fn appld_binary(args: &MeasureArgs) -> PathBuf {
    if let Some(p) = &args.appld {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("appld")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("appld"))
}

/// Where calibrations of a model file are kept by default.
pub fn default_path(model_file: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let name = Path::new(model_file).file_name()?;
    let mut file = name.to_os_string();
    file.push(".json");
    Some(cache.join("appl/calibration").join(file))
}

/// Runs `appld --measure` and returns its calibration.
pub fn calibrate(model: &Path, shape: Shape, args: &MeasureArgs) -> anyhow::Result<Calibration> {
    let appld = appld_binary(args);
    let out = Command::new(&appld)
        .arg("--measure")
        .arg(model)
        .args(["--threads", &args.threads.to_string()])
        .args(["--slots", &shape.slots.to_string()])
        .args(["--ctx-per-slot", &shape.ctx_per_slot.to_string()])
        .args(["--batch-tokens", &shape.batch_tokens.to_string()])
        .arg("--json")
        .output()
        .with_context(|| {
            format!(
                "cannot run {} for the calibration; install appld or pass --appld",
                appld.display()
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "the calibration failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("appld --measure printed no calibration")
}

/// Saves a calibration where `--save-calibration` says, or in the cache.
pub fn save(c: &Calibration, args: &MeasureArgs) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = args
        .save_calibration
        .clone()
        .or_else(|| default_path(&c.model))
    else {
        return Ok(None);
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(c)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

/// Reads a saved calibration.
pub fn load(path: &Path) -> anyhow::Result<Calibration> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a calibration", path.display()))
}

/// The predictions `check --measure` reports: one stream and every slot busy.
pub fn predictions(c: &Calibration) -> anyhow::Result<Vec<DecodePrediction>> {
    let mut streams = vec![1, c.slots];
    streams.dedup();
    streams
        .into_iter()
        .map(|n| c.predict(n).map_err(anyhow::Error::from))
        .collect()
}

/// The calibration as the operator reads it.
pub fn render(c: &Calibration, saved: Option<&Path>) -> anyhow::Result<String> {
    let mut out = String::from("\nmeasured decode speed (appld --measure");
    out += &format!(
        ", {} threads, {} slots, load average {}):\n",
        c.threads,
        c.slots,
        c.load_avg_1m.map_or("?".to_owned(), |l| format!("{l:.1}"))
    );
    for p in &c.points {
        out += &format!(
            "  step of {:>3} sequences  {:>8.1} ms\n",
            p.batch, p.step_ms
        );
    }
    for p in predictions(c)? {
        out += &format!(
            "  {:>3} stream(s): {:>7.1} tok/s each, {:>7.1} tok/s in all\n",
            p.streams, p.per_stream_tok_s, p.aggregate_tok_s
        );
    }
    if let Some(path) = saved {
        out += &format!("  saved to {} (applctl bench shows it)\n", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrations_are_kept_per_model_file_under_the_cache() {
        let p = default_path("/var/lib/appl/models/gemma.gguf").expect("a home");
        assert!(
            p.ends_with("appl/calibration/gemma.gguf.json"),
            "{}",
            p.display()
        );
    }
}
