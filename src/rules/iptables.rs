//! The iptables/ip6tables backend.
//!
//! egressd's chains are (re)built with `iptables-restore --noflush`: a chain
//! declared there is created, or flushed if it exists, and refilled in one
//! commit per table, so a re-run never leaves a half-filled kill switch.
//! The jumps into them are added with `-C ... || -I ...` (once, first), and
//! then every other jump into the same chain from the same hook is deleted
//! (`prune`): one of an older config or an older egressd, whose spec
//! differs. New before old, so there is never a moment with neither (a
//! changed jump spec would otherwise stay beside the new one). Jumps into
//! chains this setup does not use (an older egressd's, the nat chain after
//! a switch to TPROXY, a family's intercept once it has no listener) go
//! too, and those chains with them: a re-run converges on what a fresh
//! install gives.
//! Every call waits for the xtables lock (`-w`): Docker and kube-proxy hold it often.
//! Delete removes every jump into egressd's chains whatever it names (so also
//! those of an older config or an older egressd), then the chains.
//!
//! Placement: the kill switch is in `mangle FORWARD` and the forged-source
//! drop in `raw PREROUTING`, tables Docker never writes to, so no ACCEPT that
//! Docker inserts into `filter FORWARD` (when it starts, restarts or creates
//! a network, before or after this script ran) is ever reached first.

use std::net::SocketAddr;

use super::{
    FamilyPlan, Out, Plan, bridge_sysctl, bridge_sysctl_note, forget_udp_conntrack, kill_only_note,
    policy_routing, policy_routing_delete,
};
use crate::config::TcpIntercept;
use crate::route::Cidr;

/// nat chain for TCP REDIRECT.
pub(super) const NAT_CHAIN: &str = "EGRESSD";
/// mangle chain for TPROXY (UDP, DNS, and TCP with `intercept.tcp: Tproxy`).
pub(super) const TPROXY_CHAIN: &str = "EGRESSD_TPROXY";
/// mangle FORWARD chain of the kill switch.
pub(super) const KILL_CHAIN: &str = "EGRESSD_KILL";
/// raw PREROUTING chain dropping forged sources.
pub(super) const RPF_CHAIN: &str = "EGRESSD_RPF";

/// Every (table, hook, chain) an install may jump from, this version's and
/// older ones' (mangle EGRESSD / EGRESSD_UDP, filter EGRESSD_KILL), for Delete.
/// Intercepts first, the kill switch last: nothing leaks meanwhile.
const ALL_JUMPS: [(&str, &str, &str); 7] = [
    ("nat", "PREROUTING", NAT_CHAIN),
    ("mangle", "PREROUTING", TPROXY_CHAIN),
    ("mangle", "PREROUTING", "EGRESSD"),
    ("mangle", "PREROUTING", "EGRESSD_UDP"),
    ("raw", "PREROUTING", RPF_CHAIN),
    ("mangle", "FORWARD", KILL_CHAIN),
    ("filter", "FORWARD", KILL_CHAIN),
];

/// The (table, hook, chain) of an older egressd, never written now: an
/// install removes their jumps (once its own are in) and the chains.
const OLDER_JUMPS: [(&str, &str, &str); 3] = [
    ("mangle", "PREROUTING", "EGRESSD"),
    ("mangle", "PREROUTING", "EGRESSD_UDP"),
    ("filter", "FORWARD", KILL_CHAIN),
];

/// The conntrack match of the replies left alone: those of connections
/// whose destination was rewritten on the way in (DNAT: Docker's published
/// ports). Written as `iptables -S` prints it. Replies of any other
/// connection (an answer to a remote that wrote to a container's full-cone
/// mapping first, a reply of an inbound connection that was not DNAT'd)
/// are intercepted or dropped like everything else a container sends.
pub(super) const PUBLISHED_REPLY: &str = "-m conntrack --ctstate DNAT --ctdir REPLY";

pub(super) fn install(plan: &Plan, out: &mut Out) {
    out.blank();
    helpers(out);
    for f in &plan.families {
        out.blank();
        out.comment("", format!("==== {} ({}) ====", f.family.name(), f.family.iptables()));
        chains(plan, f, out);
        kill_jumps(plan, f, out);
        if f.intercepts() {
            bridge_sysctl(f, out);
            policy_routing(plan, f, out);
        }
        intercept_jumps(plan, f, out);
        unused_chains(plan, f, out);
        if f.intercepts() {
            forget_udp_conntrack(f, out);
        }
    }
}

pub(super) fn delete(plan: &Plan, out: &mut Out) {
    out.blank();
    helpers(out);
    for f in &plan.families {
        let tool = f.family.iptables();
        out.blank();
        out.comment("", format!("==== {} ({tool}) ====", f.family.name()));
        out.comment(
            "",
            "Jumps first (intercepts, then the forged-source drop, the kill switch last: nothing leaks \
             meanwhile; also an older egressd's), then the chains.",
        );
        for (table, hook, chain) in ALL_JUMPS {
            out.line(format!("prune {tool} {table} {hook} {chain}"));
        }
        for (table, _, chain) in ALL_JUMPS {
            out.line(format!("drop_chain {tool} {table} {chain}"));
        }
        policy_routing_delete(plan, f, out);
        bridge_sysctl_note(f, out);
    }
}

/// The shell functions both actions use.
fn helpers(out: &mut Out) {
    out.comment("", "Rules read back from `iptables -S` are split into words below: never glob them.");
    out.line("set -f");
    out.comment(
        "",
        "prune TOOL TABLE HOOK CHAIN [KEEP...]: delete every rule of HOOK that jumps to CHAIN, whatever it \
         matches, except the KEEP ones (as `TOOL -S` prints them); a table the kernel lacks has none.",
    );
    out.line("prune() {");
    out.line(r#"	tool=$1 table=$2 hook=$3 chain=$4"#);
    out.line("	shift 4");
    out.line(r#"	"$tool" -w -t "$table" -S "$hook" 2>/dev/null | sed -n "s/^-A $hook \(.*-j $chain\)\$/\1/p" | while read -r rule; do"#);
    out.line(r#"		for keep in "$@"; do [ "$rule" = "$keep" ] && continue 2; done"#);
    out.line(r#"		echo "egressd rules: removing $tool -t $table -A $hook $rule" >&2"#);
    out.line(r#"		"$tool" -w -t "$table" -D "$hook" $rule"#);
    out.line("	done");
    out.line("}");
    out.comment("", "drop_chain TOOL TABLE CHAIN: flush and delete CHAIN if it exists.");
    out.line("drop_chain() {");
    out.line(r#"	if "$1" -w -t "$2" -n -L "$3" >/dev/null 2>&1; then "$1" -w -t "$2" -F "$3"; "$1" -w -t "$2" -X "$3"; fi"#);
    out.line("}");
}

/// `-A CHAIN -d C -j RETURN` for each of `cidrs`.
fn returns(chain: &str, cidrs: &[Cidr], out: &mut Out) {
    for c in cidrs {
        out.line(format!("-A {chain} -d {c} -j RETURN"));
    }
}

fn reserved_returns(f: &FamilyPlan, chain: &str, out: &mut Out) {
    out.comment(
        "",
        "Reserved ranges (this network, private, loopback, link-local, multicast): not the internet, left alone.",
    );
    returns(chain, &f.reserved, out);
}

fn bypass_returns(f: &FamilyPlan, chain: &str, out: &mut Out) {
    if !f.bypass.is_empty() {
        out.comment(
            "",
            "The config's bypass: destinations to reach directly (DNS included), not through a tunnel.",
        );
        returns(chain, &f.bypass, out);
    }
    if !f.bypass_covered.is_empty() {
        out.comment(
            "",
            format!("(bypass {}: already covered by the reserved ranges)", super::join(&f.bypass_covered)),
        );
    }
}

/// egressd's chains for one family, in one iptables-restore run.
fn chains(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let tool = f.family.iptables();
    out.comment(
        "",
        "(Re)build egressd's chains: each table's chains are flushed and refilled in one commit.",
    );
    out.line(format!("{tool}-restore -w --noflush <<'EOF'"));
    raw_table(out);

    out.line("*mangle");
    kill_chain(f, out);
    let Some(listen) = f.listener().filter(|_| f.intercepts()) else {
        out.line("COMMIT");
        out.line("EOF");
        return;
    };
    tproxy_chain(plan, f, listen, out);
    out.line("COMMIT");

    if plan.tcp == TcpIntercept::Redirect {
        nat_table(f, listen, out);
    }
    out.line("EOF");
}

/// The raw table: the forged-source drop.
fn raw_table(out: &mut Out) {
    out.line("*raw");
    out.comment(
        "",
        "A source the container interface has no route back to is forged (CAP_NET_RAW): dropped before \
         anything else sees it.",
    );
    out.line(format!(":{RPF_CHAIN} - [0:0]"));
    out.line(format!("-A {RPF_CHAIN} -m rpfilter --invert -j DROP"));
    out.line("COMMIT");
}

/// The kill switch, in the mangle table.
fn kill_chain(f: &FamilyPlan, out: &mut Out) {
    out.comment(
        "",
        "Kill switch (mangle FORWARD, where Docker never writes): what the containers would send past this \
         host — ICMP, other protocols, whatever the intercept leaves — is dropped ...",
    );
    out.line(format!(":{KILL_CHAIN} - [0:0]"));
    out.comment(
        "",
        "... except replies of connections DNAT'd into a container (published ports, docker -p); replies of \
         any other connection (an answer to a remote that wrote first to a container's mapping, an inbound \
         connection that was not published) go the way of everything else ...",
    );
    out.line(format!("-A {KILL_CHAIN} {PUBLISHED_REPLY} -j RETURN"));
    bypass_returns(f, KILL_CHAIN, out);
    out.comment("", "... never DNS, whatever resolver it asks (the intercept takes it, or nothing does) ...");
    out.line(format!("-A {KILL_CHAIN} -p udp --dport 53 -j DROP"));
    out.line(format!("-A {KILL_CHAIN} -p tcp --dport 53 -j DROP"));
    reserved_returns(f, KILL_CHAIN, out);
    if !f.intercepts() {
        kill_only_note(f, out, "");
    }
    out.comment("", "... and the rest would leave around the tunnels.");
    out.line(format!("-A {KILL_CHAIN} -j DROP"));
}

/// The TPROXY intercept to the family's first listener, in the mangle table.
fn tproxy_chain(plan: &Plan, f: &FamilyPlan, listen: SocketAddr, out: &mut Out) {
    let mark = plan.mark;
    let (ip, port) = (listen.ip(), listen.port());
    let tproxy = format!("--on-ip {ip} --on-port {port} --tproxy-mark {mark}/{mark}");
    if let Some(note) = f.listeners_note() {
        out.comment("", note);
    }
    let tcp_too = plan.tcp == TcpIntercept::Tproxy;
    out.comment(
        "",
        format!(
            "TPROXY (mangle: before nat and the routing decision) to egressd's transparent socket on {listen}, \
             destination unchanged, marked for the local route: UDP, as the article{}.",
            if tcp_too { ", and TCP" } else { "" }
        ),
    );
    out.line(format!(":{TPROXY_CHAIN} - [0:0]"));
    out.comment(
        "",
        "Every packet of the containers comes here; replies of published ports (DNAT'd into a container) are \
         left alone, while an answer to a remote that wrote first is intercepted like any datagram: egressd \
         sends it through the container's own session.",
    );
    out.line(format!("-A {TPROXY_CHAIN} {PUBLISHED_REPLY} -j RETURN"));
    bypass_returns(f, TPROXY_CHAIN, out);
    out.comment(
        "",
        "DNS to any resolver, private and local ones included, goes to egressd (and so through a tunnel).",
    );
    out.line(format!("-A {TPROXY_CHAIN} -p udp --dport 53 -j TPROXY {tproxy}"));
    if tcp_too {
        out.line(format!("-A {TPROXY_CHAIN} -p tcp --dport 53 -j TPROXY {tproxy}"));
    }
    out.comment("", "This host's own addresses (ssh to it, a service it offers the containers): left alone.");
    out.line(format!("-A {TPROXY_CHAIN} -m addrtype --dst-type LOCAL -j RETURN"));
    reserved_returns(f, TPROXY_CHAIN, out);
    out.comment(
        "",
        "The rest, to the internet: egressd reads each datagram's destination from IP_RECVORIGDSTADDR.",
    );
    out.line(format!("-A {TPROXY_CHAIN} -p udp -j TPROXY {tproxy}"));
    if tcp_too {
        out.line(format!("-A {TPROXY_CHAIN} -p tcp -j TPROXY {tproxy}"));
    }
}

/// The nat table: TCP by REDIRECT to the family's first listener.
fn nat_table(f: &FamilyPlan, listen: SocketAddr, out: &mut Out) {
    let port = listen.port();
    out.line("*nat");
    out.comment(
        "",
        format!(
            "TCP by REDIRECT, as the article (nat: each connection's first packet) to the incoming \
             interface's primary address, port {port}, where egressd listens ({listen}); it reads the \
             original destination back from conntrack."
        ),
    );
    out.line(format!(":{NAT_CHAIN} - [0:0]"));
    bypass_returns(f, NAT_CHAIN, out);
    out.comment("", "DNS over TCP to any resolver goes to egressd.");
    out.line(format!("-A {NAT_CHAIN} -p tcp --dport 53 -j REDIRECT --to-ports {port}"));
    out.comment("", "This host's own addresses: left alone.");
    out.line(format!("-A {NAT_CHAIN} -m addrtype --dst-type LOCAL -j RETURN"));
    reserved_returns(f, NAT_CHAIN, out);
    out.comment("", "The rest, to the internet.");
    out.line(format!("-A {NAT_CHAIN} -p tcp -j REDIRECT --to-ports {port}"));
    out.line("COMMIT");
}

/// `TOOL -w -t TABLE -C HOOK SPEC || TOOL -w -t TABLE -I HOOK SPEC`.
fn once(tool: &str, table: &str, hook: &str, spec: &str, out: &mut Out) {
    out.line(format!(
        "{tool} -w -t {table} -C {hook} {spec} 2>/dev/null || {tool} -w -t {table} -I {hook} {spec}"
    ));
}

/// Adds the jumps `specs` (each ending in `-j CHAIN`, written as `iptables
/// -S` prints them, so that `prune` recognises them) into CHAIN from HOOK,
/// then deletes every other jump from HOOK into CHAIN: new before old.
fn jumps(tool: &str, table: &str, hook: &str, chain: &str, specs: &[String], out: &mut Out) {
    for spec in specs {
        once(tool, table, hook, spec, out);
    }
    let keep: Vec<String> = specs.iter().map(|s| format!(" '{s}'")).collect();
    out.line(format!("prune {tool} {table} {hook} {chain}{}", keep.concat()));
}

fn kill_jumps(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let tool = f.family.iptables();
    out.comment(
        "",
        "Everything forwarded from a container interface passes the kill switch, whatever its source: mangle \
         FORWARD comes before filter FORWARD, where Docker puts its ACCEPTs. Traffic to egressd itself is \
         local (INPUT), not forwarded. Then jumps of an older config are removed.",
    );
    let specs: Vec<String> =
        plan.interfaces.iter().map(|i| format!("-i {} -j {KILL_CHAIN}", i.iptables())).collect();
    jumps(tool, "mangle", "FORWARD", KILL_CHAIN, &specs, out);
    out.comment("", "Forged sources on a container interface are dropped on arrival.");
    let specs: Vec<String> =
        plan.interfaces.iter().map(|i| format!("-i {} -j {RPF_CHAIN}", i.iptables())).collect();
    jumps(tool, "raw", "PREROUTING", RPF_CHAIN, &specs, out);
}

/// The intercept's jumps, `-s` before `-i` as `iptables -S` prints them;
/// none for a family that only has the kill switch.
fn intercept_specs(plan: &Plan, f: &FamilyPlan, chain: &str) -> Vec<String> {
    if !f.intercepts() || (chain == NAT_CHAIN && plan.tcp != TcpIntercept::Redirect) {
        return Vec::new();
    }
    let mut v = Vec::new();
    for i in &plan.interfaces {
        for s in f.source_selectors() {
            let src = s.map(|c| format!("-s {c} ")).unwrap_or_default();
            v.push(format!("{src}-i {} -j {chain}", i.iptables()));
        }
    }
    v
}

fn intercept_jumps(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let tool = f.family.iptables();
    let tproxy = intercept_specs(plan, f, TPROXY_CHAIN);
    let nat = intercept_specs(plan, f, NAT_CHAIN);
    if tproxy.is_empty() {
        out.comment("", "No intercept for this family: jumps into it left by an earlier run are removed.");
    } else {
        let narrowed = if f.narrow.is_some() { " from intercept.sources" } else { "" };
        out.comment(
            "",
            format!(
                "Every packet the containers{narrowed} send goes into the intercept (replies of published ports \
                 return from its first rule; nat sees only a connection's first packet); then jumps of an \
                 older config (an older egressd's: conntrack ORIGINAL only) are removed."
            ),
        );
    }
    jumps(tool, "mangle", "PREROUTING", TPROXY_CHAIN, &tproxy, out);
    jumps(tool, "nat", "PREROUTING", NAT_CHAIN, &nat, out);
}

/// Once this setup's jumps are in: an older egressd's jumps and chains, and
/// this version's chains that this config does not use, are removed.
fn unused_chains(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let tool = f.family.iptables();
    out.comment(
        "",
        "Chains this setup does not use (an older egressd's, or ones an earlier config needed): no jump \
         into them is left, and they go.",
    );
    for (table, hook, chain) in OLDER_JUMPS {
        out.line(format!("prune {tool} {table} {hook} {chain}"));
        out.line(format!("drop_chain {tool} {table} {chain}"));
    }
    if intercept_specs(plan, f, TPROXY_CHAIN).is_empty() {
        out.line(format!("drop_chain {tool} mangle {TPROXY_CHAIN}"));
    }
    if intercept_specs(plan, f, NAT_CHAIN).is_empty() {
        out.line(format!("drop_chain {tool} nat {NAT_CHAIN}"));
    }
}
