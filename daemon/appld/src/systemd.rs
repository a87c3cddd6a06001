//! systemd's notify protocol, without libsystemd: readiness, status, stopping and watchdog
//! pings as datagrams to `$NOTIFY_SOCKET` (sd_notify(3)). Outside systemd every call is a no-op.
//!
//! The daemon sends `READY=1` only once its sockets are bound, the audit store is open and every
//! model is loaded; `STATUS=` while models load; `STOPPING=1` when SIGTERM arrives. The watchdog
//! pinger ([`spawn_watchdog`]) pings only while the caller's health check passes, so a wedged
//! engine stops the pings and systemd restarts the daemon.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{debug, warn};

/// Where notifications go, if anywhere, and the watchdog interval systemd asked for.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<SocketAddr>,
    watchdog: Option<Duration>,
    /// `READY=1` was sent.
    ready: AtomicBool,
    /// `STOPPING=1` was sent: the drain's line stands from then on.
    stopping: AtomicBool,
    /// The last `STATUS=` line sent, so that the same line is not sent twice.
    status: Mutex<String>,
}

/// The environment variables the protocol reads.
#[derive(Debug, Default, Clone)]
pub struct NotifyEnv {
    pub notify_socket: Option<OsString>,
    pub watchdog_usec: Option<OsString>,
    pub watchdog_pid: Option<OsString>,
}

impl NotifyEnv {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_process() -> NotifyEnv {
        NotifyEnv {
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: std::env::var_os("WATCHDOG_USEC"),
            watchdog_pid: std::env::var_os("WATCHDOG_PID"),
        }
    }
}

impl Notifier {
    /// A notifier for this process's environment.
    pub fn from_env() -> Notifier {
        Notifier::new(&NotifyEnv::from_process(), std::process::id())
    }

    /// A notifier for the given variables, as seen by process `pid`. A `NOTIFY_SOCKET` that
    /// starts with `@` names an abstract socket. The watchdog applies only when `WATCHDOG_PID`
    /// is unset or names `pid`, as sd_watchdog_enabled(3) specifies.
    pub fn new(env: &NotifyEnv, pid: u32) -> Notifier {
        let target = env
            .notify_socket
            .as_ref()
            .filter(|s| !s.is_empty())
            .and_then(|s| match socket_addr(s) {
                Ok(a) => Some(a),
                Err(e) => {
                    warn!(target: "systemd", socket = ?s, error = %e, "NOTIFY_SOCKET is not usable; not notifying systemd");
                    None
                }
            });
        let for_us = match env.watchdog_pid.as_ref().and_then(|p| p.to_str()) {
            None => env.watchdog_pid.is_none(),
            Some(p) => p.trim().parse::<u32>() == Ok(pid),
        };
        let watchdog = env
            .watchdog_usec
            .as_ref()
            .and_then(|u| u.to_str())
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        let watchdog = watchdog.filter(|_| target.is_some());
        Notifier {
            target,
            watchdog,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            status: Mutex::new(String::new()),
        }
    }

    /// Whether systemd is listening.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The interval systemd expects pings within (`WatchdogSec=`), if the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.ready.store(true, Ordering::Relaxed);
        self.send(&format!("READY=1\nSTATUS={}", self.remember(status)));
    }

    /// `STATUS=`: a line `systemctl status` shows. Not sent again when it is already shown.
    pub fn status(&self, status: &str) {
        let line = one_line(status);
        if *self.status.lock().unwrap_or_else(PoisonError::into_inner) == line {
            return;
        }
        self.send(&format!("STATUS={}", self.remember(status)));
    }

    /// `STOPPING=1`, with a status line.
    pub fn stopping(&self, status: &str) {
        self.stopping.store(true, Ordering::Relaxed);
        self.send(&format!("STOPPING=1\nSTATUS={}", self.remember(status)));
    }

    /// Records `status` as the line systemd shows, and returns it as one line.
    fn remember(&self, status: &str) -> String {
        let line = one_line(status);
        line.clone_into(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
        line
    }

    /// `WATCHDOG=1`: the daemon is alive.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, msg: &str) {
        let Some(addr) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(msg.as_bytes(), addr));
        match sent {
            Ok(_) => debug!(target: "systemd", message = %msg.replace('\n', " "), "notified"),
            Err(e) => warn!(target: "systemd", error = %e, "cannot notify systemd"),
        }
    }
}

fn socket_addr(s: &OsString) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = s.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(s)
    }
}

/// A status value cannot span lines: the protocol is one assignment per line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Pings the watchdog at half its interval for as long as `healthy()` says yes. When it says
/// no, the pings stop (and a warning is logged once per episode), so systemd's watchdog fires
/// and, with `Restart=on-failure`, restarts the daemon. Returns `None` when systemd set no
/// watchdog; the owner aborts the returned task when the daemon stops.
pub fn spawn_watchdog<F>(notifier: Arc<Notifier>, healthy: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let interval = notifier.watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = true;
        loop {
            tick.tick().await;
            let ok = healthy();
            if ok {
                notifier.watchdog_ping();
            } else if was_healthy {
                warn!(target: "systemd", "health check failed; not pinging the watchdog, so systemd will restart appld if it stays so");
            }
            was_healthy = ok;
        }
    }))
}

/// Keeps systemd's `STATUS=` line current: what the registry is loading or changing, with its
/// progress, or how many models are served. Sends only changes; the owner aborts the task when
/// the daemon stops.
pub fn spawn_status(
    notifier: Arc<Notifier>,
    registry: Arc<crate::registry::Registry>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !notifier.is_active() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if notifier.stopping.load(Ordering::Relaxed) {
                return;
            }
            let line = match registry.status_line() {
                Some(activity) => activity,
                None if notifier.ready.load(Ordering::Relaxed) => {
                    crate::serve::serving_line(&registry)
                }
                // Before the first model load starts: the binary's own line stands.
                None => continue,
            };
            notifier.status(&line);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn env(socket: &str) -> NotifyEnv {
        NotifyEnv {
            notify_socket: Some(socket.into()),
            ..NotifyEnv::default()
        }
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    #[test]
    fn sends_each_message_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let n = Notifier::new(&env(path.to_str().unwrap()), 1);
        assert!(n.is_active());
        n.status("loading model a (1/2)");
        n.ready("serving 2 models\nsecond line");
        n.stopping("draining");
        n.watchdog_ping();
        assert_eq!(recv(&sock), "STATUS=loading model a (1/2)");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving 2 models second line");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=draining");
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn a_status_line_already_shown_is_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let n = Notifier::new(&env(path.to_str().unwrap()), 1);
        n.status("loading a");
        n.status("loading a");
        n.ready("serving 1 model");
        n.status("serving 1 model");
        n.status("loading b");
        n.watchdog_ping();
        assert_eq!(recv(&sock), "STATUS=loading a");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving 1 model");
        assert_eq!(recv(&sock), "STATUS=loading b");
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("appl-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notifier::new(&env(&format!("@{name}")), 1).ready("up");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=up");
    }

    #[test]
    fn outside_systemd_nothing_is_sent_and_nothing_fails() {
        for e in [NotifyEnv::default(), env("")] {
            let n = Notifier::new(&e, 1);
            assert!(!n.is_active());
            assert_eq!(n.watchdog_interval(), None);
            n.ready("x");
            n.watchdog_ping();
        }
        // A socket nobody listens on: the daemon carries on.
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(&env(dir.path().join("gone").to_str().unwrap()), 1);
        n.ready("x");
    }

    #[test]
    fn the_watchdog_interval_follows_watchdog_usec_and_pid() {
        let cases: &[(Option<&str>, Option<&str>, Option<Duration>)] = &[
            (Some("30000000"), None, Some(Duration::from_secs(30))),
            (Some("30000000"), Some("42"), Some(Duration::from_secs(30))),
            (Some("30000000"), Some("43"), None),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, Some("42"), None),
        ];
        for (usec, pid, want) in cases {
            let e = NotifyEnv {
                notify_socket: Some("/run/systemd/notify".into()),
                watchdog_usec: usec.map(OsString::from),
                watchdog_pid: pid.map(OsString::from),
            };
            assert_eq!(
                Notifier::new(&e, 42).watchdog_interval(),
                *want,
                "{usec:?} {pid:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_watchdog_pings_only_while_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let e = NotifyEnv {
            notify_socket: Some(path.clone().into()),
            watchdog_usec: Some("20000".into()),
            watchdog_pid: None,
        };
        let notifier = Arc::new(Notifier::new(&e, 1));
        // Healthy for the first three checks, then wedged. Pings follow the checks one to one,
        // so the count is exact however slowly the machine runs.
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let task = spawn_watchdog(notifier, move || counted.fetch_add(1, Ordering::SeqCst) < 3)
            .expect("a watchdog");
        while calls.load(Ordering::SeqCst) < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        sock.set_nonblocking(true).unwrap();
        let mut pings = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
        assert_eq!(pings, 3);
    }
}
