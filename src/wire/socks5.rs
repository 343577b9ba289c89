//! SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::Parse;

pub const VERSION: u8 = 5;
pub const METHOD_NONE: u8 = 0x00;
pub const METHOD_USERPASS: u8 = 0x02;
pub const METHOD_UNACCEPTABLE: u8 = 0xff;
pub const AUTH_VERSION: u8 = 1;
pub const CMD_CONNECT: u8 = 1;
pub const CMD_UDP_ASSOCIATE: u8 = 3;
pub const ATYP_V4: u8 = 1;
pub const ATYP_DOMAIN: u8 = 3;
pub const ATYP_V6: u8 = 4;

/// Longest greeting we send.
pub const GREETING_MAX: usize = 4;
/// Longest auth request: ver, ulen, 255, plen, 255.
pub const AUTH_MAX: usize = 3 + 255 + 255;
/// Longest request we send (IPv6 destination).
pub const REQUEST_MAX: usize = 4 + 16 + 2;
/// Longest reply a server can send (domain bound address).
pub const REPLY_MAX: usize = 4 + 1 + 255 + 2;

/// What was wrong with a server's bytes, or what it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socks5Error {
    /// Not SOCKS5 (first byte of a method or request reply).
    BadVersion(u8),
    /// The server accepts none of the methods we offered.
    NoAcceptableMethod,
    /// The server picked a method we did not offer.
    UnofferedMethod(u8),
    /// RFC 1929 status non-zero: wrong username or password.
    AuthRejected(u8),
    /// A reply code other than succeeded.
    Refused(u8),
    BadAddressType(u8),
    BadReserved(u8),
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Socks5Error::BadVersion(v) => write!(f, "not a SOCKS5 server (version byte {v:#04x})"),
            Socks5Error::NoAcceptableMethod => f.write_str("server accepts none of our auth methods"),
            Socks5Error::UnofferedMethod(m) => {
                write!(f, "server chose auth method {m:#04x}, which we did not offer")
            }
            Socks5Error::AuthRejected(s) => write!(f, "authentication rejected (status {s:#04x})"),
            Socks5Error::Refused(code) => write!(f, "server replied {code:#04x}: {}", reply_text(code)),
            Socks5Error::BadAddressType(t) => write!(f, "bad address type {t:#04x} in reply"),
            Socks5Error::BadReserved(r) => write!(f, "non-zero reserved byte {r:#04x} in reply"),
        }
    }
}

/// RFC 1928 §6 reply field meanings.
pub fn reply_text(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// The address in a reply: the bound address, or a name we do not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Addr(SocketAddr),
    /// A domain name (length given); its port.
    Domain(u16),
}

/// Greeting offering no-auth, plus username/password when we have them.
pub fn encode_greeting(with_auth: bool, out: &mut [u8; GREETING_MAX]) -> usize {
    if with_auth {
        *out = [VERSION, 2, METHOD_NONE, METHOD_USERPASS];
        4
    } else {
        out[..3].copy_from_slice(&[VERSION, 1, METHOD_NONE]);
        3
    }
}

/// The server's method selection: `[ver, method]`.
pub fn parse_method(buf: &[u8], offered_auth: bool) -> Result<Parse<u8>, Socks5Error> {
    let [ver, method, ..] = *buf else { return Ok(Parse::Incomplete) };
    if ver != VERSION {
        return Err(Socks5Error::BadVersion(ver));
    }
    match method {
        METHOD_NONE => Ok(Parse::Done(method, 2)),
        METHOD_USERPASS if offered_auth => Ok(Parse::Done(method, 2)),
        METHOD_UNACCEPTABLE => Err(Socks5Error::NoAcceptableMethod),
        m => Err(Socks5Error::UnofferedMethod(m)),
    }
}

/// RFC 1929 request. Caller guarantees 1..=255 bytes each (config validates).
pub fn encode_auth(user: &[u8], pass: &[u8], out: &mut [u8; AUTH_MAX]) -> usize {
    let (ul, pl) = (user.len().min(255), pass.len().min(255));
    out[0] = AUTH_VERSION;
    out[1] = ul as u8;
    out[2..2 + ul].copy_from_slice(&user[..ul]);
    out[2 + ul] = pl as u8;
    out[3 + ul..3 + ul + pl].copy_from_slice(&pass[..pl]);
    3 + ul + pl
}

/// RFC 1929 status: `[ver, status]`, status 0 is success.
pub fn parse_auth_status(buf: &[u8]) -> Result<Parse<()>, Socks5Error> {
    let [ver, status, ..] = *buf else { return Ok(Parse::Incomplete) };
    // RFC 1929 says version 1; some servers echo 5. Accept both.
    if ver != AUTH_VERSION && ver != VERSION {
        return Err(Socks5Error::BadVersion(ver));
    }
    if status != 0 {
        return Err(Socks5Error::AuthRejected(status));
    }
    Ok(Parse::Done((), 2))
}

/// A CONNECT or UDP ASSOCIATE request for an IP destination.
pub fn encode_request(cmd: u8, dst: SocketAddr, out: &mut [u8; REQUEST_MAX]) -> usize {
    out[0] = VERSION;
    out[1] = cmd;
    out[2] = 0;
    let n = encode_addr(dst, &mut out[3..]);
    3 + n
}

/// ATYP, address and port; `out` must hold 19 bytes. Returns the length.
pub fn encode_addr(addr: SocketAddr, out: &mut [u8]) -> usize {
    match addr {
        SocketAddr::V4(a) => {
            out[0] = ATYP_V4;
            out[1..5].copy_from_slice(&a.ip().octets());
            out[5..7].copy_from_slice(&a.port().to_be_bytes());
            7
        }
        SocketAddr::V6(a) => {
            out[0] = ATYP_V6;
            out[1..17].copy_from_slice(&a.ip().octets());
            out[17..19].copy_from_slice(&a.port().to_be_bytes());
            19
        }
    }
}

/// ATYP, address and port at the start of `buf`.
pub fn parse_addr(buf: &[u8]) -> Result<Parse<Bound>, Socks5Error> {
    let Some(&atyp) = buf.first() else { return Ok(Parse::Incomplete) };
    let alen = match atyp {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_DOMAIN => match buf.get(1) {
            Some(&l) => 1 + usize::from(l),
            None => return Ok(Parse::Incomplete),
        },
        t => return Err(Socks5Error::BadAddressType(t)),
    };
    let total = 1 + alen + 2;
    let Some(b) = buf.get(..total) else { return Ok(Parse::Incomplete) };
    let port = u16::from_be_bytes([b[total - 2], b[total - 1]]);
    let bound = match atyp {
        ATYP_V4 => {
            let ip = Ipv4Addr::new(b[1], b[2], b[3], b[4]);
            Bound::Addr(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        ATYP_V6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            Bound::Addr(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, 0, 0)))
        }
        _ => Bound::Domain(port),
    };
    Ok(Parse::Done(bound, total))
}

/// A reply to CONNECT or UDP ASSOCIATE. Errors on any code but succeeded.
pub fn parse_reply(buf: &[u8]) -> Result<Parse<Bound>, Socks5Error> {
    let [ver, rep, rsv, ..] = *buf else {
        // Fail fast on a wrong version even before the rest arrives.
        return match buf.first() {
            Some(&v) if v != VERSION => Err(Socks5Error::BadVersion(v)),
            _ => Ok(Parse::Incomplete),
        };
    };
    if ver != VERSION {
        return Err(Socks5Error::BadVersion(ver));
    }
    if rep != 0 {
        return Err(Socks5Error::Refused(rep));
    }
    if rsv != 0 {
        return Err(Socks5Error::BadReserved(rsv));
    }
    match parse_addr(&buf[3..])? {
        Parse::Incomplete => Ok(Parse::Incomplete),
        Parse::Done(b, n) => Ok(Parse::Done(b, 3 + n)),
    }
}

/// Longest RFC 1928 §7 UDP header we write (IPv6 destination).
pub const UDP_HEADER_MAX: usize = 3 + 1 + 16 + 2;

/// What was wrong with a datagram from a SOCKS5 UDP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpHeaderError {
    /// Shorter than its header.
    Truncated,
    /// RSV must be zero.
    Reserved,
    /// FRAG != 0: fragmentation is optional in RFC 1928 and we do not reassemble.
    Fragmented(u8),
    BadAddressType(u8),
    /// A domain name as the source: we cannot send a reply from a name.
    DomainSource,
}

impl fmt::Display for UdpHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UdpHeaderError::Truncated => f.write_str("datagram shorter than its SOCKS5 UDP header"),
            UdpHeaderError::Reserved => f.write_str("non-zero RSV in SOCKS5 UDP header"),
            UdpHeaderError::Fragmented(n) => write!(f, "SOCKS5 UDP fragment {n} (fragments are dropped)"),
            UdpHeaderError::BadAddressType(t) => write!(f, "bad address type {t:#04x} in SOCKS5 UDP header"),
            UdpHeaderError::DomainSource => f.write_str("domain name as SOCKS5 UDP source"),
        }
    }
}

/// The RFC 1928 §7 header for a datagram to `dst`; returns its length.
pub fn encode_udp_header(dst: SocketAddr, out: &mut [u8; UDP_HEADER_MAX]) -> usize {
    out[..3].copy_from_slice(&[0, 0, 0]);
    3 + encode_addr(dst, &mut out[3..])
}

/// A whole datagram from the relay: the remote it came from and where the
/// payload starts.
pub fn parse_udp_header(d: &[u8]) -> Result<(SocketAddr, usize), UdpHeaderError> {
    let [r0, r1, frag, ..] = *d else { return Err(UdpHeaderError::Truncated) };
    if r0 != 0 || r1 != 0 {
        return Err(UdpHeaderError::Reserved);
    }
    if frag != 0 {
        return Err(UdpHeaderError::Fragmented(frag));
    }
    match parse_addr(&d[3..]) {
        Ok(Parse::Done(Bound::Addr(a), n)) => Ok((a, 3 + n)),
        Ok(Parse::Done(Bound::Domain(_), _)) => Err(UdpHeaderError::DomainSource),
        Ok(Parse::Incomplete) => Err(UdpHeaderError::Truncated),
        Err(Socks5Error::BadAddressType(t)) => Err(UdpHeaderError::BadAddressType(t)),
        Err(_) => Err(UdpHeaderError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        let mut b = [0; GREETING_MAX];
        let n = encode_greeting(false, &mut b);
        assert_eq!(&b[..n], &[5, 1, 0]);
        let n = encode_greeting(true, &mut b);
        assert_eq!(&b[..n], &[5, 2, 0, 2]);
    }

    #[test]
    fn method_selection() {
        assert_eq!(parse_method(&[5], false), Ok(Parse::Incomplete));
        assert_eq!(parse_method(&[5, 0, 9], false), Ok(Parse::Done(0, 2)));
        assert_eq!(parse_method(&[5, 2], true), Ok(Parse::Done(2, 2)));
        assert_eq!(parse_method(&[5, 2], false), Err(Socks5Error::UnofferedMethod(2)));
        assert_eq!(parse_method(&[5, 0xff], true), Err(Socks5Error::NoAcceptableMethod));
        assert_eq!(parse_method(&[4, 0], true), Err(Socks5Error::BadVersion(4)));
    }

    #[test]
    fn auth_round() {
        let mut b = [0; AUTH_MAX];
        let n = encode_auth(b"u", b"pw", &mut b);
        assert_eq!(&b[..n], &[1, 1, b'u', 2, b'p', b'w']);
        let long = [b'x'; 255];
        assert_eq!(encode_auth(&long, &long, &mut b), AUTH_MAX);
        assert_eq!(parse_auth_status(&[1]), Ok(Parse::Incomplete));
        assert_eq!(parse_auth_status(&[1, 0]), Ok(Parse::Done((), 2)));
        assert_eq!(parse_auth_status(&[5, 0]), Ok(Parse::Done((), 2)));
        assert_eq!(parse_auth_status(&[1, 1]), Err(Socks5Error::AuthRejected(1)));
        assert_eq!(parse_auth_status(&[0x48, 0x54]), Err(Socks5Error::BadVersion(0x48)));
    }

    #[test]
    fn request_v4_and_v6() {
        let mut b = [0; REQUEST_MAX];
        let n = encode_request(CMD_CONNECT, "203.0.113.10:80".parse().unwrap(), &mut b);
        assert_eq!(&b[..n], &[5, 1, 0, 1, 203, 0, 113, 10, 0, 80]);
        let n = encode_request(CMD_UDP_ASSOCIATE, "[2001:db8::1]:443".parse().unwrap(), &mut b);
        assert_eq!(n, 22);
        assert_eq!(&b[..4], &[5, 3, 0, 4]);
        assert_eq!(&b[4..6], &[0x20, 0x01]);
        assert_eq!(&b[20..22], &[1, 187]);
    }

    #[test]
    fn replies() {
        let ok4 = [5, 0, 0, 1, 100, 64, 0, 2, 0x04, 0x38, 0xAA];
        assert_eq!(parse_reply(&ok4), Ok(Parse::Done(Bound::Addr("100.64.0.2:1080".parse().unwrap()), 10)));
        for cut in 0..10 {
            assert_eq!(parse_reply(&ok4[..cut]), Ok(Parse::Incomplete), "cut {cut}");
        }
        let mut ok6 = vec![5, 0, 0, 4];
        ok6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        ok6.extend_from_slice(&[0, 53]);
        assert_eq!(parse_reply(&ok6), Ok(Parse::Done(Bound::Addr("[2001:db8::2]:53".parse().unwrap()), 22)));
        let dom = [5, 0, 0, 3, 3, b'a', b'.', b'b', 0, 7];
        assert_eq!(parse_reply(&dom), Ok(Parse::Done(Bound::Domain(7), 10)));
        assert_eq!(parse_reply(&[5, 5, 0, 1]), Err(Socks5Error::Refused(5)));
        assert_eq!(parse_reply(&[5, 0, 1, 1]), Err(Socks5Error::BadReserved(1)));
        assert_eq!(parse_reply(&[5, 0, 0, 9]), Err(Socks5Error::BadAddressType(9)));
        assert_eq!(parse_reply(b"HTTP/1.1 400"), Err(Socks5Error::BadVersion(b'H')));
        assert_eq!(parse_reply(&[0x48]), Err(Socks5Error::BadVersion(0x48)));
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every 1-3 byte input, and every prefix of a long domain reply.
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 3, 4, 5, 255] {
                let _ = parse_reply(&[a, b]);
                let _ = parse_reply(&[5, 0, 0, a, b]);
                let _ = parse_method(&[a, b], true);
                let _ = parse_auth_status(&[a, b]);
            }
        }
        let mut dom = vec![5, 0, 0, 3, 255];
        dom.extend_from_slice(&[b'x'; 255]);
        dom.extend_from_slice(&[0, 1]);
        assert_eq!(dom.len(), REPLY_MAX);
        for cut in 0..dom.len() {
            assert_eq!(parse_reply(&dom[..cut]), Ok(Parse::Incomplete));
        }
        assert_eq!(parse_reply(&dom), Ok(Parse::Done(Bound::Domain(1), REPLY_MAX)));
    }

    #[test]
    fn udp_header_round_trip_and_errors() {
        let mut h = [0u8; UDP_HEADER_MAX];
        let n = encode_udp_header("203.0.113.10:53".parse().unwrap(), &mut h);
        assert_eq!(&h[..n], &[0, 0, 0, 1, 203, 0, 113, 10, 0, 53]);
        let mut d = h[..n].to_vec();
        d.extend_from_slice(b"payload");
        assert_eq!(parse_udp_header(&d), Ok(("203.0.113.10:53".parse().unwrap(), 10)));
        let n6 = encode_udp_header("[2001:db8:203::10]:5353".parse().unwrap(), &mut h);
        assert_eq!(n6, UDP_HEADER_MAX);
        assert_eq!(
            parse_udp_header(&h[..n6]),
            Ok(("[2001:db8:203::10]:5353".parse().unwrap(), UDP_HEADER_MAX))
        );
        for cut in 0..10 {
            assert_eq!(parse_udp_header(&d[..cut]), Err(UdpHeaderError::Truncated), "cut {cut}");
        }
        assert_eq!(parse_udp_header(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 1]), Err(UdpHeaderError::Fragmented(1)));
        assert_eq!(parse_udp_header(&[0, 1, 0, 1, 1, 2, 3, 4, 0, 1]), Err(UdpHeaderError::Reserved));
        assert_eq!(parse_udp_header(&[0, 0, 0, 7, 1, 2, 3, 4, 0, 1]), Err(UdpHeaderError::BadAddressType(7)));
        assert_eq!(parse_udp_header(&[0, 0, 0, 3, 1, b'a', 0, 1]), Err(UdpHeaderError::DomainSource));
    }
}
