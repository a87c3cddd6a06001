//! `applctl audit export|verify|tail`, directly on a stopped daemon's store or on export files.
//!
//! Thin: argument parsing and printing over `appl-audit`, where the logic is tested.
//!
//! Exit codes: 0 success (verify: OK), 1 verification failed (tampering or damage found),
//! 69 (EX_UNAVAILABLE) the store is held by a running daemon; other errors are reported by the
//! caller's `anyhow` handling.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use appl_audit::{
    export_to_files, keys, manifest_path_for, verify_export_files, verify_store, AuditError,
    ExportFilter, ExportProgress, Format, Ident, StoreReader, Timestamp, VerifyReport,
};

/// Default store directory of a packaged daemon.
pub const DEFAULT_STORE: &str = "/var/lib/appl/audit";

/// Audit log commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Export records, with a manifest (`<OUTPUT>.manifest.json`) for offline verification.
    Export {
        /// Store directory of a stopped daemon.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
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
    /// Verify an export offline (DATA and --public-key), or a stopped daemon's store (--store).
    Verify {
        /// Export data file; its manifest is `<DATA>.manifest.json` unless --manifest is given.
        #[arg(required_unless_present = "store", conflicts_with = "store")]
        data: Option<PathBuf>,
        /// Manifest file.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Store directory of a stopped daemon.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Ed25519 public key file (hex). Required for exports; for a store it defaults to the
        /// key kept beside it, which proves less.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the newest records of a stopped daemon's store.
    Tail {
        /// Store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
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
            eprintln!("applctl: {}: {why}", dir.display());
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

/// Runs an audit command.
pub fn run(cmd: &AuditCmd) -> anyhow::Result<ExitCode> {
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
            let reader = match open_store(store)? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            let tty = std::io::stderr().is_terminal();
            let mut progress = |p: ExportProgress| {
                if tty && p.total >= 100_000 {
                    eprint!(
                        "\rscanned {}/{} records, {} exported",
                        p.scanned, p.total, p.exported
                    );
                }
            };
            let m = export_to_files(&reader, &filter, *format, output, &mut progress)
                .with_context(|| format!("exporting to {}", output.display()))?;
            if tty {
                eprintln!();
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
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
            }
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
                bail!("give an export file, or --store DIR");
            };
            let Some(pk) = public_key else {
                bail!("verifying an export needs --public-key FILE (the appliance's audit-signing.pub)");
            };
            let vk = keys::read_public_key(pk)?;
            let mp = manifest.clone().unwrap_or_else(|| manifest_path_for(data));
            report(&verify_export_files(data, &mp, &vk)?, *json)
        }
        AuditCmd::Tail { store, lines, json } => {
            let reader = match open_store(store)? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            for r in reader.tail(*lines)? {
                if *json {
                    println!("{}", String::from_utf8(r.record.canonical_bytes())?);
                } else {
                    let rec = &r.record;
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
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn hex_root(r: &[u8; 32]) -> String {
    r.iter().map(|b| format!("{b:02x}")).collect()
}
