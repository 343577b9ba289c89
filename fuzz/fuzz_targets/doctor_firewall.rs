//! Firewall dumps (iptables-save, nft list ruleset) → doctor's model and
//! packet walks: any text gives a model whose walks end, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        egressd::doctor::fuzz_firewall(text);
    }
});
