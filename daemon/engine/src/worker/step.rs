//! One engine step: a decode token for every generating slot, then prefill chunks up to the
//! token budget, in one `llama_decode` call; then a sample for every slot that has logits.

use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use tracing::warn;

use super::{seq, Engine};
use crate::admission::Priority;
use crate::text::Pushed;
use crate::{Event, FinishReason};

impl Engine<'_> {
    /// One engine step: a decode token for every generating slot, then prefill chunks up to the
    /// token budget, in one llama_decode call.
    pub(super) fn step(&mut self) {
        self.batch.clear();
        let budget = self.batch_budget();
        let mut sequences = 0u32;
        let mut prefilled = 0u64;
        self.in_batch.iter_mut().for_each(|b| *b = false);
        // While an interactive prompt is being prefilled, batch sequences sit the step out: the
        // step is then as short as on an idle engine, so the interactive request's first token
        // comes about as fast as when idle. Batch work loses one step per interactive arrival.
        let interactive_first =
            self.slots.iter().flatten().any(|a| {
                a.claim.priority == Priority::Interactive && a.prefilled < a.job.prompt.len()
            });
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            a.logits_at = None;
            if interactive_first && a.claim.priority == Priority::Batch {
                continue;
            }
            if let Some(token) = a.next.take() {
                a.logits_at = Some(self.batch.n_tokens());
                // The batch holds at least one token per slot, so this cannot run out of space.
                if self.batch.add(token, a.n_past, &[seq(i)], true).is_err() {
                    a.next = Some(token);
                    a.logits_at = None;
                    continue;
                }
                a.n_past += 1;
                a.history.push(token.0);
                sequences += 1;
                self.in_batch[i] = true;
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            let remaining = a.job.prompt.len() - a.prefilled;
            if remaining == 0 || a.logits_at.is_some() {
                continue;
            }
            if interactive_first && a.claim.priority == Priority::Batch {
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
            a.history
                .extend_from_slice(&a.job.prompt[a.prefilled..a.prefilled + take]);
            a.prefilled += take;
            prefilled += take as u64;
            sequences += 1;
            self.in_batch[i] = true;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }

        let stats = self.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .max_batch_sequences
            .fetch_max(sequences, Ordering::Relaxed);
        stats.batch_sequences.observe(f64::from(sequences));
        stats
            .tokens_prefilled
            .fetch_add(prefilled, Ordering::Relaxed);

        if let Err(e) = self.ctx.decode(&mut self.batch) {
            warn!(target: "engine", model = %self.spec.id, error = %e, "llama_decode failed; failing the requests in this step");
            for i in 0..self.in_batch.len() {
                if self.in_batch[i] {
                    self.finish(
                        i,
                        FinishReason::Error,
                        Some(format!("llama_decode failed: {e}")),
                    );
                }
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
            match a.last_token {
                None => stats.ttft.observe((now - a.job.received).as_secs_f64()),
                Some(t) => stats.inter_token.observe((now - t).as_secs_f64()),
            }
            a.last_token = Some(now);
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
            let ctx_full = a.n_past >= i32::try_from(self.spec.ctx_per_slot()).unwrap_or(i32::MAX);
            if a.generated >= a.job.max_tokens || ctx_full {
                self.finish(i, FinishReason::Length, None);
            } else {
                a.next = Some(token);
            }
        }
    }

    /// Tokens one step may carry.
    fn batch_budget(&self) -> usize {
        self.spec.batch_tokens() as usize
    }
}
