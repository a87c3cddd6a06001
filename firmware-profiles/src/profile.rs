//! Firmware/SKU profiles: one TOML file per GPU SKU (plus one for CPU-only hosts), embedded in
//! the binary with `include_str!` so `applctl` and `appld` work without files on disk.
//!
//! Every number in a profile cites its source in a comment; `tests` checks that no numeric line
//! goes without one.

use serde::{Deserialize, Serialize};

use crate::inventory::{GpuInfo, GpuVendor};
use crate::sizing::KvType;

/// The shipped profiles, as `(file name, TOML text)`.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("rtx-4090.toml", include_str!("../profiles/rtx-4090.toml")),
    ("a10g.toml", include_str!("../profiles/a10g.toml")),
    ("l40s.toml", include_str!("../profiles/l40s.toml")),
    (
        "a100-40gb-pcie.toml",
        include_str!("../profiles/a100-40gb-pcie.toml"),
    ),
    (
        "a100-40gb-sxm.toml",
        include_str!("../profiles/a100-40gb-sxm.toml"),
    ),
    (
        "a100-80gb-pcie.toml",
        include_str!("../profiles/a100-80gb-pcie.toml"),
    ),
    (
        "a100-80gb-sxm.toml",
        include_str!("../profiles/a100-80gb-sxm.toml"),
    ),
    ("h100-pcie.toml", include_str!("../profiles/h100-pcie.toml")),
    ("h100-sxm.toml", include_str!("../profiles/h100-sxm.toml")),
    ("h200.toml", include_str!("../profiles/h200.toml")),
    ("mi300x.toml", include_str!("../profiles/mi300x.toml")),
    ("cpu.toml", include_str!("../profiles/cpu.toml")),
];

/// Why a profile is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("profile {file}: {reason}")]
    Invalid { file: String, reason: String },
}

/// Which kind of device a profile describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    Nvidia,
    Amd,
    Cpu,
}

/// The llama.cpp backend a SKU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cuda,
    Rocm,
    Cpu,
}

/// Minimum software versions for a SKU. Dotted numeric strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Minimums {
    /// Kernel driver (NVIDIA `sys_driver_version`).
    pub driver: Option<String>,
    /// CUDA driver API version the driver must support (NVML `sys_cuda_driver_version`).
    pub cuda: Option<String>,
    /// ROCm release.
    pub rocm: Option<String>,
    /// Firmware bundle, where the vendor names one.
    pub firmware: Option<String>,
}

/// Tuning defaults for llama.cpp on this SKU, plus the planning factors for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    pub flash_attn: bool,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub kv_type: String,
    /// Fraction of the bandwidth bound that decode reaches in practice.
    pub decode_efficiency: f64,
    /// Runtime overhead per device (CUDA/ROCm context, cuBLAS workspaces) in MiB.
    pub runtime_overhead_mib: u64,
    /// Memory kept free on the device, in MiB.
    pub reserve_mib: u64,
}

/// One SKU profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub id: String,
    pub name: String,
    pub kind: ProfileKind,
    pub backend: Backend,
    #[serde(default)]
    pub pci_vendor_id: Option<u16>,
    #[serde(default)]
    pub pci_device_ids: Vec<u16>,
    /// Nameplate memory in decimal GB.
    #[serde(default)]
    pub vram_gb: Option<f64>,
    /// Peak memory bandwidth in GB/s (decimal).
    pub bandwidth_gbps: f64,
    #[serde(default)]
    pub compute_capability: Option<String>,
    #[serde(default)]
    pub gfx_target: Option<String>,
    #[serde(default)]
    pub power_w: Option<f64>,
    /// Where the framework's GPU guide places this SKU.
    pub guide: String,
    #[serde(default)]
    pub minimums: Minimums,
    pub tuning: Tuning,
}

impl Profile {
    /// Parses and validates one profile.
    pub fn parse(file: &str, text: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            file: file.to_string(),
            source,
        })?;
        p.validate(file)?;
        Ok(p)
    }

    /// The KV cache type the profile recommends.
    pub fn kv_type(&self) -> KvType {
        // `validate` has checked that the name parses; fall back to f16 regardless.
        self.tuning.kv_type.parse().unwrap_or(KvType::F16)
    }

    fn validate(&self, file: &str) -> Result<(), ProfileError> {
        let bad = |reason: String| {
            Err(ProfileError::Invalid {
                file: file.to_string(),
                reason,
            })
        };
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return bad(format!("id {:?} must be non-empty [a-z0-9-]", self.id));
        }
        if file.strip_suffix(".toml") != Some(self.id.as_str()) {
            return bad(format!("id {:?} must match the file name", self.id));
        }
        if !(self.bandwidth_gbps > 0.0 && self.bandwidth_gbps < 100_000.0) {
            return bad(format!(
                "bandwidth_gbps {} out of range",
                self.bandwidth_gbps
            ));
        }
        let t = &self.tuning;
        if !(t.decode_efficiency > 0.0 && t.decode_efficiency <= 1.0) {
            return bad(format!(
                "decode_efficiency {} must be in (0, 1]",
                t.decode_efficiency
            ));
        }
        if t.n_ubatch == 0 || t.n_batch == 0 || t.n_ubatch > t.n_batch {
            return bad(format!(
                "need 0 < n_ubatch ({}) <= n_batch ({})",
                t.n_ubatch, t.n_batch
            ));
        }
        if t.kv_type.parse::<KvType>().is_err() {
            return bad(format!("unknown kv_type {:?}", t.kv_type));
        }
        for (what, v) in [
            ("driver", &self.minimums.driver),
            ("cuda", &self.minimums.cuda),
            ("rocm", &self.minimums.rocm),
            ("firmware", &self.minimums.firmware),
        ] {
            if let Some(v) = v {
                if parse_version(v).is_none() {
                    return bad(format!("minimum {what} {v:?} is not a dotted version"));
                }
            }
        }
        let (want_vendor, want_backend) = match self.kind {
            ProfileKind::Nvidia => (Some(0x10de), Backend::Cuda),
            ProfileKind::Amd => (Some(0x1002), Backend::Rocm),
            ProfileKind::Cpu => (None, Backend::Cpu),
        };
        if self.backend != want_backend {
            return bad(format!(
                "{:?} profile needs backend {want_backend:?}",
                self.kind
            ));
        }
        if self.pci_vendor_id != want_vendor {
            return bad(format!("pci_vendor_id must be {want_vendor:04x?}"));
        }
        if self.kind != ProfileKind::Cpu {
            if self.pci_device_ids.is_empty() {
                return bad("a GPU profile needs pci_device_ids".into());
            }
            match self.vram_gb {
                Some(v) if v > 0.0 && v < 10_000.0 => {}
                other => return bad(format!("vram_gb {other:?} out of range")),
            }
            if self.tuning.runtime_overhead_mib == 0 {
                return bad("a GPU profile needs runtime_overhead_mib".into());
            }
        }
        match self.kind {
            ProfileKind::Nvidia => {
                let ok = self
                    .compute_capability
                    .as_deref()
                    .and_then(parse_version)
                    .is_some_and(|v| v.len() == 2);
                if !ok {
                    return bad("an NVIDIA profile needs compute_capability \"M.m\"".into());
                }
                if self.minimums.driver.is_none() || self.minimums.cuda.is_none() {
                    return bad("an NVIDIA profile needs minimum driver and cuda".into());
                }
            }
            ProfileKind::Amd => {
                if !self
                    .gfx_target
                    .as_deref()
                    .is_some_and(|g| g.starts_with("gfx"))
                {
                    return bad("an AMD profile needs gfx_target \"gfxNNN\"".into());
                }
                if self.minimums.rocm.is_none() {
                    return bad("an AMD profile needs a minimum rocm".into());
                }
            }
            ProfileKind::Cpu => {}
        }
        Ok(())
    }
}

/// All shipped profiles, validated.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    pub profiles: Vec<Profile>,
}

impl ProfileSet {
    /// Loads and validates the embedded profiles.
    pub fn embedded() -> Result<ProfileSet, ProfileError> {
        let profiles = EMBEDDED
            .iter()
            .map(|(file, text)| Profile::parse(file, text))
            .collect::<Result<Vec<_>, _>>()?;
        let set = ProfileSet { profiles };
        set.check_unique()?;
        Ok(set)
    }

    fn check_unique(&self) -> Result<(), ProfileError> {
        let mut seen = std::collections::BTreeMap::new();
        for p in &self.profiles {
            for &dev in &p.pci_device_ids {
                let key = (p.pci_vendor_id, dev);
                if let Some(other) = seen.insert(key, p.id.clone()) {
                    return Err(ProfileError::Invalid {
                        file: format!("{}.toml", p.id),
                        reason: format!("PCI id {dev:04x} is also claimed by {other}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The profile with this id.
    pub fn get(&self, id: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// The CPU profile.
    pub fn cpu(&self) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.kind == ProfileKind::Cpu)
    }

    /// The profile for a probed GPU, matched by PCI vendor and device id.
    pub fn for_gpu(&self, gpu: &GpuInfo) -> Option<&Profile> {
        let vendor = match gpu.vendor {
            GpuVendor::Nvidia => 0x10de,
            GpuVendor::Amd => 0x1002,
        };
        self.profiles.iter().find(|p| {
            p.pci_vendor_id == Some(vendor) && p.pci_device_ids.contains(&gpu.pci_device_id)
        })
    }
}

/// Parses a dotted numeric version such as `"525.60.13"` or `"12.4"`.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v.trim().split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty())
}

/// `Some(true)` when `have >= want`, comparing dotted versions numerically.
pub fn version_at_least(have: &str, want: &str) -> Option<bool> {
    let (mut h, mut w) = (parse_version(have)?, parse_version(want)?);
    let n = h.len().max(w.len());
    h.resize(n, 0);
    w.resize(n, 0);
    Some(h >= w)
}
