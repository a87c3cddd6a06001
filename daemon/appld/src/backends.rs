//! Chooses llama.cpp's backends for this machine and loads them, before any model.
//!
//! In a package build (`dynamic-backends`) the CPU backend ships as one module per x86 feature
//! level. The one loaded is the best that this CPU *and* its kernel run
//! (`appl_firmware_profiles::cpu_variant`), never one that would fault; GPU backend modules
//! shipped beside it are loaded too. `APPL_CPU_VARIANT` forces a variant, and is refused if that
//! variant cannot run here. A default (source) build has its CPU backend built in and nothing to
//! choose.

use std::path::{Path, PathBuf};

use appl_engine::backends;
use appl_firmware_profiles::cpu_variant::{self, CpuFacts, Selection};
use tracing::{info, warn};

use crate::StartupError;

/// The environment variable that forces a CPU variant.
pub const FORCE_VAR: &str = "APPL_CPU_VARIANT";

/// What was loaded, for the log and systemd's status line.
#[derive(Debug, Clone)]
pub struct BackendChoice {
    /// The CPU variant, or `built-in` for a default build.
    pub cpu: String,
    /// Other backends loaded beside it (`CUDA`, `ROCm`, ...).
    pub others: Vec<String>,
}

/// Where this binary's backend modules are: `<prefix>/lib/appl` for an installed package, else
/// the build tree's module folder.
pub fn module_dir() -> Option<PathBuf> {
    let packaged = std::env::current_exe()
        .ok()
        .and_then(|exe| cpu_variant::package_lib_dir(&exe))
        .filter(|d| has_cpu_variants(d));
    packaged.or_else(|| backends::build_dir().map(Path::to_path_buf))
}

fn has_cpu_variants(dir: &Path) -> bool {
    cpu_variant::shipped_variants(dir).is_ok_and(|v| !v.is_empty())
}

/// Backend modules other than the CPU variants: `libggml-<name>.so` beside them, except ggml's
/// own core libraries.
fn other_modules(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(backend) = name
            .strip_prefix("libggml-")
            .and_then(|n| n.strip_suffix(".so"))
        else {
            continue;
        };
        if backend != "base" && !backend.starts_with("cpu-") {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The CPU variant [`load`] chose (`built-in` for a source build); `None` before it ran.
pub fn chosen() -> Option<&'static str> {
    CHOSEN.get().map(String::as_str)
}

static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Chooses and loads the backends. Call once, before the first model.
pub fn load() -> Result<BackendChoice, StartupError> {
    let choice = choose_and_load()?;
    let _ = CHOSEN.set(choice.cpu.clone());
    Ok(choice)
}

fn choose_and_load() -> Result<BackendChoice, StartupError> {
    if !backends::DYNAMIC {
        info!(target: "engine", cpu_backend = "built-in", "llama.cpp CPU backend is built into this binary (a source build)");
        return Ok(BackendChoice {
            cpu: "built-in".into(),
            others: vec![],
        });
    }
    let dir = module_dir().ok_or_else(|| {
        StartupError::Backend("no folder of llama.cpp backend modules was found".into())
    })?;
    let io_err = |e: std::io::Error| {
        StartupError::Backend(format!("reading backend modules in {}: {e}", dir.display()))
    };
    let shipped = cpu_variant::shipped_variants(&dir).map_err(io_err)?;
    let names: Vec<String> = shipped.iter().map(|(n, _)| n.clone()).collect();
    let forced = std::env::var(FORCE_VAR).ok().filter(|v| !v.is_empty());
    let facts = CpuFacts::probe();
    let selection = cpu_variant::select(&facts, &names, forced.as_deref());
    log_selection(&selection, &dir);
    let Some(chosen) = selection.chosen else {
        let msg = format!(
            "no usable llama.cpp CPU backend in {}: {}",
            dir.display(),
            selection.summary()
        );
        return Err(if forced.is_some() {
            StartupError::BackendForced(msg)
        } else {
            StartupError::Backend(msg)
        });
    };
    let mut paths: Vec<PathBuf> = shipped
        .into_iter()
        .filter(|(n, _)| n == chosen)
        .map(|(_, p)| p)
        .collect();
    paths.extend(other_modules(&dir).map_err(io_err)?);
    let loaded =
        backends::load_modules(&paths).map_err(|e| StartupError::Backend(e.to_string()))?;
    let others = loaded
        .iter()
        .filter(|m| m.name != "CPU")
        .map(|m| m.name.clone())
        .collect();
    Ok(BackendChoice {
        cpu: chosen.to_owned(),
        others,
    })
}

fn log_selection(sel: &Selection, dir: &Path) {
    info!(
        target: "engine",
        cpu_variant = sel.chosen.unwrap_or("none"),
        modules = %dir.display(),
        xcr0 = sel.xcr0.as_deref().unwrap_or("unreadable"),
        amx = ?sel.amx,
        "llama.cpp CPU backend: {}",
        sel.summary()
    );
    for skipped in sel.skipped_better() {
        info!(target: "engine", "CPU variant not used: {skipped}");
    }
    if !sel.unknown_shipped.is_empty() {
        warn!(target: "engine", unknown = ?sel.unknown_shipped, "CPU variant libraries of unknown variants are never loaded");
    }
}
