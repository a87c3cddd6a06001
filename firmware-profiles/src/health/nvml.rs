//! NVIDIA GPU health through NVML: memory, utilisation, temperature, power against the enforced
//! limit, clock-throttle reasons, volatile ECC counts, and critical XID events from an NVML
//! event set that is drained (never waited on) at each sample.
//!
//! Untested on hardware in this project's CI (no GPU there); the readings are the calls
//! `nvidia-smi -q` makes, and each one that fails is reported in the reading's `errors`
//! instead of failing the sample.

use std::sync::OnceLock;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

use super::{GpuHealth, HealthSource, Throttle};
use crate::inventory::GpuVendor;
use crate::probe::ProbeError;

/// NVML, initialised once per process and kept: the event set borrows it for as long as the
/// sampler runs. `None` when there is no NVIDIA driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!(target: "health", error = %e, "NVML unavailable: no NVIDIA GPU to watch");
            None
        }
    })
    .as_ref()
}

/// NVIDIA GPUs' health through NVML.
pub struct NvmlHealth {
    nvml: &'static Nvml,
    count: u32,
    /// Critical XID and double-bit ECC events of every GPU that supports them.
    events: Option<EventSet<'static>>,
}

impl std::fmt::Debug for NvmlHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlHealth")
            .field("gpus", &self.count)
            .field("events", &self.events.is_some())
            .finish()
    }
}

impl NvmlHealth {
    /// Opens NVML and registers for XID events. `None` when there is no NVIDIA driver or GPU.
    pub fn open() -> Option<NvmlHealth> {
        let nvml = nvml()?;
        let count = nvml.device_count().ok().filter(|&n| n > 0)?;
        let mut set = nvml.create_event_set().ok();
        for i in 0..count {
            let (Some(s), Ok(d)) = (set.take(), nvml.device_by_index(i)) else {
                continue;
            };
            let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
            let supported = d.supported_event_types().unwrap_or(EventTypes::empty()) & wanted;
            if supported.is_empty() {
                set = Some(s);
                continue;
            }
            // A failed registration releases the set; start a new one for the other GPUs.
            set = match d.register_events(supported, s) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(target: "health", gpu = i, error = %e.error, "cannot watch XID events");
                    nvml.create_event_set().ok()
                }
            };
        }
        Some(NvmlHealth {
            nvml,
            count,
            events: set,
        })
    }

    /// Critical XIDs (by GPU index) that arrived since the last call, without waiting.
    fn drain_events(&mut self) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let Some(set) = &self.events else {
            return out;
        };
        // Bounded: a flood of events must not hold the sampler.
        for _ in 0..64 {
            match set.wait(0) {
                Ok(ev) => {
                    let Ok(i) = ev.device.index() else { continue };
                    if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                        if let Some(XidError::Value(code)) = ev.event_data {
                            out.push((i, code));
                        }
                    }
                    if ev.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                        // XID 48 is the driver's name for a double-bit ECC error.
                        out.push((i, 48));
                    }
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    tracing::debug!(target: "health", error = %e, "NVML event wait failed");
                    break;
                }
            }
        }
        out
    }
}

/// NVML's throttle reasons, grouped as [`Throttle`]; idle and clock settings are left out.
pub fn throttle_from_nvml(r: ThrottleReasons) -> Vec<Throttle> {
    let mut out = Vec::new();
    let mut add = |cond: bool, t: Throttle| {
        if cond && !out.contains(&t) {
            out.push(t);
        }
    };
    add(
        r.contains(ThrottleReasons::SW_POWER_CAP),
        Throttle::PowerCap,
    );
    add(
        r.intersects(ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN),
        Throttle::Thermal,
    );
    add(
        r.contains(ThrottleReasons::HW_SLOWDOWN),
        Throttle::HwSlowdown,
    );
    add(
        r.contains(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN),
        Throttle::PowerBrake,
    );
    add(r.contains(ThrottleReasons::SYNC_BOOST), Throttle::SyncBoost);
    out
}

/// `Some(v)` on success; on failure, `None` and a note in `errors` (unsupported readings are
/// left out silently: many boards have no ECC or power reading).
fn reading<T>(errors: &mut Vec<String>, what: &str, r: Result<T, NvmlError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

impl HealthSource for NvmlHealth {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError> {
        let xids = self.drain_events();
        let mut out = Vec::new();
        for i in 0..self.count {
            let d = match self.nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    // A GPU that fell off the bus no longer answers; say so as XID 79.
                    let mut g = GpuHealth::new(i, GpuVendor::Nvidia, "NVIDIA GPU");
                    g.errors.push(format!("device_by_index: {e}"));
                    if matches!(e, NvmlError::GpuLost) {
                        g.xid_events.push(79);
                    }
                    out.push(g);
                    continue;
                }
            };
            let name = d.name().unwrap_or_else(|_| "NVIDIA GPU".into());
            let mut g = GpuHealth::new(i, GpuVendor::Nvidia, name);
            let e = &mut g.errors;
            g.uuid = reading(e, "uuid", d.uuid());
            if let Some(m) = reading(e, "memory_info", d.memory_info()) {
                g.memory_used_bytes = m.used;
                g.memory_total_bytes = m.total;
            }
            g.utilization_pct =
                reading(e, "utilization_rates", d.utilization_rates()).map(|u| f64::from(u.gpu));
            g.temperature_c =
                reading(e, "temperature", d.temperature(TemperatureSensor::Gpu)).map(f64::from);
            g.power_w = reading(e, "power_usage", d.power_usage()).map(|mw| f64::from(mw) / 1e3);
            g.power_limit_w = reading(e, "enforced_power_limit", d.enforced_power_limit())
                .map(|mw| f64::from(mw) / 1e3);
            g.throttle = reading(e, "throttle_reasons", d.current_throttle_reasons())
                .map(throttle_from_nvml)
                .unwrap_or_default();
            g.ecc_corrected = reading(
                e,
                "ecc_corrected",
                d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            );
            g.ecc_uncorrected = reading(
                e,
                "ecc_uncorrected",
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            );
            g.xid_events = xids
                .iter()
                .filter(|(gpu, _)| *gpu == i)
                .map(|(_, x)| *x)
                .collect();
            out.push(g);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_reasons_group_and_skip_idle() {
        let r = ThrottleReasons::GPU_IDLE
            | ThrottleReasons::SW_POWER_CAP
            | ThrottleReasons::SW_THERMAL_SLOWDOWN
            | ThrottleReasons::HW_THERMAL_SLOWDOWN;
        assert_eq!(
            throttle_from_nvml(r),
            vec![Throttle::PowerCap, Throttle::Thermal]
        );
        assert!(throttle_from_nvml(ThrottleReasons::GPU_IDLE).is_empty());
    }
}
