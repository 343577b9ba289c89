//! The HTTP CONNECT handshake (`upstream::http`) fed a hostile proxy's
//! bytes split anywhere. Never panics, never reports more consumed than it
//! was given, and the outcome does not depend on the split: connected at the
//! same byte of the stream, failed with the same error, or still waiting,
//! exactly as when the whole stream comes in one read.
//!
//! Input: a control byte (auth; a scale for the chunk lengths), a count `k`
//! (0..=15), `k` chunk lengths (used in turn; none: one read), then the
//! proxy's bytes. Seeds longer than the 8 KiB head limit let the fuzzer
//! cross it with the head split.
#![no_main]
use egressd::config::Credentials;
use egressd::upstream::{HandshakeError, HttpConnect, Progress};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum End {
    Open,
    Connected { at: usize },
    Failed(HandshakeError),
}

fn run(auth: bool, stream: &[u8], mut lens: impl FnMut() -> usize) -> End {
    let c = Credentials { username: "u".into(), password: "p".into() };
    let mut h = HttpConnect::new("203.0.113.10:80".parse().unwrap(), auth.then_some(&c));
    let n = h.transmit().len();
    h.sent(n);
    let mut pos = 0;
    while pos < stream.len() {
        let len = lens().clamp(1, stream.len() - pos);
        let chunk = &stream[pos..pos + len];
        match h.on_input(chunk) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => {
                assert!(consumed <= chunk.len(), "consumed {consumed} of a read of {}", chunk.len());
                // Bytes after the head are the tunnel's: a second head is not read.
                assert_eq!(h.on_input(b"x"), Err(HandshakeError::Unexpected));
                return End::Connected { at: pos + consumed };
            }
            Err(e) => return End::Failed(e),
        }
        pos += len;
    }
    End::Open
}

fuzz_target!(|data: &[u8]| {
    let [ctl, k, rest @ ..] = data else { return };
    let k = usize::from(k % 16).min(rest.len());
    let (lens, stream) = rest.split_at(k);
    let auth = ctl & 1 == 1;
    let scale = 1usize << ((ctl >> 1) % 6);
    let whole = run(auth, stream, || usize::MAX);
    let mut i = 0;
    let split = run(auth, stream, || {
        let l = lens.get(i % lens.len().max(1)).map_or(usize::MAX, |&b| (usize::from(b) + 1) * scale);
        i += 1;
        l
    });
    assert_eq!(split, whole, "the outcome depends on the split");
    if let End::Connected { at } = whole {
        assert!(at <= egressd::wire::http::MAX_HEAD);
    }
});
