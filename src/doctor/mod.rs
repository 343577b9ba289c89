//! `egressd doctor`: inspect the live host (this network namespace) and say,
//! check by check, what is wrong with egressd's setup and the command that
//! fixes it.
//!
//! ```text
//! capability ─ listen addresses ─ listeners (is egressd running?) ─ bridge netfilter
//!   ─ ip rule / local route ─ container interfaces
//!   ─ per interface and family: TCP, UDP and DNS intercept, kill switch (and what comes
//!     first), published ports, stranger replies, forged sources ─ IPv6 left to the
//!     kill switch ─ DNS path
//!   ─ quota state (a kept-aside corrupt file: metered classes refused)
//!   ─ UdpNoPorts over one second ─ each tunnel (TCP, SOCKS5 greeting/auth/ASSOCIATE, HTTP)
//! ```
//!
//! Layout: `parse.rs`, `firewall.rs` (iptables-save) and `nft.rs` (nft list ruleset)
//! are pure parsers into `model.rs`, which walks sample packets through the
//! hooks; `fwcheck.rs` judges those walks (pure, tested on fixtures of real
//! output); `checks.rs` and `listen.rs` read /proc, /sys and
//! run `ip`, `iptables-save`, `nft`; `probe.rs` talks to the tunnel servers. A tool
//! that is missing or fails makes its check a `warn` ("could not check"),
//! never a crash. Nothing here changes the host, and no credential is printed.

mod checks;
mod docker;
mod firewall;
mod fwcheck;
mod listen;
mod model;
mod nft;
mod parse;
mod probe;
mod quota;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Settings;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report: what was checked, what was seen, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub name: String,
    pub saw: String,
    /// The exact command (or config change) that fixes a warn/FAIL.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, saw: impl Into<String>) -> Check {
        Check { status: Status::Ok, name: name.into(), saw: saw.into(), fix: None }
    }

    fn warn(name: impl Into<String>, saw: impl Into<String>, fix: Option<String>) -> Check {
        Check { status: Status::Warn, name: name.into(), saw: saw.into(), fix }
    }

    fn fail(name: impl Into<String>, saw: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { status: Status::Fail, name: name.into(), saw: saw.into(), fix: Some(fix.into()) }
    }

    /// The printed line: `FAIL name  saw; fix: command`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {:<24} {}", self.status.label(), self.name, self.saw);
        if let Some(f) = &self.fix {
            s.push_str("; fix: ");
            s.push_str(f);
        }
        s
    }
}

/// Runs every check against the live host (current network namespace) and
/// prints one line per check. Returns true when no check FAILed (exit code
/// 0), false otherwise (exit 1). Fix commands name the config as `FILE`;
/// [`run_with`] puts the real path in.
pub fn run(settings: &Settings, out: &mut dyn Write) -> bool {
    run_with(settings, None, out)
}

/// [`run`], with the config file's path for the fix commands that name it.
pub fn run_with(settings: &Settings, config: Option<&Path>, out: &mut dyn Write) -> bool {
    // dns.upstream left at its default (doctor warns about it only then).
    let upstream_default =
        config.and_then(|p| std::fs::read_to_string(p).ok()).is_some_and(|t| !t.contains("upstream"));
    let config = config.map_or_else(|| "FILE".to_string(), |p| shell_word(&p.display().to_string()));
    let host = checks::Host::read(settings, config, upstream_default);
    let mut failed = false;
    let mut counts = [0usize; 3];
    let mut emit = |c: Check, out: &mut dyn Write| {
        failed |= c.status == Status::Fail;
        counts[c.status as usize] += 1;
        let _ = writeln!(out, "{}", c.line());
        let _ = out.flush();
    };

    // The tunnel probes and the one-second UdpNoPorts sample overlap: the
    // report takes as long as the slower of them, not their sum.
    let noports_before = checks::noports();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let probes = scope.spawn(|| probe::all(settings, &host.config));
        for c in host.local_checks() {
            emit(c, out);
        }
        let left = Duration::from_secs(1).saturating_sub(started.elapsed());
        std::thread::sleep(left);
        for c in host.noports_checks(noports_before, checks::noports()) {
            emit(c, out);
        }
        let subnets = match &host.addrs {
            Ok(a) => crate::rules::host::scope(settings, a).map(|s| s.subnets).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        for c in docker::checks(settings, &subnets) {
            emit(c, out);
        }
        let tunnel_checks = probes.join().unwrap_or_else(|_| {
            vec![Check::warn("tunnels", "could not check: the probe thread panicked", None)]
        });
        for c in tunnel_checks {
            emit(c, out);
        }
    });
    let _ = writeln!(
        out,
        "doctor: {} ok, {} warn, {} FAIL{}",
        counts[Status::Ok as usize],
        counts[Status::Warn as usize],
        counts[Status::Fail as usize],
        if failed { "" } else { " — nothing to fix" }
    );
    !failed
}

/// `path` quoted for a shell when it needs it.
fn shell_word(s: &str) -> String {
    let plain = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%=".contains(&b));
    if plain && !s.is_empty() { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// Fuzzing entry: `text` read as `iptables-save`, `ip6tables-save` and
/// `nft list ruleset` output, then sample packets walked through the result.
/// Any text must give a model and walks that end, never a panic.
#[doc(hidden)]
pub fn fuzz_firewall(text: &str) {
    let mut rs = model::Ruleset::default();
    firewall::add_iptables(&mut rs, text, false);
    firewall::add_iptables(&mut rs, text, true);
    nft::add_nft(&mut rs, text, [false, firewall::is_nft_flavour(text)]);
    for (v6, dst) in [(false, "203.0.113.10"), (true, "2001:db8:203::10")] {
        let samples = [
            (model::TCP, false, false),
            (model::UDP, true, true),
            (model::UDP, true, false),
            (model::ICMP, false, false),
        ];
        for (proto, reply, dnat) in samples {
            let p = model::Packet {
                v6,
                iif: "br0".into(),
                src: if v6 { (true, 0, u128::MAX) } else { (false, 0, u128::from(u32::MAX)) },
                forged: reply,
                dst: dst.parse().expect("literal"),
                dst_local: false,
                proto,
                sport: 40000,
                dport: 53,
                reply,
                dnat,
            };
            for hook in ["prerouting", "forward"] {
                let r = rs.hook(hook, &p, &|v| *v != model::Verdict::Drop);
                for (b, d) in r.passed.iter().chain(r.decided.iter()) {
                    let _ = rs.chains[*b].label();
                    for at in d.path.iter().chain(&d.returned) {
                        let _ = rs.show(*at);
                    }
                }
            }
        }
    }
}
