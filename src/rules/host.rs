//! What `rules` (and `doctor`) need to know of the host's interfaces: the
//! container interfaces every rule is scoped to, found from `ip -o addr
//! show` output by a pure function, so the script generator stays pure.

use std::net::{IpAddr, SocketAddr};

use crate::config::{IfacePattern, Settings};
use crate::route::Cidr;

/// One address from `ip -o addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrEntry {
    /// The interface, without an `@peer` suffix.
    pub ifname: String,
    pub addr: IpAddr,
    /// The prefix length written after the address (`/24`).
    pub prefix: u8,
    /// IPv4 `secondary`: REDIRECT never goes to it.
    pub secondary: bool,
    /// IPv6 `tentative` or `dadfailed`: not usable yet (or ever).
    pub tentative: bool,
}

impl AddrEntry {
    /// The subnet this address is on (`10.8.0.1/24` → `10.8.0.0/24`).
    pub fn subnet(&self) -> Cidr {
        Cidr::new(self.addr, self.prefix).unwrap_or_else(|_| Cidr::host(self.addr))
    }
}

/// `ip -o addr show`: `2: br0    inet 10.8.0.1/24 brd ... scope global br0\ ...`.
pub fn parse_ip_addr(text: &str) -> Vec<AddrEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, ifname, fam, addr, rest @ ..] = words.as_slice() else { continue };
        if *fam != "inet" && *fam != "inet6" {
            continue;
        }
        let mut parts = addr.splitn(2, '/');
        let Some(ip) = parts.next().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = parts.next().and_then(|p| p.parse::<u8>().ok()).filter(|p| *p <= max).unwrap_or(max);
        let flags = rest.iter().take_while(|w| !w.ends_with('\\') && **w != "valid_lft");
        let (mut secondary, mut tentative) = (false, false);
        for w in flags {
            match *w {
                "secondary" => secondary = true,
                "tentative" | "dadfailed" => tentative = true,
                _ => {}
            }
        }
        let ifname = ifname.split('@').next().unwrap_or(ifname).to_string();
        out.push(AddrEntry { ifname, addr: ip, prefix, secondary, tentative });
    }
    out
}

/// The container side of the host as the rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The interfaces every rule is scoped to (by ingress interface).
    pub interfaces: Vec<IfacePattern>,
    /// The subnets on those interfaces now (for forgetting stale UDP
    /// conntrack entries; empty when none exist yet).
    pub subnets: Vec<Cidr>,
}

/// The interfaces named in `intercept.interfaces`, or else those holding
/// the listen addresses, with the subnets found on them in `addrs`.
pub fn scope(settings: &Settings, addrs: &[AddrEntry]) -> Result<Scope, String> {
    let interfaces = if settings.intercept.interfaces.is_empty() {
        let mut found: Vec<IfacePattern> = Vec::new();
        for l in &settings.listen {
            let ip = unmapped_ip(*l);
            let Some(e) = addrs.iter().find(|e| e.addr == ip) else {
                return Err(format!(
                    "listen address {} is not assigned to any interface here, so the container interfaces are \
                     unknown: create the container network first (its bridge holds that address), or name the \
                     bridges in the config, e.g. intercept: (interfaces: [\"br-egress\"]) or [\"br-+\"] for \
                     Docker's br-<id> bridges",
                    l.ip()
                ));
            };
            if e.ifname == "lo" {
                return Err(format!(
                    "listen address {} is on lo, not on a container bridge: listen on the bridge's address, or \
                     name the bridges in intercept.interfaces",
                    l.ip()
                ));
            }
            let Some(p) = IfacePattern::found(&e.ifname) else {
                return Err(format!(
                    "listen address {} is on an interface whose name cannot be written safely into the rules \
                     script ({:?}: only letters, digits and -_.@: are taken, at most 15): rename the interface, \
                     or name the container bridges in intercept.interfaces",
                    l.ip(),
                    e.ifname
                ));
            };
            if !found.contains(&p) {
                found.push(p);
            }
        }
        found
    } else {
        settings.intercept.interfaces.clone()
    };
    let mut subnets: Vec<Cidr> = Vec::new();
    for e in addrs {
        let link_local = match e.addr {
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
            IpAddr::V4(a) => a.is_link_local(),
        };
        if link_local || !interfaces.iter().any(|p| p.matches(&e.ifname)) {
            continue;
        }
        let s = e.subnet();
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    Ok(Scope { interfaces, subnets })
}

fn unmapped_ip(a: SocketAddr) -> IpAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22: an interface name found on the host goes into a shell
    /// script; one that could inject shell is refused, never written.
    #[test]
    fn host_interface_names_cannot_inject_shell() {
        let settings = Settings::parse(
            "t.ron",
            r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() }, routes: [(source: "10.8.0.10", tunnel: "a")])"#,
        )
        .unwrap();
        for evil in ["$(reboot)", "br0;id", "br`id`", "a'b", "br\\n", "br+", "br*", "x\"y"] {
            let text = format!("5: {evil}    inet 10.8.0.1/24 brd 10.8.0.255 scope global {evil}\\");
            let addrs = parse_ip_addr(&text);
            assert_eq!(addrs.len(), 1, "{evil}");
            let e = scope(&settings, &addrs).unwrap_err();
            assert!(e.contains("cannot be written safely"), "{evil}: {e}");
        }
        let ok = parse_ip_addr("5: br-1a2b.3@if4    inet 10.8.0.1/24 scope global br-1a2b.3\\");
        assert_eq!(scope(&settings, &ok).unwrap().interfaces, vec![IfacePattern::exact("br-1a2b.3")]);
    }

    const ADDRS: &str = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
4: br0    inet 10.8.0.1/24 brd 10.8.0.255 scope global br0\\       valid_lft forever preferred_lft forever
4: br0    inet6 fd08::1/64 scope global \\       valid_lft forever preferred_lft forever
4: br0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
7: br-1a2b    inet 172.18.0.1/16 brd 172.18.255.255 scope global br-1a2b\\       valid_lft forever
9: up0@if8    inet 198.51.100.200/24 scope global up0\\       valid_lft forever
";

    fn settings(extra: &str) -> Settings {
        let text = format!(
            r#"(listen: ["10.8.0.1:10900", "[fd08::1]:10900"], tunnels: {{ "a": Socks5(server: "100.64.0.2:1080") }},
               routes: [(source: "10.8.0.10", tunnel: "a")], {extra})"#
        );
        Settings::parse("t.ron", &text).unwrap()
    }

    #[test]
    fn parses_prefix_lengths() {
        let a = parse_ip_addr(ADDRS);
        assert_eq!(a.len(), 6);
        assert_eq!(a[1].subnet().to_string(), "10.8.0.0/24");
        assert_eq!(a[2].subnet().to_string(), "fd08::/64");
        assert_eq!(a[5].ifname, "up0");
        // No prefix written: a host address.
        let b = parse_ip_addr("3: x    inet 10.1.2.3 scope global x");
        assert_eq!(b[0].prefix, 32);
        assert!(parse_ip_addr("3: x inet 10.1.2.3/99 scope").iter().all(|e| e.prefix == 32));
    }

    #[test]
    fn default_scope_is_the_listen_addresses_interfaces() {
        let s = scope(&settings(""), &parse_ip_addr(ADDRS)).unwrap();
        assert_eq!(s.interfaces, vec![IfacePattern::exact("br0")]);
        let subnets: Vec<String> = s.subnets.iter().map(Cidr::to_string).collect();
        assert_eq!(subnets, ["10.8.0.0/24", "fd08::/64"]);
    }

    #[test]
    fn named_patterns_are_kept_and_matched() {
        let s = scope(&settings(r#"intercept: (interfaces: ["br-+", "docker0"])"#), &parse_ip_addr(ADDRS))
            .unwrap();
        assert_eq!(s.interfaces.len(), 2);
        assert_eq!(s.interfaces[0].iptables(), "br-+");
        assert_eq!(s.interfaces[0].nft(), "\"br-*\"");
        let subnets: Vec<String> = s.subnets.iter().map(Cidr::to_string).collect();
        assert_eq!(subnets, ["172.18.0.0/16"]);
        // Named interfaces need not exist yet (Docker may create them later).
        let s = scope(&settings(r#"intercept: (interfaces: ["br-egress"])"#), &[]).unwrap();
        assert!(s.subnets.is_empty());
    }

    #[test]
    fn an_unassigned_listen_address_is_a_clear_error() {
        let e = scope(&settings(""), &parse_ip_addr("1: lo    inet 127.0.0.1/8 scope host lo")).unwrap_err();
        assert!(e.contains("10.8.0.1 is not assigned") && e.contains("intercept: (interfaces:"), "{e}");
    }
}
