//! Admission inside one engine: which waiting request gets the next free slot, and which batch
//! sequence to pause for interactive work. Pure logic with no llama.cpp types, so every rule here
//! is unit-tested without a model. (Tenant limits, which refuse a request before it queues, are
//! the daemon's: `appld::tenants`.)
//!
//! - [`Queue`]: the waiting requests of one engine, each with its [`Claim`]. Interactive
//!   requests go before batch ones; within a class, tenants share by weight through start-time
//!   fair queuing (each request gets a virtual start tag `max(V, F_tenant)` and advances its
//!   tenant's finish tag by `cost / weight`; the smallest start tag goes first). **Aging:** a
//!   batch request that has waited `batch_max_wait` outranks even new interactive requests, so
//!   batch work never starves.
//! - [`victims`] and [`resume_before`]: which batch sequences to pause for a waiting interactive
//!   request, and when a paused one comes back. A sequence that has already waited
//!   `batch_max_wait` (queued plus paused) is never paused again.

use std::time::{Duration, Instant};

/// The service class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// A person is waiting: served before batch work, and may pause it.
    #[default]
    Interactive,
    /// Throughput work: yields to interactive requests, protected from starvation by aging.
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// Index of a tenant in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// What the queue needs to know about a request: its claim on the engine's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub tenant: TenantId,
    pub weight: u32,
    pub priority: Priority,
    /// Estimated work in tokens (prompt plus max_tokens); the fair-share currency.
    pub cost: u32,
    pub enqueued: Instant,
}

/// Where a waiting request stands; lower is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Batch work that has waited `batch_max_wait`: goes before everything.
    Aged,
    Interactive,
    Batch,
}

impl Rank {
    pub fn of(priority: Priority, waited: Duration, batch_max_wait: Duration) -> Rank {
        match priority {
            Priority::Interactive => Rank::Interactive,
            Priority::Batch if waited >= batch_max_wait => Rank::Aged,
            Priority::Batch => Rank::Batch,
        }
    }
}

/// Fixed-point scale of virtual time, so weights divide without floats.
const VSCALE: u64 = 1 << 16;

#[derive(Debug)]
struct Entry<T> {
    item: T,
    claim: Claim,
    start: u64,
    seq: u64,
}

/// The waiting requests of one engine, served by rank, then weighted-fair between tenants, then
/// in arrival order. Its size is bounded by the caller (the queue capacity); every operation is
/// O(n) in the queued requests at most, and nothing runs per decode step unless a slot is free.
#[derive(Debug)]
pub struct Queue<T> {
    entries: Vec<Entry<T>>,
    /// Virtual time: the start tag of the request served last.
    vtime: u64,
    /// Per tenant, the finish tag of its last queued request.
    finish: Vec<u64>,
    seq: u64,
    batch_max_wait: Duration,
    depth: [usize; 2],
}

impl<T> Queue<T> {
    pub fn new(batch_max_wait: Duration) -> Self {
        Self {
            entries: Vec::new(),
            vtime: 0,
            finish: Vec::new(),
            seq: 0,
            batch_max_wait,
            depth: [0; 2],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests waiting in a class.
    pub fn depth(&self, p: Priority) -> usize {
        self.depth[p as usize]
    }

    pub fn push(&mut self, item: T, claim: Claim) {
        let t = claim.tenant.0 as usize;
        if self.finish.len() <= t {
            self.finish.resize(t + 1, 0);
        }
        let start = self.vtime.max(self.finish[t]);
        let cost = u64::from(claim.cost.max(1)) * VSCALE / u64::from(claim.weight.max(1));
        self.finish[t] = start + cost;
        self.seq += 1;
        self.depth[claim.priority as usize] += 1;
        self.entries.push(Entry {
            item,
            claim,
            start,
            seq: self.seq,
        });
    }

    fn best(&self, now: Instant) -> Option<(usize, Rank)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let waited = now.saturating_duration_since(e.claim.enqueued);
                let rank = Rank::of(e.claim.priority, waited, self.batch_max_wait);
                (i, rank, e.start, e.seq)
            })
            .min_by_key(|&(_, rank, start, seq)| (rank, start, seq))
            .map(|(i, rank, _, _)| (i, rank))
    }

    /// The rank of the request [`Queue::pop`] would return.
    pub fn next_rank(&self, now: Instant) -> Option<Rank> {
        self.best(now).map(|(_, r)| r)
    }

    /// Takes the request to serve next.
    pub fn pop(&mut self, now: Instant) -> Option<(T, Claim)> {
        let (i, _) = self.best(now)?;
        let e = self.entries.swap_remove(i);
        self.vtime = self.vtime.max(e.start);
        self.depth[e.claim.priority as usize] -= 1;
        Some((e.item, e.claim))
    }

    /// Removes and returns the requests for which `gone` says so (cancelled or expired).
    pub fn remove_if(&mut self, mut gone: impl FnMut(&T) -> bool, out: &mut Vec<(T, Claim)>) {
        let mut i = 0;
        while i < self.entries.len() {
            if gone(&self.entries[i].item) {
                let e = self.entries.swap_remove(i);
                self.depth[e.claim.priority as usize] -= 1;
                out.push((e.item, e.claim));
            } else {
                i += 1;
            }
        }
    }

    /// Interactive requests waiting (the ones that may pause batch work).
    pub fn interactive_waiting(&self) -> usize {
        self.depth[Priority::Interactive as usize]
    }
}

/// A slot's request, as preemption sees it.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    pub slot: usize,
    pub priority: Priority,
    pub admitted: Instant,
    /// Time already spent waiting (queued plus paused).
    pub waited: Duration,
}

/// The batch slots to pause so that `interactive_waiting` requests can start, given
/// `free_slots` free ones. The most recently admitted batch work is paused first (it has the
/// least sunk time); work that has already waited `batch_max_wait` is never paused.
pub fn victims(
    interactive_waiting: usize,
    free_slots: usize,
    running: &mut [Running],
    batch_max_wait: Duration,
) -> impl Iterator<Item = usize> + '_ {
    let want = interactive_waiting.saturating_sub(free_slots);
    running.sort_by_key(|r| std::cmp::Reverse(r.admitted));
    running
        .iter()
        .filter(move |r| r.priority == Priority::Batch && r.waited < batch_max_wait)
        .take(want)
        .map(|r| r.slot)
}

/// Whether a paused batch sequence should take a free slot before the queue's next request
/// (of rank `next`): yes unless an interactive request waits, and yes even then once the paused
/// work has waited `batch_max_wait`.
pub fn resume_before(
    next: Option<Rank>,
    paused_waited: Duration,
    batch_max_wait: Duration,
) -> bool {
    match next {
        None | Some(Rank::Batch) | Some(Rank::Aged) => true,
        Some(Rank::Interactive) => paused_waited >= batch_max_wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGING: Duration = Duration::from_secs(5);

    fn claim(tenant: u32, weight: u32, priority: Priority, at: Instant) -> Claim {
        Claim {
            tenant: TenantId(tenant),
            weight,
            priority,
            cost: 100,
            enqueued: at,
        }
    }

    #[test]
    fn interactive_goes_before_batch_and_fifo_within_a_tenant() {
        let t0 = Instant::now();
        let mut q = Queue::new(AGING);
        q.push("b1", claim(0, 1, Priority::Batch, t0));
        q.push("i1", claim(0, 1, Priority::Interactive, t0));
        q.push("b2", claim(0, 1, Priority::Batch, t0));
        q.push("i2", claim(0, 1, Priority::Interactive, t0));
        assert_eq!(q.depth(Priority::Batch), 2);
        assert_eq!(q.depth(Priority::Interactive), 2);
        assert_eq!(q.next_rank(t0), Some(Rank::Interactive));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(t0).map(|(x, _)| x)).collect();
        assert_eq!(order, ["i1", "i2", "b1", "b2"]);
        assert!(q.is_empty());
        assert_eq!(q.depth(Priority::Batch), 0);
    }

    #[test]
    fn aged_batch_work_outranks_new_interactive_work() {
        let t0 = Instant::now();
        let mut q = Queue::new(AGING);
        q.push("old-batch", claim(0, 1, Priority::Batch, t0));
        let later = t0 + AGING;
        q.push("new-interactive", claim(1, 1, Priority::Interactive, later));
        // Before the batch request has aged, interactive goes first ...
        assert_eq!(
            q.next_rank(t0 + Duration::from_secs(1)),
            Some(Rank::Interactive)
        );
        // ... once it has waited batch_max_wait, it goes first, so it cannot starve.
        assert_eq!(q.next_rank(later), Some(Rank::Aged));
        assert_eq!(q.pop(later).map(|(x, _)| x), Some("old-batch"));
        assert_eq!(q.pop(later).map(|(x, _)| x), Some("new-interactive"));
    }

    /// Two tenants flood the queue; the share each gets of the first `n` served is checked.
    fn shares(weights: [u32; 2], n: usize) -> [f64; 2] {
        let t0 = Instant::now();
        let mut q = Queue::new(AGING);
        // Tenant 0 floods first, so plain FIFO would serve only tenant 0.
        for t in [0u32, 1] {
            for _ in 0..64 {
                q.push(t, claim(t, weights[t as usize], Priority::Batch, t0));
            }
        }
        let mut served = [0usize; 2];
        for _ in 0..n {
            let (t, _) = q.pop(t0).expect("queued");
            served[t as usize] += 1;
        }
        [served[0] as f64 / n as f64, served[1] as f64 / n as f64]
    }

    #[test]
    fn equal_weights_share_equally_even_when_one_tenant_arrived_first() {
        let s = shares([1, 1], 40);
        assert!((0.4..=0.6).contains(&s[0]), "{s:?}");
        assert!((0.4..=0.6).contains(&s[1]), "{s:?}");
    }

    #[test]
    fn weights_set_the_shares() {
        let s = shares([3, 1], 40);
        assert!((0.7..=0.8).contains(&s[0]), "{s:?}");
        let s = shares([1, 2], 60);
        assert!((0.6..=0.72).contains(&s[1]), "{s:?}");
    }

    #[test]
    fn a_tenant_returning_from_idle_gets_no_banked_credit() {
        let t0 = Instant::now();
        let mut q = Queue::new(AGING);
        for _ in 0..10 {
            q.push(0u32, claim(0, 1, Priority::Batch, t0));
        }
        for _ in 0..6 {
            q.pop(t0);
        }
        // Tenant 1 arrives late with many requests: it alternates with tenant 0 from now on
        // instead of being served 6 in a row for the time it was idle.
        for _ in 0..10 {
            q.push(1u32, claim(1, 1, Priority::Batch, t0));
        }
        let next: Vec<u32> = (0..6).filter_map(|_| q.pop(t0).map(|(t, _)| t)).collect();
        assert_eq!(next.iter().filter(|&&t| t == 1).count(), 3, "{next:?}");
    }

    #[test]
    fn remove_if_takes_out_cancelled_requests_and_keeps_depths() {
        let t0 = Instant::now();
        let mut q = Queue::new(AGING);
        for i in 0..6 {
            let p = if i % 2 == 0 {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            q.push(i, claim(0, 1, p, t0));
        }
        let mut out = Vec::new();
        q.remove_if(|&i| i >= 4, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(q.len(), 4);
        assert_eq!(q.depth(Priority::Batch) + q.depth(Priority::Interactive), 4);
        assert_eq!(q.interactive_waiting(), 2);
    }

    #[test]
    fn preemption_pauses_the_newest_batch_work_only_as_needed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut running = vec![
            Running {
                slot: 0,
                priority: Priority::Batch,
                admitted: t0,
                waited: Duration::ZERO,
            },
            Running {
                slot: 1,
                priority: Priority::Interactive,
                admitted: t0 + s,
                waited: Duration::ZERO,
            },
            Running {
                slot: 2,
                priority: Priority::Batch,
                admitted: t0 + 2 * s,
                waited: Duration::ZERO,
            },
            Running {
                slot: 3,
                priority: Priority::Batch,
                admitted: t0 + 3 * s,
                waited: AGING,
            },
        ];
        // Slot 3 has waited batch_max_wait already: it is protected. Newest other batch first.
        let v: Vec<_> = victims(1, 0, &mut running, AGING).collect();
        assert_eq!(v, [2]);
        let v: Vec<_> = victims(3, 0, &mut running, AGING).collect();
        assert_eq!(v, [2, 0], "never the interactive or the protected slot");
        let v: Vec<_> = victims(2, 2, &mut running, AGING).collect();
        assert!(v.is_empty(), "free slots suffice");
    }

    #[test]
    fn paused_work_resumes_unless_interactive_waits_and_ages_like_queued_work() {
        let z = Duration::ZERO;
        assert!(resume_before(None, z, AGING));
        assert!(resume_before(Some(Rank::Batch), z, AGING));
        assert!(resume_before(Some(Rank::Aged), z, AGING));
        assert!(!resume_before(Some(Rank::Interactive), z, AGING));
        assert!(resume_before(Some(Rank::Interactive), AGING, AGING));
    }
}
