//! Hardware knowledge for appl. Pure Rust; never links llama.cpp.
//!
//! - [`profile`]: one TOML profile per GPU SKU (and one for CPU-only hosts), embedded in the
//!   binary, validated by tests; every number cites its source.
//! - [`probe`]: NVIDIA (NVML), AMD (sysfs) and CPU/RAM (`/proc`) probes behind [`probe::GpuProbe`].
//! - [`health`]: live GPU and host health ([`health::HealthSource`]), and what is a fault.
//! - [`inventory`]: the probed machine as a serializable [`inventory::Inventory`].
//! - [`gguf`]: a defensive GGUF metadata reader ([`gguf::GgufInfo`]).
//! - [`sizing`]: memory estimate, placement across devices, decode speed.
//! - [`calibration`]: decode speed from step times measured on the machine (`appld --measure`).
//! - [`check`]: the rules behind `applctl check`, as a [`check::CheckReport`].
//! - [`cpu_variant`]: which llama.cpp CPU backend variant this CPU and kernel can run.
//! - [`plan`]: the cost question behind `applctl plan`.
//! - [`units`]: bytes as MiB and GiB, for people and for logs.
//!
//! # Using the sizing rules at model load
//!
//! ```no_run
//! use appl_firmware_profiles::{gguf::GgufInfo, probe, sizing};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let info = GgufInfo::from_path("model.gguf".as_ref())?;
//! // The context shape the engine passes to llama.cpp for this model's settings in appld.toml:
//! let dep = sizing::engine_deployment(&sizing::ModelSettings {
//!     slots: 8,
//!     ctx_per_slot: 2048,
//!     batch_tokens: 512,
//! });
//! let est = sizing::estimate(&info, &dep);
//! // est.weights / est.kv / est.compute compare with llama.cpp's "model buffer",
//! // "KV buffer" and "compute buffer size" log lines.
//! let inv = probe::probe_system()?;
//! match sizing::fit(&est, &inv, sizing::GpuLayers::Auto) {
//!     Ok(placement) => {
//!         // llama.cpp: n_gpu_layers = placement.n_gpu_layers,
//!         // tensor_split = placement.tensor_split, main_gpu = placement.main_gpu
//!         println!("{}", placement.summary());
//!     }
//!     // e.g. "needs 52.8 GiB, 23.6 GiB free on GPU0 (NVIDIA GeForce RTX 4090); ..."
//!     Err(refusal) => return Err(refusal.message.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! The memory model: weights are the sum of the tensor table; KV is, per layer,
//! `streams × cells × kv_heads × (key_len + value_len) × bytes(kv_type)` with llama.cpp's
//! padding and its smaller sliding-window cache; the compute buffer is dominated by the
//! `n_ubatch × n_vocab × f32` logits of the worst-case reserve graph; [`sizing::fit`] adds each
//! device's runtime overhead and reserve from its profile.

// Unsafe code only where the OS offers no safe call: `cpu_variant::os` (two, each with its
// SAFETY comment).
#![deny(unsafe_code)]

pub mod calibration;
pub mod check;
pub mod cpu_variant;
pub mod gguf;
pub mod health;
pub mod inventory;
pub mod plan;
pub mod probe;
pub mod profile;
pub mod sizing;
pub mod units;
