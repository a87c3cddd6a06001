//! Startup failures: each one exits with its own code and names the file at fault.

use std::path::Path;

use crate::harness::{config_text, model_path, run_appld, Opts};

fn write_config(dir: &Path, model: &Path) -> std::path::PathBuf {
    let cfg = dir.join("appld.toml");
    let o = Opts {
        model_path: model.to_owned(),
        ..Opts::default()
    };
    std::fs::write(&cfg, config_text(dir, &o)).expect("write config");
    cfg
}

fn check(dir: &Path, model: &Path, code: i32, needles: &[&str]) {
    let cfg = write_config(dir, model);
    let (got, stderr) = run_appld(&["--config", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(got, code, "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}: {stderr}");
    }
}

#[test]
fn missing_model_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.gguf");
    check(
        dir.path(),
        &missing,
        66,
        &[&missing.display().to_string(), "does not exist"],
    );
}

#[test]
fn garbage_model_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all, just text").expect("write");
    check(
        dir.path(),
        &garbage,
        65,
        &[&garbage.display().to_string(), "not a GGUF"],
    );
}

#[test]
fn truncated_model_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truncated = dir.path().join("truncated.gguf");
    let real = std::fs::read(model_path()).expect("read the demo model");
    std::fs::write(&truncated, &real[..real.len() / 3]).expect("write");
    check(
        dir.path(),
        &truncated,
        65,
        &[&truncated.display().to_string()],
    );
}

#[test]
fn malformed_config_exits_78_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nbogus_key = 1\n",
            "bogus_key",
        ),
        (
            "[[models]]\nid = \"m\"\npath = \"m.gguf\"\nslots = -3\n",
            "slots",
        ),
        (
            "[[models]]\nid = \"m\"\npath = \"m.gguf\"\nctx_per_slot = 4\n",
            "models[0].ctx_per_slot",
        ),
        ("not = [valid toml", "line 1"),
    ];
    for (text, key) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).expect("write");
        for extra in [&[][..], &["--check-config"][..]] {
            let mut args = vec!["--config", cfg.to_str().expect("utf-8")];
            args.extend_from_slice(extra);
            let (code, stderr) = run_appld(&args);
            assert_eq!(code, 78, "config {text:?}: {stderr}");
            assert!(
                stderr.contains(key),
                "config {text:?}: stderr should name {key:?}: {stderr}"
            );
        }
    }
    let (code, stderr) = run_appld(&[
        "--config",
        dir.path().join("absent.toml").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("absent.toml"));
}

#[test]
fn check_config_accepts_a_valid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &model_path());
    let (code, stderr) = run_appld(&["--config", cfg.to_str().expect("utf-8"), "--check-config"]);
    assert_eq!(code, 0, "{stderr}");
}
