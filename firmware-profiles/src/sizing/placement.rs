//! What the placement of a model looks like: how many layers to offload, what each device holds
//! and needs, and the refusal when it does not fit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::gib;

/// How many layers to offload (`gpu_layers` in appld's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuLayers {
    /// Everything on the GPUs (or everything on the CPU when there are none); refuse otherwise.
    Auto,
    /// The last N layers on the GPUs, like llama.cpp's `n_gpu_layers`; more than the layer
    /// count also moves the output layer.
    N(u32),
}

impl FromStr for GpuLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<GpuLayers, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(GpuLayers::Auto);
        }
        s.parse()
            .map(GpuLayers::N)
            .map_err(|_| format!("gpu_layers must be \"auto\" or a number, got {s:?}"))
    }
}

/// A device in a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "index")]
pub enum DeviceRef {
    Gpu(u32),
    Cpu,
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Gpu(i) => write!(f, "GPU{i}"),
            DeviceRef::Cpu => f.write_str("host RAM"),
        }
    }
}

/// What one device holds and needs. Bytes throughout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicePlan {
    pub device: DeviceRef,
    pub name: String,
    /// Profile id used for this device, if any matched.
    pub profile: Option<String>,
    /// Layers `first..end` (empty when `first == end`).
    pub layers: (u32, u32),
    pub holds_output: bool,
    pub weights: u64,
    pub kv: u64,
    pub compute: u64,
    pub overhead: u64,
    pub reserve: u64,
    /// weights + kv + compute + overhead + reserve.
    pub need: u64,
    pub free: u64,
    /// Weights streamed from this device per decoded token.
    pub weights_read: u64,
    /// Bandwidth (GB/s) and efficiency for speed estimates; `None` for an unknown SKU.
    pub bandwidth_gbps: Option<f64>,
    pub efficiency: f64,
}

impl DevicePlan {
    pub fn fits(&self) -> bool {
        self.need <= self.free
    }
}

/// Where a model goes: pass `n_gpu_layers`, `tensor_split` and `main_gpu` to llama.cpp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// llama.cpp `n_gpu_layers` (layers + 1 when the output layer is offloaded too).
    pub n_gpu_layers: u32,
    /// Fraction of the offloaded layers per GPU, in inventory order (llama.cpp `tensor_split`).
    pub tensor_split: Vec<f32>,
    /// The GPU that runs the output layer.
    pub main_gpu: Option<u32>,
    pub devices: Vec<DevicePlan>,
    pub n_layer: u32,
    pub slots: u32,
}

impl Placement {
    /// True when every layer and the output run on GPUs.
    pub fn fully_offloaded(&self) -> bool {
        self.n_gpu_layers > self.n_layer
    }

    /// One line per device, e.g.
    /// `GPU0 NVIDIA GeForce RTX 4090: 32 layers + output, needs 10.0 GiB of 23.5 GiB free`.
    pub fn summary(&self) -> String {
        self.devices
            .iter()
            .map(|d| {
                let who = match d.device {
                    DeviceRef::Gpu(_) => format!("{} {}", d.device, d.name),
                    DeviceRef::Cpu => d.device.to_string(),
                };
                format!(
                    "{who}: {} layers{}, needs {} of {} free",
                    d.layers.1 - d.layers.0,
                    if d.holds_output { " + output" } else { "" },
                    gib(d.need),
                    gib(d.free)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A model that cannot be placed, with the numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct FitError {
    /// e.g. "needs 52.8 GiB, 23.6 GiB free on GPU0 (NVIDIA GeForce RTX 4090)".
    pub message: String,
    /// The devices as they would have been loaded, with their shortfalls.
    pub devices: Vec<DevicePlan>,
    /// The largest `gpu_layers` that would fit, when some partial offload fits.
    pub max_gpu_layers: Option<u32>,
}
