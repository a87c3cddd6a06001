//! The `appld` binary: flags, config, logging, sockets; everything else is in the library
//! ([`appld::run`]).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use appld::config::{Config, LogFormat};
use appld::systemd::Notifier;
use appld::{Listeners, RunOptions, StartupError};
use clap::{CommandFactory, Parser};
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
    /// Print a man page or a shell completion script to stdout and exit (used by packaging).
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    generate: Option<Generate>,
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

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Prints the man page (section 8: a daemon) or a completion script generated from the flags.
fn generate(what: Generate) -> ExitCode {
    use clap_complete::Shell;
    use std::io::Write;
    let mut cmd = Args::command();
    // Rendered into memory first: clap_complete panics on a write error such as a closed pipe.
    let mut out = Vec::new();
    let rendered = match what {
        Generate::Man => clap_mangen::Man::new(cmd).section("8").render(&mut out),
        Generate::CompleteBash | Generate::CompleteZsh | Generate::CompleteFish => {
            let shell = match what {
                Generate::CompleteZsh => Shell::Zsh,
                Generate::CompleteFish => Shell::Fish,
                _ => Shell::Bash,
            };
            clap_complete::generate(shell, &mut cmd, "appld", &mut out);
            Ok(())
        }
    };
    let written = rendered.and_then(|()| {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&out).and_then(|()| stdout.flush())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appld: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // When an engine cuts a batch step short for an interactive request, llama.cpp reports the
    // aborted decode as an error and lists the positions it removed: expected, and not logged.
    let expected = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target() == "llama-cpp-2" && appl_engine::step_cut_on_purpose())
    });
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(expected))
            .init(),
        LogFormat::Text => registry.with(layer.with_filter(expected)).init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return generate(what);
    }
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
        if let Err(e) = appld::check_tls(&config) {
            eprintln!("appld: {e}");
            return ExitCode::from(e.exit_code());
        }
        println!("appld: config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(
        args.log_format.unwrap_or(config.log.format),
        &config.log.filter,
    );
    match run(config, args.config) {
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
    // A package build loads its llama.cpp backends first, as the daemon does.
    if let Err(e) = appld::backends::load() {
        eprintln!("appld: {e}");
        return ExitCode::from(e.exit_code());
    }
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

fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("appld-rt")
        .build()
        .context("starting the async runtime")?;
    // systemd's notify protocol; every call is a no-op outside systemd.
    let notifier = Arc::new(Notifier::from_env());
    runtime.block_on(async {
        // Before anything slow: SIGHUP's default action would end the process.
        let reload = appld::ReloadSource {
            path,
            signals: reload_signals()?,
        };
        notifier.status("binding sockets");
        let listeners = Listeners::bind(&config).await?;
        notifier.status("opening the audit log");
        let opts = RunOptions {
            reload: Some(reload),
            notifier: Arc::clone(&notifier),
            ..RunOptions::new(&config)
        };
        appld::run_with(config, listeners, shutdown_signal(notifier), opts).await
    })
}

/// One message per SIGHUP.
fn reload_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A reload already waiting covers this signal too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// Resolves on SIGTERM or SIGINT, after telling systemd that the daemon is stopping.
async fn shutdown_signal(notifier: Arc<Notifier>) {
    wait_for_signal().await;
    notifier.stopping("draining: finishing requests in flight");
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
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
