//! The upgrade handover records: `upgrade::wire::decode` on any bytes never
//! panics, what it accepts `encode` writes back to the same message, and
//! the counts a State or Spent carries can be taken into a registry and
//! summed (another process's numbers, however large) without a panic.
#![no_main]
use egressd::stats::Registry;
use egressd::upgrade::wire::{Msg, VERSION, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data, VERSION) {
        assert_eq!(decode(&encode(VERSION, &m), VERSION).as_ref(), Ok(&m));
        if let Msg::State(s) = &m {
            let r = Registry::default();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
            // Twice: a State, then a Spent of the same sizes.
            r.carry(&s.counts.counted(), until);
            r.carry(&s.counts.counted(), until);
            let _ = (r.total(), r.per_tunnel(), r.per_source());
        }
    }
});
