//! Rates as the config writes them: `config::rate::parse_rate` on any text
//! never panics, never gives 0, and what it accepts `format_rate` writes
//! back in a form that reads to the same value; `format_rate` of any
//! non-zero rate (the input's first 8 bytes) reads back to that rate.
//! Quota sizes (`config::size::parse_size`) share the number reader: never
//! a panic, never 0.
#![no_main]
use egressd::config::rate::{format_rate, parse_rate};
use egressd::config::size::parse_size;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<8>() {
        let bytes = u64::from_le_bytes(*head);
        if bytes > 0 {
            let text = format_rate(bytes);
            assert_eq!(parse_rate(&text), Ok(bytes), "{text}");
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(bytes) = parse_size(text) {
        assert!(bytes > 0, "{text:?} parsed to 0 bytes");
    }
    match parse_rate(text) {
        Ok(bytes) => {
            assert!(bytes > 0, "{text:?} parsed to 0");
            let again = format_rate(bytes);
            assert_eq!(parse_rate(&again), Ok(bytes), "{text:?} -> {again}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
