//! AMD GPU health from sysfs, without ROCm tools: `gpu_busy_percent`, `mem_info_vram_used` and
//! `_total` of each DRM card, its hwmon sensors (`temp1_input` in m°C, `power1_average` or
//! `power1_input` and `power1_cap` in µW), and the RAS error counters (`ras/*_err_count`, lines
//! `ue: N` and `ce: N`, summed over the blocks). The cards are numbered as the inventory probe
//! numbers them. sysfs has no plain throttle reasons, so AMD readings carry none.

use std::path::{Path, PathBuf};

use super::{GpuHealth, HealthSource};
use crate::inventory::GpuVendor;
use crate::probe::{amd_card_devices, read_trim, ProbeError};

/// AMD GPUs' health under `root` (`/` in production, a fake tree in tests).
#[derive(Debug, Clone)]
pub struct AmdSysfsHealth {
    root: PathBuf,
}

impl AmdSysfsHealth {
    pub fn new(root: impl Into<PathBuf>) -> AmdSysfsHealth {
        AmdSysfsHealth { root: root.into() }
    }
}

fn number(path: &Path) -> Option<f64> {
    read_trim(path)?.parse().ok()
}

/// The first `hwmon*` folder of a card's device.
fn hwmon(dev: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dev.join("hwmon"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter().next()
}

/// Sums `ue:` and `ce:` over every `*_err_count` file in a card's `ras` folder; `None` when the
/// card has no RAS counters (consumer boards).
fn ras_counts(dev: &Path) -> Option<(u64, u64)> {
    let entries = std::fs::read_dir(dev.join("ras")).ok()?;
    let mut found = false;
    let (mut ue, mut ce) = (0u64, 0u64);
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().ends_with("_err_count") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        found = true;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v: u64 = v.trim().parse().unwrap_or(0);
            match k.trim() {
                "ue" => ue = ue.saturating_add(v),
                "ce" => ce = ce.saturating_add(v),
                _ => {}
            }
        }
    }
    found.then_some((ue, ce))
}

impl HealthSource for AmdSysfsHealth {
    fn name(&self) -> &'static str {
        "amd-sysfs"
    }

    fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError> {
        let mut out = Vec::new();
        for dev in amd_card_devices(&self.root) {
            let total_path = dev.join("mem_info_vram_total");
            let Some(total) = read_trim(&total_path) else {
                continue; // a display function without VRAM accounting: not a compute GPU
            };
            let index = u32::try_from(out.len()).unwrap_or(u32::MAX);
            let name = read_trim(&dev.join("product_name"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "AMD GPU".to_owned());
            let mut g = GpuHealth::new(index, GpuVendor::Amd, name);
            g.uuid = read_trim(&dev.join("unique_id"));
            g.memory_total_bytes = total.parse().map_err(|_| ProbeError::Parse {
                path: total_path.display().to_string(),
                reason: format!("{total:?} is not a byte count"),
            })?;
            match number(&dev.join("mem_info_vram_used")) {
                Some(u) => g.memory_used_bytes = u as u64,
                None => g.errors.push("mem_info_vram_used: unreadable".into()),
            }
            g.utilization_pct = number(&dev.join("gpu_busy_percent"));
            if let Some(h) = hwmon(&dev) {
                g.temperature_c = number(&h.join("temp1_input")).map(|m| m / 1000.0);
                g.power_w = number(&h.join("power1_average"))
                    .or_else(|| number(&h.join("power1_input")))
                    .map(|uw| uw / 1e6);
                g.power_limit_w = number(&h.join("power1_cap")).map(|uw| uw / 1e6);
            }
            if let Some((ue, ce)) = ras_counts(&dev) {
                g.ecc_uncorrected = Some(ue);
                g.ecc_corrected = Some(ce);
            }
            out.push(g);
        }
        Ok(out)
    }
}
