//! Tunnel server names → addresses, asked of the system resolver at start
//! and on every reload ([`super::Settings::resolve`]). Each distinct
//! (host, port) is asked once, up to [`THREADS`] at a time: a thousand
//! tunnels on a few dozen names cost a few dozen lookups, and the wait is
//! about that of the slowest, not the sum of them all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Tunnel, TunnelKind};

/// The most lookups in flight at once.
pub(super) const THREADS: usize = 16;

/// Fills the address of every tunnel server given by name, asking
/// `lookup` once per distinct (host, port), `threads` at a time. A name
/// that does not resolve: the first such tunnel in config order, as
/// (tunnel, host); the tunnels before it are filled.
pub(super) fn servers<F>(tunnels: &mut [Tunnel], threads: usize, lookup: F) -> Result<(), (String, String)>
where
    F: Fn(&str, u16) -> Option<SocketAddr> + Sync,
{
    let mut names: Vec<(String, u16)> = Vec::new();
    for t in tunnels.iter() {
        if let Some(s) = t.kind.server().filter(|s| s.host.parse::<IpAddr>().is_err())
            && !names.iter().any(|(h, p)| *h == s.host && *p == s.port)
        {
            names.push((s.host.clone(), s.port));
        }
    }
    let found: HashMap<(String, u16), Option<SocketAddr>> =
        names.iter().cloned().zip(lookup_all(&names, threads, lookup)).collect();
    for t in tunnels.iter_mut() {
        let server = match &mut t.kind {
            TunnelKind::Socks5 { server, .. } | TunnelKind::HttpConnect { server, .. } => server,
            TunnelKind::Direct { .. } => continue,
        };
        if server.host.parse::<IpAddr>().is_ok() {
            continue;
        }
        match found.get(&(server.host.clone(), server.port)).copied().flatten() {
            Some(a) => server.addr = Some(a),
            None => return Err((t.name.clone(), server.host.clone())),
        }
    }
    Ok(())
}

/// The system resolver's first answer for `host:port`.
pub(super) fn system(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok().and_then(|mut it| it.next())
}

/// `lookup` of each of `names`, answers in the same order; at most
/// `threads` at a time (scoped threads, each taking the next name).
fn lookup_all<F>(names: &[(String, u16)], threads: usize, lookup: F) -> Vec<Option<SocketAddr>>
where
    F: Fn(&str, u16) -> Option<SocketAddr> + Sync,
{
    let mut out = vec![None; names.len()];
    if names.len() <= 1 {
        for (o, (h, p)) in out.iter_mut().zip(names) {
            *o = lookup(h, *p);
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut got = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((h, p)) = names.get(i) else { return got };
            got.push((i, lookup(h, *p)));
        }
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, names.len())).map(|_| s.spawn(work)).collect();
        for w in workers {
            // A lookup that panicked leaves its names unresolved (an error
            // naming the tunnel), never a half-filled config taken as whole.
            for (i, a) in w.join().unwrap_or_default() {
                if let Some(o) = out.get_mut(i) {
                    *o = a;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Settings;

    fn settings(tunnels: &str) -> Settings {
        let text =
            format!(r#"(listen: ["10.8.0.1:10900"], tunnels: {{ {tunnels} }}, routes: [], docker: ())"#);
        Settings::parse("t.ron", &text).unwrap()
    }

    fn addr(s: &Settings, name: &str) -> Option<SocketAddr> {
        s.tunnels.iter().find(|t| t.name == name).and_then(|t| t.kind.server()).and_then(|s| s.addr)
    }

    #[test]
    fn each_distinct_name_is_asked_once_and_concurrently() {
        // 40 tunnels on 20 names (10 of them on two ports): 30 lookups, 4
        // at a time at most, all at once as far as that bound allows.
        let mut tunnels = String::new();
        for i in 0..40 {
            let port = if i >= 20 && i % 2 == 0 { 1081 } else { 1080 };
            tunnels += &format!(r#""t{i}": Socks5(server: "h{}.example:{port}"), "#, i % 20);
        }
        tunnels += r#""ip": Socks5(server: "192.0.2.1:1080"), "d": Direct()"#;
        let mut s = settings(&tunnels);
        let asked = Mutex::new(Vec::new());
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let t0 = Instant::now();
        let got = servers(&mut s.tunnels, 4, |h, p| {
            asked.lock().unwrap().push((h.to_string(), p));
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            now.fetch_sub(1, Ordering::SeqCst);
            let n: u8 = h.trim_start_matches('h').trim_end_matches(".example").parse().unwrap();
            Some(SocketAddr::new([198, 51, 100, n].into(), p))
        });
        assert_eq!(got, Ok(()));
        let mut asked = asked.into_inner().unwrap();
        assert_eq!(asked.len(), 30, "{asked:?}");
        asked.sort();
        asked.dedup();
        assert_eq!(asked.len(), 30, "a name asked twice");
        assert_eq!(most.load(Ordering::SeqCst), 4);
        // 30 lookups of 50 ms, 4 at a time: 8 rounds, not 30.
        assert!(t0.elapsed() < Duration::from_millis(1000), "{:?}", t0.elapsed());
        assert_eq!(addr(&s, "t0"), Some("198.51.100.0:1080".parse().unwrap()));
        assert_eq!(addr(&s, "t20"), Some("198.51.100.0:1081".parse().unwrap()));
        assert_eq!(addr(&s, "t21"), Some("198.51.100.1:1080".parse().unwrap()));
        assert_eq!(addr(&s, "ip"), Some("192.0.2.1:1080".parse().unwrap()));
    }

    #[test]
    fn the_first_tunnel_in_config_order_that_does_not_resolve_is_named() {
        let mut s = settings(
            r#""a": Socks5(server: "ok.example:1080"), "b": HttpConnect(server: "late.bad:3128"),
               "c": Socks5(server: "early.bad:1080"), "d": Socks5(server: "late.bad:3128")"#,
        );
        // early.bad answers first, late.bad after: config order decides.
        let got = servers(&mut s.tunnels, THREADS, |h, p| {
            if h == "late.bad" {
                std::thread::sleep(Duration::from_millis(50));
            }
            h.starts_with("ok").then(|| SocketAddr::new([192, 0, 2, 7].into(), p))
        });
        assert_eq!(got, Err(("b".to_string(), "late.bad".to_string())));
        assert_eq!(addr(&s, "a"), Some("192.0.2.7:1080".parse().unwrap()));
    }

    #[test]
    fn the_system_resolver_without_a_network() {
        let mut s = settings(
            r#""a": Socks5(server: "localhost:1080"), "b": HttpConnect(server: "localhost:3128"),
               "c": Socks5(server: "localhost:1080"), "d": Direct()"#,
        );
        s.resolve("t.ron").unwrap();
        for (t, port) in [("a", 1080), ("b", 3128), ("c", 1080)] {
            let a = addr(&s, t).unwrap_or_else(|| panic!("{t} unresolved"));
            assert!(a.ip().is_loopback() && a.port() == port, "{t}: {a}");
        }
        // RFC 6761: .invalid never resolves. The message is the one a
        // sequential resolve gave.
        let mut s = settings(
            r#""a": Socks5(server: "localhost:1080"), "nope": Socks5(server: "egressd-test.invalid:1080"),
               "also": Socks5(server: "other.invalid:1080")"#,
        );
        let e = s.resolve("t.ron").unwrap_err().to_string();
        assert!(
            e.contains(
                r#"tunnel "nope": server name "egressd-test.invalid" does not resolve; fix the name or write the address as ip:port"#
            ),
            "{e}"
        );
    }
}
