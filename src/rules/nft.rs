//! The nftables backend: everything in one `table inet egressd`.
//!
//! The table is replaced in one `nft -f` transaction (`add table` so the
//! `delete table` cannot fail, then the new definition), which makes a re-run
//! atomic, idempotent and convergent (an older egressd's table, whatever it
//! held, is gone in the same commit the new one appears: no moment with
//! neither); Delete is the same `add` + `delete` without the definition.
//! Written for nft 1.0.6 (Debian 12), which has no `destroy`.
//!
//! A drop in any base chain is final in nftables, whatever other tables
//! (Docker's iptables-nft ones included) accept later: the kill switch needs
//! no placement beyond being a forward base chain of its own.

use super::{
    Family, FamilyPlan, Out, Plan, bridge_sysctl, bridge_sysctl_note, forget_udp_conntrack, join,
    kill_only_note, policy_routing, policy_routing_delete,
};
use crate::config::TcpIntercept;

pub(super) const TABLE: &str = "inet egressd";

/// The replies left alone, as `nft list ruleset` prints it: those of
/// connections DNAT'd into a container (published ports). Any other reply
/// (an answer to a remote that wrote first, an inbound connection that was
/// not published) is intercepted or dropped.
pub(super) const PUBLISHED_REPLY: &str = "ct direction reply ct status dnat";

pub(super) fn install(plan: &Plan, out: &mut Out) {
    for f in &plan.families {
        out.blank();
        out.comment("", format!("==== {} ====", f.family.name()));
        if f.intercepts() {
            bridge_sysctl(f, out);
            policy_routing(plan, f, out);
        } else {
            kill_only_note(f, out, "");
        }
    }
    let intercepting: Vec<&FamilyPlan> = plan.families.iter().filter(|f| f.intercepts()).collect();
    out.blank();
    out.comment(
        "",
        "egressd's table, replaced in one transaction: `add` makes sure it exists so `delete` cannot fail, then \
         it is defined anew.",
    );
    out.line("nft -f - <<'EOF'");
    out.line(format!("add table {TABLE}"));
    out.line(format!("delete table {TABLE}"));
    out.line(format!("table {TABLE} {{"));
    for f in &plan.families {
        sets(f, out);
    }
    rpfilter_chain(plan, out);
    for f in &intercepting {
        intercept_chain(plan, f, out);
    }
    if !intercepting.is_empty() {
        tproxy_prerouting_chain(plan, &intercepting, out);
    }
    if plan.tcp == TcpIntercept::Redirect && !intercepting.is_empty() {
        for f in &intercepting {
            redirect_chain(f, out);
        }
        tcp_redirect_chain(plan, &intercepting, out);
    }
    kill_chain(plan, out);
    kill_switch_chain(plan, out);
    out.line("}");
    out.line("EOF");
    for f in &intercepting {
        forget_udp_conntrack(f, out);
    }
}

/// The base chain dropping forged sources.
fn rpfilter_chain(plan: &Plan, out: &mut Out) {
    out.line("\tchain rpfilter {");
    out.comment(
        "\t\t",
        "raw priority, before everything: a source the container interface has no route back to is forged \
         (CAP_NET_RAW) and dropped. `::` (duplicate address detection) is not routed anyway.",
    );
    out.line("\t\ttype filter hook prerouting priority raw; policy accept;");
    for i in &plan.interfaces {
        out.line(format!("\t\tiifname {} meta nfproto ipv4 fib saddr . iif oif missing drop", i.nft()));
        out.line(format!("\t\tiifname {} ip6 saddr != :: fib saddr . iif oif missing drop", i.nft()));
    }
    out.line("\t}");
}

/// The base chain sending the containers' packets to each family's TPROXY chain.
fn tproxy_prerouting_chain(plan: &Plan, intercepting: &[&FamilyPlan], out: &mut Out) {
    out.line("\tchain tproxy_prerouting {");
    out.comment(
        "\t\t",
        "mangle priority: TPROXY must run before nat and the routing decision. Every packet of the \
         containers: the intercept chain's first rule lets replies of published ports go.",
    );
    out.line("\t\ttype filter hook prerouting priority mangle; policy accept;");
    for f in intercepting {
        dispatch(plan, f, "intercept", out);
    }
    out.line("\t}");
}

/// The base chain sending new TCP connections to each family's REDIRECT chain.
fn tcp_redirect_chain(plan: &Plan, intercepting: &[&FamilyPlan], out: &mut Out) {
    out.line("\tchain tcp_redirect {");
    out.comment(
        "\t\t",
        "dstnat priority, as iptables nat PREROUTING: REDIRECT sees each connection's first packet (never \
         a reply).",
    );
    out.line("\t\ttype nat hook prerouting priority dstnat; policy accept;");
    for f in intercepting {
        dispatch(plan, f, "redirect", out);
    }
    out.line("\t}");
}

/// The kill switch's rules: what may pass, then the drop.
fn kill_chain(plan: &Plan, out: &mut Out) {
    out.line("\tchain kill {");
    out.comment(
        "\t\t",
        "Kill switch: what the containers would send past this host (ICMP, other protocols, whatever the \
         intercept leaves, a family without a listener, replies of inbound connections that were not \
         DNAT'd) is dropped, except replies of connections DNAT'd into a container (published ports) ...",
    );
    out.line(format!("\t\t{PUBLISHED_REPLY} return"));
    for f in &plan.families {
        if !f.bypass.is_empty() {
            let (n, v) = (f.family.nft(), f.family.suffix());
            out.comment("\t\t", "... and the config's bypass (DNS included) ...");
            out.line(format!("\t\t{n} daddr @bypass_{v} return"));
        }
    }
    out.comment(
        "\t\t",
        "... never DNS, whatever resolver it asks (the intercept takes it, or nothing does) ...",
    );
    out.line("\t\tmeta l4proto { tcp, udp } th dport 53 drop");
    out.comment("\t\t", "... reserved ranges are not the internet ...");
    for f in &plan.families {
        let (n, v) = (f.family.nft(), f.family.suffix());
        out.line(format!("\t\t{n} daddr @reserved_{v} return"));
    }
    for f in plan.families.iter().filter(|f| !f.intercepts()) {
        kill_only_note(f, out, "\t\t");
    }
    out.comment("\t\t", "... and the rest would leave around the tunnels.");
    out.line("\t\tdrop");
    out.line("\t}");
}

/// The forward base chain sending everything from a container interface to `kill`.
fn kill_switch_chain(plan: &Plan, out: &mut Out) {
    out.line("\tchain kill_switch {");
    out.comment(
        "\t\t",
        "forward hook, mangle priority: everything forwarded from a container interface, whatever its \
         source; traffic to egressd, and what TPROXY or REDIRECT hand it, is local (input).",
    );
    out.line("\t\ttype filter hook forward priority mangle; policy accept;");
    for i in &plan.interfaces {
        out.line(format!("\t\tiifname {} jump kill", i.nft()));
    }
    out.line("\t}");
}

pub(super) fn delete(plan: &Plan, out: &mut Out) {
    out.blank();
    out.comment(
        "",
        "egressd's table (intercept and kill switch at once); `add` first makes this safe when it is absent.",
    );
    out.line("nft -f - <<'EOF'");
    out.line(format!("add table {TABLE}"));
    out.line(format!("delete table {TABLE}"));
    out.line("EOF");
    for f in &plan.families {
        out.blank();
        out.comment("", format!("==== {} ====", f.family.name()));
        policy_routing_delete(plan, f, out);
        bridge_sysctl_note(f, out);
    }
}

/// One family's `reserved_`, `bypass_` and (narrowed) `sources_` sets.
fn sets(f: &FamilyPlan, out: &mut Out) {
    let v = f.family.suffix();
    let ty = match f.family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    out.comment(
        "\t",
        format!(
            "{}: reserved ranges (this network, private, loopback, link-local, multicast), not the internet: \
             left alone, port 53 aside.",
            f.family.name()
        ),
    );
    set(&format!("reserved_{v}"), ty, &join(&super::outermost(f.reserved.iter().copied())), out);
    if f.bypass.is_empty() {
        out.comment("\t", "The config's bypass (none for this family).");
    } else {
        out.comment("\t", format!("The config's bypass, left alone, port 53 included: {}.", join(&f.bypass)));
    }
    set(&format!("bypass_{v}"), ty, &join(&f.bypass), out);
    if let Some(n) = &f.narrow
        && !n.is_empty()
    {
        out.comment("\t", "intercept.sources: the sources tunnelled; others on the interfaces are killed.");
        set(&format!("sources_{v}"), ty, &join(n), out);
    }
}

fn set(name: &str, ty: &str, elements: &str, out: &mut Out) {
    out.line(format!("\tset {name} {{"));
    out.line(format!("\t\ttype {ty}"));
    out.line("\t\tflags interval");
    if !elements.is_empty() {
        out.line(format!("\t\telements = {{ {elements} }}"));
    }
    out.line("\t}");
}

/// The jumps from a base chain into a family's `NAME_v4`/`NAME_v6` chain,
/// one per interface, for every packet (replies too: see [`PUBLISHED_REPLY`]).
fn dispatch(plan: &Plan, f: &FamilyPlan, name: &str, out: &mut Out) {
    let (n, v) = (f.family.nft(), f.family.suffix());
    let sel = match &f.narrow {
        Some(_) => format!("{n} saddr @sources_{v}"),
        None => format!("meta nfproto {}", if f.family == Family::V4 { "ipv4" } else { "ipv6" }),
    };
    for i in &plan.interfaces {
        out.line(format!("\t\tiifname {} {sel} jump {name}_{v}", i.nft()));
    }
}

/// A family's TPROXY chain: DNS anywhere, then everything not local,
/// reserved or bypassed.
fn intercept_chain(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let Some(listen) = f.listener() else { return };
    let (n, v, mark) = (f.family.nft(), f.family.suffix(), plan.mark);
    // `or`: keep the packet's other mark bits, as iptables' --tproxy-mark M/M does.
    let to = format!("meta mark set meta mark or {mark} tproxy {n} to {} accept", super::sockaddr(listen));
    let tcp_too = plan.tcp == TcpIntercept::Tproxy;
    out.line(format!("\tchain intercept_{v} {{"));
    if let Some(note) = f.listeners_note() {
        out.comment("\t\t", note);
    }
    out.comment(
        "\t\t",
        format!(
            "To egressd's transparent socket on {listen}, destination unchanged, marked {mark} for the local \
             route: UDP{}. Replies of published ports (DNAT'd into a container) are left alone; an answer to \
             a remote that wrote first is intercepted like any datagram. The config's bypass next.",
            if tcp_too { " and TCP" } else { "" }
        ),
    );
    out.line(format!("\t\t{PUBLISHED_REPLY} return"));
    out.line(format!("\t\t{n} daddr @bypass_{v} return"));
    out.comment("\t\t", "DNS to any resolver, private and local ones included.");
    out.line(format!("\t\tudp dport 53 {to}"));
    if tcp_too {
        out.line(format!("\t\ttcp dport 53 {to}"));
    }
    out.comment("\t\t", "This host's own addresses, and reserved ranges: left alone.");
    out.line("\t\tfib daddr type local return");
    out.line(format!("\t\t{n} daddr @reserved_{v} return"));
    out.comment("\t\t", "The rest, to the internet.");
    out.line(format!("\t\tmeta l4proto udp {to}"));
    if tcp_too {
        out.line(format!("\t\tmeta l4proto tcp {to}"));
    }
    out.line("\t}");
}

/// A family's REDIRECT chain for TCP.
fn redirect_chain(f: &FamilyPlan, out: &mut Out) {
    let Some(listen) = f.listener() else { return };
    let (n, v, port) = (f.family.nft(), f.family.suffix(), listen.port());
    out.line(format!("\tchain redirect_{v} {{"));
    out.comment(
        "\t\t",
        format!(
            "{} TCP to the incoming interface's primary address, port {port}, where egressd listens ({listen}); \
             the config's bypass first.",
            f.family.name()
        ),
    );
    out.line(format!("\t\t{n} daddr @bypass_{v} return"));
    out.comment("\t\t", "DNS over TCP to any resolver.");
    out.line(format!("\t\ttcp dport 53 redirect to :{port}"));
    out.comment("\t\t", "This host's own addresses, and reserved ranges: left alone.");
    out.line("\t\tfib daddr type local return");
    out.line(format!("\t\t{n} daddr @reserved_{v} return"));
    out.comment("\t\t", "The rest, to the internet.");
    out.line(format!("\t\tmeta l4proto tcp redirect to :{port}"));
    out.line("\t}");
}
