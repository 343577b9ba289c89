//! The control socket: counters and live route changes for `egressd stats`
//! and `egressd route`, and Prometheus text for `metrics_listen`.
//!
//! A Unix stream socket (mode 0600: root or egressd's own user). One request
//! line per connection; the answer starts with `ok` or `error: ...` and the
//! connection closes. Served by one small thread of its own, never by the
//! data path.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};

use crate::config::RouteTarget;
use crate::pool::Pools;
use crate::quota::Keeper;
use crate::route::Cidr;
use crate::snapshot::{Live, Shared};
use crate::stats::{self, Registry};
use crate::worker::{WorkerHandle, reset_everywhere};

mod metrics;
mod quota;
pub use metrics::{exposure as metrics_exposure, spawn_metrics};

/// How long a reset waits for room on a worker's command queue.
const RESET_WAIT: Duration = Duration::from_secs(2);

/// Whether `rules` sends `source` to egressd: an empty `intercept.sources`
/// means everything on the container interfaces.
pub fn intercepted(sources: &[Cidr], source: Cidr) -> bool {
    sources.is_empty()
        || sources
            .iter()
            .any(|c| c.is_ipv4() == source.is_ipv4() && c.len() <= source.len() && c.contains(source.addr()))
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Stats,
    Metrics,
    /// One tab-separated row per route source, for `egressd top`.
    Top,
    RouteList,
    RouteSet {
        source: Cidr,
        tunnel: String,
        reset: bool,
    },
    RouteDel {
        source: Cidr,
        reset: bool,
    },
    /// `quota list` (issue 27).
    QuotaList,
    /// `quota reset NAME`, or every identity for `None` (`--all`).
    QuotaReset(Option<String>),
    /// `upgrade [--binary PATH] [--no-wait]` (issue 28): answered line by
    /// line as it goes, the last line `ok` or `error: ...`.
    Upgrade {
        binary: Option<PathBuf>,
        wait: bool,
    },
}

/// One request line, e.g. `route set 10.8.0.12/32 hk1 reset`.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let cidr = |s: &str| s.parse::<Cidr>().map_err(|e| format!("{s}: {e}"));
    let reset = |rest: &[&str]| match rest {
        [] => Ok(false),
        ["reset"] => Ok(true),
        _ => Err(format!("unexpected words: {}", rest.join(" "))),
    };
    match w.as_slice() {
        ["stats"] => Ok(Request::Stats),
        ["metrics"] => Ok(Request::Metrics),
        ["top"] => Ok(Request::Top),
        ["route", "list"] => Ok(Request::RouteList),
        ["route", "set", src, tunnel, rest @ ..] => {
            Ok(Request::RouteSet { source: cidr(src)?, tunnel: tunnel.to_string(), reset: reset(rest)? })
        }
        ["route", "del", src, rest @ ..] => Ok(Request::RouteDel { source: cidr(src)?, reset: reset(rest)? }),
        ["quota", "list"] => Ok(Request::QuotaList),
        ["quota", "reset", "--all"] => Ok(Request::QuotaReset(None)),
        ["quota", "reset", name] => Ok(Request::QuotaReset(Some(name.to_string()))),
        ["upgrade", rest @ ..] => {
            let (mut binary, mut wait) = (None, true);
            let mut it = rest.iter();
            while let Some(w) = it.next() {
                match *w {
                    "binary" => binary = Some(PathBuf::from(it.next().ok_or("binary needs a path")?)),
                    "no-wait" => wait = false,
                    other => return Err(format!("unexpected word: {other}")),
                }
            }
            Ok(Request::Upgrade { binary, wait })
        }
        _ => Err(format!("unknown request `{}`", line.trim())),
    }
}

/// The request line for `r` (what the CLI sends).
pub fn encode_request(r: &Request) -> String {
    let reset = |b: bool| if b { " reset" } else { "" };
    match r {
        Request::Stats => "stats\n".into(),
        Request::Metrics => "metrics\n".into(),
        Request::Top => "top\n".into(),
        Request::RouteList => "route list\n".into(),
        Request::RouteSet { source, tunnel, reset: r } => {
            format!("route set {source} {tunnel}{}\n", reset(*r))
        }
        Request::RouteDel { source, reset: r } => format!("route del {source}{}\n", reset(*r)),
        Request::QuotaList => "quota list\n".into(),
        Request::QuotaReset(None) => "quota reset --all\n".into(),
        Request::QuotaReset(Some(n)) => format!("quota reset {n}\n"),
        Request::Upgrade { binary, wait } => {
            let b = binary.as_ref().map(|p| format!(" binary {}", p.display())).unwrap_or_default();
            format!("upgrade{b}{}\n", if *wait { "" } else { " no-wait" })
        }
    }
}

/// What the control thread needs of the running daemon.
pub struct Control {
    pub live: Arc<Live>,
    pub workers: Vec<WorkerHandle>,
    pub registry: Arc<Registry>,
    pub pools: Arc<Pools>,
    /// The quota counters and their saver (issue 27).
    pub quota: Arc<Keeper>,
    /// Where `upgrade` requests go to the main thread (issue 28).
    pub upgrades: Arc<crate::upgrade::Desk>,
}

/// Stops a serving thread: it stops accepting and its listener closes (a
/// copy handed to the new process of an upgrade keeps serving).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl Stopper {
    fn new(poll: &mio::Poll, token: mio::Token) -> io::Result<Stopper> {
        Ok(Stopper { flag: Arc::default(), waker: Arc::new(mio::Waker::new(poll.registry(), token)?) })
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

impl Control {
    /// Answers one request: `Ok(body)` or `Err(message)`.
    pub fn handle(&self, req: Request) -> Result<String, String> {
        match req {
            Request::Stats => {
                let sources = named_sources(&self.live.load(), self.registry.per_source());
                let mut t = stats::table(&self.registry.total(), &self.registry.per_tunnel(), &sources);
                t.push_str(&refusals(&sources));
                t.push_str(&shaped(&sources));
                t.push_str(&quota::section(&self.quota.ledger));
                t.push_str(&self.pools.table());
                Ok(t)
            }
            Request::Metrics => {
                let mut m = stats::prometheus(
                    &self.registry.total(),
                    &self.registry.per_tunnel(),
                    &self.registry.per_source(),
                );
                m.push_str(&quota::prometheus(&self.quota.ledger));
                Ok(m)
            }
            Request::QuotaList => Ok(quota::list(&self.quota.ledger)),
            Request::QuotaReset(name) => {
                let body = quota::reset(&self.quota, name.as_deref())?;
                info!(target: "egressd::control", "{}", body.trim_end());
                Ok(body)
            }
            Request::Top => {
                let mut rows = top_rows(&self.live.load(), &self.registry.per_source());
                rows.push_str(&quota::top_rows(&self.quota.ledger));
                Ok(rows)
            }
            Request::RouteList => Ok(route_list(&self.live.load())),
            // Answered as it goes, by `serve`.
            Request::Upgrade { .. } => Err("upgrade is answered line by line".into()),
            Request::RouteSet { source, tunnel, reset } => {
                let mut uncovered = false;
                self.live.update(|cur| {
                    let mut s = (*cur.settings).clone();
                    let id = s.tunnel_id(&tunnel).ok_or_else(|| format!("no tunnel named \"{tunnel}\""))?;
                    // The route is replaced whole: a class it had goes with it.
                    s.routes.insert(source, RouteTarget::tunnel(id));
                    uncovered = !intercepted(&s.intercept.sources, source);
                    Ok::<_, String>(cur.with_settings(s).with_manual(source, true))
                })?;
                info!(target: "egressd::control", "route {source} -> {tunnel} (live, until restart or reload)");
                let mut body = format!("route {source} -> {tunnel}");
                if reset {
                    self.reset(source).map_err(|e| format!("{body} (set), but {e}"))?;
                    body.push_str("; its flows were reset");
                }
                body.push('\n');
                if uncovered {
                    warn!(target: "egressd::control", "route {source}: not within intercept.sources; it has no effect");
                    body.push_str(&format!(
                        "warning: {source} is not within intercept.sources, so `egressd rules` does not send \
                         its traffic to egressd and this route has no effect (add it to intercept.sources)\n"
                    ));
                }
                Ok(body)
            }
            Request::RouteDel { source, reset } => {
                self.live.update(|cur| {
                    let mut s = (*cur.settings).clone();
                    s.routes.remove(source).ok_or_else(|| format!("no route for exactly {source}"))?;
                    Ok::<_, String>(cur.with_settings(s).with_manual(source, false))
                })?;
                info!(target: "egressd::control", "route {source} deleted (live, until restart or reload)");
                if reset {
                    self.reset(source).map_err(|e| format!("route {source} deleted, but {e}"))?;
                    return Ok(format!("route {source} deleted; its flows were reset\n"));
                }
                Ok(format!("route {source} deleted\n"))
            }
        }
    }

    /// Orders every worker to reset the source's flows, on the command
    /// queue the data path never fills, and returns once each has done it
    /// (so a flow after `route set` returns is on the new route); `Err`
    /// names how many did not.
    fn reset(&self, source: Cidr) -> Result<(), String> {
        let missed = reset_everywhere(&self.workers, source, RESET_WAIT);
        if missed == 0 {
            return Ok(());
        }
        warn!(target: "egressd::control", "reset of {source} not confirmed by {missed} workers");
        Err(format!(
            "the reset was not done by {missed} of {} workers within {RESET_WAIT:?} (stuck?): flows of \
             {source} there keep their old tunnel; retry `--reset-flows`",
            self.workers.len()
        ))
    }

    /// Serves `listener` (bound at `path`) on a thread of its own, until stopped.
    pub fn spawn(self, listener: UnixListener, path: &Path) -> io::Result<Stopper> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::UnixListener::from_std(listener);
        let poll = mio::Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, mio::Interest::READABLE)?;
        let stopper = Stopper::new(&poll, WAKER)?;
        let stop = stopper.clone();
        let path = path.to_path_buf();
        std::thread::Builder::new().name("egressd-ctl".into()).spawn(move || {
            let mut poll = poll;
            let mut events = mio::Events::with_capacity(4);
            let mut spare = Spare::new();
            while !stop.stopped() {
                if let Err(e) = poll.poll(&mut events, None)
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    warn!(target: "egressd::control", "control socket {}: {e}", path.display());
                    return;
                }
                // Edge-triggered: accept until the backlog is empty, or stopped.
                while !stop.stopped() {
                    match listener.accept() {
                        Ok((c, _)) => {
                            let c = UnixStream::from(std::os::fd::OwnedFd::from(c));
                            let _ = c.set_nonblocking(false);
                            self.serve(c);
                            spare.refill();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::EMFILE) && spare.give_up() => {
                            debug!(target: "egressd::control", "control socket {}: {e}; using the spare descriptor", path.display());
                        }
                        // Would fail again at once: no busy loop.
                        Err(e) => {
                            debug!(target: "egressd::control", "control socket {}: {e}", path.display());
                            std::thread::sleep(Duration::from_millis(100));
                            spare.refill();
                        }
                    }
                }
            }
        })?;
        Ok(stopper)
    }

    fn serve(&self, mut c: UnixStream) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let read = BufReader::new((&c).take(1024)).read_line(&mut line);
        let answer = match read.map_err(|e| e.to_string()).and_then(|_| parse_request(&line)) {
            Ok(Request::Upgrade { binary, wait }) => return self.upgrade(c, binary, wait),
            Ok(req) => self.handle(req),
            Err(e) => Err(e),
        };
        let _ = match answer {
            Ok(body) => write!(c, "ok\n{body}"),
            Err(e) => writeln!(c, "error: {e}"),
        };
    }

    /// Leaves the request for the main thread (woken by SIGUSR2, as a
    /// service manager would), then passes its report on line by line.
    fn upgrade(&self, mut c: UnixStream, binary: Option<PathBuf>, wait: bool) {
        // No room: the main thread's `Sync` returns once the last word is written.
        let (tx, rx) = crossbeam_channel::bounded(0);
        self.upgrades.put(crate::upgrade::Request { binary, wait, report: tx });
        if let Err(e) = crate::sys::raise_upgrade() {
            let _ = writeln!(c, "error: cannot wake the main thread: {e}");
            return;
        }
        // The client may be gone; the upgrade goes on regardless.
        for r in rx {
            let _ = match r {
                crate::upgrade::Report::Line(l) => writeln!(c, "{l}"),
                crate::upgrade::Report::End(Ok(())) => writeln!(c, "ok"),
                crate::upgrade::Report::End(Err(e)) => writeln!(c, "error: {e}"),
                crate::upgrade::Report::Sync => Ok(()),
            };
        }
    }
}

/// A descriptor kept for one listener alone: when the data path has taken
/// every other one (a flood past the limit with tcp.fd_share off), it is
/// given up for the one accept, so `stats` and a scrape still answer.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn new() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// An accept failed for want of descriptors: gives the spare up so the
    /// next accept gets it; false when there was none to give.
    fn give_up(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a spare again if none is held (after an accept, or a pause).
    fn refill(&mut self) {
        if self.0.is_none() {
            *self = Spare::new();
        }
    }
}

/// The control thread's tokens.
const LISTENER: mio::Token = mio::Token(0);
const WAKER: mio::Token = mio::Token(1);

/// The live routes with their origin: Docker label routes first (they are
/// looked up first), then config and `route set` routes, then the default.
fn route_list(s: &Shared) -> String {
    let mut o = String::new();
    for r in s.labels.routes() {
        let verdict = match r.judge(&s.settings) {
            Ok(target) => s.settings.target_text(target),
            Err(why) => format!("reject ({why})"),
        };
        let host = Cidr::host(r.addr);
        o.push_str(&format!("{host} -> {verdict}  (docker: {} {})\n", r.name, r.short_id()));
    }
    let mut routes: Vec<_> = s.settings.routes.iter().collect();
    routes.sort_by_key(|(c, _)| (!c.is_ipv4(), c.addr(), c.len()));
    for (c, target) in routes {
        let origin = if s.manual.contains(&c) { "route set" } else { "config" };
        o.push_str(&format!("{c} -> {}  ({origin})\n", s.settings.target_text(target)));
    }
    match s.settings.default {
        Some(id) => o.push_str(&format!("(default) -> {}\n", s.settings.tunnels[usize::from(id)].name)),
        None => o.push_str("(default) -> reject\n"),
    }
    o
}

/// Per-source counters named with the container that owns the address,
/// where Docker labels say so, and the class its route gives it.
fn named_sources(s: &Shared, sources: Vec<(String, stats::Snapshot)>) -> Vec<(String, stats::Snapshot)> {
    if s.labels.is_empty() && s.settings.classes.is_empty() {
        return sources;
    }
    sources
        .into_iter()
        .map(|(name, snap)| {
            let cidr = name.parse::<Cidr>().ok();
            let mut label = match cidr.and_then(|c| s.labels.owner(&c)) {
                Some(r) => format!("{name} ({})", r.name),
                None => name,
            };
            // Issue 26: the class the source's route gives it now.
            let class = cidr.and_then(|c| s.target(c.addr())).and_then(|(_, t)| s.settings.class(t.class?));
            if let Some(c) = class {
                label = format!("{label} [class {}]", c.name);
            }
            (label, snap)
        })
        .collect()
}

/// `egressd top`'s rows, one line per route source, tab-separated: source,
/// container name (or `-`), its tunnel now (`-`: no route any more; `reject`:
/// a label naming no tunnel), TCP flows open, UDP sessions open, bytes up,
/// bytes down, datagrams and connections dropped; then (issue 26) the rate
/// up and down it is held to (bytes/s, 0: not shaped) and its bytes held
/// back now.
fn top_rows(s: &Shared, sources: &[(String, stats::Snapshot)]) -> String {
    let mut o = String::new();
    for (label, snap) in sources {
        let cidr = label.parse::<Cidr>().ok();
        let name = cidr.and_then(|c| s.labels.owner(&c)).map_or("-", |r| r.name.as_str());
        let tunnel = match cidr {
            // The default route's source label is "(default)".
            None => {
                s.settings.default.map_or("reject", |id| s.settings.tunnels[usize::from(id)].name.as_str())
            }
            Some(c) => match s.route(c.addr()) {
                Some((Some(m), t)) if m == c => t.name.as_str(),
                _ if name != "-" => "reject",
                _ => "-",
            },
        };
        let drops: u64 = snap.fields().into_iter().filter(|(n, _)| is_drop(n)).map(|(_, v)| v).sum();
        o.push_str(&format!(
            "{label}\t{}\t{tunnel}\t{}\t{}\t{}\t{}\t{drops}\t{}\t{}\t{}\n",
            clean(name),
            snap.tcp_flows_active,
            snap.udp_sessions_active,
            snap.tcp_bytes_up + snap.udp_bytes_up,
            snap.tcp_bytes_down + snap.udp_bytes_down,
            snap.shape_rate_up,
            snap.shape_rate_down,
            snap.tcp_held_bytes,
        ));
    }
    o
}

/// Whether a counter counts connections reset or datagrams dropped (the
/// DROPS column of `top`, the refusals of `stats`).
fn is_drop(name: &str) -> bool {
    name.starts_with("drop_") || name.starts_with("udp_drop_") || name.starts_with("tcp_drop_")
}

/// `stats`' section on what each route source had refused or dropped, by
/// counter (per-source limits among them); empty when nothing was.
fn refusals(sources: &[(String, stats::Snapshot)]) -> String {
    let mut o = String::new();
    for (name, snap) in sources {
        let list: Vec<String> = snap
            .fields()
            .into_iter()
            .filter(|&(n, v)| v > 0 && is_drop(n))
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        if !list.is_empty() {
            o.push_str(&format!("  {name:<24} {}\n", list.join(", ")));
        }
    }
    if o.is_empty() { o } else { format!("\nrefused or dropped, per route source:\n{o}") }
}

/// `stats`' section on the sources held to their rate (a class's cap or
/// their tunnel's share, issue 26): the rate each direction is held to
/// now, bytes held back (TCP waiting in the kernel now, UDP dropped in
/// all), and how often; empty when none was.
fn shaped(sources: &[(String, stats::Snapshot)]) -> String {
    let mut o = String::new();
    let held =
        |s: &stats::Snapshot| s.tcp_shaped_waits + s.udp_drop_shaped + s.shape_rate_up + s.shape_rate_down;
    for (name, snap) in sources.iter().filter(|(_, s)| held(s) > 0) {
        let rate = |r: u64| if r == 0 { "-".to_string() } else { format!("{}/s", bits(r)) };
        o.push_str(&format!(
            "  {name:<24} held to up {} down {}; held back: tcp {} B now, udp {} B ({} datagrams); tcp waits {}\n",
            rate(snap.shape_rate_up),
            rate(snap.shape_rate_down),
            snap.tcp_held_bytes,
            snap.udp_bytes_shaped,
            snap.udp_drop_shaped,
            snap.tcp_shaped_waits,
        ));
    }
    if o.is_empty() {
        o
    } else {
        format!("\nheld to their rate (class or tunnel share), per route source:\n{o}")
    }
}

/// Bytes per second as the config writes rates: `20mbit`, `1.5gbit`.
fn bits(bytes_per_sec: u64) -> String {
    let b = bytes_per_sec as f64 * 8.0;
    let (v, unit) = match b {
        b if b >= 1e9 => (b / 1e9, "gbit"),
        b if b >= 1e6 => (b / 1e6, "mbit"),
        b => (b / 1e3, "kbit"),
    };
    let t = format!("{v:.2}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    format!("{t}{unit}")
}

/// A container name as one tab-separated field: no tabs, newlines or
/// other control characters (names come from Docker, not from us).
fn clean(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Binds the control socket. Only a stale socket (one nobody answers on)
/// is replaced: any other file there is an error, never deleted (a mistyped
/// `control.socket` pointing at the config must not remove it).
/// Binds the control socket at `path` (mode 0600), replacing a stale one.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use: is another egressd running?", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; egressd will not remove it (is control.socket right?)",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Sends one request to a running daemon and returns its answer.
pub fn ask(path: &Path, req: &Request) -> Result<String, String> {
    let mut c = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach egressd at {}: {e} (is it running? is --socket right? are you root?)",
            path.display()
        )
    })?;
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    c.write_all(encode_request(req).as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    match answer.split_once('\n') {
        Some(("ok", body)) => Ok(body.to_string()),
        _ => Err(answer.trim().strip_prefix("error: ").unwrap_or(answer.trim()).to_string()),
    }
}

/// Sends a request answered line by line (`upgrade`): each line to `out`
/// as it comes, until the last, `ok` or `error: ...`.
pub fn ask_lines(path: &Path, req: &Request, out: &mut dyn FnMut(&str)) -> Result<(), String> {
    let mut c = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach egressd at {}: {e} (is it running? is --socket right? are you root?)",
            path.display()
        )
    })?;
    c.write_all(encode_request(req).as_bytes()).map_err(|e| e.to_string())?;
    for line in BufReader::new(c).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line == "ok" {
            return Ok(());
        }
        if let Some(e) = line.strip_prefix("error: ") {
            return Err(e.to_string());
        }
        out(&line);
    }
    Err("the daemon closed the connection without an answer".into())
}

/// The default control socket path (SPEC §3).
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/egressd.sock")
}

#[cfg(test)]
mod tests;
