//! The recorded hardware inventory: what the probes found, as JSON.
//!
//! `applctl check --inventory FILE` runs the same rules on a recorded inventory as on the live
//! machine; `tests/fixtures/inventories/*.json` holds recorded ones.

use serde::{Deserialize, Serialize};

/// Current inventory schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// GPU vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
}

/// One GPU, as a probe saw it. Optional fields are `None` where the driver did not say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub vendor: GpuVendor,
    pub name: String,
    /// PCI device id (the vendor id follows from `vendor`).
    pub pci_device_id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_subsystem_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// CUDA driver API version, `"12.4"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rocm_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbios_version: Option<String>,
    /// NVIDIA compute capability, `"8.9"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// AMD gfx target, `"gfx942"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gfx_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
}

/// The host CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    /// Physical cores (all sockets).
    pub cores: u32,
    /// Logical CPUs.
    pub threads: u32,
    pub avx2: bool,
    pub avx512: bool,
    /// Measured memory read bandwidth in GB/s, when someone measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bandwidth_gbps: Option<f64>,
}

/// Host memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Everything the sizing rules need to know about a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub schema: u32,
    /// Where this came from: `"probe"`, or a note on how a fixture was recorded.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub cpu: CpuInfo,
    pub memory: HostMemory,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// Probe problems that did not stop the inventory (a failed NVML call, an unreadable file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why an inventory file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("inventory schema {0} is not supported (expected {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("inventory GPU {index}: {reason}")]
    BadGpu { index: u32, reason: String },
}

impl Inventory {
    /// Parses and checks a recorded inventory.
    pub fn from_json(text: &str) -> Result<Inventory, InventoryError> {
        let inv: Inventory = serde_json::from_str(text)?;
        if inv.schema != SCHEMA_VERSION {
            return Err(InventoryError::Schema(inv.schema));
        }
        for g in &inv.gpus {
            if g.vram_free_bytes > g.vram_total_bytes {
                return Err(InventoryError::BadGpu {
                    index: g.index,
                    reason: format!(
                        "free {} exceeds total {}",
                        g.vram_free_bytes, g.vram_total_bytes
                    ),
                });
            }
        }
        Ok(inv)
    }

    /// Reads a recorded inventory from a file.
    pub fn from_path(path: &std::path::Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Inventory::from_json(&text)
    }

    /// Pretty JSON, as written to fixtures.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
