//! Human-readable sizes for the text plan (`1 GiB`, `512 MiB`, `1.5 GiB`).

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// Bytes in the largest binary unit that keeps the number ≥ 1; exact values
/// print as integers, others with up to two decimals.
pub fn human_bytes(bytes: u64) -> String {
    let mut unit = 0;
    let mut div: u64 = 1;
    while unit + 1 < UNITS.len() && bytes >= div.saturating_mul(1024) {
        div = div.saturating_mul(1024);
        unit += 1;
    }
    if bytes.is_multiple_of(div) {
        return format!("{} {}", bytes / div, UNITS[unit]);
    }
    let v = bytes as f64 / div as f64;
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {}", UNITS[unit])
}

/// MiB in human form.
pub fn human_mib(mib: u64) -> String {
    human_bytes(mib.saturating_mul(1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_mib(1024), "1 GiB");
        assert_eq!(human_mib(512), "512 MiB");
        assert_eq!(human_mib(1536), "1.5 GiB");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(10 << 30), "10 GiB");
        assert_eq!(human_bytes(3 << 40), "3 TiB");
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(u64::MAX), "16777216 TiB");
    }
}
