//! The GGUF reader on the demo model, synthetic headers and malformed input.

mod common;

use appl_firmware_profiles::gguf::{GgmlType, GgufError, GgufInfo};
use common::{demo_model, llama_8b, GgufWriter, Quant, V};

#[test]
fn a_file_cut_off_in_its_tensor_data_is_incomplete() {
    let Some(path) = demo_model() else { return };
    let info = GgufInfo::from_path(&path).expect("demo model parses");
    let len = std::fs::metadata(&path).expect("stat").len();
    assert!(info.data_end() <= len && info.data_end() > len - 4096);
    info.check_complete(len)
        .expect("the whole file is complete");
    let err = info.check_complete(len / 2).expect_err("half a file");
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn reads_the_demo_model() {
    let Some(path) = demo_model() else { return };
    let info = GgufInfo::from_path(&path).expect("demo model parses");
    assert_eq!(info.version, 3);
    assert_eq!(info.architecture, "gemma3");
    assert_eq!(info.name.as_deref(), Some("Gemma 3 270m"));
    assert_eq!(info.file_type_name(), "Q4_K_M");
    assert_eq!(info.n_layer, 18);
    assert_eq!(info.n_embd, 640);
    assert_eq!(info.n_ff, 2048);
    assert_eq!(info.n_head, 4);
    assert_eq!(info.n_head_kv, vec![1; 18]);
    assert_eq!((info.head_dim_k, info.head_dim_v), (256, 256));
    assert_eq!(info.n_ctx_train, 32768);
    assert_eq!(info.n_vocab, 262_144);
    assert_eq!(info.sliding_window, Some(512));
    // Gemma 3: every 6th layer is global (llama.cpp load_swa_pattern(ml, 6)).
    let global: Vec<usize> = (0..18).filter(|&i| !info.swa_layers[i]).collect();
    assert_eq!(global, vec![5, 11, 17]);
    assert_eq!(info.tensors.len(), 236);
    let params = info.parameter_count();
    assert!(
        (268_000_000..269_000_000).contains(&params),
        "{params} params"
    );
    // Tensor data ends at the end of the file.
    let end = info
        .tensors
        .iter()
        .map(|t| info.data_offset + t.offset + t.size_bytes)
        .max()
        .expect("tensors");
    assert_eq!(end, std::fs::metadata(&path).expect("stat").len());
    let embd = info
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .expect("embd");
    assert_eq!(embd.dims, vec![640, 262_144]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert!(
        (info.bits_per_weight() - 7.36).abs() < 0.05,
        "{}",
        info.bits_per_weight()
    );
}

fn minimal() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", V::Str("llama".into()))
        .kv("llama.block_count", V::U32(2))
        .kv("llama.embedding_length", V::U32(64))
        .kv("llama.attention.head_count", V::U32(4))
        .tensor("blk.0.attn_q.weight", &[64, 64], GgmlType::F16)
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn with_kv(mut b: Vec<u8>, key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Malformed inputs give a specific error, promptly and without large allocations.
#[test]
fn malformed_inputs() {
    let good = minimal().bytes();
    GgufInfo::from_bytes(&good).expect("minimal header parses");

    let check = |name: &str, bytes: &[u8], want: fn(&GgufError) -> bool| {
        let err = GgufInfo::from_bytes(bytes).expect_err(name);
        assert!(want(&err), "{name}: got {err:?}");
        // Errors are readable.
        assert!(!err.to_string().is_empty());
    };
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    check("wrong magic", &bad_magic, |e| {
        matches!(e, GgufError::BadMagic { .. })
    });
    check("empty", &[], |e| matches!(e, GgufError::Truncated { .. }));
    let mut v9 = good.clone();
    v9[4..8].copy_from_slice(&9u32.to_le_bytes());
    check("version 9", &v9, |e| {
        matches!(e, GgufError::UnsupportedVersion(9))
    });
    // Every truncation point of a valid header is an error, never a panic.
    for cut in 0..good.len() {
        let r = GgufInfo::from_bytes(&good[..cut]);
        assert!(
            matches!(
                r,
                Err(GgufError::Truncated { .. } | GgufError::AbsurdCount { .. })
            ),
            "cut at {cut}: {r:?}"
        );
    }
    check("absurd tensor count", &header(u64::MAX, 0), |e| {
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "tensors",
                ..
            }
        )
    });
    check("tensor count beyond file", &header(1000, 0), |e| {
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "tensors",
                ..
            }
        )
    });
    check("absurd kv count", &header(0, 1 << 40), |e| {
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "metadata entries",
                ..
            }
        )
    });
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    check(
        "absurd array length",
        &with_kv(header(0, 1), "a", 9, &arr),
        |e| {
            matches!(
                e,
                GgufError::AbsurdCount {
                    what: "array elements",
                    ..
                }
            )
        },
    );
    check(
        "absurd string length",
        &with_kv(header(0, 1), "s", 8, &u64::MAX.to_le_bytes()),
        |e| matches!(e, GgufError::Truncated { .. }),
    );
    check(
        "unknown value type",
        &with_kv(header(0, 1), "x", 77, &[0; 8]),
        |e| matches!(e, GgufError::UnknownType { .. }),
    );
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend_from_slice(&1u64.to_le_bytes());
    check(
        "nested array",
        &with_kv(header(0, 1), "n", 9, &nested),
        |e| matches!(e, GgufError::UnknownType { .. }),
    );
    check(
        "unknown tensor type",
        &minimal().tensor("x", &[32], GgmlType(4)).bytes(),
        |e| {
            matches!(
                e,
                GgufError::UnknownType {
                    what: "tensor",
                    id: 4,
                    ..
                }
            )
        },
    );
    check(
        "partial block",
        &minimal().tensor("x", &[100], GgmlType::Q4_K).bytes(),
        |e| matches!(e, GgufError::BadTensor { .. }),
    );
    check(
        "dims overflow",
        &minimal().tensor("x", &[u64::MAX, 4], GgmlType::F32).bytes(),
        |e| matches!(e, GgufError::BadTensor { .. }),
    );
    check(
        "missing architecture",
        &GgufWriter::new()
            .kv("general.name", V::Str("x".into()))
            .bytes(),
        |e| matches!(e, GgufError::MissingKey(k) if k == "general.architecture"),
    );
    check(
        "missing block count",
        &GgufWriter::new()
            .kv("general.architecture", V::Str("llama".into()))
            .bytes(),
        |e| matches!(e, GgufError::MissingKey(k) if k == "llama.block_count"),
    );
    check(
        "head_count_kv array of the wrong length",
        &minimal()
            .kv("llama.attention.head_count_kv", V::ArrU32(vec![1, 2, 3]))
            .bytes(),
        |e| matches!(e, GgufError::BadKey { .. }),
    );
    check(
        "block count out of range",
        &GgufWriter::new()
            .kv("general.architecture", V::Str("llama".into()))
            .kv("llama.block_count", V::U32(0))
            .bytes(),
        |e| matches!(e, GgufError::BadKey { .. }),
    );
}

#[test]
fn per_layer_arrays_and_defaults() {
    let info = GgufInfo::from_bytes(
        &minimal()
            .kv("llama.attention.head_count_kv", V::ArrU32(vec![2, 0]))
            .bytes(),
    )
    .expect("parses");
    assert_eq!(info.n_head_kv, vec![2, 0]);
    // key/value length default to embedding / heads.
    assert_eq!((info.head_dim_k, info.head_dim_v), (16, 16));
    assert!(!info.has_swa());
    let info = GgufInfo::from_bytes(&minimal().bytes()).expect("parses");
    assert_eq!(
        info.n_head_kv,
        vec![4, 4],
        "head_count_kv defaults to head_count"
    );

    let vocab = GgufInfo::from_bytes(
        &minimal()
            .kv("tokenizer.ggml.tokens", V::Vocab(20_000))
            .bytes(),
    )
    .expect("a long string array is skipped, not kept");
    assert_eq!(vocab.n_vocab, 20_000);

    let swa = GgufInfo::from_bytes(
        &minimal()
            .kv("llama.attention.sliding_window", V::U32(128))
            .kv("llama.attention.sliding_window_pattern", V::U32(2))
            .bytes(),
    )
    .expect("parses");
    assert_eq!(swa.swa_layers, vec![true, false]);
}

#[test]
fn synthetic_header_tensor_table() {
    let info = GgufInfo::from_bytes(&llama_8b(Quant::Q4KM)).expect("parses");
    assert_eq!(info.file_type_name(), "Q4_K_M");
    assert_eq!(info.n_vocab, 128_256);
    assert_eq!(info.tensors.len(), 3 + 32 * 9);
    assert_eq!(info.n_head_kv, vec![8; 32]);
    assert_eq!(info.head_dim_k, 128);
    // Q4_K is 144 bytes per 256 weights.
    let q = info
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.attn_q.weight")
        .expect("attn_q");
    assert_eq!(q.size_bytes, 4096 * 4096 / 256 * 144);
    assert_eq!(q.layer(), Some(1));
}

/// Reading a file on disk: every refusal names the file, and its variant says whether the file
/// is missing or unreadable (appld exits 66) or is there but not a usable GGUF model (65).
/// These are the cases llama.cpp's loader would trip on, so a caller needs no second check.
#[test]
fn file_errors_name_the_file_and_tell_missing_from_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let good = minimal().bytes();
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let mut v4 = good.clone();
    v4[4..8].copy_from_slice(&4u32.to_le_bytes());
    let folder = dir.path().join("folder.gguf");
    std::fs::create_dir(&folder).expect("mkdir");
    let fifo = dir.path().join("fifo.gguf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let file = write("plain.gguf", &good);

    type Want = fn(&GgufError) -> bool;
    let cases: Vec<(&str, std::path::PathBuf, Want, &[&str])> = vec![
        (
            "missing",
            dir.path().join("nope.gguf"),
            |e| matches!(e, GgufError::NotFound { .. }),
            &["does not exist", "`path`", "scripts/fetch-model.sh"],
        ),
        (
            "a path through a file",
            file.join("inner.gguf"),
            |e| matches!(e, GgufError::Unreadable { .. }),
            &["cannot be read"],
        ),
        (
            "a folder",
            folder,
            |e| matches!(e, GgufError::NotAFile { what, .. } if *what == "a folder"),
            &["is a folder, not a regular file"],
        ),
        (
            "a device",
            "/dev/null".into(),
            |e| matches!(e, GgufError::NotAFile { .. }),
            &["not a regular file"],
        ),
        (
            // Opening a FIFO would block until someone writes to it; it is refused at once.
            "a FIFO",
            fifo,
            |e| matches!(e, GgufError::NotAFile { .. }),
            &["not a regular file"],
        ),
        (
            "empty",
            write("empty.gguf", b""),
            |e| matches!(e, GgufError::TooShort { len: 0, .. }),
            &["0 bytes", "too short"],
        ),
        (
            "shorter than the header",
            write("short.gguf", &good[..23]),
            |e| matches!(e, GgufError::TooShort { len: 23, .. }),
            &["23 bytes", "too short"],
        ),
        (
            "text",
            write("text.gguf", b"this is not a model at all, just text"),
            |e| {
                matches!(e, GgufError::Invalid { source, .. }
                    if matches!(**source, GgufError::BadMagic { found } if &found == b"this"))
            },
            &["not a GGUF file", "74 68 69 73 (\"this\")"],
        ),
        (
            "version 1",
            write("v1.gguf", &v1),
            |e| {
                matches!(e, GgufError::Invalid { source, .. }
                    if matches!(**source, GgufError::UnsupportedVersion(1)))
            },
            &["GGUF version 1", "convert the model again"],
        ),
        (
            "version 4",
            write("v4.gguf", &v4),
            |e| {
                matches!(e, GgufError::Invalid { source, .. }
                    if matches!(**source, GgufError::UnsupportedVersion(4)))
            },
            &["GGUF version 4", "newer llama.cpp"],
        ),
        (
            "truncated",
            write("truncated.gguf", &good[..good.len() / 2]),
            |e| {
                matches!(e, GgufError::Invalid { source, .. }
                    if matches!(**source, GgufError::Truncated { .. }))
            },
            &["truncated"],
        ),
        (
            "no architecture",
            write(
                "noarch.gguf",
                &GgufWriter::new()
                    .kv("general.name", V::Str("x".into()))
                    .bytes(),
            ),
            |e| {
                matches!(e, GgufError::Invalid { source, .. }
                    if matches!(&**source, GgufError::MissingKey(k) if k == "general.architecture"))
            },
            &["general.architecture"],
        ),
    ];
    for (name, path, want, needles) in cases {
        let err = GgufInfo::from_path(&path).expect_err(name);
        assert!(want(&err), "{name}: got {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()),
            "{name}: the message names the file: {text}"
        );
        for n in needles {
            assert!(text.contains(n), "{name}: {n:?} in {text}");
        }
    }
    let info = GgufInfo::from_path(&file).expect("a valid file on disk reads");
    assert_eq!(info, GgufInfo::from_bytes(&good).expect("the same bytes"));
}
