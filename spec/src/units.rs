//! Size units: the one place that turns `"512MiB"` into bytes and back.
//!
//! Binary units (`KiB MiB GiB TiB`, and the short `K M G T`) are powers of 1024;
//! decimal units (`KB MB GB TB`) are powers of 1000; `B` is bytes. A number
//! without a unit is refused: a bare `512` is ambiguous (bytes? MiB?), so the
//! caller turns [`SizeError::MissingUnit`] into a diagnostic showing how to write it.

/// Every unit accepted, with its multiplier, for parsing, docs and "did you mean".
/// Linux onlines hot-added memory in blocks of this many MiB (x86-64 below
/// 64 GiB), so memory can only be hot-added in whole blocks. The planner,
/// the validator and the VMM's hotplug region all use this one number.
pub const HOT_ADD_BLOCK_MIB: u64 = 128;
pub const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

pub const MIB: u64 = 1 << 20;

/// Why a size string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("the size is empty")]
    Empty,
    #[error("`{0}` has no unit")]
    MissingUnit(String),
    #[error("unknown size unit `{unit}`")]
    UnknownUnit { unit: String },
    #[error("`{0}` does not start with a whole number")]
    NotANumber(String),
    #[error("`{0}` is too large (more than 2^64 bytes)")]
    Overflow(String),
}

/// Parse `"<digits>[ ]<unit>"` into bytes. Underscores between digits are allowed
/// (`"1_000MB"`); fractions are not (write `"1536MiB"`, not `"1.5GiB"`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: String = number.chars().filter(|c| *c != '_').collect();
    if number.is_empty() {
        return Err(SizeError::NotANumber(t.to_string()));
    }
    let unit = unit.trim();
    if unit.is_empty() {
        return Err(SizeError::MissingUnit(number));
    }
    let Some(&(_, mult)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        if unit.starts_with('.') {
            return Err(SizeError::NotANumber(t.to_string()));
        }
        return Err(SizeError::UnknownUnit {
            unit: unit.to_string(),
        });
    };
    let n: u64 = number
        .parse()
        .map_err(|_| SizeError::Overflow(t.to_string()))?;
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::Overflow(t.to_string()))
}

/// The shortest exact binary spelling of `bytes`: `"1GiB"`, `"1536MiB"`, `"1000B"`.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// The same for a MiB count (memory is kept in MiB).
pub fn format_mib(mib: u64) -> String {
    match mib.checked_mul(MIB) {
        Some(bytes) => format_size(bytes),
        None => format!("{mib}MiB"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn short_units_are_binary() {
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn decimal_units() {
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
    }

    #[test]
    fn bytes_spaces_and_underscores() {
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size(" 10 GiB "), Ok(10 << 30));
        assert_eq!(parse_size("1_024MiB"), Ok(1024 << 20));
        assert_eq!(parse_size("0B"), Ok(0));
    }

    #[test]
    fn bare_number_needs_a_unit() {
        assert_eq!(parse_size("512"), Err(SizeError::MissingUnit("512".into())));
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(
            parse_size("1Gib"),
            Err(SizeError::UnknownUnit { unit: "Gib".into() })
        );
        assert_eq!(
            parse_size("1gb"),
            Err(SizeError::UnknownUnit { unit: "gb".into() })
        );
        assert_eq!(parse_size("GiB"), Err(SizeError::NotANumber("GiB".into())));
        assert_eq!(
            parse_size("-1GiB"),
            Err(SizeError::NotANumber("-1GiB".into()))
        );
        assert_eq!(
            parse_size("1.5GiB"),
            Err(SizeError::NotANumber("1.5GiB".into()))
        );
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("999999999999999999999999B"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for b in [1u64, 1000, 1024, 1536 << 20, 1 << 30, 3 << 40, 123_456_789] {
            assert_eq!(parse_size(&format_size(b)), Ok(b), "{b}");
        }
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_mib(128), "128MiB");
        assert_eq!(format_mib(4096), "4GiB");
        assert_eq!(format_size(0), "0B");
    }
}
