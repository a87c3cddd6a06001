//! The sizing rules: how much memory a deployment needs, where its layers go, and how fast it
//! decodes.
//!
//! ```text
//! need per device = weights (tensor table) + KV cache + compute buffer
//!                 + runtime overhead (profile) + reserve (profile)
//! ```
//!
//! The KV and compute-buffer models follow llama.cpp as vendored by `llama-cpp-sys-2` 0.1.161:
//! context padding to 256 cells, one KV stream per slot unless `kv_unified`, a separate smaller
//! cache for sliding-window layers (`llama-kv-cache-iswa.cpp`) unless `swa_full`, and a compute
//! buffer reserved for a worst-case micro-batch in which every token produces logits
//! (`llama_context` reserve: `n_outputs = min(n_ubatch, n_outputs_max)`), so the logits tensor
//! `n_ubatch × n_vocab × f32` usually dominates it.
//!
//! - `deployment`: how a model is run ([`Deployment`]), and [`engine_deployment`], the one
//!   place that turns appld's model settings into what the engine passes to llama.cpp.
//! - `kv_type`: the KV cache element type ([`KvType`]).
//! - `estimate`: the memory a deployment needs ([`estimate`]).
//! - `placement`: what a placement looks like ([`Placement`], [`FitError`]).
//! - `fit`: placing an estimate on a machine ([`fit`], [`fit_with`]).
//! - `speed`: decode speed of a placement ([`decode_speed`]).

mod deployment;
mod estimate;
mod fit;
mod kv_type;
mod placement;
mod speed;

pub use deployment::{engine_deployment, Deployment, ModelSettings, MAX_UBATCH};
pub use estimate::{estimate, LayerCost, MemoryEstimate};
pub use fit::{fit, fit_with};
pub use kv_type::{KvType, UnknownKvType};
pub use placement::{DevicePlan, DeviceRef, FitError, GpuLayers, Placement};
pub use speed::{decode_speed, weights_pass_secs, SpeedEstimate};
