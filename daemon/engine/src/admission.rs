//! Admission: who is refused, who waits, and who goes first. Pure logic with no llama.cpp types,
//! so every rule here is unit-tested without a model.
//!
//! Three parts:
//!
//! - [`Tenants`]: the tenant table and each tenant's live usage. A request takes a [`Permit`]
//!   before it queues; the permit counts against the tenant's concurrency limit until it is
//!   dropped, and charges the tenant's token bucket (`tokens_per_minute`) for the prompt at once
//!   and for the completion as it is reported. A refusal names the limit.
//! - [`Queue`]: the waiting requests of one engine. Interactive requests go before batch ones;
//!   within a class, tenants share by weight through start-time fair queuing (each request gets
//!   a virtual start tag `max(V, F_tenant)` and advances its tenant's finish tag by
//!   `cost / weight`; the smallest start tag goes first). **Aging:** a batch request that has
//!   waited `batch_max_wait` outranks even new interactive requests, so batch work never starves.
//! - [`victims`] and [`resume_before`]: which batch sequences to pause for a waiting interactive
//!   request, and when a paused one comes back. A sequence that has already waited
//!   `batch_max_wait` (queued plus paused) is never paused again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A tenant's configured policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    pub name: String,
    /// Share of the engine relative to other tenants; at least 1.
    pub weight: u32,
    /// Requests queued or running at once; 0 means no limit.
    pub max_concurrent: u32,
    /// Prompt plus completion tokens per minute (a token bucket of that size, refilled
    /// continuously); 0 means no limit.
    pub tokens_per_minute: u64,
    pub default_priority: Priority,
}

impl TenantPolicy {
    /// A tenant with weight 1, no limits and interactive priority.
    pub fn unlimited(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            weight: 1,
            max_concurrent: 0,
            tokens_per_minute: 0,
            default_priority: Priority::Interactive,
        }
    }
}

/// The name of the tenant that requests without a (known) tenant belong to.
pub const DEFAULT_TENANT: &str = "default";

/// Index of a tenant in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// Why a request was refused before it could queue.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("tenant {tenant} already has {limit} requests in flight, its limit (tenants.max_concurrent); retry when one finishes")]
    TenantConcurrency { tenant: String, limit: u32 },
    #[error("tenant {tenant} has used its {limit} tokens per minute (tenants.tokens_per_minute); retry in {} ms", retry_after.as_millis())]
    TenantRate {
        tenant: String,
        limit: u64,
        retry_after: Duration,
    },
}

impl Refusal {
    /// A short, stable reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TenantConcurrency { .. } => "tenant_max_concurrent",
            Refusal::TenantRate { .. } => "tenant_tokens_per_minute",
        }
    }

    /// When a retry may succeed.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::TenantConcurrency { .. } => Duration::from_millis(1000),
            Refusal::TenantRate { retry_after, .. } => *retry_after,
        }
    }
}

#[derive(Debug)]
struct Usage {
    in_flight: u32,
    /// Tokens left in the bucket; may go negative while a request runs past it.
    bucket: f64,
    refilled: Instant,
}

/// The tenant table and each tenant's live usage. Tenants not in the table share the
/// [`DEFAULT_TENANT`] entry, so unknown names cannot grow memory.
#[derive(Debug)]
pub struct Tenants {
    policies: Vec<TenantPolicy>,
    usage: Vec<Mutex<Usage>>,
    default: TenantId,
    rejected_concurrency: AtomicU64,
    rejected_rate: AtomicU64,
}

impl Tenants {
    /// Builds the table; a `default` tenant without limits is added when the list has none.
    pub fn new(mut policies: Vec<TenantPolicy>, now: Instant) -> Arc<Self> {
        if !policies.iter().any(|p| p.name == DEFAULT_TENANT) {
            policies.push(TenantPolicy::unlimited(DEFAULT_TENANT));
        }
        for p in &mut policies {
            p.weight = p.weight.max(1);
        }
        let default = policies
            .iter()
            .position(|p| p.name == DEFAULT_TENANT)
            .map_or(TenantId(0), |i| TenantId(i as u32));
        let usage = policies
            .iter()
            .map(|p| {
                Mutex::new(Usage {
                    in_flight: 0,
                    bucket: p.tokens_per_minute as f64,
                    refilled: now,
                })
            })
            .collect();
        Arc::new(Self {
            policies,
            usage,
            default,
            rejected_concurrency: AtomicU64::new(0),
            rejected_rate: AtomicU64::new(0),
        })
    }

    /// The tenant a request names; unknown or empty names are the default tenant.
    pub fn resolve(&self, name: &str) -> TenantId {
        self.policies
            .iter()
            .position(|p| p.name == name)
            .map_or(self.default, |i| TenantId(i as u32))
    }

    pub fn policy(&self, id: TenantId) -> &TenantPolicy {
        &self.policies[id.0 as usize]
    }

    pub fn policies(&self) -> &[TenantPolicy] {
        &self.policies
    }

    /// Requests refused for (concurrency, token rate) so far.
    pub fn rejections(&self) -> (u64, u64) {
        (
            self.rejected_concurrency.load(Ordering::Relaxed),
            self.rejected_rate.load(Ordering::Relaxed),
        )
    }

    /// Requests in flight for a tenant.
    pub fn in_flight(&self, id: TenantId) -> u32 {
        self.lock(id).in_flight
    }

    fn lock(&self, id: TenantId) -> std::sync::MutexGuard<'_, Usage> {
        // A panic while holding this lock leaves only counters behind; they stay usable.
        self.usage[id.0 as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a request of `prompt_tokens` for the tenant, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        id: TenantId,
        prompt_tokens: u32,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let p = self.policy(id);
        let mut u = self.lock(id);
        if p.max_concurrent > 0 && u.in_flight >= p.max_concurrent {
            self.rejected_concurrency.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TenantConcurrency {
                tenant: p.name.clone(),
                limit: p.max_concurrent,
            });
        }
        if p.tokens_per_minute > 0 {
            refill(&mut u, p.tokens_per_minute, now);
            if u.bucket < 1.0 {
                self.rejected_rate.fetch_add(1, Ordering::Relaxed);
                let per_ms = p.tokens_per_minute as f64 / 60_000.0;
                let ms = ((1.0 - u.bucket) / per_ms).ceil().max(1.0);
                return Err(Refusal::TenantRate {
                    tenant: p.name.clone(),
                    limit: p.tokens_per_minute,
                    retry_after: Duration::from_millis(ms as u64),
                });
            }
            u.bucket -= f64::from(prompt_tokens);
        }
        u.in_flight += 1;
        drop(u);
        Ok(Permit {
            tenants: Arc::clone(self),
            id,
        })
    }
}

fn refill(u: &mut Usage, per_minute: u64, now: Instant) {
    let elapsed = now.saturating_duration_since(u.refilled).as_secs_f64();
    u.refilled = now.max(u.refilled);
    let cap = per_minute as f64;
    u.bucket = (u.bucket + elapsed * cap / 60.0).min(cap);
}

/// A request's place in its tenant's concurrency limit; released when dropped.
#[derive(Debug)]
pub struct Permit {
    tenants: Arc<Tenants>,
    id: TenantId,
}

impl Permit {
    pub fn tenant(&self) -> TenantId {
        self.id
    }

    /// Charges generated tokens to the tenant's token bucket.
    pub fn charge(&self, tokens: u32) {
        if self.tenants.policy(self.id).tokens_per_minute > 0 {
            self.tenants.lock(self.id).bucket -= f64::from(tokens);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut u = self.tenants.lock(self.id);
        u.in_flight = u.in_flight.saturating_sub(1);
    }
}

/// What the queue needs to know about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
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
    ticket: Ticket,
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

    pub fn push(&mut self, item: T, ticket: Ticket) {
        let t = ticket.tenant.0 as usize;
        if self.finish.len() <= t {
            self.finish.resize(t + 1, 0);
        }
        let start = self.vtime.max(self.finish[t]);
        let cost = u64::from(ticket.cost.max(1)) * VSCALE / u64::from(ticket.weight.max(1));
        self.finish[t] = start + cost;
        self.seq += 1;
        self.depth[ticket.priority as usize] += 1;
        self.entries.push(Entry {
            item,
            ticket,
            start,
            seq: self.seq,
        });
    }

    fn best(&self, now: Instant) -> Option<(usize, Rank)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let waited = now.saturating_duration_since(e.ticket.enqueued);
                let rank = Rank::of(e.ticket.priority, waited, self.batch_max_wait);
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
    pub fn pop(&mut self, now: Instant) -> Option<(T, Ticket)> {
        let (i, _) = self.best(now)?;
        let e = self.entries.swap_remove(i);
        self.vtime = self.vtime.max(e.start);
        self.depth[e.ticket.priority as usize] -= 1;
        Some((e.item, e.ticket))
    }

    /// Removes and returns the requests for which `gone` says so (cancelled or expired).
    pub fn remove_if(&mut self, mut gone: impl FnMut(&T) -> bool, out: &mut Vec<(T, Ticket)>) {
        let mut i = 0;
        while i < self.entries.len() {
            if gone(&self.entries[i].item) {
                let e = self.entries.swap_remove(i);
                self.depth[e.ticket.priority as usize] -= 1;
                out.push((e.item, e.ticket));
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

    fn ticket(tenant: u32, weight: u32, priority: Priority, at: Instant) -> Ticket {
        Ticket {
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
        q.push("b1", ticket(0, 1, Priority::Batch, t0));
        q.push("i1", ticket(0, 1, Priority::Interactive, t0));
        q.push("b2", ticket(0, 1, Priority::Batch, t0));
        q.push("i2", ticket(0, 1, Priority::Interactive, t0));
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
        q.push("old-batch", ticket(0, 1, Priority::Batch, t0));
        let later = t0 + AGING;
        q.push(
            "new-interactive",
            ticket(1, 1, Priority::Interactive, later),
        );
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
                q.push(t, ticket(t, weights[t as usize], Priority::Batch, t0));
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
            q.push(0u32, ticket(0, 1, Priority::Batch, t0));
        }
        for _ in 0..6 {
            q.pop(t0);
        }
        // Tenant 1 arrives late with many requests: it alternates with tenant 0 from now on
        // instead of being served 6 in a row for the time it was idle.
        for _ in 0..10 {
            q.push(1u32, ticket(1, 1, Priority::Batch, t0));
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
            q.push(i, ticket(0, 1, p, t0));
        }
        let mut out = Vec::new();
        q.remove_if(|&i| i >= 4, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(q.len(), 4);
        assert_eq!(q.depth(Priority::Batch) + q.depth(Priority::Interactive), 4);
        assert_eq!(q.interactive_waiting(), 2);
    }

    fn policy(max_concurrent: u32, tokens_per_minute: u64) -> TenantPolicy {
        TenantPolicy {
            name: "clinic".into(),
            weight: 1,
            max_concurrent,
            tokens_per_minute,
            default_priority: Priority::Batch,
        }
    }

    #[test]
    fn tenants_resolve_unknown_names_to_the_default_tenant() {
        let t = Tenants::new(vec![policy(0, 0)], Instant::now());
        assert_eq!(t.policy(t.resolve("clinic")).name, "clinic");
        assert_eq!(t.policy(t.resolve("nobody")).name, DEFAULT_TENANT);
        assert_eq!(t.policy(t.resolve("")).name, DEFAULT_TENANT);
        assert_eq!(t.policies().len(), 2);
    }

    #[test]
    fn concurrency_limit_refuses_naming_the_limit_and_frees_on_drop() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(2, 0)], now);
        let id = t.resolve("clinic");
        let a = t.admit(id, 10, now).expect("first");
        let _b = t.admit(id, 10, now).expect("second");
        let err = t.admit(id, 10, now).expect_err("third is over the limit");
        assert_eq!(err.reason(), "tenant_max_concurrent");
        assert!(err.to_string().contains("max_concurrent"), "{err}");
        assert_eq!(t.rejections(), (1, 0));
        drop(a);
        assert_eq!(t.in_flight(id), 1);
        t.admit(id, 10, now).expect("a place was freed");
        // Other tenants are not affected.
        let d = t.resolve("");
        let _x: Vec<_> = (0..5)
            .map(|_| t.admit(d, 1, now).expect("default"))
            .collect();
    }

    #[test]
    fn token_rate_limit_refuses_once_the_bucket_is_spent_and_refills_with_time() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(0, 600)], now);
        let id = t.resolve("clinic");
        let p = t.admit(id, 300, now).expect("300 of 600");
        p.charge(260);
        let _q = t
            .admit(id, 40, now)
            .expect("40 left: admitted, bucket now empty");
        let err = t.admit(id, 1, now).expect_err("spent");
        assert_eq!(err.reason(), "tenant_tokens_per_minute");
        assert!(err.to_string().contains("tokens_per_minute"), "{err}");
        assert_eq!(t.rejections().1, 1);
        let later = now + Duration::from_secs(6);
        t.admit(id, 1, later).expect("60 tokens refilled after 6 s");
    }

    #[test]
    fn token_rate_retry_hint_is_the_time_to_refill_one_token() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(0, 60)], now);
        let id = t.resolve("clinic");
        let p = t.admit(id, 60, now).expect("exactly the budget");
        p.charge(9); // 9 tokens into debt: 10 s to get back to 1 token at 1 token/s.
        let err = t.admit(id, 1, now).expect_err("in debt");
        assert_eq!(err.retry_after(), Duration::from_secs(10));
        assert!(t.admit(id, 1, now + Duration::from_secs(9)).is_err());
        assert!(t.admit(id, 1, now + Duration::from_secs(10)).is_ok());
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
