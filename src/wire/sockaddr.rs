//! Kernel `sockaddr_in` / `sockaddr_in6` bytes → `SocketAddr`.
//!
//! Offsets and sizes come from libc's struct definitions, never from magic
//! numbers. The bytes are read, never cast to a struct, so an unaligned or
//! short buffer is simply an error.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{sockaddr_in, sockaddr_in6};

/// Parses a socket address of family AF_INET or AF_INET6; `None` for any
/// other family or a buffer too short for its family.
pub fn parse(b: &[u8]) -> Option<SocketAddr> {
    let fam = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    match i32::from(fam) {
        libc::AF_INET if b.len() >= size_of::<sockaddr_in>() => {
            let p = offset_of!(sockaddr_in, sin_port);
            let a = offset_of!(sockaddr_in, sin_addr);
            let port = u16::from_be_bytes([b[p], b[p + 1]]);
            let ip = Ipv4Addr::new(b[a], b[a + 1], b[a + 2], b[a + 3]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if b.len() >= size_of::<sockaddr_in6>() => {
            let p = offset_of!(sockaddr_in6, sin6_port);
            let a = offset_of!(sockaddr_in6, sin6_addr);
            let f = offset_of!(sockaddr_in6, sin6_flowinfo);
            let s = offset_of!(sockaddr_in6, sin6_scope_id);
            let port = u16::from_be_bytes([b[p], b[p + 1]]);
            let octets: [u8; 16] = b[a..a + 16].try_into().ok()?;
            let flow = u32::from_ne_bytes(b[f..f + 4].try_into().ok()?);
            let scope = u32::from_ne_bytes(b[s..s + 4].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, u32::from_be(flow), scope)))
        }
        _ => None,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.8.0.10`, from a dual-stack
/// socket or a relay) as the plain IPv4 address it stands for.
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_bytes(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<sockaddr_in>()];
        b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    #[test]
    fn v4_and_v6() {
        assert_eq!(parse(&v4_bytes([203, 0, 113, 10], 53)), Some("203.0.113.10:53".parse().unwrap()));
        let mut b = vec![0u8; size_of::<sockaddr_in6>()];
        b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&443u16.to_be_bytes());
        b[8..24].copy_from_slice(&"2001:db8:203::10".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse(&b), Some("[2001:db8:203::10]:443".parse().unwrap()));
    }

    #[test]
    fn short_or_foreign_is_none() {
        let b = v4_bytes([1, 2, 3, 4], 5);
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut]), None, "cut {cut}");
        }
        let mut unix = b.clone();
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse(&unix), None);
        let mut v6_short = vec![0u8; 20];
        v6_short[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(parse(&v6_short), None);
    }
}
