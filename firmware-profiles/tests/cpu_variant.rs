//! The CPU variant rule on recorded machines: /proc/cpuinfo flags, XCR0 and the AMX answer.

use std::path::Path;

use appl_firmware_profiles::cpu_variant::{
    package_lib_dir, select, shipped_variants, AmxPermission, CpuFacts, Verdict, X86_VARIANTS,
};

/// /proc/cpuinfo of the 2-vCPU Xeon VM this project is developed on (family 6, model 207),
/// recorded 2026-11-29 on Linux 6.18. On the same machine `xgetbv` read XCR0 = 0x602e7 and
/// arch_prctl(ARCH_REQ_XCOMP_PERM, 18) returned 0.
const XEON_VM: &str = include_str!("fixtures/cpu/xeon-amx-vm-2vcpu.cpuinfo");
const XEON_VM_XCR0: u64 = 0x602e7;

/// The SIMD-relevant flags other CPUs report (a reduced `flags` line).
const HASWELL: &str = "flags : fpu sse sse2 ssse3 fma sse4_1 sse4_2 xsave avx f16c bmi1 avx2 bmi2";
const CASCADE_LAKE: &str = "flags : sse4_2 xsave avx f16c fma avx2 bmi2 avx512f avx512dq avx512cd \
                            avx512bw avx512vl avx512_vnni";
const ZEN4: &str =
    "flags : sse4_2 xsave avx f16c fma avx2 bmi2 avx512f avx512dq avx512cd avx512bw \
                    avx512vl avx512vbmi avx512_vnni avx512_bf16 avx512_vbmi2";
const OLD_ATOM: &str = "flags : fpu sse sse2 ssse3 sse4_1 sse4_2 movbe popcnt";

/// XCR0 with x87, SSE and AVX state only (AVX-512 and AMX off).
const XCR0_AVX_ONLY: u64 = 0x207;
/// XCR0 with AVX and AVX-512 but not the AMX tile state.
const XCR0_NO_TILES: u64 = 0x2e7;

fn all_shipped() -> Vec<String> {
    X86_VARIANTS.iter().map(|v| v.name.to_owned()).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

struct Case {
    what: &'static str,
    cpuinfo: &'static str,
    xcr0: Option<u64>,
    amx: AmxPermission,
    shipped: Vec<String>,
    forced: Option<&'static str>,
    want: Option<&'static str>,
}

fn check(c: Case) {
    let facts = CpuFacts::from_cpuinfo(c.cpuinfo, c.xcr0, c.amx);
    let sel = select(&facts, &c.shipped, c.forced);
    assert_eq!(sel.chosen, c.want, "{}: {}", c.what, sel.summary());
    // Whatever is chosen must never need something the facts deny.
    if let Some(chosen) = sel.chosen {
        let cand = sel.candidates.iter().find(|x| x.variant == chosen).unwrap();
        assert_eq!(cand.verdict, Verdict::Runs, "{}", c.what);
        assert!(c.shipped.iter().any(|s| s == chosen), "{}", c.what);
    }
}

#[test]
fn picks_the_best_variant_the_cpu_and_kernel_allow() {
    let cases = vec![
        Case {
            what: "this VM with AMX granted: still the best variant without AMX",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Granted,
            shipped: all_shipped(),
            forced: None,
            want: Some("zen4"),
        },
        Case {
            what: "AMX granted and named by the operator: the AMX variant",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Granted,
            shipped: all_shipped(),
            forced: Some("sapphirerapids"),
            want: Some("sapphirerapids"),
        },
        Case {
            what: "AMX granted but the tile trial faulted: not even when forced",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Faults("tilezero died of signal 4".into()),
            shipped: all_shipped(),
            forced: Some("sapphirerapids"),
            want: None,
        },
        Case {
            what: "this VM with AMX refused: the best AVX-512 variant without AMX",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Refused("arch_prctl: No space left on device".into()),
            shipped: all_shipped(),
            forced: None,
            want: Some("zen4"),
        },
        Case {
            what: "AMX flags but the kernel leaves the tile state out of XCR0",
            cpuinfo: XEON_VM,
            xcr0: Some(XCR0_NO_TILES),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("zen4"),
        },
        Case {
            what: "AMX flags and XCR0 bits but permission never asked: no AMX",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("zen4"),
        },
        Case {
            what: "AVX-512 flags but the kernel saves no ZMM state: AVX2 with AVX-VNNI",
            cpuinfo: XEON_VM,
            xcr0: Some(XCR0_AVX_ONLY),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("alderlake"),
        },
        Case {
            what: "no XSAVE at all: SSE4.2 only",
            cpuinfo: XEON_VM,
            xcr0: None,
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("sse42"),
        },
        Case {
            what: "Haswell",
            cpuinfo: HASWELL,
            xcr0: Some(XCR0_AVX_ONLY),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("haswell"),
        },
        Case {
            what: "Cascade Lake: AVX-512 VNNI without VBMI",
            cpuinfo: CASCADE_LAKE,
            xcr0: Some(XCR0_NO_TILES),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("cascadelake"),
        },
        Case {
            what: "Zen 4",
            cpuinfo: ZEN4,
            xcr0: Some(XCR0_NO_TILES),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("zen4"),
        },
        Case {
            what: "an old Atom: SSE4.2",
            cpuinfo: OLD_ATOM,
            xcr0: None,
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: None,
            want: Some("sse42"),
        },
        Case {
            what: "a subset shipped, AMX refused: icelake, since zen4 is not carried",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Refused("EPERM".into()),
            shipped: names(&["x64", "haswell", "skylakex", "icelake", "sapphirerapids"]),
            forced: None,
            want: Some("icelake"),
        },
        Case {
            what: "only a baseline shipped",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Granted,
            shipped: names(&["x64"]),
            forced: None,
            want: Some("x64"),
        },
        Case {
            what: "nothing shipped",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Granted,
            shipped: vec![],
            forced: None,
            want: None,
        },
        Case {
            what: "unknown names are never loaded",
            cpuinfo: HASWELL,
            xcr0: Some(XCR0_AVX_ONLY),
            amx: AmxPermission::NotAsked,
            shipped: names(&["future-cpu", "x64"]),
            forced: None,
            want: Some("x64"),
        },
        Case {
            what: "forced to a lower variant that runs",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Granted,
            shipped: all_shipped(),
            forced: Some("haswell"),
            want: Some("haswell"),
        },
        Case {
            what: "forced to AMX that the kernel refused: nothing",
            cpuinfo: XEON_VM,
            xcr0: Some(XEON_VM_XCR0),
            amx: AmxPermission::Refused("EPERM".into()),
            shipped: all_shipped(),
            forced: Some("sapphirerapids"),
            want: None,
        },
        Case {
            what: "forced to an AVX-512 variant on Haswell: nothing",
            cpuinfo: HASWELL,
            xcr0: Some(XCR0_AVX_ONLY),
            amx: AmxPermission::NotAsked,
            shipped: all_shipped(),
            forced: Some("skylakex"),
            want: None,
        },
    ];
    for c in cases {
        check(c);
    }
}

#[test]
fn scores_follow_ggml_and_order_the_candidates() {
    // ggml_backend_cpu_x86_score: 1 + FMA 1 + F16C 2 + SSE42 4 + BMI2 8 + AVX 16 + AVX2 32
    // + AVX_VNNI 64 + AVX512 128 + VBMI 256 + BF16 512 + AVX512_VNNI 1024 + AMX_INT8 2048.
    let score = |n: &str| X86_VARIANTS.iter().find(|v| v.name == n).unwrap().score();
    assert_eq!(score("x64"), 1);
    assert_eq!(score("haswell"), 64);
    assert_eq!(score("icelake"), 1472);
    assert_eq!(score("sapphirerapids"), 4032);
    let mut scores: Vec<u32> = X86_VARIANTS.iter().map(|v| v.score()).collect();
    scores.sort_unstable();
    scores.dedup();
    assert_eq!(scores.len(), X86_VARIANTS.len(), "two variants tie");

    let facts = CpuFacts::from_cpuinfo(XEON_VM, Some(XEON_VM_XCR0), AmxPermission::Granted);
    let sel = select(&facts, &all_shipped(), None);
    assert!(sel.candidates.windows(2).all(|w| w[0].score > w[1].score));
    assert_eq!(sel.shipped.len(), X86_VARIANTS.len());
}

#[test]
fn the_report_names_why_better_variants_were_skipped() {
    let facts = CpuFacts::from_cpuinfo(
        XEON_VM,
        Some(XEON_VM_XCR0),
        AmxPermission::Refused("arch_prctl(ARCH_REQ_XCOMP_PERM): Operation not permitted".into()),
    );
    let sel = select(
        &facts,
        &names(&["x64", "haswell", "icelake", "sapphirerapids"]),
        None,
    );
    assert_eq!(
        sel.summary(),
        "icelake: the best of the 4 shipped variants that this CPU and kernel run"
    );
    let skipped = sel.skipped_better();
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("sapphirerapids: AMX cannot be used here")
                && s.contains("Operation not permitted")
                && s.contains("SIGILL")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s == "zen4: would run here, but this package does not carry it"),
        "{skipped:?}"
    );

    let haswell = CpuFacts::from_cpuinfo(HASWELL, Some(XCR0_AVX_ONLY), AmxPermission::NotAsked);
    let sel = select(&haswell, &all_shipped(), Some("skylakex"));
    assert_eq!(
        sel.summary(),
        "none: APPL_CPU_VARIANT=skylakex cannot be used here: the CPU lacks avx512f, avx512cd, \
         avx512vl, avx512dq, avx512bw"
    );

    let no_zmm = CpuFacts::from_cpuinfo(XEON_VM, Some(XCR0_AVX_ONLY), AmxPermission::NotAsked);
    let sel = select(&no_zmm, &all_shipped(), None);
    let skylakex = sel
        .candidates
        .iter()
        .find(|c| c.variant == "skylakex")
        .unwrap();
    assert_eq!(
        skylakex.verdict.describe(),
        "XCR0 is 0x207: the kernel does not enable the AVX-512 register state (bits 0xe0)"
    );
}

#[test]
fn finds_shipped_libraries_and_the_package_dir() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "libggml-cpu-haswell.so",
        "libggml-cpu-x64.so",
        "libggml-base.so",
        "libggml-cuda.so",
        "README",
    ] {
        std::fs::write(dir.path().join(f), b"").unwrap();
    }
    let found = shipped_variants(dir.path()).unwrap();
    let found: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(found, ["haswell", "x64"]);
    assert!(shipped_variants(&dir.path().join("absent"))
        .unwrap()
        .is_empty());
    assert_eq!(
        package_lib_dir(Path::new("/usr/bin/appld")).unwrap(),
        Path::new("/usr/lib/appl")
    );
}

#[test]
fn the_live_probe_reads_this_machine() {
    let facts = CpuFacts::probe();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    assert_eq!(
        facts.flags,
        CpuFacts::from_cpuinfo(&cpuinfo, None, AmxPermission::NotAsked).flags
    );
    if cfg!(target_arch = "x86_64") && facts.flags.contains("avx") {
        // Linux shows `avx` only when it saves the AVX state, so XCR0 must say so too.
        let xcr0 = facts.xcr0.expect("xsave is listed, so XCR0 is readable");
        assert_eq!(xcr0 & 0b110, 0b110, "XCR0 {xcr0:#x}");
    }
    // Whatever the machine, the choice among everything is something that runs here.
    let sel = select(&facts, &all_shipped(), None);
    assert!(sel.chosen.is_some(), "{}", sel.summary());
}

#[test]
fn amx_that_runs_is_skipped_unless_named_and_the_report_says_so() {
    let facts = CpuFacts::from_cpuinfo(XEON_VM, Some(XEON_VM_XCR0), AmxPermission::Granted);
    let sel = select(&facts, &all_shipped(), None);
    assert_eq!(sel.chosen, Some("zen4"), "{}", sel.summary());
    let skipped = sel.skipped_better();
    assert!(
        skipped.iter().any(|s| s.starts_with(
            "sapphirerapids: runs here, but its AMX kernels are loaded only when APPL_CPU_VARIANT names it"
        )),
        "{skipped:?}"
    );
}
