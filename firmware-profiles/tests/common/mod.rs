//! Test helpers: a small GGUF writer for synthetic model headers, and fixture loading.
#![allow(dead_code)]

use std::path::PathBuf;

use appl_firmware_profiles::gguf::GgmlType;
use appl_firmware_profiles::inventory::Inventory;

/// A metadata value to write.
pub enum V {
    U32(u32),
    F32(f32),
    Str(String),
    ArrU32(Vec<u32>),
    /// An array of `n` strings, all `"t"` (a stand-in vocabulary).
    Vocab(u64),
}

/// Writes a GGUF v3 header (metadata + tensor table, no tensor data).
pub struct GgufWriter {
    kv: Vec<(String, V)>,
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            kv: vec![],
            tensors: vec![],
        }
    }

    pub fn kv(mut self, k: &str, v: V) -> Self {
        self.kv.push((k.to_string(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], t: GgmlType) -> Self {
        self.tensors.push((name.to_string(), dims.to_vec(), t));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        for (k, v) in &self.kv {
            s(&mut b, k);
            match v {
                V::U32(x) => {
                    b.extend_from_slice(&4u32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                V::F32(x) => {
                    b.extend_from_slice(&6u32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                V::Str(x) => {
                    b.extend_from_slice(&8u32.to_le_bytes());
                    s(&mut b, x);
                }
                V::ArrU32(xs) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&4u32.to_le_bytes());
                    b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    for x in xs {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
                V::Vocab(n) => {
                    b.extend_from_slice(&9u32.to_le_bytes());
                    b.extend_from_slice(&8u32.to_le_bytes());
                    b.extend_from_slice(&n.to_le_bytes());
                    for _ in 0..*n {
                        s(&mut b, "t");
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, dims, t) in &self.tensors {
            s(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.0.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            // Malformed-input tests write impossible shapes; size those as 0.
            let n = dims.iter().fold(1u64, |a, d| a.wrapping_mul(*d));
            let size = t.bytes_for(n).unwrap_or(0);
            offset += size.div_ceil(32) * 32;
        }
        b
    }
}

/// Quantization recipes for synthetic llama-shaped models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quant {
    /// llama.cpp Q4_K_M: Q4_K, with Q6_K for the output head and for attn_v/ffn_down in half
    /// the layers (llama.cpp `tools/quantize` "use Q6_K for half of the attention.wv and
    /// feed_forward.w2 tensors").
    Q4KM,
    /// Q8_0 everywhere but the norms.
    Q8_0,
}

/// The shape of a llama-architecture model.
pub struct Shape {
    pub name: &'static str,
    pub n_layer: u32,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_vocab: u64,
}

/// A llama-architecture GGUF header: `n_layer` blocks of `n_embd`, `n_ff`, `n_head` heads with
/// `n_head_kv` KV heads of dim `n_embd / n_head`, vocabulary `n_vocab`.
pub fn llama_header(shape: &Shape, quant: Quant) -> Vec<u8> {
    let Shape {
        name,
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        n_vocab,
    } = *shape;
    let (q_main, q_hi, ftype) = match quant {
        Quant::Q4KM => (GgmlType::Q4_K, GgmlType::Q6_K, 15),
        Quant::Q8_0 => (GgmlType::Q8_0, GgmlType::Q8_0, 7),
    };
    let head_dim = n_embd / u64::from(n_head);
    let kv_dim = head_dim * u64::from(n_head_kv);
    let mut w = GgufWriter::new()
        .kv("general.architecture", V::Str("llama".into()))
        .kv("general.name", V::Str(name.into()))
        .kv("general.file_type", V::U32(ftype))
        .kv("llama.block_count", V::U32(n_layer))
        .kv("llama.context_length", V::U32(131072))
        .kv("llama.embedding_length", V::U32(n_embd as u32))
        .kv("llama.feed_forward_length", V::U32(n_ff as u32))
        .kv("llama.attention.head_count", V::U32(n_head))
        .kv("llama.attention.head_count_kv", V::U32(n_head_kv))
        .kv("llama.rope.freq_base", V::F32(500000.0))
        // A short stand-in vocabulary list would misstate n_vocab, so the count comes from the
        // embedding tensor's width instead (the reader's fallback).
        .tensor("token_embd.weight", &[n_embd, n_vocab], q_main)
        .tensor("output_norm.weight", &[n_embd], GgmlType::F32)
        .tensor("output.weight", &[n_embd, n_vocab], q_hi);
    for il in 0..n_layer {
        let hi = if il % 2 == 0 { q_hi } else { q_main };
        let p = |t: &str| format!("blk.{il}.{t}");
        w = w
            .tensor(&p("attn_norm.weight"), &[n_embd], GgmlType::F32)
            .tensor(&p("attn_q.weight"), &[n_embd, n_embd], q_main)
            .tensor(&p("attn_k.weight"), &[n_embd, kv_dim], q_main)
            .tensor(&p("attn_v.weight"), &[n_embd, kv_dim], hi)
            .tensor(&p("attn_output.weight"), &[n_embd, n_embd], q_main)
            .tensor(&p("ffn_norm.weight"), &[n_embd], GgmlType::F32)
            .tensor(&p("ffn_gate.weight"), &[n_embd, n_ff], q_main)
            .tensor(&p("ffn_up.weight"), &[n_embd, n_ff], q_main)
            .tensor(&p("ffn_down.weight"), &[n_ff, n_embd], hi);
    }
    w.bytes()
}

/// Llama-3.1-8B shape: 32 layers, 4096 wide, FFN 14336, 32 heads, 8 KV heads, vocab 128256.
pub fn llama_8b(quant: Quant) -> Vec<u8> {
    let shape = Shape {
        name: "synthetic 8B",
        n_layer: 32,
        n_embd: 4096,
        n_ff: 14336,
        n_head: 32,
        n_head_kv: 8,
        n_vocab: 128_256,
    };
    llama_header(&shape, quant)
}

/// Llama-3.1-70B shape: 80 layers, 8192 wide, FFN 28672, 64 heads, 8 KV heads, vocab 128256.
pub fn llama_70b(quant: Quant) -> Vec<u8> {
    let shape = Shape {
        name: "synthetic 70B",
        n_layer: 80,
        n_embd: 8192,
        n_ff: 28672,
        n_head: 64,
        n_head_kv: 8,
        n_vocab: 128_256,
    };
    llama_header(&shape, quant)
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/inventories")
}

pub fn fixture(name: &str) -> Inventory {
    let path = fixture_dir().join(format!("{name}.json"));
    Inventory::from_path(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The demo model, or `None` (with a message) when it has not been fetched.
pub fn demo_model() -> Option<PathBuf> {
    let path = std::env::var_os("APPL_DEMO_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/appl/models/gemma-3-270m-q4_k_m.gguf"))
        })?;
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIP: demo model not found at {} (run scripts/fetch-model.sh)",
            path.display()
        );
        None
    }
}
