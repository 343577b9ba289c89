//! The iptables/ip6tables backend.
//!
//! egressd's chains are (re)built with `iptables-restore --noflush`: a chain
//! declared there is created, or flushed if it exists, and refilled in one
//! commit per table, so a re-run never leaves a half-filled kill switch.
//! The jumps into them are added with `-C ... || -A/-I ...`, so once.
//! Every call waits for the xtables lock (`-w`): Docker and kube-proxy hold it often.
//! Delete removes every jump into egressd's chains whatever source it names
//! (so also those of an older config), then the chains.

use super::{
    FamilyPlan, Out, Plan, bridge_sysctl, bridge_sysctl_note, forget_udp_conntrack, no_listener_note,
    nothing_to_intercept, policy_routing, policy_routing_delete,
};
use crate::config::TcpIntercept;

/// nat chain for TCP REDIRECT, or mangle chain for TCP TPROXY.
pub(super) const TCP_CHAIN: &str = "EGRESSD";
/// mangle chain for UDP TPROXY.
pub(super) const UDP_CHAIN: &str = "EGRESSD_UDP";
/// filter chain of the kill switch.
pub(super) const KILL_CHAIN: &str = "EGRESSD_KILL";

/// Every (table, hook, chain) install may create, for Delete.
const ALL_CHAINS: [(&str, &str, &str); 4] = [
    ("nat", "PREROUTING", TCP_CHAIN),
    ("mangle", "PREROUTING", TCP_CHAIN),
    ("mangle", "PREROUTING", UDP_CHAIN),
    ("filter", "FORWARD", KILL_CHAIN),
];

pub(super) fn install(plan: &Plan, out: &mut Out) {
    for f in &plan.families {
        out.blank();
        out.comment("", format!("==== {} ({}) ====", f.family.name(), f.family.iptables()));
        if f.sources.is_empty() {
            nothing_to_intercept(f, out);
            continue;
        }
        chains(plan, f, out);
        kill_jumps(f, out);
        if f.intercepts() {
            bridge_sysctl(f, out);
            policy_routing(plan, f, out);
            intercept_jumps(plan, f, out);
            forget_udp_conntrack(f, out);
        }
    }
}

pub(super) fn delete(plan: &Plan, out: &mut Out) {
    out.blank();
    out.comment("", "Rules read back from `iptables -S` are split into words below: never glob them.");
    out.line("set -f");
    out.comment(
        "",
        "unjump TOOL TABLE HOOK CHAIN: delete every rule in HOOK that jumps to CHAIN, whatever source it names.",
    );
    out.line("unjump() {");
    out.line(r#"	"$1" -w -t "$2" -S "$3" | sed -n "s/^-A $3 \(.*-j $4\)\$/\1/p" | while read -r rule; do"#);
    out.line(r#"		"$1" -w -t "$2" -D "$3" $rule"#);
    out.line("	done");
    out.line("}");
    out.comment("", "drop_chain TOOL TABLE CHAIN: flush and delete CHAIN if it exists.");
    out.line("drop_chain() {");
    out.line(r#"	if "$1" -w -t "$2" -n -L "$3" >/dev/null 2>&1; then "$1" -w -t "$2" -F "$3"; "$1" -w -t "$2" -X "$3"; fi"#);
    out.line("}");
    for f in &plan.families {
        let tool = f.family.iptables();
        out.blank();
        out.comment("", format!("==== {} ({tool}) ====", f.family.name()));
        out.comment(
            "",
            "Intercept first (both TCP ways, in case the config switched), kill switch last: nothing leaks meanwhile.",
        );
        for (table, hook, chain) in &ALL_CHAINS[..3] {
            out.line(format!("unjump {tool} {table} {hook} {chain}"));
        }
        for (table, _, chain) in &ALL_CHAINS[..3] {
            out.line(format!("drop_chain {tool} {table} {chain}"));
        }
        policy_routing_delete(plan, f, out);
        out.comment("", "The kill switch.");
        let (table, hook, chain) = ALL_CHAINS[3];
        out.line(format!("unjump {tool} {table} {hook} {chain}"));
        out.line(format!("drop_chain {tool} {table} {chain}"));
        bridge_sysctl_note(f, out);
    }
}

/// The RETURN rules shared by every chain: what egressd leaves alone.
fn returns(f: &FamilyPlan, chain: &str, out: &mut Out) {
    out.comment(
        "",
        "Reserved ranges (this network, private, loopback, link-local, multicast): not the internet, left alone.",
    );
    for c in &f.reserved {
        out.line(format!("-A {chain} -d {c} -j RETURN"));
    }
    if !f.bypass.is_empty() {
        out.comment("", "The config's bypass: destinations to reach directly, not through a tunnel.");
        for c in &f.bypass {
            out.line(format!("-A {chain} -d {c} -j RETURN"));
        }
    }
    if !f.bypass_covered.is_empty() {
        out.comment(
            "",
            format!("(bypass {}: already covered by the ranges above)", super::join(&f.bypass_covered)),
        );
    }
}

/// egressd's chains for one family, in one iptables-restore run.
fn chains(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let (mark, tool) = (plan.mark, f.family.iptables());
    out.comment(
        "",
        "(Re)build egressd's chains: each table's chains are flushed and refilled in one commit.",
    );
    out.line(format!("{tool}-restore -w --noflush <<'EOF'"));
    out.line("*filter");
    out.comment(
        "",
        "Kill switch: what the sources send past this host (ICMP, other protocols, whatever the intercept \
         misses) is dropped ...",
    );
    out.line(format!(":{KILL_CHAIN} - [0:0]"));
    returns(f, KILL_CHAIN, out);
    let Some(listen) = f.listener() else {
        no_listener_note(f, out, "");
        out.line(format!("-A {KILL_CHAIN} -j DROP"));
        out.line("COMMIT");
        out.line("EOF");
        return;
    };
    out.comment(
        "",
        "... unless it goes where the intercept leaves it alone too (above): the rest would leave around the tunnels.",
    );
    out.line(format!("-A {KILL_CHAIN} -j DROP"));
    out.line("COMMIT");

    let (ip, port) = (listen.ip(), listen.port());
    let tproxy = format!("--on-ip {ip} --on-port {port} --tproxy-mark {mark}/{mark}");
    if let Some(note) = f.listeners_note() {
        out.comment("", note);
    }
    out.line("*mangle");
    if plan.tcp == TcpIntercept::Tproxy {
        out.comment(
            "",
            "TCP by TPROXY: mangle, because TPROXY must run before nat and the routing decision.",
        );
        out.line(format!(":{TCP_CHAIN} - [0:0]"));
        returns(f, TCP_CHAIN, out);
        out.comment(
            "",
            format!(
                "The rest goes to egressd's transparent socket on {listen}, destination unchanged (egressd reads \
                 it as the socket's own address), marked for the local route."
            ),
        );
        out.line(format!("-A {TCP_CHAIN} -p tcp -j TPROXY {tproxy}"));
    }
    out.comment("", "UDP by TPROXY, as the article: REDIRECT would lose each datagram's destination.");
    out.line(format!(":{UDP_CHAIN} - [0:0]"));
    returns(f, UDP_CHAIN, out);
    out.comment(
        "",
        format!(
            "The rest goes to egressd's transparent socket on {listen}, destination unchanged (egressd reads it \
             from IP_RECVORIGDSTADDR), marked for the local route."
        ),
    );
    out.line(format!("-A {UDP_CHAIN} -p udp -j TPROXY {tproxy}"));
    out.line("COMMIT");

    if plan.tcp == TcpIntercept::Redirect {
        out.line("*nat");
        out.comment("", "TCP by REDIRECT, as the article: nat, seen by each connection's first packet only.");
        out.line(format!(":{TCP_CHAIN} - [0:0]"));
        returns(f, TCP_CHAIN, out);
        out.comment(
            "",
            format!(
                "The rest goes to the incoming interface's primary address, port {port}, where egressd listens \
                 ({listen}); it reads the original destination back from conntrack."
            ),
        );
        out.line(format!("-A {TCP_CHAIN} -p tcp -j REDIRECT --to-ports {port}"));
        out.line("COMMIT");
    }
    out.line("EOF");
}

/// `TOOL [-t TABLE] -C HOOK SPEC || TOOL [-t TABLE] -A|-I HOOK SPEC`.
fn once(tool: &str, table: &str, add: &str, hook: &str, spec: &str, out: &mut Out) {
    let t = if table == "filter" { " -w".to_string() } else { format!(" -w -t {table}") };
    out.line(format!("{tool}{t} -C {hook} {spec} 2>/dev/null || {tool}{t} {add} {hook} {spec}"));
}

fn kill_jumps(f: &FamilyPlan, out: &mut Out) {
    out.comment(
        "",
        "Forwarded traffic of each source goes through the kill switch; -I puts it ahead of the ACCEPT rules \
         of others (Docker). Traffic to egressd itself is local (INPUT), not forwarded.",
    );
    for s in &f.sources {
        once(f.family.iptables(), "filter", "-I", "FORWARD", &format!("-s {s} -j {KILL_CHAIN}"), out);
    }
}

fn intercept_jumps(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let tool = f.family.iptables();
    let table = match plan.tcp {
        TcpIntercept::Redirect => "nat",
        TcpIntercept::Tproxy => "mangle",
    };
    out.comment(
        "",
        "Each source's TCP into the intercept, except to this host's own addresses (ssh to the host, its \
         DNS, ...): those stay out of the tunnel.",
    );
    for s in &f.sources {
        let spec = format!("-s {s} -p tcp -m addrtype ! --dst-type LOCAL -j {TCP_CHAIN}");
        once(tool, table, "-A", "PREROUTING", &spec, out);
    }
    out.comment(
        "",
        "Each source's UDP into the intercept, with the same exception for this host's own addresses.",
    );
    for s in &f.sources {
        let spec = format!("-s {s} -p udp -m addrtype ! --dst-type LOCAL -j {UDP_CHAIN}");
        once(tool, "mangle", "-A", "PREROUTING", &spec, out);
    }
}
