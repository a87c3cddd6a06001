//! `applctl check`: run the sizing rules against this machine (or a recorded inventory) and,
//! optionally, a model and a planned volume. Works without the daemon. The rules live in
//! `appl_firmware_profiles::check`; this module only parses flags and prints the report.
//!
//! Exit codes: 0 the machine passes (warnings allowed), 1 a rule failed, 2 usage error
//! (bad flags via clap; an unreadable `--model` or `--inventory` file).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use appl_firmware_profiles::check::{run_check, CheckRequest, Latency, ModelInput, Volume};
use appl_firmware_profiles::cpu_variant::{self, CpuFacts, Selection, X86_VARIANTS};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::probe;
use appl_firmware_profiles::profile::ProfileSet;
use appl_firmware_profiles::sizing::{Deployment, GpuLayers, KvType};

/// Latency class of the planned use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyArg {
    /// First tokens in under 1 s.
    Interactive,
    /// First tokens within 5-30 s.
    Batch,
}

/// Check whether this machine meets the sizing rules (PASS / WARN / FAIL).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// GGUF model to size against this machine.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Context per slot, in tokens.
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub ctx: u32,
    /// Concurrent requests (sequence slots).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots: u32,
    /// Planned requests per day (with --tokens-per-request).
    #[arg(long, value_name = "N", requires = "tokens_per_request")]
    pub requests_per_day: Option<u64>,
    /// Planned generated tokens per request (with --requests-per-day).
    #[arg(long, value_name = "N", requires = "requests_per_day")]
    pub tokens_per_request: Option<u64>,
    /// Latency class: interactive (first token < 1 s) or batch (5-30 s).
    #[arg(long, value_enum)]
    pub latency: Option<LatencyArg>,
    /// Prompt length assumed for the first-token estimate.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub prompt_tokens: u32,
    /// KV cache type: f16, q8_0, q4_0, ...
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    pub kv_type: KvType,
    /// Layers to offload: "auto" (all, or refuse) or a number (llama.cpp n_gpu_layers).
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    pub gpu_layers: GpuLayers,
    /// Logical batch size (llama.cpp n_batch).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub batch: u32,
    /// Micro-batch size (llama.cpp n_ubatch).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub ubatch: u32,
    /// Use a recorded inventory (JSON) instead of probing this machine. The report then leaves
    /// out the llama.cpp CPU backend, which is about this machine.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Also write the inventory used (probed or loaded) as JSON to FILE, e.g. to record a
    /// fixture on a GPU machine.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub measure: crate::measure::MeasureArgs,
}

/// Runs `applctl check`.
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let profiles = ProfileSet::embedded().context("built-in GPU profiles are invalid")?;
    let inventory = match &args.inventory {
        Some(path) => match Inventory::from_path(path) {
            Ok(inv) => inv,
            Err(e) => return Ok(usage_error(&e)),
        },
        None => probe::probe_system().context("probing this machine")?,
    };
    if let Some(path) = &args.record {
        std::fs::write(path, inventory.to_json() + "\n")
            .with_context(|| format!("writing inventory to {}", path.display()))?;
    }
    let model = match &args.model {
        Some(path) => match GgufInfo::from_path(path) {
            Ok(info) => Some(ModelInput {
                label: path.display().to_string(),
                info,
            }),
            // The error names the file.
            Err(e) => return Ok(usage_error(&e)),
        },
        None => None,
    };
    let volume = match (args.requests_per_day, args.tokens_per_request) {
        (Some(requests_per_day), Some(tokens_per_request)) => Some(Volume {
            requests_per_day,
            tokens_per_request,
        }),
        _ => None,
    };
    let request = CheckRequest {
        model,
        deployment: Deployment {
            ctx_per_slot: args.ctx,
            slots: args.slots,
            n_batch: args.batch,
            n_ubatch: args.ubatch,
            kv_type: args.kv_type,
            ..Deployment::default()
        },
        gpu_layers: args.gpu_layers,
        volume,
        latency: args.latency.map(|l| match l {
            LatencyArg::Interactive => Latency::Interactive,
            LatencyArg::Batch => Latency::Batch,
        }),
        prompt_tokens: args.prompt_tokens,
    };
    let report = run_check(&inventory, &profiles, &request);
    let backend = args.inventory.is_none().then(cpu_backend);
    let mut text = match (&backend, args.json) {
        (None, true) => report.to_json() + "\n",
        (None, false) => report.render_table(),
        (Some(b), true) => {
            let mut v: serde_json::Value =
                serde_json::from_str(&report.to_json()).context("re-reading the report")?;
            v["cpu_backend"] = serde_json::to_value(b).context("encoding the CPU backend")?;
            serde_json::to_string_pretty(&v).context("encoding the report")? + "\n"
        }
        (Some(b), false) => report.render_table() + &b.render(),
    };
    if let (true, Some(model)) = (args.measure.measure, &args.model) {
        let shape = crate::measure::Shape {
            slots: args.slots,
            ctx_per_slot: args.ctx,
            batch_tokens: args.batch,
        };
        let cal = crate::measure::calibrate(model, shape, &args.measure)?;
        let saved = crate::measure::save(&cal, &args.measure)?;
        if args.json {
            let mut v: serde_json::Value = serde_json::from_str(&text)?;
            v["measured"] = serde_json::json!({
                "calibration": cal,
                "predictions": crate::measure::predictions(&cal)?,
                "saved_to": saved,
            });
            text = serde_json::to_string_pretty(&v)? + "\n";
        } else {
            text += &crate::measure::render(&cal, saved.as_deref())?;
        }
    }
    write_stdout(&text)?;
    let failed = backend.as_ref().is_some_and(|b| b.fails());
    Ok(ExitCode::from(if failed {
        report.exit_code().max(1)
    } else {
        report.exit_code()
    }))
}

/// Which llama.cpp CPU backend `appld` would run on this machine, and why.
#[derive(Debug, serde::Serialize)]
struct CpuBackend {
    /// The folder of CPU variant libraries beside this binary (`/usr/lib/appl` when installed).
    modules: String,
    /// Whether that folder holds CPU variants (an installed package) or not (a source build).
    packaged: bool,
    summary: String,
    not_used: Vec<String>,
    selection: Selection,
}

impl CpuBackend {
    /// An installed package in which no shipped variant runs: appld would refuse to start.
    fn fails(&self) -> bool {
        self.packaged && self.selection.chosen.is_none()
    }

    fn render(&self) -> String {
        let mut out = String::from("\nllama.cpp CPU backend\n");
        let status = if self.fails() { "FAIL" } else { "PASS" };
        out += &format!("  {status}  {}\n", self.summary);
        for n in &self.not_used {
            out += &format!("        not used: {n}\n");
        }
        out
    }
}

/// Runs the same selection as appld: over the variants shipped beside this binary when it is
/// installed from a package, else over every variant, to say what a package would pick. On a
/// CPU with AMX this asks the kernel for AMX permission for this process, as appld does.
fn cpu_backend() -> CpuBackend {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| cpu_variant::package_lib_dir(&exe));
    let shipped: Vec<String> = dir
        .as_deref()
        .and_then(|d| cpu_variant::shipped_variants(d).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let packaged = !shipped.is_empty();
    let forced = std::env::var("APPL_CPU_VARIANT")
        .ok()
        .filter(|v| !v.is_empty());
    let facts = CpuFacts::probe();
    let (selection, summary) = if packaged {
        let sel = cpu_variant::select(&facts, &shipped, forced.as_deref());
        let summary = sel.summary();
        (sel, summary)
    } else {
        let all: Vec<String> = X86_VARIANTS.iter().map(|v| v.name.to_owned()).collect();
        let sel = cpu_variant::select(&facts, &all, None);
        let summary = format!(
            "source build: appld has llama.cpp's AVX2 CPU backend built in (no variant libraries in {}); a package would load {}",
            dir.as_deref().map_or_else(|| "?".into(), |d| d.display().to_string()),
            sel.chosen.unwrap_or("none")
        );
        (sel, summary)
    };
    CpuBackend {
        modules: dir.map(|d| d.display().to_string()).unwrap_or_default(),
        packaged,
        not_used: selection.skipped_better(),
        summary,
        selection,
    }
}

/// An input file that cannot be used is a usage error: message on stderr, exit 2.
fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// Writes to stdout; a closed pipe (`applctl check | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
