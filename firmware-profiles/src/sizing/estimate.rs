//! The memory estimate: weights, KV cache, compute and output buffers of a model deployed a
//! given way, before it is placed on devices.

use serde::{Deserialize, Serialize};

use super::Deployment;
use crate::gguf::GgufInfo;

/// llama.cpp pads the context and the SWA cache to this many cells (`llama-context.cpp`,
/// `llama-kv-cache-iswa.cpp`).
const CTX_PAD: u64 = 256;

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
    /// per-device runtime overhead and reserve that [`fit`](super::fit) adds.
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
