//! The progress line a benchmark draws on stderr while it runs, only when stderr is a terminal
//! (scripts and `--json` consumers see nothing on stderr but errors).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters the streams update and the drawer reads.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub tokens: AtomicU64,
}

/// How far the run goes: a number of requests or a time.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    Requests(u64),
    Duration(Duration),
}

const WIDTH: usize = 30;

/// One line of progress: a bar, requests, tokens per second, errors.
pub fn line(goal: Goal, c: &Counters, elapsed: Duration) -> String {
    let ok = c.ok.load(Ordering::Relaxed);
    let failed = c.failed.load(Ordering::Relaxed);
    let tokens = c.tokens.load(Ordering::Relaxed);
    let fraction = match goal {
        Goal::Requests(n) if n > 0 => (ok + failed) as f64 / n as f64,
        Goal::Duration(d) if !d.is_zero() => elapsed.as_secs_f64() / d.as_secs_f64(),
        _ => 1.0,
    }
    .clamp(0.0, 1.0);
    let filled = (fraction * WIDTH as f64).round() as usize;
    let rate = if elapsed.as_secs_f64() > 0.0 {
        tokens as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let count = match goal {
        Goal::Requests(n) => format!("{}/{n} requests", ok + failed),
        Goal::Duration(d) => format!(
            "{:.0}/{:.0} s, {} requests",
            elapsed.as_secs_f64(),
            d.as_secs_f64(),
            ok + failed
        ),
    };
    format!(
        "[{}{}] {count}, {rate:.1} tok/s, {failed} failed",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled)
    )
}

/// Draws the line every 250 ms until `stop` resolves, then clears it. Does nothing when stderr
/// is not a terminal.
pub async fn draw(
    goal: Goal,
    counters: Arc<Counters>,
    started: Instant,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let l = line(goal, &counters, started.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{l}\x1b[K");
                let _ = err.flush();
            }
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_share_done_the_rate_and_failures() {
        let c = Counters::default();
        c.ok.store(3, Ordering::Relaxed);
        c.failed.store(1, Ordering::Relaxed);
        c.tokens.store(200, Ordering::Relaxed);
        let l = line(Goal::Requests(8), &c, Duration::from_secs(2));
        assert!(
            l.starts_with(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))),
            "{l}"
        );
        assert!(l.contains("4/8 requests, 100.0 tok/s, 1 failed"), "{l}");
        let l = line(
            Goal::Duration(Duration::from_secs(10)),
            &c,
            Duration::from_secs(20),
        );
        assert!(l.starts_with(&format!("[{}]", "#".repeat(WIDTH))), "{l}");
    }
}
