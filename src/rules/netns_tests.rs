//! Privileged tests: the generated scripts, run for real with `sh -e` in
//! throwaway network namespaces (created here, deleted on drop; nothing
//! runs in the caller's namespace). Ignored by default (an unprivileged
//! `cargo test` shows them as ignored, never as passed); run them as root
//! with iproute2, iptables and nft: `cargo test -- --include-ignored`
//! (scripts/test.sh does, as root). Run without those, they fail.
//!
//! Each case: install twice (the second run changes nothing, removes
//! nothing, no rule appears twice), delete twice (back to the state before
//! install), and delete on a namespace where nothing was installed. Then
//! convergence: the previous version's install (its exact script, kept in
//! `fixtures/prev-*.sh`) or another config's, followed by this install,
//! leaves what a fresh install leaves.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::tests::{DUAL, MINIMAL, V6_NO_LISTENER, br0};
use super::{Action, Backend, Scope, script};
use crate::config::{DEMO_CONFIG, IfacePattern, Settings};

const BRIDGE_SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    let tools = Command::new("sh")
        .args([
            "-c",
            "command -v ip && command -v iptables-restore && command -v ip6tables-restore && command -v nft",
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    root && tools
}

/// A network namespace of our own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("egt-rules-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        let ns = Netns(name);
        // A real host's lo is up; `ip -6 route ... dev lo` needs it.
        ns.sh("ip link set lo up\n");
        // Make the tables and hook chains iptables-nft creates on first use
        // (and keeps when empty), so "before" compares with "after delete".
        ns.sh(
            "for t in iptables ip6tables; do for c in 'nat PREROUTING' 'mangle PREROUTING' 'mangle FORWARD' 'raw PREROUTING' 'filter FORWARD'; do \
             set -- $c; $t -w -t $1 -A $2 -j RETURN; $t -w -t $1 -D $2 -j RETURN; done; done\n",
        );
        ns
    }

    /// Runs a script with `sh -e` inside the namespace; panics on failure.
    fn sh(&self, text: &str) -> String {
        self.sh_err(text).0
    }

    /// [`Netns::sh`], with what the script wrote to stderr.
    fn sh_err(&self, text: &str) -> (String, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-e"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write script");
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "script failed in {}: {}\n--- stderr:\n{}\n--- script:\n{text}",
            self.0,
            out.status,
            stderr
        );
        (stdout, stderr)
    }

    /// Only netfilter (iptables of both families and nft), lines sorted:
    /// the order of jumps in a hook depends on which were already there.
    fn netfilter(&self) -> Vec<String> {
        let text = self.sh("iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; nft list ruleset\n");
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Everything the scripts may change but the bridge sysctl (which
    /// Delete leaves alone): netfilter, ip rules, routes.
    fn state(&self) -> String {
        self.sh("iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; nft list ruleset\n\
             ip rule; ip -6 rule; ip route show table all; ip -6 route show table all\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The lines only in `a` and only in `b`, for assertion messages.
fn diff(a: &str, b: &str) -> String {
    let only =
        |x: &str, y: &str| x.lines().filter(|l| !y.lines().any(|m| m == *l)).collect::<Vec<_>>().join("\n");
    format!("--- only before:\n{}\n--- only after:\n{}", only(a, b), only(b, a))
}

fn root_sysctl() -> Option<String> {
    std::fs::read_to_string(BRIDGE_SYSCTL).ok()
}

/// No rule (`-A` line of iptables-save, rule line of nft) appears twice.
#[track_caller]
fn assert_no_duplicates(state: &str) {
    let mut seen = HashSet::new();
    // (section number, header): iptables-save and ip6tables-save both have a
    // *filter; nft's chains of both families hold the same rules.
    let mut table = (0, "");
    for l in state.lines() {
        if l.starts_with('*') || l.starts_with("table ") || l.trim_start().starts_with("chain ") {
            table = (table.0 + 1, l);
        }
        let rule =
            l.starts_with("-A ") || l.contains(" drop") || l.contains(" tproxy ") || l.contains(" redirect ");
        if rule {
            assert!(seen.insert((table, l)), "{l:?} twice in {}:\n{state}", table.1);
        }
    }
}

fn check(config: &str, backend: Backend, expect: &[&str]) {
    let settings = Settings::parse("t.ron", config).expect("config parses");
    let install = script(&settings, &br0(), backend, Action::Install);
    let delete = script(&settings, &br0(), backend, Action::Delete);
    let root_before = root_sysctl();

    // Delete with nothing installed, twice: nothing changes.
    let ns = Netns::new();
    let pristine = ns.state();
    ns.sh(&delete);
    ns.sh(&delete);
    assert_eq!(ns.state(), pristine, "{backend:?}: delete on a clean namespace changed it");

    if backend == Backend::Nft {
        let program = install.split("nft -f - <<'EOF'\n").nth(1).unwrap().split("\nEOF\n").next().unwrap();
        ns.sh(&format!("nft -c -f - <<'EOF'\n{program}\nEOF\n"));
    }
    ns.sh(&install);
    let once = ns.state();
    let (_, removed) = ns.sh_err(&install);
    let twice = ns.state();
    assert_eq!(once, twice, "{backend:?}: a second install changed the state");
    assert!(!removed.contains("removing"), "{backend:?}: a second install removed rules:\n{removed}");
    assert_no_duplicates(&twice);
    let bridge = ns.sh(&format!("cat {BRIDGE_SYSCTL} 2>/dev/null || echo absent\n"));
    assert!(bridge == "0\n" || bridge == "absent\n", "{backend:?}: {BRIDGE_SYSCTL} is {bridge}");
    for line in expect {
        assert!(twice.lines().any(|l| l.trim() == *line), "{backend:?}: {line:?} not installed:\n{twice}");
    }
    ns.sh(&delete);
    let after = ns.state();
    assert!(after == pristine, "{backend:?}: delete left something:\n{}", diff(&pristine, &after));
    ns.sh(&delete);
    assert_eq!(ns.state(), pristine, "{backend:?}: a second delete changed the state");
    assert_eq!(root_sysctl(), root_before, "the caller's namespace sysctl changed");
}

const NEEDS: &str = "needs root, iproute2, iptables and nft (leave it ignored where they are missing)";

#[test]
#[ignore = "needs root: runs the rules scripts in network namespaces (cargo test -- --include-ignored)"]
fn iptables_scripts_in_a_netns() {
    assert!(privileged(), "{NEEDS}");
    check(
        MINIMAL,
        Backend::Iptables,
        &[
            "-A PREROUTING -i br0 -j EGRESSD",
            "-A PREROUTING -i br0 -j EGRESSD_TPROXY",
            "-A PREROUTING -i br0 -j EGRESSD_RPF",
            "-A FORWARD -i br0 -j EGRESSD_KILL",
            "-A EGRESSD -d 192.168.0.0/16 -j RETURN",
            "-A EGRESSD -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 10900",
            "-A EGRESSD -p tcp -j REDIRECT --to-ports 10900",
            "-A EGRESSD_TPROXY -p udp -m udp --dport 53 -j TPROXY --on-port 10900 --on-ip 10.8.0.1 --tproxy-mark 0x2a94/0x2a94",
            "-A EGRESSD_TPROXY -p udp -j TPROXY --on-port 10900 --on-ip 10.8.0.1 --tproxy-mark 0x2a94/0x2a94",
            "-A EGRESSD_KILL -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN",
            "-A EGRESSD_TPROXY -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN",
            "-A EGRESSD_KILL -p udp -m udp --dport 53 -j DROP",
            "-A EGRESSD_KILL -j DROP",
            "-A EGRESSD_RPF -m rpfilter --invert -j DROP",
            "32765:	from all fwmark 0x2a94/0x2a94 lookup 10900",
            "local default dev lo table 10900 scope host",
        ],
    );
    check(
        DEMO_CONFIG,
        Backend::Iptables,
        &[
            "-A EGRESSD_TPROXY -p udp -j TPROXY --on-port 10900 --on-ip fd08::1 --tproxy-mark 0x2a94/0x2a94",
            "-A EGRESSD_KILL -d ff00::/8 -j RETURN",
            "-A FORWARD -i br0 -j EGRESSD_KILL",
            "local default dev lo table 10900 metric 1024 pref medium",
        ],
    );
    check(
        DUAL,
        Backend::Iptables,
        &[
            "-A PREROUTING -s 10.8.0.0/24 -i br0 -j EGRESSD_TPROXY",
            "-A EGRESSD_TPROXY -p tcp -j TPROXY --on-port 10901 --on-ip fd08::1 --tproxy-mark 0x7/0x7",
            "-A EGRESSD_KILL -d 2001:db8:abc::/48 -j RETURN",
        ],
    );
    check(V6_NO_LISTENER, Backend::Iptables, &["-A FORWARD -i br0 -j EGRESSD_KILL"]);
}

#[test]
#[ignore = "needs root: runs the rules scripts in network namespaces (cargo test -- --include-ignored)"]
fn nft_scripts_in_a_netns() {
    assert!(privileged(), "{NEEDS}");
    check(
        MINIMAL,
        Backend::Nft,
        &[
            "iifname \"br0\" meta nfproto ipv4 jump redirect_v4",
            "iifname \"br0\" meta nfproto ipv4 jump intercept_v4",
            "ct direction reply ct status dnat return",
            "meta l4proto tcp redirect to :10900",
            "udp dport 53 meta mark set meta mark | 0x00002a94 tproxy ip to 10.8.0.1:10900 accept",
            "meta l4proto udp meta mark set meta mark | 0x00002a94 tproxy ip to 10.8.0.1:10900 accept",
            "iifname \"br0\" jump kill",
            "meta l4proto { tcp, udp } th dport 53 drop",
            "32765:	from all fwmark 0x2a94/0x2a94 lookup 10900",
        ],
    );
    check(DEMO_CONFIG, Backend::Nft, &["iifname \"br0\" meta nfproto ipv6 jump redirect_v6"]);
    check(
        DUAL,
        Backend::Nft,
        &["meta l4proto tcp meta mark set meta mark | 0x00000007 tproxy ip6 to [fd08::1]:10901 accept"],
    );
    check(V6_NO_LISTENER, Backend::Nft, &["ip6 daddr @reserved_v6 return"]);
}

/// A config change between install and delete (other sources, other TCP
/// way), and a delete that knows no interface: every jump still goes.
#[test]
#[ignore = "needs root: runs the rules scripts in network namespaces (cargo test -- --include-ignored)"]
fn delete_after_config_change_in_a_netns() {
    assert!(privileged(), "{NEEDS}");
    let old = Settings::parse("t.ron", DUAL).expect("parses");
    let new_text =
        DUAL.replace("tcp: Tproxy", "tcp: Redirect").replace("\"10.8.0.0/24\", ", "\"10.8.1.0/24\", ");
    let new = Settings::parse("t.ron", &new_text).expect("parses");
    let ns = Netns::new();
    let pristine = ns.state();
    ns.sh(&script(&old, &br0(), Backend::Iptables, Action::Install));
    ns.sh(&script(&new, &br0(), Backend::Iptables, Action::Install));
    ns.sh(&script(&new, &Scope::default(), Backend::Iptables, Action::Delete));
    let after = ns.state();
    assert!(after == pristine, "left after a config change:\n{}", diff(&pristine, &after));
}

/// The previous version's install scripts, as it printed them for these
/// configs (`egressd rules` at commit 6b15148, scope br0).
const PREV_IPTABLES_MINIMAL: &str = include_str!("fixtures/prev-iptables-minimal.sh");
const PREV_IPTABLES_DUAL: &str = include_str!("fixtures/prev-iptables-dual.sh");
const PREV_NFT_MINIMAL: &str = include_str!("fixtures/prev-nft-minimal.sh");

/// `old` installed, then this install over it: the netfilter state is what
/// a fresh install gives, a re-run changes and removes nothing, and delete
/// still returns to pristine. Returns what the install over `old` removed.
fn converges(old: &str, new: &Settings, backend: Backend) -> String {
    let install = script(new, &br0(), backend, Action::Install);
    let fresh = Netns::new();
    fresh.sh(&install);
    let want = fresh.netfilter();
    drop(fresh);

    let ns = Netns::new();
    let pristine = ns.state();
    ns.sh(old);
    let (_, removed) = ns.sh_err(&install);
    let got = ns.netfilter();
    if got != want {
        let only = |a: &[String], b: &[String]| {
            a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>().join("\n")
        };
        panic!(
            "{backend:?}: not converged\n--- only after the upgrade:\n{}\n--- only in a fresh install:\n{}",
            only(&got, &want),
            only(&want, &got)
        );
    }
    assert_no_duplicates(&ns.state());
    let (_, again) = ns.sh_err(&install);
    assert_eq!(ns.netfilter(), want, "{backend:?}: a re-run changed the state");
    assert!(!again.contains("removing"), "{backend:?}: a re-run removed rules:\n{again}");
    ns.sh(&script(new, &Scope::default(), backend, Action::Delete));
    let after = ns.state();
    assert!(after == pristine, "{backend:?}: delete left something:\n{}", diff(&pristine, &after));
    removed
}

/// The upgrade this issue needs: over the previous version's rules (jumps
/// for conntrack ORIGINAL only, every REPLY exempt), only the new jumps and
/// exemptions remain.
#[test]
#[ignore = "needs root: runs the rules scripts in network namespaces (cargo test -- --include-ignored)"]
fn upgrade_from_the_previous_version_in_a_netns() {
    assert!(privileged(), "{NEEDS}");
    for (old, text) in [(PREV_IPTABLES_MINIMAL, MINIMAL), (PREV_IPTABLES_DUAL, DUAL)] {
        assert!(old.contains("--ctdir ORIGINAL -j EGRESSD_TPROXY"), "not the previous version's script");
        let new = Settings::parse("t.ron", text).expect("parses");
        let removed = converges(old, &new, Backend::Iptables);
        // The old jumps are named as they go, v4 and v6.
        for tool in ["iptables", "ip6tables"] {
            assert!(
                removed.lines().any(|l| l
                    .starts_with(&format!("egressd rules: removing {tool} -t mangle -A PREROUTING"))
                    && l.ends_with("-m conntrack --ctdir ORIGINAL -j EGRESSD_TPROXY")),
                "{removed}"
            );
        }
    }
    let new = Settings::parse("t.ron", MINIMAL).expect("parses");
    assert!(PREV_NFT_MINIMAL.contains("ct direction original jump intercept_v4"));
    converges(PREV_NFT_MINIMAL, &new, Backend::Nft);
    // The checks above compare with a fresh install; say what that is.
    let ns = Netns::new();
    ns.sh(&script(&new, &br0(), Backend::Iptables, Action::Install));
    let state = ns.state();
    assert!(
        !state.contains("ORIGINAL") && !state.contains("-m conntrack --ctdir REPLY -j RETURN"),
        "{state}"
    );
}

/// Config changes converge without removing the old setup first: other
/// sources and intercept.tcp switched, a family losing and gaining its
/// listener, more interfaces and fewer.
#[test]
#[ignore = "needs root: runs the rules scripts in network namespaces (cargo test -- --include-ignored)"]
fn config_changes_converge_in_a_netns() {
    assert!(privileged(), "{NEEDS}");
    let redirect =
        DUAL.replace("tcp: Tproxy", "tcp: Redirect").replace("\"10.8.0.0/24\", ", "\"10.8.1.0/24\", ");
    let pairs = [
        (DUAL, redirect.as_str()),
        (redirect.as_str(), DUAL),
        (MINIMAL, V6_NO_LISTENER),
        (V6_NO_LISTENER, MINIMAL),
    ];
    for backend in [Backend::Iptables, Backend::Nft] {
        for (a, b) in pairs {
            let old = Settings::parse("t.ron", a).expect("parses");
            let new = Settings::parse("t.ron", b).expect("parses");
            converges(&script(&old, &br0(), backend, Action::Install), &new, backend);
        }
    }
    // Interfaces: br0 and br-+ first, then br0 only.
    let both = Scope {
        interfaces: vec![IfacePattern::exact("br0"), IfacePattern::parse("br-+").expect("pattern")],
        ..br0()
    };
    let s = Settings::parse("t.ron", MINIMAL).expect("parses");
    let removed = converges(&script(&s, &both, Backend::Iptables, Action::Install), &s, Backend::Iptables);
    assert!(removed.contains("-i br-+ -j EGRESSD_KILL"), "{removed}");
}
