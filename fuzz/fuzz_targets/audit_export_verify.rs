//! The audit export verifier: a manifest (JSON) and export data, both attacker-controlled,
//! with the key of the seed corpus. It must never panic, and must never report a file OK
//! unless the manifest's signature and the signed root both check out.
#![no_main]

use appl_audit::{verify_export, Format, Manifest};
use libfuzzer_sys::fuzz_target;

/// The public key of the seed exports (scripts/fuzz.sh seeds makes them with this key's seed).
const SEED_KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    // [manifest length: u16 BE][manifest JSON][export data]
    if data.len() < 2 {
        return;
    }
    let n = u16::from_be_bytes([data[0], data[1]]) as usize;
    let Some(manifest) = data.get(2..2 + n) else {
        return;
    };
    let body = &data[2 + n..];
    let Ok(m) = serde_json::from_slice::<Manifest>(manifest) else {
        return;
    };
    let vk = ed25519_dalek::SigningKey::from_bytes(&SEED_KEY).verifying_key();
    if let Ok(rep) = verify_export(&mut &body[..], &m, &vk) {
        if rep.ok {
            assert!(m.verify_signature(&vk).is_ok());
            assert!(m.checkpoint.verify_signature(&vk).is_ok());
            let _ = Format::Jsonl;
        }
    }
});
