//! The command line: parse, load settings, run a command, map to an exit code.
//!
//! Exit codes: 0 ok, 1 bad config or failed check, 2 usage.

mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::FromArgs;

use crate::config::{ConfigError, DEMO_CONFIG, Settings, TunnelKind};
use crate::rules::{self, Action, Backend};

/// egressd: each container's TCP, UDP and DNS leave through its own tunnel.
#[derive(FromArgs, Debug)]
pub struct Args {
    #[argh(subcommand)]
    cmd: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Rules(RulesArgs),
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
    match args.cmd {
        Command::Run(a) => run::run(a.config.as_deref(), a.verbose),
        Command::Check(a) => check(a.config.as_deref()),
        Command::Rules(a) => {
            let action = if a.delete { Action::Delete } else { Action::Install };
            match load(a.config.as_deref()) {
                Ok(s) => {
                    print!("{}", rules::script(&s, a.backend, action));
                    ExitCode::SUCCESS
                }
                Err(e) => config_failed(&e),
            }
        }
    }
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
    ExitCode::SUCCESS
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
        let detail = match &t.kind {
            TunnelKind::Socks5 { server, auth, udp, udp_relay } => {
                let mut d = format!("Socks5 {server}");
                if let Some(c) = auth {
                    let _ = write!(d, ", user {} (password set)", c.username);
                }
                let _ = write!(d, ", udp {}", if *udp { "on" } else { "off (DNS over TCP)" });
                if let Some(r) = udp_relay {
                    let _ = write!(d, ", udp relay {r}");
                }
                d
            }
            TunnelKind::HttpConnect { server, auth } => {
                let mut d = format!("HttpConnect {server}");
                if let Some(c) = auth {
                    let _ = write!(d, ", user {} (password set)", c.username);
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
        };
        let _ = writeln!(o, "  {:<12} {detail}", t.name);
    }
    let mut routes: Vec<_> = s.routes.iter().collect();
    routes.sort_by_key(|(c, _)| (!c.is_ipv4(), c.addr(), c.len()));
    let _ = writeln!(o, "routes ({}):", routes.len());
    for (c, id) in routes {
        let _ = writeln!(o, "  {:<24} -> {}", c.to_string(), s.tunnels[usize::from(id)].name);
    }
    match s.default {
        Some(id) => {
            let _ = writeln!(o, "  {:<24} -> {}", "(any other source)", s.tunnels[usize::from(id)].name);
        }
        None => {
            let _ = writeln!(o, "  {:<24} -> reject (TCP reset, UDP dropped)", "(any other source)");
        }
    }
    let sources: Vec<String> = s.intercepted_sources().iter().map(|c| c.to_string()).collect();
    let _ = writeln!(o, "intercepted by `egressd rules`: {}", sources.join(", "));
    if s.intercept.sources.is_empty() && s.default.is_none() {
        let _ = writeln!(
            o,
            "note: only routed sources are intercepted; set intercept.sources to the whole container network so that unrouted containers are rejected instead of leaving by the host's own uplink"
        );
    }
    let _ = writeln!(o, "threads: {} front loops, {} tunnel workers", s.threads, s.threads);
    o
}
