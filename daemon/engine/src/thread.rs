//! The engine thread's owner. A thread that runs llama.cpp must be stopped and joined before the
//! process exits: one still inside `llama_decode` while `exit()` runs the C++ static destructors
//! crashes the process. [`EngineThread`] is the only handle that can join it, and it joins with
//! a timeout, so a stop never hangs forever.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Job;

/// What the engine thread receives.
pub(crate) enum Msg {
    /// A request to serve.
    Job(Box<Job>),
    /// End every request, free the context and return.
    Stop,
}

/// Set by the thread when it leaves its function, whether it returned or panicked.
#[derive(Default)]
struct Exited {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Marks the thread exited when dropped, so that a panic counts too.
struct ExitGuard(Arc<Exited>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        *self.0.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.cv.notify_all();
    }
}

/// Owns a spawned thread; joins it (once) within a timeout.
pub(crate) struct EngineThread {
    handle: Mutex<Option<JoinHandle<()>>>,
    exited: Arc<Exited>,
}

impl EngineThread {
    pub(crate) fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<Self> {
        let exited = Arc::new(Exited::default());
        let guard = ExitGuard(Arc::clone(&exited));
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _guard = guard;
            f();
        })?;
        Ok(Self {
            handle: Mutex::new(Some(handle)),
            exited,
        })
    }

    /// Waits up to `timeout` for the thread to leave its function, then joins it. True once it
    /// has been joined (now or by an earlier call); false if it is still running.
    pub(crate) fn join_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = self
            .exited
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .exited
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(done);
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            // The thread has left its function, so this returns at once. A panic in it was
            // already reported by the panic hook; the thread is gone either way.
            let _ = h.join();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn joins_a_thread_that_stops_and_times_out_on_one_that_does_not() {
        let (tx, rx) = mpsc::channel::<()>();
        let t = EngineThread::spawn("test".into(), move || {
            let _ = rx.recv();
        })
        .expect("spawn");
        assert!(!t.join_within(Duration::from_millis(20)), "still running");
        drop(tx);
        assert!(t.join_within(Duration::from_secs(10)), "stopped and joined");
        assert!(t.join_within(Duration::ZERO), "joining again is a no-op");
    }

    #[test]
    fn a_panicking_thread_counts_as_exited() {
        let t = EngineThread::spawn("test-panic".into(), || panic!("engine bug")).expect("spawn");
        assert!(t.join_within(Duration::from_secs(10)));
    }
}
