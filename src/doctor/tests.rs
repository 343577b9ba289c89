//! Fixtures: real output of `ip`, `iptables-save`, `ip6tables-save` and
//! `nft list ruleset` taken in a test namespace (iptables 1.8.9 nf_tables,
//! nft 1.0.6) with br0 10.8.0.1/24 fd08::1/64 after `egressd rules` (both
//! backends): the netns-tests config (REDIRECT, every source, v4+v6), a
//! TPROXY one (v4 listener only, intercept.sources 10.8.0.8/29, a bypass),
//! Docker's filter FORWARD rules around the new rules, and an older
//! egressd's source-keyed rules with Docker's ACCEPT inserted above its
//! filter FORWARD kill switch. `prev-*`: the previous version's install
//! (intercept for conntrack ORIGINAL only, every REPLY exempt from the kill
//! switch), which lets a container's answers to strangers out. Edits of
//! them stand for the broken setups.

use std::net::SocketAddr;

use super::checks::judge_rules;
use super::firewall::{add_iptables, is_nft_flavour};
use super::fwcheck::{FwInput, firewall_checks, parse_resolv};
use super::model::Ruleset;
use super::nft::add_nft;
use super::parse::*;
use super::{Check, Status};
use crate::config::Settings;

const IPTABLES: &str = include_str!("fixtures/iptables-save.txt");
const IP6TABLES: &str = include_str!("fixtures/ip6tables-save.txt");
const NFT_EGRESSD: &str = include_str!("fixtures/nft-egressd.txt");
const NFT_IPTABLES_NFT: &str = include_str!("fixtures/nft-iptables-nft.txt");
const DOCKER: &str = include_str!("fixtures/docker-iptables.txt");
const DOCKER_OLD: &str = include_str!("fixtures/docker-old-iptables.txt");
const TPROXY4: &str = include_str!("fixtures/tproxy-iptables.txt");
const TPROXY6: &str = include_str!("fixtures/tproxy-ip6tables.txt");
const TPROXY_NFT: &str = include_str!("fixtures/tproxy-nft.txt");
const IP_ADDR: &str = include_str!("fixtures/ipaddr.txt");
const IP_RULE: &str = include_str!("fixtures/iprule.txt");
const ROUTE4: &str = include_str!("fixtures/route4.txt");
const ROUTE6: &str = include_str!("fixtures/route6.txt");
const SNMP: &str = include_str!("fixtures/snmp.txt");
const PREV_IPTABLES: &str = include_str!("fixtures/prev-iptables-save.txt");
const PREV_IP6TABLES: &str = include_str!("fixtures/prev-ip6tables-save.txt");
const PREV_NFT: &str = include_str!("fixtures/prev-nft-egressd.txt");

fn without(text: &str, needle: &str) -> String {
    text.lines().filter(|l| !l.contains(needle)).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------- ip

#[test]
fn ip_addr_finds_the_bridge_address_and_flags() {
    let a = parse_ip_addr(IP_ADDR);
    let br: Vec<_> = a.iter().filter(|e| e.ifname == "br0").collect();
    assert_eq!(br.len(), 3);
    assert_eq!(br[0].addr, "10.8.0.1".parse::<std::net::IpAddr>().unwrap());
    assert!(!br[0].secondary && !br[0].tentative);
    assert_eq!(br[1].addr, "fd08::1".parse::<std::net::IpAddr>().unwrap());
    assert!(br[2].tentative, "the link-local one is still tentative");
    let peer =
        parse_ip_addr("7: veth0@if6    inet 10.9.0.1/24 brd 10.9.0.255 scope global secondary veth0\\ x");
    assert_eq!(peer[0].ifname, "veth0");
    assert!(peer[0].secondary);
    assert!(parse_ip_addr("garbage\n\n3: x inet nonsense").is_empty());
}

#[test]
fn ip_rule_parses_hex_marks_and_tables() {
    let r = parse_ip_rules(IP_RULE);
    assert_eq!(r.len(), 4);
    assert_eq!(r[1].prio, 32765);
    assert_eq!(r[1].fwmark, Some((0x2a94, 0x2a94)));
    assert_eq!(r[1].table.as_deref(), Some("10900"));
    assert!(!r[1].narrowed);
    let r = parse_ip_rules("100:\tfrom all fwmark 0x1 lookup 7\n200:\tfrom 10.0.0.0/8 iif br0 lookup 254\n");
    assert_eq!(r[0].fwmark, Some((1, u32::MAX)));
    assert!(r[1].narrowed);
    assert_eq!(parse_mark("10900/10900"), Some((10900, 10900)));
    assert_eq!(parse_mark("0xzz"), None);
}

fn judge(text: &str) -> Check {
    judge_rules(
        &parse_ip_rules(text),
        10900,
        10900,
        "ip rule v4",
        "ip rule add fwmark 10900/10900 lookup 10900",
    )
}

#[test]
fn ip_rule_judged() {
    assert_eq!(judge(IP_RULE).status, Status::Ok);
    // `ip -N` prints tables as numbers.
    let numeric = "0:\tfrom all lookup 255\n32765:\tfrom all fwmark 0x2a94/0x2a94 lookup 10900\n32766:\tfrom all lookup 254\n";
    assert_eq!(judge(numeric).status, Status::Ok);
    let gone = judge(&without(IP_RULE, "fwmark"));
    assert_eq!(gone.status, Status::Fail);
    assert!(gone.saw.contains("0x2a94/0x2a94"), "{}", gone.saw);
    assert_eq!(gone.fix.as_deref(), Some("ip rule add fwmark 10900/10900 lookup 10900"));
    let other_table =
        judge("32765:\tfrom all fwmark 0x2a94/0x2a94 lookup 100\n32766:\tfrom all lookup main\n");
    assert_eq!(other_table.status, Status::Fail);
    assert!(other_table.saw.contains("another table"));
    let late = judge("32766:\tfrom all lookup main\n40000:\tfrom all fwmark 0x2a94/0x2a94 lookup 10900\n");
    assert_eq!(late.status, Status::Fail);
    assert!(late.saw.contains("after the main table"));
    let wrong_mark = judge("100:\tfrom all fwmark 0x1/0x1 lookup 10900\n");
    assert_eq!(wrong_mark.status, Status::Fail);
}

#[test]
fn local_route() {
    assert!(has_local_default_lo(ROUTE4));
    assert!(has_local_default_lo(ROUTE6));
    assert!(has_local_default_lo("2 default dev lo scope 254 \n"), "ip -N prints the type as a number");
    assert!(!has_local_default_lo(""));
    assert!(!has_local_default_lo("default via 10.0.0.1 dev eth0\nlocal 10.8.0.1 dev br0"));
}

// ---------------------------------------------------------------- /proc

#[test]
fn snmp_counters() {
    assert_eq!(crate::hostwatch::snmp_udp_noports(SNMP), Some(42));
    assert_eq!(crate::hostwatch::snmp_udp_noports("Udp: InDatagrams\nUdp: 1\n"), None);
    assert_eq!(crate::hostwatch::snmp_udp_noports(""), None);
    let snmp6 =
        "Udp6InDatagrams                 \t12\nUdp6NoPorts                     \t7\nUdpLite6NoPorts \t0\n";
    assert_eq!(crate::hostwatch::snmp6_udp_noports(snmp6), Some(7));
    assert_eq!(crate::hostwatch::snmp6_udp_noports("Udp6NoPorts x"), None);
}

#[test]
#[cfg(target_endian = "little")]
fn proc_net_sockets() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100080A:2A94 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n\
   1: 0100007F:0035 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
    let s = parse_proc_net(tcp);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].local, "10.8.0.1:10900".parse::<SocketAddr>().unwrap());
    assert_eq!((s[0].state, s[0].inode), (TCP_LISTEN, 12345));
    let tcp6 = "header\n   0: 000008FD000000000000000001000000:2A94 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 777 1\n";
    let s = parse_proc_net(tcp6);
    assert_eq!(s[0].local, "[fd08::1]:10900".parse::<SocketAddr>().unwrap());
    assert!(parse_proc_net("h\n 0: zz:1 0:0 0A a b c d e f\n").is_empty());
}

#[test]
fn serves_wildcards() {
    let want: SocketAddr = "10.8.0.1:10900".parse().unwrap();
    assert!(serves(want, want));
    assert!(serves("0.0.0.0:10900".parse().unwrap(), want));
    assert!(serves("[::]:10900".parse().unwrap(), want));
    assert!(!serves("10.8.0.2:10900".parse().unwrap(), want));
    assert!(!serves("10.8.0.1:10901".parse().unwrap(), want));
}

#[test]
fn capabilities_and_http() {
    assert_eq!(cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n"), Some(0x1fffeffffff));
    assert_eq!(cap_eff("CapEff:\t0000000000001000\n").map(|c| c & (1 << CAP_NET_ADMIN) != 0), Some(true));
    assert_eq!(cap_eff("nothing"), None);
    assert_eq!(http_status(b"HTTP/1.1 407 Proxy Authentication Required\r\n"), Some(407));
    assert_eq!(http_status(b"HTTP/1.0 200 OK\n"), Some(200));
    assert_eq!(http_status(b"HTTP/1.1 200"), None, "line not complete yet");
    assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
}

// ---------------------------------------------------------------- firewall

/// The netns-tests config (REDIRECT, v4 + v6, every source on br0).
const REDIRECT_CONF: &str = r#"listen: ["10.8.0.1:10900", "[fd08::1]:10900"], intercept: (tcp: Redirect),
    dns: (upstream: "192.0.2.53:53")"#;
/// The TPROXY fixtures' config (v4 listener only, narrowed, a bypass).
const TPROXY_CONF: &str = r#"listen: ["10.8.0.1:10900"],
    intercept: (tcp: Tproxy, sources: ["10.8.0.8/29"]), bypass: ["198.51.100.0/24"]"#;

fn settings(fields: &str) -> Settings {
    let text = format!(
        r#"({fields}, tunnels: {{ "a": Socks5(server: "100.64.1.2:1080") }}, routes: [(source: "10.8.0.11", tunnel: "a")])"#
    );
    Settings::parse("t.ron", &text).unwrap()
}

struct Fw {
    ipt4: String,
    ipt6: String,
    nft: String,
    upstream_default: bool,
    rp_strict: Vec<String>,
}

fn fw(ipt4: &str, ipt6: &str, nft: &str) -> Fw {
    Fw {
        ipt4: ipt4.into(),
        ipt6: ipt6.into(),
        nft: nft.into(),
        upstream_default: false,
        rp_strict: Vec::new(),
    }
}

impl Fw {
    fn run(&self, conf: &str) -> Vec<Check> {
        let settings = settings(conf);
        let addrs = parse_ip_addr(IP_ADDR);
        let scope = crate::rules::host::scope(&settings, &addrs).unwrap();
        let mut rs = Ruleset::default();
        add_iptables(&mut rs, &self.ipt4, false);
        add_iptables(&mut rs, &self.ipt6, true);
        add_nft(&mut rs, &self.nft, [is_nft_flavour(&self.ipt4), is_nft_flavour(&self.ipt6)]);
        let input = FwInput {
            settings: &settings,
            scope: &scope,
            addrs: &addrs,
            rs: &rs,
            resolvers: vec!["10.255.255.53".parse().unwrap()],
            upstream_default: self.upstream_default,
            rp_strict: self.rp_strict.clone(),
            fix: "egressd rules --config FILE | sh -e".into(),
        };
        firewall_checks(&input)
    }
}

fn get<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

fn all_ok(checks: &[Check]) {
    for c in checks {
        assert_eq!(c.status, Status::Ok, "{}", c.line());
    }
}

#[test]
fn iptables_install_passes_every_check() {
    // nft's view of iptables-nft's tables is left out: iptables-save was read.
    let c = fw(IPTABLES, IP6TABLES, NFT_IPTABLES_NFT).run(REDIRECT_CONF);
    all_ok(&c);
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    for fam in ["v4", "v6"] {
        for n in [
            "tcp REDIRECT",
            "udp TPROXY",
            "dns",
            "kill switch",
            "published ports",
            "stranger replies",
            "forged sources",
        ] {
            assert!(names.contains(&format!("{n} {fam} br0").as_str()), "{n} {fam}: {names:?}");
        }
    }
    assert!(
        get(&c, "tcp REDIRECT v4 br0").saw.contains("nat PREROUTING -> EGRESSD -> REDIRECT to port 10900")
    );
    let udp = &get(&c, "udp TPROXY v6 br0").saw;
    assert!(
        udp.contains("ip6tables mangle PREROUTING -> EGRESSD_TPROXY -> TPROXY [fd08::1]:10900 mark 0x2a94"),
        "{udp}"
    );
    assert!(get(&c, "dns v4 br0").saw.contains("203.0.113.53, 10.255.255.53, 10.8.0.1"));
    assert!(get(&c, "kill switch v4 br0").saw.contains("mangle FORWARD -> EGRESSD_KILL: DROP"));
    assert!(get(&c, "forged sources v6 br0").saw.contains("raw PREROUTING -> EGRESSD_RPF: DROP"));
    assert!(!names.contains(&"ipv6"), "v6 is intercepted");
    let a = &get(&c, "stranger replies v4 br0").saw;
    assert!(
        a.contains("UDP to 203.0.113.11:5001: TPROXY 10.8.0.1:10900")
            && a.contains("TCP to 203.0.113.11:40000: iptables: mangle FORWARD -> EGRESSD_KILL DROP"),
        "{a}"
    );
    // Nothing at all: every intercept, the kill switch and the answers to strangers FAIL, forged sources warn.
    let none = fw("", "", "").run(REDIRECT_CONF);
    assert_eq!(none.iter().filter(|c| c.status == Status::Fail).count(), 10, "{none:#?}");
    assert!(get(&none, "kill switch v6 br0").saw.contains("nothing drops it (no kill switch for br0)"));
    assert_eq!(get(&none, "forged sources v4 br0").status, Status::Warn);
}

#[test]
fn nft_install_passes_every_check() {
    let c = fw("", "", NFT_EGRESSD).run(REDIRECT_CONF);
    all_ok(&c);
    assert!(
        get(&c, "tcp REDIRECT v6 br0")
            .saw
            .contains("nft: inet egressd tcp_redirect -> redirect_v6 -> REDIRECT")
    );
    let udp = &get(&c, "udp TPROXY v4 br0").saw;
    assert!(udp.contains("tproxy_prerouting -> intercept_v4 -> TPROXY 10.8.0.1:10900 mark 0x2a94"), "{udp}");
    assert!(get(&c, "kill switch v6 br0").saw.contains("nft: inet egressd kill_switch -> kill: DROP"));
    assert!(get(&c, "forged sources v4 br0").saw.contains("inet egressd rpfilter: DROP"));
    // Without iptables-save, iptables-nft's tables are read from nft: their
    // xt targets are opaque but still count as TPROXY/REDIRECT.
    let c = fw("", "", NFT_IPTABLES_NFT).run(REDIRECT_CONF);
    assert_eq!(get(&c, "udp TPROXY v4 br0").status, Status::Ok, "{c:#?}");
    assert_eq!(get(&c, "kill switch v4 br0").status, Status::Ok);
}

#[test]
fn tproxy_narrowed_v4_only_passes_and_v6_is_only_kill_switched() {
    for f in [fw(TPROXY4, TPROXY6, ""), fw("", "", TPROXY_NFT)] {
        let c = f.run(TPROXY_CONF);
        all_ok(&c);
        assert!(get(&c, "tcp TPROXY v4 br0").saw.contains("TPROXY 10.8.0.1:10900"));
        assert!(!c.iter().any(|c| c.name.starts_with("udp TPROXY v6")), "no v6 listener: no v6 intercept");
        let v6 = get(&c, "ipv6");
        assert!(v6.saw.contains("br0 fd08::1/64 but egressd has no IPv6 listen address"), "{}", v6.saw);
    }
    // A source outside intercept.sources is still killed (interface-scoped kill switch).
    let c = fw(TPROXY4, &without(TPROXY6, "-A FORWARD -i br0 -j EGRESSD_KILL"), "").run(TPROXY_CONF);
    assert_eq!(get(&c, "kill switch v6 br0").status, Status::Fail);
    let v6 = get(&c, "ipv6");
    assert_eq!(v6.status, Status::Fail);
    assert!(v6.saw.contains("it leaves natively"), "{}", v6.saw);
    let nft = fw("", "", &without(TPROXY_NFT, "ip6 daddr @reserved_v6 return")).run(TPROXY_CONF);
    assert_eq!(get(&nft, "ipv6").status, Status::Ok);
}

#[test]
fn docker_rules_around_the_new_rules_pass() {
    let c = fw(DOCKER, IP6TABLES, "").run(REDIRECT_CONF);
    all_ok(&c);
    assert!(get(&c, "kill switch v4 br0").saw.contains("before filter FORWARD, where Docker's ACCEPTs are"));
}

#[test]
fn old_filter_kill_switch_behind_dockers_accept_fails_naming_both_rules() {
    let c = fw(DOCKER_OLD, "", "").run(REDIRECT_CONF);
    let k = get(&c, "kill switch v4 br0");
    assert_eq!(k.status, Status::Fail);
    assert!(
        k.saw.contains("is accepted by `-A FORWARD -i br0 ! -o br0 -j ACCEPT` (filter FORWARD rule 5), before the kill switch `-A FORWARD -s 10.8.0.0/24 -j EGRESSD_KILL` (filter FORWARD rule 7)"),
        "{}",
        k.saw
    );
    assert_eq!(k.fix.as_deref(), Some("egressd rules --config FILE | sh -e"));
    // The old rules TPROXY replies of published UDP ports, and RETURN DNS to private resolvers.
    let p = get(&c, "published ports v4 br0");
    assert_eq!(p.status, Status::Fail);
    assert!(p.saw.contains("(UDP)") && p.saw.contains("-j TPROXY"), "{}", p.saw);
    let d = get(&c, "dns v4 br0");
    assert!(d.saw.contains("10.255.255.53:53") && d.saw.contains("-d 10.0.0.0/8 -j RETURN"), "{}", d.saw);
    assert_eq!(get(&c, "forged sources v4 br0").status, Status::Warn);
    // Without Docker's ACCEPT, the old kill switch is reached first, but it
    // RETURNs DNS to a private resolver: only the FORWARD policy drops that.
    let no_accept = without(DOCKER_OLD, "-A FORWARD -i br0 ! -o br0 -j ACCEPT");
    let k = get(&fw(&no_accept, "", "").run(REDIRECT_CONF), "kill switch v4 br0").clone();
    assert_eq!(k.status, Status::Warn, "{}", k.line());
    assert!(
        k.saw.contains("UDP to 10.255.255.53:53") && k.saw.contains("policy of filter FORWARD"),
        "{}",
        k.saw
    );
    // With that fixed too, it is a warn naming filter FORWARD and the fix that moves it.
    let c = fw(&without(&no_accept, "-A EGRESSD_KILL -d 10.0.0.0/8 -j RETURN"), "", "").run(REDIRECT_CONF);
    let k = get(&c, "kill switch v4 br0");
    assert_eq!(k.status, Status::Warn, "{}", k.line());
    assert!(
        k.saw.contains("but it is in filter FORWARD (`-A FORWARD -s 10.8.0.0/24 -j EGRESSD_KILL`"),
        "{}",
        k.saw
    );
    assert!(k.fix.as_deref().is_some_and(|f| f.contains("--delete | sh -e ; egressd rules")));
}

#[test]
fn kill_switch_faults_are_named() {
    // The mangle FORWARD jump deleted on a Docker host: Docker's ACCEPT lets it out.
    let c = fw(&without(DOCKER, "-A FORWARD -i br0 -j EGRESSD_KILL"), IP6TABLES, "").run(REDIRECT_CONF);
    let k = get(&c, "kill switch v4 br0");
    assert_eq!(k.status, Status::Fail);
    assert!(k.saw.contains("accepted by `-A FORWARD -i br0 ! -o br0 -j ACCEPT`"), "{}", k.saw);
    assert_eq!(get(&c, "kill switch v6 br0").status, Status::Ok);
    // DNS to a private resolver RETURNed as reserved before the port-53 DROP.
    let late = IPTABLES.replace("-A EGRESSD_KILL -p udp -m udp --dport 53 -j DROP\n", "").replace(
        "-A EGRESSD_KILL -j DROP",
        "-A EGRESSD_KILL -p udp -m udp --dport 53 -j DROP\n-A EGRESSD_KILL -j DROP",
    );
    let k = get(&fw(&late, IP6TABLES, "").run(REDIRECT_CONF), "kill switch v4 br0").clone();
    assert!(k.saw.contains("UDP to 10.255.255.53:53") && k.saw.contains("nothing drops it"), "{}", k.saw);
    // An unknown match is never trusted to drop, and an unknown ACCEPT may let it out.
    let maybe = IPTABLES
        .replace("-A FORWARD -i br0 -j EGRESSD_KILL", "-A FORWARD -i br0 -m mark --mark 0x1 -j EGRESSD_KILL");
    assert_eq!(get(&fw(&maybe, IP6TABLES, "").run(REDIRECT_CONF), "kill switch v4 br0").status, Status::Fail);
    let nft = NFT_EGRESSD.replace(
        "\t\tiifname \"br0\" jump kill",
        "\t\tiifname \"br0\" meta mark 0x1 accept\n\t\tiifname \"br0\" jump kill",
    );
    // An accept ends its base chain: one that may match ahead of the jump may skip the kill switch.
    assert_eq!(get(&fw("", "", &nft).run(REDIRECT_CONF), "kill switch v4 br0").status, Status::Fail);
    let nft = NFT_EGRESSD.replace("iifname \"br0\" jump kill", "iifname \"br9\" jump kill");
    assert_eq!(get(&fw("", "", &nft).run(REDIRECT_CONF), "kill switch v6 br0").status, Status::Fail);
}

#[test]
fn published_ports_need_the_reply_return() {
    let c = fw(&without(IPTABLES, "--ctdir REPLY -j RETURN"), IP6TABLES, "").run(REDIRECT_CONF);
    let p = get(&c, "published ports v4 br0");
    assert_eq!(p.status, Status::Fail);
    assert!(
        p.saw.contains("(TCP)") && p.saw.contains("`-A EGRESSD_KILL -j DROP`") && p.saw.contains("REPLY"),
        "{}",
        p.saw
    );
    assert_eq!(p.fix.as_deref(), Some("egressd rules --config FILE | sh -e"));
    assert_eq!(get(&c, "published ports v6 br0").status, Status::Ok);
    let c = fw("", "", &without(NFT_EGRESSD, "ct direction reply ct status dnat return")).run(REDIRECT_CONF);
    assert_eq!(get(&c, "published ports v6 br0").status, Status::Fail);
    // Without the RETURN first in the TPROXY chain, TPROXY takes the replies of published UDP ports.
    let c = fw(
        &IPTABLES.replace("-A EGRESSD_TPROXY -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN\n", ""),
        IP6TABLES,
        "",
    )
    .run(REDIRECT_CONF);
    let p = get(&c, "published ports v4 br0");
    assert!(
        p.saw.contains("(UDP)") && p.saw.contains("is taken by") && p.saw.contains("status DNAT"),
        "{}",
        p.saw
    );
    assert_eq!(get(&c, "stranger replies v4 br0").status, Status::Ok);
}

#[test]
fn dns_and_intercept_faults_are_named() {
    // Port 53 no longer ahead of the reserved RETURNs: private resolvers are missed.
    let c = fw(&without(IPTABLES, "-A EGRESSD_TPROXY -p udp -m udp --dport 53"), IP6TABLES, "")
        .run(REDIRECT_CONF);
    let d = get(&c, "dns v4 br0");
    assert_eq!(d.status, Status::Fail);
    assert!(
        d.saw.contains("UDP to 10.255.255.53:53")
            && d.saw.contains("-d 10.0.0.0/8 -j RETURN` (mangle EGRESSD_TPROXY rule 4) returns it first"),
        "{}",
        d.saw
    );
    assert_eq!(get(&c, "udp TPROXY v4 br0").status, Status::Ok);
    let c = fw(IPTABLES, IP6TABLES, "").run(&REDIRECT_CONF.replace("Redirect", "Tproxy"));
    let t = get(&c, "tcp TPROXY v4 br0");
    assert!(
        t.saw.contains("intercept.tcp is Redirect") || t.saw.contains("where TPROXY is wanted"),
        "{}",
        t.saw
    );
    let port = fw(&IPTABLES.replace("--on-port 10900", "--on-port 10901"), IP6TABLES, "").run(REDIRECT_CONF);
    assert!(get(&port, "udp TPROXY v4 br0").saw.contains("but egressd listens on 10.8.0.1:10900"));
    let mark = fw(IPTABLES, &IP6TABLES.replace("0x2a94/0x2a94", "0x1/0x1"), "").run(REDIRECT_CONF);
    assert!(get(&mark, "udp TPROXY v6 br0").saw.contains("TPROXY marks 0x1, but intercept.mark is 10900"));
    let nft = fw("", "", &NFT_EGRESSD.replace("redirect to :10900", "redirect to :80")).run(REDIRECT_CONF);
    assert!(get(&nft, "tcp REDIRECT v4 br0").saw.contains("REDIRECT to port 80, but egressd listens"));
    // The article's hand-made rules (no chain, no interface) still count.
    let hand = "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 10.8.0.0/24 -p udp -j TPROXY --on-port 10900 --on-ip 10.8.0.1 --tproxy-mark 0x2a94/0x2a94\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:MYPROXY - [0:0]\n-A PREROUTING -s 10.8.0.0/24 -p tcp -j MYPROXY\n-A MYPROXY -d 10.0.0.0/8 -j RETURN\n-A MYPROXY -p tcp -m comment --comment \"to egressd\" -j REDIRECT --to-ports 10900\nCOMMIT\n";
    let c = fw(hand, "", "").run(REDIRECT_CONF);
    assert_eq!(get(&c, "udp TPROXY v4 br0").status, Status::Ok);
    assert_eq!(get(&c, "tcp REDIRECT v4 br0").status, Status::Ok);
}

#[test]
fn forged_sources_and_dns_path() {
    let c = fw(&without(IPTABLES, "EGRESSD_RPF"), IP6TABLES, "").run(REDIRECT_CONF);
    assert_eq!(get(&c, "forged sources v4 br0").status, Status::Warn);
    let mut f = fw(&without(IPTABLES, "EGRESSD_RPF"), IP6TABLES, "");
    f.rp_strict = vec!["br0".into()];
    assert!(get(&f.run(REDIRECT_CONF), "forged sources v4 br0").saw.contains("rp_filter = 1"));
    let d = get(&c, "dns path");
    assert_eq!(d.status, Status::Ok);
    assert!(
        d.saw.contains("this host's 10.255.255.53") && d.saw.contains("dns.upstream 192.0.2.53:53"),
        "{}",
        d.saw
    );
    let mut f = fw(IPTABLES, IP6TABLES, "");
    f.upstream_default = true;
    let c = f.run(r#"listen: ["10.8.0.1:10900", "[fd08::1]:10900"]"#);
    let d = get(&c, "dns path");
    assert_eq!(d.status, Status::Warn, "{}", d.line());
    assert!(d.saw.contains("dns.upstream 1.1.1.1:53") && d.saw.contains("names only 10.255.255.53 knows"));
    let r = parse_resolv("# x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nsearch lan\nnameserver bogus\n");
    assert_eq!(r.len(), 2);
}

#[test]
fn parsers_take_garbage() {
    // Found by fuzzing: a rule ending in `-j` with no target.
    crate::doctor::fuzz_firewall(
        "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.0.0.0/8 -j\n-A PREROUTING -g\n",
    );
    // Truncated `ct status` forms and conntrack options without values.
    let ct = "table inet x {\n chain y {\n ct status &\n ct status\n ct status & dnat ==\n ct status !\n }\n}\n*mangle\n-A X -m conntrack --ctstatus\n-A X --ctstate\n";
    for junk in
        ["", "}}}}", "{{{{", "table", "table inet x {\n chain y {\n type\n", "-A", "*", "\u{0}\u{ff}", ct]
    {
        let mut rs = Ruleset::default();
        add_nft(&mut rs, junk, [false, false]);
        add_iptables(&mut rs, junk, false);
        let _ = parse_ip_rules(junk);
        let _ = parse_ip_addr(junk);
        let _ = parse_proc_net(junk);
        let _ = http_status(junk.as_bytes());
        crate::doctor::fuzz_firewall(junk);
    }
}

#[test]
fn check_line_format() {
    let c = Check::fail("ip rule v4", "no rule", "ip rule add fwmark 10900/10900 lookup 10900");
    assert_eq!(
        c.line(),
        "FAIL ip rule v4               no rule; fix: ip rule add fwmark 10900/10900 lookup 10900"
    );
    assert!(Check::ok("x", "y").line().starts_with("ok   x"));
}

#[test]
fn redirect_needs_a_listener_on_each_interfaces_primary_address() {
    // Docker's br-<id> bridges matched by br-+, egressd listening on br0 only.
    let settings = settings(r#"listen: ["10.8.0.1:10900"], intercept: (interfaces: ["br0", "br-+"])"#);
    let text =
        format!("{IP_ADDR}\n7: br-1a2b    inet 172.18.0.1/16 brd 172.18.255.255 scope global br-1a2b\\ x\n");
    let addrs = parse_ip_addr(&text);
    let scope = crate::rules::host::scope(&settings, &addrs).unwrap();
    let ipt = IPTABLES.replace("-i br0", "-i br-+");
    let mut rs = Ruleset::default();
    add_iptables(&mut rs, &ipt, false);
    add_iptables(&mut rs, IPTABLES, false);
    let input = FwInput {
        settings: &settings,
        scope: &scope,
        addrs: &addrs,
        rs: &rs,
        resolvers: Vec::new(),
        upstream_default: false,
        rp_strict: Vec::new(),
        fix: "F".into(),
    };
    let c = firewall_checks(&input);
    assert_eq!(get(&c, "tcp REDIRECT v4 br0").status, Status::Ok);
    let t = get(&c, "tcp REDIRECT v4 br-+");
    assert_eq!(t.status, Status::Fail, "{}", t.line());
    assert!(t.saw.contains("from br-1a2b to its primary address 172.18.0.1:10900"), "{}", t.saw);
    assert_eq!(get(&c, "udp TPROXY v4 br-+").status, Status::Ok, "TPROXY goes to the listen address itself");
}

#[test]
fn statements_are_not_mistaken_for_matches() {
    // A kill switch that logs, counts and sets a conntrack mark still drops for sure.
    let nft = NFT_EGRESSD.replace(
        "\t\tdrop\n\t}",
        "\t\tct mark set 0x1 counter packets 3 bytes 180 log prefix \"egressd kill: \" level info drop\n\t}",
    );
    let c = fw("", "", &nft).run(REDIRECT_CONF);
    assert_eq!(get(&c, "kill switch v4 br0").status, Status::Ok, "{c:#?}");
    // `limit` is a real match: a drop behind it is not trusted.
    let nft = NFT_EGRESSD.replace("\t\tdrop\n\t}", "\t\tlimit rate 10/second drop\n\t}");
    assert_eq!(get(&fw("", "", &nft).run(REDIRECT_CONF), "kill switch v4 br0").status, Status::Fail);
    let ipt = IPTABLES.replace(
        "-A EGRESSD_KILL -j DROP",
        "-A EGRESSD_KILL -m comment --comment \"the end\" -j LOG --log-prefix \"kill \"\n-A EGRESSD_KILL -j DROP",
    );
    assert_eq!(get(&fw(&ipt, IP6TABLES, "").run(REDIRECT_CONF), "kill switch v4 br0").status, Status::Ok);
}

// ---------------------------------------------------------------- answers to strangers

#[test]
fn previous_rules_let_answers_to_strangers_out() {
    // iptables: the kill switch's bare REPLY RETURN lets them out, v4 and v6.
    let c = fw(PREV_IPTABLES, PREV_IP6TABLES, "").run(REDIRECT_CONF);
    for (fam, tool) in [("v4", ""), ("v6", "ip6tables ")] {
        let a = get(&c, &format!("stranger replies {fam} br0"));
        assert_eq!(a.status, Status::Fail, "{}", a.line());
        assert!(
            a.saw.contains("UDP to ")
                && a.saw.contains("an answer to a remote that wrote first")
                && a.saw.contains(&format!(
                    "`-A EGRESSD_KILL -m conntrack --ctdir REPLY -j RETURN` ({tool}mangle EGRESSD_KILL rule 1) lets it out"
                ))
                && a.saw.contains("from the container's own address"),
            "{}",
            a.saw
        );
        assert_eq!(a.fix.as_deref(), Some("egressd rules --config FILE | sh -e"));
        // Published ports work under the old rules, and everything else passes.
        assert_eq!(get(&c, &format!("published ports {fam} br0")).status, Status::Ok);
    }
    let fails: Vec<&str> = c.iter().filter(|c| c.status != Status::Ok).map(|c| c.name.as_str()).collect();
    assert_eq!(fails, ["stranger replies v4 br0", "stranger replies v6 br0"]);
    // nft: the same with `ct direction reply return`.
    let c = fw("", "", PREV_NFT).run(REDIRECT_CONF);
    let a = get(&c, "stranger replies v6 br0");
    assert_eq!(a.status, Status::Fail, "{}", a.line());
    assert!(a.saw.contains("`ct direction reply return` (inet egressd kill) lets it out"), "{}", a.saw);
    let fails: Vec<&str> = c.iter().filter(|c| c.status != Status::Ok).map(|c| c.name.as_str()).collect();
    assert_eq!(fails, ["stranger replies v4 br0", "stranger replies v6 br0"]);
    // The new rules, both backends: every check passes (see *_passes_every_check).
    for c in [fw(IPTABLES, IP6TABLES, "").run(REDIRECT_CONF), fw("", "", NFT_EGRESSD).run(REDIRECT_CONF)] {
        assert_eq!(get(&c, "stranger replies v6 br0").status, Status::Ok);
    }
}

#[test]
fn answers_to_strangers_with_tproxy_tcp_and_narrowed_sources() {
    for f in [fw(TPROXY4, TPROXY6, ""), fw("", "", TPROXY_NFT)] {
        let c = f.run(TPROXY_CONF);
        let a = get(&c, "stranger replies v4 br0");
        assert_eq!(a.status, Status::Ok, "{}", a.line());
        // Sources outside intercept.sources are on br0 too: not intercepted, so the kill switch drops them.
        assert!(a.saw.contains("DROP"), "{}", a.saw);
        assert_eq!(get(&c, "stranger replies v6 br0").status, Status::Ok);
    }
}

/// The conntrack forms egressd and Docker write, and others an operator
/// might: only a reply of a DNAT'd connection may pass.
#[test]
fn conntrack_forms_are_modelled() {
    let kill = "-A EGRESSD_KILL -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN";
    let strangers =
        |ipt: &str| get(&fw(ipt, IP6TABLES, "").run(REDIRECT_CONF), "stranger replies v4 br0").clone();
    let published =
        |ipt: &str| get(&fw(ipt, IP6TABLES, "").run(REDIRECT_CONF), "published ports v4 br0").clone();
    for (rule, ok) in [
        // DNAT alone (any direction) or in a state list: replies without DNAT still meet the DROP.
        ("-A EGRESSD_KILL -m conntrack --ctstate DNAT -j RETURN", true),
        ("-A EGRESSD_KILL -m conntrack --ctdir REPLY --ctstate DNAT -j RETURN", true),
        // Docker's and the usual stateful forms let any reply out.
        ("-A EGRESSD_KILL -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", false),
        ("-A EGRESSD_KILL -m state --state ESTABLISHED -j RETURN", false),
        ("-A EGRESSD_KILL -m conntrack --ctstatus SEEN_REPLY -j RETURN", false),
        ("-A EGRESSD_KILL -m conntrack --ctstate ESTABLISHED,DNAT -j RETURN", false),
        // What doctor cannot judge is never trusted.
        ("-A EGRESSD_KILL -m conntrack --ctstate DNAT --ctorigdst 10.0.0.0/8 -j RETURN", true),
        ("-A EGRESSD_KILL -m conntrack --ctstatus ASSURED -j RETURN", false),
    ] {
        let a = strangers(&IPTABLES.replace(kill, rule));
        assert_eq!(a.status == Status::Ok, ok, "{rule}: {}", a.line());
        if !ok {
            assert!(a.saw.contains(&format!("`{rule}`")), "{}", a.saw);
        }
    }
    // `! --ctstate DNAT`: published replies are dropped, and doctor says so.
    let p = published(&IPTABLES.replace(kill, "-A EGRESSD_KILL -m conntrack ! --ctstate DNAT -j RETURN"));
    assert_eq!(p.status, Status::Fail, "{}", p.line());
    // nft: `ct status` as nft prints it.
    let nft_kill = "ct direction reply ct status dnat return";
    for (rule, ok) in [
        ("ct direction reply ct status & dnat == dnat return", true),
        ("ct direction reply ct status snat,dnat return", false),
        ("ct direction reply ct status ! dnat return", false),
        ("ct direction reply ct status != dnat return", false),
        ("ct state established,related return", false),
        ("ct status dnat return", true),
    ] {
        let c = fw("", "", &NFT_EGRESSD.replace(nft_kill, rule)).run(REDIRECT_CONF);
        let a = get(&c, "stranger replies v4 br0");
        assert_eq!(a.status == Status::Ok, ok, "{rule}: {}", a.line());
    }
    let c = fw("", "", &NFT_EGRESSD.replace(nft_kill, "ct direction reply ct status ! dnat return"))
        .run(REDIRECT_CONF);
    assert_eq!(get(&c, "published ports v4 br0").status, Status::Fail);
}
