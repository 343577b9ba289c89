//! Pure parsers for what `doctor` reads off the host: `ip` output,
//! `/proc/net/*`, `/proc/PID/status` and a proxy's first response line.
//!
//! Each takes text and returns what it understood, skipping lines it does
//! not; none panics. Firewall dumps are parsed in `firewall.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::route::Cidr;

pub(super) use crate::rules::host::{AddrEntry, parse_ip_addr};

/// One policy routing rule from `ip -N rule show` (tables as numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IpRule {
    pub prio: u32,
    /// `fwmark VALUE[/MASK]`; a bare value has the full mask.
    pub fwmark: Option<(u32, u32)>,
    /// `lookup T` (numeric with `-N`; a name when the tool printed one).
    pub table: Option<String>,
    /// Other selectors (`iif`, `to`, `not`, a source other than `all`, ...)
    /// that make the rule match less than every marked packet.
    pub narrowed: bool,
    /// The rule as printed, after its priority.
    pub text: String,
}

/// `32765: from all fwmark 0x2a94/0x2a94 lookup 10900`.
pub(super) fn parse_ip_rules(text: &str) -> Vec<IpRule> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((prio, rest)) = line.split_once(':') else { continue };
        let Ok(prio) = prio.trim().parse::<u32>() else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (mut fwmark, mut table, mut narrowed) = (None, None, false);
        let mut i = 0;
        while i < words.len() {
            let next = words.get(i + 1).copied();
            match words[i] {
                "from" => narrowed |= next != Some("all"),
                "fwmark" => fwmark = next.and_then(parse_mark),
                "lookup" | "table" => table = next.map(str::to_string),
                "to" | "iif" | "oif" | "tos" | "dsfield" | "uidrange" | "ipproto" | "sport" | "dport"
                | "l3mdev" | "not" => narrowed = true,
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        if words.first() == Some(&"not") {
            narrowed = true;
        }
        out.push(IpRule { prio, fwmark, table, narrowed, text: rest.trim().to_string() });
    }
    out
}

/// `VALUE[/MASK]`, each hex (`0x...`) or decimal; no mask means all bits.
pub(super) fn parse_mark(s: &str) -> Option<(u32, u32)> {
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let v = parse_u32(v)?;
    let m = match m {
        Some(m) => parse_u32(m)?,
        None => u32::MAX,
    };
    Some((v, m))
}

/// A number as `ip`, iptables and nft print them: `0x2a94` or `10900`.
pub(super) fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Whether `ip route show table N` lists `local default dev lo`.
pub(super) fn has_local_default_lo(text: &str) -> bool {
    text.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= 4
            && (w[0] == "local" || w[0] == "2") // `ip -N` prints RTN_LOCAL as 2
            && (w[1] == "default" || w[1] == "0.0.0.0/0" || w[1] == "::/0")
            && w[2] == "dev"
            && w[3] == "lo"
    })
}

/// One socket from `/proc/net/{tcp,udp}{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcSocket {
    pub local: SocketAddr,
    /// TCP state (`0A` is LISTEN; UDP sockets show `07`).
    pub state: u8,
    pub inode: u64,
}

pub(super) const TCP_LISTEN: u8 = 0x0A;

/// `/proc/net/tcp` and friends. Addresses are the kernel's 32-bit words
/// printed in host byte order, so they are read back natively.
pub(super) fn parse_proc_net(text: &str) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (local, state, inode) = (w.get(1)?, w.get(3)?, w.get(9)?);
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = proc_addr(addr)?;
            Some(ProcSocket {
                local: SocketAddr::new(ip, port),
                state: u8::from_str_radix(state, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

fn proc_addr(hex: &str) -> Option<IpAddr> {
    if !hex.is_ascii() {
        return None;
    }
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok();
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes()))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether a socket bound to `bound` receives for `want` (same address, or
/// a wildcard of the family, or `::` for an IPv4-mapped one).
pub(super) fn serves(bound: SocketAddr, want: SocketAddr) -> bool {
    bound.port() == want.port()
        && (bound.ip() == want.ip()
            || (bound.ip().is_unspecified() && bound.is_ipv4() == want.is_ipv4())
            || bound.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}

/// `CapEff:` of `/proc/PID/status`.
pub(super) fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

pub(super) const CAP_NET_ADMIN: u32 = 12;
pub(super) const CAP_NET_RAW: u32 = 13;

/// The status code of an HTTP response's first line, once it is complete.
pub(super) fn http_status(buf: &[u8]) -> Option<u16> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..end]).ok()?.trim_end();
    let mut w = line.split(' ');
    w.next().filter(|v| v.starts_with("HTTP/1."))?;
    let code = w.next()?;
    (code.len() == 3).then_some(())?;
    code.parse().ok()
}

/// Inclusive range of a prefix, as integers (IPv4 in the low 32 bits).
pub(super) fn cidr_range(c: &Cidr) -> (bool, u128, u128) {
    match c.addr() {
        IpAddr::V4(a) => {
            let start = u32::from(a);
            let host = u32::MAX.checked_shr(u32::from(c.len())).unwrap_or(0);
            (false, u128::from(start), u128::from(start | host))
        }
        IpAddr::V6(a) => {
            let start = u128::from(a);
            let host = u128::MAX.checked_shr(u32::from(c.len())).unwrap_or(0);
            (true, start, start | host)
        }
    }
}

/// A set element or address match: a prefix, a bare address or `a-b`.
pub(super) fn parse_range(s: &str) -> Option<(bool, u128, u128)> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        let (ra, rb) = (cidr_range(&Cidr::host(a)), cidr_range(&Cidr::host(b)));
        return (ra.0 == rb.0).then_some((ra.0, ra.1, rb.2));
    }
    s.parse::<Cidr>().ok().map(|c| cidr_range(&c))
}
