//! Lock-free histograms the engine thread records into without allocating, and that any thread
//! can read as Prometheus buckets.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds. Recording is a few relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound plus the `+Inf` bucket; not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in micro-units (µs for seconds, 1e-6 for counts).
    sum_micros: AtomicU64,
}

/// Latency bounds in seconds: 5 ms to 30 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bounds for sequences per engine step.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A point-in-time copy of a histogram: cumulative counts per bound, then the total.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    pub bounds: Vec<f64>,
    /// Cumulative: `cumulative[i]` observations were `<= bounds[i]`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for c in &self.counts[..self.bounds.len()] {
            acc += c.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        let count = acc + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            cumulative,
            count,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_le_inclusive() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, [2, 3, 4]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 15.0).abs() < 1e-6);
    }
}
