//! Cutting a batch-only step short when an interactive request arrives.
//!
//! On a CPU, one decode step of eight batch streams can take as long as an interactive request's
//! whole prefill (about 106 ms against 93 ms on the 2-core test machine, `bench/RESULTS.md`). An
//! interactive request that arrives mid-step would wait out the rest of that step before the
//! engine even sees it. llama.cpp asks an abort callback between graph nodes; when it says stop,
//! `llama_decode` returns 2 and removes the aborted micro-batch's positions from the KV cache.
//! The engine then puts every slot of the step back exactly as it was (pending token, position,
//! history, prompt progress) and serves the interactive request first; the batch rows run again
//! in a later step, with the same result.
//!
//! Only steps with no interactive row, that fit in one micro-batch, are ever cut: llama.cpp undoes
//! only the last micro-batch, and an interactive request must never delay another.
//!
//! The engine knows of an arrival only through this module's counters: a submit counts an
//! interactive job after sending it, the engine counts the ones it takes from its channel, and
//! the callback stops the step while the first count is ahead.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use llama_cpp_2::context::LlamaContext;

/// Shared by an engine's handles (which count arrivals) and its thread.
#[derive(Debug, Default)]
pub struct Interrupt {
    sent: AtomicU64,
    taken: AtomicU64,
    armed: AtomicBool,
}

thread_local! {
    /// Set on the engine thread when its callback stopped a step on purpose, until the engine
    /// has handled it: llama.cpp's own messages about that decode are then expected, not errors.
    static CUTTING: Cell<bool> = const { Cell::new(false) };
}

impl Interrupt {
    /// An interactive job was handed to the engine's channel.
    pub(crate) fn interactive_sent(&self) {
        self.sent.fetch_add(1, Ordering::Release);
    }

    /// The engine took an interactive job from its channel.
    pub(super) fn interactive_taken(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the next `llama_decode` may be cut short.
    pub(super) fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::Relaxed);
    }

    fn wanted(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
            && self.sent.load(Ordering::Acquire) > self.taken.load(Ordering::Relaxed)
    }
}

/// Whether this thread is inside a decode that its engine stopped on purpose.
pub fn cutting() -> bool {
    CUTTING.with(Cell::get)
}

/// The engine has handled the stopped step.
pub(super) fn cut_handled() {
    CUTTING.with(|c| c.set(false));
}

extern "C" fn should_abort(data: *mut c_void) -> bool {
    // SAFETY: `install` registers a pointer to an `Interrupt` that outlives the context.
    let interrupt = unsafe { &*data.cast::<Interrupt>() };
    let stop = interrupt.wanted();
    if stop {
        CUTTING.with(|c| c.set(true));
    }
    stop
}

/// llama-cpp-2 (pinned at 0.1.160) keeps its `llama_context` pointer private and does not wrap
/// `llama_set_abort_callback`; its `Debug` output, `LlamaContext { context: 0x… }`, is where the
/// pointer shows. Anything else yields `None`, and steps are then never cut.
fn context_pointer(debug: &str) -> Option<usize> {
    let hex = debug
        .strip_prefix("LlamaContext { context: 0x")?
        .strip_suffix(" }")?;
    usize::from_str_radix(hex, 16).ok().filter(|&a| a != 0)
}

/// Registers the abort callback on `ctx`. `interrupt` must outlive `ctx`: the engine's context
/// is dropped before its stats are. Returns whether steps can be cut.
pub(super) fn install(ctx: &mut LlamaContext<'_>, interrupt: &Interrupt) -> bool {
    let Some(addr) = context_pointer(&format!("{ctx:?}")) else {
        return false;
    };
    let raw = addr as *mut llama_cpp_sys_2::llama_context;
    // SAFETY: `raw` is the live context that `ctx` owns (read from its own Debug output, checked
    // below against a value read through the safe API), and `interrupt` outlives it.
    unsafe {
        if llama_cpp_sys_2::llama_n_ctx(raw) != ctx.n_ctx() {
            return false;
        }
        llama_cpp_sys_2::llama_set_abort_callback(
            raw,
            Some(should_abort),
            std::ptr::from_ref(interrupt).cast_mut().cast(),
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_pointer_is_read_from_the_debug_output_only_in_its_exact_form() {
        assert_eq!(
            context_pointer("LlamaContext { context: 0x55d1c0a4e2f0 }"),
            Some(0x55d1_c0a4_e2f0)
        );
        for other in [
            "LlamaContext { context: 0x0 }",
            "LlamaContext { context: 0x55d1c0a4e2f0, n: 1 }",
            "LlamaContext { ctx: 0x55d1c0a4e2f0 }",
            "LlamaContext { context: 55d1c0a4e2f0 }",
            "",
        ] {
            assert_eq!(context_pointer(other), None, "{other}");
        }
    }

    #[test]
    fn a_step_is_cut_only_when_armed_and_an_interactive_job_is_not_yet_taken() {
        let i = Interrupt::default();
        assert!(!i.wanted());
        i.interactive_sent();
        assert!(!i.wanted(), "not armed");
        i.arm(true);
        assert!(i.wanted());
        i.interactive_taken();
        assert!(!i.wanted(), "the engine has it");
        // A job taken before its submit counted it: never a spurious cut.
        i.interactive_taken();
        i.interactive_sent();
        assert!(!i.wanted());
    }

    #[test]
    fn the_callback_marks_the_thread_until_the_cut_is_handled() {
        let i = Interrupt::default();
        i.arm(true);
        i.interactive_sent();
        let data = std::ptr::from_ref(&i).cast_mut().cast();
        assert!(should_abort(data));
        assert!(cutting());
        cut_handled();
        assert!(!cutting());
        i.interactive_taken();
        assert!(!should_abort(data));
        assert!(!cutting());
    }
}
