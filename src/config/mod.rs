//! Configuration: RON text → validated [`Settings`].
//!
//! Pure apart from [`Settings::resolve`], which asks the system resolver for
//! tunnel servers given by name. Every error carries the file, line and
//! column and says what to change.

pub mod rate;
mod raw;
mod resolve;
pub mod size;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ron::extensions::Extensions;

use crate::route::{Cidr, RouteTable};
use rate::BytesPerSec;
use raw::RawConfig;
pub use raw::{DAYS_MAX, DAYS_MIN_MS, STATE_DIR_DEFAULT, TcpIntercept, WEIGHT_MAX};
use validate::validate;

/// The demo topology's config (scripts/demo.sh, `egressd run` with no --config).
pub const DEMO_CONFIG: &str = include_str!("demo.ron");

/// Index of a tunnel in [`Settings::tunnels`].
pub type TunnelId = u16;

/// Index of a class in [`Settings::classes`].
pub type ClassId = u16;

/// Where a route sends its sources: a tunnel, and the class each source
/// address gets (`None`: no cap, weight 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    pub tunnel: TunnelId,
    pub class: Option<ClassId>,
}

impl RouteTarget {
    /// A route to `tunnel` with no class.
    pub fn tunnel(tunnel: TunnelId) -> RouteTarget {
        RouteTarget { tunnel, class: None }
    }
}

/// A bandwidth class (issue 26): what each source address it is given may
/// use; with a quota (issue 27), how much per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    /// Bytes per second from the source to the exit; `None`: no cap.
    pub rate_up: Option<BytesPerSec>,
    /// Bytes per second from the exit to the source; `None`: no cap.
    pub rate_down: Option<BytesPerSec>,
    /// The source's share of a tunnel's `rate` among its busy sources:
    /// its weight over their sum. 1 to [`WEIGHT_MAX`]; 1 unless set.
    pub weight: u32,
    /// Bytes per period, both directions, DNS included; `None`: unmetered.
    pub quota: Option<Quota>,
}

/// A class's quota: `quota: (bytes: "200GiB", every_days: 30), on_quota: ...`.
///
/// Whose allowance it is: a labelled container's (by container name, so a
/// re-created container keeps it), or a config route's prefix (shared by
/// the addresses under it). See `crate::quota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes per period; never 0.
    pub bytes: u64,
    /// The period (`every_days`), whole milliseconds, 1 s to [`DAYS_MAX`] days.
    pub every: Duration,
    pub on: OnQuota,
}

/// What a spent quota does until its period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnQuota {
    /// Fail closed: new flows reset, datagrams dropped, open flows ended.
    Reject,
    /// Carry on at this rate (bytes per second, each direction).
    Throttle(BytesPerSec),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub tunnels: Vec<Tunnel>,
    pub routes: RouteTable<RouteTarget>,
    /// Bandwidth classes, in file order; routes and label routes name them by [`ClassId`].
    pub classes: Vec<Class>,
    /// The tunnel for sources no route matches; `None` rejects them.
    pub default: Option<TunnelId>,
    pub intercept: Intercept,
    pub tcp: TcpSettings,
    pub udp: UdpSettings,
    /// Front loops and tunnel workers, each; never 0 once validated.
    pub threads: usize,
    pub control: ControlSettings,
    pub bypass: Vec<Cidr>,
    pub dns: DnsSettings,
    /// Label routes from the Docker Engine API, when set.
    pub docker: Option<DockerSettings>,
    /// Distinct source addresses a prefix route (or the default route) may
    /// have at once, TCP and UDP together; host routes are not capped.
    pub max_sources_per_route: usize,
    /// Where the quota counters are kept (absolute; `/var/lib/egressd` by default).
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// The Engine API's Unix socket.
    pub socket: PathBuf,
    /// The label whose value names a container's tunnel.
    pub label: String,
    /// The label whose value names its class (read on containers that carry `label`).
    pub class_label: String,
}

/// Where container DNS goes when it asked a resolver no exit can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Port-53 queries (UDP and TCP) whose original destination is not public
    /// (a reserved range: private, link-local, loopback; Docker's embedded DNS
    /// forwards to such resolvers) go here, through the container's tunnel;
    /// the answer comes back from the address the container asked.
    pub upstream: SocketAddr,
}

impl DnsSettings {
    /// The destination a query to `orig_dst` is sent to.
    pub fn target(&self, orig_dst: SocketAddr) -> SocketAddr {
        if orig_dst.port() == 53 && crate::route::is_reserved(orig_dst.ip()) {
            self.upstream
        } else {
            orig_dst
        }
    }
}

/// A container interface as `intercept.interfaces` names it: an exact name,
/// or a prefix followed by `+` (iptables) or `*` (nft), e.g. `br-+` for
/// Docker's generated `br-<id>` bridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePattern {
    pub prefix: String,
    pub wildcard: bool,
}

impl IfacePattern {
    pub fn parse(s: &str) -> Option<IfacePattern> {
        let (prefix, wildcard) = match s.strip_suffix(['+', '*']) {
            Some(p) => (p, true),
            None => (s, false),
        };
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.@:".contains(c);
        if prefix.len() > 15 || (!wildcard && prefix.is_empty()) || !prefix.chars().all(ok_char) {
            return None;
        }
        Some(IfacePattern { prefix: prefix.to_string(), wildcard })
    }

    /// An exact interface name, trusted (tests, and names already checked).
    pub fn exact(name: &str) -> IfacePattern {
        IfacePattern { prefix: name.to_string(), wildcard: false }
    }

    /// An exact interface name found on the host, checked as a config
    /// pattern is: it goes into a shell script, and Linux allows names such
    /// as `$(reboot)` or `br0;x`. `None` for a name with any other character
    /// or one that would read as a pattern (`br+`).
    pub fn found(name: &str) -> Option<IfacePattern> {
        IfacePattern::parse(name).filter(|p| !p.wildcard)
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard { name.starts_with(&self.prefix) } else { name == self.prefix }
    }

    /// As `iptables -i` takes it (`br-+`).
    pub fn iptables(&self) -> String {
        if self.wildcard { format!("{}+", self.prefix) } else { self.prefix.clone() }
    }

    /// As nft's `iifname` takes it (`"br-*"`), quoted.
    pub fn nft(&self) -> String {
        if self.wildcard { format!("\"{}*\"", self.prefix) } else { format!("\"{}\"", self.prefix) }
    }
}

impl fmt::Display for IfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iptables())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub kind: TunnelKind,
    /// The exit's capacity, bytes per second each direction, shared by the
    /// classes' weights; `None`: not known, not shared.
    pub rate: Option<BytesPerSec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelKind {
    Socks5 {
        server: Server,
        auth: Option<Credentials>,
        udp: bool,
        udp_relay: Option<SocketAddr>,
        /// Greeted connections kept ready for this tunnel (all workers together); 0: none.
        warm: u16,
        /// UDP associations kept ready (control connection + relay socket); 0: none.
        warm_udp: u16,
        /// The most each pool grows to when bursts of new flows teach it
        /// (never below `warm` / `warm_udp`; equal to them: fixed pools).
        warm_max: u16,
        /// Seconds without a flow after which the pools close what they hold
        /// and stop refilling until the next flow; 0: never.
        warm_idle_secs: u32,
        /// Pipeline the handshake (and the client's first bytes) when a probe shows the server takes it.
        pipeline: bool,
    },
    HttpConnect {
        server: Server,
        auth: Option<Credentials>,
        /// Send the client's first bytes right behind the CONNECT request (not probed: opt-in).
        pipeline: bool,
    },
    Direct {
        interface: Option<String>,
        mark: Option<u32>,
        bind: Option<IpAddr>,
    },
}

/// The most pooled connections one tunnel may hold.
pub const WARM_MAX: u16 = 64;

impl TunnelKind {
    /// How many greeted connections the tunnel keeps ready (0 for kinds without a pool).
    pub fn warm(&self) -> usize {
        match self {
            TunnelKind::Socks5 { warm, server, .. } if server.addr.is_some() => usize::from(*warm),
            _ => 0,
        }
    }

    /// The most the tunnel's pools grow to by learning bursts (0 without a pool).
    pub fn warm_max(&self) -> usize {
        match self {
            TunnelKind::Socks5 { warm_max, server, .. } if server.addr.is_some() => usize::from(*warm_max),
            _ => 0,
        }
    }

    /// How long the tunnel's pools stay warm without a flow (`None`: always).
    pub fn warm_idle(&self) -> Option<Duration> {
        match self {
            TunnelKind::Socks5 { warm_idle_secs, .. } if *warm_idle_secs > 0 => {
                Some(Duration::from_secs(u64::from(*warm_idle_secs)))
            }
            _ => None,
        }
    }

    /// How many ready UDP associations the tunnel keeps (0 without UDP).
    pub fn warm_udp(&self) -> usize {
        match self {
            TunnelKind::Socks5 { warm_udp, server, udp: true, .. } if server.addr.is_some() => {
                usize::from(*warm_udp)
            }
            _ => 0,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            TunnelKind::Socks5 { .. } => "Socks5",
            TunnelKind::HttpConnect { .. } => "HttpConnect",
            TunnelKind::Direct { .. } => "Direct",
        }
    }

    pub fn server(&self) -> Option<&Server> {
        match self {
            TunnelKind::Socks5 { server, .. } | TunnelKind::HttpConnect { server, .. } => Some(server),
            TunnelKind::Direct { .. } => None,
        }
    }
}

/// A tunnel server: `ip:port`, or `host:port` resolved at start and reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// Known at parse time for an IP; filled by [`Settings::resolve`] for a name.
    pub addr: Option<SocketAddr>,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) if a.ip().to_string() == self.host.trim_matches(['[', ']']) => write!(f, "{a}"),
            Some(a) => write!(f, "{}:{} ({a})", self.host, self.port),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// RFC 1929 / Basic credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <hidden> }}", self.username)
    }
}

#[derive(Debug, Clone)]
pub struct Intercept {
    pub tcp: TcpIntercept,
    pub mark: u32,
    pub table: u32,
    /// The container interfaces every rule is scoped to. Empty: the
    /// interfaces holding the listen addresses, found when `rules` runs.
    pub interfaces: Vec<IfacePattern>,
    /// Narrows what is tunnelled within the interfaces; empty: everything
    /// arriving on them. Whatever is not intercepted meets the kill switch.
    pub sources: Vec<Cidr>,
}

#[derive(Debug, Clone)]
pub struct TcpSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a half-closed flow (one direction ended) may stay silent;
    /// never longer than `idle_timeout`.
    pub half_close_timeout: Duration,
    pub splice: bool,
    /// Flows one source address may have open at once.
    pub max_flows_per_source: u32,
    /// New flows per source: the token bucket's rate and size.
    pub new_flows_per_source_per_sec: u32,
    pub new_flows_per_source_burst: u32,
    /// One source may hold at most half of the descriptors the other
    /// sources leave free (of the process's limit less a reserve).
    pub fd_share: bool,
    /// Client bytes held while tunnels open, per worker; past it a client
    /// is not read until its tunnel is open.
    pub early_bytes_per_worker: usize,
    /// After `egressd upgrade`, how long the old process keeps relaying the
    /// flows it has open before it resets them and exits (issue 28).
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UdpSettings {
    pub idle_timeout: Duration,
    pub dns_idle_timeout: Duration,
    pub max_sessions: usize,
    pub max_reply_sockets: usize,
    pub pending_datagrams: usize,
    pub dns_over_tcp: bool,
    pub dns_answer_timeout: Duration,
    /// Sessions one source address may hold (its own LRU goes past this).
    pub max_sessions_per_source: usize,
    /// New sessions per source: the token bucket's rate and size.
    pub new_sessions_per_source_per_sec: u32,
    pub new_sessions_per_source_burst: u32,
    /// Bytes of datagrams queued while associations are set up: per
    /// worker, and what one source may hold of it.
    pub pending_bytes_per_worker: usize,
    pub pending_bytes_per_source: usize,
    /// DNS over TCP: the longest query carried, and the unwritten query
    /// bytes one connection may queue.
    pub dns_max_query_bytes: usize,
    pub dns_queue_bytes_per_connection: usize,
    /// Sources holding no session whose new-session token bucket is kept
    /// (process-wide, split across the workers; 0 forgets it at once).
    pub max_idle_sources: usize,
}

/// The most `udp.max_idle_sources` may be (about 128 bytes each).
const MAX_IDLE_SOURCES: usize = 1 << 20;

impl UdpSettings {
    /// Each worker's share of a process-wide bound (`max_sessions`,
    /// `max_reply_sockets`): split evenly, at least 1, so the shares add up
    /// to the bound (a source's sessions all live in one worker).
    pub fn per_worker(total: usize, workers: usize) -> usize {
        (total / workers.max(1)).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// A route source without a flow or session this long has its counters
    /// and series forgotten (`control.forget_sources_secs`).
    pub forget_sources: Duration,
}

/// A config error: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error is not about one place in the file.
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Parses and validates config text. `file` only names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Settings, ConfigError> {
        let opts = ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME);
        let raw: RawConfig = opts.from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            line: e.span.start.line,
            col: e.span.start.col,
            msg: explain(&e.code),
        })?;
        validate(raw, &Locator { file, text })
    }

    /// Reads and parses a config file.
    pub fn load(path: &std::path::Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            msg: format!("cannot read the config file: {e}"),
        })?;
        Settings::parse(&file, &text)
    }

    /// Resolves tunnel servers given by host name (the system resolver):
    /// each distinct name once, [`resolve::THREADS`] at a time. A name that
    /// does not resolve is an error naming the first such tunnel.
    pub fn resolve(&mut self, file: &str) -> Result<(), ConfigError> {
        resolve::servers(&mut self.tunnels, resolve::THREADS, resolve::system).map_err(|(tunnel, host)| {
            ConfigError {
                file: file.to_string(),
                line: 0,
                col: 0,
                msg: format!(
                    "tunnel \"{tunnel}\": server name \"{host}\" does not resolve; fix the name or write the address as ip:port"
                ),
            }
        })
    }

    pub fn tunnel_id(&self, name: &str) -> Option<TunnelId> {
        self.tunnels.iter().position(|t| t.name == name).map(|i| i as TunnelId)
    }

    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.classes.iter().position(|c| c.name == name).map(|i| i as ClassId)
    }

    pub fn class(&self, id: ClassId) -> Option<&Class> {
        self.classes.get(usize::from(id))
    }

    /// Whether any class carries a quota (then the counters are kept).
    pub fn metered(&self) -> bool {
        self.classes.iter().any(|c| c.quota.is_some())
    }

    /// A route's target as `check`, `route list` and the log show it: the
    /// tunnel's name, then `, class NAME` when the route gives one.
    pub fn target_text(&self, t: RouteTarget) -> String {
        let tunnel = self.tunnels.get(usize::from(t.tunnel)).map_or("?", |x| x.name.as_str());
        match t.class.and_then(|c| self.class(c)) {
            Some(c) => format!("{tunnel}, class {}", c.name),
            None => tunnel.to_string(),
        }
    }

    /// The sources `rules` intercepts on the container interfaces, or
    /// `None` for all of them (intercept.sources empty).
    pub fn intercepted_sources(&self) -> Option<&[Cidr]> {
        if self.intercept.sources.is_empty() { None } else { Some(&self.intercept.sources) }
    }
}

/// Finds where a string literal stands in the config text, for errors found
/// after parsing (cross references), which ron cannot place for us.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    /// An error at the `nth` (0-based) occurrence of `"literal"` after `key`.
    fn err_at(&self, key: &str, literal: &str, nth: usize, msg: String) -> ConfigError {
        let quoted = format!("\"{literal}\"");
        let from = self.text.find(key).unwrap_or(0);
        let pos = self.text[from..].match_indices(&quoted).nth(nth).map(|(i, _)| from + i);
        self.at(pos, msg)
    }

    /// An error at the first `key: "literal"` after `section` (spaces
    /// around the colon allowed), so that a tunnel or a class of the same
    /// name elsewhere in the section is not taken for it.
    fn err_at_key(&self, section: &str, key: &str, literal: &str, msg: String) -> ConfigError {
        let quoted = format!("\"{literal}\"");
        let from = self.text.find(section).unwrap_or(0);
        let pos = self.text[from..].match_indices(&quoted).map(|(i, _)| from + i).find(|&p| {
            let before = self.text[..p].trim_end();
            before.strip_suffix(':').is_some_and(|b| b.trim_end().ends_with(key))
        });
        self.at(pos, msg)
    }

    /// An error at byte `pos` of the text (nowhere when `None`).
    fn at(&self, pos: Option<usize>, msg: String) -> ConfigError {
        let (line, col) = match pos {
            Some(p) => {
                let before = &self.text[..p];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, col)
            }
            None => (0, 0),
        };
        ConfigError { file: self.file.to_string(), line, col, msg }
    }

    fn err(&self, msg: String) -> ConfigError {
        ConfigError { file: self.file.to_string(), line: 0, col: 0, msg }
    }
}

fn explain(code: &ron::Error) -> String {
    match code {
        ron::Error::NoSuchStructField { found: field, expected, outer } => {
            let within = outer.as_deref().map(|o| format!(" in {o}")).unwrap_or_default();
            format!("unknown key `{field}`{within}; expected one of: {}", expected.join(", "))
        }
        ron::Error::MissingStructField { field, outer } => {
            let within = outer.as_deref().map(|o| format!(" in {o}")).unwrap_or_default();
            format!("missing key `{field}`{within}; it is required")
        }
        ron::Error::NoSuchEnumVariant { found, expected, .. } => {
            format!("unknown kind `{found}`; expected one of: {}", expected.join(", "))
        }
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests;
