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

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::gguf::{GgmlType, GgufInfo};
use crate::inventory::{GpuInfo, Inventory};
use crate::profile::{Profile, ProfileSet};
use crate::units::{gib, MIB};

/// llama.cpp pads the context and the SWA cache to this many cells (`llama-context.cpp`,
/// `llama-kv-cache-iswa.cpp`).
const CTX_PAD: u64 = 256;

/// KV cache element type (llama.cpp `--cache-type-k/-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Iq4Nl,
    Q5_0,
    Q5_1,
}

impl KvType {
    /// The ggml type that stores it.
    pub fn ggml(self) -> GgmlType {
        GgmlType(match self {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Bf16 => 30,
            KvType::Q8_0 => 8,
            KvType::Q4_0 => 2,
            KvType::Q4_1 => 3,
            KvType::Iq4Nl => 20,
            KvType::Q5_0 => 6,
            KvType::Q5_1 => 7,
        })
    }

    /// Bytes for a row of `n` elements, rounding up to whole blocks.
    pub fn row_bytes(self, n: u64) -> u64 {
        // Every KvType maps to a ggml type with known traits.
        let (_, block, size) = self.ggml().traits().unwrap_or(("F16", 1, 2));
        n.div_ceil(block) * size
    }

    /// Average bytes per element (f16 2, q8_0 1.0625, q4_0 0.5625).
    pub fn bytes_per_element(self) -> f64 {
        let (_, block, size) = self.ggml().traits().unwrap_or(("F16", 1, 2));
        size as f64 / block as f64
    }

    pub const ALL: [KvType; 9] = [
        KvType::F32,
        KvType::F16,
        KvType::Bf16,
        KvType::Q8_0,
        KvType::Q4_0,
        KvType::Q4_1,
        KvType::Iq4Nl,
        KvType::Q5_0,
        KvType::Q5_1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Q4_1 => "q4_1",
            KvType::Iq4Nl => "iq4_nl",
            KvType::Q5_0 => "q5_0",
            KvType::Q5_1 => "q5_1",
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown KV cache type name.
#[derive(Debug, thiserror::Error)]
#[error("unknown KV cache type {0:?} (expected one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")]
pub struct UnknownKvType(pub String);

impl FromStr for KvType {
    type Err = UnknownKvType;
    fn from_str(s: &str) -> Result<KvType, UnknownKvType> {
        let lower = s.to_ascii_lowercase();
        KvType::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or(UnknownKvType(s.to_string()))
    }
}

impl From<KvType> for String {
    fn from(k: KvType) -> String {
        k.name().to_string()
    }
}

impl TryFrom<String> for KvType {
    type Error = UnknownKvType;
    fn try_from(s: String) -> Result<KvType, UnknownKvType> {
        s.parse()
    }
}

/// How a model is to be run: the llama.cpp context parameters that change its memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Context per slot (per concurrent request), in tokens.
    pub ctx_per_slot: u32,
    /// Concurrent sequences (llama.cpp `n_seq_max`, llama-server `-np`).
    pub slots: u32,
    /// Logical batch (`n_batch`).
    pub n_batch: u32,
    /// Micro-batch (`n_ubatch`).
    pub n_ubatch: u32,
    /// KV cache type for both K and V.
    pub kv_type: KvType,
    /// Flash attention on. With it the attention scratch is small and masks are f16.
    pub flash_attn: bool,
    /// Full-size SWA cache (`swa_full`). `llama_context_default_params` sets `true`;
    /// llama-server sets `false`. Pass what the engine passes.
    pub swa_full: bool,
    /// One KV stream shared by all slots (`kv_unified`); default `false` gives one per slot.
    pub kv_unified: bool,
}

impl Default for Deployment {
    /// llama.cpp's library defaults (`llama_context_default_params`) with 4096 tokens × 1 slot.
    fn default() -> Deployment {
        Deployment {
            ctx_per_slot: 4096,
            slots: 1,
            n_batch: 2048,
            n_ubatch: 512,
            kv_type: KvType::F16,
            flash_attn: true,
            swa_full: true,
            kv_unified: false,
        }
    }
}

impl Deployment {
    /// The total context llama.cpp should be given (`n_ctx = ctx_per_slot × slots`).
    pub fn n_ctx_total(&self) -> u64 {
        u64::from(self.ctx_per_slot) * u64::from(self.slots.max(1))
    }
}

/// Weights and KV of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCost {
    pub weights: u64,
    pub kv: u64,
}

/// The memory a deployment needs, before it is placed on devices. All values are bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// All tensors in the file (llama.cpp's "model buffer" when nothing is offloaded).
    pub weights: u64,
    /// KV cache, all layers, all slots (llama.cpp's "KV buffer", base + SWA).
    pub kv: u64,
    /// Compute buffer on the device that runs the output layer ("compute buffer size").
    pub compute: u64,
    /// Compute buffer on any other device that runs layers (no logits).
    pub compute_other: u64,
    /// Host output buffer for logits (`n_vocab × f32 × slots`, "output buffer size").
    pub output_buffer: u64,
    /// weights + kv + compute + output_buffer: what one device would need, before the
    /// per-device runtime overhead and reserve that [`fit`] adds.
    pub total: u64,
    /// Per layer `blk.N`.
    pub layers: Vec<LayerCost>,
    /// `token_embd`: stays in host memory when layers are offloaded.
    pub input_weights: u64,
    /// Output head and norms, on the output device; the embedding again when it is tied.
    pub output_weights: u64,
    /// No `output.weight`: the output head reuses `token_embd`.
    pub tied_embeddings: bool,
    /// Weights streamed for each decoded token (everything but the embedding lookup).
    pub weights_read_per_token: u64,
    /// Effective total context after llama.cpp's padding.
    pub n_ctx: u64,
    /// KV cells per stream of the global (non-SWA) cache.
    pub kv_cells_base: u64,
    /// KV cells per stream of the SWA cache (0 without SWA).
    pub kv_cells_swa: u64,
    /// KV streams (slots, or 1 when unified).
    pub kv_streams: u64,
    pub slots: u32,
    pub n_layer: u32,
}

fn pad(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Estimates the memory of `info` deployed as `dep`. Pure arithmetic on the GGUF header.
pub fn estimate(info: &GgufInfo, dep: &Deployment) -> MemoryEstimate {
    let slots = u64::from(dep.slots.max(1));
    let n_layer = info.n_layer;

    // Context: llama_context pads n_ctx to 256; without kv_unified each slot gets its own
    // stream of n_ctx_seq = pad(n_ctx / slots, 256) cells.
    let n_ctx_req = pad(u64::from(dep.ctx_per_slot.max(1)) * slots, CTX_PAD);
    let (streams, base_cells) = if dep.kv_unified {
        (1, n_ctx_req)
    } else {
        (slots, pad(n_ctx_req / slots, CTX_PAD))
    };
    let n_ctx = base_cells * streams;
    let n_batch = u64::from(dep.n_batch.max(1)).min(n_ctx);
    let n_ubatch = u64::from(dep.n_ubatch.max(1)).min(n_batch);

    let swa_cells = match info.sliding_window {
        Some(w) if info.has_swa() => {
            if dep.swa_full {
                base_cells
            } else {
                let per = if dep.kv_unified { slots } else { 1 };
                pad(base_cells.min(u64::from(w) * per + n_ubatch), CTX_PAD)
            }
        }
        _ => 0,
    };

    let layers: Vec<LayerCost> = (0..n_layer)
        .map(|il| {
            let i = il as usize;
            let kv_heads = u64::from(info.n_head_kv.get(i).copied().unwrap_or(0));
            let cells = if info.swa_layers.get(i).copied().unwrap_or(false) {
                swa_cells
            } else {
                base_cells
            };
            let row = dep.kv_type.row_bytes(kv_heads * u64::from(info.head_dim_k))
                + dep.kv_type.row_bytes(kv_heads * u64::from(info.head_dim_v));
            LayerCost {
                weights: info.layer_bytes(il),
                kv: streams * cells * row,
            }
        })
        .collect();
    let kv: u64 = layers.iter().map(|l| l.kv).sum();
    let weights = info.weights_bytes();

    let input_weights = info.tensor_bytes("token_embd.weight").unwrap_or(0);
    let layer_weights: u64 = layers.iter().map(|l| l.weights).sum();
    let other = weights.saturating_sub(layer_weights + input_weights);
    let tied = info.tensor_bytes("output.weight").is_none();
    let output_weights = other + if tied { input_weights } else { 0 };
    let weights_read_per_token = layer_weights + output_weights;

    // Compute buffer: the reserve graph runs n_ubatch tokens, all of them outputs.
    let f32b = 4u64;
    let n_tokens = n_ubatch;
    let n_head = u64::from(info.n_head);
    let hd_k = u64::from(info.head_dim_k);
    let hd_v = u64::from(info.head_dim_v);
    let kv_heads_max = u64::from(info.n_head_kv.iter().copied().max().unwrap_or(0));
    let logits = n_tokens * info.n_vocab * f32b;
    let hidden = n_tokens * info.n_embd * f32b;
    let ffn = 2 * n_tokens * info.n_ff * f32b;
    let qkv = n_tokens * (n_head * hd_k + kv_heads_max * (hd_k + hd_v)) * f32b;
    let attn = if dep.flash_attn {
        2 * n_tokens * n_head * hd_v * f32b
    } else {
        // KQ and its softmax, per stream: cells × tokens-of-that-stream × heads.
        2 * base_cells * n_tokens * n_head * f32b
    };
    let mask_elem = if dep.flash_attn { 2 } else { f32b };
    let masks = (base_cells + swa_cells) * n_tokens * mask_elem;
    let layer_peak = (attn + qkv).max(ffn) + 2 * hidden;
    let output_peak = logits + 2 * hidden;
    let compute = layer_peak.max(output_peak) + masks;
    let compute_other = layer_peak + masks;
    let output_buffer = info.n_vocab * f32b * slots;

    MemoryEstimate {
        weights,
        kv,
        compute,
        compute_other,
        output_buffer,
        total: weights + kv + compute + output_buffer,
        layers,
        input_weights,
        output_weights,
        tied_embeddings: tied,
        weights_read_per_token,
        n_ctx,
        kv_cells_base: base_cells,
        kv_cells_swa: swa_cells,
        kv_streams: streams,
        slots: dep.slots.max(1),
        n_layer,
    }
}

// ---------------------------------------------------------------------------------------------
// Placement

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

/// Planning factors for one device.
#[derive(Debug, Clone)]
struct DeviceSpec {
    device: DeviceRef,
    name: String,
    profile: Option<String>,
    free: u64,
    overhead: u64,
    reserve: u64,
    bandwidth_gbps: Option<f64>,
    efficiency: f64,
}

/// Defaults for a GPU without a profile: Ollama's 457 MiB overhead, llama.cpp `--fit`'s
/// 1024 MiB reserve (sizing-facts.md), the low end of the 0.5–0.7 efficiency band.
const UNKNOWN_GPU_OVERHEAD: u64 = 457 * MIB;
const UNKNOWN_RESERVE: u64 = 1024 * MIB;
const UNKNOWN_EFFICIENCY: f64 = 0.5;

fn gpu_spec(gpu: &GpuInfo, profile: Option<&Profile>) -> DeviceSpec {
    DeviceSpec {
        device: DeviceRef::Gpu(gpu.index),
        name: gpu.name.clone(),
        profile: profile.map(|p| p.id.clone()),
        free: gpu.vram_free_bytes,
        overhead: profile.map_or(UNKNOWN_GPU_OVERHEAD, |p| {
            p.tuning.runtime_overhead_mib * MIB
        }),
        reserve: profile.map_or(UNKNOWN_RESERVE, |p| p.tuning.reserve_mib * MIB),
        bandwidth_gbps: profile.map(|p| p.bandwidth_gbps),
        efficiency: profile.map_or(UNKNOWN_EFFICIENCY, |p| p.tuning.decode_efficiency),
    }
}

fn cpu_spec(inv: &Inventory, profile: Option<&Profile>) -> DeviceSpec {
    DeviceSpec {
        device: DeviceRef::Cpu,
        name: inv.cpu.model.clone(),
        profile: profile.map(|p| p.id.clone()),
        free: inv.memory.available_bytes,
        overhead: profile.map_or(0, |p| p.tuning.runtime_overhead_mib * MIB),
        reserve: profile.map_or(UNKNOWN_RESERVE, |p| p.tuning.reserve_mib * MIB),
        bandwidth_gbps: inv
            .cpu
            .mem_bandwidth_gbps
            .or(profile.map(|p| p.bandwidth_gbps)),
        efficiency: profile.map_or(UNKNOWN_EFFICIENCY, |p| p.tuning.decode_efficiency),
    }
}

fn embedded_profiles() -> Option<&'static ProfileSet> {
    static SET: OnceLock<Option<ProfileSet>> = OnceLock::new();
    SET.get_or_init(|| match ProfileSet::embedded() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(target: "sizing", error = %e, "embedded profiles are invalid");
            None
        }
    })
    .as_ref()
}

/// Places `est` on the machine in `inv`, using the embedded SKU profiles. See [`fit_with`].
pub fn fit(
    est: &MemoryEstimate,
    inv: &Inventory,
    gpu_layers: GpuLayers,
) -> Result<Placement, FitError> {
    let empty = ProfileSet { profiles: vec![] };
    fit_with(est, inv, embedded_profiles().unwrap_or(&empty), gpu_layers)
}

/// Places `est` on the machine in `inv`.
///
/// - `Auto` with GPUs: every layer and the output on the GPUs, split by free memory (falling
///   back to filling GPUs in order); if that does not fit, a [`FitError`] with the numbers and
///   the largest `gpu_layers` that would. `Auto` without GPUs: everything in host RAM.
/// - `N(n)`: the last `n` layers on the GPUs (all of them plus the output when
///   `n > n_layer`), the rest in host RAM; both sides must fit.
pub fn fit_with(
    est: &MemoryEstimate,
    inv: &Inventory,
    profiles: &ProfileSet,
    gpu_layers: GpuLayers,
) -> Result<Placement, FitError> {
    let gpus: Vec<DeviceSpec> = inv
        .gpus
        .iter()
        .map(|g| gpu_spec(g, profiles.for_gpu(g)))
        .collect();
    let cpu = cpu_spec(inv, profiles.cpu());
    let n_layer = est.n_layer;
    let n = match gpu_layers {
        GpuLayers::Auto if gpus.is_empty() => 0,
        GpuLayers::Auto => n_layer + 1,
        GpuLayers::N(_) if gpus.is_empty() => 0,
        GpuLayers::N(n) => n.min(n_layer + 1),
    };
    let plan = place(est, &gpus, &cpu, n);
    if plan.devices.iter().all(DevicePlan::fits) {
        return Ok(plan);
    }
    let max_gpu_layers = if gpus.is_empty() {
        None
    } else {
        (0..n).rev().find(|&k| {
            place(est, &gpus, &cpu, k)
                .devices
                .iter()
                .all(DevicePlan::fits)
        })
    };
    let short: Vec<String> = plan
        .devices
        .iter()
        .filter(|d| !d.fits())
        .map(|d| {
            format!(
                "needs {}, {} free on {} ({})",
                gib(d.need),
                gib(d.free),
                d.device,
                d.name
            )
        })
        .collect();
    let mut message = short.join("; ");
    if plan
        .devices
        .iter()
        .filter(|d| matches!(d.device, DeviceRef::Gpu(_)))
        .count()
        > 1
    {
        let need: u64 = plan.devices.iter().map(|d| d.need).sum();
        let free: u64 = plan.devices.iter().map(|d| d.free).sum();
        message.push_str(&format!(
            " (all devices: needs {}, {} free)",
            gib(need),
            gib(free)
        ));
    }
    match max_gpu_layers {
        Some(k) if k > 0 => message.push_str(&format!(
            "; gpu_layers = {k} would fit (partial offload, slower), or use a smaller context, fewer slots or a q8_0 KV cache"
        )),
        _ => message.push_str("; use a smaller context, fewer slots, a q8_0 KV cache or a smaller quantization"),
    }
    Err(FitError {
        message,
        devices: plan.devices,
        max_gpu_layers,
    })
}

/// Builds the plan for `n` offloaded layers (llama.cpp semantics) without judging it.
fn place(est: &MemoryEstimate, gpus: &[DeviceSpec], cpu: &DeviceSpec, n: u32) -> Placement {
    let n_layer = est.n_layer;
    let n = if gpus.is_empty() {
        0
    } else {
        n.min(n_layer + 1)
    };
    let on_gpu = n.min(n_layer);
    let gpu_start = n_layer - on_gpu;
    let output_on_gpu = n > n_layer;

    let split = split_layers(est, gpus, gpu_start, output_on_gpu);
    let mut devices = Vec::new();
    let mut tensor_split = vec![0f32; gpus.len()];
    let mut main_gpu = None;
    let mut first = gpu_start;
    let last_used = split.iter().rposition(|&c| c > 0);
    for (g, (spec, &count)) in gpus.iter().zip(&split).enumerate() {
        let layers = (first, first + count);
        first += count;
        let holds_output = output_on_gpu && Some(g) == last_used;
        if count == 0 && !holds_output {
            continue;
        }
        if on_gpu > 0 {
            tensor_split[g] = count as f32 / on_gpu as f32;
        }
        if holds_output {
            main_gpu = match spec.device {
                DeviceRef::Gpu(i) => Some(i),
                DeviceRef::Cpu => None,
            };
        }
        devices.push(device_plan(est, spec, layers, holds_output, false));
    }
    devices.push(device_plan(est, cpu, (0, gpu_start), !output_on_gpu, true));
    Placement {
        n_gpu_layers: n,
        tensor_split,
        main_gpu,
        devices,
        n_layer,
        slots: est.slots,
    }
}

fn device_plan(
    est: &MemoryEstimate,
    spec: &DeviceSpec,
    layers: (u32, u32),
    holds_output: bool,
    is_host: bool,
) -> DevicePlan {
    let range = layers.0 as usize..layers.1 as usize;
    let layer_w: u64 = est.layers[range.clone()].iter().map(|l| l.weights).sum();
    let kv: u64 = est.layers[range].iter().map(|l| l.kv).sum();
    let has_layers = layers.1 > layers.0;
    let out_w = if holds_output { est.output_weights } else { 0 };
    // The host always keeps the token embedding (llama.cpp's input layer); when the output is
    // on the host and tied to the embedding, that one copy serves both.
    let host_w = match (is_host, holds_output && est.tied_embeddings) {
        (true, true) => est.output_weights,
        (true, false) => est.input_weights + out_w,
        (false, _) => out_w,
    };
    let weights = layer_w + host_w;
    let compute = if holds_output {
        est.compute
    } else if has_layers {
        est.compute_other
    } else {
        0
    } + if is_host { est.output_buffer } else { 0 };
    // A GPU's runtime context exists whenever it is used; the host reserve always applies.
    let used = has_layers || holds_output || is_host;
    let overhead = if used { spec.overhead } else { 0 };
    let reserve = if used { spec.reserve } else { 0 };
    DevicePlan {
        device: spec.device,
        name: spec.name.clone(),
        profile: spec.profile.clone(),
        layers,
        holds_output,
        weights,
        kv,
        compute,
        overhead,
        reserve,
        need: weights + kv + compute + overhead + reserve,
        free: spec.free,
        weights_read: layer_w + out_w,
        bandwidth_gbps: spec.bandwidth_gbps,
        efficiency: spec.efficiency,
    }
}

/// Splits layers `start..n_layer` over the GPUs: first in proportion to each GPU's free memory
/// after its fixed costs (as llama.cpp's default split is proportional to free memory); if some
/// GPU would then overflow, by filling GPUs in order instead.
fn split_layers(
    est: &MemoryEstimate,
    gpus: &[DeviceSpec],
    start: u32,
    output_on_gpu: bool,
) -> Vec<u32> {
    let g = gpus.len();
    if g == 0 {
        return vec![];
    }
    let count = est.n_layer - start;
    let layer_cost = |il: u32| {
        let l = est.layers[il as usize];
        l.weights + l.kv
    };
    let fixed = |i: usize| {
        let s = &gpus[i];
        let out = if output_on_gpu && i == g - 1 {
            est.output_weights + est.compute - est.compute_other
        } else {
            0
        };
        s.overhead + s.reserve + est.compute_other + out
    };
    let cap = |i: usize| gpus[i].free.saturating_sub(fixed(i));

    // Proportional split by capacity.
    let caps: Vec<u64> = (0..g).map(cap).collect();
    let total_cap: u128 = caps.iter().map(|&c| u128::from(c)).sum();
    let mut prop = vec![0u32; g];
    let mut assigned = 0u32;
    let mut acc = 0u128;
    for (i, slot) in prop.iter_mut().enumerate() {
        acc += u128::from(caps[i]);
        // Cumulative share of the layers up to this GPU; with no capacity anywhere, all go to
        // the last GPU (and the fit check reports it).
        let upto = match (acc * u128::from(count)).checked_div(total_cap) {
            Some(v) => u32::try_from(v).unwrap_or(count),
            None if i == g - 1 => count,
            None => 0,
        };
        *slot = upto - assigned;
        assigned = upto;
    }
    let fits = |split: &[u32]| {
        let mut il = start;
        split.iter().enumerate().all(|(i, &c)| {
            let used: u64 = (il..il + c).map(layer_cost).sum();
            il += c;
            used <= caps[i]
        })
    };
    if fits(&prop) {
        return prop;
    }
    // Fill in order; whatever is left goes to the last GPU (and will not fit).
    let mut fill = vec![0u32; g];
    let mut il = start;
    for i in 0..g {
        let mut used = 0u64;
        while il < est.n_layer && (i == g - 1 || used + layer_cost(il) <= caps[i]) {
            used += layer_cost(il);
            fill[i] += 1;
            il += 1;
        }
    }
    fill
}

// ---------------------------------------------------------------------------------------------
// Speed

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
