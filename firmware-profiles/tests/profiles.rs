//! Shipped profiles: valid, sourced, unique, complete.

use appl_firmware_profiles::inventory::{GpuInfo, GpuVendor};
use appl_firmware_profiles::profile::{self, Profile, ProfileKind, ProfileSet, EMBEDDED};

#[test]
fn every_shipped_profile_is_valid() {
    let set = ProfileSet::embedded().expect("all profiles validate");
    let mut ids: Vec<&str> = set.profiles.iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "a100-40gb-pcie",
            "a100-40gb-sxm",
            "a100-80gb-pcie",
            "a100-80gb-sxm",
            "a10g",
            "cpu",
            "h100-pcie",
            "h100-sxm",
            "h200",
            "l40s",
            "mi300x",
            "rtx-4090"
        ]
    );
    // The embedded list is the directory: no profile file is left out of the binary.
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"))
            .expect("profiles dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
    files.sort();
    let mut embedded: Vec<&str> = EMBEDDED.iter().map(|(f, _)| *f).collect();
    embedded.sort_unstable();
    assert_eq!(files, embedded);
}

/// Every line that sets a number carries a `#` comment naming its source, on the line or on
/// the comment line just above.
#[test]
fn every_number_cites_a_source() {
    for (file, text) in EMBEDDED {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            let Some((_, value)) = code.split_once('=') else {
                continue;
            };
            // Numbers, arrays of numbers, and quoted versions like "525.60.13" or "8.9".
            let v = value.trim();
            let unquoted = v.trim_matches('"');
            let numeric = v.starts_with(|c: char| c.is_ascii_digit() || c == '[')
                || (v.starts_with('"')
                    && !unquoted.is_empty()
                    && unquoted.chars().all(|c| c.is_ascii_digit() || c == '.'));
            if !numeric {
                continue;
            }
            let cited = line.contains('#') || (i > 0 && lines[i - 1].trim_start().starts_with('#'));
            assert!(cited, "{file}:{}: {line:?} has no source comment", i + 1);
        }
    }
}

#[test]
fn invalid_profiles_are_rejected() {
    let (file, good) = EMBEDDED
        .iter()
        .find(|(f, _)| *f == "rtx-4090.toml")
        .expect("4090");
    Profile::parse(file, good).expect("good");
    let check = |what: &str, from: &str, to: &str| {
        assert!(
            good.contains(from),
            "{what}: pattern {from:?} not in profile"
        );
        let bad = good.replacen(from, to, 1);
        let err = Profile::parse(file, &bad).expect_err(what);
        assert!(!err.to_string().is_empty());
    };
    check(
        "efficiency > 1",
        "decode_efficiency = 0.5",
        "decode_efficiency = 1.5",
    );
    check("ubatch > batch", "n_ubatch = 512", "n_ubatch = 4096");
    check("bad kv type", "kv_type = \"f16\"", "kv_type = \"f12\"");
    check("bad version", "driver = \"525.60.13\"", "driver = \"new\"");
    check("wrong backend", "backend = \"cuda\"", "backend = \"rocm\"");
    check(
        "no pci ids",
        "pci_device_ids = [0x2684]",
        "pci_device_ids = []",
    );
    check("id mismatch", "id = \"rtx-4090\"", "id = \"rtx-4080\"");
    check("unknown key", "guide =", "typo_key = 1\nguide =");
    check(
        "bad compute capability",
        "compute_capability = \"8.9\"",
        "compute_capability = \"89\"",
    );
}

#[test]
fn gpu_matching_by_pci_id() {
    let set = ProfileSet::embedded().expect("valid");
    let gpu = |vendor, dev: u16| GpuInfo {
        index: 0,
        vendor,
        name: "x".into(),
        pci_device_id: dev,
        pci_subsystem_id: None,
        pci_bus_id: None,
        uuid: None,
        vram_total_bytes: 1,
        vram_free_bytes: 1,
        driver_version: None,
        cuda_version: None,
        rocm_version: None,
        vbios_version: None,
        compute_capability: None,
        gfx_target: None,
        ecc_enabled: None,
        pcie_gen: None,
        pcie_width: None,
        power_limit_w: None,
    };
    let check = |vendor, dev, want: Option<&str>| {
        assert_eq!(
            set.for_gpu(&gpu(vendor, dev)).map(|p| p.id.as_str()),
            want,
            "{dev:04x}"
        );
    };
    check(GpuVendor::Nvidia, 0x2684, Some("rtx-4090"));
    check(GpuVendor::Nvidia, 0x20f1, Some("a100-40gb-pcie"));
    check(GpuVendor::Nvidia, 0x2335, Some("h200"));
    check(GpuVendor::Amd, 0x74a1, Some("mi300x"));
    check(GpuVendor::Amd, 0x2684, None);
    check(GpuVendor::Nvidia, 0x1234, None);
    assert_eq!(set.cpu().map(|p| p.kind), Some(ProfileKind::Cpu));
}

#[test]
fn version_comparison() {
    let check = |have, want, expect| {
        assert_eq!(
            profile::version_at_least(have, want),
            expect,
            "{have} vs {want}"
        );
    };
    check("580.159.04", "525.60.13", Some(true));
    check("525.60.13", "525.60.13", Some(true));
    check("525.60.9", "525.60.13", Some(false));
    check("12.4", "12.0", Some(true));
    check("13", "12.9", Some(true));
    check("11.8", "12.0", Some(false));
    check("6.2", "6.2.2", Some(false));
    check("beta", "1.0", None);
}
