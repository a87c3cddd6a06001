//! `applctl models`: list the models (the default), import one from removable media
//! (`import.rs`), and load, unload or reload them through the daemon's Admin service. While a
//! load runs, its progress (from `Admin.Status`) is shown on a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use appl_proto::v1 as pb;

use crate::client::{status_error, ConnArgs};
use crate::import::ImportArgs;

/// List, import, load, unload or reload models.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub cmd: Option<ModelsCmd>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCmd {
    /// Copy a GGUF file into the model store, verifying its SHA-256, its header and that it
    /// fits this machine. Works without the daemon.
    Import(ImportArgs),
    /// Load a model: a [[models]] entry of the config, or ID.gguf in the model store.
    Load {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a model once its requests in flight are done.
    Unload {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a model with its file as it is now (a new version imported under its name);
    /// without an id, every model whose file changed.
    Reload {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `models` subcommand (the list is `main`'s).
pub async fn run(conn: &ConnArgs, cmd: &ModelsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCmd::Import(a) => crate::import::run(a),
        ModelsCmd::Load { id, json } => {
            let channel = conn.connect().await?;
            let mut admin = pb::admin_client::AdminClient::new(channel.clone());
            let call = admin.load_model(pb::LoadModelRequest { id: id.clone() });
            let op = with_progress(channel, call)
                .await
                .map_err(status_error)
                .with_context(|| format!("loading {id}"))?;
            print_ops(&[op], *json)
        }
        ModelsCmd::Unload { id, json } => {
            let channel = conn.connect().await?;
            let mut admin = pb::admin_client::AdminClient::new(channel.clone());
            let call = admin.unload_model(pb::UnloadModelRequest { id: id.clone() });
            let op = with_progress(channel, call)
                .await
                .map_err(status_error)
                .with_context(|| format!("unloading {id}"))?;
            print_ops(&[op], *json)
        }
        ModelsCmd::Reload { id, json } => {
            let channel = conn.connect().await?;
            let mut admin = pb::admin_client::AdminClient::new(channel.clone());
            let call = admin.reload_models(pb::ReloadModelsRequest {
                id: id.clone().unwrap_or_default(),
            });
            let ops = with_progress(channel, call)
                .await
                .map_err(status_error)
                .context("reloading")?;
            print_ops(&ops.models, *json)
        }
    }
}

/// Awaits `call`, showing the daemon's model activity on a terminal meanwhile.
async fn with_progress<T>(
    channel: appl_proto::client::Authed,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::pin!(call);
    let show = std::io::stderr().is_terminal();
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut shown = false;
    loop {
        tokio::select! {
            res = &mut call => {
                if shown {
                    eprintln!();
                }
                return res.map(tonic::Response::into_inner);
            }
            _ = tick.tick(), if show => {
                if let Ok(s) = admin.status(pb::StatusRequest {}).await {
                    let line = s.into_inner().activity;
                    if !line.is_empty() {
                        eprint!("\r  {line:<100}");
                        shown = true;
                    }
                }
            }
        }
    }
}

fn print_ops(ops: &[pb::ModelOperation], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let v: Vec<_> = ops
            .iter()
            .map(|o| {
                serde_json::json!({
                    "model": o.model, "outcome": o.outcome, "sha256": o.sha256,
                    "message": o.message, "seconds": o.seconds,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if ops.is_empty() {
            println!("no model is loaded");
        }
        for o in ops {
            println!(
                "{}: {} in {:.1} s (sha256 {})",
                o.model,
                o.outcome,
                o.seconds,
                if o.sha256.is_empty() { "-" } else { &o.sha256 }
            );
            println!("  {}", o.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}
