//! HTTP CONNECT response heads, whole and fed in pieces: never a panic,
//! never more consumed than given.
#![no_main]
use egressd::upstream::{HttpConnect, Progress};
use egressd::wire::Parse;
use egressd::wire::http;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Done(status, n)) = http::parse_response_head(data) {
        assert!((200..300).contains(&status));
        assert!(n <= data.len());
    }
    let Some((&step, rest)) = data.split_first() else { return };
    let mut h = HttpConnect::new("203.0.113.10:80".parse().unwrap(), None);
    let n = h.transmit().len();
    h.sent(n);
    for chunk in rest.chunks(usize::from(step) + 1) {
        match h.on_input(chunk) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => {
                assert!(consumed <= chunk.len());
                return;
            }
            Err(_) => return,
        }
    }
});
