//! Starts the real `appld` binary on port 0 and a temporary Unix socket, with the real demo
//! model, and connects to it as a client would.
//!
//! TCP is served as in production: TLS with client certificates. Each daemon gets its own site
//! CA and server certificate, made in the test ([`pki`]), and three mapped client identities:
//! `e2e-inference` (tenant `default`), `e2e-operator` and `e2e-auditor`. The Unix socket
//! caller is root, an admin. `Opts::plaintext_tcp` opts into plaintext TCP instead.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use appl_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

#[path = "pki.rs"]
pub mod pki;

use pki::{Ca, ClientCert};

/// The client identities every test daemon maps: CN, tenant, roles.
pub const IDENTITIES: [(&str, &str, &str); 3] = [
    ("e2e-inference", "default", "\"inference\""),
    ("e2e-operator", "default", "\"operator\""),
    ("e2e-auditor", "default", "\"auditor\""),
];

pub const APPLD: &str = env!("CARGO_BIN_EXE_appld");

/// The demo model. CI fetches it with scripts/fetch-model.sh; `APPL_TEST_MODEL` overrides.
pub fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("APPL_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    let p = cache.join("appl/models/gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.exists(),
        "the demo model is missing at {}; run scripts/fetch-model.sh first (or set APPL_TEST_MODEL)",
        p.display()
    );
    p
}

/// Model settings for a test daemon.
#[derive(Debug, Clone)]
pub struct Opts {
    pub slots: u32,
    pub ctx_per_slot: u32,
    pub max_tokens_cap: u32,
    pub queue_capacity: u32,
    pub model_path: PathBuf,
    /// The audit store; `None` puts it in the daemon's temporary directory.
    pub audit_dir: Option<PathBuf>,
    /// TOML appended to the config, such as `[queue]` or `[[tenants]]` tables.
    pub extra_config: String,
    /// llama.cpp threads (1 in tests, which run two daemons at a time).
    pub threads: u32,
    /// `server.drain_timeout_secs`.
    pub drain_timeout_secs: u64,
    /// The daemon's `RUST_LOG` filter.
    pub log_filter: String,
    /// Serve TCP without TLS (`tls.insecure_plaintext`).
    pub plaintext_tcp: bool,
    /// More `[tls]` keys, such as `client_certs = "optional"`.
    pub tls_extra: String,
    /// `server.socket_mode`.
    pub socket_mode: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            slots: 4,
            ctx_per_slot: 512,
            max_tokens_cap: 512,
            queue_capacity: 64,
            model_path: model_path(),
            audit_dir: None,
            extra_config: String::new(),
            threads: 1,
            drain_timeout_secs: 30,
            log_filter: "info,llama.cpp=warn,ggml=warn".to_owned(),
            plaintext_tcp: false,
            tls_extra: String::new(),
            socket_mode: 0o660,
        }
    }
}

/// The config text for a test daemon in `dir`.
pub fn config_text(dir: &Path, o: &Opts) -> String {
    // One llama.cpp thread per daemon: tests run two at a time on small CI machines, and
    // oversubscribed OpenMP threads spin instead of working.
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
socket = "{socket}"
socket_mode = {socket_mode:#o}
metrics_listen = "127.0.0.1:0"
drain_timeout_secs = {drain}

[limits]
max_tokens_cap = {cap}
default_max_tokens = 32
queue_capacity = {queue}

[log]
format = "json"

[audit]
dir = "{audit}"

[[models]]
id = "gemma-3-270m"
path = "{model}"
slots = {slots}
ctx_per_slot = {ctx}
batch_tokens = 256
threads = {threads}
chat_template = "gemma"

{tls}
{extra}
"#,
        tls = tls_config(dir, o),
        extra = o.extra_config,
        socket = dir.join("appld.sock").display(),
        socket_mode = o.socket_mode,
        audit = o
            .audit_dir
            .clone()
            .unwrap_or_else(|| dir.join("audit"))
            .display(),
        cap = o.max_tokens_cap,
        queue = o.queue_capacity,
        model = o.model_path.display(),
        slots = o.slots,
        ctx = o.ctx_per_slot,
        threads = o.threads,
        drain = o.drain_timeout_secs,
    )
}

/// A site CA, its certificate in `dir/ca.crt`, and the server's certificate and key in
/// `dir/server.crt` and `dir/server.key`.
pub fn write_pki(dir: &Path) -> Ca {
    let ca = Ca::new("appl e2e site CA");
    let (cert, key) = ca.server();
    std::fs::write(dir.join("ca.crt"), &ca.pem).expect("write CA");
    std::fs::write(dir.join("server.crt"), cert).expect("write server cert");
    std::fs::write(dir.join("server.key"), key).expect("write server key");
    ca
}

/// The `[tls]` table and the mapped identities of a test daemon in `dir`. Writes a site CA and
/// server certificate there first if there are none.
fn tls_config(dir: &Path, o: &Opts) -> String {
    if o.plaintext_tcp {
        return format!("[tls]\ninsecure_plaintext = true\n{}\n", o.tls_extra);
    }
    if !dir.join("server.crt").exists() {
        write_pki(dir);
    }
    let mut t = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{}\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display(),
        dir.join("ca.crt").display(),
        o.tls_extra
    );
    for (cn, tenant, roles) in IDENTITIES {
        t.push_str(&format!(
            "\n[[identities]]\ncn = \"{cn}\"\ntenant = \"{tenant}\"\nroles = [{roles}]\n"
        ));
    }
    t
}

/// The daemon caches the SHA-256 of each model file in its audit directory, keyed by the file's
/// identity (device, inode, size, mtime, ctime), and hashes a file it has no entry for. Hashing
/// the demo model takes seconds on a small machine, so the first daemon's cache is handed to
/// every later daemon of this test run; the daemon still checks that the file is the same.
static DIGEST_CACHE: Mutex<Option<Vec<u8>>> = Mutex::new(None);
const DIGEST_CACHE_FILE: &str = "model-sha256.cache.json";

fn seed_digest_cache(audit_dir: &Path) {
    let cached = DIGEST_CACHE.lock().expect("cache lock").clone();
    let target = audit_dir.join(DIGEST_CACHE_FILE);
    if let (Some(bytes), false) = (cached, target.exists()) {
        // Best effort: without it the daemon hashes the model itself.
        let _ = std::fs::create_dir_all(audit_dir).and_then(|()| std::fs::write(&target, bytes));
    }
}

fn keep_digest_cache(audit_dir: &Path) {
    let mut g = DIGEST_CACHE.lock().expect("cache lock");
    if g.is_none() {
        *g = std::fs::read(audit_dir.join(DIGEST_CACHE_FILE)).ok();
    }
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    /// The Prometheus metrics address.
    pub metrics: SocketAddr,
    /// The OpenAI-compatible HTTP API, when the config enables it (`[openai] listen`).
    pub openai: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The site CA of this daemon (none with plaintext TCP).
    pub ca: Option<Ca>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(Opts::default())
    }

    pub fn start_with(o: Opts) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = (!o.plaintext_tcp).then(|| write_pki(dir.path()));
        let config = dir.path().join("appld.toml");
        std::fs::write(&config, config_text(dir.path(), &o)).expect("write config");
        let audit_dir = o
            .audit_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("audit"));
        seed_digest_cache(&audit_dir);
        let mut child = Command::new(APPLD)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", &o.log_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn appld");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "ready" {
                            let _ = ready_tx.send((
                                v["tcp"].as_str().unwrap_or_default().to_owned(),
                                v["metrics"].as_str().unwrap_or_default().to_owned(),
                                v["openai"].as_str().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        let (tcp, metrics, openai) = match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok((addr, metrics, openai)) => (
                addr.parse().expect("ready line has a tcp address"),
                metrics.parse().expect("ready line has a metrics address"),
                openai.parse().ok(),
            ),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "appld did not become ready (exit status {status:?}); its log:\n{}",
                    logs.lock().expect("log lock").join("\n")
                );
            }
        };
        keep_digest_cache(&audit_dir);
        Daemon {
            child,
            socket: dir.path().join("appld.sock"),
            _dir: dir,
            tcp,
            metrics,
            openai,
            logs,
            ca,
        }
    }

    /// A client certificate from this daemon's CA (mapped when `cn` is one of [`IDENTITIES`]).
    pub fn client_cert(&self, cn: &str) -> ClientCert {
        self.ca.as_ref().expect("the daemon serves TLS").client(cn)
    }

    /// A channel over TCP with TLS, presenting `client` (or no certificate).
    pub async fn tls_channel(
        &self,
        client: Option<&ClientCert>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = &self.ca.as_ref().expect("the daemon serves TLS").pem;
        appl_proto::client::connect_tls(&self.tcp.to_string(), &pki::tls_client(ca, client)).await
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP and waits for the reload's outcome in the log ("config reloaded" or "config
    /// reload refused"); returns that log line.
    pub fn reload(&self) -> String {
        let seen = self.logs.lock().expect("log lock").len();
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGHUP");
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.logs.lock().expect("log lock")[seen..]
                .iter()
                .find(|l| l.contains("config reload"))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "no reload outcome in the log within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Prometheus text from `GET /metrics`.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).expect("connect to metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("send scrape");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read scrape");
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
        out
    }

    /// The value of one metric line (`name{labels}`, exactly as exposed).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.scrape();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
    }

    /// A channel over the daemon's Unix socket.
    pub async fn channel(&self) -> Channel {
        appl_proto::client::connect_unix(&self.socket)
            .await
            .expect("connect over the unix socket")
    }

    /// A channel over TCP: mTLS as `e2e-inference`, or plaintext when the daemon serves it.
    pub async fn tcp_channel(&self) -> Channel {
        if self.ca.is_none() {
            return Endpoint::from_shared(format!("http://{}", self.tcp))
                .expect("uri")
                .connect()
                .await
                .expect("connect over tcp");
        }
        let cert = self.client_cert("e2e-inference");
        self.tls_channel(Some(&cert))
            .await
            .expect("connect over tcp with mTLS")
    }

    pub async fn inference(&self) -> pb::inference_client::InferenceClient<Channel> {
        pb::inference_client::InferenceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel().await)
    }

    /// The engine status of the (only) model.
    pub async fn engine_status(&self) -> pb::EngineStatus {
        self.admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("Admin.Status")
            .into_inner()
            .engines
            .remove(0)
    }

    /// The daemon's temporary directory: config, socket and (by default) the audit store.
    pub fn state_dir(&self) -> &Path {
        self._dir.path()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop) and returns the exit code. The state directory stays
    /// until the `Daemon` is dropped.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGTERM to appld {pid}");
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => panic!(
                    "appld did not stop within 60 s of SIGTERM; its log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A greedy request for the demo model.
pub fn greedy(prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: "gemma-3-270m".into(),
        prompt: prompt.into(),
        sampling: Some(pb::SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        max_tokens: Some(max_tokens),
        stop: vec![],
        ..Default::default()
    }
}

/// The `applctl` binary that `cargo test --workspace` builds beside `appld`.
pub fn applctl() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    assert!(
        p.exists(),
        "{} is missing; build the workspace first (cargo build --workspace --all-targets)",
        p.display()
    );
    p
}

/// Runs appld with a config and returns its exit code and stderr.
pub fn run_appld(args: &[&str]) -> (i32, String) {
    let out = Command::new(APPLD).args(args).output().expect("run appld");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
