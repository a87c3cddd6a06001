//! Prefix sharing: a new prompt that begins with tokens another slot already holds in the KV
//! cache, or is about to, does not prefill them again.
//!
//! A request placed in a free slot is *seeded* from the slot whose cached or live tokens share
//! the longest prefix with its prompt: llama.cpp copies that slot's KV stream into the new
//! slot's, and the copy is cut to the shared prefix (a unified cache would share the cells
//! instead; see `seed`). When that prefix is still being prefilled by another request (a burst
//! of requests behind one long system prompt), the newcomer *follows* it: it waits, without
//! prefilling, until the leader's prefill has passed the shared part, and is seeded then. The
//! prefix is prefilled once, not once per request. A follower whose leader goes away (finished,
//! cancelled, failed or paused) takes whatever shared prefix is left in the cache and prefills
//! the rest itself.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::{common_prefix, seq, Active, Engine};
use crate::admission::Priority;

/// The request (by slot and serial number) whose prefill a follower waits for, and how many of
/// its prompt tokens the follower shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leader {
    pub slot: usize,
    pub serial: u64,
    pub tokens: usize,
}

impl Engine<'_> {
    /// Tokens in slot `j`'s KV cache, in position order.
    fn kv_tokens(&self, j: usize) -> &[i32] {
        match &self.slots[j] {
            Some(a) => &a.history,
            None => &self.cached[j],
        }
    }

    /// The slot (not `except`) whose KV cache shares the longest prefix with `prompt`, and that
    /// length, capped so that at least one prompt token is left to decode for the first logits.
    fn best_donor(&self, prompt: &[i32], except: usize) -> Option<(usize, usize)> {
        let cap = prompt.len().saturating_sub(1);
        (0..self.slots.len())
            .filter(|&j| j != except)
            .map(|j| (j, common_prefix(self.kv_tokens(j), prompt).min(cap)))
            .max_by_key(|&(_, n)| n)
    }

    /// A request still prefilling a prompt that shares more of `prompt` than any cache holds
    /// now; it leads when it may: never a batch leader for an interactive follower (batch work
    /// sits out while interactive prompts prefill), never a follower itself.
    fn best_leader(&self, prompt: &[i32], except: usize, priority: Priority) -> Option<Leader> {
        let cap = prompt.len().saturating_sub(1);
        self.slots
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != except)
            .filter_map(|(j, s)| Some((j, s.as_ref()?)))
            .filter(|(_, a)| {
                a.wait_for.is_none()
                    && a.prefilled < a.job.prompt.len()
                    && !(priority == Priority::Interactive && a.claim.priority == Priority::Batch)
            })
            .map(|(j, a)| Leader {
                slot: j,
                serial: a.serial,
                tokens: common_prefix(&a.job.prompt, prompt).min(cap),
            })
            .max_by_key(|l| l.tokens)
    }

    /// Gives slot `i` (which holds nothing) positions `[0, n)` of `donor`'s sequence, and marks
    /// them prefilled. In a unified cache the cells are shared; with one stream per slot,
    /// llama.cpp copies the donor's whole stream (it copies only whole streams) at the start of
    /// the next `llama_decode`, and the copy is trimmed to the shared prefix here.
    fn seed(&mut self, i: usize, donor: usize, n: usize) -> bool {
        let Ok(end) = u32::try_from(n) else {
            return false;
        };
        let copied = if self.spec.deployment.kv_unified {
            self.ctx
                .kv_cache_seq_cp(seq(donor), seq(i), Some(0), Some(end))
        } else {
            self.ctx
                .kv_cache_seq_cp(seq(donor), seq(i), None, None)
                .and_then(|()| self.ctx.kv_cache_seq_rm(seq(i), Some(end), None))
        };
        if let Err(e) = copied {
            warn!(target: "engine", slot = i, donor, error = %e, "could not share a cached prefix; prefilling it");
            self.clear_slot_kv(i);
            return false;
        }
        self.copy_pending[i] = !self.spec.deployment.kv_unified;
        let Some(a) = &mut self.slots[i] else {
            return false;
        };
        a.history.clear();
        a.history.extend_from_slice(&a.job.prompt[..n]);
        a.prefilled = n;
        a.n_past = i32::try_from(n).unwrap_or(i32::MAX);
        a.cached_prompt = u32::try_from(n).unwrap_or(u32::MAX);
        self.stats
            .tokens_prefix_reused
            .fetch_add(n as u64, Ordering::Relaxed);
        debug!(target: "engine", request_id = %a.job.request_id, slot = i, donor, prefix_tokens = n, "seeded from a shared prefix");
        true
    }

    /// A request just placed in free slot `i` with nothing cached: seed it from the cache now,
    /// or follow a request that is prefilling a longer shared prefix.
    pub(super) fn share_prefix(&mut self, i: usize) {
        let min = self.spec.queue.prefix_reuse_min_tokens as usize;
        let Some(a) = &self.slots[i] else { return };
        if min == 0 || a.prefilled > 0 {
            return;
        }
        let (prompt, priority) = (&a.job.prompt, a.claim.priority);
        let now = self.best_donor(prompt, i).filter(|&(_, n)| n >= min);
        let later = self
            .best_leader(prompt, i, priority)
            .filter(|l| l.tokens >= min && l.tokens > now.map_or(0, |d| d.1));
        match (later, now) {
            (Some(l), _) => {
                if let Some(a) = &mut self.slots[i] {
                    debug!(target: "engine", request_id = %a.job.request_id, slot = i, leader = l.slot, prefix_tokens = l.tokens, "waiting for a shared prefix being prefilled");
                    a.wait_for = Some(l);
                }
            }
            (None, Some((donor, n))) => {
                self.seed(i, donor, n);
            }
            (None, None) => {}
        }
    }

    /// Seeds followers whose leader has prefilled the shared part; a follower whose leader went
    /// away takes what the cache still shares with it and prefills the rest.
    pub(super) fn resolve_followers(&mut self) {
        let min = self.spec.queue.prefix_reuse_min_tokens as usize;
        for i in 0..self.slots.len() {
            let Some(l) = self.slots[i].as_ref().and_then(|a| a.wait_for) else {
                continue;
            };
            let leader_ready = match &self.slots[l.slot] {
                Some(b) if b.serial == l.serial => {
                    if b.prefilled < l.tokens {
                        continue;
                    }
                    true
                }
                _ => false,
            };
            if let Some(a) = &mut self.slots[i] {
                a.wait_for = None;
            }
            if leader_ready && self.seed(i, l.slot, l.tokens) {
                continue;
            }
            let fallback = self.slots[i]
                .as_ref()
                .and_then(|a| self.best_donor(&a.job.prompt, i))
                .filter(|&(_, n)| n >= min);
            if let Some((donor, n)) = fallback {
                self.seed(i, donor, n);
            }
        }
    }
}

/// Whether a request may take part in prefill this step.
pub(super) fn prefilling(a: &Active) -> bool {
    a.wait_for.is_none() && a.prefilled < a.job.prompt.len()
}
