//! The control-message walker and the sockaddr parser on arbitrary bytes:
//! never a panic, and a found address is always of a real family.
#![no_main]
use egressd::wire::{cmsg, sockaddr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cmsg::orig_dst_from_cmsgs(data);
    // Also at an odd offset: the walker must not depend on alignment.
    if data.len() > 1 {
        let _ = cmsg::orig_dst_from_cmsgs(&data[1..]);
    }
    let _ = sockaddr::parse(data);
});
