//! Identity and transport security against the real daemon, with certificates made in the
//! test: mTLS refusals and their codes, roles, tenants from identity, the Unix socket's admin
//! group, API keys, SIGHUP certificate rotation under a running stream, and input limits that
//! name their keys. Every refusal must be in the audit log.

use std::path::Path;
use std::process::Command;

use appl_proto::v1 as pb;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::pki::Ca;
use crate::harness::{greedy, Daemon, Opts};

/// The newest `n` audit records, read over the Unix socket (root is an auditor there).
async fn tail(d: &Daemon, n: u32) -> Vec<serde_json::Value> {
    pb::audit_client::AuditClient::new(d.channel().await)
        .tail(pb::TailRequest { n })
        .await
        .expect("Tail over the Unix socket")
        .into_inner()
        .records
        .iter()
        .map(|r| serde_json::from_str(r).expect("a record is JSON"))
        .collect()
}

/// The `auth.denied` record with this reason, if the newest records hold one.
async fn denial(d: &Daemon, reason: &str) -> Option<serde_json::Value> {
    tail(d, 200)
        .await
        .into_iter()
        .find(|r| r["action"] == "auth.denied" && r["reason"] == reason)
}

async fn generate_on(ch: Channel) -> Result<pb::GenerateResponse, tonic::Status> {
    pb::inference_client::InferenceClient::new(ch)
        .generate(greedy("Hello", 2))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn mtls_refusals_have_their_codes_and_are_audited_and_the_right_role_succeeds() {
    let d = Daemon::start();
    // No client certificate: the handshake completes, every call but health is refused.
    let none = d
        .tls_channel(None)
        .await
        .expect("TLS without a client certificate");
    let e = generate_on(none.clone()).await.expect_err("no certificate");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("client certificate"),
        "{}",
        e.message()
    );
    let health = tonic_health::pb::health_client::HealthClient::new(none)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no identity");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // A certificate from another CA, an expired one, an unmapped one: each UNAUTHENTICATED.
    let other = Ca::new("some other CA").client("e2e-inference");
    let expired = d.ca.as_ref().expect("tls").expired_client("e2e-inference");
    let stranger = d.client_cert("stranger");
    for (cert, want) in [
        (&other, "site CA"),
        (&expired, "expired"),
        (&stranger, "not a known identity"),
    ] {
        let ch = d.tls_channel(Some(cert)).await.expect("connect");
        let e = generate_on(ch).await.expect_err(want);
        assert_eq!(e.code(), Code::Unauthenticated, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }

    // A valid identity without the role: PERMISSION_DENIED. With it: served.
    let inference = d
        .tls_channel(Some(&d.client_cert("e2e-inference")))
        .await
        .expect("connect");
    let e = pb::admin_client::AdminClient::new(inference.clone())
        .status(pb::StatusRequest {})
        .await
        .expect_err("inference may not read Admin.Status");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("operator role"), "{}", e.message());
    generate_on(inference).await.expect("inference generates");
    let operator = d
        .tls_channel(Some(&d.client_cert("e2e-operator")))
        .await
        .expect("connect");
    let st = pb::admin_client::AdminClient::new(operator)
        .status(pb::StatusRequest {})
        .await
        .expect("the operator reads status")
        .into_inner();
    assert_eq!(st.tcp_security, "mtls");
    assert_eq!(st.caller, "cert:e2e-operator");
    assert_eq!(st.caller_roles, "operator");
    assert!(st
        .certificates
        .iter()
        .any(|c| c.role == "server" && c.seconds_left > 0));

    // Every refusal is in the audit log, with who and why.
    for (reason, actor) in [
        ("tls_no_certificate", "anonymous"),
        ("tls_cert_unknown_ca", "cert:CN=e2e-inference"),
        ("tls_cert_expired", "cert:CN=e2e-inference"),
        ("identity_unknown", "cert:stranger"),
        ("role_required_operator", "cert:e2e-inference"),
    ] {
        let r = denial(&d, reason)
            .await
            .unwrap_or_else(|| panic!("no auth.denied record for {reason}"));
        assert_eq!(r["actor"], actor, "{reason}: {r}");
        assert!(
            r["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{r}"
        );
    }
    // The served request names its verified identity, roles and tenant.
    let served = tail(&d, 50)
        .await
        .into_iter()
        .find(|r| r["action"] == "inference.generate" && r["phase"] == "completed")
        .expect("the generate request's completed record");
    assert_eq!(served["actor"], "cert:e2e-inference");
    assert_eq!(served["roles"], "inference");
    assert_eq!(served["tenant"], "default");
}

#[tokio::test]
async fn a_forged_tenant_is_refused_and_spends_nothing_of_the_other_tenants_quota() {
    let d = Daemon::start_with(Opts {
        extra_config: r#"
[[tenants]]
name = "ward-a"
max_concurrent = 1
tokens_per_minute = 60

[[tenants]]
name = "ward-b"

[[identities]]
cn = "ward-b-app"
tenant = "ward-b"
roles = ["inference"]

[[identities]]
cn = "litellm"
tenant = "default"
roles = ["inference", "gateway"]
"#
        .into(),
        ..Opts::default()
    });
    let ward_b = d
        .tls_channel(Some(&d.client_cert("ward-b-app")))
        .await
        .expect("connect");
    let mut c = pb::inference_client::InferenceClient::new(ward_b);
    for _ in 0..3 {
        let mut req = tonic::Request::new(greedy("Spend ward-a's tokens", 40));
        req.metadata_mut()
            .insert("x-appl-tenant", "ward-a".parse().expect("ascii"));
        let e = c.generate(req).await.expect_err("forged tenant");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("gateway"), "{}", e.message());
    }
    // Its own tenant, named or not, is fine.
    let mut own = tonic::Request::new(greedy("Hello", 2));
    own.metadata_mut()
        .insert("x-appl-tenant", "ward-b".parse().expect("ascii"));
    c.generate(own).await.expect("its own tenant");

    // ward-a's quota is untouched: nothing ran for it, nothing was refused for it.
    let st = d
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (st.rejected_tenant_concurrency, st.rejected_tenant_rate),
        (0, 0)
    );
    let records = tail(&d, 100).await;
    assert!(
        !records
            .iter()
            .any(|r| r["tenant"] == "ward-a" && r["action"] == "inference.generate"),
        "no request ran as ward-a"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["reason"] == "tenant_mismatch" && r["actor"] == "cert:ward-b-app")
            .count(),
        3,
        "each forgery is recorded"
    );
    // A gateway may name ward-a; it then spends ward-a's quota, on record as itself.
    let gw = d
        .tls_channel(Some(&d.client_cert("litellm")))
        .await
        .expect("connect");
    let mut req = tonic::Request::new(greedy("Hello", 2));
    req.metadata_mut()
        .insert("x-appl-tenant", "ward-a".parse().expect("ascii"));
    let id = pb::inference_client::InferenceClient::new(gw)
        .generate(req)
        .await
        .expect("a gateway names a tenant")
        .into_inner()
        .request_id;
    let rec = tail(&d, 20)
        .await
        .into_iter()
        .find(|r| r["request_id"] == id.as_str() && r["phase"] == "completed")
        .expect("the gateway's request");
    assert_eq!(
        (rec["actor"].as_str(), rec["tenant"].as_str()),
        (Some("cert:litellm"), Some("ward-a"))
    );
    assert_eq!(rec["roles"], "inference+gateway");
}

/// Runs applctl on the daemon's socket as uid/gid 65534 (nobody), outside the admin group.
fn applctl_as_nobody(d: &Daemon, args: &[&str]) -> (i32, String) {
    let applctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    let mut cmd = if nix_is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&applctl);
        c
    } else {
        // Not root: this user is already outside the admin group (unless the machine put it
        // in appl-admin, which the assertions below would show).
        Command::new(&applctl)
    };
    let out = cmd
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("APPL_ADDR")
        .output()
        .expect("run applctl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_unix_socket_caller_outside_the_admin_group_gets_only_inference() {
    let d = Daemon::start_with(Opts {
        socket_mode: 0o666,
        ..Opts::default()
    });
    // Let other users reach the socket in the test's private folder.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.state_dir(), std::fs::Permissions::from_mode(0o755))
            .expect("open the state folder");
    }
    let (code, out) = applctl_as_nobody(&d, &["status"]);
    assert_ne!(code, 0, "status needs operator: {out}");
    assert!(
        out.contains("PermissionDenied") && out.contains("operator role"),
        "{out}"
    );
    let (code, out) = applctl_as_nobody(&d, &["audit", "tail"]);
    assert_ne!(code, 0, "audit needs auditor: {out}");
    assert!(
        out.contains("PermissionDenied") && out.contains("auditor role"),
        "{out}"
    );
    let (code, out) = applctl_as_nobody(&d, &["models"]);
    assert_eq!(code, 0, "inference is granted to local users: {out}");
    // Root (this test) is an admin: it reads both, and sees the refusals on record.
    let st = d
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("root reads status");
    assert_eq!(st.get_ref().caller, "uid:0");
    if nix_is_root() {
        for reason in ["role_required_operator", "role_required_auditor"] {
            let r = denial(&d, reason)
                .await
                .unwrap_or_else(|| panic!("{reason} recorded"));
            assert_eq!(r["actor"], "uid:65534", "{r}");
            assert!(
                r["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("unix:uid=65534")),
                "{r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_clients_without_certificates_and_are_never_logged() {
    let good = "appl_e2e_good_0123456789abcdef0123456789abcdef";
    let revoked = "appl_e2e_revoked_fedcba9876543210fedcba98765";
    let unknown = "appl_e2e_unknown_00000000000000000000000000000";
    let digest = |k: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(k.as_bytes()))
    };
    let keys = |good_enabled: bool| {
        format!(
            r#"
[[tenants]]
name = "batch"

[[api_keys]]
name = "nightly"
sha256 = "{}"
tenant = "batch"
roles = ["inference"]
enabled = {good_enabled}

[[api_keys]]
name = "old-laptop"
sha256 = "{}"
tenant = "batch"
roles = ["inference"]
enabled = false
"#,
            digest(good),
            digest(revoked)
        )
    };
    let d = Daemon::start_with(Opts {
        tls_extra: "client_certs = \"optional\"".into(),
        extra_config: keys(true),
        ..Opts::default()
    });
    let ch = d
        .tls_channel(None)
        .await
        .expect("TLS without a certificate");
    let with_key =
        |k: &str| appl_proto::client::Authed::new(ch.clone(), Some(k)).expect("a printable key");
    // No key and no certificate: refused (no anonymous roles are configured).
    let e = generate_on(ch.clone()).await.expect_err("no credentials");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let r = pb::inference_client::InferenceClient::new(with_key(good))
        .generate(greedy("Hello", 2))
        .await
        .expect("a good key")
        .into_inner();
    for (k, want) in [(unknown, "not known"), (revoked, "disabled")] {
        let e = pb::inference_client::InferenceClient::new(with_key(k))
            .generate(greedy("Hello", 2))
            .await
            .expect_err(want);
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(want), "{}", e.message());
    }
    // Revoking the good key with a reload: refused from then on.
    std::fs::write(
        d.state_dir().join("appld.toml"),
        std::fs::read_to_string(d.state_dir().join("appld.toml"))
            .expect("config")
            .replace(&keys(true), &keys(false)),
    )
    .expect("rewrite config");
    let line = tokio::task::block_in_place(|| d.reload());
    assert!(line.contains("config reloaded"), "{line}");
    let e = pb::inference_client::InferenceClient::new(with_key(good))
        .generate(greedy("Hello", 2))
        .await
        .expect_err("revoked by reload");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let records = tail(&d, 50).await;
    let served = records
        .iter()
        .find(|x| x["request_id"] == r.request_id.as_str() && x["phase"] == "completed")
        .expect("the keyed request");
    assert_eq!(
        (served["actor"].as_str(), served["tenant"].as_str()),
        (Some("key:nightly"), Some("batch"))
    );
    for reason in ["api_key_unknown", "api_key_disabled", "no_credentials"] {
        assert!(
            records.iter().any(|x| x["reason"] == reason),
            "{reason} recorded"
        );
    }
    assert!(records
        .iter()
        .any(|x| x["action"] == "config.reload" && x["reason"] == "applied"));
    // Nothing of any key in the daemon's log or the audit records.
    let logs = d.log_text();
    let audit = serde_json::to_string(&records).expect("json");
    for k in [good, revoked, unknown] {
        let secret = &k["appl_e2e_".len()..];
        assert!(!logs.contains(secret), "a key reached the log");
        assert!(!audit.contains(secret), "a key reached the audit log");
    }
}

/// The leaf certificate a fresh TLS connection to the daemon is served.
async fn served_certificate(d: &Daemon) -> Vec<u8> {
    let ca = d.ca.as_ref().expect("tls");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add the CA");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(d.tcp)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .to_vec()
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_server_certificate_while_a_stream_runs_to_its_end() {
    let d = Daemon::start();
    let before = served_certificate(&d).await;
    let ch = d
        .tls_channel(Some(&d.client_cert("e2e-inference")))
        .await
        .expect("connect");
    let mut stream = pb::inference_client::InferenceClient::new(ch)
        .generate_stream(greedy("Write a long story about the sea.", 120))
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a first chunk").expect("ok");

    // A bad config first: refused, the old certificate stays, and the refusal is recorded.
    let dir = d.state_dir().to_owned();
    std::fs::write(dir.join("server.key"), "not a key").expect("break the key");
    let line = tokio::task::block_in_place(|| d.reload());
    assert!(
        line.contains("config reload refused") && line.contains("tls.key"),
        "{line}"
    );
    assert_eq!(
        served_certificate(&d).await,
        before,
        "the old certificate stays"
    );

    // Then a new certificate: new connections get it, the running stream completes.
    let (cert, key) = d.ca.as_ref().expect("tls").server();
    std::fs::write(dir.join("server.crt"), &cert).expect("new cert");
    std::fs::write(dir.join("server.key"), key).expect("new key");
    let line = tokio::task::block_in_place(|| d.reload());
    assert!(line.contains("config reloaded"), "{line}");
    let after = served_certificate(&d).await;
    assert_ne!(after, before, "new connections get the new certificate");
    let new_der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
    assert_eq!(after, new_der.to_vec());
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the stream survives the reload");
        if chunk.finish_reason != 0 {
            last = Some(chunk);
        }
    }
    let last = last.expect("a final chunk");
    assert_eq!(last.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(last.usage.expect("usage").completion_tokens, 120);
    let reloads: Vec<_> = tail(&d, 50)
        .await
        .into_iter()
        .filter(|r| r["action"] == "config.reload")
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reloads, ["invalid_config", "applied"]);
}

#[tokio::test]
async fn input_limits_refuse_naming_their_keys() {
    let d = Daemon::start();
    let mut c = d.inference().await;
    let limit_of = |s: &tonic::Status| {
        s.metadata()
            .get("x-appl-limit")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // A 5 MB message is refused as it arrives, naming limits.max_message_bytes.
    let e = c
        .generate(greedy(&"a".repeat(5 << 20), 2))
        .await
        .expect_err("over the message limit");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("limits.max_message_bytes"),
        "{}",
        e.message()
    );
    // 40 KB of metadata.
    let mut req = tonic::Request::new(greedy("Hello", 2));
    req.metadata_mut()
        .insert("x-padding", "p".repeat(40 << 10).parse().expect("ascii"));
    let e = c.generate(req).await.expect_err("over the metadata limit");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(limit_of(&e).as_deref(), Some("limits.max_metadata_bytes"));
    // Chat messages, stop sequences, max_tokens.
    let chat = pb::ChatRequest {
        messages: (0..300)
            .map(|_| pb::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            })
            .collect(),
        ..Default::default()
    };
    let e = c.chat(chat).await.expect_err("too many messages");
    assert_eq!(limit_of(&e).as_deref(), Some("limits.max_chat_messages"));
    let mut many_stops = greedy("Hello", 2);
    many_stops.stop = (0..20).map(|i| format!("s{i}")).collect();
    let e = c.generate(many_stops).await.expect_err("too many stops");
    assert_eq!(limit_of(&e).as_deref(), Some("limits.max_stop_sequences"));
    let mut long_stop = greedy("Hello", 2);
    long_stop.stop = vec!["x".repeat(300)];
    let e = c.generate(long_stop).await.expect_err("a long stop");
    assert_eq!(limit_of(&e).as_deref(), Some("limits.max_stop_bytes"));
    let e = c
        .generate(greedy("Hello", 100_000))
        .await
        .expect_err("max_tokens");
    assert_eq!(limit_of(&e).as_deref(), Some("limits.max_tokens_cap"));
    // Still serving.
    c.generate(greedy("Hello", 2))
        .await
        .expect("a normal request");
}

#[tokio::test]
async fn plaintext_tcp_is_explicit_and_loud() {
    let d = Daemon::start_with(Opts {
        plaintext_tcp: true,
        extra_config: "[auth]\nanonymous_roles = [\"inference\"]\n".into(),
        ..Opts::default()
    });
    assert!(
        d.log_text()
            .contains("INSECURE: gRPC on TCP is served WITHOUT TLS"),
        "{}",
        d.log_text()
    );
    // Anonymous callers get only what the config grants.
    let ch = d.tcp_channel().await;
    generate_on(ch.clone()).await.expect("anonymous inference");
    let e = pb::admin_client::AdminClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .expect_err("anonymous operator");
    assert_eq!(e.code(), Code::PermissionDenied);
    let applctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    let out = Command::new(applctl)
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .env_remove("APPL_ADDR")
        .output()
        .expect("applctl status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("WARNING: appld serves gRPC on TCP WITHOUT TLS"),
        "{text}"
    );
}
