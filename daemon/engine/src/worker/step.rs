//! One engine step: which tokens go into `llama_decode`, in how many calls, and what happens to
//! the logits that come back (sampling, streaming text, finishing requests).
//!
//! A step carries one decode token for every generating slot and prefill chunks up to the
//! token budget. When both kinds are present and the batch is large, they go to llama.cpp in two
//! calls, decode rows first. With one KV stream per slot (the default) llama.cpp would split
//! them into separate micro-batches anyway; two calls keep the decode rows one micro-batch that
//! a cut step can undo. In a unified KV cache the split matters more, because of ggml's CPU
//! flash attention: a micro-batch of at least [`FA_TILE_ROWS`] rows is processed in tiles of
//! that many query rows, and a tile reads the key/value cells of every sequence that has a row
//! in it, so a tile holding seven streams' decode rows beside an eighth stream's prompt attends
//! over all eight streams' cells, for all of its rows (bench/RESULTS.md, "Reading the
//! comparison").

use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use tracing::{debug, warn};

use super::prefix::prefilling;
use super::{seq, Engine};
use crate::admission::Priority;
use crate::text::Pushed;
use crate::{Event, FinishReason};

/// Query rows per tile in ggml's CPU flash attention (`GGML_FA_TILE_Q`): micro-batches with at
/// least this many rows take the tiled path.
pub(super) const FA_TILE_ROWS: usize = 64;

/// Whether a step with `decoding` decode rows and `prefill` prompt tokens goes to llama.cpp in
/// two calls: only when both kinds are present and one call would reach a tiled micro-batch.
fn two_calls(decoding: usize, prefill: usize) -> bool {
    decoding > 0 && prefill > 0 && decoding + prefill >= FA_TILE_ROWS
}

/// What a slot put into the batch being built: what to undo if llama.cpp's step is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Row {
    None,
    /// Its pending token (decoded at the slot's position before this step).
    Decode(LlamaToken),
    /// This many prompt tokens.
    Prefill(usize),
}

/// What `llama_decode` returns when the abort callback stopped it.
const DECODE_ABORTED: i32 = 2;

/// What one step put into its batches.
#[derive(Debug, Default, Clone, Copy)]
struct Filled {
    sequences: u32,
    prefill_tokens: u64,
}

impl Engine<'_> {
    /// One engine step; see the module comment.
    pub(super) fn step(&mut self) {
        self.in_batch.iter_mut().for_each(|b| *b = false);
        self.resolve_followers();
        // While an interactive prompt is being prefilled, batch sequences sit the step out: the
        // step is then as short as on an idle engine, so the interactive request's first token
        // comes about as fast as when idle. Batch work loses one step per interactive arrival.
        let interactive_first = self
            .slots
            .iter()
            .flatten()
            .any(|a| a.claim.priority == Priority::Interactive && prefilling(a));
        for a in self.slots.iter_mut().flatten() {
            a.logits_at = None;
        }
        let decoding = self
            .slots
            .iter()
            .flatten()
            .filter(|a| {
                a.next.is_some() && !(interactive_first && a.claim.priority == Priority::Batch)
            })
            .count();
        let budget = self.batch_budget().saturating_sub(decoding);
        let prefill_wanted: usize = self
            .slots
            .iter()
            .flatten()
            .filter(|a| {
                prefilling(a) && !(interactive_first && a.claim.priority == Priority::Batch)
            })
            .map(|a| a.job.prompt.len() - a.prefilled)
            .sum::<usize>()
            .min(budget);
        let split = two_calls(decoding, prefill_wanted);

        self.batch.clear();
        let mut filled = self.add_decode_rows(interactive_first);
        if split {
            if !self.decode_and_sample(filled) {
                return;
            }
            self.batch.clear();
            filled = Filled::default();
        }
        let prefill = self.add_prefill_rows(interactive_first, budget);
        filled.sequences += prefill.sequences;
        filled.prefill_tokens += prefill.prefill_tokens;
        self.decode_and_sample(filled);
    }

    /// Adds the pending token of every generating slot (one row each, with logits).
    fn add_decode_rows(&mut self, interactive_first: bool) -> Filled {
        let mut filled = Filled::default();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            if interactive_first && a.claim.priority == Priority::Batch {
                continue;
            }
            let Some(token) = a.next.take() else { continue };
            a.logits_at = Some(self.batch.n_tokens());
            // The batch holds at least one token per slot, so this cannot run out of space.
            if self.batch.add(token, a.n_past, &[seq(i)], true).is_err() {
                a.next = Some(token);
                a.logits_at = None;
                continue;
            }
            a.n_past += 1;
            a.history.push(token.0);
            filled.sequences += 1;
            self.in_batch[i] = true;
            self.rows[i] = Row::Decode(token);
        }
        filled
    }

    /// Adds prompt chunks, slot by slot, until `budget` tokens are in the batch; only the last
    /// prompt token of a slot asks for logits.
    fn add_prefill_rows(&mut self, interactive_first: bool, budget: usize) -> Filled {
        let mut filled = Filled::default();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            if !prefilling(a) || a.logits_at.is_some() {
                continue;
            }
            let remaining = a.job.prompt.len() - a.prefilled;
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
            filled.prefill_tokens += take as u64;
            filled.sequences += 1;
            self.in_batch[i] = true;
            self.rows[i] = Row::Prefill(take);
        }
        filled
    }

    /// Runs the batch through llama.cpp and samples every slot that asked for logits in it.
    /// Returns false when llama_decode failed (the requests in the batch are finished with an
    /// error) or was cut short for an interactive arrival (the batch is put back).
    fn decode_and_sample(&mut self, filled: Filled) -> bool {
        let ok = self.decode_rows(filled);
        self.rows.iter_mut().for_each(|r| *r = Row::None);
        ok
    }

    fn decode_rows(&mut self, filled: Filled) -> bool {
        if self.batch.n_tokens() == 0 {
            return true;
        }
        let stats = self.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .max_batch_sequences
            .fetch_max(filled.sequences, Ordering::Relaxed);
        stats.batch_sequences.observe(f64::from(filled.sequences));
        stats
            .tokens_prefilled
            .fetch_add(filled.prefill_tokens, Ordering::Relaxed);

        let cuttable = self.cuttable();
        self.stats.interrupt.arm(cuttable);
        let result = self.ctx.decode(&mut self.batch);
        self.stats.interrupt.arm(false);
        // llama.cpp made every pending stream copy before its first micro-batch.
        self.copy_pending.iter_mut().for_each(|p| *p = false);
        // Whatever llama_decode returned, its messages have been logged: later ones are not part
        // of a cut.
        super::interrupt::cut_handled();
        if cuttable && result == Err(DecodeError::Unknown(DECODE_ABORTED)) {
            self.put_back(filled);
            return false;
        }
        if let Err(e) = result {
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
            return false;
        }
        for i in 0..self.slots.len() {
            self.sample(i);
        }
        true
    }

    /// Samples slot `i`'s next token from the last batch, if it asked for logits there, and
    /// streams it.
    fn sample(&mut self, i: usize) {
        let stats = self.stats;
        let Some(a) = &mut self.slots[i] else {
            return;
        };
        let Some(at) = a.logits_at.take() else {
            return;
        };
        let token = a.sampler.sample(self.ctx.get_logits_ith(at));
        let now = Instant::now();
        match a.last_token {
            None => stats.ttft.observe((now - a.job.received).as_secs_f64()),
            Some(t) => stats.inter_token.observe((now - t).as_secs_f64()),
        }
        a.last_token = Some(now);
        a.first_token.get_or_insert(now);
        if self.model.vocab().is_eog(token) {
            self.finish(i, FinishReason::Stop, None);
            return;
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
                return;
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

    /// Whether the batch now built may be cut short: interrupts are on, no row is interactive,
    /// llama.cpp runs it as one micro-batch (it undoes only the last one), and an interactive
    /// arrival could be served at once (a slot is free or can be freed by a pause).
    fn cuttable(&self) -> bool {
        if !self.interruptible
            || self.batch.n_tokens() as u32 > self.spec.deployment.n_ubatch
            || !(self.spec.queue.preemption || self.slots.iter().any(Option::is_none))
        {
            return false;
        }
        self.slots.iter().zip(&self.rows).all(|(slot, row)| {
            *row == Row::None
                || slot
                    .as_ref()
                    .is_some_and(|a| a.claim.priority == Priority::Batch)
        })
    }

    /// Undoes what the cut step put in: each slot of the batch is again exactly as before it
    /// (llama.cpp has already removed the step's positions from the KV cache).
    fn put_back(&mut self, filled: Filled) {
        for (slot, row) in self.slots.iter_mut().zip(&self.rows) {
            let Some(a) = slot else { continue };
            match *row {
                Row::None => continue,
                Row::Decode(token) => {
                    a.n_past -= 1;
                    a.history.pop();
                    a.next = Some(token);
                }
                Row::Prefill(k) => {
                    a.n_past -= i32::try_from(k).unwrap_or(i32::MAX);
                    a.history.truncate(a.history.len() - k);
                    a.prefilled -= k;
                }
            }
            a.logits_at = None;
        }
        // llama.cpp has removed the aborted micro-batch's positions. Should it have run the batch
        // as more than one (a cache that falls back to splitting by sequence), the earlier ones
        // stay: drop everything past each slot's restored position, so the cache matches it.
        for i in 0..self.slots.len() {
            let Some(a) = &self.slots[i] else { continue };
            if self.rows[i] == Row::None {
                continue;
            }
            let from = u32::try_from(a.n_past).unwrap_or(0);
            if self
                .ctx
                .clear_kv_cache_seq(Some(seq(i) as u32), Some(from), None)
                .is_err()
            {
                warn!(target: "engine", slot = i, "could not trim the slot's KV cache after a cut step");
            }
        }
        let stats = self.stats;
        stats
            .tokens_prefilled
            .fetch_sub(filled.prefill_tokens, Ordering::Relaxed);
        stats.steps_interrupted.fetch_add(1, Ordering::Relaxed);
        debug!(target: "queue", model = %self.spec.id, sequences = filled.sequences, "batch step cut short for an interactive arrival");
    }

    /// Tokens one step may carry.
    fn batch_budget(&self) -> usize {
        self.spec.batch_tokens() as usize
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_rows_go_apart_only_when_a_mixed_batch_would_be_tiled() {
        // (decode rows, prompt tokens, two calls)
        let cases = [
            (0, 512, false),
            (8, 0, false),
            (7, 56, false),
            (7, 57, true),
            (1, 511, true),
            (64, 1, true),
        ];
        for (decoding, prefill, want) in cases {
            assert_eq!(
                super::two_calls(decoding, prefill),
                want,
                "{decoding} + {prefill}"
            );
        }
    }
}
