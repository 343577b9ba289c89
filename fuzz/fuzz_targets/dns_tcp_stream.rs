//! The DNS-over-TCP stream as the worker drives it (`udp::dns_tcp`):
//! queries framed out under a size cap and a queue cap, written in pieces,
//! then whatever bytes a hostile resolver sends back, split anywhere,
//! interleaved with more queries and with the clock moving past answer
//! timeouts. Never panics; every answer goes to a client that asked, with
//! that client's own ID; strays and a broken stream are values; the queue
//! and the queries in flight stay within their caps; `cost` is exactly what
//! the stream holds; the buffer never holds more than was fed.
//!
//! Input: two setup bytes (the size cap and the queue cap), then ops.
#![no_main]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egressd::udp::dns_tcp::{Caps, DnsStream, Expiry, MAX_INFLIGHT, Next, QUERY_OVERHEAD};
use egressd::wire::dns;
use libfuzzer_sys::fuzz_target;

const TIMEOUT: Duration = Duration::from_secs(5);

fuzz_target!(|data: &[u8]| {
    let [a, b, data @ ..] = data else { return };
    let max_query = dns::HEADER_LEN + usize::from(*a) * 4;
    let caps = Caps { max_query, max_queued: max_query + dns::PREFIX_LEN + usize::from(*b) * 16 };
    let mut now = Instant::now();
    let mut s = DnsStream::new(now);
    // What the "server" has been sent (written out of the stream).
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
        match op % 6 {
            // A query: ID from the next two bytes, a tail of op/6 × 8 bytes.
            0 => {
                let id = u16::from_be_bytes([*data.get(i).unwrap_or(&0), *data.get(i + 1).unwrap_or(&0)]);
                i += 2;
                let mut q = id.to_be_bytes().to_vec();
                q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                q.extend(std::iter::repeat_n(op, usize::from(op / 6) * 8));
                let client = SocketAddr::from(([10, 8, 0, 10], port));
                port = port.wrapping_add(1).max(1);
                let before = s.cost();
                match s.query(client, &q, now, caps) {
                    Ok(()) => {
                        assert!(q.len() <= caps.max_query);
                        assert_eq!(s.cost(), before + DnsStream::cost_of(q.len()));
                        asked.insert(client, id);
                    }
                    Err(_) => assert_eq!(s.cost(), before, "a refused query holds nothing"),
                }
                assert!(s.inflight.len() <= MAX_INFLIGHT);
                assert!(s.unwritten().len() <= caps.max_queued);
            }
            // The server reads op/6 × 4 bytes of what is queued.
            1 => {
                let n = (usize::from(op / 6) * 4).min(s.unwritten().len());
                sent.extend_from_slice(&s.unwritten()[..n]);
                s.wrote(n);
            }
            // Raw bytes from the "server": the next op/6 bytes of the input.
            2 => {
                let n = usize::from(op / 6).min(data.len() - i);
                s.feed(&data[i..i + n], now);
                fed += n;
                i += n;
            }
            // A well-formed answer to the oldest query the server was sent
            // (QR set), cut at op/6 bytes: the rest comes with the next one.
            3 => {
                if let Ok(egressd::wire::Parse::Done(msg, n)) = dns::parse_frame(&sent) {
                    let mut a = sent[..n].to_vec();
                    if msg.len() > 2 {
                        a[4] |= 0x80;
                    }
                    sent.drain(..n);
                    let cut = usize::from(op / 6).min(a.len());
                    s.feed(&a[..cut], now);
                    s.feed(&a[cut..], now);
                    fed += a.len();
                }
            }
            // Time passes (op/6 × 250 ms) and the answer timeout runs.
            4 => {
                now += Duration::from_millis(u64::from(op / 6) * 250);
                let in_flight = s.inflight.len();
                match s.expire(now, TIMEOUT) {
                    Expiry::Keep { late, next } => {
                        assert_eq!(s.inflight.len() + late, in_flight);
                        assert!(next.is_none_or(|t| t > now));
                        // Queries in flight always have a deadline; with none
                        // left, a deadline remains only to judge again a
                        // server that let queries go late (late_unheard).
                        assert!(s.inflight.is_empty() || next.is_some());
                    }
                    Expiry::Stalled { late, lost } => {
                        // `late` may be 0: queries that went late at an
                        // earlier expiry, judged once the server had been
                        // silent the whole timeout.
                        assert_eq!(late + lost, in_flight);
                        assert!(s.inflight.is_empty());
                    }
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
        assert_eq!(s.cost(), s.unwritten().len() + s.inflight.len() * QUERY_OVERHEAD + s.buffered());
    }
});
