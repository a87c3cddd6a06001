//! `applctl`: the operator's tool for appl.
//!
//! It talks to `appld` over the local Unix socket by default, or over TCP with `--addr` (mTLS with
//! `--ca`, `--cert`, `--key`; an API key with `--api-key`). Read
//! commands accept `--json`. Exit codes: 0 success, 1 failure, 2 usage error.

#![forbid(unsafe_code)]

mod audit;
mod bench;
mod certs;
mod check;
mod client;
mod diagnose;
mod import;
mod measure;
mod models_cmd;
mod plan;
mod plan_audit;
mod status_ops;
mod traffic;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use appl_proto::v1 as pb;
use clap::{CommandFactory, Parser, Subcommand};
use futures::StreamExt;

#[derive(Debug, Parser)]
#[command(version, about = "Operate an appl inference appliance")]
struct Cli {
    #[command(flatten)]
    conn: client::ConnArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Print a man page or a shell completion script to stdout and exit (used by packaging).
    #[arg(long, hide = true, value_enum, value_name = "WHAT", exclusive = true)]
    generate: Option<Generate>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Prints the man page or a completion script generated from the flags.
fn generate(what: Generate) -> ExitCode {
    use clap_complete::Shell;
    use std::io::Write;
    let mut cmd = Cli::command();
    // Rendered into memory first: clap_complete panics on a write error such as a closed pipe.
    let mut out = Vec::new();
    let rendered = match what {
        Generate::Man => clap_mangen::Man::new(cmd).render(&mut out),
        Generate::CompleteBash | Generate::CompleteZsh | Generate::CompleteFish => {
            let shell = match what {
                Generate::CompleteZsh => Shell::Zsh,
                Generate::CompleteFish => Shell::Fish,
                _ => Shell::Bash,
            };
            clap_complete::generate(shell, &mut cmd, "applctl", &mut out);
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
            eprintln!("applctl: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate text from a prompt and stream it to stdout.
    Generate(GenerateArgs),
    /// List the models the daemon serves; import, load, unload or reload one.
    Models(models_cmd::ModelsArgs),
    /// Ask the daemon whether it is serving (grpc.health.v1). Exit 0 when SERVING.
    Health {
        /// Service to ask about; empty means the whole daemon.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Show the daemon's engines: slots, queue and counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check this machine (or a recorded --inventory) against the sizing rules. Works without
    /// the daemon. Exit 0 when it passes, 1 when it fails.
    Check(check::CheckArgs),
    /// Compare API spend with self-hosting for a planned volume, or (--from-audit) for the
    /// traffic the audit log recorded.
    Plan(plan::PlanArgs),
    /// Write one archive for the vendor: versions, build, redacted config, hardware, recent
    /// logs, status and the audit log's verify report. Never a prompt, completion, audit
    /// record, key or private part of a certificate. Works with the daemon stopped.
    Diagnose(diagnose::DiagnoseArgs),
    /// Drive a server with concurrent streams; report throughput, latency and errors.
    Bench(bench::BenchArgs),
    /// Export, verify and tail the audit log.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// A site CA and certificates for offline sites (init-ca, issue), and their expiry (show).
    Certs {
        #[command(subcommand)]
        cmd: certs::CertsCmd,
    },
    /// API keys: make one (the config stores only its SHA-256).
    Keys {
        #[command(subcommand)]
        cmd: certs::KeysCmd,
    },
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// The prompt. With --chat it is sent as one user message.
    prompt: String,
    /// Model id; the daemon's default when omitted.
    #[arg(long, short, default_value = "")]
    model: String,
    /// Render the prompt with the model's chat template (as a user message).
    #[arg(long)]
    chat: bool,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// 0 is greedy and deterministic.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<i32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long)]
    seed: Option<u32>,
    /// Stop before this string; repeat for several.
    #[arg(long)]
    stop: Vec<String>,
    /// Print the usage (tokens and timings) to stderr at the end.
    #[arg(long, short)]
    verbose: bool,
    /// Service class; the tenant's default when omitted.
    #[arg(long, value_parser = ["interactive", "batch"])]
    priority: Option<String>,
    /// The tenant the request belongs to (sent as `x-appl-tenant` metadata).
    #[arg(long, env = "APPL_TENANT")]
    tenant: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return generate(what);
    }
    let Some(cmd) = cli.cmd else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a subcommand is required",
            )
            .exit()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("applctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli.conn, cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("applctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(conn: &client::ConnArgs, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Generate(args) => generate_text(conn, args).await,
        Cmd::Models(a) => match &a.cmd {
            None => models(conn, a.json).await,
            Some(c) => models_cmd::run(conn, c).await,
        },
        Cmd::Health { service } => health(conn, service).await,
        Cmd::Status { json } => status(conn, json).await,
        Cmd::Check(args) => check::run(&args),
        Cmd::Plan(args) if args.audit.from_audit => plan_audit::run(conn, &args).await,
        Cmd::Plan(args) => plan::run(&args),
        Cmd::Bench(args) => bench::run(conn, args).await,
        Cmd::Diagnose(args) => diagnose::run(conn, &args).await,
        Cmd::Audit { cmd } => audit::run(conn, &cmd).await,
        Cmd::Certs { cmd } => certs::run(&cmd),
        Cmd::Keys { cmd } => certs::keys(&cmd),
    }
}

async fn generate_text(conn: &client::ConnArgs, a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let channel = conn.connect().await?;
    let mut client = pb::inference_client::InferenceClient::new(channel);
    let sampling = pb::SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: None,
        seed: a.seed,
    };
    let priority = match a.priority.as_deref() {
        Some("interactive") => pb::Priority::Interactive,
        Some("batch") => pb::Priority::Batch,
        _ => pb::Priority::Unspecified,
    } as i32;
    let mut stream = if a.chat {
        client
            .chat_stream(with_tenant(
                a.tenant.as_deref(),
                pb::ChatRequest {
                    model: a.model,
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: a.prompt,
                    }],
                    sampling: Some(sampling),
                    max_tokens: a.max_tokens,
                    stop: a.stop.clone(),
                    priority,
                },
            )?)
            .await
    } else {
        client
            .generate_stream(with_tenant(
                a.tenant.as_deref(),
                pb::GenerateRequest {
                    model: a.model,
                    prompt: a.prompt,
                    sampling: Some(sampling),
                    max_tokens: a.max_tokens,
                    stop: a.stop.clone(),
                    priority,
                },
            )?)
            .await
    }
    .map_err(client::status_error)?
    .into_inner();

    let mut stdout = std::io::stdout().lock();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(client::status_error)?;
        stdout.write_all(chunk.text.as_bytes())?;
        stdout.flush()?;
        if chunk.finish_reason != 0 {
            last = Some(chunk);
        }
    }
    writeln!(stdout)?;
    let Some(last) = last else {
        anyhow::bail!("the stream ended without a final message");
    };
    let reason =
        pb::FinishReason::try_from(last.finish_reason).map_or("unknown", |r| r.as_str_name());
    if a.verbose {
        if let Some(u) = last.usage {
            eprintln!(
                "finish={reason} prompt_tokens={} completion_tokens={} ttft_ms={:.1} decode_ms={:.1} tok/s={:.1}",
                u.prompt_tokens,
                u.completion_tokens,
                u.time_to_first_token_ms,
                u.decode_ms,
                if u.decode_ms > 0.0 {
                    f64::from(u.completion_tokens.saturating_sub(1)) / (u.decode_ms / 1e3)
                } else {
                    0.0
                }
            );
        }
    }
    Ok(if last.finish_reason == pb::FinishReason::Error as i32 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn models(conn: &client::ConnArgs, json: bool) -> anyhow::Result<ExitCode> {
    let channel = conn.connect().await?;
    let mut client = pb::inference_client::InferenceClient::new(channel);
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner()
        .models;
    if json {
        let v: Vec<_> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "path": m.path, "slots": m.slots, "ctx_per_slot": m.ctx_per_slot,
                    "n_ctx_train": m.n_ctx_train, "n_params": m.n_params, "size_bytes": m.size_bytes,
                    "chat_template": m.chat_template, "max_tokens_cap": m.max_tokens_cap,
                    "default": m.is_default,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<24} {:>6} {:>8} {:>10} {:>9}  {:<10} PATH",
            "ID", "SLOTS", "CTX/SLOT", "PARAMS", "SIZE_MB", "TEMPLATE"
        );
        for m in models {
            println!(
                "{:<24} {:>6} {:>8} {:>10} {:>9.1}  {:<10} {}{}",
                m.id,
                m.slots,
                m.ctx_per_slot,
                m.n_params,
                m.size_bytes as f64 / 1e6,
                m.chat_template,
                m.path,
                if m.is_default { "  (default)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn health(conn: &client::ConnArgs, service: String) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = conn.connect().await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.clone(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner()
        .status;
    let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn status(conn: &client::ConnArgs, json: bool) -> anyhow::Result<ExitCode> {
    let channel = conn.connect().await?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(client::status_error)
        .context("Admin.Status")?
        .into_inner();
    if json {
        let engines: Vec<_> = s
            .engines
            .iter()
            .map(|e| {
                serde_json::json!({
                    "model": e.model, "slots": e.slots, "busy_slots": e.busy_slots,
                    "queued": e.queued, "steps": e.steps,
                    "max_batch_sequences": e.max_batch_sequences,
                    "tokens_generated": e.tokens_generated,
                    "tokens_prefilled": e.tokens_prefilled,
                    "requests_completed": e.requests_completed,
                    "queued_interactive": e.queued_interactive,
                    "queued_batch": e.queued_batch,
                    "paused": e.paused,
                    "preemptions": e.preemptions,
                    "tokens_prefix_reused": e.tokens_prefix_reused,
                    "rejected_queue_full": e.rejected_queue_full,
                    "expired_in_queue": e.expired_in_queue,
                    "time_to_first_token": histogram_json(e.time_to_first_token.as_ref()),
                    "inter_token": histogram_json(e.inter_token.as_ref()),
                    "batch_sequences": histogram_json(e.batch_sequences.as_ref()),
                })
            })
            .collect();
        let tenants: Vec<_> = s
            .tenants
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "weight": t.weight, "max_concurrent": t.max_concurrent,
                    "tokens_per_minute": t.tokens_per_minute,
                    "default_priority": priority_name(t.default_priority),
                    "in_flight": t.in_flight,
                })
            })
            .collect();
        let mut v = serde_json::json!({
            "version": s.version, "uptime_s": s.uptime_s, "engines": engines,
            "tenants": tenants,
            "rejected_tenant_concurrency": s.rejected_tenant_concurrency,
            "rejected_tenant_rate": s.rejected_tenant_rate,
            "audit": {
                "state": s.audit_state, "reason": s.audit_reason,
                "records": s.audit_records, "key": s.audit_key,
            },
            "tcp_security": s.tcp_security,
            "certificates": s.certificates.iter().map(|c| serde_json::json!({
                "role": c.role, "subject": c.subject, "not_after": c.not_after,
                "seconds_left": c.seconds_left,
            })).collect::<Vec<_>>(),
            "caller": {"actor": s.caller, "tenant": s.caller_tenant, "roles": s.caller_roles},
            "warnings": security_warnings(&s, conn),
        });
        status_ops::extend_json(&mut v, &s);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for w in security_warnings(&s, conn) {
            println!("WARNING: {w}");
        }
        println!("appld {} up {:.0}s", s.version, s.uptime_s);
        println!(
            "tcp: {}; you are {} (tenant {}, roles {})",
            s.tcp_security, s.caller, s.caller_tenant, s.caller_roles
        );
        println!(
            "audit log: {}{}, {} records, key {}",
            s.audit_state,
            if s.audit_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.audit_reason)
            },
            s.audit_records,
            s.audit_key
        );
        status_ops::print_text(&s);
        println!();
        println!(
            "{:<24} {:>5} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11} {:>9}",
            "MODEL",
            "SLOTS",
            "BUSY",
            "QUEUED",
            "STEPS",
            "MAX_BATCH",
            "GENERATED",
            "PREFILLED",
            "REQUESTS"
        );
        for e in &s.engines {
            println!(
                "{:<24} {:>5} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11} {:>9}",
                e.model,
                e.slots,
                e.busy_slots,
                e.queued,
                e.steps,
                e.max_batch_sequences,
                e.tokens_generated,
                e.tokens_prefilled,
                e.requests_completed
            );
        }
        println!();
        println!(
            "{:<24} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8} {:>10} {:>10}",
            "QUEUE",
            "INTER",
            "BATCH",
            "PAUSED",
            "PREEMPT",
            "REUSED",
            "REJ_FULL",
            "EXPIRED",
            "TTFT_P50",
            "TTFT_P95"
        );
        for e in &s.engines {
            let ttft = e.time_to_first_token.as_ref();
            println!(
                "{:<24} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8} {:>10} {:>10}",
                e.model,
                e.queued_interactive,
                e.queued_batch,
                e.paused,
                e.preemptions,
                e.tokens_prefix_reused,
                e.rejected_queue_full,
                e.expired_in_queue,
                quantile_text(ttft, 0.5),
                quantile_text(ttft, 0.95)
            );
        }
        if !s.tenants.is_empty() {
            println!();
            println!(
                "{:<24} {:>6} {:>9} {:>10} {:>12} {:>9}",
                "TENANT", "WEIGHT", "MAX_CONC", "TOK/MIN", "PRIORITY", "IN_FLIGHT"
            );
            for t in &s.tenants {
                println!(
                    "{:<24} {:>6} {:>9} {:>10} {:>12} {:>9}",
                    t.name,
                    t.weight,
                    t.max_concurrent,
                    t.tokens_per_minute,
                    priority_name(t.default_priority),
                    t.in_flight
                );
            }
            println!(
                "refused: {} at a tenant's max_concurrent, {} over a tenant's tokens_per_minute",
                s.rejected_tenant_concurrency, s.rejected_tenant_rate
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What an operator must hear about: plaintext TCP, and certificates (the daemon's, and this
/// client's own) that expire within 30 days or have expired.
fn security_warnings(s: &pb::StatusResponse, conn: &client::ConnArgs) -> Vec<String> {
    let mut w = Vec::new();
    if s.tcp_security == "plaintext" {
        w.push(
            "appld serves gRPC on TCP WITHOUT TLS (tls.insecure_plaintext): anyone on the \
             network can read and alter prompts, answers and API keys"
                .to_owned(),
        );
    }
    let soon = certs::WARN_DAYS as i64 * 86_400;
    for c in &s.certificates {
        if c.seconds_left < 0 {
            w.push(format!(
                "the daemon's {} certificate {} EXPIRED at {}",
                c.role, c.subject, c.not_after
            ));
        } else if c.seconds_left < soon {
            w.push(format!(
                "the daemon's {} certificate {} expires in {} days ({})",
                c.role,
                c.subject,
                c.seconds_left / 86_400,
                c.not_after
            ));
        }
    }
    if let Some(path) = &conn.cert {
        if let Ok(mine) = certs::read_pem_certs(path) {
            for c in mine.iter().take(1) {
                if c.days_left < certs::WARN_DAYS as i64 {
                    w.push(format!(
                        "this client's certificate {} ({}) expires in {} days ({})",
                        c.subject, c.file, c.days_left, c.not_after
                    ));
                }
            }
        }
    }
    w
}

/// A request carrying the tenant (`x-appl-tenant`) when one is given.
fn with_tenant<T>(tenant: Option<&str>, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = tenant {
        req.metadata_mut().insert(
            "x-appl-tenant",
            t.parse().context("--tenant must be printable ASCII")?,
        );
    }
    Ok(req)
}

fn priority_name(p: i32) -> &'static str {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::Batch) => "batch",
        Ok(pb::Priority::Interactive) => "interactive",
        _ => "unspecified",
    }
}

fn histogram_json(h: Option<&pb::Histogram>) -> serde_json::Value {
    let Some(h) = h else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "bounds": h.bounds, "cumulative_counts": h.counts, "count": h.count, "sum": h.sum,
        "p50_le": quantile(Some(h), 0.5), "p95_le": quantile(Some(h), 0.95),
    })
}

/// The upper bound of the bucket that holds quantile `q`; None when empty.
fn quantile(h: Option<&pb::Histogram>, q: f64) -> Option<f64> {
    let h = h?;
    if h.count == 0 {
        return None;
    }
    let want = (q * h.count as f64).ceil() as u64;
    Some(
        h.bounds
            .iter()
            .zip(&h.counts)
            .find(|(_, &c)| c >= want)
            .map_or(f64::INFINITY, |(b, _)| *b),
    )
}

fn quantile_text(h: Option<&pb::Histogram>, q: f64) -> String {
    match quantile(h, q) {
        None => "-".to_owned(),
        Some(v) if v.is_infinite() => "inf".to_owned(),
        Some(v) => format!("<={:.0}ms", v * 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_the_bound_of_the_bucket_that_holds_it() {
        // Observations 0.5, 1.0, 1.5, 3.0, 9.0 in buckets <=1, <=2, <=4 (+Inf).
        let h = pb::Histogram {
            bounds: vec![1.0, 2.0, 4.0],
            counts: vec![2, 3, 4],
            count: 5,
            sum: 15.0,
        };
        assert_eq!(quantile(Some(&h), 0.5), Some(2.0));
        assert_eq!(quantile(Some(&h), 1.0), Some(f64::INFINITY));
        let empty = pb::Histogram {
            bounds: vec![1.0],
            counts: vec![0],
            count: 0,
            sum: 0.0,
        };
        assert_eq!(quantile(Some(&empty), 0.5), None);
        assert_eq!(quantile(None, 0.5), None);
    }
}
