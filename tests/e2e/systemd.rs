//! systemd's notify protocol with the real daemon: under a `NOTIFY_SOCKET` the test binds,
//! appld reports its start-up steps as `STATUS=` (the model load with its progress), sends
//! `READY=1` only when it serves (a request sent the moment READY=1 arrives is answered), pings
//! the watchdog `WATCHDOG_USEC` asks for while its engine runs, and sends `STOPPING=1` on
//! SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{config_text, Opts, APPLD};

/// Kills the daemon if the test fails before it stops it.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn reports_progress_then_ready_when_serving_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("appld.toml");
    std::fs::write(&config, config_text(dir.path(), &Opts::default())).unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    // Loading the model is the slow part; a busy CI machine gets two minutes.
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut child = Reap(
        Command::new(APPLD)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            // Pings every 2 s while every engine's loop went round within 4 s.
            .env("WATCHDOG_USEC", "4000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn appld"),
    );

    let mut before_ready = Vec::new();
    let ready = loop {
        let msg = recv(&sock);
        if msg.lines().any(|l| l == "READY=1") {
            break msg;
        }
        before_ready.push(msg);
    };
    // Ready means serving: the model answers a request sent right now.
    let applctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    let out = Command::new(&applctl)
        .arg("--socket")
        .arg(dir.path().join("appld.sock"))
        .args(["generate", "Once upon a time", "--max-tokens", "4"])
        .args(["--temperature", "0"])
        .env_remove("APPL_ADDR")
        .output()
        .expect("run applctl (build the workspace first)");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "a request right after READY=1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let steps: Vec<&str> = before_ready.iter().map(String::as_str).collect();
    assert_eq!(
        steps[..3],
        [
            "STATUS=binding sockets",
            "STATUS=opening the audit log",
            "STATUS=loading model gemma-3-270m",
        ],
        "{steps:?}"
    );
    // Then the load's progress, as often as it was sampled (none on a fast machine).
    for s in &steps[3..] {
        assert!(s.starts_with("STATUS=loading gemma-3-270m: "), "{steps:?}");
    }
    assert_eq!(ready, "READY=1\nSTATUS=serving 1 model");

    // The watchdog: pinged while the engine runs (its idle loop wakes every second).
    let mut seen = Vec::new();
    loop {
        let msg = recv(&sock);
        if msg == "WATCHDOG=1" {
            break;
        }
        seen.push(msg);
        assert!(seen.len() < 20, "no watchdog ping: {seen:?}");
    }

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = loop {
        let msg = recv(&sock);
        if msg != "WATCHDOG=1" {
            break msg;
        }
    };
    assert_eq!(
        stopping,
        "STOPPING=1\nSTATUS=draining: finishing requests in flight"
    );
    // The exit code after a drain is the stop tests' business (tests/e2e/startup.rs).
    let _ = child.0.wait();
}
