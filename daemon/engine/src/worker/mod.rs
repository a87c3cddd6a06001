//! The engine thread: its loop, and the scheduling of requests into slots (queue, pause and
//! resume, prefix reuse, ends). One step of the batch is `step.rs`.

mod interrupt;
mod prefix;
mod step;

pub use interrupt::cutting;
pub(crate) use interrupt::Interrupt;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tracing::{debug, info, warn};

use crate::admission::{self, Claim, Priority, Queue, Running};
use crate::load::context_params;
use crate::sampler::Sampler;
use crate::text::TextStreamer;
use crate::thread::Msg;
use crate::{
    len_u32, EngineError, EngineStats, Event, FinishReason, Job, ModelSpec, Usage, HEARTBEAT,
};

/// A request that holds a slot, or is paused.
struct Active {
    job: Job,
    claim: Claim,
    sampler: Sampler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Tokens of this sequence in the KV cache (the next position).
    n_past: i32,
    /// The tokens in the KV cache, in order: what a later prompt may reuse.
    history: Vec<i32>,
    /// The last sampled token, to be decoded in the next step.
    next: Option<LlamaToken>,
    generated: u32,
    streamer: TextStreamer,
    pending_ids: Vec<i32>,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Index of this slot's logits in the current batch.
    logits_at: Option<i32>,
    /// Time spent waiting so far: in the queue, then paused.
    waited: Duration,
    preemptions: u32,
    cached_prompt: u32,
    /// Unique per placed request, so that a follower can tell its leader from a later request
    /// in the same slot.
    serial: u64,
    /// Waiting for another request to prefill a prompt prefix this one shares.
    wait_for: Option<prefix::Leader>,
}

/// A batch sequence paused for interactive work: its KV state, swapped to host memory.
struct Paused {
    active: Active,
    state: SeqState,
    since: Instant,
}

struct Engine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    spec: &'m ModelSpec,
    stats: &'m EngineStats,
    slots: Vec<Option<Active>>,
    /// Per slot, the tokens whose KV an idle slot still holds (empty when none).
    cached: Vec<Vec<i32>>,
    waiting: Queue<Job>,
    paused: VecDeque<Paused>,
    batch: LlamaBatch<'static>,
    /// Scratch space reused every step, so the loop does not allocate.
    in_batch: Vec<bool>,
    /// What each slot put into the batch now being built, to put it back if the step is cut.
    rows: Vec<step::Row>,
    /// Per slot, whether its KV stream was seeded by a copy that llama.cpp has not made yet: it
    /// copies streams at the start of the next `llama_decode`, so until then the slot's cells
    /// have positions but not data, and saving its state would save garbage.
    copy_pending: Vec<bool>,
    /// Whether batch-only steps may be cut short for interactive arrivals.
    interruptible: bool,
    gone: Vec<(Job, Claim)>,
    running: Vec<Running>,
    /// The base of the heartbeat.
    started: Instant,
    /// The serial number of the next placed request.
    next_serial: u64,
}

/// The engine thread's function: creates the context, reports readiness, serves until told to
/// stop (or until every handle is gone), and frees the context on its way out.
pub(crate) fn run(
    backend: &'static LlamaBackend,
    model: &LlamaModel,
    spec: &ModelSpec,
    rx: &mpsc::Receiver<Msg>,
    stats: &EngineStats,
    started: Instant,
    ready: &mpsc::Sender<Result<(), EngineError>>,
) {
    let d = &spec.deployment;
    let mut ctx = match model.new_context(backend, context_params(d, spec.threads)) {
        Ok(ctx) => ctx,
        Err(_) => {
            let _ = ready.send(Err(EngineError::Context {
                path: spec.path.clone(),
                n_ctx: d.n_ctx(),
            }));
            return;
        }
    };
    let interruptible = spec.queue.interrupt_batch_steps
        && {
            let ok = interrupt::install(&mut ctx, &stats.interrupt);
            if !ok {
                warn!(target: "engine", model = %spec.id, "cannot register llama.cpp's abort callback with this llama-cpp-2; interactive requests wait for the batch step in flight");
            }
            ok
        };
    let batch_capacity = d.n_batch as usize;
    let n = d.slots as usize;
    let mut engine = Engine {
        model,
        ctx,
        spec,
        stats,
        slots: (0..n).map(|_| None).collect(),
        cached: vec![Vec::new(); n],
        waiting: Queue::new(spec.queue.batch_max_wait),
        paused: VecDeque::new(),
        batch: LlamaBatch::new(batch_capacity, 1),
        in_batch: vec![false; n],
        rows: vec![step::Row::None; n],
        copy_pending: vec![false; n],
        interruptible,
        gone: Vec::new(),
        running: Vec::with_capacity(n),
        started,
        next_serial: 0,
    };
    info!(
        target: "engine",
        model = %spec.id,
        slots = d.slots,
        ctx_per_slot = d.ctx_per_slot,
        n_batch = d.n_batch,
        n_ubatch = d.n_ubatch,
        flash_attn = d.flash_attn,
        kv_unified = d.kv_unified,
        threads = spec.threads,
        preemption = spec.queue.preemption,
        batch_max_wait_ms = spec.queue.batch_max_wait.as_millis() as u64,
        prefix_reuse_min_tokens = spec.queue.prefix_reuse_min_tokens,
        "engine ready"
    );
    let _ = ready.send(Ok(()));
    engine.serve(rx);
    info!(target: "engine", model = %spec.id, "engine stopped");
}

fn claim_of(job: &Job) -> Claim {
    Claim {
        tenant: job.tenant,
        weight: job.weight,
        priority: job.priority,
        cost: len_u32(job.prompt.len()).saturating_add(job.max_tokens),
        enqueued: job.received,
    }
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine<'_> {
    fn serve(&mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            self.beat();
            if self.idle() {
                match rx.recv_timeout(HEARTBEAT) {
                    Ok(Msg::Job(job)) => self.enqueue(*job),
                    Ok(Msg::Stop) => return self.stop_all(),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    Msg::Job(job) => self.enqueue(*job),
                    Msg::Stop => return self.stop_all(),
                }
            }
            self.drop_gone_waiting();
            self.reap();
            self.preempt();
            self.admit();
            if self.busy() > 0 {
                self.step();
            }
        }
    }

    /// Records that the loop went round (see [`crate::EngineHandle::heartbeat`]).
    fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.stats.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends every request the engine holds, queued, running or paused, as cancelled.
    fn stop_all(&mut self) {
        let mut gone = std::mem::take(&mut self.gone);
        self.waiting.remove_if(|_| true, &mut gone);
        let now = Instant::now();
        for (job, _) in gone.drain(..) {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats
                .requests_completed
                .fetch_add(1, Ordering::Relaxed);
            let usage = Usage {
                prompt_tokens: len_u32(job.prompt.len()),
                queue: now - job.received,
                ..Usage::default()
            };
            let _ = job.events.send(Event::Done {
                reason: FinishReason::Cancelled,
                usage,
                error: None,
            });
        }
        for i in 0..self.slots.len() {
            self.finish(i, FinishReason::Cancelled, None);
        }
        while let Some(p) = self.paused.pop_front() {
            self.complete(p.active, FinishReason::Cancelled, None);
        }
        self.publish_gauges();
        info!(target: "engine", model = %self.spec.id, "engine stopping: every request ended");
    }

    fn enqueue(&mut self, job: Job) {
        if job.priority == Priority::Interactive {
            self.stats.interrupt.interactive_taken();
        }
        let claim = claim_of(&job);
        self.waiting.push(job, claim);
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.paused.is_empty() && self.busy() == 0
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn publish_gauges(&self) {
        let s = self.stats;
        s.busy_slots.store(len_u32(self.busy()), Ordering::Relaxed);
        s.queued_interactive.store(
            len_u32(self.waiting.depth(Priority::Interactive)),
            Ordering::Relaxed,
        );
        s.queued_batch.store(
            len_u32(self.waiting.depth(Priority::Batch)),
            Ordering::Relaxed,
        );
        s.paused
            .store(len_u32(self.paused.len()), Ordering::Relaxed);
    }

    /// Answers waiting jobs whose client has gone or whose deadline has passed, without giving
    /// them a slot.
    fn drop_gone_waiting(&mut self) {
        let now = Instant::now();
        let mut gone = std::mem::take(&mut self.gone);
        self.waiting.remove_if(
            |job| job.events.is_closed() || job.deadline.is_some_and(|d| d <= now),
            &mut gone,
        );
        for (job, _) in gone.drain(..) {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            let reason = if job.events.is_closed() {
                FinishReason::Cancelled
            } else {
                self.stats.expired_in_queue.fetch_add(1, Ordering::Relaxed);
                FinishReason::Deadline
            };
            debug!(target: "queue", request_id = %job.request_id, ?reason, "left the queue before a slot");
            let usage = Usage {
                prompt_tokens: len_u32(job.prompt.len()),
                queue: now - job.received,
                ..Usage::default()
            };
            self.stats
                .requests_completed
                .fetch_add(1, Ordering::Relaxed);
            let _ = job.events.send(Event::Done {
                reason,
                usage,
                error: None,
            });
        }
        self.gone = gone;
    }

    /// Pauses batch sequences when interactive requests wait and no slot is free.
    fn preempt(&mut self) {
        if !self.spec.queue.preemption || self.waiting.interactive_waiting() == 0 {
            return;
        }
        let now = Instant::now();
        if self.waiting.next_rank(now) != Some(admission::Rank::Interactive) {
            return;
        }
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        if free >= self.waiting.interactive_waiting() {
            return;
        }
        self.running.clear();
        for (slot, a) in self.slots.iter().enumerate() {
            if let Some(a) = a {
                self.running.push(Running {
                    slot,
                    priority: a.claim.priority,
                    admitted: a.admitted,
                    waited: a.waited,
                });
            }
        }
        let mut running = std::mem::take(&mut self.running);
        let wait = self.spec.queue.batch_max_wait;
        for slot in admission::victims(self.waiting.interactive_waiting(), free, &mut running, wait)
        {
            self.pause(slot, now);
        }
        self.running = running;
    }

    /// Swaps a slot's KV state to host memory and frees the slot. The sampler, the text streamer
    /// and the pending token stay with the request, so it resumes exactly where it stopped.
    fn pause(&mut self, i: usize, now: Instant) {
        if self.copy_pending[i] {
            // Its cells are not written yet; the next step makes the copy and a later check
            // pauses it then.
            debug!(target: "queue", slot = i, "not pausing a slot whose seeded prefix is not copied yet");
            return;
        }
        let state = match self.ctx.state_seq_get(seq(i), LlamaStateSeqFlags::empty()) {
            Ok(s) => s,
            Err(e) => {
                warn!(target: "queue", slot = i, error = %e, "could not save a sequence's state; not pausing it");
                return;
            }
        };
        let Some(mut active) = self.slots[i].take() else {
            return;
        };
        self.clear_slot_kv(i);
        active.preemptions += 1;
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        debug!(target: "queue", request_id = %active.job.request_id, slot = i, n_past = active.n_past, state_bytes = state.byte_len(), "paused for interactive work");
        self.paused.push_back(Paused {
            active,
            state,
            since: now,
        });
    }

    fn clear_slot_kv(&mut self, i: usize) {
        self.cached[i].clear();
        if self
            .ctx
            .clear_kv_cache_seq(Some(i as u32), None, None)
            .is_err()
        {
            warn!(target: "engine", slot = i, "could not clear the slot's KV cache");
        }
    }

    /// A free slot for new work (its cache, if any, is dropped); see [`pick_free_slot`].
    fn free_slot(&mut self) -> Option<usize> {
        let i = pick_free_slot(
            |i| self.slots[i].is_some(),
            |i| !self.cached[i].is_empty(),
            self.slots.len(),
        )?;
        if !self.cached[i].is_empty() {
            self.clear_slot_kv(i);
        }
        Some(i)
    }

    /// Fills free slots: paused work or the queue's next request, in the order admission says.
    fn admit(&mut self) {
        let wait = self.spec.queue.batch_max_wait;
        while self.slots.iter().any(Option::is_none) {
            let now = Instant::now();
            let next = self.waiting.next_rank(now);
            let resume = self.paused.front().is_some_and(|p| {
                admission::resume_before(next, p.active.waited + (now - p.since), wait)
            });
            if resume {
                let Some(p) = self.paused.pop_front() else {
                    break;
                };
                self.resume(p, now);
                continue;
            }
            let Some((job, claim)) = self.waiting.pop(now) else {
                break;
            };
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            self.place(job, claim, now);
        }
        self.publish_gauges();
    }

    fn resume(&mut self, p: Paused, now: Instant) {
        let Some(i) = self.free_slot() else {
            self.paused.push_front(p);
            return;
        };
        let Paused {
            mut active,
            state,
            since,
        } = p;
        active.waited += now - since;
        match self.ctx.state_seq_set(&state, seq(i)) {
            Ok(()) => {
                debug!(target: "queue", request_id = %active.job.request_id, slot = i, "resumed");
                self.slots[i] = Some(active);
            }
            Err(e) => {
                self.slots[i] = Some(active);
                self.finish(
                    i,
                    FinishReason::Error,
                    Some(format!("could not restore a paused sequence: {e}")),
                );
            }
        }
    }

    /// Gives a new request a slot, reusing an idle slot's cached prefix when it shares enough.
    fn place(&mut self, job: Job, claim: Claim, now: Instant) {
        let min = self.spec.queue.prefix_reuse_min_tokens as usize;
        let mut reuse = None;
        if min > 0 {
            let best = self
                .slots
                .iter()
                .zip(&self.cached)
                .enumerate()
                .filter(|(_, (s, c))| s.is_none() && !c.is_empty())
                .map(|(i, (_, c))| (i, common_prefix(c, &job.prompt)))
                .max_by_key(|&(_, n)| n);
            if let Some((i, n)) = best {
                // At least one prompt token is decoded, for the logits of the first sample.
                let n = n.min(job.prompt.len().saturating_sub(1));
                if n >= min {
                    reuse = Some((i, n));
                }
            }
        }
        let (i, history, reused) = match reuse {
            Some((i, n)) => {
                let ok = u32::try_from(n)
                    .ok()
                    .and_then(|p0| self.ctx.kv_cache_seq_rm(seq(i), Some(p0), None).ok())
                    .is_some();
                if ok {
                    let mut h = std::mem::take(&mut self.cached[i]);
                    h.truncate(n);
                    (i, h, n)
                } else {
                    self.clear_slot_kv(i);
                    (i, Vec::new(), 0)
                }
            }
            None => match self.free_slot() {
                Some(i) => (i, Vec::new(), 0),
                None => {
                    // Unreachable: admit only places while a slot is free. Keep the job.
                    self.stats.queued.fetch_add(1, Ordering::AcqRel);
                    self.waiting.push(job, claim);
                    return;
                }
            },
        };
        let mut history = history;
        // One allocation per request at most: the history never outgrows the slot's context.
        let want =
            (job.prompt.len() + job.max_tokens as usize).min(self.spec.ctx_per_slot() as usize);
        history.reserve(want.saturating_sub(history.len()));
        let mut sampler = Sampler::new(&job.sampling);
        sampler.accept_prompt(&job.prompt);
        self.stats
            .tokens_prefix_reused
            .fetch_add(reused as u64, Ordering::Relaxed);
        debug!(target: "engine", request_id = %job.request_id, slot = i, prompt_tokens = job.prompt.len(), prefix_reused = reused, priority = claim.priority.as_str(), "slot assigned");
        self.slots[i] = Some(Active {
            streamer: TextStreamer::new(&job.stop),
            waited: now.saturating_duration_since(job.received),
            job,
            claim,
            sampler,
            prefilled: reused,
            n_past: i32::try_from(reused).unwrap_or(i32::MAX),
            history,
            next: None,
            generated: 0,
            pending_ids: Vec::new(),
            admitted: now,
            first_token: None,
            last_token: None,
            logits_at: None,
            preemptions: 0,
            cached_prompt: len_u32(reused),
            serial: self.next_serial,
            wait_for: None,
        });
        self.next_serial += 1;
        if reused == 0 {
            self.share_prefix(i);
        }
    }

    /// Ends requests whose client has gone or whose deadline has passed, in slots or paused.
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
        let mut k = 0;
        while k < self.paused.len() {
            let job = &self.paused[k].active.job;
            let reason = if job.events.is_closed() {
                Some(FinishReason::Cancelled)
            } else if job.deadline.is_some_and(|d| d <= now) {
                Some(FinishReason::Deadline)
            } else {
                None
            };
            match (reason, self.paused.remove(k)) {
                (Some(reason), Some(p)) => self.complete(p.active, reason, None),
                (None, Some(p)) => {
                    self.paused.insert(k, p);
                    k += 1;
                }
                (_, None) => break,
            }
        }
    }

    /// Ends the request in slot `i`. Its KV cells stay cached for prefix reuse when that is on
    /// and the request ended cleanly; otherwise they are freed.
    fn finish(&mut self, i: usize, reason: FinishReason, error: Option<String>) {
        let Some(mut a) = self.slots[i].take() else {
            return;
        };
        let keep = self.spec.queue.prefix_reuse_min_tokens > 0
            && reason != FinishReason::Error
            && a.history.len() >= self.spec.queue.prefix_reuse_min_tokens as usize;
        if keep {
            self.cached[i] = std::mem::take(&mut a.history);
        } else {
            self.clear_slot_kv(i);
        }
        // Counters first: a client that reads Admin.Status right after its final message must
        // already see the slot free.
        self.stats
            .busy_slots
            .store(len_u32(self.busy()), Ordering::Relaxed);
        self.complete(a, reason, error);
    }

    /// Sends the rest of the text and the final event of a request that holds no slot now.
    fn complete(&mut self, mut a: Active, reason: FinishReason, error: Option<String>) {
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
            cached_prompt_tokens: a.cached_prompt,
            preemptions: a.preemptions,
        };
        debug!(target: "engine", request_id = %a.job.request_id, ?reason, completion_tokens = a.generated, preemptions = a.preemptions, "request finished");
        self.stats
            .requests_completed
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .paused
            .store(len_u32(self.paused.len()), Ordering::Relaxed);
        let _ = a.job.events.send(Event::Done {
            reason,
            usage,
            error,
        });
    }
}

fn seq(slot: usize) -> i32 {
    i32::try_from(slot).unwrap_or(i32::MAX)
}

/// Which free slot of `n` takes new work. With one KV stream per slot, llama.cpp splits a step
/// into one micro-batch per run of consecutive busy slots, and each micro-batch reads all the
/// weights again: so the slot that keeps the busy slots in the fewest runs wins, then one that
/// caches nothing (idle caches live longer for prefix reuse), then the lowest index.
fn pick_free_slot(
    busy: impl Fn(usize) -> bool,
    caches: impl Fn(usize) -> bool,
    n: usize,
) -> Option<usize> {
    let busy_at = |j: Option<usize>| j.is_some_and(|j| j < n && busy(j));
    (0..n).filter(|&i| !busy(i)).min_by_key(|&i| {
        let neighbours = usize::from(busy_at(i.checked_sub(1))) + usize::from(busy_at(Some(i + 1)));
        (2 - neighbours, caches(i), i)
    })
}

#[cfg(test)]
mod tests {
    use super::pick_free_slot;

    /// `b` busy, `c` free with a cache, `.` free and empty; the answer is the slot picked.
    fn pick(layout: &str) -> Option<usize> {
        let l: Vec<char> = layout.chars().collect();
        pick_free_slot(|i| l[i] == 'b', |i| l[i] == 'c', l.len())
    }

    #[test]
    fn new_work_keeps_busy_slots_contiguous_then_spares_caches() {
        let cases = [
            ("........", Some(0)),
            ("cc......", Some(2)),
            ("cccccccc", Some(0)),
            // Next to the busy run, on the side that caches nothing.
            ("cbbb....", Some(4)),
            // Both neighbours cache: the lower one.
            ("cbbbc...", Some(0)),
            // Filling a hole joins two runs, even at the cost of a cache.
            ("bb.bb...", Some(2)),
            ("bbcbb...", Some(2)),
            // Wrapping does not help: llama.cpp's runs are by increasing sequence id.
            ("c...bbbb", Some(3)),
            ("bbbbbbbb", None),
        ];
        for (layout, want) in cases {
            assert_eq!(pick(layout), want, "{layout}");
        }
    }
}
