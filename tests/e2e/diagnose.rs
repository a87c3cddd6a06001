//! `applctl diagnose` writes one archive that holds what it lists and nothing of a patient's:
//! a marker planted in prompts is nowhere in it, nor the completion, nor the audit keys. It
//! works with the daemon running and with the daemon stopped.

use std::path::{Path, PathBuf};
use std::process::Command;

use appl_audit::keys::{HMAC_KEY_FILE, SIGNING_KEY_FILE};
use appl_proto::v1 as pb;

use crate::harness::{greedy, Daemon};
use crate::ops_common::ctl;

/// Unpacks the archive and returns every file in it (path, bytes).
fn unpack(archive: &Path, into: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar -xzf failed");
    let mut out = Vec::new();
    let mut dirs = vec![into.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs diagnose and checks the archive: each listed file is there, and none of `secrets`
/// appears in any of them. Returns the files by name.
fn diagnose(
    socket: &Path,
    config: &Path,
    log: &Path,
    work: &Path,
    secrets: &[Vec<u8>],
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let archive = work.join("bundle.tar.gz");
    let _ = std::fs::remove_file(&archive);
    let (code, out, err) = ctl(
        Some(socket),
        &[
            "diagnose",
            "--config",
            config.to_str().expect("utf-8"),
            "--log-file",
            log.to_str().expect("utf-8"),
            "--output",
            archive.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wrote"), "{out}");
    let x = work.join("x");
    let _ = std::fs::remove_dir_all(&x);
    std::fs::create_dir_all(&x).expect("mkdir");
    let files = unpack(&archive, &x);
    let by_name: std::collections::BTreeMap<String, Vec<u8>> = files
        .into_iter()
        .map(|(p, b)| {
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                b,
            )
        })
        .collect();
    let manifest = String::from_utf8_lossy(&by_name["MANIFEST.txt"]).into_owned();
    for line in manifest.lines().filter(|l| l.starts_with("included")) {
        let name = line.split_whitespace().nth(1).expect("a name");
        assert!(by_name.contains_key(name), "{name} is listed but missing");
        assert!(out.contains(name), "applctl says what it included: {name}");
    }
    for (name, bytes) in &by_name {
        for s in secrets {
            assert!(
                !contains(bytes, s),
                "{name} holds {:?}",
                String::from_utf8_lossy(s)
            );
        }
    }
    by_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_holds_what_it_lists_and_no_phi_with_the_daemon_up_or_down() {
    let work = tempfile::tempdir().expect("tempdir");
    let marker = format!("PHI-MARKER-{}-7f3a9c", std::process::id());
    let mut d = Daemon::start();
    let mut c = d.inference().await;
    let r = c
        .generate(greedy(
            &format!("Patient {marker} was admitted with chest pain. The attending wrote:"),
            24,
        ))
        .await
        .expect("generate")
        .into_inner();
    c.chat(pb::ChatRequest {
        model: String::new(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: format!("Summarise the chart of {marker}."),
        }],
        max_tokens: Some(8),
        ..Default::default()
    })
    .await
    .expect("chat");
    let audit = d.state_dir().join("audit");
    let mut secrets = vec![marker.clone().into_bytes()];
    if r.text.trim().len() >= 16 {
        secrets.push(r.text.trim().as_bytes().to_vec());
    }
    for key in [SIGNING_KEY_FILE, HMAC_KEY_FILE] {
        let k = std::fs::read(audit.join(key)).expect("an audit key file");
        secrets.push(String::from_utf8_lossy(&k).trim().as_bytes().to_vec());
    }
    let config = d.state_dir().join("appld.toml");
    let log = work.path().join("appld.log");
    std::fs::write(&log, d.log_text()).expect("write log");

    let files = diagnose(&d.socket, &config, &log, work.path(), &secrets);
    for name in [
        "MANIFEST.txt",
        "versions.txt",
        "config.toml",
        "inventory.json",
        "logs.txt",
        "status.txt",
        "audit-verify.json",
    ] {
        assert!(files.contains_key(name), "{name} is in the archive");
    }
    let verify: serde_json::Value =
        serde_json::from_slice(&files["audit-verify.json"]).expect("JSON");
    assert_eq!(verify["ok"], true);
    assert!(String::from_utf8_lossy(&files["versions.txt"]).contains("CPU build"));
    assert!(String::from_utf8_lossy(&files["status.txt"]).contains("gemma-3-270m"));

    // With the daemon stopped: what can be read, and the stopped store's verify report.
    let socket = d.socket.clone();
    assert_eq!(d.terminate(), Some(0));
    std::fs::write(&log, d.log_text()).expect("write log");
    let files = diagnose(&socket, &config, &log, work.path(), &secrets);
    assert!(!files.contains_key("status.txt"));
    let manifest = String::from_utf8_lossy(&files["MANIFEST.txt"]).into_owned();
    assert!(
        manifest.contains("left out  status.txt: the daemon did not answer"),
        "{manifest}"
    );
    let verify: serde_json::Value =
        serde_json::from_slice(&files["audit-verify.json"]).expect("JSON");
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(files.contains_key("logs.txt") && files.contains_key("config.toml"));
}
