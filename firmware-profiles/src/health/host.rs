//! The host's side of health: memory from `/proc/meminfo` and the sampling process's resident
//! set from `/proc/self/status`. On a CPU-only box this is the whole health sample.

use std::path::Path;

use super::HostHealth;
use crate::probe::{parse_meminfo, ProbeError};

/// Reads host memory and this process's resident set under `root` (`/` in production, a fake
/// tree in tests). A missing `VmRSS` leaves `process_rss_bytes` empty; an unreadable meminfo is
/// an error.
pub fn sample_host(root: &Path) -> Result<HostHealth, ProbeError> {
    let meminfo_path = root.join("proc/meminfo");
    let meminfo = std::fs::read_to_string(&meminfo_path).map_err(|source| ProbeError::Io {
        path: meminfo_path.display().to_string(),
        source,
    })?;
    let mem = parse_meminfo(&meminfo).ok_or_else(|| ProbeError::Parse {
        path: meminfo_path.display().to_string(),
        reason: "no MemTotal".into(),
    })?;
    let rss = std::fs::read_to_string(root.join("proc/self/status"))
        .ok()
        .and_then(|s| parse_vm_rss(&s));
    Ok(HostHealth {
        memory_total_bytes: mem.total_bytes,
        memory_available_bytes: mem.available_bytes,
        process_rss_bytes: rss,
    })
}

/// `VmRSS:   123456 kB` from `/proc/<pid>/status`, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmRSS:")?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_memory_and_rss_from_a_fake_proc() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("proc/self")).expect("mkdir");
        std::fs::write(
            d.path().join("proc/meminfo"),
            "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    600 kB\n",
        )
        .expect("write");
        std::fs::write(
            d.path().join("proc/self/status"),
            "Name:\tappld\nVmPeak:\t 900 kB\nVmRSS:\t     250 kB\n",
        )
        .expect("write");
        let h = sample_host(d.path()).expect("sample");
        assert_eq!(h.memory_total_bytes, 1000 * 1024);
        assert_eq!(h.memory_available_bytes, 600 * 1024);
        assert_eq!(h.process_rss_bytes, Some(250 * 1024));
        std::fs::remove_file(d.path().join("proc/self/status")).expect("rm");
        assert_eq!(
            sample_host(d.path()).expect("sample").process_rss_bytes,
            None
        );
        std::fs::remove_file(d.path().join("proc/meminfo")).expect("rm");
        assert!(sample_host(d.path()).is_err());
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let h = sample_host(Path::new("/")).expect("the live /proc reads");
        assert!(h.process_rss_bytes.is_some_and(|r| r > 0));
        assert!(h.memory_total_bytes >= h.memory_available_bytes);
    }
}
