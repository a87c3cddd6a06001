//! The engine thread: model loading and the continuous-batching loop.

use std::collections::VecDeque;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tracing::{debug, info, warn};

use crate::text::{Pushed, TextStreamer};
use crate::{
    ChatTemplateSpec, EngineError, EngineStats, Event, FinishReason, Job, ModelSpec, Sampling,
    Usage,
};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Checks that the file exists, is readable and starts like a GGUF file, so that the common
/// mistakes get a clear message before llama.cpp sees the file.
pub(crate) fn check_gguf_file(path: &Path) -> Result<(), EngineError> {
    let err = |reason: String| EngineError::ModelFile {
        path: path.to_owned(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            err("does not exist; check `path` in the config, or fetch the demo model with scripts/fetch-model.sh".to_owned())
        }
        _ => err(format!("cannot be opened: {e}")),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".to_owned()));
    }
    let mut header = [0u8; 8];
    file.read_exact(&mut header).map_err(|_| {
        err(format!(
            "is too short to be a GGUF model ({} bytes)",
            meta.len()
        ))
    })?;
    if &header[..4] != GGUF_MAGIC {
        return Err(err(
            "is not a GGUF model (the file does not start with the GGUF magic number)".to_owned(),
        ));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(2..=3).contains(&version) {
        return Err(err(format!(
            "has GGUF version {version}; this build of llama.cpp reads versions 2 and 3"
        )));
    }
    Ok(())
}

pub(crate) fn load_model(
    backend: &LlamaBackend,
    spec: &ModelSpec,
) -> Result<LlamaModel, EngineError> {
    let params = LlamaModelParams::default().with_n_gpu_layers(spec.gpu_layers);
    LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|_| EngineError::ModelLoad {
        path: spec.path.clone(),
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

fn context_params(spec: &ModelSpec) -> LlamaContextParams {
    let n_ctx = spec.slots * spec.ctx_per_slot;
    let n_batch = spec.batch_tokens.max(spec.slots);
    let threads = i32::try_from(spec.threads.max(1)).unwrap_or(i32::MAX);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch.min(512))
        .with_n_seq_max(spec.slots)
        // One KV pool for all slots: each slot is bounded by `ctx_per_slot` here, and a unified
        // cache lets sequences share cells later (prefix reuse).
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}

fn build_sampler(s: &Sampling, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if (s.repeat_penalty - 1.0).abs() > f32::EPSILON {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            s.repeat_last_n,
            s.repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        chain.push(LlamaSampler::top_p(s.top_p, 1));
        chain.push(LlamaSampler::min_p(s.min_p, 1));
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed));
    }
    LlamaSampler::chain_simple(chain)
}

/// A request that holds a slot.
struct Active {
    job: Job,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Tokens of this sequence in the KV cache (the next position).
    n_past: i32,
    /// The last sampled token, to be decoded in the next step.
    next: Option<LlamaToken>,
    generated: u32,
    streamer: TextStreamer,
    pending_ids: Vec<i32>,
    admitted: Instant,
    first_token: Option<Instant>,
    /// Index of this slot's logits in the current batch.
    logits_at: Option<i32>,
}

struct Engine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    spec: &'m ModelSpec,
    stats: &'m EngineStats,
    slots: Vec<Option<Active>>,
    waiting: VecDeque<Job>,
    batch: LlamaBatch<'static>,
}

pub(crate) fn run(
    backend: &'static LlamaBackend,
    model: &LlamaModel,
    spec: &ModelSpec,
    rx: &mpsc::Receiver<Job>,
    stats: &EngineStats,
    ready: &mpsc::Sender<Result<(), EngineError>>,
) {
    let ctx = match model.new_context(backend, context_params(spec)) {
        Ok(ctx) => ctx,
        Err(_) => {
            let _ = ready.send(Err(EngineError::Context {
                path: spec.path.clone(),
                n_ctx: spec.slots * spec.ctx_per_slot,
            }));
            return;
        }
    };
    let batch_capacity = spec.batch_tokens.max(spec.slots) as usize;
    let mut engine = Engine {
        model,
        ctx,
        spec,
        stats,
        slots: (0..spec.slots).map(|_| None).collect(),
        waiting: VecDeque::new(),
        batch: LlamaBatch::new(batch_capacity, 1),
    };
    info!(
        target: "engine",
        model = %spec.id,
        slots = spec.slots,
        ctx_per_slot = spec.ctx_per_slot,
        batch_tokens = spec.batch_tokens,
        threads = spec.threads,
        "engine ready"
    );
    let _ = ready.send(Ok(()));
    engine.serve(rx);
    info!(target: "engine", model = %spec.id, "engine stopped");
}

impl Engine<'_> {
    fn serve(&mut self, rx: &mpsc::Receiver<Job>) {
        loop {
            if self.idle() {
                match rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit();
            self.reap();
            if self.busy() > 0 {
                self.step();
            }
        }
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.busy() == 0
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Moves waiting jobs into free slots, in arrival order. Jobs whose client has gone or whose
    /// deadline has passed are answered without taking a slot.
    fn admit(&mut self) {
        let now = Instant::now();
        self.waiting.retain(|job| {
            let gone = job.events.is_closed();
            let expired = job.deadline.is_some_and(|d| d <= now);
            if gone || expired {
                self.stats.queued.fetch_sub(1, Ordering::AcqRel);
                let reason = if gone {
                    FinishReason::Cancelled
                } else {
                    FinishReason::Deadline
                };
                let usage = Usage {
                    prompt_tokens: len_u32(job.prompt.len()),
                    queue: now - job.received,
                    ..Usage::default()
                };
                let _ = job.events.send(Event::Done {
                    reason,
                    usage,
                    error: None,
                });
                self.stats
                    .requests_completed
                    .fetch_add(1, Ordering::Relaxed);
            }
            !(gone || expired)
        });
        while let Some(free) = self.slots.iter().position(Option::is_none) {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            let mut sampler = build_sampler(&job.sampling, self.model.n_vocab());
            sampler.accept_many(job.prompt.iter().map(|&t| LlamaToken(t)));
            debug!(target: "engine", request_id = %job.request_id, slot = free, prompt_tokens = job.prompt.len(), "slot assigned");
            self.slots[free] = Some(Active {
                streamer: TextStreamer::new(&job.stop),
                job,
                sampler,
                prefilled: 0,
                n_past: 0,
                next: None,
                generated: 0,
                pending_ids: Vec::new(),
                admitted: Instant::now(),
                first_token: None,
                logits_at: None,
            });
        }
        self.stats
            .busy_slots
            .store(len_u32(self.busy()), Ordering::Relaxed);
    }

    /// Ends slots whose client has gone or whose deadline has passed.
    fn reap(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let Some(active) = &self.slots[i] else {
                continue;
            };
            if active.job.events.is_closed() {
                self.finish(i, FinishReason::Cancelled, None);
            } else if active.job.deadline.is_some_and(|d| d <= now) {
                self.finish(i, FinishReason::Deadline, None);
            }
        }
    }

    /// One engine step: a decode token for every generating slot, then prefill chunks up to the
    /// token budget, in one llama_decode call.
    fn step(&mut self) {
        self.batch.clear();
        let budget = self.batch_budget();
        let mut sequences = 0u32;
        let mut prefilled = 0u64;
        let mut in_batch = vec![false; self.slots.len()];
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            a.logits_at = None;
            if let Some(token) = a.next.take() {
                a.logits_at = Some(self.batch.n_tokens());
                // The batch holds at least one token per slot, so this cannot run out of space.
                if self.batch.add(token, a.n_past, &[seq(i)], true).is_err() {
                    a.next = Some(token);
                    a.logits_at = None;
                    continue;
                }
                a.n_past += 1;
                sequences += 1;
                in_batch[i] = true;
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            let remaining = a.job.prompt.len() - a.prefilled;
            if remaining == 0 || a.logits_at.is_some() {
                continue;
            }
            let room = budget.saturating_sub(self.batch.n_tokens() as usize);
            if room == 0 {
                break;
            }
            let take = remaining.min(room);
            for k in 0..take {
                let idx = a.prefilled + k;
                let last = idx + 1 == a.job.prompt.len();
                if last {
                    a.logits_at = Some(self.batch.n_tokens());
                }
                // `take` is bounded by the room left in the batch.
                let _ = self
                    .batch
                    .add(LlamaToken(a.job.prompt[idx]), a.n_past, &[seq(i)], last);
                a.n_past += 1;
            }
            a.prefilled += take;
            prefilled += take as u64;
            sequences += 1;
            in_batch[i] = true;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }

        let stats = self.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .max_batch_sequences
            .fetch_max(sequences, Ordering::Relaxed);
        stats
            .tokens_prefilled
            .fetch_add(prefilled, Ordering::Relaxed);

        if let Err(e) = self.ctx.decode(&mut self.batch) {
            warn!(target: "engine", model = %self.spec.id, error = %e, "llama_decode failed; failing the requests in this step");
            for (i, _) in in_batch.iter().enumerate().filter(|(_, &b)| b) {
                self.finish(
                    i,
                    FinishReason::Error,
                    Some(format!("llama_decode failed: {e}")),
                );
            }
            return;
        }

        for i in 0..self.slots.len() {
            let Some(a) = &mut self.slots[i] else {
                continue;
            };
            let Some(at) = a.logits_at.take() else {
                continue;
            };
            let token = a.sampler.sample(&self.ctx, at);
            let now = Instant::now();
            a.first_token.get_or_insert(now);
            if self.model.vocab().is_eog(token) {
                self.finish(i, FinishReason::Stop, None);
                continue;
            }
            a.generated += 1;
            stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
            a.pending_ids.push(token.0);
            let piece = self.model.vocab().token_to_piece(token, false, None);
            match a.streamer.push(&piece) {
                Pushed::Stopped(text) => {
                    let ids = std::mem::take(&mut a.pending_ids);
                    let _ = a.job.events.send(Event::Tokens {
                        text,
                        token_ids: ids,
                    });
                    self.finish(i, FinishReason::Stop, None);
                    continue;
                }
                Pushed::Text(text) => {
                    if !text.is_empty() {
                        let ids = std::mem::take(&mut a.pending_ids);
                        let _ = a.job.events.send(Event::Tokens {
                            text,
                            token_ids: ids,
                        });
                    }
                }
            }
            let ctx_full = a.n_past >= i32::try_from(self.spec.ctx_per_slot).unwrap_or(i32::MAX);
            if a.generated >= a.job.max_tokens || ctx_full {
                self.finish(i, FinishReason::Length, None);
            } else {
                a.next = Some(token);
            }
        }
    }

    /// Tokens one step may carry.
    fn batch_budget(&self) -> usize {
        self.spec.batch_tokens.max(self.spec.slots) as usize
    }

    /// Sends the rest of the text and the final event, then frees the slot and its KV cells.
    fn finish(&mut self, i: usize, reason: FinishReason, error: Option<String>) {
        let Some(mut a) = self.slots[i].take() else {
            return;
        };
        let now = Instant::now();
        // Text held back for a possible stop sequence is final now (after a stop-sequence match
        // the streamer is already empty).
        let rest = a.streamer.finish();
        if !rest.is_empty() || !a.pending_ids.is_empty() {
            let _ = a.job.events.send(Event::Tokens {
                text: rest,
                token_ids: std::mem::take(&mut a.pending_ids),
            });
        }
        let usage = Usage {
            prompt_tokens: len_u32(a.job.prompt.len()),
            completion_tokens: a.generated,
            time_to_first_token: a
                .first_token
                .map(|t| t - a.job.received)
                .unwrap_or_default(),
            decode: a.first_token.map(|t| now - t).unwrap_or_default(),
            queue: a.admitted - a.job.received,
        };
        debug!(target: "engine", request_id = %a.job.request_id, ?reason, completion_tokens = a.generated, "request finished");
        let _ = a.job.events.send(Event::Done {
            reason,
            usage,
            error,
        });
        if self
            .ctx
            .clear_kv_cache_seq(Some(i as u32), None, None)
            .is_err()
        {
            warn!(target: "engine", slot = i, "could not clear the slot's KV cache");
        }
        self.stats
            .requests_completed
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .busy_slots
            .store(len_u32(self.busy()), Ordering::Relaxed);
    }
}

fn seq(slot: usize) -> i32 {
    i32::try_from(slot).unwrap_or(i32::MAX)
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
