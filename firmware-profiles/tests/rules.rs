//! `applctl check` / `applctl plan` reports, and the probes against fake trees.

mod common;

use std::path::Path;

use appl_firmware_profiles::check::{run_check, CheckRequest, Latency, ModelInput, Status, Volume};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::GpuVendor;
use appl_firmware_profiles::plan::{cost_plan, CostError, CostInput, Recommendation};
use appl_firmware_profiles::probe::{self, AmdSysfsProbe, GpuProbe, NvmlProbe};
use appl_firmware_profiles::profile::ProfileSet;
use appl_firmware_profiles::sizing::{Deployment, GpuLayers, KvType};
use common::{fixture, llama_70b, llama_8b, Quant};

fn request(model: Option<(&str, Vec<u8>)>, ctx: u32, slots: u32) -> CheckRequest {
    CheckRequest {
        model: model.map(|(label, bytes)| ModelInput {
            label: label.into(),
            info: GgufInfo::from_bytes(&bytes).expect("synthetic header"),
        }),
        deployment: Deployment {
            ctx_per_slot: ctx,
            slots,
            kv_type: KvType::F16,
            ..Deployment::default()
        },
        gpu_layers: GpuLayers::Auto,
        volume: None,
        latency: None,
        prompt_tokens: 512,
    }
}

fn status_of(report: &appl_firmware_profiles::check::CheckReport, rule: &str) -> Status {
    report
        .rules
        .iter()
        .find(|r| r.rule == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {:#?}", report.rules))
        .status
}

/// Fixtures × models × volumes: the verdict and the rules that decide it.
#[test]
fn check_over_fixtures() {
    let profiles = ProfileSet::embedded().expect("valid");
    struct Case {
        inventory: &'static str,
        model: Option<fn(Quant) -> Vec<u8>>,
        quant: Quant,
        ctx: u32,
        slots: u32,
        volume: Option<(u64, u64)>,
        latency: Option<Latency>,
        verdict: Status,
        /// (rule, status) pairs that must hold.
        rules: &'static [(&'static str, Status)],
    }
    let check = |c: &Case| {
        let mut req = request(c.model.map(|m| ("m.gguf", m(c.quant))), c.ctx, c.slots);
        req.volume = c.volume.map(|(r, t)| Volume {
            requests_per_day: r,
            tokens_per_request: t,
        });
        req.latency = c.latency;
        let report = run_check(&fixture(c.inventory), &profiles, &req);
        let ctx = format!("{} {:?} {}x{}", c.inventory, c.quant, c.ctx, c.slots);
        assert_eq!(
            report.verdict,
            c.verdict,
            "{ctx}\n{}",
            report.render_table()
        );
        assert_eq!(report.exit_code(), u8::from(c.verdict == Status::Fail));
        for (rule, want) in c.rules {
            assert_eq!(
                status_of(&report, rule),
                *want,
                "{ctx}: {rule}\n{}",
                report.render_table()
            );
        }
        // JSON round-trips to the same verdict and rule count.
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(v["verdict"], serde_json::json!(c.verdict.label()));
        assert_eq!(
            v["rules"].as_array().map(Vec::len),
            Some(report.rules.len())
        );
    };
    use Status::*;
    let cases = [
        Case {
            inventory: "rtx-4090",
            model: Some(llama_8b),
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            volume: Some((2_000, 500)),
            latency: Some(Latency::Interactive),
            verdict: Pass,
            rules: &[
                ("memory.fit", Pass),
                ("gpu0.profile", Pass),
                ("gpu0.driver", Pass),
                ("speed.decode", Pass),
                ("latency", Pass),
                ("capacity.volume", Pass),
            ],
        },
        Case {
            inventory: "a10g",
            model: Some(llama_8b),
            quant: Quant::Q8_0,
            ctx: 8192,
            slots: 4,
            volume: None,
            latency: None,
            verdict: Pass,
            rules: &[("memory.fit", Pass), ("gpu0.cuda", Pass)],
        },
        // 100k requests × 1000 tokens/day = 100M tokens/day: one 4090 decodes ~30M/day.
        Case {
            inventory: "rtx-4090",
            model: Some(llama_8b),
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            volume: Some((100_000, 1_000)),
            latency: None,
            verdict: Fail,
            rules: &[("memory.fit", Pass), ("capacity.volume", Fail)],
        },
        Case {
            inventory: "rtx-4090",
            model: Some(llama_70b),
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            volume: None,
            latency: None,
            verdict: Fail,
            rules: &[("memory.fit", Fail)],
        },
        Case {
            inventory: "a100-80gb-sxm",
            model: Some(llama_70b),
            quant: Quant::Q4KM,
            ctx: 8192,
            slots: 4,
            volume: Some((5_000, 500)),
            latency: Some(Latency::Interactive),
            verdict: Pass,
            rules: &[("memory.fit", Pass), ("capacity.volume", Pass)],
        },
        Case {
            inventory: "2x-a100-80gb-pcie",
            model: Some(llama_70b),
            quant: Quant::Q4KM,
            ctx: 32768,
            slots: 4,
            volume: None,
            latency: None,
            verdict: Pass,
            rules: &[("memory.fit", Pass), ("gpu1.profile", Pass)],
        },
        Case {
            inventory: "h100-sxm",
            model: Some(llama_70b),
            quant: Quant::Q4KM,
            ctx: 32768,
            slots: 4,
            volume: None,
            latency: None,
            verdict: Fail,
            rules: &[
                ("memory.fit", Fail),
                ("gpu0.driver", Pass),
                ("gpu0.cuda", Pass),
            ],
        },
        Case {
            inventory: "mi300x",
            model: Some(llama_70b),
            quant: Quant::Q8_0,
            ctx: 32768,
            slots: 8,
            volume: None,
            latency: Some(Latency::Batch),
            verdict: Pass,
            rules: &[
                ("memory.fit", Pass),
                ("gpu0.rocm", Pass),
                ("gpu0.gfx_target", Pass),
                ("gpu0.vbios", Pass),
                ("latency", Pass),
            ],
        },
        // CPU-only: the 8B model fits in RAM but is no interactive server.
        Case {
            inventory: "cpu-only",
            model: Some(llama_8b),
            quant: Quant::Q4KM,
            ctx: 4096,
            slots: 1,
            volume: None,
            latency: Some(Latency::Interactive),
            verdict: Warn,
            rules: &[
                ("memory.fit", Pass),
                ("gpu.present", Warn),
                ("latency", Warn),
                ("cpu.isa", Pass),
            ],
        },
        Case {
            inventory: "cpu-only",
            model: Some(llama_70b),
            quant: Quant::Q4KM,
            ctx: 4096,
            slots: 1,
            volume: None,
            latency: None,
            verdict: Fail,
            rules: &[("memory.fit", Fail)],
        },
        // Hardware only.
        Case {
            inventory: "h100-sxm",
            model: None,
            quant: Quant::Q4KM,
            ctx: 4096,
            slots: 1,
            volume: None,
            latency: None,
            verdict: Warn,
            rules: &[
                ("memory.fit", Warn),
                ("gpu0.profile", Pass),
                ("gpu0.pcie", Pass),
            ],
        },
    ];
    for c in &cases {
        check(c);
    }
}

#[test]
fn old_driver_and_unknown_gpu() {
    let profiles = ProfileSet::embedded().expect("valid");
    let mut inv = fixture("a100-80gb-sxm");
    inv.gpus[0].driver_version = Some("470.82.01".into());
    inv.gpus[0].cuda_version = Some("11.4".into());
    let report = run_check(&inv, &profiles, &request(None, 4096, 1));
    assert_eq!(status_of(&report, "gpu0.driver"), Status::Fail);
    assert_eq!(status_of(&report, "gpu0.cuda"), Status::Fail);
    assert_eq!(report.exit_code(), 1);
    let table = report.render_table();
    assert!(table.contains("FAIL  gpu0.driver"), "{table}");
    assert!(table.contains("470.82.01 < 525.60.13"), "{table}");

    let mut inv = fixture("rtx-4090");
    inv.gpus[0].pci_device_id = 0x2704; // an RTX 4080: no profile
    inv.gpus[0].pcie_width = Some(8);
    let report = run_check(
        &inv,
        &profiles,
        &request(Some(("8b", llama_8b(Quant::Q4KM))), 4096, 1),
    );
    assert_eq!(status_of(&report, "gpu0.profile"), Status::Warn);
    assert_eq!(status_of(&report, "gpu0.pcie"), Status::Warn);
    // Without a profile there is no bandwidth, so no speed figure, but it still fits.
    assert_eq!(status_of(&report, "memory.fit"), Status::Pass);
    assert_eq!(status_of(&report, "speed.decode"), Status::Warn);
    assert_eq!(inv.gpus[0].vendor, GpuVendor::Nvidia);
}

#[test]
fn check_table_snapshot() {
    let profiles = ProfileSet::embedded().expect("valid");
    let mut req = request(
        Some(("llama-8b-q4_k_m.gguf", llama_8b(Quant::Q4KM))),
        8192,
        4,
    );
    req.volume = Some(Volume {
        requests_per_day: 2_000,
        tokens_per_request: 500,
    });
    req.latency = Some(Latency::Interactive);
    let report = run_check(&fixture("rtx-4090"), &profiles, &req);
    let table = report
        .render_table()
        .replace(&fixture("rtx-4090").source, "<fixture>");
    expect_test::expect_file!["snapshots/check_rtx4090_8b.txt"].assert_eq(&table);
}

#[test]
fn cost_plans() {
    let base = CostInput {
        requests_per_day: 10_000,
        tokens_per_request: 1_000,
        api_price_per_mtok: 15.0,
        gpu_cost_per_month: 2_000.0,
        ops_cost_per_month: 500.0,
        compliance_requires_on_prem: false,
    };
    let check = |input: CostInput, tokens_m: f64, api: f64, rec: Recommendation, band: &str| {
        let p = cost_plan(input).expect("valid input");
        assert!((p.monthly_tokens / 1e6 - tokens_m).abs() < 1e-6, "{p:?}");
        assert!((p.api_cost_per_month - api).abs() < 1e-6, "{p:?}");
        assert_eq!(p.recommendation, rec, "{p:?}");
        assert!(p.band.starts_with(band), "{}", p.band);
        let table = p.render_table();
        assert!(table.contains("break-even"), "{table}");
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).expect("json");
        assert!(v["api_cost_per_month"].as_f64().is_some());
    };
    // 10k × 1k × 30 = 300M tokens; × $15/M = $4,500 > $2,500 self-hosted.
    check(base, 300.0, 4_500.0, Recommendation::SelfHost, "inside");
    check(
        CostInput {
            requests_per_day: 1_000,
            ..base
        },
        30.0,
        450.0,
        Recommendation::Api,
        "below",
    );
    check(
        CostInput {
            requests_per_day: 1_000,
            compliance_requires_on_prem: true,
            ..base
        },
        30.0,
        450.0,
        Recommendation::SelfHostCompliance,
        "below",
    );
    check(
        CostInput {
            requests_per_day: 100_000,
            ..base
        },
        3_000.0,
        45_000.0,
        Recommendation::SelfHost,
        "above",
    );
    // Break-even: $2,500 / $15 per M = 166.7M tokens/month = 5,556 requests/day of 1k tokens.
    let p = cost_plan(base).expect("valid");
    assert!((p.break_even_tokens_per_month / 1e6 - 166.666_666).abs() < 1e-3);
    assert!((p.break_even_requests_per_day - 5_555.555).abs() < 1e-2);
    assert_eq!(
        cost_plan(CostInput {
            api_price_per_mtok: 0.0,
            ..base
        }),
        Err(CostError::Price(0.0))
    );
    assert_eq!(
        cost_plan(CostInput {
            gpu_cost_per_month: -1.0,
            ..base
        }),
        Err(CostError::Cost)
    );
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// An MI300X node as sysfs shows it, plus an AMD display function without VRAM accounting and
/// a CPU KFD node, which the probe must skip.
#[test]
fn amd_sysfs_probe_on_a_fake_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "sys/class/kfd/kfd/topology/nodes/0/properties",
        "cpu_cores_count 96\nsimd_count 0\ngfx_target_version 0\ndevice_id 0\n",
    );
    write(root, "sys/class/kfd/kfd/topology/nodes/1/properties", "cpu_cores_count 0\nsimd_count 1216\ngfx_target_version 90402\nvendor_id 4098\ndevice_id 29857\n");
    let card = "sys/class/drm/card1/device";
    write(root, &format!("{card}/vendor"), "0x1002\n");
    write(root, &format!("{card}/device"), "0x74a1\n");
    write(
        root,
        &format!("{card}/mem_info_vram_total"),
        "205822885888\n",
    );
    write(root, &format!("{card}/mem_info_vram_used"), "314572800\n");
    write(root, &format!("{card}/vbios_version"), "113-M3000100-102\n");
    write(
        root,
        &format!("{card}/current_link_speed"),
        "32.0 GT/s PCIe\n",
    );
    write(root, &format!("{card}/current_link_width"), "16\n");
    write(root, "sys/class/drm/card0/device/vendor", "0x1002\n");
    write(root, "sys/class/drm/card0/device/device", "0x1234\n");
    write(root, "sys/class/drm/card2/device/vendor", "0x10de\n");
    write(
        root,
        "sys/class/drm/card2/device/mem_info_vram_total",
        "1\n",
    );
    write(root, "sys/class/drm/card1-DP-1/status", "connected\n");
    write(root, "opt/rocm/.info/version", "6.3.1-48\n");

    let gpus = AmdSysfsProbe::new(root).probe().expect("probe");
    assert_eq!(gpus.len(), 1, "{gpus:#?}");
    let g = &gpus[0];
    assert_eq!(g.vendor, GpuVendor::Amd);
    assert_eq!(g.pci_device_id, 0x74a1);
    assert_eq!(g.vram_total_bytes, 205_822_885_888);
    assert_eq!(g.vram_free_bytes, 205_822_885_888 - 314_572_800);
    assert_eq!(g.gfx_target.as_deref(), Some("gfx942"));
    assert_eq!(g.vbios_version.as_deref(), Some("113-M3000100-102"));
    assert_eq!(g.rocm_version.as_deref(), Some("6.3.1"));
    assert_eq!((g.pcie_gen, g.pcie_width), (Some(5), Some(16)));
    let profiles = ProfileSet::embedded().expect("valid");
    assert_eq!(profiles.for_gpu(g).map(|p| p.id.as_str()), Some("mi300x"));

    // A malformed VRAM figure is an error, not a silent zero.
    write(root, &format!("{card}/mem_info_vram_total"), "lots\n");
    assert!(AmdSysfsProbe::new(root).probe().is_err());
    // No sysfs at all: no AMD GPUs.
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        AmdSysfsProbe::new(empty.path())
            .probe()
            .expect("empty")
            .len(),
        0
    );
}

#[test]
fn cpu_probe_on_a_fake_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut cpuinfo = String::new();
    for (i, (phys, core)) in [
        (0, 0),
        (0, 0),
        (0, 1),
        (0, 1),
        (1, 0),
        (1, 0),
        (1, 1),
        (1, 1),
    ]
    .iter()
    .enumerate()
    {
        cpuinfo.push_str(&format!(
            "processor\t: {i}\nmodel name\t: Fake Xeon\nphysical id\t: {phys}\ncore id\t\t: {core}\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
        ));
    }
    write(root, "proc/cpuinfo", &cpuinfo);
    write(
        root,
        "proc/meminfo",
        "MemTotal:       65536000 kB\nMemFree:         1000000 kB\nMemAvailable:   60000000 kB\n",
    );
    write(root, "proc/sys/kernel/hostname", "box\n");
    let (cpu, mem) = probe::probe_cpu(root).expect("cpu probe");
    assert_eq!(
        (cpu.model.as_str(), cpu.cores, cpu.threads),
        ("Fake Xeon", 4, 8)
    );
    assert!(cpu.avx2 && !cpu.avx512);
    assert_eq!(mem.total_bytes, 65_536_000 * 1024);
    assert_eq!(mem.available_bytes, 60_000_000 * 1024);

    // A GPU probe that fails becomes a warning in the inventory, not an error.
    struct Broken;
    impl GpuProbe for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn probe(
            &self,
        ) -> Result<Vec<appl_firmware_profiles::inventory::GpuInfo>, probe::ProbeError> {
            Err(probe::ProbeError::Nvml("GPU is lost".into()))
        }
    }
    let amd = AmdSysfsProbe::new(root);
    let inv = probe::probe_inventory(&[&Broken, &amd], root).expect("inventory");
    assert_eq!(inv.hostname.as_deref(), Some("box"));
    assert!(inv.gpus.is_empty());
    assert_eq!(inv.warnings, vec!["broken: NVML: GPU is lost".to_string()]);

    write(root, "proc/meminfo", "nothing here\n");
    assert!(probe::probe_cpu(root).is_err());
}

#[test]
fn probe_helpers() {
    assert_eq!(probe::gfx_target_name(90402).as_deref(), Some("gfx942"));
    assert_eq!(probe::gfx_target_name(90010).as_deref(), Some("gfx90a"));
    assert_eq!(probe::gfx_target_name(110001).as_deref(), Some("gfx1101"));
    assert_eq!(probe::gfx_target_name(0), None);
    assert_eq!(probe::cuda_version_string(12040), "12.4");
    assert_eq!(probe::cuda_version_string(13000), "13.0");
}

/// On a machine without libnvidia-ml (CI, this development box) NVML means "no NVIDIA GPU".
/// Where the library exists this lists the real GPUs instead; either way it must not error
/// for lack of a driver.
#[test]
fn nvml_probe_without_a_driver_is_empty_not_an_error() {
    let has_lib = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let r = NvmlProbe.probe();
    if has_lib {
        eprintln!(
            "libnvidia-ml present: NVML found {:?}",
            r.as_ref().map(Vec::len)
        );
    } else {
        assert_eq!(r.expect("no library is not an error").len(), 0);
    }
}
