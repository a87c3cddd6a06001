//! Decode speed: tokens per second a placement can stream, from each device's bandwidth.

use serde::{Deserialize, Serialize};

use super::{MemoryEstimate, Placement};

/// Decode-speed estimate: each decode step streams every offloaded weight once plus each busy
/// slot's KV cache, so `tok/s ≈ efficiency × bandwidth ÷ bytes read per step`. Devices of a
/// layer split run one after another, so their step times add up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedEstimate {
    /// One request alone, context full.
    pub single_stream_tps: f64,
    /// All slots decoding at once, context full: per stream and in total.
    pub per_stream_tps_full: f64,
    pub aggregate_tps_full: f64,
    /// Step time with all slots busy, milliseconds.
    pub step_ms_full: f64,
    /// Bytes read for one token of one stream.
    pub bytes_per_token: u64,
    /// The efficiency factor applied (weighted by bytes when devices differ).
    pub efficiency: f64,
}

/// Estimates decode speed for a placement; `None` when a device's bandwidth is unknown.
pub fn decode_speed(est: &MemoryEstimate, placement: &Placement) -> Option<SpeedEstimate> {
    let slots = f64::from(est.slots.max(1));
    let step = |busy: f64| -> Option<(f64, f64)> {
        let mut secs = 0.0;
        let mut bound_secs = 0.0;
        for d in &placement.devices {
            // KV is read in full for each busy slot (context full: worst case).
            let kv_per_slot = d.kv as f64 / slots;
            let bytes = d.weights_read as f64 + busy * kv_per_slot;
            if bytes == 0.0 {
                continue;
            }
            let bw = d.bandwidth_gbps? * 1e9;
            bound_secs += bytes / bw;
            secs += bytes / (bw * d.efficiency);
        }
        Some((secs, bound_secs))
    };
    let (one, one_bound) = step(1.0)?;
    let (full, _) = step(slots)?;
    if one <= 0.0 || full <= 0.0 {
        return None;
    }
    let kv_per_slot = est.kv as f64 / slots;
    Some(SpeedEstimate {
        single_stream_tps: 1.0 / one,
        per_stream_tps_full: 1.0 / full,
        aggregate_tps_full: slots / full,
        step_ms_full: full * 1000.0,
        bytes_per_token: (est.weights_read_per_token as f64 + kv_per_slot) as u64,
        efficiency: one_bound / one,
    })
}

/// Seconds to stream every offloaded weight once (one prefill chunk can go no faster);
/// `None` when a device's bandwidth is unknown.
pub fn weights_pass_secs(placement: &Placement) -> Option<f64> {
    placement
        .devices
        .iter()
        .filter(|d| d.weights_read > 0)
        .map(|d| Some(d.weights_read as f64 / (d.bandwidth_gbps? * 1e9 * d.efficiency)))
        .sum()
}
