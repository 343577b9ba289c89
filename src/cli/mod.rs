//! The command line: parse, load settings, run a command, map to an exit code.
//!
//! Exit codes: 0 ok, 1 bad config or failed check, 2 usage.

mod handover;
mod run;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::FromArgs;

use crate::config::rate::format_rate;
use crate::config::{ConfigError, DEMO_CONFIG, Settings, Tunnel, TunnelKind};
use crate::control::Request;
use crate::rules::{self, Action, Backend};

/// egressd: each container's TCP, UDP and DNS leave through its own tunnel.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// print the version and the git commit, then exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    cmd: Option<Command>,
}

/// `egressd VERSION (COMMIT)`: the commit is embedded at build time (build.rs).
pub const VERSION: &str = concat!("egressd ", env!("CARGO_PKG_VERSION"), " (", env!("EGRESSD_COMMIT"), ")");

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Rules(RulesArgs),
    Doctor(DoctorArgs),
    Stats(StatsArgs),
    Top(TopArgs),
    Route(RouteArgs),
    Quota(QuotaArgs),
    Upgrade(UpgradeArgs),
}

/// Replace the running daemon with a new binary without dropping a
/// connection or a UDP session: it hands over its sockets and state, then
/// drains its flows (tcp.drain_timeout_secs) and exits.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "upgrade")]
struct UpgradeArgs {
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
    /// the new binary (default: the file now at the path the daemon was
    /// started from); must be owned by root, not writable by others
    #[argh(option)]
    binary: Option<PathBuf>,
    /// return once the new process serves, without waiting for the old
    /// one to finish draining
    #[argh(switch)]
    no_wait: bool,
}

/// Inspect this host (network namespace) and say what is wrong, check by check.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "doctor")]
struct DoctorArgs {
    /// the config file (RON); without it, the embedded demo config
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
}

/// Print the running daemon's counters, per tunnel.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stats")]
struct StatsArgs {
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
    /// print Prometheus text instead of the table
    #[argh(switch)]
    prometheus: bool,
}

/// Watch the running daemon live: per source, its tunnel, flows, rates, drops.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "top")]
struct TopArgs {
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
    /// print one snapshot (rates over one second) and exit; the default when stdout is not a terminal
    #[argh(switch)]
    once: bool,
}

/// Show or change the live route table (until the next restart or reload).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "route")]
struct RouteArgs {
    #[argh(subcommand)]
    cmd: RouteCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum RouteCmd {
    List(RouteList),
    Set(RouteSet),
    Del(RouteDel),
}

/// List the live routes.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct RouteList {
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
}

/// Route a source prefix to a tunnel.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set")]
struct RouteSet {
    /// source prefix, e.g. 10.8.0.12 or 10.8.0.0/24
    #[argh(option)]
    source: String,
    /// tunnel name
    #[argh(option)]
    tunnel: String,
    /// reset the source's open TCP flows and end its UDP sessions, so it moves at once
    #[argh(switch)]
    reset_flows: bool,
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
}

/// Delete the route of exactly this source prefix.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "del")]
struct RouteDel {
    /// source prefix
    #[argh(option)]
    source: String,
    /// reset the source's open TCP flows and end its UDP sessions
    #[argh(switch)]
    reset_flows: bool,
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
}

/// Show or reset the quota counters (per container name or route prefix).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "quota")]
struct QuotaArgs {
    #[argh(subcommand)]
    cmd: QuotaCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum QuotaCmd {
    List(QuotaList),
    Reset(QuotaReset),
}

/// List each identity's bytes used and left this period, and when it ends.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct QuotaList {
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
}

/// Start a new period with nothing used: for NAME (a container name or a
/// route prefix as `quota list` shows it), or for all with --all (which also
/// ends the fail-closed state after a corrupt state file).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reset")]
struct QuotaReset {
    /// the identity to reset
    #[argh(positional)]
    name: Option<String>,
    /// reset every identity
    #[argh(switch)]
    all: bool,
    /// the control socket (default /run/egressd.sock)
    #[argh(option)]
    socket: Option<PathBuf>,
}

/// Run the daemon in the foreground (logs to stderr; RUST_LOG or -v).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
struct RunArgs {
    /// the config file (RON); without it, the embedded demo config
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// more logging: -v per-flow lines, -vv everything
    #[argh(switch, short = 'v')]
    verbose: u8,
}

/// Validate the config and print a summary of it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
struct CheckArgs {
    /// the config file (RON); without it, the embedded demo config
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
}

/// Print the shell script that sets up (or removes) the host side.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rules")]
struct RulesArgs {
    /// the config file (RON); without it, the embedded demo config
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// iptables (default) or nft
    #[argh(option, default = "Backend::Iptables", from_str_fn(parse_backend))]
    backend: Backend,
    /// print the script that removes what the setup script adds
    #[argh(switch)]
    delete: bool,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "iptables" => Ok(Backend::Iptables),
        "nft" | "nftables" => Ok(Backend::Nft),
        _ => Err(format!("unknown backend `{s}`: use iptables or nft")),
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let name = argv.first().map(|s| s.rsplit('/').next().unwrap_or(s)).unwrap_or("egressd");
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let args = match Args::from_args(&[name], &rest) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprint!("{}", early.output);
                    eprintln!("Run `{name} help` for usage.");
                    ExitCode::from(2)
                }
            };
        }
    };
    if args.version {
        println!("{VERSION}");
        return ExitCode::SUCCESS;
    }
    let Some(cmd) = args.cmd else {
        return usage(
            "a command is needed (run, check, rules, doctor, stats, top, route, quota, upgrade); or --version",
        );
    };
    match cmd {
        Command::Doctor(a) => match load(a.config.as_deref()) {
            Ok(s) => {
                let ok = crate::doctor::run_with(&s, a.config.as_deref(), &mut std::io::stdout());
                if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => config_failed(&e),
        },
        Command::Stats(a) => {
            let req = if a.prometheus { Request::Metrics } else { Request::Stats };
            ask(a.socket, req)
        }
        Command::Top(a) => top::run(&a.socket.unwrap_or_else(crate::control::default_socket), a.once),
        Command::Route(r) => match r.cmd {
            RouteCmd::List(a) => ask(a.socket, Request::RouteList),
            RouteCmd::Set(a) => match a.source.parse() {
                Ok(source) => {
                    ask(a.socket, Request::RouteSet { source, tunnel: a.tunnel, reset: a.reset_flows })
                }
                Err(e) => usage(&format!("--source {}: {e}", a.source)),
            },
            RouteCmd::Del(a) => match a.source.parse() {
                Ok(source) => ask(a.socket, Request::RouteDel { source, reset: a.reset_flows }),
                Err(e) => usage(&format!("--source {}: {e}", a.source)),
            },
        },
        Command::Quota(q) => match q.cmd {
            QuotaCmd::List(a) => ask(a.socket, Request::QuotaList),
            QuotaCmd::Reset(a) => match (a.name, a.all) {
                (Some(n), false) if !n.is_empty() && !n.chars().any(char::is_whitespace) => {
                    ask(a.socket, Request::QuotaReset(Some(n)))
                }
                (None, true) => ask(a.socket, Request::QuotaReset(None)),
                _ => usage("quota reset: give one NAME (as `egressd quota list` shows it) or --all"),
            },
        },
        Command::Upgrade(a) => {
            let path = a.socket.unwrap_or_else(crate::control::default_socket);
            // A relative --binary is the caller's: the daemon's directory is another.
            let binary = a.binary.map(|b| std::path::absolute(&b).unwrap_or(b));
            let req = Request::Upgrade { binary, wait: !a.no_wait };
            match crate::control::ask_lines(&path, &req, &mut |l| println!("{l}")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("egressd: upgrade failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(a) => run::run(a.config.as_deref(), a.verbose),
        Command::Check(a) => check(a.config.as_deref()),
        Command::Rules(a) => {
            let action = if a.delete { Action::Delete } else { Action::Install };
            match load(a.config.as_deref()) {
                Ok(s) => {
                    let scope = match action {
                        // Delete removes whatever egressd set up: no interface needed.
                        Action::Delete => rules::Scope::default(),
                        Action::Install => match rules_scope(&s) {
                            Ok(scope) => scope,
                            Err(e) => {
                                eprintln!("egressd rules: {e}");
                                return ExitCode::from(1);
                            }
                        },
                    };
                    print!("{}", rules::script(&s, &scope, a.backend, action));
                    ExitCode::SUCCESS
                }
                Err(e) => config_failed(&e),
            }
        }
    }
}

/// The container interfaces `rules` scopes its rules to: as configured, or
/// those holding the listen addresses (read with `ip -o addr show`).
fn rules_scope(s: &Settings) -> Result<rules::Scope, String> {
    let out = std::process::Command::new("ip").args(["-o", "addr", "show"]).output();
    let addrs = match out {
        Ok(o) if o.status.success() => rules::host::parse_ip_addr(&String::from_utf8_lossy(&o.stdout)),
        // Named interfaces need nothing from the host; found ones do.
        _ if !s.intercept.interfaces.is_empty() => Vec::new(),
        Ok(o) => {
            return Err(format!("`ip -o addr show` failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Err(e) => return Err(format!("cannot run `ip -o addr show` (iproute2): {e}")),
    };
    rules::host::scope(s, &addrs)
}

/// Loads, validates and resolves the config (or the embedded demo config).
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let (file, mut s) = match path {
        Some(p) => (p.display().to_string(), Settings::load(p)?),
        None => {
            let file = "<embedded demo config>".to_string();
            let s = Settings::parse(&file, DEMO_CONFIG)?;
            (file, s)
        }
    };
    s.resolve(&file)?;
    Ok(s)
}

fn ask(socket: Option<PathBuf>, req: Request) -> ExitCode {
    let path = socket.unwrap_or_else(crate::control::default_socket);
    match crate::control::ask(&path, &req) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egressd: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("egressd: {msg}");
    ExitCode::from(2)
}

fn config_failed(e: &ConfigError) -> ExitCode {
    eprintln!("egressd: config error: {e}");
    ExitCode::from(1)
}

fn check(path: Option<&Path>) -> ExitCode {
    let s = match load(path) {
        Ok(s) => s,
        Err(e) => return config_failed(&e),
    };
    print!("{}", summary(&s));
    if let Some(w) = path.and_then(|p| secrets_exposed(p, &s)) {
        println!("warning: {w}");
    }
    if let Some(w) = s.control.metrics_listen.and_then(|m| crate::control::metrics_exposure(m, &s)) {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// A warning when the config holds passwords and others can read it.
pub fn secrets_exposed(path: &Path, s: &Settings) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let has_secrets = s.tunnels.iter().any(|t| {
        matches!(
            &t.kind,
            TunnelKind::Socks5 { auth: Some(_), .. } | TunnelKind::HttpConnect { auth: Some(_), .. }
        )
    });
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (has_secrets && mode & 0o004 != 0).then(|| {
        format!(
            "{} holds tunnel passwords and is readable by every user (mode {:o}); run: chmod o-r {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// One tunnel's line in `check` (never its password).
fn tunnel_detail(kind: &TunnelKind) -> String {
    use std::fmt::Write;
    match kind {
        TunnelKind::Socks5 {
            server,
            auth,
            udp,
            udp_relay,
            warm,
            warm_udp,
            warm_max,
            warm_idle_secs,
            pipeline,
        } => {
            let mut d = format!("Socks5 {server}");
            if let Some(c) = auth {
                let _ = write!(d, ", user {} (password set)", c.username);
            }
            let _ = write!(d, ", udp {}", if *udp { "on" } else { "off (DNS over TCP)" });
            if let Some(r) = udp_relay {
                let _ = write!(d, ", udp relay {r}");
            }
            let _ = write!(d, ", warm {warm}, pipelining {}", if *pipeline { "probed" } else { "off" });
            if *udp {
                let _ = write!(d, ", warm_udp {warm_udp}");
            }
            if *warm_max > *warm.max(warm_udp) {
                let _ = write!(d, ", pools grow to {warm_max} after bursts");
            }
            if *warm_idle_secs > 0 && (*warm > 0 || (*udp && *warm_udp > 0)) {
                let _ = write!(d, " (closed after {warm_idle_secs} s without a flow)");
            }
            d
        }
        TunnelKind::HttpConnect { server, auth, pipeline } => {
            let mut d = format!("HttpConnect {server}");
            if let Some(c) = auth {
                let _ = write!(d, ", user {} (password set)", c.username);
            }
            if *pipeline {
                d.push_str(", pipelining on");
            }
            d
        }
        TunnelKind::Direct { interface, mark, bind } => {
            let mut d = "Direct".to_string();
            if let Some(i) = interface {
                let _ = write!(d, ", interface {i}");
            }
            if let Some(m) = mark {
                let _ = write!(d, ", mark {m}");
            }
            if let Some(b) = bind {
                let _ = write!(d, ", from {b}");
            }
            d
        }
    }
}

/// What `check` prints: listeners, tunnels, routes. Never credentials.
pub fn summary(s: &Settings) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "config ok");
    let _ = writeln!(o, "listeners ({}):", s.listen.len());
    for a in &s.listen {
        let _ = writeln!(o, "  {a}  TCP (REDIRECT or TPROXY)");
    }
    let _ = writeln!(o, "tunnels ({}):", s.tunnels.len());
    for t in &s.tunnels {
        let _ = writeln!(o, "  {:<12} {}", t.name, tunnel_line(t));
    }
    o.push_str(&classes_summary(s));
    let mut routes: Vec<_> = s.routes.iter().collect();
    routes.sort_by_key(|(c, _)| (!c.is_ipv4(), c.addr(), c.len()));
    let _ = writeln!(o, "routes ({}):", routes.len());
    for (c, target) in routes {
        let _ = writeln!(o, "  {:<24} -> {}", c.to_string(), s.target_text(target));
    }
    match s.default {
        Some(id) => {
            let _ = writeln!(o, "  {:<24} -> {}", "(any other source)", s.tunnels[usize::from(id)].name);
        }
        None => {
            let _ = writeln!(o, "  {:<24} -> reject (TCP reset, UDP dropped)", "(any other source)");
        }
    }
    let ifaces = if s.intercept.interfaces.is_empty() {
        "the interfaces holding the listen addresses".to_string()
    } else {
        s.intercept.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    };
    let sources = match s.intercepted_sources() {
        None => "every source".to_string(),
        Some(n) => n.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
    };
    let _ = writeln!(
        o,
        "intercepted by `egressd rules`: {sources} arriving on {ifaces}; anything else they send past the host is dropped"
    );
    let _ = writeln!(
        o,
        "dns: queries to non-public resolvers go to {} through the container's tunnel",
        s.dns.upstream
    );
    if let Some(d) = &s.docker {
        let _ = writeln!(
            o,
            "docker: containers labelled {}=TUNNEL get routes for their addresses, followed on {} (before config routes; an unknown tunnel rejects)",
            d.label,
            d.socket.display()
        );
        if !s.classes.is_empty() {
            let _ = writeln!(
                o,
                "docker: a label {}=CLASS gives a labelled container its class (an unknown class rejects, as an unknown tunnel does)",
                d.class_label
            );
        }
    }
    let _ = writeln!(o, "threads: {} front loops, {} tunnel workers", s.threads, s.threads);
    o
}

/// One tunnel's line in `check`: its kind's details and its rate.
fn tunnel_line(t: &Tunnel) -> String {
    use std::fmt::Write;
    let mut detail = tunnel_detail(&t.kind);
    if let Some(r) = t.rate {
        let _ = write!(detail, ", rate {} each way (shared by class weights)", format_rate(r));
    }
    detail
}

/// The classes as `check` shows them (nothing without classes, so that
/// such a config prints as it did before they existed).
fn classes_summary(s: &Settings) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if s.classes.is_empty() {
        return o;
    }
    let _ =
        writeln!(o, "classes ({}; parsed and validated, not yet enforced by this version):", s.classes.len());
    for c in &s.classes {
        let cap = |r: Option<u64>| r.map_or_else(|| "no cap".to_string(), format_rate);
        let _ = writeln!(
            o,
            "  {:<12} up {}, down {}, weight {}",
            c.name,
            cap(c.rate_up),
            cap(c.rate_down),
            c.weight
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: `check` shows the classes (and that they are not enforced
    /// yet), a tunnel's rate and a route's class; a config without classes
    /// prints no word of them.
    #[test]
    fn check_shows_classes_only_when_there_are_some() {
        let text = r#"(listen: ["10.8.0.1:10900"], threads: 2,
            classes: { "slow": (rate: "20mbit"), "asym": (rate_up: "5mbit", rate_down: "2MiB/s"), "live": (weight: 4) },
            tunnels: { "hk0": Socks5(server: "100.64.0.2:1080", rate: "1.5gbit"), "wg": Direct(interface: "wg0") },
            routes: [(source: "10.8.0.10", tunnel: "hk0", class: "slow"), (source: "10.8.0.11", tunnel: "wg")],
            docker: ())"#;
        let out = summary(&Settings::parse("t.ron", text).unwrap());
        for line in [
            "  hk0          Socks5 100.64.0.2:1080, udp on, warm 2, pipelining probed, warm_udp 2, pools grow to 64 after bursts (closed after 300 s without a flow), rate 1.5gbit each way (shared by class weights)\n",
            "  wg           Direct, interface wg0\n",
            "classes (3; parsed and validated, not yet enforced by this version):\n",
            "  slow         up 20mbit, down 20mbit, weight 1\n",
            "  asym         up 5mbit, down 2MiB/s, weight 1\n",
            "  live         up no cap, down no cap, weight 4\n",
            "  10.8.0.10/32             -> hk0, class slow\n",
            "  10.8.0.11/32             -> wg\n",
            "docker: a label egressd.class=CLASS gives a labelled container its class (an unknown class rejects, as an unknown tunnel does)\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from\n{out}");
        }
        let plain = text
            .replace(r#", rate: "1.5gbit""#, "")
            .replace(r#", class: "slow""#, "")
            .replace(r#"classes: { "slow": (rate: "20mbit"), "asym": (rate_up: "5mbit", rate_down: "2MiB/s"), "live": (weight: 4) },"#, "");
        let out = summary(&Settings::parse("t.ron", &plain).unwrap());
        assert!(!out.contains("class") && !out.contains("rate"), "{out}");
    }
}
