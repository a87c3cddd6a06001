//! `applctl audit export|verify|tail`: through the running daemon (`appl.v1.Audit`, over the
//! Unix socket), directly on a stopped daemon's store (`--store DIR`), or on export files.
//!
//! Thin: argument parsing and printing over `appl-audit` and the daemon's audit API, where the
//! logic is tested. An export through the daemon writes the same data file and manifest as an
//! offline export, so `applctl audit verify FILE --public-key KEY` checks either.
//!
//! Exit codes: 0 success (verify: OK), 1 verification failed (tampering or damage found),
//! 69 (EX_UNAVAILABLE) the store is held by a running daemon (use the daemon: leave out
//! `--store`); other errors are reported by the caller's `anyhow` handling.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use appl_audit::{
    export_to_files, keys, manifest_path_for, verify_export_files, verify_store, AuditError,
    ExportFilter, ExportProgress, Format, Ident, Manifest, Record, StoreReader, Timestamp,
    VerifyReport,
};
use appl_proto::v1 as pb;
use futures::StreamExt;

use crate::client::{status_error, ConnArgs};

/// Audit log commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Export records, with a manifest (`<OUTPUT>.manifest.json`) for offline verification.
    Export {
        /// Store directory of a stopped daemon (such as /var/lib/appl/audit). Without it the
        /// export goes through the running daemon.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Data file to write.
        #[arg(long, short)]
        output: PathBuf,
        /// jsonl, csv, cef or syslog (RFC 5424).
        #[arg(long, default_value = "jsonl", value_parser = parse_format)]
        format: Format,
        /// Records at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        from: Option<Timestamp>,
        /// Records before this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        to: Option<Timestamp>,
        /// Only this actor.
        #[arg(long, value_parser = parse_ident)]
        actor: Option<Ident>,
        /// Only this action (`inference.generate`) or family (`admin.*`).
        #[arg(long)]
        action: Option<String>,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an export offline (DATA and --public-key), a stopped daemon's store (--store), or,
    /// with neither, the running daemon's live store.
    Verify {
        /// Export data file; its manifest is `<DATA>.manifest.json` unless --manifest is given.
        #[arg(conflicts_with = "store")]
        data: Option<PathBuf>,
        /// Manifest file.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Store directory of a stopped daemon.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Ed25519 public key file (hex). Required for exports; for a store it defaults to the
        /// key kept beside it, which proves less. Through the daemon, the daemon's signing key
        /// must match it.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the newest records, through the running daemon or of a stopped daemon's store.
    Tail {
        /// Store directory of a stopped daemon. Without it the records come from the running
        /// daemon.
        #[arg(long)]
        store: Option<PathBuf>,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: AuditError| e.to_string())
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
}

fn parse_ident(s: &str) -> Result<Ident, String> {
    Ident::new(s).map_err(|e| e.to_string())
}

fn open_store(dir: &std::path::Path) -> anyhow::Result<Result<StoreReader, ExitCode>> {
    match StoreReader::open(dir) {
        Ok(r) => Ok(Ok(r)),
        Err(AuditError::Unavailable(why)) => {
            eprintln!(
                "applctl: {}: {why} (leave out --store to go through it)",
                dir.display()
            );
            Ok(Err(ExitCode::from(69)))
        }
        Err(e) => Err(e).with_context(|| format!("opening audit store {}", dir.display())),
    }
}

fn report(rep: &VerifyReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(rep)?);
    } else {
        println!("{rep}");
    }
    Ok(if rep.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints what an export wrote, as JSON (the manifest) or as a summary.
fn print_export(m: &Manifest, output: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    println!(
        "exported {} records ({}) to {}\nmanifest {}\ncheckpoint size {} root {} at {}\nkey {}",
        m.count,
        m.format,
        output.display(),
        manifest_path_for(output).display(),
        m.checkpoint.size,
        hex_root(&m.checkpoint.root),
        m.checkpoint.time,
        m.key_fingerprint,
    );
    if m.not_covered > 0 {
        println!(
            "note: {} newer records are not covered by a signed checkpoint yet and were \
             not exported; starting the daemon signs one",
            m.not_covered
        );
    }
    Ok(())
}

/// Progress on stderr for large exports, when stderr is a terminal.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, p: ExportProgress) {
        if self.tty && p.total >= 100_000 {
            eprint!(
                "\rscanned {}/{} records, {} exported",
                p.scanned, p.total, p.exported
            );
            self.shown = true;
        }
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

fn print_tail_line(rec: &Record) {
    println!(
        "{:>8} {} {:<18} {:<9} {} {}{}{}",
        rec.seq,
        rec.ts,
        rec.action,
        format!("{:?}", rec.phase).to_lowercase(),
        rec.actor,
        rec.request_id
            .as_ref()
            .map(|r| format!("req={r} "))
            .unwrap_or_default(),
        rec.status
            .map(|s| format!("status={s} "))
            .unwrap_or_default(),
        rec.prompt_tokens
            .zip(rec.completion_tokens)
            .map(|(p, c)| format!("tokens={p}/{c}"))
            .unwrap_or_default(),
    );
}

/// Runs an audit command: offline with `--store` or an export file, else through the daemon.
pub async fn run(conn: &ConnArgs, cmd: &AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Export {
            store,
            output,
            format,
            from,
            to,
            actor,
            action,
            json,
        } => {
            let filter = ExportFilter {
                from: *from,
                to: *to,
                actor: actor.clone(),
                action: action.clone(),
            };
            filter.validate()?;
            let m = match store {
                Some(store) => {
                    let reader = match open_store(store)? {
                        Ok(r) => r,
                        Err(code) => return Ok(code),
                    };
                    let mut progress = Progress::new();
                    let m = export_to_files(&reader, &filter, *format, output, &mut |p| {
                        progress.show(p)
                    })
                    .with_context(|| format!("exporting to {}", output.display()))?;
                    progress.done();
                    m
                }
                None => export_via_daemon(conn, &filter, *format, output).await?,
            };
            print_export(&m, output, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify {
            data,
            manifest,
            store,
            public_key,
            json,
        } => {
            if let Some(dir) = store {
                let reader = match open_store(dir)? {
                    Ok(r) => r,
                    Err(code) => return Ok(code),
                };
                let vk = match public_key {
                    Some(p) => keys::read_public_key(p)?,
                    None => {
                        eprintln!(
                            "applctl: no --public-key given; using {} from the store itself",
                            dir.join(keys::PUBLIC_KEY_FILE).display()
                        );
                        reader.public_key()?
                    }
                };
                return report(&verify_store(&reader, &vk)?, *json);
            }
            let Some(data) = data else {
                return verify_via_daemon(conn, public_key.as_deref(), *json).await;
            };
            let Some(pk) = public_key else {
                bail!("verifying an export needs --public-key FILE (the appliance's audit-signing.pub)");
            };
            let vk = keys::read_public_key(pk)?;
            let mp = manifest.clone().unwrap_or_else(|| manifest_path_for(data));
            report(&verify_export_files(data, &mp, &vk)?, *json)
        }
        AuditCmd::Tail { store, lines, json } => {
            let Some(store) = store else {
                return tail_via_daemon(conn, *lines, *json).await;
            };
            let reader = match open_store(store)? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            for r in reader.tail(*lines)? {
                if *json {
                    println!("{}", String::from_utf8(r.record.canonical_bytes())?);
                } else {
                    print_tail_line(&r.record);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn audit_client(
    conn: &ConnArgs,
) -> anyhow::Result<pb::audit_client::AuditClient<appl_proto::client::Authed>> {
    Ok(pb::audit_client::AuditClient::new(conn.connect().await?))
}

/// `Audit.Tail`: the records as the daemon encodes them (canonical JSON), printed like an
/// offline tail.
async fn tail_via_daemon(conn: &ConnArgs, lines: usize, json: bool) -> anyhow::Result<ExitCode> {
    let n = u32::try_from(lines).unwrap_or(u32::MAX);
    let records = audit_client(conn)
        .await?
        .tail(pb::TailRequest { n })
        .await
        .map_err(status_error)
        .context("Audit.Tail")?
        .into_inner()
        .records;
    for line in records {
        if json {
            println!("{line}");
        } else {
            let rec: Record = serde_json::from_str(&line)
                .with_context(|| format!("the daemon sent a record that does not parse: {line}"))?;
            print_tail_line(&rec);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `Audit.Export`: streams the data into `output` and writes the manifest beside it, both
/// fsynced, exactly as an offline export does. A failed export leaves no manifest, so the
/// partial data file cannot pass verification.
async fn export_via_daemon(
    conn: &ConnArgs,
    filter: &ExportFilter,
    format: Format,
    output: &Path,
) -> anyhow::Result<Manifest> {
    let req = pb::ExportRequest {
        from: filter.from.map(|t| t.to_string()).unwrap_or_default(),
        to: filter.to.map(|t| t.to_string()).unwrap_or_default(),
        actor: filter
            .actor
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        action: filter.action.clone().unwrap_or_default(),
        format: format.to_string(),
    };
    let mut stream = audit_client(conn)
        .await?
        .export(req)
        .await
        .map_err(status_error)
        .context("Audit.Export")?
        .into_inner();
    let mp = manifest_path_for(output);
    // A manifest left by an earlier export must not pair with this data while it is written.
    match std::fs::remove_file(&mp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", mp.display())),
    }
    let io = |e| anyhow::Error::new(e).context(format!("writing {}", output.display()));
    let file = std::fs::File::create(output).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    let mut progress = Progress::new();
    let mut manifest = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(status_error).context("Audit.Export")?;
        w.write_all(&chunk.data).map_err(io)?;
        progress.show(ExportProgress {
            scanned: chunk.scanned,
            total: chunk.total,
            exported: chunk.exported,
        });
        if !chunk.manifest.is_empty() {
            manifest = Some(chunk.manifest);
        }
    }
    progress.done();
    let Some(manifest) = manifest else {
        bail!(
            "the daemon ended the export without a manifest; {} is incomplete",
            output.display()
        );
    };
    let m: Manifest = serde_json::from_str(&manifest)
        .context("the daemon sent a manifest that does not parse")?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::write(&mp, manifest.as_bytes())
        .and_then(|()| std::fs::File::open(&mp)?.sync_all())
        .with_context(|| format!("writing {}", mp.display()))?;
    Ok(m)
}

/// `Audit.VerifyStore`: the daemon verifies its live store with its own signing key. With
/// `--public-key`, that key must be the one given.
async fn verify_via_daemon(
    conn: &ConnArgs,
    public_key: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let want = public_key
        .map(|p| keys::read_public_key(p).map(|vk| keys::fingerprint(&vk)))
        .transpose()?;
    let r = audit_client(conn)
        .await?
        .verify_store(pb::VerifyRequest {})
        .await
        .map_err(status_error)
        .context("Audit.VerifyStore")?
        .into_inner();
    if let Some(want) = want {
        if want != r.key_fingerprint {
            eprintln!(
                "applctl: the daemon signs with key {}, not the --public-key given ({want})",
                r.key_fingerprint
            );
            return Ok(ExitCode::from(1));
        }
    }
    if json {
        println!("{}", r.report_json);
    } else {
        println!("{}", r.report);
    }
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn hex_root(r: &[u8; 32]) -> String {
    r.iter().map(|b| format!("{b:02x}")).collect()
}
