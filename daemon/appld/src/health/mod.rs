//! Live hardware health while the daemon serves: a sampler thread reads every GPU (NVML on
//! NVIDIA, sysfs on AMD, or a recorded file), host memory and the daemon's own resident set
//! every `health.interval_ms`, and publishes the sample for `Admin.Status` and the metrics.
//!
//! The sampler never touches an engine thread or a lock an engine thread takes: it shares only
//! [`HealthState`] (read by status and metrics) and a channel of new faults. A fault
//! (uncorrectable ECC, a fatal XID) is latched per GPU for the life of the daemon: a GPU needs a
//! reset after one, and a reset needs every process off it. `faults.rs` takes the models on
//! that GPU out of service; `metrics.rs` renders the sample for Prometheus.
//!
//! The thread (`health-sampler`) is owned by [`HealthSampler`], which `serve` stops and joins
//! once the engines have stopped, before the audit log closes.

pub mod faults;
pub mod metrics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use appl_firmware_profiles::health::{
    self as hw, host::sample_host, recorded::RecordedHealth, GpuFault, GpuHealth, HealthSource,
    HostHealth,
};
use appl_firmware_profiles::inventory::Inventory;
use tracing::{error, info, warn};

use crate::ops_config::HealthConfig;

/// One health sample.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    /// When it was taken; `None` before the first sample.
    pub taken: Option<SystemTime>,
    /// The GPUs, numbered as the sizing inventory numbers them.
    pub gpus: Vec<GpuHealth>,
    pub host: HostHealth,
    /// Sources or readings that failed.
    pub errors: Vec<String>,
    /// How long taking it took.
    pub took: Duration,
}

/// A GPU's latched faults.
#[derive(Debug, Clone)]
pub struct Latched {
    pub name: String,
    pub faults: Vec<GpuFault>,
    pub since: SystemTime,
}

/// A fault seen for the first time.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub gpu: u32,
    pub gpu_name: String,
    pub fault: GpuFault,
}

/// What the sampler publishes; read by status, metrics and model loads.
#[derive(Debug, Default)]
pub struct HealthState {
    latest: RwLock<Arc<HealthSnapshot>>,
    latched: Mutex<BTreeMap<u32, Latched>>,
    /// Critical XID events seen since the daemon started, by (GPU, XID).
    xids: Mutex<BTreeMap<(u32, u64), u64>>,
    pub samples: AtomicU64,
    pub sample_errors: AtomicU64,
}

impl HealthState {
    /// The latest sample.
    pub fn latest(&self) -> Arc<HealthSnapshot> {
        Arc::clone(&self.latest.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The first fault latched on `gpu`, if any.
    pub fn latched(&self, gpu: u32) -> Option<GpuFault> {
        self.latched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&gpu)
            .and_then(|l| l.faults.first().copied())
    }

    /// Every GPU with a latched fault.
    pub fn latched_all(&self) -> BTreeMap<u32, Latched> {
        self.latched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Critical XID events so far, by (GPU, XID).
    pub fn xid_counts(&self) -> BTreeMap<(u32, u64), u64> {
        self.xids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a sample and latches its faults; returns the ones not seen before.
    pub fn record(&self, snap: HealthSnapshot) -> Vec<FaultEvent> {
        let mut new = Vec::new();
        {
            let mut latched = self.latched.lock().unwrap_or_else(PoisonError::into_inner);
            let mut xids = self.xids.lock().unwrap_or_else(PoisonError::into_inner);
            for g in &snap.gpus {
                for &x in &g.xid_events {
                    *xids.entry((g.index, x)).or_default() += 1;
                }
                for f in hw::faults(g) {
                    let l = latched.entry(g.index).or_insert_with(|| Latched {
                        name: g.name.clone(),
                        faults: Vec::new(),
                        since: snap.taken.unwrap_or_else(SystemTime::now),
                    });
                    if let Some(old) = l.faults.iter_mut().find(|o| o.same_kind(&f)) {
                        *old = f; // the count grew
                        continue;
                    }
                    l.faults.push(f);
                    new.push(FaultEvent {
                        gpu: g.index,
                        gpu_name: g.name.clone(),
                        fault: f,
                    });
                }
            }
        }
        self.samples.fetch_add(1, Ordering::Relaxed);
        if !snap.errors.is_empty() {
            self.sample_errors.fetch_add(1, Ordering::Relaxed);
        }
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
        new
    }
}

/// Takes samples: the configured GPU sources, host memory and this process's resident set.
pub struct Sampler {
    sources: Vec<Box<dyn HealthSource>>,
    /// The sizing inventory, to number GPUs as it does (matched by UUID when both have one).
    inventory: Inventory,
    proc_root: PathBuf,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
        f.debug_struct("Sampler").field("sources", &names).finish()
    }
}

impl Sampler {
    /// The recorded file when the config names one, else this machine's GPUs.
    pub fn from_config(config: &HealthConfig, inventory: Inventory) -> Sampler {
        let sources: Vec<Box<dyn HealthSource>> = if config.recorded.as_os_str().is_empty() {
            hw::system_sources()
        } else {
            vec![Box::new(RecordedHealth::new(&config.recorded))]
        };
        Sampler::new(sources, inventory)
    }

    pub fn new(sources: Vec<Box<dyn HealthSource>>, inventory: Inventory) -> Sampler {
        Sampler {
            sources,
            inventory,
            proc_root: PathBuf::from("/"),
        }
    }

    /// One sample, timed.
    pub fn sample(&mut self) -> HealthSnapshot {
        let t = Instant::now();
        let (mut gpus, mut errors) = hw::sample_gpus(&mut self.sources);
        for g in &mut gpus {
            let known = g.uuid.as_ref().and_then(|u| {
                self.inventory
                    .gpus
                    .iter()
                    .find(|i| i.uuid.as_ref() == Some(u))
            });
            if let Some(i) = known {
                g.index = i.index;
            }
        }
        let host = match sample_host(&self.proc_root) {
            Ok(h) => h,
            Err(e) => {
                errors.push(format!("host: {e}"));
                HostHealth::default()
            }
        };
        HealthSnapshot {
            taken: Some(SystemTime::now()),
            gpus,
            host,
            errors,
            took: t.elapsed(),
        }
    }
}

/// Owns the `health-sampler` thread: [`HealthSampler::stop`] tells it to stop and joins it.
#[derive(Debug)]
pub struct HealthSampler {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl HealthSampler {
    /// Starts sampling now and every `interval`; new faults go to `faults`.
    pub fn start(
        mut sampler: Sampler,
        interval: Duration,
        state: Arc<HealthState>,
        faults: tokio::sync::mpsc::UnboundedSender<FaultEvent>,
    ) -> std::io::Result<HealthSampler> {
        let (stop, stopped) = mpsc::channel::<()>();
        info!(target: "health", sampler = ?sampler, interval_ms = interval.as_millis() as u64, "sampling hardware health");
        let thread = std::thread::Builder::new()
            .name("health-sampler".into())
            .spawn(move || {
                let mut warned: BTreeMap<u32, Vec<String>> = BTreeMap::new();
                loop {
                    let snap = sampler.sample();
                    log_changes(&snap, &mut warned);
                    for ev in state.record(snap) {
                        if faults.send(ev).is_err() {
                            return;
                        }
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(HealthSampler {
            stop,
            thread: Some(thread),
        })
    }

    /// Tells the thread to stop and joins it, waiting at most `timeout` (a sample in progress
    /// finishes first). True once joined.
    pub fn stop(mut self, timeout: Duration) -> bool {
        let _ = self.stop.send(());
        let Some(t) = self.thread.take() else {
            return true;
        };
        let until = Instant::now() + timeout;
        while !t.is_finished() {
            if Instant::now() >= until {
                error!(target: "health", "the health sampler did not stop in time");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = t.join();
        true
    }
}

/// Logs a GPU's warnings (throttling, corrected ECC) when they change, and sample errors.
fn log_changes(snap: &HealthSnapshot, warned: &mut BTreeMap<u32, Vec<String>>) {
    for g in &snap.gpus {
        let w = hw::warnings(g);
        if warned.get(&g.index) != Some(&w) {
            if w.is_empty() {
                info!(target: "health", gpu = g.index, name = %g.name, "GPU warnings cleared");
            } else {
                warn!(target: "health", gpu = g.index, name = %g.name, warnings = %w.join("; "), "GPU warning");
            }
            warned.insert(g.index, w);
        }
    }
    for e in &snap.errors {
        warn!(target: "health", error = %e, "health sample incomplete");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appl_firmware_profiles::inventory::GpuVendor;
    use appl_firmware_profiles::probe::ProbeError;

    struct Fake(Arc<Mutex<GpuHealth>>);

    impl HealthSource for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError> {
            Ok(vec![self.0.lock().expect("lock").clone()])
        }
    }

    fn inventory() -> Inventory {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/inventories/cpu-only.json");
        Inventory::from_path(&path).expect("fixture")
    }

    #[test]
    fn a_fault_is_reported_once_and_latched() {
        let gpu = Arc::new(Mutex::new(GpuHealth::new(0, GpuVendor::Nvidia, "fake GPU")));
        let mut s = Sampler::new(vec![Box::new(Fake(Arc::clone(&gpu)))], inventory());
        let state = HealthState::default();
        assert!(state.record(s.sample()).is_empty());
        assert_eq!(state.latched(0), None);
        gpu.lock().expect("lock").ecc_uncorrected = Some(1);
        let ev = state.record(s.sample());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].fault, GpuFault::EccUncorrectable { count: 1 });
        // More errors of the same kind are the same fault; an XID is a new one.
        gpu.lock().expect("lock").ecc_uncorrected = Some(3);
        assert!(state.record(s.sample()).is_empty());
        gpu.lock().expect("lock").xid_events = vec![79];
        assert_eq!(state.record(s.sample()).len(), 1);
        // Latched: a clean reading does not clear it.
        *gpu.lock().expect("lock") = GpuHealth::new(0, GpuVendor::Nvidia, "fake GPU");
        assert!(state.record(s.sample()).is_empty());
        assert_eq!(
            state.latched(0),
            Some(GpuFault::EccUncorrectable { count: 3 })
        );
        assert_eq!(state.xid_counts().get(&(0, 79)), Some(&1));
        assert!(state.latest().host.memory_total_bytes > 0);
    }

    #[test]
    fn the_sampler_thread_stops_and_joins() {
        let gpu = Arc::new(Mutex::new(GpuHealth::new(0, GpuVendor::Amd, "fake GPU")));
        let state = Arc::new(HealthState::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let s = HealthSampler::start(
            Sampler::new(vec![Box::new(Fake(gpu))], inventory()),
            Duration::from_secs(3600),
            Arc::clone(&state),
            tx,
        )
        .expect("start");
        // The first sample is taken at once.
        let until = Instant::now() + Duration::from_secs(30);
        while state.samples.load(Ordering::Relaxed) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state.samples.load(Ordering::Relaxed), 1);
        assert!(
            s.stop(Duration::from_secs(30)),
            "stopped within the hour-long interval"
        );
    }
}
