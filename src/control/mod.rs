//! The control socket: counters and live route changes for `egressd stats`
//! and `egressd route`, and Prometheus text for `metrics_listen`.
//!
//! A Unix stream socket (mode 0600: root or egressd's own user). One request
//! line per connection; the answer starts with `ok` or `error: ...` and the
//! connection closes. Served by one small thread of its own, never by the
//! data path.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::front::{Live, Shared};
use crate::route::Cidr;
use crate::stats::{self, Registry};
use crate::worker::{Handoff, WorkerHandle};

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Stats,
    Metrics,
    RouteList,
    RouteSet { source: Cidr, tunnel: String, reset: bool },
    RouteDel { source: Cidr, reset: bool },
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
        ["route", "list"] => Ok(Request::RouteList),
        ["route", "set", src, tunnel, rest @ ..] => {
            Ok(Request::RouteSet { source: cidr(src)?, tunnel: tunnel.to_string(), reset: reset(rest)? })
        }
        ["route", "del", src, rest @ ..] => Ok(Request::RouteDel { source: cidr(src)?, reset: reset(rest)? }),
        _ => Err(format!("unknown request `{}`", line.trim())),
    }
}

/// The request line for `r` (what the CLI sends).
pub fn encode_request(r: &Request) -> String {
    let reset = |b: bool| if b { " reset" } else { "" };
    match r {
        Request::Stats => "stats\n".into(),
        Request::Metrics => "metrics\n".into(),
        Request::RouteList => "route list\n".into(),
        Request::RouteSet { source, tunnel, reset: r } => {
            format!("route set {source} {tunnel}{}\n", reset(*r))
        }
        Request::RouteDel { source, reset: r } => format!("route del {source}{}\n", reset(*r)),
    }
}

/// What the control thread needs of the running daemon.
pub struct Control {
    pub live: Arc<Live>,
    pub workers: Vec<WorkerHandle>,
    pub registry: Arc<Registry>,
}

impl Control {
    /// Answers one request: `Ok(body)` or `Err(message)`.
    pub fn handle(&self, req: Request) -> Result<String, String> {
        match req {
            Request::Stats => Ok(stats::table(
                &self.registry.total(),
                &self.registry.per_tunnel(),
                &self.registry.per_source(),
            )),
            Request::Metrics => Ok(stats::prometheus(
                &self.registry.total(),
                &self.registry.per_tunnel(),
                &self.registry.per_source(),
            )),
            Request::RouteList => Ok(route_list(&self.live.load())),
            Request::RouteSet { source, tunnel, reset } => {
                self.live.update(|cur| {
                    let mut s = (*cur.settings).clone();
                    let id = s.tunnel_id(&tunnel).ok_or_else(|| format!("no tunnel named \"{tunnel}\""))?;
                    s.routes.insert(source, id);
                    Ok::<_, String>(cur.with_settings(s))
                })?;
                info!(target: "egressd::control", "route {source} -> {tunnel} (live, until restart or reload)");
                self.reset(source, reset);
                Ok(format!(
                    "route {source} -> {tunnel}{}\n",
                    if reset { "; its flows were reset" } else { "" }
                ))
            }
            Request::RouteDel { source, reset } => {
                self.live.update(|cur| {
                    let mut s = (*cur.settings).clone();
                    s.routes.remove(source).ok_or_else(|| format!("no route for exactly {source}"))?;
                    Ok::<_, String>(cur.with_settings(s))
                })?;
                info!(target: "egressd::control", "route {source} deleted (live, until restart or reload)");
                self.reset(source, reset);
                Ok(format!("route {source} deleted\n"))
            }
        }
    }

    fn reset(&self, source: Cidr, reset: bool) {
        if !reset {
            return;
        }
        for w in &self.workers {
            // A full queue would only delay this; try once more after a wake.
            if w.try_send(Handoff::ResetSource(source)).is_err() {
                w.wake();
                let _ = w.try_send(Handoff::ResetSource(source));
            }
            w.wake();
        }
    }

    /// Serves the Unix socket at `path` on a thread of its own.
    pub fn spawn(self, path: &Path) -> io::Result<std::thread::JoinHandle<()>> {
        let listener = bind_unix(path)?;
        let path = path.to_path_buf();
        std::thread::Builder::new().name("egressd-ctl".into()).spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => self.serve(c),
                    Err(e) => warn!(target: "egressd::control", "control socket {}: {e}", path.display()),
                }
            }
        })
    }

    fn serve(&self, mut c: UnixStream) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let read = BufReader::new((&c).take(1024)).read_line(&mut line);
        let answer = match read.map_err(|e| e.to_string()).and_then(|_| parse_request(&line)) {
            Ok(req) => self.handle(req),
            Err(e) => Err(e),
        };
        let _ = match answer {
            Ok(body) => write!(c, "ok\n{body}"),
            Err(e) => writeln!(c, "error: {e}"),
        };
    }
}

fn route_list(s: &Shared) -> String {
    let mut routes: Vec<_> = s.settings.routes.iter().collect();
    routes.sort_by_key(|(c, _)| (!c.is_ipv4(), c.addr(), c.len()));
    let mut o = String::new();
    for (c, id) in routes {
        o.push_str(&format!("{c} -> {}\n", s.settings.tunnels[usize::from(id)].name));
    }
    match s.settings.default {
        Some(id) => o.push_str(&format!("(default) -> {}\n", s.settings.tunnels[usize::from(id)].name)),
        None => o.push_str("(default) -> reject\n"),
    }
    o
}

/// Binds the control socket, replacing a stale file but never a live daemon's.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use: is another egressd running?", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
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

/// Serves `GET /metrics` (Prometheus text) on `addr` on a thread of its own.
pub fn spawn_metrics(addr: SocketAddr, registry: Arc<Registry>) -> io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    std::thread::Builder::new().name("egressd-metrics".into()).spawn(move || {
        for conn in l.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let mut first = String::new();
            if BufReader::new((&conn).take(8192)).read_line(&mut first).is_err() {
                continue;
            }
            let mut conn = conn;
            let _ = if first.starts_with("GET /metrics ") || first.starts_with("GET / ") {
                let body = stats::prometheus(&registry.total(), &registry.per_tunnel(), &registry.per_source());
                write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                write!(conn, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            };
        }
    })
}

/// The default control socket path (SPEC §3).
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/egressd.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Stats,
            Request::Metrics,
            Request::RouteList,
            Request::RouteSet { source: "10.8.0.12/32".parse().unwrap(), tunnel: "hk1".into(), reset: true },
            Request::RouteSet { source: "fd08::/64".parse().unwrap(), tunnel: "x".into(), reset: false },
            Request::RouteDel { source: "10.8.0.0/24".parse().unwrap(), reset: false },
        ];
        for r in reqs {
            assert_eq!(parse_request(&encode_request(&r)), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn bad_requests() {
        assert!(parse_request("").is_err());
        assert!(parse_request("route set 10.8.0.300 hk0").unwrap_err().contains("10.8.0.300"));
        assert!(parse_request("route set 10.8.0.1 hk0 now").is_err());
        assert!(parse_request("shutdown").unwrap_err().contains("unknown request"));
    }

    #[test]
    fn live_route_changes_through_the_socket() {
        let text = r#"(listen: ["10.8.0.1:10900"],
            tunnels: { "a": Direct(), "b": Direct() },
            routes: [(source: "10.8.0.10", tunnel: "a")])"#;
        let s = crate::config::Settings::parse("t.ron", text).unwrap();
        let live = Arc::new(Live::new(Shared::new(Arc::new(s))));
        let ctl = Control { live: Arc::clone(&live), workers: Vec::new(), registry: Arc::default() };
        let dir = std::env::temp_dir().join(format!("egressd-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _t = ctl.spawn(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let g0 = live.generation();
        let set =
            Request::RouteSet { source: "10.8.0.11".parse().unwrap(), tunnel: "b".into(), reset: false };
        ask(&path, &set).unwrap();
        assert_eq!(live.generation(), g0 + 1);
        assert_eq!(
            live.load().route_id("10.8.0.11".parse().unwrap()),
            Some((Some("10.8.0.11/32".parse().unwrap()), 1))
        );
        let list = ask(&path, &Request::RouteList).unwrap();
        assert!(list.contains("10.8.0.11/32 -> b"), "{list}");
        let bad =
            Request::RouteSet { source: "10.8.0.12".parse().unwrap(), tunnel: "zz".into(), reset: false };
        assert_eq!(ask(&path, &bad), Err("no tunnel named \"zz\"".into()));
        ask(&path, &Request::RouteDel { source: "10.8.0.11".parse().unwrap(), reset: false }).unwrap();
        assert_eq!(live.load().route_id("10.8.0.11".parse().unwrap()), None);
        assert!(ask(&path, &Request::Stats).unwrap().contains("tunnel"));
        // A second daemon must not take over a live socket.
        let ctl2 = Control { live, workers: Vec::new(), registry: Arc::default() };
        assert!(ctl2.spawn(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
