//! The UDP session table driven by a byte-encoded operation sequence, with
//! a small in-line model: it never panics, stays within `max_sessions` and
//! `max_per_source`, reports the model's next deadline, expires only
//! sessions past their timeout, and evicts the least recently used session
//! of the source holding the most (or, at a source's own limit, its own).
//!
//! Input: three setup bytes (max_sessions and max_per_source, idle and DNS
//! timeouts), then pairs (op, arg).
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egressd::udp::{FoldState, Insert, Kind, Limits, SessionTable};
use libfuzzer_sys::fuzz_target;

struct Model {
    /// Use order: (client, value, last, kind); front is least recently used.
    s: Vec<(SocketAddr, u32, Instant, Kind)>,
    limits: Limits,
}

impl Model {
    fn deadline(&self, e: &(SocketAddr, u32, Instant, Kind)) -> Instant {
        e.2 + if e.3 == Kind::DnsOnly { self.limits.dns_idle_timeout } else { self.limits.idle_timeout }
    }

    fn min_deadline(&self) -> Option<Instant> {
        self.s.iter().map(|e| self.deadline(e)).min()
    }

    fn count(&self, ip: std::net::IpAddr) -> usize {
        self.s.iter().filter(|e| e.0.ip() == ip).count()
    }

    fn take(&mut self, a: &SocketAddr) -> Option<(SocketAddr, u32, Instant, Kind)> {
        let p = self.s.iter().position(|e| e.0 == *a)?;
        Some(self.s.remove(p))
    }
}

fn client(arg: u8) -> SocketAddr {
    let port = 40000 + u16::from(arg & 15);
    if arg & 16 == 0 {
        SocketAddr::from(([10, 8, 0, 10], port))
    } else {
        SocketAddr::from(([0xfd08, 0, 0, 0, 0, 0, 0, 10], port))
    }
}

fuzz_target!(|data: &[u8]| {
    let [m, idle, dns, ops @ ..] = data else { return };
    let limits = Limits {
        max_sessions: usize::from(m % 16),
        idle_timeout: Duration::from_secs(u64::from(idle % 64)),
        dns_idle_timeout: Duration::from_secs(u64::from(dns % 64)),
        max_per_source: if m >> 4 == 0 { usize::MAX } else { usize::from(m >> 4) },
        new_per_source_per_sec: u32::MAX,
        new_per_source_burst: u32::MAX,
    };
    let mut t = SessionTable::with_hasher(limits, FoldState::with_seeds(1, 2));
    let max = t.limits().max_sessions;
    let mut model = Model { s: Vec::new(), limits: *t.limits() };
    let mut now = Instant::now();
    let mut value = 0u32;
    for pair in ops.chunks_exact(2) {
        let (op, arg) = (pair[0], pair[1]);
        let a = client(arg);
        let port = if arg & 32 == 0 { 53 } else { 443 };
        match op % 8 {
            0 | 1 if op % 8 == 1 || t.get(&a).is_none() => {
                value += 1;
                let kind = if port == 53 { Kind::DnsOnly } else { Kind::Ordinary };
                let gone = match t.insert(a, port, value, now) {
                    Insert::Added => None,
                    Insert::Replaced(v) => {
                        assert_eq!(model.take(&a).map(|e| e.1), Some(v));
                        None
                    }
                    Insert::SourceFull(k, v) => {
                        assert!(model.count(a.ip()) >= model.limits.max_per_source && k.ip() == a.ip());
                        let p = model.s.iter().position(|e| e.0 == k).unwrap();
                        assert_eq!(model.s[p].1, v);
                        assert_eq!(Some(p), model.s.iter().position(|e| e.0.ip() == a.ip()));
                        model.s.remove(p);
                        None
                    }
                    Insert::Expired(k, v) => Some((k, v, true)),
                    Insert::Evicted(k, v) => Some((k, v, false)),
                };
                if let Some((k, v, expired)) = gone {
                    assert!(model.s.len() >= max);
                    let d = model.min_deadline().filter(|&d| d <= now);
                    let p = model.s.iter().position(|e| e.0 == k).unwrap();
                    assert_eq!(model.s[p].1, v);
                    if expired {
                        assert_eq!(Some(model.deadline(&model.s[p])), d);
                    } else {
                        // The oldest session of a source holding the most.
                        let heaviest = model.s.iter().map(|e| model.count(e.0.ip())).max();
                        assert!(d.is_none() && Some(model.count(k.ip())) == heaviest);
                        assert_eq!(Some(p), model.s.iter().position(|e| e.0.ip() == k.ip()));
                    }
                    model.s.remove(p);
                }
                model.s.push((a, value, now, kind));
            }
            0 | 2 => {
                let got =
                    if op % 8 == 0 { t.touch_outbound(&a, port, now) } else { t.touch_inbound(&a, now) };
                let got = got.copied();
                match model.take(&a) {
                    Some(mut e) => {
                        assert_eq!(got, Some(e.1));
                        e.2 = now;
                        if op % 8 == 0 && port != 53 {
                            e.3 = Kind::Ordinary;
                        }
                        model.s.push(e);
                    }
                    None => assert_eq!(got, None),
                }
            }
            3 => assert_eq!(t.remove(&a), model.take(&a).map(|e| e.1)),
            4 => now += Duration::from_millis(u64::from(arg) * 250),
            _ => {
                if op % 8 == 7
                    && let Some(d) = t.next_deadline()
                {
                    now = now.max(d);
                }
                while let Some((k, v)) = t.pop_expired(now) {
                    let e = model.take(&k).unwrap();
                    assert_eq!(e.1, v);
                    assert!(model.deadline(&e) <= now);
                }
                assert!(model.min_deadline().is_none_or(|d| d > now));
            }
        }
        assert!(t.len() <= max);
        assert_eq!(t.len(), model.s.len());
        assert_eq!(t.next_deadline(), model.min_deadline());
    }
    for e in &model.s {
        assert_eq!(t.get(&e.0), Some(&e.1));
    }
});
