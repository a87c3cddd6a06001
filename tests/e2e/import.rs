//! `applctl models import` end to end: a model comes in from "removable media" (a folder with
//! the GGUF and its `.sha256`), verified, into the model store, and the daemon loads and serves
//! it; a wrong digest, a file cut short, a model that does not fit this machine and a file with
//! no digest are each refused with the reason, and leave nothing under the final name (nor a
//! half-copied file behind).

use std::path::Path;

use appl_proto::v1 as pb;

use crate::harness::{greedy, model_path, Daemon, Opts};
use crate::ops_common::{ctl, model_state, sha256_hex, status};

/// Files in the model store, hidden ones included.
fn store_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn import_refuses_what_it_cannot_verify_and_leaves_nothing_behind() {
    let media = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let demo = media.path().join("demo.gguf");
    std::os::unix::fs::symlink(model_path(), &demo).expect("symlink");
    let good = sha256_hex(&model_path());
    // The demo model cut in half: a valid header, half its tensor data.
    let bytes = std::fs::read(model_path()).expect("read the demo model");
    let half = media.path().join("half.gguf");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).expect("write");
    let half_sha = sha256_hex(&half);
    // This machine as recorded, with 64 MiB of RAM free.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/inventories/cpu-only.json");
    let mut inv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).expect("fixture")).expect("JSON");
    inv["memory"]["available_bytes"] = serde_json::json!(64u64 << 20);
    let small = media.path().join("small.json");
    std::fs::write(&small, inv.to_string()).expect("write");

    let dir = store.path().to_str().expect("utf-8").to_owned();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "no digest to check against",
            vec![demo.display().to_string()],
            "no digest to verify",
        ),
        (
            "wrong digest",
            vec![
                demo.display().to_string(),
                "--sha256".into(),
                "ab".repeat(32),
            ],
            "does not match its digest",
        ),
        (
            "cut short, with the digest of what is there",
            vec![half.display().to_string(), "--sha256".into(), half_sha],
            "truncated",
        ),
        (
            "does not fit this machine",
            vec![
                demo.display().to_string(),
                "--sha256".into(),
                good.clone(),
                "--inventory".into(),
                small.display().to_string(),
            ],
            "does not fit",
        ),
        (
            "not a model id",
            vec![
                demo.display().to_string(),
                "--sha256".into(),
                good.clone(),
                "--name".into(),
                ".hidden".into(),
            ],
            "not a model id",
        ),
    ];
    for (name, args, needle) in cases {
        let mut all = vec!["models", "import", "--dir", &dir];
        all.extend(args.iter().map(String::as_str));
        let (code, out, err) = ctl(None, &all);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(err.contains(needle), "{name}: {needle:?} in {err}");
        assert!(
            store_files(store.path()).is_empty(),
            "{name}: the store holds {:?}",
            store_files(store.path())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_model_is_verified_then_loaded_and_served() {
    let media = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let demo = media.path().join("clinic-notes.gguf");
    std::os::unix::fs::symlink(model_path(), &demo).expect("symlink");
    let sha = sha256_hex(&model_path());
    std::fs::write(
        media.path().join("clinic-notes.gguf.sha256"),
        format!("{sha}  clinic-notes.gguf\n"),
    )
    .expect("write");
    let dir = store.path().to_str().expect("utf-8");
    let (code, out, err) = ctl(
        None,
        &[
            "models",
            "import",
            demo.to_str().expect("utf-8"),
            "--dir",
            dir,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&sha) && out.contains("verified"), "{out}");
    assert_eq!(
        store_files(store.path()),
        vec!["clinic-notes.gguf", "clinic-notes.gguf.sha256"]
    );
    assert_eq!(sha256_hex(&store.path().join("clinic-notes.gguf")), sha);
    // Again: refused unless asked to replace.
    let (code, _, err) = ctl(
        None,
        &[
            "models",
            "import",
            demo.to_str().expect("utf-8"),
            "--dir",
            dir,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--replace"), "{err}");

    let d = Daemon::start_with(Opts {
        extra_config: format!("[model_store]\ndir = \"{dir}\"\n"),
        ..Opts::default()
    });
    let socket = Some(d.socket.as_path());
    let (code, out, err) = ctl(socket, &["models", "load", "clinic-notes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("loaded"), "{out}");
    let r = d
        .inference()
        .await
        .generate(pb::GenerateRequest {
            model: "clinic-notes".into(),
            ..greedy("Hello", 4)
        })
        .await
        .expect("the imported model serves")
        .into_inner();
    assert_eq!(r.model, "clinic-notes");
    assert_eq!(model_state(&status(&d).await, "clinic-notes"), "serving");
    let (code, out, _) = ctl(socket, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("clinic-notes") && out.contains("serving"),
        "{out}"
    );
    let (code, out, err) = ctl(socket, &["models", "unload", "clinic-notes", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v[0]["outcome"], "unloaded");
    assert_eq!(v[0]["sha256"], sha.as_str());
}
