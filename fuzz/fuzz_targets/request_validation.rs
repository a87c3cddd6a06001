//! Request validation as a client can reach it without a model: a protobuf request off the
//! wire (prost decoding), its conversion into the daemon's input, the model-free checks
//! against the default limits, and the edge's identity resolution of the metadata it carries
//! (API key and tenant headers). Nothing may panic; every refusal has a status code.
#![no_main]

use std::sync::Arc;

use appl_proto::v1 as pb;
use appld::identity::{self, PeerAuth, Presented};
use appld::request::validate::check_input;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // First byte: which message; then two length-prefixed header values; the rest is the body.
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (auth, rest) = take(rest);
    let (tenant, body) = take(rest);
    let limits = appld::config::LimitsConfig::default();
    let input = if kind % 2 == 0 {
        pb::GenerateRequest::decode(body)
            .ok()
            .and_then(|m| appld::api::convert::generate_input(tonic::Request::new(m), "Generate").ok())
    } else {
        pb::ChatRequest::decode(body)
            .ok()
            .and_then(|m| appld::api::convert::chat_input(tonic::Request::new(m), "Chat").ok())
    };
    if let Some(input) = input {
        if let Err(e) = check_input(&limits, &input) {
            assert_ne!(e.code(), tonic::Code::Ok);
        }
    }
    let table = appld::identity::AuthTable::default();
    let conn = PeerAuth::Unix {
        uid: 1000,
        gid: 1000,
        groups: Arc::from(vec![1000u32]),
    };
    let p = Presented {
        conn: Some(&conn),
        remote: None,
        authorization: (!auth.is_empty()).then_some(auth),
        tenant: (!tenant.is_empty()).then_some(tenant),
        certs_required: kind & 2 != 0,
    };
    match identity::resolve(&table, &p) {
        Ok(c) => assert!(!c.tenant().is_empty()),
        Err(d) => assert!(!d.reason.is_empty()),
    }
});

/// A value of at most 255 bytes, prefixed by its length.
fn take(b: &[u8]) -> (&[u8], &[u8]) {
    match b.split_first() {
        Some((&n, rest)) if rest.len() >= n as usize => rest.split_at(n as usize),
        _ => (&[], b),
    }
}
