//! The rules behind `applctl check`: run the sizing framework against an inventory (probed or
//! recorded) and, optionally, a model and a planned volume. Produces a [`CheckReport`] that
//! renders as a table or serializes as JSON; `applctl` only parses flags and prints it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::gguf::GgufInfo;
use crate::inventory::{GpuVendor, Inventory};
use crate::profile::{version_at_least, ProfileSet};
use crate::sizing::{self, Deployment, GpuLayers, MemoryEstimate, Placement, SpeedEstimate};
use crate::units::{gib, human, GIB};

/// Outcome of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleResult {
    /// Stable rule id, e.g. `memory.fit`.
    pub rule: String,
    pub status: Status,
    /// The numbers, e.g. `needs 10.3 GiB, 23.6 GiB free`.
    pub value: String,
    /// Why it passed or not.
    pub reason: String,
}

/// Latency class of the planned use (the framework: interactive needs first tokens in under
/// 1 s; batch tolerates 5–30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Latency {
    Interactive,
    Batch,
}

impl Latency {
    /// The first-token budget in seconds.
    pub fn budget_s(self) -> f64 {
        match self {
            Latency::Interactive => 1.0,
            Latency::Batch => 30.0,
        }
    }
}

/// Planned volume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Volume {
    pub requests_per_day: u64,
    /// Generated tokens per request (decode is the bottleneck; prompt tokens prefill faster).
    pub tokens_per_request: u64,
}

impl Volume {
    pub fn tokens_per_day(&self) -> u64 {
        self.requests_per_day
            .saturating_mul(self.tokens_per_request)
    }
}

/// A model to check, with a display name (usually the path).
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub label: String,
    pub info: GgufInfo,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub model: Option<ModelInput>,
    pub deployment: Deployment,
    pub gpu_layers: GpuLayers,
    pub volume: Option<Volume>,
    pub latency: Option<Latency>,
    /// Prompt length assumed for the first-token estimate.
    pub prompt_tokens: u32,
}

/// Utilization of decode capacity above which the volume rule warns: traffic is not flat, so
/// keep ~30% headroom for peaks.
pub const CAPACITY_WARN: f64 = 0.7;

/// Per-stream decode rate below which interactive use warns (a fast reader takes ~5 words/s,
/// about 7 tokens/s; below 10 tok/s streaming feels slow).
pub const INTERACTIVE_MIN_TPS: f64 = 10.0;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub verdict: Status,
    pub rules: Vec<RuleResult>,
    pub inventory_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<EstimateSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<SpeedEstimate>,
}

/// The model facts shown in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub label: String,
    pub architecture: String,
    pub name: Option<String>,
    pub quantization: String,
    pub parameters: u64,
    pub layers: u32,
    pub n_ctx_train: u64,
    pub bits_per_weight: f64,
}

/// The memory estimate shown in a report (bytes).
#[derive(Debug, Clone, Serialize)]
pub struct EstimateSummary {
    pub weights: u64,
    pub kv: u64,
    pub compute: u64,
    pub output_buffer: u64,
    pub total: u64,
}

impl From<&MemoryEstimate> for EstimateSummary {
    fn from(e: &MemoryEstimate) -> Self {
        EstimateSummary {
            weights: e.weights,
            kv: e.kv,
            compute: e.compute,
            output_buffer: e.output_buffer,
            total: e.total,
        }
    }
}

fn rule(
    rule: &str,
    status: Status,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> RuleResult {
    RuleResult {
        rule: rule.into(),
        status,
        value: value.into(),
        reason: reason.into(),
    }
}

/// Runs every applicable rule.
pub fn run_check(inv: &Inventory, profiles: &ProfileSet, req: &CheckRequest) -> CheckReport {
    let mut rules = Vec::new();
    hardware_rules(inv, profiles, &mut rules);

    let mut report = CheckReport {
        verdict: Status::Pass,
        rules: vec![],
        inventory_source: inv.source.clone(),
        model: None,
        deployment: None,
        estimate: None,
        placement: None,
        speed: None,
    };

    if let Some(model) = &req.model {
        let info = &model.info;
        let dep = &req.deployment;
        report.model = Some(ModelSummary {
            label: model.label.clone(),
            architecture: info.architecture.clone(),
            name: info.name.clone(),
            quantization: info.file_type_name(),
            parameters: info.parameter_count(),
            layers: info.n_layer,
            n_ctx_train: info.n_ctx_train,
            bits_per_weight: info.bits_per_weight(),
        });
        report.deployment = Some(*dep);
        if info.n_ctx_train > 0 && u64::from(dep.ctx_per_slot) > info.n_ctx_train {
            rules.push(rule(
                "model.context",
                Status::Warn,
                format!(
                    "{} per slot > {} trained",
                    dep.ctx_per_slot, info.n_ctx_train
                ),
                "context beyond the training context degrades output",
            ));
        } else {
            rules.push(rule(
                "model.context",
                Status::Pass,
                format!(
                    "{} per slot <= {} trained",
                    dep.ctx_per_slot, info.n_ctx_train
                ),
                "within the training context",
            ));
        }

        let est = sizing::estimate(info, dep);
        report.estimate = Some(EstimateSummary::from(&est));
        let breakdown = format!(
            "weights {} + KV {} + compute {}",
            human(est.weights),
            human(est.kv),
            human(est.compute)
        );
        match sizing::fit_with(&est, inv, profiles, req.gpu_layers) {
            Ok(placement) => {
                let on_gpu = placement
                    .devices
                    .iter()
                    .any(|d| matches!(d.device, sizing::DeviceRef::Gpu(_)));
                let partial = on_gpu && !placement.fully_offloaded();
                rules.push(rule(
                    "memory.fit",
                    if partial { Status::Warn } else { Status::Pass },
                    placement.summary(),
                    if partial {
                        format!(
                            "{breakdown}; partial offload: layers in host RAM decode at CPU speed"
                        )
                    } else {
                        format!("{breakdown}; overhead and reserve per device from its profile")
                    },
                ));
                let speed = sizing::decode_speed(&est, &placement);
                speed_rules(&placement, speed.as_ref(), req, &mut rules);
                report.speed = speed;
                report.placement = Some(placement);
            }
            Err(e) => {
                rules.push(rule(
                    "memory.fit",
                    Status::Fail,
                    e.message.clone(),
                    format!("{breakdown}; the model would not load"),
                ));
            }
        }
    } else {
        rules.push(rule(
            "memory.fit",
            Status::Warn,
            "no model given",
            "pass --model FILE to check a model against this machine",
        ));
    }

    report.verdict = rules.iter().map(|r| r.status).max().unwrap_or(Status::Pass);
    report.rules = rules;
    report
}

fn hardware_rules(inv: &Inventory, profiles: &ProfileSet, rules: &mut Vec<RuleResult>) {
    let cpu = &inv.cpu;
    let isa = match (cpu.avx2, cpu.avx512) {
        (_, true) => "AVX2 + AVX-512",
        (true, false) => "AVX2",
        (false, false) => "no AVX2",
    };
    rules.push(rule(
        "cpu.isa",
        if cpu.avx2 || cpu.avx512 {
            Status::Pass
        } else {
            Status::Warn
        },
        format!(
            "{} ({} cores / {} threads), {isa}",
            cpu.model, cpu.cores, cpu.threads
        ),
        if cpu.avx2 {
            "llama.cpp's CPU kernels have AVX2 paths"
        } else {
            "without AVX2, CPU layers run on slow generic kernels"
        },
    ));
    rules.push(rule(
        "host.memory",
        if inv.memory.available_bytes >= 2 * GIB {
            Status::Pass
        } else {
            Status::Warn
        },
        format!(
            "{} available of {}",
            gib(inv.memory.available_bytes),
            gib(inv.memory.total_bytes)
        ),
        "host RAM holds the token embedding, the logits buffer and any layers not offloaded",
    ));
    if inv.gpus.is_empty() {
        rules.push(rule(
            "gpu.present",
            Status::Warn,
            "no GPU found",
            "CPU-only: fine for small models at low volume; see the framework's GPU guide for more",
        ));
    }
    for w in &inv.warnings {
        rules.push(rule(
            "probe",
            Status::Warn,
            w.clone(),
            "a probe failed; its devices are missing from this check",
        ));
    }
    for g in &inv.gpus {
        let id = format!("gpu{}", g.index);
        if let Some(w) = g.pcie_width {
            rules.push(rule(
                &format!("{id}.pcie"),
                if w >= 16 { Status::Pass } else { Status::Warn },
                format!(
                    "gen {} x{w}",
                    g.pcie_gen.map_or("?".into(), |v| v.to_string())
                ),
                if w >= 16 {
                    "full-width link"
                } else {
                    "narrow link: slower model load and host transfers"
                },
            ));
        }
        let Some(p) = profiles.for_gpu(g) else {
            rules.push(rule(
                &format!("{id}.profile"),
                Status::Warn,
                format!(
                    "{} ({:04x}), {} VRAM",
                    g.name,
                    g.pci_device_id,
                    gib(g.vram_total_bytes)
                ),
                "no profile for this SKU: generic overhead, no speed estimate",
            ));
            continue;
        };
        rules.push(rule(
            &format!("{id}.profile"),
            Status::Pass,
            format!(
                "{} -> {}, {} free of {}",
                g.name,
                p.id,
                gib(g.vram_free_bytes),
                gib(g.vram_total_bytes)
            ),
            format!("{}: {}", p.name, p.guide),
        ));
        match g.vendor {
            GpuVendor::Nvidia => {
                version_rule(
                    rules,
                    &format!("{id}.driver"),
                    "driver",
                    g.driver_version.as_deref(),
                    p.minimums.driver.as_deref(),
                );
                version_rule(
                    rules,
                    &format!("{id}.cuda"),
                    "CUDA",
                    g.cuda_version.as_deref(),
                    p.minimums.cuda.as_deref(),
                );
                if let (Some(have), Some(want)) = (&g.compute_capability, &p.compute_capability) {
                    let ok = have == want;
                    rules.push(rule(
                        &format!("{id}.compute_capability"),
                        if ok { Status::Pass } else { Status::Warn },
                        format!("{have} (profile {want})"),
                        if ok {
                            "matches the profile"
                        } else {
                            "differs from the profile: wrong SKU match?"
                        },
                    ));
                }
            }
            GpuVendor::Amd => {
                version_rule(
                    rules,
                    &format!("{id}.rocm"),
                    "ROCm",
                    g.rocm_version.as_deref(),
                    p.minimums.rocm.as_deref(),
                );
                if let (Some(have), Some(want)) = (&g.gfx_target, &p.gfx_target) {
                    let ok = have == want;
                    rules.push(rule(
                        &format!("{id}.gfx_target"),
                        if ok { Status::Pass } else { Status::Fail },
                        format!("{have} (profile {want})"),
                        if ok {
                            "the ROCm build targets this gfx"
                        } else {
                            "the ROCm build does not target this gfx"
                        },
                    ));
                }
                if let Some(vbios) = &g.vbios_version {
                    rules.push(rule(
                        &format!("{id}.vbios"),
                        Status::Pass,
                        vbios.clone(),
                        "recorded for the firmware report",
                    ));
                }
            }
        }
    }
}

fn version_rule(
    rules: &mut Vec<RuleResult>,
    id: &str,
    what: &str,
    have: Option<&str>,
    want: Option<&str>,
) {
    let Some(want) = want else { return };
    let (status, value, reason) = match have {
        None => (
            Status::Warn,
            format!("unknown (need >= {want})"),
            format!("{what} version not reported"),
        ),
        Some(h) => match version_at_least(h, want) {
            Some(true) => (
                Status::Pass,
                format!("{h} >= {want}"),
                format!("{what} meets the profile minimum"),
            ),
            Some(false) => (
                Status::Fail,
                format!("{h} < {want}"),
                format!("{what} is older than the profile minimum"),
            ),
            None => (
                Status::Warn,
                format!("{h:?} (need >= {want})"),
                format!("cannot compare {what} versions"),
            ),
        },
    };
    rules.push(rule(id, status, value, reason));
}

fn speed_rules(
    placement: &Placement,
    speed: Option<&SpeedEstimate>,
    req: &CheckRequest,
    rules: &mut Vec<RuleResult>,
) {
    let Some(s) = speed else {
        rules.push(rule(
            "speed.decode",
            Status::Warn,
            "unknown",
            "a device has no profile bandwidth; measure with applctl bench",
        ));
        return;
    };
    rules.push(rule(
        "speed.decode",
        Status::Pass,
        format!(
            "{:.0} tok/s alone; {:.1} tok/s per stream x {} slots = {:.0} tok/s",
            s.single_stream_tps, s.per_stream_tps_full, placement.slots, s.aggregate_tps_full
        ),
        format!(
            "bandwidth / {} per token x efficiency {:.2}; context full (worst case)",
            human(s.bytes_per_token),
            s.efficiency
        ),
    ));

    if let Some(lat) = req.latency {
        // First token >= prefill chunks (each streams the weights at least once) + one decode
        // step at full load. Prefill is compute-bound, so this is a lower bound.
        let chunks =
            u64::from(req.prompt_tokens.max(1)).div_ceil(u64::from(req.deployment.n_ubatch.max(1)));
        let weights_s = sizing::weights_pass_secs(placement).unwrap_or(0.0);
        let ttft = chunks as f64 * weights_s + s.step_ms_full / 1000.0;
        let budget = lat.budget_s();
        let (status, reason) = if ttft > budget {
            (Status::Fail, format!("even the memory-bound lower bound exceeds the {budget:.0} s first-token budget"))
        } else if lat == Latency::Interactive && s.per_stream_tps_full < INTERACTIVE_MIN_TPS {
            (
                Status::Warn,
                format!(
                    "streams slower than {INTERACTIVE_MIN_TPS:.0} tok/s at full load feel sluggish"
                ),
            )
        } else {
            (Status::Pass, format!("first-token lower bound within {budget:.0} s; prefill is compute-bound, confirm with applctl bench"))
        };
        rules.push(rule(
            "latency",
            status,
            format!(
                "first token >= {:.0} ms for a {}-token prompt; {:.1} tok/s per stream",
                ttft * 1000.0,
                req.prompt_tokens,
                s.per_stream_tps_full
            ),
            reason,
        ));
    }

    if let Some(v) = req.volume {
        let capacity = s.aggregate_tps_full * 86_400.0;
        let planned = v.tokens_per_day() as f64;
        let util = if capacity > 0.0 {
            planned / capacity
        } else {
            f64::INFINITY
        };
        let status = if util > 1.0 {
            Status::Fail
        } else if util > CAPACITY_WARN {
            Status::Warn
        } else {
            Status::Pass
        };
        rules.push(rule(
            "capacity.volume",
            status,
            format!(
                "{:.2}M tok/day planned vs {:.2}M tok/day capacity ({:.0}%)",
                planned / 1e6,
                capacity / 1e6,
                util * 100.0
            ),
            match status {
                Status::Pass => format!("within {:.0}% of decode capacity", CAPACITY_WARN * 100.0),
                Status::Warn => format!(
                    "above {:.0}%: little headroom for peaks",
                    CAPACITY_WARN * 100.0
                ),
                Status::Fail => {
                    "planned volume exceeds decode capacity: add GPUs or slots".to_string()
                }
            },
        ));
    }
}

impl CheckReport {
    /// Process exit code: 0 unless a rule failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.verdict == Status::Fail)
    }

    /// The report as a plain-text table.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.model {
            let _ = writeln!(
                out,
                "model: {} ({} {}, {:.2}B params, {} layers, {:.2} bpw)",
                m.label,
                m.architecture,
                m.quantization,
                m.parameters as f64 / 1e9,
                m.layers,
                m.bits_per_weight
            );
        }
        if let (Some(d), Some(e)) = (&self.deployment, &self.estimate) {
            let _ = writeln!(
                out,
                "deployment: {} ctx x {} slots, batch {}/{}, KV {}: weights {} + KV {} + compute {} + output {} = {}",
                d.ctx_per_slot,
                d.slots,
                d.n_batch,
                d.n_ubatch,
                d.kv_type,
                human(e.weights),
                human(e.kv),
                human(e.compute),
                human(e.output_buffer),
                human(e.total)
            );
        }
        let _ = writeln!(out, "inventory: {}", self.inventory_source);
        // STATUS  RULE  VALUE, with the reason on the next line under the value.
        let w_rule = self
            .rules
            .iter()
            .map(|r| r.rule.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let indent = 6 + w_rule + 2;
        for r in &self.rules {
            let _ = writeln!(
                out,
                "{:<6}{:<w_rule$}  {}",
                r.status.label(),
                r.rule,
                r.value
            );
            let _ = writeln!(out, "{:indent$}{}", "", r.reason);
        }
        let _ = writeln!(out, "verdict: {}", self.verdict.label());
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Plain data with finite numbers; serialization cannot fail. NaN/inf become null.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
