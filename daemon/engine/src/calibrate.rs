//! Calibration: how long one decode step takes on this machine, with this model, at a few batch
//! sizes. A few seconds of real llama.cpp work, with the same context parameters the engine
//! uses, so that the speed the sizing rules predict from it is the speed the engine delivers.
//! The prediction arithmetic lives in `appl_firmware_profiles::calibration`.

use std::time::{Duration, Instant};

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::{load, EngineError, ModelSpec};

/// The measured step time at one batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTiming {
    /// Sequences decoding together (one token each per step).
    pub batch: u32,
    /// Median over the measured steps: `llama_decode` plus a greedy sample for every sequence.
    pub step: Duration,
    /// The fastest step, for a feel of the noise.
    pub fastest: Duration,
    pub steps: u32,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct CalibrationRun {
    /// Batch sizes, each at most the slots.
    pub batches: Vec<u32>,
    /// Steps timed per batch size (after two untimed ones).
    pub steps: u32,
    /// Prompt tokens each sequence starts from: the context the steps run at.
    pub context: u32,
}

impl Default for CalibrationRun {
    fn default() -> Self {
        Self {
            batches: vec![1, 8],
            steps: 24,
            context: 48,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Loads the model as the engine would and times decode steps at each batch size.
pub fn calibrate(spec: &ModelSpec, run: &CalibrationRun) -> Result<Vec<StepTiming>, EngineError> {
    let backend = crate::backend()?;
    let model = load::load_model(backend, spec)?;
    let mut ctx = model
        .new_context(
            backend,
            load::context_params(&spec.deployment, spec.threads),
        )
        .map_err(|_| EngineError::Context {
            path: spec.path.clone(),
            n_ctx: spec.deployment.n_ctx(),
        })?;
    let vocab = model.n_vocab().max(2);
    // A fixed, ordinary prompt: token ids spread over the vocabulary, after BOS.
    let prompt: Vec<LlamaToken> = std::iter::once(model.vocab().bos())
        .chain((1..run.context).map(|i| LlamaToken((i as i32 * 7919 + 1000) % vocab)))
        .collect();
    let max_batch = run
        .batches
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .min(spec.slots())
        .max(1);
    let capacity = (prompt.len() * max_batch as usize).max(spec.batch_tokens() as usize);
    let mut batch = LlamaBatch::new(capacity, 1);
    let mut out = Vec::new();
    for &b in &run.batches {
        let b = b.clamp(1, spec.slots());
        ctx.clear_kv_cache();
        // Prefill b sequences, one prompt each, logits for each last token.
        batch.clear();
        for s in 0..b as i32 {
            let last = prompt.len() - 1;
            for (p, &t) in prompt.iter().enumerate() {
                batch
                    .add(t, p as i32, &[s], p == last)
                    .map_err(|e| EngineError::Backend(format!("calibration batch: {e}")))?;
            }
        }
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Backend(format!("calibration prefill: {e}")))?;
        let mut samplers: Vec<LlamaSampler> = (0..b).map(|_| LlamaSampler::greedy()).collect();
        let mut next: Vec<LlamaToken> = samplers
            .iter_mut()
            .enumerate()
            .map(|(s, sm)| sm.sample(&ctx, (s + 1) as i32 * prompt.len() as i32 - 1))
            .collect();
        let mut times = Vec::new();
        let first = prompt.len() as i32;
        // The first two steps warm up and are not timed.
        for (step, pos) in (0..run.steps + 2).zip(first..) {
            let t0 = Instant::now();
            batch.clear();
            for (s, &t) in next.iter().enumerate() {
                batch
                    .add(t, pos, &[s as i32], true)
                    .map_err(|e| EngineError::Backend(format!("calibration batch: {e}")))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| EngineError::Backend(format!("calibration decode: {e}")))?;
            for (s, sm) in samplers.iter_mut().enumerate() {
                next[s] = sm.sample(&ctx, s as i32);
            }
            if step >= 2 {
                times.push(t0.elapsed());
            }
        }
        out.push(StepTiming {
            batch: b,
            step: median(times.clone()),
            fastest: times.iter().min().copied().unwrap_or_default(),
            steps: run.steps,
        });
    }
    Ok(out)
}
