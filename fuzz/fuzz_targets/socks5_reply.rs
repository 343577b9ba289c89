//! Every SOCKS5 reply parser on arbitrary server bytes: never panics, never
//! claims more bytes than it was given.
#![no_main]
use egressd::wire::Parse;
use egressd::wire::socks5;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Done(_, n)) = socks5::parse_reply(data) {
        assert!(n <= data.len() && n >= 7);
    }
    if let Ok(Parse::Done(_, n)) = socks5::parse_addr(data) {
        assert!(n <= data.len());
    }
    if let Ok(Parse::Done(_, n)) = socks5::parse_method(data, data.first().is_some_and(|b| b & 1 == 1)) {
        assert_eq!(n, 2);
    }
    if let Ok(Parse::Done((), n)) = socks5::parse_auth_status(data) {
        assert_eq!(n, 2);
    }
});
