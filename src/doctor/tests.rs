//! Fixtures: real output of `ip`, `iptables-save`, `ip6tables-save` and
//! `nft list ruleset` after `egressd rules` (both backends) for the
//! netns-tests config, taken in a test namespace (iptables 1.8.9 nf_tables,
//! nft 1.0.6); edits of them stand for the broken setups.

use std::net::SocketAddr;

use super::checks::judge_rules;
use super::firewall::{Hook, IptRule, Want, ipt_check, parse_iptables_save};
use super::nft::{nft_check, parse_nft};
use super::parse::*;
use super::{Check, Status};

const IPTABLES: &str = include_str!("fixtures/iptables-save.txt");
const IP6TABLES: &str = include_str!("fixtures/ip6tables-save.txt");
const NFT_EGRESSD: &str = include_str!("fixtures/nft-egressd.txt");
const NFT_IPTABLES_NFT: &str = include_str!("fixtures/nft-iptables-nft.txt");
const IP_ADDR: &str = include_str!("fixtures/ipaddr.txt");
const IP_RULE: &str = include_str!("fixtures/iprule.txt");
const ROUTE4: &str = include_str!("fixtures/route4.txt");
const ROUTE6: &str = include_str!("fixtures/route6.txt");
const SNMP: &str = include_str!("fixtures/snmp.txt");

fn want_v4() -> Want {
    Want {
        v6: false,
        sources: vec!["10.8.0.0/24".parse().unwrap()],
        listen: vec!["10.8.0.1:10900".parse().unwrap()],
        mark: 10900,
    }
}

fn want_v6() -> Want {
    Want {
        v6: true,
        sources: vec!["fd08::/64".parse().unwrap()],
        listen: vec!["[fd08::1]:10900".parse().unwrap()],
        mark: 10900,
    }
}

fn without(text: &str, needle: &str) -> String {
    text.lines().filter(|l| !l.contains(needle)).collect::<Vec<_>>().join("\n")
}

fn ipt(text: &str) -> Vec<IptRule> {
    parse_iptables_save(text)
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
    assert_eq!(snmp_udp_noports(SNMP), Some(42));
    assert_eq!(snmp_udp_noports("Udp: InDatagrams\nUdp: 1\n"), None);
    assert_eq!(snmp_udp_noports(""), None);
    let snmp6 =
        "Udp6InDatagrams                 \t12\nUdp6NoPorts                     \t7\nUdpLite6NoPorts \t0\n";
    assert_eq!(snmp6_udp_noports(snmp6), Some(7));
    assert_eq!(snmp6_udp_noports("Udp6NoPorts x"), None);
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

// ---------------------------------------------------------------- iptables

#[test]
fn iptables_install_is_recognised() {
    let v4 = ipt(IPTABLES);
    let how = ipt_check(&v4, Hook::TcpRedirect, &want_v4()).unwrap();
    assert!(how.contains("nat PREROUTING -s 10.8.0.0/24 -> EGRESSD -> REDIRECT"), "{how}");
    let how = ipt_check(&v4, Hook::UdpTproxy, &want_v4()).unwrap();
    assert!(how.contains("TPROXY 10.8.0.1:10900 mark 0x2a94"), "{how}");
    ipt_check(&v4, Hook::Kill, &want_v4()).unwrap();
    let v6 = ipt(IP6TABLES);
    for h in [Hook::TcpRedirect, Hook::UdpTproxy, Hook::Kill] {
        ipt_check(&v6, h, &want_v6()).unwrap();
    }
    // A host source inside the intercepted prefix is covered too.
    let mut one = want_v4();
    one.sources = vec!["10.8.0.12/32".parse().unwrap()];
    ipt_check(&v4, Hook::UdpTproxy, &one).unwrap();
    // TCP TPROXY was not installed (REDIRECT was).
    assert!(ipt_check(&v4, Hook::TcpTproxy, &want_v4()).is_err());
}

#[test]
fn iptables_missing_udp_tproxy_is_named() {
    let jump_gone = ipt(&without(IPTABLES, "-A PREROUTING -s 10.8.0.0/24 -p udp"));
    let e = ipt_check(&jump_gone, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert_eq!(e, "no mangle PREROUTING rule sends UDP from 10.8.0.0/24 to TPROXY");
    let target_gone = ipt(&without(IPTABLES, "-j TPROXY"));
    let e = ipt_check(&target_gone, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert!(e.contains("mangle EGRESSD_UDP") && e.contains("-j TPROXY --on-port 10900"), "{e}");
    // TCP is unaffected.
    ipt_check(&target_gone, Hook::TcpRedirect, &want_v4()).unwrap();
    let kill_gone = ipt(&without(IPTABLES, "-A FORWARD"));
    assert!(ipt_check(&kill_gone, Hook::Kill, &want_v4()).unwrap_err().contains("filter FORWARD"));
}

#[test]
fn iptables_wrong_parameters_are_named() {
    let port = ipt(&IPTABLES.replace("--on-port 10900", "--on-port 10901"));
    let e = ipt_check(&port, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert!(e.contains("--on-port 10901") && e.contains("10.8.0.1:10900"), "{e}");
    let mark = ipt(&IPTABLES.replace("0x2a94/0x2a94", "0x1/0x1"));
    let e = ipt_check(&mark, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert!(e.contains("marks 0x1/0x1") && e.contains("intercept.mark is 10900"), "{e}");
    let redirect = ipt(&IPTABLES.replace("--to-ports 10900", "--to-ports 80"));
    assert!(ipt_check(&redirect, Hook::TcpRedirect, &want_v4()).unwrap_err().contains("--to-ports 80"));
}

#[test]
fn iptables_article_form_is_recognised() {
    // The article's hand-made rules: a chain for TCP, TPROXY straight from PREROUTING.
    let text = "*mangle\n\
-A PREROUTING -s 10.8.0.0/24 -p udp -j TPROXY --on-port 10900 --on-ip 10.8.0.1 --tproxy-mark 0x2a94/0x2a94\n\
COMMIT\n*nat\n:MYPROXY - [0:0]\n\
-A PREROUTING -s 10.8.0.0/24 -p tcp -j MYPROXY\n\
-A MYPROXY -d 10.0.0.0/8 -j RETURN\n\
-A MYPROXY -p tcp -m comment --comment \"to egressd\" -j REDIRECT --to-ports 10900\nCOMMIT\n";
    let r = ipt(text);
    assert_eq!(r.last().unwrap().args.iter().filter(|a| *a == "to egressd").count(), 1);
    ipt_check(&r, Hook::UdpTproxy, &want_v4()).unwrap();
    ipt_check(&r, Hook::TcpRedirect, &want_v4()).unwrap();
    assert!(ipt_check(&r, Hook::Kill, &want_v4()).is_err());
    // A negated source never counts.
    let neg = ipt(
        "*mangle\n-A PREROUTING ! -s 10.8.0.0/24 -p udp -j TPROXY --on-port 10900 --tproxy-mark 0x2a94\n",
    );
    assert!(ipt_check(&neg, Hook::UdpTproxy, &want_v4()).is_err());
}

// ---------------------------------------------------------------- nft

#[test]
fn nft_backend_is_recognised() {
    let rs = parse_nft(NFT_EGRESSD);
    assert!(rs.has_table("inet egressd"));
    for (w, hooks) in [
        (want_v4(), [Hook::TcpRedirect, Hook::UdpTproxy, Hook::Kill]),
        (want_v6(), [Hook::TcpRedirect, Hook::UdpTproxy, Hook::Kill]),
    ] {
        for h in hooks {
            let how = nft_check(&rs, h, &w).unwrap_or_else(|e| panic!("{h:?} v6={}: {e}", w.v6));
            assert!(how.starts_with("inet egressd "), "{how}");
        }
    }
    let how = nft_check(&rs, Hook::UdpTproxy, &want_v6()).unwrap();
    assert!(how.contains("tproxy to [fd08::1]:10900 mark 0x2a94"), "{how}");
    assert!(nft_check(&rs, Hook::TcpTproxy, &want_v4()).is_err());
    // The multi-line set was read whole.
    let mut far = want_v4();
    far.sources = vec!["10.9.0.0/24".parse().unwrap()];
    assert!(nft_check(&rs, Hook::UdpTproxy, &far).is_err());
}

#[test]
fn nft_missing_or_wrong_rules_are_named() {
    let no_udp = parse_nft(&without(NFT_EGRESSD, "meta l4proto udp"));
    let e = nft_check(&no_udp, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert_eq!(e, "no nft prerouting rule sends udp from 10.8.0.0/24 to tproxy");
    nft_check(&no_udp, Hook::TcpRedirect, &want_v4()).unwrap();
    let mark = parse_nft(&NFT_EGRESSD.replace("0x00002a94", "0x00000001"));
    let e = nft_check(&mark, Hook::UdpTproxy, &want_v4()).unwrap_err();
    assert!(e.contains("tproxy marks 0x1"), "{e}");
    let port = parse_nft(&NFT_EGRESSD.replace("redirect to :10900", "redirect to :10901"));
    assert!(nft_check(&port, Hook::TcpRedirect, &want_v6()).unwrap_err().contains(":10901"));
}

#[test]
fn nft_view_of_iptables_nft_rules_is_not_mistaken() {
    // iptables-nft's rules, as nft shows them: the targets are `xt` opaque
    // and EGRESSD_KILL is no base chain, so nft finds nothing of its own
    // (the iptables-save side judges them).
    let rs = parse_nft(NFT_IPTABLES_NFT);
    assert!(!rs.has_table("inet egressd"));
    for h in [Hook::TcpRedirect, Hook::UdpTproxy, Hook::Kill] {
        assert!(nft_check(&rs, h, &want_v4()).is_err(), "{h:?}");
    }
}

#[test]
fn parsers_take_garbage() {
    for junk in ["", "}}}}", "{{{{", "table", "table inet x {\n chain y {\n type\n", "-A", "*", "\u{0}\u{ff}"]
    {
        let _ = parse_nft(junk);
        let _ = parse_iptables_save(junk);
        let _ = parse_ip_rules(junk);
        let _ = parse_ip_addr(junk);
        let _ = parse_proc_net(junk);
        let _ = http_status(junk.as_bytes());
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
