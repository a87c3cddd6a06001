//! How a model is run: the llama.cpp context parameters that change its memory
//! ([`Deployment`]), and [`engine_deployment`], the one place that derives them from appld's
//! model settings.

use serde::{Deserialize, Serialize};

use super::KvType;

/// How a model is to be run: the llama.cpp context parameters that change its memory.
///
/// For a model that appld serves, build it with [`engine_deployment`]: the sizing rules and the
/// engine then read the same values, so a prediction and the real allocation cannot disagree.
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
    /// KV cache type for both K and V (`type_k`, `type_v`).
    pub kv_type: KvType,
    /// Flash attention on (`flash_attn_type` ENABLED when true, DISABLED when false). With it
    /// the attention scratch is small and masks are f16.
    ///
    /// llama.cpp's default is AUTO (`llama_context_default_params`, llama-cpp-sys-2 0.1.161).
    /// AUTO starts enabled and, when the context reserves its worst-case graph
    /// (`llama_context::resolve_fused_ops`), turns it off only if a layer's flash-attention op
    /// would run on another device than the layer (missing support on that backend). On a CPU
    /// build every layer and the op run on the CPU backend, so AUTO resolves to enabled
    /// ("Flash Attention enabled" in the llama.cpp log). Pass this value explicitly rather than
    /// AUTO, so a GPU backend without support cannot turn it off behind the sizing rules' back.
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
    /// The total context llama.cpp is given: `n_ctx = ctx_per_slot × slots` (saturating;
    /// appld's config keeps it at most 16M tokens).
    pub fn n_ctx(&self) -> u32 {
        self.ctx_per_slot.saturating_mul(self.slots.max(1))
    }
}

/// The settings of one model in appld's config that shape its llama.cpp context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSettings {
    /// Sequence slots: requests generating at once (`slots`).
    pub slots: u32,
    /// Context per slot, in tokens (`ctx_per_slot`).
    pub ctx_per_slot: u32,
    /// Token budget of one engine step: a token per decoding slot plus prefill chunks
    /// (`batch_tokens`).
    pub batch_tokens: u32,
}

/// The largest micro-batch the engine asks for: llama.cpp's default `n_ubatch`.
pub const MAX_UBATCH: u32 = 512;

/// What the engine passes to llama.cpp for a model with these settings: the whole context
/// shape, and the deployment the sizing rules size the model for.
///
/// - `n_ctx` ([`Deployment::n_ctx`]) = `slots × ctx_per_slot`, `n_seq_max` = `slots`;
/// - `n_batch` = `max(batch_tokens, slots)`, so every slot can decode in each step;
/// - `n_ubatch` = `min(n_batch, 512)`;
/// - KV cache f16, flash attention on;
/// - `swa_full`: full-size sliding-window caches, so a finished slot's prefix can be reused
///   and a paused sequence's state saved whole;
/// - one KV stream per slot (`kv_unified` off), as llama-server runs: each sequence's attention
///   reads only its own cells. In one unified pool, ggml's CPU flash attention scans the mask of
///   every cell in use for every query row, and at 8–16 streams of 1k-token prompts that scan
///   cost 3–26% of the throughput (bench/RESULTS.md). Prefix reuse copies a stream instead of
///   sharing cells.
pub fn engine_deployment(settings: &ModelSettings) -> Deployment {
    let n_batch = settings.batch_tokens.max(settings.slots);
    Deployment {
        ctx_per_slot: settings.ctx_per_slot,
        slots: settings.slots,
        n_batch,
        n_ubatch: n_batch.min(MAX_UBATCH),
        kv_type: KvType::F16,
        flash_attn: true,
        swa_full: true,
        kv_unified: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_deployment_is_the_whole_context_shape() {
        // (slots, ctx_per_slot, batch_tokens) → (n_ctx, n_batch, n_ubatch)
        let cases = [
            ((1, 2048, 512), (2048, 512, 512)),
            ((4, 4096, 2048), (16_384, 2048, 512)),
            // A budget below the slot count still lets every slot decode.
            ((8, 1024, 4), (8192, 8, 8)),
            ((256, 65_536, 256), (16_777_216, 256, 256)),
            ((2, 16, 300), (32, 300, 300)),
        ];
        for ((slots, ctx_per_slot, batch_tokens), (n_ctx, n_batch, n_ubatch)) in cases {
            let s = ModelSettings {
                slots,
                ctx_per_slot,
                batch_tokens,
            };
            let d = engine_deployment(&s);
            let want = Deployment {
                ctx_per_slot,
                slots,
                n_batch,
                n_ubatch,
                kv_type: KvType::F16,
                flash_attn: true,
                swa_full: true,
                kv_unified: false,
            };
            assert_eq!(d, want, "{s:?}");
            assert_eq!(d.n_ctx(), n_ctx, "{s:?}");
        }
    }

    #[test]
    fn n_ctx_saturates_and_counts_at_least_one_slot() {
        let d = |ctx_per_slot, slots| Deployment {
            ctx_per_slot,
            slots,
            ..Deployment::default()
        };
        assert_eq!(d(4096, 0).n_ctx(), 4096);
        assert_eq!(d(u32::MAX, 2).n_ctx(), u32::MAX);
    }
}
