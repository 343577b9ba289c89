//! The original destination of a TPROXY'd datagram, from recvmsg's control
//! bytes (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR).
//!
//! The walker reads the bytes; it never builds a `&cmsghdr` into the buffer
//! (which need not be aligned). For each header it checks
//! `header <= cmsg_len <= remaining`, and steps by the kernel's alignment.
//! Sizes come from `size_of`/`offset_of!`. Truncation reported by the
//! kernel (MSG_CTRUNC) is the caller's to check, since only it sees flags.

use std::fmt;
use std::mem::{offset_of, size_of};
use std::net::SocketAddr;

use libc::cmsghdr;

/// Why no original destination came out of the control bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmsgError {
    /// A header whose length is shorter than a header or runs past the end.
    BadLength,
    /// No IP_ORIGDSTADDR / IPV6_ORIGDSTADDR message (not TPROXY'd, or the
    /// socket lacks IP_RECVORIGDSTADDR).
    Missing,
    /// The message is there but its address does not parse.
    BadAddress,
    /// The kernel truncated the control data (MSG_CTRUNC).
    Truncated,
}

impl fmt::Display for CmsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmsgError::BadLength => "malformed control message length",
            CmsgError::Missing => "no original destination in the control messages",
            CmsgError::BadAddress => "unparsable original destination address",
            CmsgError::Truncated => "control messages truncated (MSG_CTRUNC)",
        })
    }
}

const HDR: usize = size_of::<cmsghdr>();
const ALIGN: usize = size_of::<usize>();

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

fn read_int(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the control messages and returns the original destination.
pub fn orig_dst_from_cmsgs(ctrl: &[u8]) -> Result<SocketAddr, CmsgError> {
    let mut off = 0;
    // The kernel writes cmsg_len as a size_t at offset 0 whatever libc's
    // field type (musl splits it into socklen_t + padding).
    while ctrl.len() - off >= HDR {
        let len_bytes: [u8; size_of::<usize>()] = ctrl
            .get(off..off + size_of::<usize>())
            .and_then(|b| b.try_into().ok())
            .ok_or(CmsgError::BadLength)?;
        let len = usize::from_ne_bytes(len_bytes);
        if len < HDR || len > ctrl.len() - off {
            return Err(CmsgError::BadLength);
        }
        let level = read_int(ctrl, off + offset_of!(cmsghdr, cmsg_level)).ok_or(CmsgError::BadLength)?;
        let kind = read_int(ctrl, off + offset_of!(cmsghdr, cmsg_type)).ok_or(CmsgError::BadLength)?;
        // Where HDR is not a multiple of the alignment, a message may end
        // before its (aligned) data would start: empty data, or past the end.
        let data = ctrl.get(off + align(HDR)..off + len.max(align(HDR))).ok_or(CmsgError::BadLength)?;
        let want = match (level, kind) {
            (libc::SOL_IP, libc::IP_ORIGDSTADDR) => Some(libc::AF_INET),
            (libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR) => Some(libc::AF_INET6),
            _ => None,
        };
        if let Some(family) = want {
            return match super::sockaddr::parse(data) {
                Some(a) if (family == libc::AF_INET) == a.is_ipv4() => Ok(a),
                _ => Err(CmsgError::BadAddress),
            };
        }
        // The last message need not be padded to alignment.
        off = off.saturating_add(align(len)).min(ctrl.len());
    }
    Err(CmsgError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// One control message laid out by hand the way the kernel does.
    fn msg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = align(HDR) + data.len();
        let mut b = vec![0u8; align(len)];
        b[..size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
        b[offset_of!(cmsghdr, cmsg_level)..][..4].copy_from_slice(&level.to_ne_bytes());
        b[offset_of!(cmsghdr, cmsg_type)..][..4].copy_from_slice(&kind.to_ne_bytes());
        b[align(HDR)..len].copy_from_slice(data);
        b
    }

    fn sin(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<libc::sockaddr_in>()];
        b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    fn sin6(ip: &str, port: u16) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<libc::sockaddr_in6>()];
        b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[8..24].copy_from_slice(&ip.parse::<std::net::Ipv6Addr>().unwrap().octets());
        b
    }

    #[test]
    fn finds_v4_after_another_message() {
        let mut c = msg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7u8; 16]);
        c.extend(msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin([203, 0, 113, 10], 9)));
        assert_eq!(orig_dst_from_cmsgs(&c), Ok("203.0.113.10:9".parse().unwrap()));
    }

    #[test]
    fn finds_v6() {
        let c = msg(libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR, &sin6("2001:db8:203::10", 53));
        assert_eq!(orig_dst_from_cmsgs(&c), Ok("[2001:db8:203::10]:53".parse().unwrap()));
    }

    #[test]
    fn errors() {
        assert_eq!(orig_dst_from_cmsgs(&[]), Err(CmsgError::Missing));
        let other = msg(libc::SOL_IP, libc::IP_TTL, &[64, 0, 0, 0]);
        assert_eq!(orig_dst_from_cmsgs(&other), Err(CmsgError::Missing));
        // Wrong family for the level.
        let c = msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin6("2001:db8::1", 1));
        assert_eq!(orig_dst_from_cmsgs(&c), Err(CmsgError::BadAddress));
        // Address too short.
        let c = msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &[2, 0, 0]);
        assert_eq!(orig_dst_from_cmsgs(&c), Err(CmsgError::BadAddress));
        // Length beyond the buffer, and shorter than a header.
        let mut c = msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin([1, 2, 3, 4], 5));
        c[..size_of::<usize>()].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(orig_dst_from_cmsgs(&c), Err(CmsgError::BadLength));
        c[..size_of::<usize>()].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(orig_dst_from_cmsgs(&c), Err(CmsgError::BadLength));
    }

    /// Headers whose length leaves no data, or whose length word itself is
    /// cut off: errors, read through bounds-checked slices.
    #[test]
    fn headers_without_data_or_cut_short() {
        let bare = msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &[]);
        assert_eq!(bare.len(), align(HDR));
        assert_eq!(orig_dst_from_cmsgs(&bare), Err(CmsgError::BadAddress));
        let mut two = msg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[]);
        two.extend(msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin([198, 51, 100, 7], 53)));
        assert_eq!(orig_dst_from_cmsgs(&two), Ok("198.51.100.7:53".parse().unwrap()));
        // A length of exactly the header, then a second header cut anywhere.
        for cut in align(HDR)..two.len() {
            assert!(orig_dst_from_cmsgs(&two[..cut]).is_err(), "cut {cut}");
        }
        // The largest length a header can claim.
        let mut huge = bare.clone();
        huge[..size_of::<usize>()].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(orig_dst_from_cmsgs(&huge), Err(CmsgError::BadLength));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut c = msg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7u8; 16]);
        c.extend(msg(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sin([203, 0, 113, 10], 9)));
        for cut in 0..c.len() {
            assert!(orig_dst_from_cmsgs(&c[..cut]).is_err(), "cut {cut}");
        }
        // Unaligned start: the parser must not care.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&c);
        assert_eq!(orig_dst_from_cmsgs(&shifted[1..]), Ok("203.0.113.10:9".parse().unwrap()));
    }
}
