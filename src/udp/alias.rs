//! Answers to DNS queries egressd sent elsewhere, and whose they are.
//!
//! A container's query to a resolver no exit can reach (a private one, the
//! host's own, Docker's embedded DNS forwarding) goes to `dns.upstream`
//! instead; its answer must reach the container from the address it asked.
//! One session can ask several such resolvers, and the upstream itself
//! directly, so the answer's source is not enough to tell whose answer it
//! is: the query's DNS ID is. A session keeps the last [`DnsAliases::MAX`]
//! redirected queries as (where it went, ID, what the client asked); an
//! answer from where one went with its ID comes from what the client asked,
//! any other answer from where it really came from (and its source is
//! checked like any reply's).
//!
//! Entries are not removed by an answer (a resolver may answer twice, and
//! a client may ask again with the same ID); the oldest makes room. Two
//! redirected queries with the same ID to the same upstream are told apart
//! by nothing: the newer wins (IDs are random, 8 in 65 536).

use std::net::SocketAddr;

use crate::wire::dns::message_id;

#[derive(Debug, Default, Clone)]
pub struct DnsAliases {
    /// (where the query went, its DNS ID, the address the client asked),
    /// oldest first.
    entries: Vec<(SocketAddr, u16, SocketAddr)>,
}

impl DnsAliases {
    /// Redirected queries remembered per session.
    pub const MAX: usize = 8;

    /// A query `payload` to `asked` went to `went` instead. A payload too
    /// short to carry an ID is not a query anyone can answer: not recorded.
    pub fn record(&mut self, went: SocketAddr, payload: &[u8], asked: SocketAddr) {
        let Some(id) = message_id(payload) else { return };
        if let Some(i) = self.entries.iter().position(|&(w, i, _)| w == went && i == id) {
            self.entries.remove(i);
        } else if self.entries.len() >= Self::MAX {
            self.entries.remove(0);
        }
        self.entries.push((went, id, asked));
    }

    /// The address an answer `payload` from `from` must come from, if it
    /// answers a redirected query.
    pub fn answer(&self, from: SocketAddr, payload: &[u8]) -> Option<SocketAddr> {
        let id = message_id(payload)?;
        self.entries.iter().rev().find(|&&(w, i, _)| w == from && i == id).map(|&(_, _, asked)| asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn q(id: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn answers_from_two_private_resolvers_keep_their_own_sources() {
        let up = a("1.1.1.1:53");
        let mut al = DnsAliases::default();
        al.record(up, &q(7), a("192.168.1.1:53"));
        al.record(up, &q(9), a("10.0.0.2:53"));
        assert_eq!(al.answer(up, &q(7)), Some(a("192.168.1.1:53")));
        assert_eq!(al.answer(up, &q(9)), Some(a("10.0.0.2:53")));
        // A resolver answering twice: the same source again.
        assert_eq!(al.answer(up, &q(7)), Some(a("192.168.1.1:53")));
    }

    #[test]
    fn a_direct_query_to_the_upstream_is_not_relabelled() {
        let up = a("1.1.1.1:53");
        let mut al = DnsAliases::default();
        al.record(up, &q(7), a("192.168.1.1:53"));
        // The client also asked 1.1.1.1 itself (ID 8): its answer is 1.1.1.1's.
        assert_eq!(al.answer(up, &q(8)), None);
        // Another remote's answer with a recorded ID is not an alias either.
        assert_eq!(al.answer(a("9.9.9.9:53"), &q(7)), None);
        // Nothing to read an ID from: no alias.
        assert_eq!(al.answer(up, &[1]), None);
    }

    #[test]
    fn bounded_oldest_first() {
        let up = a("1.1.1.1:53");
        let mut al = DnsAliases::default();
        for id in 0..(DnsAliases::MAX as u16 + 3) {
            al.record(up, &q(id), SocketAddr::new([10, 0, 0, id as u8].into(), 53));
        }
        assert_eq!(al.entries.len(), DnsAliases::MAX);
        assert_eq!(al.answer(up, &q(0)), None, "the oldest made room");
        assert_eq!(al.answer(up, &q(10)), Some(a("10.0.0.10:53")));
        // A short payload is never recorded.
        al.record(up, &[0], a("10.0.0.99:53"));
        assert_eq!(al.entries.len(), DnsAliases::MAX);
        // The same (upstream, ID) again: the newer asked address wins.
        al.record(up, &q(10), a("10.0.0.77:53"));
        assert_eq!(al.answer(up, &q(10)), Some(a("10.0.0.77:53")));
        assert_eq!(al.entries.len(), DnsAliases::MAX);
    }
}
