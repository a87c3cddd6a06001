//! The appl inference engine.
//!
//! One engine per loaded model. Each engine is a dedicated OS thread that owns the llama.cpp
//! context (which is not `Send`-safe to share) and a fixed set of sequence slots. It runs
//! continuous batching: every step builds one `llama_batch` that holds one token for each slot
//! that is generating plus chunks of new prompts being prefilled, up to a per-step token budget.
//! New requests join between steps; a finished, cancelled or expired request frees its slot at the
//! end of the step in which that is noticed.
//!
//! The async world talks to an engine only through channels: [`EngineHandle::submit`] sends a
//! [`Job`], and the job's [`Event`] channel carries text and the final [`Usage`] back. The engine
//! never blocks on the network. Tokenization and chat-template rendering need only the model, not
//! the context, so they run on the caller's thread through the shared model.
//!
//! Nothing here knows the wire format, and nothing here logs prompt or completion text.

pub mod admission;
pub mod backends;
pub mod calibrate;
mod load;
pub mod metrics;
mod progress;
pub mod sampler;
mod text;
mod thread;
mod worker;

/// Whether the calling thread is inside a step its engine cut short on purpose (see the
/// engine's interrupt module): llama.cpp's messages about that decode are expected, not errors.
pub use worker::cutting as step_cut_on_purpose;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use appl_firmware_profiles::sizing::Deployment;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use thread::{EngineThread, Msg};

pub use admission::{Priority, TenantId};
pub use metrics::{Histogram, HistogramSnapshot};
pub use progress::LoadProgress;
pub use text::{Pushed, TextStreamer};

/// Errors from loading a model or preparing a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("llama.cpp could not load {path} as a model; the file is not a complete, valid GGUF model (see the llama.cpp log lines before this one)")]
    ModelLoad { path: PathBuf },
    #[error("loading {path} was stopped before it finished")]
    LoadAborted { path: PathBuf },
    #[error("llama.cpp could not create a context for {path} with {n_ctx} tokens of KV cache; lower `slots` or `ctx_per_slot`")]
    Context { path: PathBuf, n_ctx: u32 },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("the engine thread for model {0} has stopped")]
    Stopped(String),
    #[error("model {model}: the request queue is full ({capacity} waiting); retry later")]
    QueueFull { model: String, capacity: u32 },
    #[error("the engine thread for model {model} did not stop within {waited:?}")]
    StopTimeout { model: String, waited: Duration },
}

/// Where the chat template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplateSpec {
    /// The template embedded in the GGUF file (`tokenizer.chat_template`).
    Embedded,
    /// One of llama.cpp's built-in templates by name, such as `gemma` or `chatml`.
    Named(String),
    /// A template read from a file. llama.cpp recognises the common Jinja templates by content.
    File(PathBuf),
}

/// Everything needed to load one model and run its engine.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub id: String,
    pub path: PathBuf,
    /// The llama.cpp context: slots, context per slot, batch sizes, KV layout and type, flash
    /// attention. The very value the sizing rules planned this model's memory with
    /// (`sizing::engine_deployment`), so the prediction and the allocation cannot differ.
    pub deployment: Deployment,
    /// CPU threads for llama.cpp.
    pub threads: u32,
    /// Layers to offload to a GPU (0 on a CPU build).
    pub gpu_layers: u32,
    pub chat_template: ChatTemplateSpec,
    /// Requests that may wait for a slot before new ones are refused.
    pub queue_capacity: u32,
    /// How the queue orders, pauses and reuses work.
    pub queue: QueuePolicy,
    /// Where loading reports its progress, and how it is told to give up.
    pub load_progress: LoadProgress,
}

impl ModelSpec {
    /// Sequence slots: how many requests generate at once.
    pub fn slots(&self) -> u32 {
        self.deployment.slots
    }

    /// Context of one slot, in tokens (prompt plus completion).
    pub fn ctx_per_slot(&self) -> u32 {
        self.deployment.ctx_per_slot
    }

    /// Most tokens one engine step carries (decode tokens plus prefill chunks).
    pub fn batch_tokens(&self) -> u32 {
        self.deployment.n_batch
    }
}

/// Scheduling settings of one engine (see [`admission`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Batch work that has waited this long (queued plus paused) goes before new interactive
    /// work and is no longer paused: the bound that keeps batch work from starving.
    pub batch_max_wait: Duration,
    /// Pause batch sequences for interactive requests when every slot is busy.
    pub preemption: bool,
    /// Reuse an idle slot's cached KV when a prompt shares at least this many leading tokens
    /// with it; 0 disables prefix reuse.
    pub prefix_reuse_min_tokens: u32,
    /// Cut a batch-only step short when an interactive request arrives during it; the batch
    /// rows run again in a later step (see `worker::interrupt`).
    pub interrupt_batch_steps: bool,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            batch_max_wait: Duration::from_secs(10),
            preemption: true,
            prefix_reuse_min_tokens: 16,
            interrupt_batch_steps: true,
        }
    }
}

/// Sampling settings, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Deadline,
    Error,
}

/// Token counts and timings of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub time_to_first_token: Duration,
    pub decode: Duration,
    pub queue: Duration,
    /// Prompt tokens served from a cached prefix instead of being prefilled.
    pub cached_prompt_tokens: u32,
    /// Times the request was paused for interactive work.
    pub preemptions: u32,
}

/// What an engine sends back for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text and the ids of the tokens it came from. Either may be empty: text can be held
    /// back while it may still begin a stop sequence or a UTF-8 character.
    Tokens { text: String, token_ids: Vec<i32> },
    /// The last event of a job.
    Done {
        reason: FinishReason,
        usage: Usage,
        /// Set when `reason` is [`FinishReason::Error`]; never contains request text.
        error: Option<String>,
    },
}

/// One generation request, tokenized and validated.
#[derive(Debug)]
pub struct Job {
    /// For logs only.
    pub request_id: String,
    pub prompt: Vec<i32>,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub deadline: Option<Instant>,
    /// When the daemon received the request; the base of time-to-first-token.
    pub received: Instant,
    pub priority: Priority,
    pub tenant: TenantId,
    /// The tenant's weight in fair sharing.
    pub weight: u32,
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// Counters an engine keeps, readable from any thread.
#[derive(Debug)]
pub struct EngineStats {
    pub steps: AtomicU64,
    pub max_batch_sequences: AtomicU32,
    pub busy_slots: AtomicU32,
    pub queued: AtomicU32,
    pub tokens_generated: AtomicU64,
    pub tokens_prefilled: AtomicU64,
    pub requests_completed: AtomicU64,
    pub queued_interactive: AtomicU32,
    pub queued_batch: AtomicU32,
    /// Batch sequences paused right now.
    pub paused: AtomicU32,
    pub preemptions: AtomicU64,
    /// Batch-only steps cut short for an interactive arrival.
    pub steps_interrupted: AtomicU64,
    pub tokens_prefix_reused: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    /// Requests whose deadline passed while they waited.
    pub expired_in_queue: AtomicU64,
    /// Receipt to first token, seconds.
    pub ttft: Histogram,
    /// Between consecutive tokens of one request, seconds.
    pub inter_token: Histogram,
    /// Sequences per engine step.
    pub batch_sequences: Histogram,
    /// When the engine loop last went round, in milliseconds since the engine started: the
    /// heartbeat a watchdog reads ([`EngineHandle::heartbeat`]).
    pub heartbeat_ms: AtomicU64,
    /// Interactive arrivals, for cutting a batch step short.
    pub(crate) interrupt: worker::Interrupt,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            steps: AtomicU64::new(0),
            max_batch_sequences: AtomicU32::new(0),
            busy_slots: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            tokens_generated: AtomicU64::new(0),
            tokens_prefilled: AtomicU64::new(0),
            requests_completed: AtomicU64::new(0),
            queued_interactive: AtomicU32::new(0),
            queued_batch: AtomicU32::new(0),
            paused: AtomicU32::new(0),
            preemptions: AtomicU64::new(0),
            steps_interrupted: AtomicU64::new(0),
            tokens_prefix_reused: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            expired_in_queue: AtomicU64::new(0),
            ttft: Histogram::new(metrics::LATENCY_BOUNDS),
            inter_token: Histogram::new(metrics::LATENCY_BOUNDS),
            batch_sequences: Histogram::new(metrics::BATCH_BOUNDS),
            heartbeat_ms: AtomicU64::new(0),
            interrupt: worker::Interrupt::default(),
        }
    }
}

/// A point-in-time copy of [`EngineStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub steps: u64,
    pub max_batch_sequences: u32,
    pub busy_slots: u32,
    pub queued: u32,
    pub tokens_generated: u64,
    pub tokens_prefilled: u64,
    pub requests_completed: u64,
    pub queued_interactive: u32,
    pub queued_batch: u32,
    pub paused: u32,
    pub preemptions: u64,
    pub steps_interrupted: u64,
    pub tokens_prefix_reused: u64,
    pub rejected_queue_full: u64,
    pub expired_in_queue: u64,
    pub ttft: HistogramSnapshot,
    pub inter_token: HistogramSnapshot,
    pub batch_sequences: HistogramSnapshot,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            steps: self.steps.load(Ordering::Relaxed),
            max_batch_sequences: self.max_batch_sequences.load(Ordering::Relaxed),
            busy_slots: self.busy_slots.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            tokens_generated: self.tokens_generated.load(Ordering::Relaxed),
            tokens_prefilled: self.tokens_prefilled.load(Ordering::Relaxed),
            requests_completed: self.requests_completed.load(Ordering::Relaxed),
            queued_interactive: self.queued_interactive.load(Ordering::Relaxed),
            queued_batch: self.queued_batch.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            preemptions: self.preemptions.load(Ordering::Relaxed),
            steps_interrupted: self.steps_interrupted.load(Ordering::Relaxed),
            tokens_prefix_reused: self.tokens_prefix_reused.load(Ordering::Relaxed),
            rejected_queue_full: self.rejected_queue_full.load(Ordering::Relaxed),
            expired_in_queue: self.expired_in_queue.load(Ordering::Relaxed),
            ttft: self.ttft.snapshot(),
            inter_token: self.inter_token.snapshot(),
            batch_sequences: self.batch_sequences.snapshot(),
        }
    }
}

/// Facts about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub n_ctx_train: u32,
    pub n_params: u64,
    pub size_bytes: u64,
    pub n_vocab: i32,
}

/// A chat message for template rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ModelSpec,
    model: Arc<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    facts: ModelFacts,
    tx: mpsc::Sender<Msg>,
    stats: Arc<EngineStats>,
    /// When the engine started; the base of [`EngineStats::heartbeat_ms`].
    started: Instant,
    thread: EngineThread,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.inner.spec.id)
            .finish_non_exhaustive()
    }
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// Whether llama.cpp has been initialised in this process.
fn backend_started() -> bool {
    BACKEND.get().is_some()
}

/// The process-wide llama.cpp backend. llama.cpp may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    backends::ready_to_start()?;
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

impl EngineHandle {
    /// Loads the model, creates its context and starts the engine thread. Returns once the model
    /// is ready to serve, or with an error that names the file.
    pub fn start(spec: ModelSpec) -> Result<Self, EngineError> {
        let backend = backend()?;
        let model = load::load_model(backend, &spec)?;
        let template = load::load_template(&model, &spec.chat_template)?;
        let facts = ModelFacts {
            n_ctx_train: model.n_ctx_train(),
            n_params: model.n_params(),
            size_bytes: model.size(),
            n_vocab: model.n_vocab(),
        };
        let model = Arc::new(model);
        let stats = Arc::new(EngineStats::default());
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let model = Arc::clone(&model);
            let stats = Arc::clone(&stats);
            let spec = spec.clone();
            EngineThread::spawn(format!("engine-{}", spec.id), move || {
                worker::run(backend, &model, &spec, &rx, &stats, started, &ready_tx)
            })
            .map_err(|e| EngineError::Backend(format!("spawning the engine thread: {e}")))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                thread.join_within(STOP_TIMEOUT);
                return Err(e);
            }
            Err(_) => return Err(EngineError::Stopped(spec.id)),
        }
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                model,
                template,
                facts,
                tx,
                stats,
                started,
                thread,
            }),
        })
    }

    /// Stops the engine and joins its thread: requests still queued, running or paused end
    /// as cancelled, and the llama.cpp context is freed on the engine thread. Waits at most
    /// `timeout` (one engine step finishes first). Later submits fail with
    /// [`EngineError::Stopped`]; calling it again is harmless.
    pub fn stop(&self, timeout: Duration) -> Result<(), EngineError> {
        // The thread may be gone already (stopped before); then there is nobody to tell.
        let _ = self.inner.tx.send(Msg::Stop);
        if self.inner.thread.join_within(timeout) {
            Ok(())
        } else {
            Err(EngineError::StopTimeout {
                model: self.inner.spec.id.clone(),
                waited: timeout,
            })
        }
    }

    /// When the engine loop last went round: at least every [`HEARTBEAT`] while idle, and at
    /// every step while busy. A watchdog that sees it stale knows the engine is wedged.
    pub fn heartbeat(&self) -> Instant {
        let ms = self.inner.stats.heartbeat_ms.load(Ordering::Relaxed);
        self.inner.started + Duration::from_millis(ms)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.inner.spec
    }

    pub fn facts(&self) -> &ModelFacts {
        &self.inner.facts
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Tokenizes text as generation does: with the model's BOS token, and with special-token
    /// text (such as `<start_of_turn>`) parsed into special tokens.
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.inner
            .model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The text of one token, with special tokens rendered.
    pub fn piece(&self, token: i32) -> String {
        let bytes = self
            .inner
            .model
            .vocab()
            .token_to_piece(LlamaToken(token), true, None);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Renders chat messages with the configured template, ending with the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let template = self.inner.template.as_ref().ok_or_else(|| {
            EngineError::ChatTemplate(format!(
                "model {} has no chat template; set `chat_template` for it in the config",
                self.inner.spec.id
            ))
        })?;
        let messages = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                EngineError::ChatTemplate("a message contains a NUL character".to_owned())
            })?;
        self.inner
            .model
            .apply_chat_template(template, &messages, true)
            .map_err(|e| EngineError::ChatTemplate(format!("rendering failed: {e}")))
    }

    /// Hands a job to the engine. Fails at once when the queue is full or the engine is gone.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        let queued = &self.inner.stats.queued;
        let capacity = self.inner.spec.queue_capacity;
        // Reserve a queue place first, so that the bound holds under concurrent submits.
        if queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < capacity).then_some(q + 1)
            })
            .is_err()
        {
            self.inner
                .stats
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull {
                model: self.inner.spec.id.clone(),
                capacity,
            });
        }
        let interactive = job.priority == Priority::Interactive;
        self.inner.tx.send(Msg::Job(Box::new(job))).map_err(|_| {
            queued.fetch_sub(1, Ordering::AcqRel);
            EngineError::Stopped(self.inner.spec.id.clone())
        })?;
        // After the send: the engine may cut its step only for a job it can already take.
        if interactive {
            self.inner.stats.interrupt.interactive_sent();
        }
        Ok(())
    }
}

/// How often an idle engine thread wakes to beat its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a failed start waits for the engine thread to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A count as a `u32`, saturating: token counts are `u32` in usage and records, lengths are
/// `usize`.
pub fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The GPU backends this engine was built with (`cuda`, `rocm`, `vulkan`,
/// `dynamic-backends`); empty for the CPU build. For diagnostics and `Admin.Status`.
pub fn build_features() -> Vec<&'static str> {
    [
        ("cuda", cfg!(feature = "cuda")),
        ("rocm", cfg!(feature = "rocm")),
        ("vulkan", cfg!(feature = "vulkan")),
        ("dynamic-backends", cfg!(feature = "dynamic-backends")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// Whether this build of llama.cpp can offload layers to a GPU (a CUDA, ROCm or Vulkan build).
pub fn gpu_offload_supported() -> Result<bool, EngineError> {
    Ok(backend()?.supports_gpu_offload())
}

/// Physical CPU cores, the default thread count: llama.cpp's decode is memory-bound, and SMT
/// siblings or oversubscription slow it down.
pub fn physical_cores() -> u32 {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut physical = None;
    for line in cpuinfo.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => physical = Some(v.to_owned()),
            (Some("core id"), Some(v)) => {
                cores.insert((physical.clone(), v.to_owned()));
            }
            _ => {}
        }
    }
    match u32::try_from(cores.len()) {
        Ok(n) if n > 0 => n.min(logical),
        _ => logical,
    }
}
