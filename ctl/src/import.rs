//! `applctl models import FILE`: bring a GGUF model in from removable media, verified.
//!
//! In order, refusing at the first failure with the reason (exit 1), and leaving nothing
//! behind under the final name:
//!
//! 1. the digest to verify against: `--sha256 HEX`, else `FILE.sha256` beside the file (as
//!    `sha256sum` writes it); with neither, nothing is imported;
//! 2. the GGUF header, with the reader appld uses, and that the file holds all its tensor
//!    data;
//! 3. the sizing rules against this machine (or `--inventory`), with the settings given;
//! 4. the copy into the model store, hashed as it is read (one pass, with a progress bar on a
//!    terminal), to a hidden temporary file in the same folder, fsynced, then compared with the
//!    digest; only then is it renamed to `NAME.gguf`, with the verified digest written beside
//!    it as `NAME.gguf.sha256` (appld refuses a model whose file no longer matches it).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::probe;
use appl_firmware_profiles::sizing::{self, GpuLayers, ModelSettings};
use appl_firmware_profiles::units::{gib, human};
use sha2::{Digest as _, Sha256};

/// Copy a GGUF model into the model store, verified.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The GGUF file, e.g. on a USB stick.
    pub file: PathBuf,
    /// The expected SHA-256 (64 hex digits). Without it, `FILE.sha256` must be beside the file.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The model id to import as (the file is stored as NAME.gguf); the file's stem by default.
    #[arg(long)]
    pub name: Option<String>,
    /// The model store (appld's `model_store.dir`).
    #[arg(long, env = "APPL_MODEL_DIR", default_value = "/var/lib/appl/models")]
    pub dir: PathBuf,
    /// Replace a model of the same name (then `applctl models reload NAME` swaps it in).
    #[arg(long)]
    pub replace: bool,
    /// Slots the sizing rules plan for (appld's default for a model from the store).
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Context per slot the sizing rules plan for.
    #[arg(long, default_value_t = 2048)]
    pub ctx: u32,
    /// Tokens per engine step the sizing rules plan for.
    #[arg(long, default_value_t = 512)]
    pub batch: u32,
    /// Size against a recorded inventory instead of probing this machine.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Refuses the import: the reason on stderr, exit 1.
fn refuse(msg: impl Into<String>) -> anyhow::Result<ExitCode> {
    eprintln!("applctl: import refused: {}", msg.into());
    Ok(ExitCode::FAILURE)
}

/// The digest in `text` (the first word, as sha256sum writes it), lowercased.
fn parse_digest(text: &str) -> Option<String> {
    let hex = text.split_whitespace().next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A temporary file that is removed unless it was renamed into place.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs `applctl models import`.
pub fn run(a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if appl_audit::Ident::new(name.as_str()).is_err() || name.contains('/') || name.starts_with('.')
    {
        return refuse(format!(
            "{name:?} is not a model id appld accepts (1-256 of letters, digits and ._-:@=,+[]#, \
             no / and no leading dot); choose one with --name"
        ));
    }
    // 1. The digest to verify against.
    let want = match &a.sha256 {
        Some(h) => match parse_digest(h) {
            Some(d) => d,
            None => return refuse(format!("--sha256 {h:?} is not 64 hex digits")),
        },
        None => {
            let side = with_suffix(&a.file, ".sha256");
            match std::fs::read_to_string(&side) {
                Ok(t) => match parse_digest(&t) {
                    Some(d) => d,
                    None => {
                        return refuse(format!(
                            "{} does not start with a SHA-256 (64 hex digits)",
                            side.display()
                        ))
                    }
                },
                Err(_) => {
                    return refuse(format!(
                        "there is no digest to verify {} against: pass --sha256 HEX, or put \
                         {} beside it",
                        a.file.display(),
                        side.display()
                    ))
                }
            }
        }
    };
    // 2. The header, and that the file holds its tensor data.
    let info = match GgufInfo::from_path(&a.file) {
        Ok(i) => i,
        Err(e) => return refuse(e.to_string()),
    };
    let len = std::fs::metadata(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?
        .len();
    if let Err(e) = info.check_complete(len) {
        return refuse(format!(
            "{}: {e}; the copy on the media is incomplete",
            a.file.display()
        ));
    }
    // 3. The sizing rules against this machine.
    let inventory = match &a.inventory {
        Some(p) => Inventory::from_path(p).with_context(|| format!("inventory {}", p.display()))?,
        None => probe::probe_system().context("probing this machine")?,
    };
    let deployment = sizing::engine_deployment(&ModelSettings {
        slots: a.slots,
        ctx_per_slot: a.ctx,
        batch_tokens: a.batch.max(a.slots),
    });
    let estimate = sizing::estimate(&info, &deployment);
    let placement = match sizing::fit(&estimate, &inventory, GpuLayers::Auto) {
        Ok(p) => p,
        Err(e) => {
            return refuse(format!(
                "{} does not fit this machine with {} slots of {} tokens: {}",
                a.file.display(),
                a.slots,
                a.ctx,
                e.message
            ))
        }
    };
    // 4. The verified copy.
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("creating the model store {}", a.dir.display()))?;
    let dest = a.dir.join(format!("{name}.gguf"));
    if dest.exists() && !a.replace {
        return refuse(format!(
            "{} already exists; pass --replace to replace it (then `applctl models reload {name}`)",
            dest.display()
        ));
    }
    let tmp = Temp {
        path: a
            .dir
            .join(format!(".{name}.gguf.partial-{}", std::process::id())),
        keep: false,
    };
    let t = Instant::now();
    let got = copy_hashed(&a.file, &tmp.path, len)?;
    if got != want {
        return refuse(format!(
            "{} does not match its digest: expected SHA-256 {want}, the copy hashes to {got}; \
             the media may be damaged or the file is not the one the digest is for",
            a.file.display()
        ));
    }
    // The copy is what is imported: read its header again.
    if let Err(e) = GgufInfo::from_path(&tmp.path).and_then(|i| i.check_complete(len)) {
        return refuse(format!("the copy is not a usable GGUF model: {e}"));
    }
    let side_tmp = Temp {
        path: a.dir.join(format!(
            ".{name}.gguf.sha256.partial-{}",
            std::process::id()
        )),
        keep: false,
    };
    {
        let mut f = File::create(&side_tmp.path)
            .with_context(|| format!("writing {}", side_tmp.path.display()))?;
        writeln!(f, "{want}  {name}.gguf")?;
        f.sync_all()?;
    }
    let mut tmp = tmp;
    std::fs::rename(&tmp.path, &dest)
        .with_context(|| format!("renaming the copy to {}", dest.display()))?;
    tmp.keep = true;
    let mut side_tmp = side_tmp;
    let side = with_suffix(&dest, ".sha256");
    std::fs::rename(&side_tmp.path, &side)
        .with_context(|| format!("renaming the digest to {}", side.display()))?;
    side_tmp.keep = true;
    File::open(&a.dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", a.dir.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": name, "path": dest, "sha256": want, "bytes": len,
            "seconds": secs, "placement": placement.summary(),
            "needs_bytes": estimate.total,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "imported {} as {name}: {} ({}), SHA-256 {want} verified, in {secs:.1} s",
            a.file.display(),
            dest.display(),
            human(len)
        );
        println!(
            "sized for {} slots x {} tokens: needs {}; {}",
            a.slots,
            a.ctx,
            gib(estimate.total),
            placement.summary()
        );
        println!("load it with: applctl models load {name}   (or reload {name} to replace a running one)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies `from` to a new file `to`, fsynced, and returns the SHA-256 of what was read, in hex.
/// Draws a progress bar on a terminal.
fn copy_hashed(from: &Path, to: &Path, len: u64) -> anyhow::Result<String> {
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let bar = std::io::stderr().is_terminal();
    let t = Instant::now();
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .with_context(|| format!("writing {}", to.display()))?;
        done += n as u64;
        if bar {
            progress(done, len, t.elapsed().as_secs_f64());
        }
    }
    dst.sync_all()
        .with_context(|| format!("syncing {}", to.display()))?;
    if bar {
        eprintln!();
    }
    Ok(hex::encode(h.finalize()))
}

fn progress(done: u64, total: u64, secs: f64) {
    const WIDTH: usize = 30;
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * WIDTH as f64) as usize;
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    eprint!(
        "\r  [{}{}] {:>3.0}%  {} of {}  {}/s ",
        "=".repeat(filled),
        " ".repeat(WIDTH - filled),
        frac * 100.0,
        human(done),
        human(total),
        human(rate as u64)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_read_as_sha256sum_writes_them() {
        let d = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(parse_digest(d).as_deref(), Some(d));
        assert_eq!(
            parse_digest(&format!("{}  model.gguf\n", d.to_uppercase())).as_deref(),
            Some(d)
        );
        assert_eq!(parse_digest("abc"), None);
        assert_eq!(parse_digest(""), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }

    #[test]
    fn a_copy_is_hashed_and_an_existing_file_is_never_overwritten() {
        let d = tempfile::tempdir().expect("tempdir");
        let from = d.path().join("a");
        std::fs::write(&from, b"abc").expect("write");
        let to = d.path().join("b");
        let got = copy_hashed(&from, &to, 3).expect("copy");
        assert_eq!(
            got,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(std::fs::read(&to).expect("read"), b"abc");
        assert!(copy_hashed(&from, &to, 3).is_err(), "create_new");
    }
}
