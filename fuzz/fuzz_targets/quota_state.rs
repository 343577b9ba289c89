//! The quota state file: `quota::state::parse` on any text never panics,
//! and what it accepts `encode` writes back in a form that parses to the
//! same state (and encodes to the same text again).
#![no_main]
use egressd::quota::state::{encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
        Ok(state) => {
            let again = encode(&state);
            assert_eq!(parse(&again).as_ref(), Ok(&state), "{text:?} -> {again:?}");
            assert_eq!(encode(&parse(&again).unwrap()), again);
        }
        Err(e) => assert!(e.line >= 1 && !e.to_string().is_empty()),
    }
});
