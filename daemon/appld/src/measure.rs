//! `appld --measure MODEL --json`: a few seconds of real llama.cpp decode steps on this machine,
//! printed as an `appl_firmware_profiles::calibration::Calibration`. `applctl check --measure`
//! runs it (applctl itself never links llama.cpp) and predicts decode speed from it.

use std::path::PathBuf;

use appl_engine::calibrate::{calibrate, CalibrationRun};
use appl_engine::{ChatTemplateSpec, EngineError, ModelSpec, QueuePolicy};
use appl_firmware_profiles::calibration::{Calibration, CalibrationPoint};
use appl_firmware_profiles::sizing::{engine_deployment, ModelSettings};

/// The engine shape to measure: the same settings as the model's `[[models]]` entry.
#[derive(Debug, Clone)]
pub struct MeasureArgs {
    pub model: PathBuf,
    /// 0 means the physical cores, as in the config.
    pub threads: u32,
    pub slots: u32,
    pub ctx_per_slot: u32,
    pub batch_tokens: u32,
}

/// Batch sizes to time: one stream, half the slots and all of them.
fn batches(slots: u32) -> Vec<u32> {
    let mut b = vec![1, slots / 2, slots];
    b.retain(|&x| x >= 1);
    b.dedup();
    b
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_default()
}

fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Loads the model and times decode steps.
pub fn run(a: &MeasureArgs) -> Result<Calibration, EngineError> {
    let threads = if a.threads == 0 {
        appl_engine::physical_cores()
    } else {
        a.threads
    };
    // The very context the engine creates for these settings.
    let deployment = engine_deployment(&ModelSettings {
        slots: a.slots.max(1),
        ctx_per_slot: a.ctx_per_slot,
        batch_tokens: a.batch_tokens,
    });
    let spec = ModelSpec {
        id: "measure".to_owned(),
        path: a.model.clone(),
        deployment,
        threads,
        gpu_layers: 0,
        chat_template: ChatTemplateSpec::Embedded,
        queue_capacity: 1,
        queue: QueuePolicy::default(),
        load_progress: Default::default(),
    };
    let load = load_avg();
    let run = CalibrationRun {
        batches: batches(spec.slots()),
        ..CalibrationRun::default()
    };
    let timings = calibrate(&spec, &run)?;
    Ok(Calibration {
        model: a
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model_bytes: std::fs::metadata(&a.model).map_or(0, |m| m.len()),
        threads,
        slots: spec.slots(),
        ctx_per_slot: spec.ctx_per_slot(),
        context: run.context,
        cpu: cpu_name(),
        load_avg_1m: load,
        points: timings
            .iter()
            .map(|t| CalibrationPoint {
                batch: t.batch,
                step_ms: t.step.as_secs_f64() * 1e3,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_cover_one_stream_half_and_all_slots() {
        assert_eq!(super::batches(8), [1, 4, 8]);
        assert_eq!(super::batches(1), [1]);
        assert_eq!(super::batches(2), [1, 2]);
        assert_eq!(super::batches(3), [1, 3]);
    }
}
