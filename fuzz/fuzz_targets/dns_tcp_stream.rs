//! The DNS-over-TCP stream as the worker drives it (`udp::dns_tcp`):
//! queries framed out, then whatever bytes a hostile resolver sends back,
//! split anywhere, interleaved with more queries. Never panics; every
//! answer goes to a client that asked, with that client's own ID; strays
//! and a broken stream are values; the buffer never holds more than was fed.
#![no_main]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use egressd::udp::dns_tcp::{DnsStream, MAX_INFLIGHT, Next};
use egressd::wire::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut s = DnsStream::default();
    let mut sent = Vec::new();
    // client -> the ID it asked with (each query from a port of its own)
    let mut asked: HashMap<SocketAddr, u16> = HashMap::new();
    let mut out = vec![0u8; dns::MAX_MESSAGE];
    let mut fed = 0usize;
    let mut port = 1u16;
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op % 4 {
            // A query: ID from the next two bytes, a tail of op/4 bytes.
            0 => {
                let id = u16::from_be_bytes([*data.get(i).unwrap_or(&0), *data.get(i + 1).unwrap_or(&0)]);
                i += 2;
                let mut q = id.to_be_bytes().to_vec();
                q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                q.extend(std::iter::repeat_n(op, usize::from(op / 4)));
                let client = SocketAddr::from(([10, 8, 0, 10], port));
                port = port.wrapping_add(1).max(1);
                if s.query(client, &q, now, &mut sent).is_ok() {
                    asked.insert(client, id);
                }
                assert!(s.inflight.len() <= MAX_INFLIGHT);
            }
            // Raw bytes from the "server": the next op/4 bytes of the input.
            1 => {
                let n = usize::from(op / 4).min(data.len() - i);
                s.feed(&data[i..i + n]);
                fed += n;
                i += n;
            }
            // A well-formed answer to the oldest framed query still in `sent`
            // (QR set), cut at op/4 bytes: the rest comes with the next one.
            2 => {
                if let Ok(egressd::wire::Parse::Done(msg, n)) = dns::parse_frame(&sent) {
                    let mut a = sent[..n].to_vec();
                    if msg.len() > 2 {
                        a[4] |= 0x80;
                    }
                    sent.drain(..n);
                    let cut = usize::from(op / 4).min(a.len());
                    s.feed(&a[..cut]);
                    s.feed(&a[cut..]);
                    fed += a.len();
                }
            }
            // Cut answers.
            _ => loop {
                match s.next_answer(&mut out) {
                    Next::Answer { client, len } => {
                        assert!(len >= dns::HEADER_LEN && len <= dns::MAX_MESSAGE);
                        let id = asked.get(&client).copied();
                        assert!(id.is_some(), "an answer for a client that never asked");
                        assert_eq!(dns::message_id(&out[..len]), id);
                    }
                    Next::Stray => {}
                    Next::NeedMore => break,
                    Next::Broken(_) => return,
                }
            },
        }
        assert!(s.buffered() <= fed);
    }
});
