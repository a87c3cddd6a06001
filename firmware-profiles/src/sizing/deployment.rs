//! How a model is run: the llama.cpp context parameters that change its memory
//! ([`Deployment`]).

use serde::{Deserialize, Serialize};

use super::KvType;

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
