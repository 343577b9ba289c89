//! The upgrade handover records: `upgrade::wire::decode` on any bytes never
//! panics, and what it accepts `encode` writes back to the same message.
#![no_main]
use egressd::upgrade::wire::{VERSION, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data, VERSION) {
        assert_eq!(decode(&encode(VERSION, &m), VERSION).as_ref(), Ok(&m));
    }
});
