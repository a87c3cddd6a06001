//! `appl.v1.Audit` and `applctl audit export|verify|tail` through a running daemon: tail shows
//! the requests just served, an export through the daemon verifies offline with only the
//! public key (and fails once a byte is flipped), the live store verifies, and over TCP only
//! an mTLS identity with the auditor role may use it (an auditor exports over mTLS).

use std::path::Path;
use std::process::{Command, Output};

use appl_audit::keys::PUBLIC_KEY_FILE;
use appl_proto::v1 as pb;
use tonic::Code;

use crate::harness::{applctl, greedy, Daemon};

/// Runs `applctl ARGS` (with the daemon's socket unless `--addr` or `--store` is given) and
/// returns (exit code, stdout, stderr).
fn ctl(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(applctl());
    cmd.arg("--socket").arg(&d.socket).args(args);
    // The environment must not redirect applctl elsewhere.
    cmd.env_remove("APPL_ADDR").env_remove("APPL_SOCKET");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run applctl");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[tokio::test]
async fn audit_through_the_daemon_tail_export_verify_and_tcp_refused() {
    let d = Daemon::start();
    let mut c = d.inference().await;
    // Enough cheap requests (tokenize: one event record each) that the export spans several
    // stream chunks.
    let tokenized = futures::future::join_all((0..300).map(|i| {
        let mut c = c.clone();
        async move {
            c.tokenize(pb::TokenizeRequest {
                model: String::new(),
                input: Some(pb::tokenize_request::Input::Prompt(format!("word {i}"))),
            })
            .await
        }
    }))
    .await;
    assert!(tokenized.iter().all(Result::is_ok), "tokenize failed");

    let mut ids = Vec::new();
    for prompt in ["One", "Two", "Three"] {
        let r = c
            .generate(greedy(prompt, 2))
            .await
            .expect("generate")
            .into_inner();
        ids.push(r.request_id);
    }

    // Tail through the daemon shows the requests, admitted and completed.
    let (code, out, err) = ctl(&d, &["audit", "tail", "-n", "50", "--json"]);
    assert_eq!(code, 0, "tail failed: {err}");
    for id in &ids {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(id.as_str())).collect();
        assert_eq!(
            lines.len(),
            2,
            "request {id}: admitted and completed in:\n{out}"
        );
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("tail --json is JSON");
            assert_eq!(v["action"], "inference.generate");
        }
    }
    let (code, out, err) = ctl(&d, &["audit", "tail", "-n", "3"]);
    assert_eq!(code, 0, "tail failed: {err}");
    assert_eq!(out.lines().count(), 3, "{out}");

    // Export through the daemon, then verify offline with only the public key.
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("export.jsonl");
    let data_s = data.to_str().expect("utf-8 path");
    let (code, out, err) = ctl(&d, &["audit", "export", "-o", data_s]);
    assert_eq!(code, 0, "export failed: {err}");
    assert!(out.contains("exported "), "{out}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.path().join("export.jsonl.manifest.json")).expect("manifest"),
    )
    .expect("manifest is JSON");
    let text = std::fs::read_to_string(&data).expect("export data");
    assert_eq!(
        manifest["count"].as_u64(),
        Some(text.lines().count() as u64),
        "the manifest counts the lines"
    );
    for id in &ids {
        assert!(text.contains(id.as_str()), "request {id} is in the export");
    }
    assert!(
        text.len() > 2 * 64 * 1024 && text.matches("inference.tokenize").count() == 300,
        "the export spans several chunks ({} bytes)",
        text.len()
    );
    let key = d.state_dir().join("audit").join(PUBLIC_KEY_FILE);
    let key_s = key.to_str().expect("utf-8 path");
    let (code, out, err) = ctl(&d, &["audit", "verify", data_s, "--public-key", key_s]);
    assert_eq!(code, 0, "the export does not verify: {out}{err}");
    assert!(out.starts_with("OK"), "{out}");

    // The export itself is on record, admitted and completed.
    let (code, out, _) = ctl(&d, &["audit", "tail", "-n", "10", "--json"]);
    assert_eq!(code, 0);
    let exports: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "audit.export")
        .collect();
    assert_eq!(
        exports.len(),
        2,
        "admitted and completed audit.export in:\n{out}"
    );
    assert_eq!(exports[1]["phase"], "completed");
    assert_eq!(exports[1]["status"], 0);
    assert_eq!(exports[1]["role"], "auditor");

    // Flipping one byte of the export is caught.
    let mut bytes = std::fs::read(&data).expect("read export");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let tampered = work.path().join("tampered.jsonl");
    std::fs::write(&tampered, &bytes).expect("write tampered copy");
    std::fs::copy(
        work.path().join("export.jsonl.manifest.json"),
        work.path().join("tampered.jsonl.manifest.json"),
    )
    .expect("copy manifest");
    let (code, out, _) = ctl(
        &d,
        &[
            "audit",
            "verify",
            tampered.to_str().expect("utf-8 path"),
            "--public-key",
            key_s,
        ],
    );
    assert_eq!(code, 1, "a flipped byte must fail verification: {out}");
    assert!(out.starts_with("FAILED"), "{out}");

    // The live store verifies, through the daemon, against the key handed to auditors.
    let (code, out, err) = ctl(&d, &["audit", "verify", "--public-key", key_s]);
    assert_eq!(code, 0, "the live store does not verify: {out}{err}");
    assert!(out.starts_with("OK"), "{out}");
    let mut audit = pb::audit_client::AuditClient::new(d.channel().await);
    let v = audit
        .verify_store(pb::VerifyRequest {})
        .await
        .expect("VerifyStore over the Unix socket")
        .into_inner();
    assert!(v.ok, "{}", v.report);
    assert_eq!(v.first_bad_seq, None);

    // Over TCP an identity without the auditor role is refused, naming why, and the refusal
    // is recorded; an auditor's certificate is let in.
    let mut tcp = pb::audit_client::AuditClient::new(d.tcp_channel().await);
    let s = tcp
        .tail(pb::TailRequest { n: 5 })
        .await
        .expect_err("Tail as e2e-inference must be refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("auditor role"), "{}", s.message());
    let s = tcp
        .verify_store(pb::VerifyRequest {})
        .await
        .expect_err("VerifyStore without the auditor role must be refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = tcp
        .export(pb::ExportRequest::default())
        .await
        .expect_err("Export without the auditor role must be refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let certs = d.state_dir().join("ctl-certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let ca = certs.join("ca.crt");
    std::fs::write(&ca, &d.ca.as_ref().expect("tls").pem).expect("write ca");
    let (icert, ikey) = d.client_cert("e2e-inference").write(&certs, "inference");
    let (acert, akey) = d.client_cert("e2e-auditor").write(&certs, "auditor");
    let addr = format!("grpcs://{}", d.tcp);
    let tls_args = |cert: &Path, key: &Path| -> Vec<String> {
        [
            "--addr",
            &addr,
            "--ca",
            ca.to_str().expect("utf-8"),
            "--cert",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut args = tls_args(&icert, &ikey);
    args.extend(["audit".into(), "tail".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = ctl(&d, &args);
    assert_ne!(code, 0, "applctl as e2e-inference must fail");
    assert!(err.contains("PermissionDenied"), "{err}");
    let (_, out, _) = ctl(&d, &["audit", "tail", "-n", "5", "--json"]);
    assert!(
        out.lines().any(|l| l.contains("\"auth.denied\"")
            && l.contains("role_required_auditor")
            && l.contains("cert:e2e-inference")),
        "the refusal is recorded with the identity:\n{out}"
    );
    // The auditor exports over mTLS, and the export verifies offline.
    let export = d.state_dir().join("over-mtls.jsonl");
    let mut args = tls_args(&acert, &akey);
    args.extend(
        [
            "audit",
            "export",
            "--output",
            export.to_str().expect("utf-8"),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ctl(&d, &args);
    assert_eq!(code, 0, "an auditor exports over mTLS: {out}{err}");
    let (code, out, err) = ctl(
        &d,
        &[
            "audit",
            "verify",
            export.to_str().expect("utf-8"),
            "--public-key",
            key_s,
        ],
    );
    assert_eq!(code, 0, "the mTLS export verifies offline: {out}{err}");
    let (_, out, _) = ctl(&d, &["audit", "tail", "-n", "3", "--json"]);
    assert!(
        out.lines()
            .any(|l| l.contains("\"audit.export\"") && l.contains("cert:e2e-auditor")),
        "the export is recorded with the auditor's identity:\n{out}"
    );

    // Bad export parameters are refused before anything is recorded.
    let s = audit
        .export(pb::ExportRequest {
            format: "xml".into(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown format is refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // With --store, applctl opens the store itself: refused while the daemon holds it (69),
    // and it works again once the daemon has stopped.
    let store = d.state_dir().join("audit");
    let store_s = store.to_str().expect("utf-8 path");
    let (code, _, err) = ctl(&d, &["audit", "tail", "--store", store_s]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("locked"), "{err}");
    drop(audit);
    drop(tcp);
    drop(c);
    // Stop off the runtime's thread, so that the dropped clients' connections can close and
    // the daemon does not wait out its drain timeout for them.
    let (d, code) = tokio::task::spawn_blocking(move || {
        let mut d = d;
        let code = d.terminate();
        (d, code)
    })
    .await
    .expect("stop the daemon");
    assert_eq!(code, Some(0), "{}", d.log_text());
    let (code, out, err) = ctl(
        &d,
        &["audit", "verify", "--store", store_s, "--public-key", key_s],
    );
    assert_eq!(code, 0, "the stopped store does not verify: {out}{err}");
    let (code, out, err) = ctl(&d, &["audit", "tail", "--store", store_s, "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("daemon.stop"), "{out}");
}
