//! Every shape of the SOCKS5 handshake (CONNECT and UDP ASSOCIATE, with
//! and without auth, pipelined, a pool's greeting, a pooled request) fed a
//! hostile server's bytes split anywhere. Never panics, never reports more
//! consumed than it was given, and the outcome does not depend on the
//! split: the same end (open, connected at the same byte of the stream with
//! the same bound address, or failed with the same error) and the same bytes
//! sent as when the server's bytes come one at a time — except that a read
//! holding bytes past the end of a message the handshake has yet to answer
//! (bytes out of turn) fails as `Unexpected`, and exactly then.
//!
//! Input: a control byte (shape, auth), a count `k` (0..=7), `k` chunk
//! lengths (1..=256, used in turn; none: the whole stream in one read),
//! then the server's bytes.
#![no_main]
use std::net::SocketAddr;

use egressd::config::Credentials;
use egressd::upstream::{HandshakeError, Progress, Socks5Handshake};
use egressd::wire::socks5::{self, Bound};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// All bytes taken, the handshake waits for more.
    Open,
    Connected {
        at: usize,
        bound: Option<Bound>,
    },
    Failed(HandshakeError),
}

struct Run {
    end: End,
    /// Everything the handshake gave to send, in order.
    sent: Vec<u8>,
    /// Stream offsets after which the handshake had a message to send
    /// (the server may only go on once it has it).
    boundaries: Vec<usize>,
    /// A read spanned one of the given boundaries.
    straddled: bool,
}

fn creds() -> Credentials {
    Credentials { username: "u".into(), password: "p".into() }
}

fn make(ctl: u8, auth: Option<&Credentials>) -> Socks5Handshake {
    let target: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let zero: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let with_auth = auth.is_some();
    match ctl % 6 {
        0 => Socks5Handshake::connect(target, with_auth),
        1 => Socks5Handshake::associate(zero, with_auth),
        2 => Socks5Handshake::pipelined(socks5::CMD_CONNECT, target, auth),
        3 => Socks5Handshake::pipelined(socks5::CMD_UDP_ASSOCIATE, zero, auth),
        4 => Socks5Handshake::greet(with_auth),
        _ => Socks5Handshake::request(socks5::CMD_CONNECT, target),
    }
}

fn drain(h: &mut Socks5Handshake, sent: &mut Vec<u8>) {
    let n = h.transmit().len();
    sent.extend_from_slice(h.transmit());
    h.sent(n);
    assert!(h.transmit().is_empty());
}

/// Feeds `stream` in reads of `lens` bytes (in turn), sending all the
/// handshake holds before each read, as the worker does.
fn run(ctl: u8, stream: &[u8], mut lens: impl FnMut() -> usize, boundaries: &[usize]) -> Run {
    let c = creds();
    let auth = (ctl & 0x80 != 0 && ctl % 6 != 5).then_some(&c);
    let mut h = make(ctl, auth);
    let mut r = Run { end: End::Open, sent: Vec::new(), boundaries: Vec::new(), straddled: false };
    let mut pos = 0;
    while pos < stream.len() {
        let len = lens().clamp(1, stream.len() - pos);
        let chunk = &stream[pos..pos + len];
        drain(&mut h, &mut r.sent);
        let _ = (h.request_out(), h.greeted());
        r.straddled |= boundaries.iter().any(|&b| pos < b && b < pos + len);
        match h.on_input(chunk, auth) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => {
                assert!(consumed <= chunk.len(), "consumed {consumed} of a read of {}", chunk.len());
                r.end = End::Connected { at: pos + consumed, bound: h.bound() };
                break;
            }
            Err(e) => {
                assert_ne!(e, HandshakeError::Closed, "a read of {len} bytes is not a close");
                r.end = End::Failed(e);
                break;
            }
        }
        pos += len;
        if !h.transmit().is_empty() {
            r.boundaries.push(pos);
        }
    }
    drain(&mut h, &mut r.sent);
    r
}

fuzz_target!(|data: &[u8]| {
    let [ctl, k, rest @ ..] = data else { return };
    let k = usize::from(k % 8).min(rest.len());
    let (lens, stream) = rest.split_at(k);
    // The server's bytes one at a time: no read spans a message boundary.
    let one = run(*ctl, stream, || 1, &[]);
    let mut i = 0;
    let split = run(
        *ctl,
        stream,
        || {
            let l = lens.get(i % lens.len().max(1)).map_or(usize::MAX, |&b| usize::from(b) + 1);
            i += 1;
            l
        },
        &one.boundaries,
    );
    if split.straddled {
        assert_eq!(split.end, End::Failed(HandshakeError::Unexpected), "bytes out of turn must fail");
    } else {
        assert_eq!(split.end, one.end, "the outcome depends on the split");
        assert_eq!(split.sent, one.sent, "what is sent depends on the split");
    }
    // Stopped early or not, it sent what the handshake sends, in order.
    assert!(one.sent.starts_with(&split.sent), "sent bytes no handshake sends");
});
