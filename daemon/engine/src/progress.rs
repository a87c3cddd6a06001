//! Load progress, shared between whoever loads a model and whoever watches: llama.cpp reports
//! the fraction of the model's tensor data it has read, and the watcher may ask it to give up
//! (the daemon is stopping), which llama.cpp honours at its next progress report.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// A model load's progress and its abort switch. Cheap to clone; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct LoadProgress(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Thousandths of the tensor data read.
    permille: AtomicU32,
    abort: AtomicBool,
}

impl LoadProgress {
    /// The fraction of the tensor data read so far, 0 to 1.
    pub fn fraction(&self) -> f64 {
        f64::from(self.0.permille.load(Ordering::Relaxed)) / 1000.0
    }

    /// Records llama.cpp's progress report; returns whether loading should go on.
    pub(crate) fn report(&self, fraction: f32) -> bool {
        let p = (fraction.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.0.permille.fetch_max(p, Ordering::Relaxed);
        !self.is_aborted()
    }

    /// Asks the load to stop at llama.cpp's next progress report.
    pub fn abort(&self) {
        self.0.abort.store(true, Ordering::Relaxed);
    }

    pub fn is_aborted(&self) -> bool {
        self.0.abort.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_moves_forward_and_abort_is_seen() {
        let p = LoadProgress::default();
        assert!(p.report(0.5));
        assert!(p.report(0.25));
        assert!((p.fraction() - 0.5).abs() < 1e-9);
        let watcher = p.clone();
        watcher.abort();
        assert!(!p.report(0.75), "an aborted load is told to stop");
    }
}
