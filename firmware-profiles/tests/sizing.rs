//! Sizing rules against worked examples, recorded inventories and the demo model.

mod common;

use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::profile::ProfileSet;
use appl_firmware_profiles::sizing::{
    decode_speed, engine_deployment, estimate, fit, Deployment, DeviceRef, GpuLayers, KvType,
    ModelSettings,
};
use appl_firmware_profiles::units::{self, in_gib as gib, in_mib as mibf, GIB, MIB};
use common::{demo_model, fixture, llama_70b, llama_8b, Quant};

fn dep(ctx: u32, slots: u32, kv: KvType) -> Deployment {
    Deployment {
        ctx_per_slot: ctx,
        slots,
        kv_type: kv,
        ..Deployment::default()
    }
}

fn model(q: Quant, big: bool) -> GgufInfo {
    let bytes = if big { llama_70b(q) } else { llama_8b(q) };
    GgufInfo::from_bytes(&bytes).expect("synthetic header parses")
}

/// Weights from the tensor table match llama.cpp's measured bits per weight for these
/// quantizations (sizing-facts.md: Q4_K_M 4.894, Q8_0 8.501 bpw on Llama-3.1-8B), and the KV
/// cost per token matches the facts (8B: 128 KiB, 70B: 320 KiB).
#[test]
fn synthetic_shapes_match_the_facts() {
    // (model, quant, want weights GiB, want bpw, want KV bytes per token at f16)
    let cases = [
        (false, Quant::Q4KM, 4.58, 4.894, 128 * 1024),
        (true, Quant::Q4KM, 40.2, 4.894, 320 * 1024),
        (false, Quant::Q8_0, 7.95, 8.501, 128 * 1024),
        (true, Quant::Q8_0, 69.9, 8.501, 320 * 1024),
    ];
    for (big, q, want_gib, want_bpw, want_kv_tok) in cases {
        let info = model(q, big);
        let got = gib(info.weights_bytes());
        // Our synthetic recipe approximates llama.cpp's per-tensor choices: within 3%.
        assert!(
            (got / want_gib - 1.0).abs() < 0.03,
            "{big} {q:?}: {got:.2} GiB, want {want_gib}"
        );
        assert!(
            (info.bits_per_weight() / want_bpw - 1.0).abs() < 0.03,
            "{big} {q:?}: {:.3} bpw, want {want_bpw}",
            info.bits_per_weight()
        );
        // One slot of exactly 1024 tokens (a multiple of the 256 padding): KV / 1024.
        let est = estimate(&info, &dep(1024, 1, KvType::F16));
        assert_eq!(est.kv / 1024, want_kv_tok, "{big} {q:?}");
    }
    let p8 = model(Quant::Q4KM, false).parameter_count() as f64 / 1e9;
    assert!((8.0..8.1).contains(&p8), "8B has {p8:.3}B params");
    let p70 = model(Quant::Q4KM, true).parameter_count() as f64 / 1e9;
    assert!((70.5..70.6).contains(&p70), "70B has {p70:.3}B params");
}

/// The worked examples, checked on recorded inventories.
///
/// 8B Q4_K_M, 8k × 4 slots, f16 KV: W 4.58 GiB + KV 32 layers × 32768 cells × 8 heads ×
/// (128+128) × 2 B = 4.0 GiB + compute ~0.27 GiB (the 512 × 128256 f32 logits dominate) +
/// 0.45 GiB runtime overhead + 1 GiB reserve ≈ 10.3 GiB ("≈ 10.5 GiB"): fits a 24 GB card.
///
/// 70B Q4_K_M, 8k × 4: 40.2 + 10 GiB KV + ~0.3 + 1.45 ≈ 52 GiB ("≈ 53 GiB"): fits 80 GB. On
/// the GPU it is ~0.55 GiB less: llama.cpp keeps the token embedding in host RAM.
/// 70B Q4_K_M, 32k × 4, f16 KV: 40.2 + 40 + ... ≈ 82 GiB > 79.6 GiB an 80 GB card reports:
/// does not fit; q8_0 KV (1.0625 B/element) makes KV 21.25 GiB and it fits (≈ 63 GiB).
/// 70B Q8_0, 32k × 8: 69.9 + 80 + ... ≈ 152 GiB: fits an MI300X (192 GB), not an H100.
#[test]
fn worked_examples() {
    struct Case {
        name: &'static str,
        big: bool,
        quant: Quant,
        ctx: u32,
        slots: u32,
        kv: KvType,
        inventory: &'static str,
        fits: bool,
        /// Expected need on GPU0, GiB (when it fits) or total need (when not).
        need_gib: (f64, f64),
    }
    let check = |c: &Case| {
        let info = model(c.quant, c.big);
        let est = estimate(&info, &dep(c.ctx, c.slots, c.kv));
        let inv = fixture(c.inventory);
        let res = fit(&est, &inv, GpuLayers::Auto);
        match (&res, c.fits) {
            (Ok(p), true) => {
                let gpu0 = &p.devices[0];
                assert_eq!(gpu0.device, DeviceRef::Gpu(0), "{}", c.name);
                assert!(p.fully_offloaded(), "{}", c.name);
                let need = gib(gpu0.need);
                assert!(
                    (c.need_gib.0..=c.need_gib.1).contains(&need),
                    "{}: needs {need:.2} GiB on GPU0, want {:?}",
                    c.name,
                    c.need_gib
                );
            }
            (Err(e), false) => {
                let need: u64 = e.devices.iter().map(|d| d.need).sum();
                let need = gib(need);
                assert!(
                    (c.need_gib.0..=c.need_gib.1).contains(&need),
                    "{}: needs {need:.2} GiB, want {:?}",
                    c.name,
                    c.need_gib
                );
                assert!(
                    e.message.contains("free on GPU0"),
                    "{}: {}",
                    c.name,
                    e.message
                );
            }
            (Ok(p), false) => panic!("{}: fits but should not: {}", c.name, p.summary()),
            (Err(e), true) => panic!("{}: does not fit but should: {e}", c.name),
        }
    };
    let cases = [
        Case {
            name: "8B Q4_K_M 8k x4 on RTX 4090",
            big: false,
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            kv: KvType::F16,
            inventory: "rtx-4090",
            fits: true,
            need_gib: (10.0, 11.0),
        },
        Case {
            name: "8B Q4_K_M 8k x4 on A10G",
            big: false,
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            kv: KvType::F16,
            inventory: "a10g",
            fits: true,
            need_gib: (10.0, 11.0),
        },
        Case {
            name: "70B Q4_K_M 8k x4 on A100 80GB SXM",
            big: true,
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            kv: KvType::F16,
            inventory: "a100-80gb-sxm",
            fits: true,
            need_gib: (50.0, 54.0),
        },
        Case {
            name: "70B Q4_K_M 32k x4 f16 on A100 80GB SXM",
            big: true,
            quant: Quant::Q4KM,
            ctx: 32768,
            slots: 4,
            kv: KvType::F16,
            inventory: "a100-80gb-sxm",
            fits: false,
            need_gib: (81.0, 85.0),
        },
        Case {
            name: "70B Q4_K_M 32k x4 f16 on H100 SXM",
            big: true,
            quant: Quant::Q4KM,
            ctx: 32768,
            slots: 4,
            kv: KvType::F16,
            inventory: "h100-sxm",
            fits: false,
            need_gib: (81.0, 85.0),
        },
        Case {
            name: "70B Q4_K_M 32k x4 q8_0 on H100 SXM",
            big: true,
            quant: Quant::Q4KM,
            ctx: 32768,
            slots: 4,
            kv: KvType::Q8_0,
            inventory: "h100-sxm",
            fits: true,
            need_gib: (62.0, 65.0),
        },
        Case {
            name: "70B Q8_0 32k x8 on MI300X",
            big: true,
            quant: Quant::Q8_0,
            ctx: 32768,
            slots: 8,
            kv: KvType::F16,
            inventory: "mi300x",
            fits: true,
            need_gib: (150.0, 155.0),
        },
        Case {
            name: "70B Q8_0 32k x8 on H100 SXM",
            big: true,
            quant: Quant::Q8_0,
            ctx: 32768,
            slots: 8,
            kv: KvType::F16,
            inventory: "h100-sxm",
            fits: false,
            need_gib: (150.0, 160.0),
        },
        Case {
            name: "70B Q4_K_M 8k x4 on RTX 4090",
            big: true,
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            kv: KvType::F16,
            inventory: "rtx-4090",
            fits: false,
            need_gib: (51.0, 54.0),
        },
    ];
    for c in &cases {
        check(c);
    }
}

/// A refusal carries the numbers in the format and the largest partial offload.
#[test]
fn refusal_message_has_the_numbers() {
    let info = model(Quant::Q4KM, true);
    let est = estimate(&info, &dep(8192, 4, KvType::F16));
    let err = fit(&est, &fixture("rtx-4090"), GpuLayers::Auto).expect_err("70B on a 4090");
    let gpu0 = &err.devices[0];
    let want = format!(
        "needs {:.1} GiB, {:.1} GiB free on GPU0 (NVIDIA GeForce RTX 4090)",
        gib(gpu0.need),
        gib(gpu0.free)
    );
    assert!(err.message.starts_with(&want), "{}", err.message);
    assert!(
        (gib(gpu0.free) - 23.5).abs() < 0.1,
        "free {}",
        gib(gpu0.free)
    );
    // About 22 GiB usable minus the output head and compute leaves room for ~30 layers of
    // (0.5 GiB weights + 0.125 GiB KV) each.
    let k = err.max_gpu_layers.expect("a partial offload fits");
    assert!((25..=36).contains(&k), "max gpu layers {k}");
    assert!(err.message.contains(&format!("gpu_layers = {k} would fit")));
    // And that partial offload is accepted when asked for explicitly.
    let p = fit(&est, &fixture("rtx-4090"), GpuLayers::N(k)).expect("partial fits");
    assert_eq!(p.n_gpu_layers, k);
    assert!(!p.fully_offloaded());
    let host = p.devices.last().expect("host device");
    assert_eq!(host.device, DeviceRef::Cpu);
    assert_eq!(host.layers, (0, 80 - k));
    assert!(fit(&est, &fixture("rtx-4090"), GpuLayers::N(k + 1)).is_err());
}

/// Two GPUs: a model too big for one is split by layers, evenly across equal cards, and the
/// output layer goes to the last one (llama.cpp's main GPU for the output).
#[test]
fn layer_split_across_two_gpus() {
    let info = model(Quant::Q4KM, true);
    let est = estimate(&info, &dep(32768, 4, KvType::F16));
    assert!(fit(&est, &fixture("a100-80gb-sxm"), GpuLayers::Auto).is_err());
    let p = fit(&est, &fixture("2x-a100-80gb-pcie"), GpuLayers::Auto).expect("fits on two");
    assert_eq!(p.n_gpu_layers, 81);
    assert_eq!(p.main_gpu, Some(1));
    let gpus: Vec<_> = p
        .devices
        .iter()
        .filter(|d| matches!(d.device, DeviceRef::Gpu(_)))
        .collect();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].layers.0, 0);
    assert_eq!(gpus[0].layers.1, gpus[1].layers.0);
    assert_eq!(gpus[1].layers.1, 80);
    assert!(gpus[1].holds_output && !gpus[0].holds_output);
    let l0 = gpus[0].layers.1 - gpus[0].layers.0;
    assert!((38..=42).contains(&l0), "GPU0 has {l0} layers");
    let sum: f32 = p.tensor_split.iter().sum();
    assert!((sum - 1.0).abs() < 1e-6, "{:?}", p.tensor_split);
    assert!(gpus.iter().all(|d| d.fits()));
}

/// A CPU-only machine: everything in host RAM.
#[test]
fn cpu_only_placement() {
    let inv = fixture("cpu-only");
    assert!(inv.gpus.is_empty());
    let info = model(Quant::Q4KM, false);
    let est = estimate(&info, &dep(4096, 1, KvType::F16));
    let p = fit(&est, &inv, GpuLayers::Auto).expect("8B Q4 fits in host RAM");
    assert_eq!(p.n_gpu_layers, 0);
    assert_eq!(p.devices.len(), 1);
    let host = &p.devices[0];
    assert_eq!(host.device, DeviceRef::Cpu);
    assert_eq!(host.layers, (0, 32));
    assert_eq!(host.weights, info.weights_bytes());
    let big = estimate(&model(Quant::Q4KM, true), &dep(4096, 1, KvType::F16));
    let err = fit(&big, &inv, GpuLayers::Auto).expect_err("70B does not fit");
    assert!(err.message.contains("free on host RAM"), "{}", err.message);
    assert_eq!(err.max_gpu_layers, None);
}

/// Decode speed = efficiency × bandwidth ÷ bytes per token.
#[test]
fn decode_speed_estimates() {
    // 8B Q4_K_M on an RTX 4090: 0.5 × 1008 GB/s ÷ (4.92 GB weights - 0.3 GB embedding lookup
    // + 4096 × 128 KiB KV) ≈ 100 tok/s alone.
    let info = model(Quant::Q4KM, false);
    let est = estimate(&info, &dep(4096, 4, KvType::F16));
    let p = fit(&est, &fixture("rtx-4090"), GpuLayers::Auto).expect("fits");
    let s = decode_speed(&est, &p).expect("profile bandwidth known");
    let bytes = est.weights_read_per_token as f64 + est.kv as f64 / 4.0;
    let want = 0.5 * 1008e9 / bytes;
    assert!((s.single_stream_tps / want - 1.0).abs() < 1e-9);
    assert!(
        (95.0..110.0).contains(&s.single_stream_tps),
        "{}",
        s.single_stream_tps
    );
    // Batching shares the weight reads: 4 streams get more in total, less each.
    assert!(s.aggregate_tps_full > 3.0 * s.single_stream_tps);
    assert!(s.per_stream_tps_full < s.single_stream_tps);
    assert!((s.efficiency - 0.5).abs() < 1e-9);
}

/// The demo model on this development machine: sizing-facts.md measured 67.6 tok/s with
/// llama-bench tg64 (2 threads). The CPU profile (18 GB/s read, efficiency 0.9) predicts it
/// within 15%.
#[test]
fn demo_model_decode_speed_matches_measurement() {
    let Some(path) = demo_model() else { return };
    let info = GgufInfo::from_path(&path).expect("demo model parses");
    let est = estimate(&info, &dep(512, 1, KvType::F16));
    let p = fit(&est, &fixture("cpu-only"), GpuLayers::Auto).expect("fits");
    let s = decode_speed(&est, &p).expect("cpu profile has a bandwidth");
    assert!(
        (s.single_stream_tps / 67.6 - 1.0).abs() < 0.15,
        "{:.1} tok/s",
        s.single_stream_tps
    );
}

/// The demo model with 8 slots × 512 context and a batch of 2048: llama.cpp reported 235 MiB
/// of weights, 72 MiB of KV and a 519 MiB compute buffer (sizing-facts.md).
///
/// - KV: Gemma 3 has 18 layers, 1 KV head of 256 + 256 dims. Every 6th layer is global (3),
///   the rest use a 512-token window (15). Each of 8 streams holds 512 cells in both caches
///   (the SWA cache is min(512, 512 + n_ubatch) = 512), so 18 × 4096 × 512 × 2 B = 72 MiB.
/// - Compute: the reserve graph produces logits for all 512 micro-batch tokens:
///   512 × 262144 × 4 B = 512 MiB, plus hidden states and attention masks.
#[test]
fn demo_model_matches_llama_cpp_buffers() {
    let Some(path) = demo_model() else { return };
    let info = GgufInfo::from_path(&path).expect("demo model parses");
    for swa_full in [true, false] {
        let d = Deployment {
            ctx_per_slot: 512,
            slots: 8,
            n_batch: 2048,
            n_ubatch: 512,
            swa_full,
            ..Deployment::default()
        };
        let est = estimate(&info, &d);
        let w = mibf(est.weights);
        assert!((w / 235.0 - 1.0).abs() < 0.02, "weights {w:.1} MiB");
        assert_eq!(est.kv, 72 * MIB, "KV, swa_full={swa_full}");
        let c = mibf(est.compute);
        assert!((c / 519.0 - 1.0).abs() < 0.05, "compute {c:.1} MiB");
    }
    // One slot of 8192: the SWA cache shrinks to window + n_ubatch = 1024 cells unless
    // swa_full; the 3 global layers keep 8192.
    let one = |swa_full| {
        estimate(
            &info,
            &Deployment {
                ctx_per_slot: 8192,
                slots: 1,
                swa_full,
                ..Deployment::default()
            },
        )
    };
    let small = one(false);
    assert_eq!(small.kv_cells_swa, 1024);
    assert_eq!(small.kv, (3 * 8192 + 15 * 1024) * 512 * 2);
    let full = one(true);
    assert_eq!(full.kv_cells_swa, 8192);
    assert_eq!(full.kv, 18 * 8192 * 512 * 2);
}

/// `ctx_per_slot × slots` is padded like llama.cpp: to 256 in total and per stream.
#[test]
fn context_padding_and_streams() {
    let info = model(Quant::Q4KM, false);
    let check = |ctx: u32, slots: u32, unified: bool, want_cells: u64, want_streams: u64| {
        let d = Deployment {
            ctx_per_slot: ctx,
            slots,
            kv_unified: unified,
            ..Deployment::default()
        };
        let e = estimate(&info, &d);
        assert_eq!(
            (e.kv_cells_base, e.kv_streams),
            (want_cells, want_streams),
            "ctx {ctx} x {slots} unified={unified}"
        );
        assert_eq!(e.kv, 32 * want_cells * want_streams * 8 * 256 * 2);
    };
    check(4096, 1, false, 4096, 1);
    check(1000, 1, false, 1024, 1);
    check(1000, 3, false, 1024, 3);
    check(1000, 3, true, 3072, 1);
    check(100, 8, false, 256, 8);
}

#[test]
fn every_fixture_loads_and_matches_profiles() {
    let profiles = ProfileSet::embedded().expect("profiles valid");
    let mut names: Vec<String> = std::fs::read_dir(common::fixture_dir())
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "2x-a100-80gb-pcie.json",
            "a100-80gb-sxm.json",
            "a10g.json",
            "cpu-only.json",
            "h100-sxm.json",
            "mi300x.json",
            "rtx-4090.json"
        ]
    );
    for n in &names {
        let inv = fixture(n.trim_end_matches(".json"));
        for g in &inv.gpus {
            let p = profiles
                .for_gpu(g)
                .unwrap_or_else(|| panic!("{n}: GPU {} has no profile", g.name));
            // Reported total is close to the nameplate (decimal GB), minus what ECC/driver keep.
            let nameplate = p.vram_gb.expect("GPU profile has VRAM") * 1e9;
            let ratio = g.vram_total_bytes as f64 / nameplate;
            assert!((0.94..1.1).contains(&ratio), "{n}: VRAM ratio {ratio:.3}");
        }
        let back = Inventory::from_json(&inv.to_json()).expect("round trip");
        assert_eq!(back, inv);
    }
}

#[test]
fn gpu_layers_parses() {
    assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
    assert_eq!("AUTO".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
    assert_eq!("33".parse::<GpuLayers>(), Ok(GpuLayers::N(33)));
    assert!("-1".parse::<GpuLayers>().is_err());
    assert_eq!("q8_0".parse::<KvType>().ok(), Some(KvType::Q8_0));
    assert!("q3".parse::<KvType>().is_err());
    assert_eq!(units::human(519 * MIB), "519 MiB");
    assert_eq!(units::human(GIB * 53 / 2), "26.5 GiB");
}

/// The estimate sizes the context the engine creates: the n_ctx of `engine_deployment` (padded
/// by llama.cpp to 256 cells), as one KV stream per slot of at least `ctx_per_slot` cells.
#[test]
fn the_estimate_sizes_the_context_the_engine_creates() {
    let info = model(Quant::Q4KM, false);
    for (slots, ctx_per_slot, batch_tokens) in [(1, 2048, 512), (8, 2048, 2048), (3, 1000, 64)] {
        let dep = engine_deployment(&ModelSettings {
            slots,
            ctx_per_slot,
            batch_tokens,
        });
        let est = estimate(&info, &dep);
        let padded = u64::from(dep.n_ctx()).div_ceil(256) * 256;
        let per_stream = (padded / u64::from(slots)).div_ceil(256) * 256;
        assert_eq!(est.n_ctx, per_stream * u64::from(slots), "{dep:?}");
        assert!(per_stream >= u64::from(ctx_per_slot), "{dep:?}");
        assert_eq!(
            est.kv_streams,
            u64::from(slots),
            "one KV stream per slot: {dep:?}"
        );
        assert_eq!(est.slots, slots);
    }
}
