//! SOCKS5 UDP headers from a relay: parse never panics; a parsed header
//! re-encodes to the same bytes.
#![no_main]
use egressd::wire::socks5;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((addr, off)) = socks5::parse_udp_header(data) {
        assert!(off <= data.len());
        let mut h = [0u8; socks5::UDP_HEADER_MAX];
        let n = socks5::encode_udp_header(addr, &mut h);
        assert_eq!(&h[..n], &data[..off]);
    }
});
