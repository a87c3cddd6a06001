//! Byte units: the one place that turns byte counts into MiB and GiB, as text for people and
//! as numbers for logs and tests.

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// Bytes as a number of MiB, e.g. for a log field such as `kv_mib`.
pub fn in_mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Bytes as a number of GiB.
pub fn in_gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// Formats bytes as GiB with one decimal, e.g. `52.8 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", in_gib(bytes))
}

/// Formats bytes as MiB with no decimals, e.g. `519 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", in_mib(bytes))
}

/// Formats bytes in GiB at or above 1 GiB, otherwise in MiB.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        gib(bytes)
    } else {
        mib(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_converts() {
        let cases: [(u64, &str, &str, &str); 4] = [
            (0, "0 MiB", "0.0 GiB", "0 MiB"),
            (519 * MIB, "519 MiB", "0.5 GiB", "519 MiB"),
            (GIB, "1024 MiB", "1.0 GiB", "1.0 GiB"),
            (GIB * 53 / 2, "27136 MiB", "26.5 GiB", "26.5 GiB"),
        ];
        for (bytes, want_mib, want_gib, want_human) in cases {
            assert_eq!(mib(bytes), want_mib, "{bytes}");
            assert_eq!(gib(bytes), want_gib, "{bytes}");
            assert_eq!(human(bytes), want_human, "{bytes}");
        }
        assert_eq!(in_mib(3 * MIB / 2), 1.5);
        assert_eq!(in_gib(GIB / 4), 0.25);
    }
}
