//! The SOCKS5 CONNECT state machine fed arbitrary server bytes in arbitrary
//! chunks: it never panics and never reports consuming more than it got.
#![no_main]
use egressd::config::Credentials;
use egressd::upstream::{Progress, Socks5Handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let with_auth = ctl & 1 == 1;
    let creds = Credentials { username: "u".into(), password: "p".into() };
    let auth = with_auth.then_some(&creds);
    let mut h = Socks5Handshake::connect("203.0.113.10:80".parse().unwrap(), with_auth);
    // Chunk sizes come from the control byte's high bits (1..=16).
    let step = usize::from(ctl >> 4) + 1;
    for chunk in rest.chunks(step) {
        let out = h.transmit().len();
        h.sent(out);
        match h.on_input(chunk, auth) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => {
                assert!(consumed <= chunk.len());
                return;
            }
            Err(_) => return,
        }
    }
});
