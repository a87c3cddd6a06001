//! Hardware probes: NVIDIA through NVML, AMD through sysfs, CPU and RAM through `/proc`.
//!
//! GPU probes sit behind [`GpuProbe`] so tests can substitute recorded answers. The sysfs and
//! `/proc` readers take a root directory, so tests point them at a fake tree.

use std::path::{Path, PathBuf};

use crate::inventory::{CpuInfo, GpuInfo, GpuVendor, HostMemory, Inventory, SCHEMA_VERSION};

/// Why a probe failed outright.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: String, reason: String },
}

/// A source of GPUs. "No such GPUs here" is `Ok(vec![])`, not an error.
pub trait GpuProbe {
    /// Short name for logs and warnings.
    fn name(&self) -> &'static str;
    /// The GPUs this probe sees. Indices are assigned by [`probe_inventory`].
    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError>;
}

/// Builds an inventory from the given GPU probes and the CPU/RAM under `root` (normally `/`).
/// A failing GPU probe becomes a warning in the inventory; a failing CPU probe is an error.
pub fn probe_inventory(probes: &[&dyn GpuProbe], root: &Path) -> Result<Inventory, ProbeError> {
    let (cpu, memory) = probe_cpu(root)?;
    let mut gpus = Vec::new();
    let mut warnings = Vec::new();
    for p in probes {
        match p.probe() {
            Ok(found) => gpus.extend(found),
            Err(e) => {
                tracing::warn!(target: "probe", probe = p.name(), error = %e, "GPU probe failed");
                warnings.push(format!("{}: {e}", p.name()));
            }
        }
    }
    for (i, g) in gpus.iter_mut().enumerate() {
        g.index = u32::try_from(i).unwrap_or(u32::MAX);
    }
    let hostname = std::fs::read_to_string(root.join("proc/sys/kernel/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(Inventory {
        schema: SCHEMA_VERSION,
        source: "probe".into(),
        hostname,
        cpu,
        memory,
        gpus,
        warnings,
    })
}

/// Probes the live machine: NVML, AMD sysfs and `/proc` at `/`.
pub fn probe_system() -> Result<Inventory, ProbeError> {
    let nvml = NvmlProbe;
    let amd = AmdSysfsProbe::new("/");
    probe_inventory(&[&nvml, &amd], Path::new("/"))
}

// ---------------------------------------------------------------------------------------------
// CPU

/// Reads the CPU model, core counts, AVX flags and RAM from `{root}/proc/cpuinfo` and
/// `{root}/proc/meminfo`.
pub fn probe_cpu(root: &Path) -> Result<(CpuInfo, HostMemory), ProbeError> {
    let cpuinfo_path = root.join("proc/cpuinfo");
    let meminfo_path = root.join("proc/meminfo");
    let cpuinfo = read(&cpuinfo_path)?;
    let meminfo = read(&meminfo_path)?;
    let cpu = parse_cpuinfo(&cpuinfo).ok_or_else(|| ProbeError::Parse {
        path: cpuinfo_path.display().to_string(),
        reason: "no processor entries".into(),
    })?;
    let mem = parse_meminfo(&meminfo).ok_or_else(|| ProbeError::Parse {
        path: meminfo_path.display().to_string(),
        reason: "no MemTotal".into(),
    })?;
    Ok((cpu, mem))
}

fn read(path: &Path) -> Result<String, ProbeError> {
    std::fs::read_to_string(path).map_err(|source| ProbeError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Parses `/proc/cpuinfo` (x86 and arm64 layouts).
pub fn parse_cpuinfo(text: &str) -> Option<CpuInfo> {
    let mut threads = 0u32;
    let mut model = None;
    let mut flags = String::new();
    let mut cores = std::collections::BTreeSet::new();
    let (mut phys, mut core) = (None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => {
                threads += 1;
                if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                    cores.insert((p, c));
                }
            }
            "model name" | "Model" | "cpu model" if model.is_none() => model = Some(v.to_string()),
            "flags" | "Features" if flags.is_empty() => flags = v.to_string(),
            "physical id" => phys = Some(v.to_string()),
            "core id" => core = Some(v.to_string()),
            _ => {}
        }
    }
    if let (Some(p), Some(c)) = (phys, core) {
        cores.insert((p, c));
    }
    if threads == 0 {
        return None;
    }
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let cores = if cores.is_empty() {
        threads
    } else {
        u32::try_from(cores.len()).unwrap_or(threads)
    };
    Some(CpuInfo {
        model: model.unwrap_or_else(|| "unknown".into()),
        cores,
        threads,
        avx2: has("avx2"),
        avx512: has("avx512f"),
        mem_bandwidth_gbps: None,
    })
}

/// Parses `/proc/meminfo`; values there are in KiB.
pub fn parse_meminfo(text: &str) -> Option<HostMemory> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")
        .or_else(|| field("MemFree"))
        .unwrap_or(0);
    Some(HostMemory {
        total_bytes: total,
        available_bytes: available.min(total),
    })
}

// ---------------------------------------------------------------------------------------------
// AMD

/// AMD GPUs from sysfs, without ROCm tools: DRM `card*/device` for PCI ids, VRAM and VBIOS; KFD
/// topology for `gfx_target_version`. `root` is `/` in production and a fake tree in tests.
#[derive(Debug, Clone)]
pub struct AmdSysfsProbe {
    root: PathBuf,
}

impl AmdSysfsProbe {
    pub fn new(root: impl Into<PathBuf>) -> AmdSysfsProbe {
        AmdSysfsProbe { root: root.into() }
    }
}

/// `gfx_target_version` → `gfxNNN`: major·10000 + minor·100 + stepping, minor and stepping
/// written in hex (90402 → gfx942, 90010 → gfx90a, 110001 → gfx1101).
pub fn gfx_target_name(v: u64) -> Option<String> {
    if v == 0 {
        return None;
    }
    let (major, minor, step) = (v / 10000, (v / 100) % 100, v % 100);
    if minor > 15 || step > 15 {
        return None;
    }
    Some(format!("gfx{major}{minor:x}{step:x}"))
}

pub(crate) fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// `key value` lines of a KFD `properties` file.
fn kfd_props(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?, it.next()?.parse().ok()?))
    })
}

impl GpuProbe for AmdSysfsProbe {
    fn name(&self) -> &'static str {
        "amd-sysfs"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        // KFD nodes: device_id → gfx target (CPU nodes have gfx_target_version 0).
        let mut gfx_by_device = std::collections::BTreeMap::new();
        let nodes = self.root.join("sys/class/kfd/kfd/topology/nodes");
        if let Ok(entries) = std::fs::read_dir(&nodes) {
            for e in entries.flatten() {
                let Some(text) = read_trim(&e.path().join("properties")) else {
                    continue;
                };
                let props: std::collections::BTreeMap<&str, u64> = kfd_props(&text).collect();
                if let (Some(&dev), Some(gfx)) = (
                    props.get("device_id"),
                    props
                        .get("gfx_target_version")
                        .and_then(|&v| gfx_target_name(v)),
                ) {
                    gfx_by_device.insert(dev, gfx);
                }
            }
        }
        let rocm_version = read_trim(&self.root.join("opt/rocm/.info/version"))
            .map(|v| v.split('-').next().unwrap_or_default().to_string())
            .filter(|v| !v.is_empty());

        let mut gpus = Vec::new();
        for dev in amd_card_devices(&self.root) {
            let total_path = dev.join("mem_info_vram_total");
            let Some(total) = read_trim(&total_path) else {
                continue; // an AMD display function without VRAM accounting: not a compute GPU
            };
            let total: u64 = total.parse().map_err(|_| ProbeError::Parse {
                path: total_path.display().to_string(),
                reason: format!("{total:?} is not a byte count"),
            })?;
            let used: u64 = read_trim(&dev.join("mem_info_vram_used"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let device_id = read_trim(&dev.join("device"))
                .and_then(|v| parse_hex_u32(&v))
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(0);
            let subsystem =
                read_trim(&dev.join("subsystem_device")).and_then(|v| parse_hex_u32(&v));
            let name = read_trim(&dev.join("product_name"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("AMD GPU {device_id:04x}"));
            let pcie_width =
                read_trim(&dev.join("current_link_width")).and_then(|v| v.parse().ok());
            let pcie_gen =
                read_trim(&dev.join("current_link_speed")).and_then(|v| pcie_gen_from_speed(&v));
            let bus_id = std::fs::read_link(&dev)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            gpus.push(GpuInfo {
                index: 0,
                vendor: GpuVendor::Amd,
                name,
                pci_device_id: device_id,
                pci_subsystem_id: subsystem,
                pci_bus_id: bus_id,
                uuid: read_trim(&dev.join("unique_id")),
                vram_total_bytes: total,
                vram_free_bytes: total.saturating_sub(used),
                driver_version: read_trim(&self.root.join("sys/module/amdgpu/version")),
                cuda_version: None,
                rocm_version: rocm_version.clone(),
                vbios_version: read_trim(&dev.join("vbios_version")),
                compute_capability: None,
                gfx_target: gfx_by_device.get(&u64::from(device_id)).cloned(),
                ecc_enabled: None,
                pcie_gen,
                pcie_width,
                power_limit_w: None,
            });
        }
        Ok(gpus)
    }
}

/// The `device` folders of AMD DRM cards under `{root}/sys/class/drm` (`card0`, `card1`, ...,
/// not connectors such as `card0-DP-1`), in card order. Shared by the inventory probe and the
/// health sampler, so both number AMD GPUs alike.
pub(crate) fn amd_card_devices(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/drm")) else {
        return vec![];
    };
    let card_number = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("card"))
            .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let mut cards: Vec<(u32, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((card_number(&p)?, p)))
        .collect();
    cards.sort_by_key(|(n, _)| *n);
    cards
        .into_iter()
        .map(|(_, p)| p.join("device"))
        .filter(|dev| {
            read_trim(&dev.join("vendor")).and_then(|v| parse_hex_u32(&v)) == Some(0x1002)
        })
        .collect()
}

/// `"32.0 GT/s PCIe"` → 5, using the per-lane rates of PCIe generations 1 to 6.
fn pcie_gen_from_speed(s: &str) -> Option<u32> {
    let gts: f64 = s.split_whitespace().next()?.parse().ok()?;
    [
        (2.5, 1),
        (5.0, 2),
        (8.0, 3),
        (16.0, 4),
        (32.0, 5),
        (64.0, 6),
    ]
    .iter()
    .find(|(rate, _)| (gts - rate).abs() < 0.5)
    .map(|&(_, g)| g)
}

// ---------------------------------------------------------------------------------------------
// NVIDIA

/// NVIDIA GPUs through NVML (`libnvidia-ml.so.1`, loaded at run time). A missing library or a
/// missing driver means "no NVIDIA GPU" and gives `Ok(vec![])`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProbe;

/// NVML's CUDA driver version integer (e.g. 12040) as `"12.4"`.
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

impl GpuProbe for NvmlProbe {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        use nvml_wrapper::error::NvmlError;
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => n,
            Err(
                e @ (NvmlError::LibloadingError(_)
                | NvmlError::LibraryNotFound
                | NvmlError::DriverNotLoaded
                | NvmlError::NoPermission),
            ) => {
                tracing::debug!(target: "probe", error = %e, "NVML unavailable: no NVIDIA GPU");
                return Ok(vec![]);
            }
            Err(e) => return Err(ProbeError::Nvml(e.to_string())),
        };
        let driver = nvml.sys_driver_version().ok();
        let cuda = nvml.sys_cuda_driver_version().ok().map(cuda_version_string);
        let count = nvml
            .device_count()
            .map_err(|e| ProbeError::Nvml(format!("device_count: {e}")))?;
        let mut gpus = Vec::new();
        for i in 0..count {
            let d = nvml
                .device_by_index(i)
                .map_err(|e| ProbeError::Nvml(format!("device {i}: {e}")))?;
            let mem = d
                .memory_info()
                .map_err(|e| ProbeError::Nvml(format!("device {i} memory_info: {e}")))?;
            let pci = d.pci_info().ok();
            gpus.push(GpuInfo {
                index: i,
                vendor: GpuVendor::Nvidia,
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                // `pci_device_id` packs the device id in the high 16 bits, vendor in the low.
                pci_device_id: pci
                    .as_ref()
                    .map_or(0, |p| u16::try_from(p.pci_device_id >> 16).unwrap_or(0)),
                pci_subsystem_id: pci.as_ref().and_then(|p| p.pci_sub_system_id),
                pci_bus_id: pci.map(|p| p.bus_id),
                uuid: d.uuid().ok(),
                vram_total_bytes: mem.total,
                vram_free_bytes: mem.free,
                driver_version: driver.clone(),
                cuda_version: cuda.clone(),
                rocm_version: None,
                vbios_version: d.vbios_version().ok(),
                compute_capability: d
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                ecc_enabled: d.is_ecc_enabled().ok().map(|e| e.currently_enabled),
                pcie_gen: d.current_pcie_link_gen().ok(),
                pcie_width: d.current_pcie_link_width().ok(),
                power_limit_w: d
                    .enforced_power_limit()
                    .ok()
                    .map(|mw| f64::from(mw) / 1000.0),
                gfx_target: None,
            });
        }
        Ok(gpus)
    }
}
