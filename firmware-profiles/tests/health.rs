//! Live health: a fake device reports each condition, and the rules say which are faults and
//! which are warnings; the AMD sysfs reader against a fake tree; the recorded file; numbering
//! across sources.

use appl_firmware_profiles::health::amd::AmdSysfsHealth;
use appl_firmware_profiles::health::recorded::{RecordedHealth, RecordedSample};
use appl_firmware_profiles::health::{
    fatal_xid, faults, sample_gpus, warnings, GpuFault, GpuHealth, HealthSource, Throttle,
};
use appl_firmware_profiles::inventory::GpuVendor;
use appl_firmware_profiles::probe::ProbeError;

/// A GPU that reports whatever the test sets, or fails.
struct FakeDevice {
    reading: Option<GpuHealth>,
}

impl HealthSource for FakeDevice {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn sample(&mut self) -> Result<Vec<GpuHealth>, ProbeError> {
        match &self.reading {
            Some(g) => Ok(vec![g.clone()]),
            None => Err(ProbeError::Nvml("the fake driver is gone".into())),
        }
    }
}

fn healthy() -> GpuHealth {
    let mut g = GpuHealth::new(0, GpuVendor::Nvidia, "NVIDIA H100 80GB HBM3");
    g.uuid = Some("GPU-0000".into());
    g.memory_total_bytes = 80 << 30;
    g.memory_used_bytes = 10 << 30;
    g.utilization_pct = Some(35.0);
    g.temperature_c = Some(51.0);
    g.power_w = Some(310.0);
    g.power_limit_w = Some(700.0);
    g.ecc_corrected = Some(0);
    g.ecc_uncorrected = Some(0);
    g
}

#[test]
fn each_condition_is_a_fault_or_a_warning() {
    type Edit = fn(&mut GpuHealth);
    let cases: &[(&str, Edit, &[GpuFault], &[&str])] = &[
        ("healthy", |_| {}, &[], &[]),
        (
            "uncorrectable ECC",
            |g| g.ecc_uncorrected = Some(2),
            &[GpuFault::EccUncorrectable { count: 2 }],
            &[],
        ),
        (
            "corrected ECC only",
            |g| g.ecc_corrected = Some(17),
            &[],
            &["17 corrected ECC"],
        ),
        (
            "GPU fell off the bus",
            |g| g.xid_events = vec![79],
            &[GpuFault::Xid { code: 79 }],
            &[],
        ),
        (
            "double-bit ECC event, twice",
            |g| g.xid_events = vec![48, 48],
            &[GpuFault::Xid { code: 48 }],
            &[],
        ),
        (
            "an application's own XID is not a fault",
            |g| g.xid_events = vec![13],
            &[],
            &["XID 13"],
        ),
        (
            "thermal throttling",
            |g| g.throttle = vec![Throttle::Thermal],
            &[],
            &["clocks throttled: thermal"],
        ),
        (
            "power-cap throttling",
            |g| g.throttle = vec![Throttle::PowerCap],
            &[],
            &["clocks throttled: power_cap"],
        ),
        (
            "no ECC on this board",
            |g| {
                g.ecc_corrected = None;
                g.ecc_uncorrected = None;
            },
            &[],
            &[],
        ),
    ];
    for (name, edit, want_faults, want_warnings) in cases {
        let mut g = healthy();
        edit(&mut g);
        let mut dev = FakeDevice { reading: Some(g) };
        let read = dev.sample().expect("the fake device answers");
        assert_eq!(faults(&read[0]), *want_faults, "{name}");
        let w = warnings(&read[0]);
        assert_eq!(w.len(), want_warnings.len(), "{name}: {w:?}");
        for (got, want) in w.iter().zip(*want_warnings) {
            assert!(got.contains(want), "{name}: {got:?} should say {want:?}");
        }
    }
}

#[test]
fn fatal_xids_are_named() {
    for code in [48, 79, 94, 95, 119] {
        assert!(fatal_xid(code).is_some(), "XID {code}");
    }
    for code in [13, 31, 43] {
        assert!(
            fatal_xid(code).is_none(),
            "XID {code} is an application's fault"
        );
    }
}

#[test]
fn gpus_are_numbered_across_sources_and_a_failing_source_is_named() {
    let mut second = healthy();
    second.vendor = GpuVendor::Amd;
    let mut sources: Vec<Box<dyn HealthSource>> = vec![
        Box::new(FakeDevice {
            reading: Some(healthy()),
        }),
        Box::new(FakeDevice { reading: None }),
        Box::new(FakeDevice {
            reading: Some(second),
        }),
    ];
    let (gpus, errors) = sample_gpus(&mut sources);
    assert_eq!(
        gpus.iter().map(|g| (g.index, g.vendor)).collect::<Vec<_>>(),
        vec![(0, GpuVendor::Nvidia), (1, GpuVendor::Amd)]
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("fake driver is gone"), "{errors:?}");
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[test]
fn amd_health_reads_sysfs() {
    let root = tempfile::tempdir().expect("tempdir");
    let dev = root.path().join("sys/class/drm/card1/device");
    write(&dev.join("vendor"), "0x1002\n");
    write(&dev.join("product_name"), "AMD Instinct MI300X\n");
    write(&dev.join("unique_id"), "abcd\n");
    write(&dev.join("mem_info_vram_total"), "205822885888\n");
    write(&dev.join("mem_info_vram_used"), "1073741824\n");
    write(&dev.join("gpu_busy_percent"), "87\n");
    write(&dev.join("hwmon/hwmon3/temp1_input"), "64000\n");
    write(&dev.join("hwmon/hwmon3/power1_average"), "612000000\n");
    write(&dev.join("hwmon/hwmon3/power1_cap"), "750000000\n");
    write(&dev.join("ras/umc_err_count"), "ue: 0\nce: 3\n");
    write(&dev.join("ras/gfx_err_count"), "ue: 1\nce: 0\n");
    // A connector and a non-AMD card are not GPUs to watch.
    write(
        &root.path().join("sys/class/drm/card1-DP-1/device/vendor"),
        "0x1002\n",
    );
    write(
        &root.path().join("sys/class/drm/card0/device/vendor"),
        "0x10de\n",
    );
    let got = AmdSysfsHealth::new(root.path()).sample().expect("sample");
    assert_eq!(got.len(), 1, "{got:#?}");
    let g = &got[0];
    assert_eq!(g.name, "AMD Instinct MI300X");
    assert_eq!(g.uuid.as_deref(), Some("abcd"));
    assert_eq!(g.memory_used_bytes, 1 << 30);
    assert_eq!(g.utilization_pct, Some(87.0));
    assert_eq!(g.temperature_c, Some(64.0));
    assert_eq!(g.power_w, Some(612.0));
    assert_eq!(g.power_limit_w, Some(750.0));
    assert_eq!((g.ecc_uncorrected, g.ecc_corrected), (Some(1), Some(3)));
    assert_eq!(faults(g), vec![GpuFault::EccUncorrectable { count: 1 }]);
}

#[test]
fn a_recorded_file_is_read_afresh_each_sample() {
    let d = tempfile::tempdir().expect("tempdir");
    let path = d.path().join("health.json");
    let mut src = RecordedHealth::new(&path);
    assert!(src.sample().is_err(), "a missing file is an error");
    let mut s = RecordedSample {
        gpus: vec![healthy()],
    };
    std::fs::write(&path, s.to_json()).expect("write");
    assert!(faults(&src.sample().expect("sample")[0]).is_empty());
    s.gpus[0].xid_events = vec![95];
    std::fs::write(&path, s.to_json()).expect("write");
    assert_eq!(
        faults(&src.sample().expect("sample")[0]),
        vec![GpuFault::Xid { code: 95 }]
    );
    std::fs::write(&path, "{\"gpus\": [").expect("write");
    assert!(matches!(src.sample(), Err(ProbeError::Parse { .. })));
}

/// On a machine with an NVIDIA driver this samples the real GPUs through NVML; elsewhere it
/// checks that the missing driver means no NVML source, not an error.
#[test]
fn nvml_is_used_where_a_driver_is_and_quietly_absent_elsewhere() {
    use appl_firmware_profiles::health::nvml::NvmlHealth;
    match NvmlHealth::open() {
        None => assert!(
            !std::path::Path::new("/proc/driver/nvidia/version").exists(),
            "an NVIDIA driver is loaded but NVML did not open"
        ),
        Some(mut n) => {
            let gpus = n.sample().expect("NVML answers");
            assert!(!gpus.is_empty());
            for g in &gpus {
                assert!(g.memory_total_bytes > 0, "{g:?}");
                assert!(g.uuid.is_some(), "{g:?}");
            }
        }
    }
}
