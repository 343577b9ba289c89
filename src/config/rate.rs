//! Rates as the config writes them (`"20mbit"`, `"10KiB/s"`, `"1.5mbit"`)
//! ↔ bytes per second, for the bandwidth classes and a tunnel's capacity.
//!
//! Pure and total: [`parse_rate`] never panics, and whatever it accepts
//! [`format_rate`] writes back in a form it reads to the same value (the
//! `rate` fuzz target holds both).
//!
//! Units, case-insensitive (no two of them differ only in case):
//!
//! | unit    | per second             | bytes/s   |
//! |---------|------------------------|-----------|
//! | `kbit`  | 10^3 bits (as tc)      | 125       |
//! | `mbit`  | 10^6 bits              | 125 000   |
//! | `gbit`  | 10^9 bits              | 125 000 000 |
//! | `KiB/s` | 2^10 bytes             | 1 024     |
//! | `MiB/s` | 2^20 bytes             | 1 048 576 |
//!
//! The number is a whole number or a decimal fraction of at most
//! [`MAX_DECIMALS`] digits (`"1.5mbit"`), computed exactly in integers (no
//! floating point); a rate that is not a whole number of bytes per second
//! is rounded down to one (`"1.1kbit"`, 137.5 bytes, is 137). A unit is
//! required (a bare number would be ambiguous between bits and bytes), and
//! may follow the number after spaces. Refused: no number, no or an unknown
//! unit, a sign, an exponent, less than 1 byte per second (0 caps nothing:
//! leave the key out instead), and more than `u64::MAX` bytes per second.

/// A rate in bytes per second; never 0 once parsed.
pub type BytesPerSec = u64;

/// The most digits after the decimal point (enough for a byte of a gbit).
pub const MAX_DECIMALS: usize = 9;

/// The units, as written in the config and by [`format_rate`], with the
/// bytes per second each one is. Lower-cased, they are all different.
const UNITS: [(&str, u128); 5] =
    [("gbit", 125_000_000), ("mbit", 125_000), ("kbit", 125), ("MiB/s", 1 << 20), ("KiB/s", 1 << 10)];

/// What every error ends with: what to write instead.
const ACCEPTED: &str = "write a number and one of the units kbit, mbit, gbit (10^3, 10^6, 10^9 bits/s) \
                        or KiB/s, MiB/s, e.g. \"20mbit\", \"1.5mbit\" or \"512KiB/s\"";

/// Parses a rate; the error says what was wrong and what to write.
pub fn parse_rate(text: &str) -> Result<BytesPerSec, String> {
    let (s, (whole, decimals), unit) = quantity(text, "rate", ACCEPTED)?;
    if unit.is_empty() {
        return Err(format!("rate \"{s}\" has no unit: {ACCEPTED}"));
    }
    let Some(&(_, per_unit)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) else {
        return Err(format!("rate \"{s}\" has an unknown unit \"{unit}\": {ACCEPTED}"));
    };
    let bytes = times((whole, decimals), per_unit)
        .ok_or_else(|| format!("rate \"{s}\" is too large: at most {} bytes per second", u64::MAX))?;
    if bytes == 0 {
        return Err(format!(
            "rate \"{s}\" is less than 1 byte per second; leave the key out for no cap: {ACCEPTED}"
        ));
    }
    Ok(bytes)
}

/// A quantity as written (a rate, a size: `what`): trimmed, its number's
/// whole and decimal digits, and its unit (maybe empty); the error says
/// what was wrong, then `accepted`.
pub(super) fn quantity<'a>(
    text: &'a str,
    what: &str,
    accepted: &str,
) -> Result<(&'a str, (&'a str, &'a str), &'a str), String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("the {what} is empty: {accepted}"));
    }
    if s.starts_with(['-', '+']) {
        return Err(format!("{what} \"{s}\" has a sign; it is a positive number: {accepted}"));
    }
    let number_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(number_len);
    let Some((whole, decimals)) = split_number(number) else {
        return Err(format!("{what} \"{s}\" does not start with a number: {accepted}"));
    };
    if decimals.len() > MAX_DECIMALS {
        return Err(format!(
            "{what} \"{s}\" has more than {MAX_DECIMALS} digits after the point: {accepted}"
        ));
    }
    Ok((s, (whole, decimals), unit.trim_start()))
}

/// `whole.decimals × per_unit`, rounded down; `None` past `u64`.
pub(super) fn times((whole, decimals): (&str, &str), per_unit: u128) -> Option<u64> {
    // (whole·10^k + decimals) × per_unit / 10^k, floored.
    let scale = 10u128.pow(decimals.len() as u32);
    let scaled = digits(whole)?.checked_mul(scale)?.checked_add(digits(decimals)?)?.checked_mul(per_unit)?;
    u64::try_from(scaled / scale).ok()
}

/// `digits` or `digits.digits`: the two runs of digits (the second may be
/// empty), `None` for anything else.
pub(super) fn split_number(number: &str) -> Option<(&str, &str)> {
    let (whole, decimals) = match number.split_once('.') {
        Some((_, "")) => return None,
        Some((w, d)) => (w, d),
        None => (number, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    (!whole.is_empty() && all_digits(whole) && all_digits(decimals)).then_some((whole, decimals))
}

/// The value of a run of ASCII digits ("" is 0); `None` past `u128`.
pub(super) fn digits(run: &str) -> Option<u128> {
    run.bytes().try_fold(0u128, |n, b| n.checked_mul(10)?.checked_add(u128::from(b - b'0')))
}

/// A rate as a person would write it: in gbit or mbit when that takes at
/// most three decimals (`"1.5gbit"`, `"20mbit"`), else in whole kbit, else
/// in whole MiB/s or KiB/s (`"10KiB/s"`), else in kbit with three decimals
/// at most (`"0.008kbit"` for 1 byte/s), which is always exact.
/// [`parse_rate`] reads every output back to `bytes` (but for 0, which is
/// no rate: `"0kbit"`, refused).
pub fn format_rate(bytes: BytesPerSec) -> String {
    let b = u128::from(bytes);
    let bits = b * 8;
    for (unit, bits_per_unit) in [("gbit", 1_000_000_000), ("mbit", 1_000_000)] {
        if bits >= bits_per_unit && (bits * 1000) % bits_per_unit == 0 {
            return decimal(bits * 1000 / bits_per_unit, unit);
        }
    }
    if bits % 1000 == 0 {
        return format!("{}kbit", bits / 1000);
    }
    for (unit, per_unit) in [("MiB/s", 1 << 20), ("KiB/s", 1 << 10)] {
        if b % per_unit == 0 {
            return format!("{}{unit}", b / per_unit);
        }
    }
    // bytes × 8 bits = thousandths of a kilobit.
    decimal(bits, "kbit")
}

/// `thousandths` / 1000 with at most three decimals, and the unit.
fn decimal(thousandths: u128, unit: &str) -> String {
    let (whole, frac) = (thousandths / 1000, thousandths % 1000);
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit() {
        for (text, bytes) in [
            ("20mbit", 2_500_000),
            ("1gbit", 125_000_000),
            ("500kbit", 62_500),
            ("10KiB/s", 10_240),
            ("2MiB/s", 2 << 20),
            ("1kbit", 125),
            ("100mbit", 12_500_000),
            ("40gbit", 5_000_000_000),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn units_ignore_case_and_may_follow_a_space() {
        for text in ["20Mbit", "20MBIT", "20 mbit", " 20mbit ", "20\tmbit"] {
            assert_eq!(parse_rate(text), Ok(2_500_000), "{text:?}");
        }
        assert_eq!(parse_rate("10kib/s"), Ok(10_240));
        assert_eq!(parse_rate("10 KIB/S"), Ok(10_240));
    }

    #[test]
    fn decimal_fractions_are_exact_and_round_down_to_a_byte() {
        assert_eq!(parse_rate("1.5mbit"), Ok(187_500));
        assert_eq!(parse_rate("0.5gbit"), Ok(62_500_000));
        assert_eq!(parse_rate("2.25MiB/s"), Ok(2_359_296));
        assert_eq!(parse_rate("0.008kbit"), Ok(1));
        assert_eq!(parse_rate("1.1kbit"), Ok(137), "137.5 bytes: rounded down");
        assert_eq!(parse_rate("0.000000008gbit"), Ok(1), "9 decimals: a byte of a gbit");
        assert_eq!(parse_rate("1.000000000gbit"), Ok(125_000_000));
        // Floating point would give 2_999_999 here (0.1 + 0.2 style error).
        assert_eq!(parse_rate("23.999992mbit"), Ok(2_999_999));
    }

    #[test]
    fn bad_rates_say_what_to_write() {
        for (text, says) in [
            ("", "empty"),
            ("   ", "empty"),
            ("0mbit", "less than 1 byte"),
            ("0.0kbit", "less than 1 byte"),
            ("0.001kbit", "less than 1 byte"),
            ("-5mbit", "sign"),
            ("+5mbit", "sign"),
            ("20", "no unit"),
            ("1.5", "no unit"),
            ("mbit", "does not start with a number"),
            (".5mbit", "does not start with a number"),
            ("5.mbit", "does not start with a number"),
            ("1.2.3mbit", "does not start with a number"),
            ("1e6kbit", "unknown unit \"e6kbit\""),
            ("20mb", "unknown unit \"mb\""),
            ("20MB/s", "unknown unit \"MB/s\""),
            ("20bit", "unknown unit"),
            ("20 mbit/s", "unknown unit"),
            ("20mbitx", "unknown unit"),
            ("1.0000000001gbit", "more than 9 digits"),
            ("１mbit", "does not start with a number"),
        ] {
            let e = parse_rate(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(e.contains("kbit, mbit, gbit") && e.contains("KiB/s, MiB/s"), "{text:?}: {e}");
        }
    }

    #[test]
    fn overflow_is_refused() {
        // u64::MAX bytes/s is 147573952589676412.92 kbit.
        assert_eq!(parse_rate("18446744073709551615KiB/s").map_err(|e| e.contains("too large")), Err(true));
        assert_eq!(parse_rate("147573952589676412.92kbit"), Ok(u64::MAX));
        assert_eq!(parse_rate("147573952589676412.927kbit"), Ok(u64::MAX), "rounded down");
        assert!(parse_rate("147573952589676412.928kbit").unwrap_err().contains("too large"));
        assert!(parse_rate("147573952589676413kbit").unwrap_err().contains("too large"));
        let digits = "9".repeat(60);
        assert!(parse_rate(&format!("{digits}gbit")).unwrap_err().contains("too large"));
        assert!(parse_rate(&format!("1.{}gbit", "9".repeat(9))).is_ok());
    }

    #[test]
    fn formatted_rates_read_back() {
        for (bytes, text) in [
            (2_500_000, "20mbit"),
            (125_000_000, "1gbit"),
            (62_500, "500kbit"),
            (10_240, "10KiB/s"),
            (2 << 20, "2MiB/s"),
            (187_500, "1.5mbit"),
            (187_500_000, "1.5gbit"),
            (1_024_000, "8.192mbit"),
            (1 << 20, "1MiB/s"),
            (125_000_125, "1000.001mbit"),
            (1, "0.008kbit"),
            (100, "0.8kbit"),
            (137, "1.096kbit"),
            (u64::MAX, "147573952589676412.92kbit"),
        ] {
            assert_eq!(format_rate(bytes), text);
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
        for bytes in (1..5000).chain([1023, 1025, 999_999, 1 << 40, u64::MAX - 1]) {
            assert_eq!(parse_rate(&format_rate(bytes)), Ok(bytes), "{bytes}");
        }
    }
}
