//! Byte counts as the config writes them (`"200GiB"`, `"1.5TB"`, `5000`)
//! → bytes, for a class's quota.
//!
//! Pure and total, like [`super::rate`]: the number is computed exactly in
//! integers (a fraction rounded down to a whole byte), never panics.
//!
//! Units, case-insensitive (lower-cased, no two are the same):
//!
//! | unit  | bytes  |   | unit  | bytes |
//! |-------|--------|---|-------|-------|
//! | `B`   | 1      |   |       |       |
//! | `kB`  | 10^3   |   | `KiB` | 2^10  |
//! | `MB`  | 10^6   |   | `MiB` | 2^20  |
//! | `GB`  | 10^9   |   | `GiB` | 2^30  |
//! | `TB`  | 10^12  |   | `TiB` | 2^40  |
//!
//! A string without a unit, or a bare integer in the config, is bytes.
//! Refused: a sign, an exponent, an unknown unit, 0 bytes (a quota of
//! nothing would refuse everything), more than `u64::MAX`.

use super::rate::{quantity, times};

const UNITS: [(&str, u128); 9] = [
    ("B", 1),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// What every error ends with: what to write instead.
const ACCEPTED: &str = "write a number of bytes, optionally with one of the units B, kB, MB, GB, TB \
                        (10^3 steps) or KiB, MiB, GiB, TiB (2^10 steps), e.g. \"200GiB\" or \"1.5TB\"";

/// Parses a byte count; the error says what was wrong and what to write.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (s, number, unit) = quantity(text, "size", ACCEPTED)?;
    let per_unit = match unit {
        "" => 1,
        _ => match UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) {
            Some(&(_, n)) => n,
            None => return Err(format!("size \"{s}\" has an unknown unit \"{unit}\": {ACCEPTED}")),
        },
    };
    let bytes = times(number, per_unit)
        .ok_or_else(|| format!("size \"{s}\" is too large: at most {} bytes", u64::MAX))?;
    if bytes == 0 {
        return Err(format!("size \"{s}\" is less than 1 byte: {ACCEPTED}"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_plain_bytes() {
        for (text, bytes) in [
            ("1", 1),
            ("5000", 5000),
            ("5000B", 5000),
            ("5000 b", 5000),
            ("1kB", 1_000),
            ("1KB", 1_000),
            ("2MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("4TB", 4_000_000_000_000),
            ("1KiB", 1 << 10),
            ("1kib", 1 << 10),
            ("2MiB", 2 << 20),
            ("200GiB", 200 << 30),
            ("1TiB", 1 << 40),
            ("1.5GiB", 3 << 29),
            ("0.5kB", 500),
            ("1.0001kB", 1000),
            (" 7 GB ", 7_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_sizes_say_what_to_write() {
        for (text, says) in [
            ("", "empty"),
            ("0", "less than 1 byte"),
            ("0GiB", "less than 1 byte"),
            ("0.0001kB", "less than 1 byte"),
            ("-1GiB", "sign"),
            ("+1GiB", "sign"),
            ("GiB", "does not start with a number"),
            (".5GiB", "does not start with a number"),
            ("1e9", "unknown unit \"e9\""),
            ("20gbit", "unknown unit"),
            ("20GiB/s", "unknown unit"),
            ("1.0000000001GB", "more than 9 digits"),
            ("18446744073709551616", "too large"),
            ("16777216TiB", "too large"),
        ] {
            let e = parse_size(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(e.contains("KiB, MiB, GiB, TiB") || says == "too large", "{text:?}: {e}");
        }
    }
}
