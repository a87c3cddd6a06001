//! Writes the seed corpus of each fuzz target under fuzz/corpus/<target>/: valid inputs that
//! get the fuzzers past the first checks. Deterministic; run again after a format change.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use appl_audit::{Action, AuditConfig, AuditLog, ExportFilter, Format, Ident, NewRecord, Phase, Role};
use appl_proto::v1 as pb;
use prost::Message;

fn corpus(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    d
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let packaged = std::fs::read(root.join("packaging/appld.toml")).expect("packaged config");
    put("config_parse", "packaged.toml", &packaged);
    put(
        "config_parse",
        "tls_identities.toml",
        br#"[server]
listen = "127.0.0.1:0"
[tls]
cert = "s.crt"
key = "s.key"
client_ca = "ca.crt"
client_certs = "optional"
[[tenants]]
name = "ward-a"
[[identities]]
cn = "ward-a-app"
tenant = "ward-a"
roles = ["inference", "gateway"]
[[api_keys]]
name = "k"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
tenant = "ward-a"
roles = ["inference"]
enabled = false
[[models]]
id = "m"
path = "m.gguf"
"#,
    );

    put("gguf_header", "tiny_llama.gguf", &tiny_gguf());

    let generate = pb::GenerateRequest {
        model: "gemma-3-270m".into(),
        prompt: "Once upon a time".into(),
        max_tokens: Some(16),
        stop: vec!["\n".into()],
        sampling: Some(pb::SamplingParams {
            temperature: Some(0.0),
            top_p: Some(0.9),
            ..Default::default()
        }),
        ..Default::default()
    };
    let chat = pb::ChatRequest {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "Hello".into(),
        }],
        max_tokens: Some(8),
        ..Default::default()
    };
    let framed = |kind: u8, auth: &[u8], tenant: &[u8], body: Vec<u8>| {
        let mut v = vec![kind, auth.len() as u8];
        v.extend_from_slice(auth);
        v.push(tenant.len() as u8);
        v.extend_from_slice(tenant);
        v.extend(body);
        v
    };
    put("request_validation", "generate", &framed(0, b"", b"", generate.encode_to_vec()));
    put("request_validation", "chat_keyed", &framed(1, b"Bearer appl_x", b"ward-a", chat.encode_to_vec()));

    audit_seed();
}

/// A GGUF v3 header of a tiny llama model: a few metadata keys and one tensor.
fn tiny_gguf() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(4u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    for (k, v) in [("llama.block_count", 1u32), ("llama.embedding_length", 8), ("llama.context_length", 64)] {
        s(&mut b, k);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    s(&mut b, "blk.0.attn_q.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(8u64.to_le_bytes());
    b.extend(8u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 8 * 8 * 4));
    b
}

/// A signed export (under the fixed seed key the target checks with), whole and filtered.
fn audit_seed() {
    let dir = std::env::temp_dir().join(format!("appl-fuzz-seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("seed store");
    for (file, byte) in [("audit-signing.key", 7u8), ("prompt-hmac.key", 9u8)] {
        let p = dir.join(file);
        std::fs::write(&p, format!("{}\n", hex::encode([byte; 32]))).expect("key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("mode");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let log = AuditLog::open(&dir, AuditConfig::default()).expect("open");
        for i in 0..6u32 {
            let mut r = NewRecord::new(
                if i % 2 == 0 { Action::InferenceGenerate } else { Action::AuthDenied },
                if i % 2 == 0 { Phase::Admitted } else { Phase::Event },
                Ident::new(if i % 3 == 0 { "cert:ward-a-app" } else { "uid:0" }).expect("ident"),
                Role::Inference,
            );
            r.tenant = Ident::new("ward-a").ok();
            r.request_id = Ident::new(format!("req-{i}")).ok();
            log.append(r).await.expect("append");
        }
        log.close().await.expect("close");
    });
    let reader = appl_audit::StoreReader::open(&dir).expect("reader");
    for (name, filter) in [
        ("whole", ExportFilter::default()),
        (
            "filtered",
            ExportFilter {
                actor: Ident::new("uid:0").ok(),
                ..Default::default()
            },
        ),
    ] {
        let mut data = Vec::new();
        let m = appl_audit::export(&reader, &filter, Format::Jsonl, &mut data, &mut |_| {}).expect("export");
        let json = serde_json::to_vec(&m).expect("manifest");
        let mut seed = (json.len() as u16).to_be_bytes().to_vec();
        seed.extend(json);
        seed.extend(data);
        put("audit_export_verify", name, &seed);
    }
    drop(reader);
    let _ = std::fs::remove_dir_all(&dir);
}
