//! Source-CIDR route table: which tunnel a client's source address uses.
//!
//! Pure: no sockets, no clock. Longest prefix wins; IPv4 and IPv6 are kept
//! apart. A lookup probes one hash map per distinct prefix length present,
//! longest first, so its cost is bounded by the number of lengths in use
//! (a handful in practice), not by the number of routes.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Reserved IPv4 ranges (the article's list): this network, private,
/// loopback, link-local, multicast, future use. Never the internet: `rules`
/// leaves them alone (port 53 aside), and a resolver there is not public.
pub const RESERVED_V4: [&str; 8] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Reserved IPv6 ranges: loopback, unique local, link-local, multicast.
pub const RESERVED_V6: [&str; 4] = ["::1/128", "fc00::/7", "fe80::/10", "ff00::/8"];

/// Whether `ip` is in [`RESERVED_V4`] / [`RESERVED_V6`] (IPv4-mapped IPv6
/// addresses are judged as IPv4; `::` counts as reserved). Bit tests only,
/// cheap enough for every DNS datagram.
pub fn is_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [a0, a1, ..] = a.octets();
            a0 == 0
                || a0 == 10
                || a0 == 127
                || (a0 == 169 && a1 == 254)
                || (a0 == 172 && (a1 & 0xf0) == 16)
                || (a0 == 192 && a1 == 168)
                || a0 >= 224
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_reserved(IpAddr::V4(v4));
            }
            let s0 = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || (s0 & 0xff00) == 0xff00
        }
    }
}

/// An address prefix, `10.8.0.0/24` or `fd08::/64`. A bare address means a
/// host route (/32 or /128). Host bits are cleared on parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix string did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    BadAddress,
    BadLength,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::BadAddress => "not an IP address (expected e.g. 10.8.0.0/24 or fd08::/64)",
            CidrError::BadLength => "prefix length out of range (0-32 for IPv4, 0-128 for IPv6)",
        })
    }
}

impl Cidr {
    /// A prefix of `len` bits of `addr`; host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::BadLength);
        }
        Ok(Cidr { addr: mask(addr, len), len })
    }

    pub fn host(addr: IpAddr) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        match s.split_once('/') {
            None => s.parse().map(Cidr::host).map_err(|_| CidrError::BadAddress),
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| CidrError::BadAddress)?;
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadLength);
                }
                let len: u8 = l.parse().map_err(|_| CidrError::BadLength)?;
                Cidr::new(addr, len)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(a), len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), len))),
    }
}

fn mask_v4(a: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { a & (u32::MAX << (32 - u32::from(len))) }
}

fn mask_v6(a: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { a & (u128::MAX << (128 - u32::from(len))) }
}

/// Longest-prefix-match table from source prefixes to values (tunnel ids).
#[derive(Clone, Debug)]
pub struct RouteTable<T> {
    /// (prefix length, masked address → value), longest length first.
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { v4: Vec::new(), v6: Vec::new() }
    }
}

impl<T: Copy> RouteTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a route; returns the value it replaced for the same prefix.
    pub fn insert(&mut self, cidr: Cidr, value: T) -> Option<T> {
        match cidr.addr {
            IpAddr::V4(a) => level(&mut self.v4, cidr.len).insert(u32::from(a), value),
            IpAddr::V6(a) => level(&mut self.v6, cidr.len).insert(u128::from(a), value),
        }
    }

    /// Removes the route for exactly this prefix.
    pub fn remove(&mut self, cidr: Cidr) -> Option<T> {
        match cidr.addr {
            IpAddr::V4(a) => remove_at(&mut self.v4, cidr.len, u32::from(a)),
            IpAddr::V6(a) => remove_at(&mut self.v6, cidr.len, u128::from(a)),
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        self.lookup_route(ip).map(|(_, v)| v)
    }

    /// The longest prefix containing `ip`, and its value.
    pub fn lookup_route(&self, ip: IpAddr) -> Option<(Cidr, T)> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| {
                    let k = mask_v4(a, *len);
                    m.get(&k).map(|v| (Cidr { addr: IpAddr::V4(Ipv4Addr::from(k)), len: *len }, *v))
                })
            }
            IpAddr::V6(a) => {
                // An IPv4-mapped client (dual-stack socket) is routed as IPv4.
                if let Some(v4) = a.to_ipv4_mapped() {
                    return self.lookup_route(IpAddr::V4(v4));
                }
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| {
                    let k = mask_v6(a, *len);
                    m.get(&k).map(|v| (Cidr { addr: IpAddr::V6(Ipv6Addr::from(k)), len: *len }, *v))
                })
            }
        }
    }

    /// Every route, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (Cidr, T)> + '_ {
        let v4 = self.v4.iter().flat_map(|(len, m)| {
            m.iter().map(move |(a, v)| (Cidr { addr: IpAddr::V4(Ipv4Addr::from(*a)), len: *len }, *v))
        });
        let v6 = self.v6.iter().flat_map(|(len, m)| {
            m.iter().map(move |(a, v)| (Cidr { addr: IpAddr::V6(Ipv6Addr::from(*a)), len: *len }, *v))
        });
        v4.chain(v6)
    }

    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn level<K, T>(levels: &mut Vec<(u8, HashMap<K, T>)>, len: u8) -> &mut HashMap<K, T> {
    let i = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::new()));
            i
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    &mut levels[i].1
}

fn remove_at<K: std::hash::Hash + Eq, T>(
    levels: &mut Vec<(u8, HashMap<K, T>)>,
    len: u8,
    key: K,
) -> Option<T> {
    let i = levels.iter().position(|(l, _)| *l == len)?;
    let v = levels[i].1.remove(&key);
    if levels[i].1.is_empty() {
        levels.remove(i);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn is_reserved_agrees_with_the_reserved_prefixes() {
        let prefixes: Vec<Cidr> = RESERVED_V4.iter().chain(&RESERVED_V6).map(|s| c(s)).collect();
        let probes = [
            "0.1.2.3",
            "9.255.255.255",
            "10.0.0.1",
            "11.0.0.1",
            "126.9.9.9",
            "127.0.0.11",
            "128.0.0.1",
            "169.254.1.1",
            "169.255.0.1",
            "172.15.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "172.32.0.1",
            "192.167.1.1",
            "192.168.1.1",
            "192.169.0.1",
            "192.0.2.53",
            "198.51.100.1",
            "203.0.113.10",
            "100.64.0.2",
            "223.255.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "1.1.1.1",
            "::1",
            "::2",
            "fc00::1",
            "fd08::1",
            "fe00::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ];
        for p in probes {
            let want = prefixes.iter().any(|r| r.contains(ip(p)));
            assert_eq!(is_reserved(ip(p)), want, "{p}");
        }
        assert!(is_reserved(ip("::ffff:192.168.1.1")));
        assert!(!is_reserved(ip("::ffff:1.1.1.1")));
        assert!(is_reserved(ip("::")));
    }

    #[test]
    fn parses_bare_addresses_as_host_routes() {
        assert_eq!(c("10.8.0.10"), Cidr::new(ip("10.8.0.10"), 32).unwrap());
        assert_eq!(c("fd08::10").len(), 128);
    }

    #[test]
    fn clears_host_bits_and_rejects_bad_input() {
        assert_eq!(c("10.8.0.77/24").to_string(), "10.8.0.0/24");
        assert_eq!(c("fd08::1/64").to_string(), "fd08::/64");
        assert_eq!("10.8.0.0/33".parse::<Cidr>(), Err(CidrError::BadLength));
        assert_eq!("fd08::/129".parse::<Cidr>(), Err(CidrError::BadLength));
        assert_eq!("10.8.0.0/".parse::<Cidr>(), Err(CidrError::BadLength));
        assert_eq!("10.8.0.0/+8".parse::<Cidr>(), Err(CidrError::BadLength));
        assert_eq!("10.8.0/24".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!("".parse::<Cidr>(), Err(CidrError::BadAddress));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::new();
        t.insert(c("0.0.0.0/0"), 0);
        t.insert(c("10.8.0.0/24"), 1);
        t.insert(c("10.8.0.10/32"), 2);
        t.insert(c("10.8.0.0/25"), 3);
        assert_eq!(t.lookup(ip("10.8.0.10")), Some(2));
        assert_eq!(t.lookup(ip("10.8.0.11")), Some(3));
        assert_eq!(t.lookup(ip("10.8.0.200")), Some(1));
        assert_eq!(t.lookup_route(ip("10.8.0.11")), Some((c("10.8.0.0/25"), 3)));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(0));
        assert_eq!(t.lookup(ip("fd08::1")), None, "IPv4 /0 must not match IPv6");
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let mut t = RouteTable::new();
        t.insert(c("fd08::/64"), 1);
        t.insert(c("fd08::10"), 2);
        t.insert(c("::/0"), 0);
        t.insert(c("10.8.0.10"), 4);
        assert_eq!(t.lookup(ip("fd08::10")), Some(2));
        assert_eq!(t.lookup(ip("fd08::11")), Some(1));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(0));
        assert_eq!(t.lookup(ip("::ffff:10.8.0.10")), Some(4));
        assert_eq!(t.lookup(ip("10.8.0.11")), None);
    }

    #[test]
    fn insert_replace_remove() {
        let mut t = RouteTable::new();
        assert_eq!(t.insert(c("10.8.0.0/24"), 1), None);
        assert_eq!(t.insert(c("10.8.0.0/24"), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(c("10.8.0.0/25")), None);
        assert_eq!(t.remove(c("10.8.0.0/24")), Some(2));
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.8.0.1")), None);
    }

    #[test]
    fn matches_a_linear_reference_on_many_lookups() {
        // Deterministic pseudo-random routes and probes, checked against a
        // plain scan for the longest containing prefix.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = RouteTable::new();
        let mut list = Vec::new();
        for i in 0..200u32 {
            let a = Ipv4Addr::from(0x0a08_0000 | (next() as u32 & 0xffff));
            let cidr = Cidr::new(IpAddr::V4(a), 16 + (next() % 17) as u8).unwrap();
            t.insert(cidr, i);
            list.retain(|(c2, _)| *c2 != cidr);
            list.push((cidr, i));
        }
        for _ in 0..5000 {
            let probe = IpAddr::V4(Ipv4Addr::from(0x0a08_0000 | (next() as u32 & 0xffff)));
            let want = list
                .iter()
                .filter(|(c2, _)| c2.contains(probe))
                .max_by_key(|(c2, _)| c2.len())
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(probe), want, "probe {probe}");
        }
    }
}
