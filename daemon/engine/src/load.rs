//! Loading: the model, its chat template and the llama.cpp context parameters of a deployment.
//! (A request's sampler is `sampler.rs`.)

use std::num::NonZeroU32;

use appl_firmware_profiles::sizing::{Deployment, KvType};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};

use crate::{ChatTemplateSpec, EngineError, ModelSpec};

pub(crate) fn load_model(
    backend: &LlamaBackend,
    spec: &ModelSpec,
) -> Result<LlamaModel, EngineError> {
    let progress = spec.load_progress.clone();
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(spec.gpu_layers)
        .with_progress_callback(move |p| progress.report(p));
    LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|_| {
        if spec.load_progress.is_aborted() {
            EngineError::LoadAborted {
                path: spec.path.clone(),
            }
        } else {
            EngineError::ModelLoad {
                path: spec.path.clone(),
            }
        }
    })
}

pub(crate) fn load_template(
    model: &LlamaModel,
    spec: &ChatTemplateSpec,
) -> Result<Option<LlamaChatTemplate>, EngineError> {
    let bad = |e: &dyn std::fmt::Display| EngineError::ChatTemplate(e.to_string());
    match spec {
        ChatTemplateSpec::Embedded => Ok(model.chat_template(None).ok()),
        ChatTemplateSpec::Named(name) => {
            LlamaChatTemplate::new(name).map(Some).map_err(|e| bad(&e))
        }
        ChatTemplateSpec::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                EngineError::ChatTemplate(format!("cannot read {}: {e}", path.display()))
            })?;
            LlamaChatTemplate::new(&text).map(Some).map_err(|e| bad(&e))
        }
    }
}

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_ENABLED` and `_DISABLED` (`enum llama_flash_attn_type`).
const FLASH_ATTN_ENABLED: i32 = 1;
const FLASH_ATTN_DISABLED: i32 = 0;

fn kv_cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F32 => KvCacheType::F32,
        KvType::F16 => KvCacheType::F16,
        KvType::Bf16 => KvCacheType::BF16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
        KvType::Q4_1 => KvCacheType::Q4_1,
        KvType::Iq4Nl => KvCacheType::IQ4_NL,
        KvType::Q5_0 => KvCacheType::Q5_0,
        KvType::Q5_1 => KvCacheType::Q5_1,
    }
}

/// The llama.cpp context of a deployment, exactly as the sizing rules planned it.
pub(crate) fn context_params(d: &Deployment, threads: u32) -> LlamaContextParams {
    let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    let kv = kv_cache_type(d.kv_type);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(d.n_ctx()))
        .with_n_batch(d.n_batch)
        .with_n_ubatch(d.n_ubatch)
        .with_n_seq_max(d.slots)
        // One KV stream per slot unless the deployment says otherwise (see `engine_deployment`).
        .with_kv_unified(d.kv_unified)
        // Full-size sliding-window caches: a slot's cached KV stays complete, so a finished
        // slot's prefix can be reused and a paused sequence's state saved whole.
        .with_swa_full(d.swa_full)
        .with_type_k(kv)
        .with_type_v(kv)
        .with_flash_attention_policy(if d.flash_attn {
            FLASH_ATTN_ENABLED
        } else {
            FLASH_ATTN_DISABLED
        })
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use appl_firmware_profiles::sizing::{engine_deployment, ModelSettings};

    /// The sizing rules plan memory for `engine_deployment`; the engine must create exactly
    /// that context, or a prediction and the real allocation could disagree.
    #[test]
    fn the_context_is_the_deployment_the_sizing_rules_planned() {
        for (slots, ctx_per_slot, batch_tokens) in [(8, 2048, 2048), (4, 512, 256), (16, 4096, 8)] {
            let d = engine_deployment(&ModelSettings {
                slots,
                ctx_per_slot,
                batch_tokens,
            });
            let p = context_params(&d, 2);
            assert_eq!(p.n_ctx().map(NonZeroU32::get), Some(d.n_ctx()), "{d:?}");
            assert_eq!(p.n_batch(), d.n_batch, "{d:?}");
            assert_eq!(p.n_ubatch(), d.n_ubatch, "{d:?}");
            assert_eq!(p.n_seq_max(), d.slots, "{d:?}");
            assert_eq!(p.kv_unified(), d.kv_unified, "{d:?}");
            assert_eq!(p.swa_full(), d.swa_full, "{d:?}");
            assert_eq!(p.type_k(), kv_cache_type(d.kv_type), "{d:?}");
            assert_eq!(p.type_v(), kv_cache_type(d.kv_type), "{d:?}");
            let fa = if d.flash_attn {
                FLASH_ATTN_ENABLED
            } else {
                FLASH_ATTN_DISABLED
            };
            assert_eq!(p.flash_attention_policy(), fa, "{d:?}");
        }
    }
}
