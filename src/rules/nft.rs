//! The nftables backend: everything in one `table inet egressd`.
//!
//! The table is replaced in one `nft -f` transaction (`add table` so the
//! `delete table` cannot fail, then the new definition), which makes a re-run
//! atomic and idempotent; Delete is the same `add` + `delete` without the
//! definition. Written for nft 1.0.6 (Debian 12), which has no `destroy`.

use super::{
    FamilyPlan, Out, Plan, bridge_sysctl, bridge_sysctl_note, forget_udp_conntrack, join, no_listener_note,
    nothing_to_intercept, policy_routing, policy_routing_delete,
};
use crate::config::TcpIntercept;

pub(super) const TABLE: &str = "inet egressd";

pub(super) fn install(plan: &Plan, out: &mut Out) {
    let active: Vec<&FamilyPlan> = plan.families.iter().filter(|f| !f.sources.is_empty()).collect();
    for f in &plan.families {
        out.blank();
        out.comment("", format!("==== {} ====", f.family.name()));
        if f.sources.is_empty() {
            nothing_to_intercept(f, out);
        } else if f.intercepts() {
            bridge_sysctl(f, out);
            policy_routing(plan, f, out);
        } else {
            no_listener_note(f, out, "");
        }
    }
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
    for f in &active {
        sets(f, out);
    }
    let intercepting: Vec<&FamilyPlan> = active.iter().copied().filter(|f| f.intercepts()).collect();
    if plan.tcp == TcpIntercept::Redirect && !intercepting.is_empty() {
        out.line("\tchain tcp_redirect {");
        out.comment(
            "\t\t",
            "dstnat priority, as iptables nat PREROUTING: REDIRECT sees each connection's first packet.",
        );
        out.line("\t\ttype nat hook prerouting priority dstnat; policy accept;");
        for f in &intercepting {
            tcp_redirect(f, out);
        }
        out.line("\t}");
    }
    if !intercepting.is_empty() {
        out.line("\tchain tproxy_prerouting {");
        out.comment("\t\t", "mangle priority: TPROXY must run before nat and the routing decision.");
        out.line("\t\ttype filter hook prerouting priority mangle; policy accept;");
        for f in &intercepting {
            tproxy(plan, f, out);
        }
        out.line("\t}");
    }
    if !active.is_empty() {
        out.line("\tchain kill_switch {");
        out.comment(
            "\t\t",
            "forward hook: only what the host would send onwards; traffic to egressd, and what TPROXY or REDIRECT \
             hand it, is local (input).",
        );
        out.line("\t\ttype filter hook forward priority filter; policy accept;");
        for f in &active {
            let n = f.family.nft();
            let v = f.family.suffix();
            if f.intercepts() {
                out.comment(
                    "\t\t",
                    format!(
                        "Kill switch ({}): whatever else the sources send past this host to the internet (ICMP, \
                         other protocols, what the intercept misses) is dropped.",
                        f.family.name()
                    ),
                );
            } else {
                no_listener_note(f, out, "\t\t");
            }
            out.line(format!("\t\t{n} saddr @sources_{v} {n} daddr != @pass_{v} drop"));
        }
        out.line("\t}");
    }
    out.line("}");
    out.line("EOF");
    for f in intercepting.iter() {
        forget_udp_conntrack(f, out);
    }
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

/// One family's `pass_` and `sources_` sets.
fn sets(f: &FamilyPlan, out: &mut Out) {
    let v = f.family.suffix();
    let ty = match f.family {
        super::Family::V4 => "ipv4_addr",
        super::Family::V6 => "ipv6_addr",
    };
    out.comment(
        "\t",
        "Left alone by intercept and kill switch: reserved ranges (this network, private, loopback, link-local, \
         multicast), not the internet ...",
    );
    if f.bypass.is_empty() {
        out.comment("\t", "... (the config has no bypass for this family).");
    } else {
        out.comment("\t", format!("... and the config's bypass: {}.", join(&f.bypass)));
    }
    set(&format!("pass_{v}"), ty, &join(&f.pass()), out);
    out.comment("\t", "The intercepted sources (intercept.sources, else the route sources).");
    set(&format!("sources_{v}"), ty, &join(&f.sources), out);
}

fn set(name: &str, ty: &str, elements: &str, out: &mut Out) {
    out.line(format!("\tset {name} {{"));
    out.line(format!("\t\ttype {ty}"));
    out.line("\t\tflags interval");
    out.line(format!("\t\telements = {{ {elements} }}"));
    out.line("\t}");
}

/// `ip saddr @sources_v4 ip daddr != @pass_v4 fib daddr type != local`.
fn matches(f: &FamilyPlan) -> String {
    let (n, v) = (f.family.nft(), f.family.suffix());
    format!("{n} saddr @sources_{v} {n} daddr != @pass_{v} fib daddr type != local")
}

fn tcp_redirect(f: &FamilyPlan, out: &mut Out) {
    let Some(listen) = f.listener() else { return };
    if let Some(note) = f.listeners_note() {
        out.comment("\t\t", note);
    }
    out.comment(
        "\t\t",
        format!(
            "{} TCP from the sources, not to this host's own addresses (ssh to it stays out of the tunnel), goes \
             to the incoming interface's primary address, port {}, where egressd listens ({listen}).",
            f.family.name(),
            listen.port()
        ),
    );
    out.line(format!("\t\t{} meta l4proto tcp redirect to :{}", matches(f), listen.port()));
}

fn tproxy(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let Some(listen) = f.listener() else { return };
    let to = format!("tproxy {} to {}", f.family.nft(), super::sockaddr(listen));
    let mark = plan.mark;
    if let Some(note) = f.listeners_note() {
        out.comment("\t\t", note);
    }
    let why = format!(
        "to egressd's transparent socket on {listen}, destination unchanged, marked {mark} for the local route \
         (not to this host's own addresses)"
    );
    if plan.tcp == TcpIntercept::Tproxy {
        out.comment("\t\t", format!("{} TCP from the sources {why}.", f.family.name()));
        out.line(format!("\t\t{} meta l4proto tcp meta mark set {mark} {to} accept", matches(f)));
    }
    out.comment("\t\t", format!("{} UDP from the sources {why}, as the article.", f.family.name()));
    out.line(format!("\t\t{} meta l4proto udp meta mark set {mark} {to} accept", matches(f)));
}
