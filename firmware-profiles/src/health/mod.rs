//! Live hardware health: what appld samples while it serves, and what counts as a fault.
//!
//! A [`HealthSource`] reads the GPUs of one kind each time it is asked: NVML on NVIDIA
//! ([`nvml::NvmlHealth`]), sysfs on AMD ([`amd::AmdSysfsHealth`]), or a recorded file that stands
//! in for GPUs in tests and demos ([`recorded::RecordedHealth`]). [`host::sample_host`] reads the
//! host's memory and the calling process's resident set from `/proc`, which is all there is to
//! watch on a CPU-only box.
//!
//! [`faults`] and [`warnings`] decide what a reading means, in one place:
//!
//! - a **fault** takes the GPU out of service: uncorrectable ECC errors since the driver loaded
//!   (NVML's volatile counter, AMD's RAS `ue` counts), or a critical XID event that NVIDIA's XID
//!   catalog resolves by resetting the GPU or worse ([`fatal_xid`]);
//! - a **warning** is worth an operator's look but does not stop serving: clock throttling for
//!   power or heat, or corrected ECC errors.
//!
//! Sources never block for long: every reading is one sysfs file or one NVML query, and XID
//! events are drained without waiting.

pub mod amd;
pub mod host;
pub mod nvml;
pub mod recorded;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::inventory::GpuVendor;
use crate::probe::ProbeError;

/// Why the clocks of a GPU are held down (NVML's clock-throttle reasons, grouped). Idle and
/// application-clock settings are not throttling and are not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Throttle {
    /// The software power cap (the board is at its power limit).
    PowerCap,
    /// Software or hardware thermal slowdown.
    Thermal,
    /// Hardware slowdown (power brake, an external signal, or heat).
    HwSlowdown,
    /// The power brake assertion of a multi-GPU system.
    PowerBrake,
    /// Clocks held to match other GPUs in a sync-boost group.
    SyncBoost,
}

impl Throttle {
    /// The stable label used in metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Throttle::PowerCap => "power_cap",
            Throttle::Thermal => "thermal",
            Throttle::HwSlowdown => "hw_slowdown",
            Throttle::PowerBrake => "power_brake",
            Throttle::SyncBoost => "sync_boost",
        }
    }

    /// Every reason, in label order (for metrics that report each one).
    pub const ALL: [Throttle; 5] = [
        Throttle::PowerCap,
        Throttle::Thermal,
        Throttle::HwSlowdown,
        Throttle::PowerBrake,
        Throttle::SyncBoost,
    ];
}

/// One GPU at one moment. `None` where the driver did not say (the reading is unsupported on
/// this board, or failed: then `errors` says which and why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuHealth {
    /// The GPU's index, as the probes number them (NVML order, then AMD cards).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: String,
    pub vendor: GpuVendor,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Percent of the last sample period in which a kernel ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// Why the clocks are held down right now; empty when they are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle: Vec<Throttle>,
    /// ECC errors corrected since the driver loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// ECC errors that could not be corrected since the driver loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
    /// Critical XID events the driver reported since the previous sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xid_events: Vec<u64>,
    /// Readings that failed, as `reading: error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl GpuHealth {
    /// A reading with only the identity and memory filled in.
    pub fn new(index: u32, vendor: GpuVendor, name: impl Into<String>) -> GpuHealth {
        GpuHealth {
            index,
            uuid: None,
            name: name.into(),
            vendor,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            utilization_pct: None,
            temperature_c: None,
            power_w: None,
            power_limit_w: None,
            throttle: Vec::new(),
            ecc_corrected: None,
            ecc_uncorrected: None,
            xid_events: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// The host: memory, and the sampling process's own resident set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostHealth {
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Resident set of the process that took the sample (appld itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_rss_bytes: Option<u64>,
}

/// A source of GPU health readings.
pub trait HealthSource: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Reads every GPU this source sees. "No such GPUs here" is `Ok(vec![])`.
    fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError>;
}

/// The live sources of this machine, in the order the inventory probe numbers GPUs: NVML (when
/// an NVIDIA driver is there), then AMD sysfs.
pub fn system_sources() -> Vec<Box<dyn HealthSource>> {
    let mut out: Vec<Box<dyn HealthSource>> = Vec::new();
    if let Some(n) = nvml::NvmlHealth::open() {
        out.push(Box::new(n));
    }
    out.push(Box::new(amd::AmdSysfsHealth::new("/")));
    out
}

/// Samples every source in turn, numbering GPUs across them as the inventory probe does (each
/// source's GPUs after the previous source's). A source that fails is named in the second list
/// and its GPUs are missing from this sample.
pub fn sample_gpus(sources: &mut [Box<dyn HealthSource>]) -> (Vec<GpuHealth>, Vec<String>) {
    let mut gpus = Vec::new();
    let mut errors = Vec::new();
    for s in sources.iter_mut() {
        let offset = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
        match s.sample() {
            Ok(found) => gpus.extend(found.into_iter().map(|mut g| {
                g.index = g.index.saturating_add(offset);
                g
            })),
            Err(e) => errors.push(format!("{}: {e}", s.name())),
        }
    }
    (gpus, errors)
}

/// What takes a GPU out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GpuFault {
    /// Uncorrectable ECC errors since the driver loaded.
    EccUncorrectable { count: u64 },
    /// A critical XID event whose resolution is a GPU reset or worse.
    Xid { code: u64 },
}

impl GpuFault {
    /// A short stable code: `ecc_uncorrectable` or `xid_79` (audit reasons, metric labels).
    pub fn code(&self) -> String {
        match self {
            GpuFault::EccUncorrectable { .. } => "ecc_uncorrectable".to_owned(),
            GpuFault::Xid { code } => format!("xid_{code}"),
        }
    }

    /// Same fault, whatever the count: an uncorrectable ECC fault is one fault however many
    /// errors it has reached.
    pub fn same_kind(&self, other: &GpuFault) -> bool {
        match (self, other) {
            (GpuFault::EccUncorrectable { .. }, GpuFault::EccUncorrectable { .. }) => true,
            (GpuFault::Xid { code: a }, GpuFault::Xid { code: b }) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for GpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuFault::EccUncorrectable { count } => write!(
                f,
                "{count} uncorrectable ECC error(s) since the driver loaded; the GPU needs a reset"
            ),
            GpuFault::Xid { code } => write!(
                f,
                "XID {code} ({})",
                fatal_xid(*code).unwrap_or("critical driver error")
            ),
        }
    }
}

/// Critical XIDs that take a GPU out of service, with what they mean. From NVIDIA's XID
/// catalog (docs.nvidia.com/deploy/xid-errors, "Analyzing Xid Errors with the Xid Catalog"):
/// the ones whose resolution is a GPU reset, a node reboot or a support case, and the ECC and
/// GPU-lost events. XIDs an application's own bug raises (13, 31, 43...) are not here.
pub fn fatal_xid(code: u64) -> Option<&'static str> {
    Some(match code {
        48 => "double-bit ECC error",
        61 => "internal micro-controller breakpoint",
        62 => "internal micro-controller halt",
        63 => "ECC page retirement or row remapping recorded",
        64 => "ECC page retirement or row remapping failed",
        74 => "NVLink error",
        79 => "the GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        140 => "unrecovered ECC error",
        _ => return None,
    })
}

/// The faults a reading shows.
pub fn faults(g: &GpuHealth) -> Vec<GpuFault> {
    let mut out = Vec::new();
    if let Some(count) = g.ecc_uncorrected.filter(|&n| n > 0) {
        out.push(GpuFault::EccUncorrectable { count });
    }
    for &code in &g.xid_events {
        let f = GpuFault::Xid { code };
        if fatal_xid(code).is_some() && !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// What an operator should look at but that does not stop serving: throttling and corrected
/// ECC errors, and non-fatal XIDs.
pub fn warnings(g: &GpuHealth) -> Vec<String> {
    let mut out: Vec<String> = g
        .throttle
        .iter()
        .map(|t| format!("clocks throttled: {}", t.as_str()))
        .collect();
    if let Some(n) = g.ecc_corrected.filter(|&n| n > 0) {
        out.push(format!(
            "{n} corrected ECC error(s) since the driver loaded"
        ));
    }
    for &code in &g.xid_events {
        if fatal_xid(code).is_none() {
            out.push(format!("XID {code} (not fatal to the GPU)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_codes_are_stable() {
        assert_eq!(
            GpuFault::EccUncorrectable { count: 2 }.code(),
            "ecc_uncorrectable"
        );
        assert_eq!(GpuFault::Xid { code: 79 }.code(), "xid_79");
        assert!(GpuFault::Xid { code: 79 }
            .to_string()
            .contains("fallen off the bus"));
        assert!(GpuFault::EccUncorrectable { count: 1 }
            .same_kind(&GpuFault::EccUncorrectable { count: 7 }));
        assert!(!GpuFault::Xid { code: 79 }.same_kind(&GpuFault::Xid { code: 48 }));
    }
}
