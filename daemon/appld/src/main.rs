//! The `appld` binary: flags, config, logging, sockets; everything else is in the library
//! ([`appld::run`]).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use appld::config::{Config, LogFormat};
use appld::{Listeners, StartupError};
use clap::Parser;
use tracing::error;

/// appl daemon: serves quantized GGUF models over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "APPLD_CONFIG",
        default_value = "/etc/appl/appld.toml"
    )]
    config: PathBuf,
    /// Validate the config and exit: 0 when valid, 78 when not.
    #[arg(long)]
    check_config: bool,
    /// Log format; overrides `log.format` in the config.
    #[arg(long, env = "APPLD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    measure: MeasureFlags,
}

/// `--measure MODEL --json`: time decode steps and print a calibration (what `applctl check
/// --measure` runs); no config is read and nothing is served.
#[derive(Debug, clap::Args)]
struct MeasureFlags {
    #[arg(long, hide = true, value_name = "MODEL")]
    measure: Option<PathBuf>,
    #[arg(long, hide = true, requires = "measure", default_value_t = 0)]
    threads: u32,
    #[arg(long, hide = true, requires = "measure", default_value_t = 8)]
    slots: u32,
    #[arg(long, hide = true, requires = "measure", default_value_t = 2048)]
    ctx_per_slot: u32,
    #[arg(long, hide = true, requires = "measure", default_value_t = 512)]
    batch_tokens: u32,
    /// The only output format of --measure; accepted for clarity.
    #[arg(long, hide = true, requires = "measure")]
    json: bool,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(model) = &args.measure.measure {
        return measure(model, &args.measure);
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("appld: {e}");
            return ExitCode::from(StartupError::from(e).exit_code());
        }
    };
    if args.check_config {
        println!("appld: config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(
        args.log_format.unwrap_or(config.log.format),
        &config.log.filter,
    );
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<StartupError>()
                .map_or(1, StartupError::exit_code);
            error!("{e:#}");
            eprintln!("appld: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn measure(model: &std::path::Path, f: &MeasureFlags) -> ExitCode {
    init_logging(LogFormat::Text, "error");
    let args = appld::measure::MeasureArgs {
        model: model.to_owned(),
        threads: f.threads,
        slots: f.slots,
        ctx_per_slot: f.ctx_per_slot,
        batch_tokens: f.batch_tokens,
    };
    match appld::measure::run(&args) {
        Ok(c) => match serde_json::to_string_pretty(&c) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("appld: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            let e = StartupError::Model {
                id: model.display().to_string(),
                source: e,
            };
            eprintln!("appld: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("appld-rt")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        appld::run(config, listeners, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon still runs; systemd's SIGKILL stops it.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
