//! Raw config → [`Settings`]: every check made after parsing, one function
//! per section, each error placed in the file where it can be.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    Addr, Classes, RawClass, RawConfig, RawControl, RawDefault, RawDns, RawDocker, RawIntercept, RawOnQuota,
    RawRoute, RawTcp, RawTunnel, RawUdp, Tunnels,
};
use super::{
    Class, ClassId, ConfigError, ControlSettings, Credentials, DnsSettings, DockerSettings, IfacePattern,
    Intercept, Locator, MAX_IDLE_SOURCES, OnQuota, Quota, RouteTarget, Server, Settings, TcpSettings, Tunnel,
    TunnelId, TunnelKind, UdpSettings, WARM_MAX,
};
use crate::route::RouteTable;

/// Checks the raw config one section at a time; the first error found is
/// the one reported.
pub(super) fn validate(raw: RawConfig, loc: &Locator) -> Result<Settings, ConfigError> {
    let listen = validate_listen(loc, &raw.listen)?;
    let tunnels = validate_tunnels(loc, raw.tunnels)?;
    let classes = validate_classes(loc, raw.classes)?;
    let routes = validate_routes(loc, &raw.routes, &tunnels, &classes)?;
    let default = validate_default(loc, &raw.default, &tunnels)?;
    // With Docker labels, routes may all come from the containers.
    if routes.is_empty() && default.is_none() && raw.docker.is_none() {
        return Err(loc.err(
            "routes is empty and default is Reject: every container would be rejected; add a route, set default: Tunnel(\"name\"), or let containers choose by label with docker: ()".into(),
        ));
    }
    let intercept = validate_intercept(loc, &raw.intercept)?;
    let dns = validate_dns(loc, &raw.dns)?;
    let docker = validate_docker(loc, raw.docker.as_ref())?;
    validate_udp_limits(loc, &raw.udp)?;
    let threads = validate_threads(loc, raw.threads)?;
    let control = validate_control(loc, &raw.control)?;

    // The timeouts are checked last, TCP's before UDP's, so a config with
    // several mistakes is always told about the same one first.
    Ok(Settings {
        listen,
        tunnels,
        routes,
        classes,
        default,
        intercept,
        tcp: tcp_settings(loc, &raw.tcp)?,
        udp: udp_settings(loc, &raw.udp)?,
        threads,
        control,
        bypass: raw.bypass.iter().map(|c| c.cidr).collect(),
        dns,
        docker,
        max_sources_per_route: raw.max_sources_per_route.0 as usize,
        state_dir: PathBuf::from(raw.state_dir.0),
    })
}

fn validate_listen(loc: &Locator, raw: &[Addr]) -> Result<Vec<SocketAddr>, ConfigError> {
    if raw.is_empty() {
        return Err(
            loc.err("listen is empty: give at least one address, e.g. listen: [\"10.8.0.1:10900\"]".into())
        );
    }
    let mut listen: Vec<SocketAddr> = Vec::new();
    for a in raw {
        if a.0.port() == 0 || a.0.ip().is_unspecified() {
            return Err(loc.err(format!(
                "listen address {} needs a specific IP and a non-zero port (the bridge's address, e.g. 10.8.0.1:10900)",
                a.0
            )));
        }
        if listen.contains(&a.0) {
            return Err(loc.err(format!("listen address {} is given twice", a.0)));
        }
        listen.push(a.0);
    }
    Ok(listen)
}

fn validate_tunnels(loc: &Locator, raw: Tunnels) -> Result<Vec<Tunnel>, ConfigError> {
    let mut tunnels = Vec::with_capacity(raw.0.len());
    for (name, t) in raw.0 {
        let rate = match &t {
            RawTunnel::Socks5 { rate, .. }
            | RawTunnel::HttpConnect { rate, .. }
            | RawTunnel::Direct { rate, .. } => rate.map(|r| r.0),
        };
        let kind = tunnel_kind(loc, &name, t)?;
        tunnels.push(Tunnel { name, kind, rate });
    }
    if tunnels.len() > usize::from(TunnelId::MAX) {
        return Err(loc.err(format!("too many tunnels ({}); at most {}", tunnels.len(), TunnelId::MAX)));
    }
    Ok(tunnels)
}

fn tunnel_kind(loc: &Locator, name: &str, t: RawTunnel) -> Result<TunnelKind, ConfigError> {
    Ok(match t {
        RawTunnel::Socks5 {
            server: s,
            username,
            password,
            udp,
            udp_relay,
            warm,
            warm_udp,
            warm_max,
            warm_idle_secs,
            pipeline,
            rate: _,
        } => {
            for (field, v) in [("warm", warm), ("warm_udp", warm_udp), ("warm_max", warm_max)] {
                if v > WARM_MAX {
                    return Err(loc.err(format!(
                        "tunnel \"{name}\": {field} is {v}; at most {WARM_MAX} pooled connections per tunnel (0 disables the pool)"
                    )));
                }
            }
            if warm_max < warm.max(warm_udp) {
                return Err(loc.err(format!(
                    "tunnel \"{name}\": warm_max is {warm_max}, below warm ({warm}) or warm_udp ({warm_udp}); pools learn bursts from warm up to warm_max (set it equal for a fixed pool)"
                )));
            }
            TunnelKind::Socks5 {
                server: server(loc, name, &s)?,
                auth: credentials(loc, name, username, password)?,
                udp,
                udp_relay: udp_relay.map(|a| a.0),
                warm,
                warm_udp,
                warm_max,
                warm_idle_secs,
                pipeline,
            }
        }
        RawTunnel::HttpConnect { server: s, username, password, pipeline, rate: _ } => {
            TunnelKind::HttpConnect {
                server: server(loc, name, &s)?,
                auth: credentials(loc, name, username, password)?,
                pipeline,
            }
        }
        RawTunnel::Direct { interface, mark, bind, rate: _ } => {
            if let Some(i) = &interface
                && (i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
            {
                return Err(loc.err(format!(
                    "tunnel \"{name}\": interface \"{i}\" is not a valid interface name (1-15 characters)"
                )));
            }
            TunnelKind::Direct { interface, mark, bind: bind.map(|b| b.0) }
        }
    })
}

/// The classes in file order; each was checked on its own where it was
/// parsed (`raw::Classes`): `rate` is both directions, a weight 1 unless
/// set, a quota `Reject`s unless `on_quota` says otherwise.
fn validate_classes(loc: &Locator, raw: Classes) -> Result<Vec<Class>, ConfigError> {
    if raw.0.len() > usize::from(ClassId::MAX) {
        return Err(loc.err(format!("too many classes ({}); at most {}", raw.0.len(), ClassId::MAX)));
    }
    Ok(raw
        .0
        .into_iter()
        .map(|(name, c)| Class {
            name,
            rate_up: c.rate.or(c.rate_up).map(|r| r.0),
            rate_down: c.rate.or(c.rate_down).map(|r| r.0),
            weight: c.weight.map_or(1, |w| w.0),
            quota: quota(&c),
        })
        .collect())
}

fn quota(c: &RawClass) -> Option<Quota> {
    let q = c.quota.as_ref()?;
    let on = match c.on_quota {
        None | Some(RawOnQuota::Reject) => OnQuota::Reject,
        Some(RawOnQuota::Throttle(r)) => OnQuota::Throttle(r.0),
    };
    Some(Quota { bytes: q.bytes.0, every: Duration::from_millis(q.every_days.ms), on })
}

fn id_of(tunnels: &[Tunnel], name: &str) -> Option<TunnelId> {
    tunnels.iter().position(|t| t.name == name).map(|i| i as TunnelId)
}

/// The class a route names, placed at its `class: "name"` when unknown.
fn route_class(loc: &Locator, r: &RawRoute, classes: &[Class]) -> Result<Option<ClassId>, ConfigError> {
    let Some(name) = &r.class else { return Ok(None) };
    match classes.iter().position(|c| c.name == *name) {
        Some(i) => Ok(Some(i as ClassId)),
        None => Err(loc.err_at_key(
            "routes",
            "class",
            name,
            format!("route for {} names class \"{name}\", which is not defined in classes", r.source.text),
        )),
    }
}

fn validate_routes(
    loc: &Locator,
    raw: &[RawRoute],
    tunnels: &[Tunnel],
    classes: &[Class],
) -> Result<RouteTable<RouteTarget>, ConfigError> {
    let mut routes = RouteTable::new();
    for (i, r) in raw.iter().enumerate() {
        let Some(id) = id_of(tunnels, &r.tunnel) else {
            return Err(loc.err_at(
                "routes",
                &r.tunnel,
                0,
                format!(
                    "route for {} names tunnel \"{}\", which is not defined in tunnels",
                    r.source.text, r.tunnel
                ),
            ));
        };
        let class = route_class(loc, r, classes)?;
        if routes.insert(r.source.cidr, RouteTarget { tunnel: id, class }).is_some() {
            // Same literal earlier? Then this is its next occurrence.
            let nth = raw[..i].iter().filter(|p| p.source.text == r.source.text).count();
            return Err(loc.err_at(
                "routes",
                &r.source.text,
                nth,
                format!(
                    "route source {} is the same prefix as an earlier route ({}); each prefix may be routed once",
                    r.source.text, r.source.cidr
                ),
            ));
        }
    }
    Ok(routes)
}

fn validate_default(
    loc: &Locator,
    raw: &RawDefault,
    tunnels: &[Tunnel],
) -> Result<Option<TunnelId>, ConfigError> {
    Ok(match raw {
        RawDefault::Reject => None,
        RawDefault::Tunnel(name) => Some(id_of(tunnels, name).ok_or_else(|| {
            loc.err_at(
                "default",
                name,
                0,
                format!("default names tunnel \"{name}\", which is not defined in tunnels"),
            )
        })?),
    })
}

fn validate_intercept(loc: &Locator, ri: &RawIntercept) -> Result<Intercept, ConfigError> {
    if ri.mark == 0 || ri.table == 0 || ri.table >= 253 && ri.table <= 255 {
        return Err(loc.err(format!(
            "intercept: mark ({}) must be non-zero and table ({}) must be non-zero and not a reserved table (253-255)",
            ri.mark, ri.table
        )));
    }
    let mut interfaces = Vec::new();
    for i in &ri.interfaces {
        let p = IfacePattern::parse(i).ok_or_else(|| {
            loc.err_at(
                "interfaces",
                i,
                0,
                format!(
                    "intercept.interfaces: \"{i}\" is not an interface name (1-15 letters, digits, `-_.@:`) \
                     or a prefix pattern ending in `+` or `*`, e.g. \"br-+\""
                ),
            )
        })?;
        if interfaces.contains(&p) {
            return Err(loc.err(format!("intercept.interfaces: \"{i}\" is given twice")));
        }
        interfaces.push(p);
    }
    Ok(Intercept {
        tcp: ri.tcp,
        mark: ri.mark,
        table: ri.table,
        interfaces,
        sources: ri.sources.iter().map(|c| c.cidr).collect(),
    })
}

fn validate_dns(loc: &Locator, raw: &RawDns) -> Result<DnsSettings, ConfigError> {
    let upstream = raw.upstream.0;
    if upstream.port() == 0 || upstream.ip().is_unspecified() || crate::route::is_reserved(upstream.ip()) {
        return Err(loc.err(format!(
            "dns.upstream {upstream} must be a public resolver's ip:port (queries go there from the exit, \
             where private and local addresses mean nothing), e.g. \"1.1.1.1:53\""
        )));
    }
    Ok(DnsSettings { upstream })
}

fn validate_docker(loc: &Locator, raw: Option<&RawDocker>) -> Result<Option<DockerSettings>, ConfigError> {
    let Some(d) = raw else { return Ok(None) };
    let bad_key = |l: &str| l.is_empty() || l.len() > 255 || l.contains(['"', '\\']);
    if d.socket.is_empty() || bad_key(&d.label) || bad_key(&d.class_label) {
        return Err(loc.err(
            "docker: socket must be a path, label and class_label label keys, e.g. docker: (socket: \"/var/run/docker.sock\", label: \"egressd.tunnel\", class_label: \"egressd.class\")".into(),
        ));
    }
    if d.class_label == d.label {
        return Err(loc.err(format!(
            "docker: label and class_label are both \"{}\"; a container names its tunnel and its class with two different labels",
            d.label
        )));
    }
    Ok(Some(DockerSettings {
        socket: PathBuf::from(&d.socket),
        label: d.label.clone(),
        class_label: d.class_label.clone(),
    }))
}

/// The UDP sizes and counts; [`udp_settings`] checks the timeouts.
fn validate_udp_limits(loc: &Locator, u: &RawUdp) -> Result<(), ConfigError> {
    if u.max_sessions == 0 || u.max_reply_sockets == 0 || u.pending_datagrams == 0 {
        return Err(
            loc.err("udp: max_sessions, max_reply_sockets and pending_datagrams must be at least 1".into())
        );
    }
    if u.max_sessions_per_source == 0
        || u.new_sessions_per_source_per_sec == 0
        || u.new_sessions_per_source_burst == 0
    {
        return Err(loc.err(
            "udp: max_sessions_per_source, new_sessions_per_source_per_sec and new_sessions_per_source_burst \
             must be at least 1"
                .into(),
        ));
    }
    if !(crate::wire::dns::HEADER_LEN..=crate::wire::dns::MAX_MESSAGE).contains(&u.dns_max_query_bytes) {
        return Err(loc.err(format!(
            "udp.dns_max_query_bytes is {}; it must be between 12 (a DNS header) and 65535",
            u.dns_max_query_bytes
        )));
    }
    if u.dns_queue_bytes_per_connection < u.dns_max_query_bytes + 2 {
        return Err(loc.err(format!(
            "udp.dns_queue_bytes_per_connection ({}) must hold one framed query: at least dns_max_query_bytes + 2 ({})",
            u.dns_queue_bytes_per_connection,
            u.dns_max_query_bytes + 2
        )));
    }
    if u.max_idle_sources > MAX_IDLE_SOURCES {
        return Err(
            loc.err(format!("udp.max_idle_sources is {}; at most {MAX_IDLE_SOURCES}", u.max_idle_sources))
        );
    }
    if u.pending_bytes_per_source > u.pending_bytes_per_worker {
        return Err(loc.err(format!(
            "udp: pending_bytes_per_source ({}) is more than pending_bytes_per_worker ({}); lower it",
            u.pending_bytes_per_source, u.pending_bytes_per_worker
        )));
    }
    Ok(())
}

fn validate_threads(loc: &Locator, threads: usize) -> Result<usize, ConfigError> {
    if threads > 256 {
        return Err(loc.err(format!("threads is {threads}; at most 256 (0 means one per core)")));
    }
    Ok(if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads })
}

fn validate_control(loc: &Locator, raw: &RawControl) -> Result<ControlSettings, ConfigError> {
    if raw.socket.is_empty() {
        return Err(loc.err("control.socket must be a path, e.g. \"/run/egressd.sock\"".into()));
    }
    Ok(ControlSettings {
        socket: PathBuf::from(&raw.socket),
        metrics_listen: raw.metrics_listen.map(|a| a.0),
        forget_sources: secs(loc, "control.forget_sources_secs", raw.forget_sources_secs)?,
    })
}

fn tcp_settings(loc: &Locator, t: &RawTcp) -> Result<TcpSettings, ConfigError> {
    Ok(TcpSettings {
        connect_timeout: secs(loc, "tcp.connect_timeout_secs", t.connect_timeout_secs)?,
        idle_timeout: secs(loc, "tcp.idle_timeout_secs", t.idle_timeout_secs)?,
        half_close_timeout: secs(loc, "tcp.half_close_timeout_secs", t.half_close_timeout_secs)?,
        splice: t.splice,
        max_flows_per_source: t.max_flows_per_source.0,
        new_flows_per_source_per_sec: t.new_flows_per_source_per_sec.0,
        new_flows_per_source_burst: t.new_flows_per_source_burst.0,
        fd_share: t.fd_share,
        early_bytes_per_worker: t.early_bytes_per_worker,
        drain_timeout: secs(loc, "tcp.drain_timeout_secs", t.drain_timeout_secs)?,
    })
}

fn udp_settings(loc: &Locator, u: &RawUdp) -> Result<UdpSettings, ConfigError> {
    Ok(UdpSettings {
        idle_timeout: secs(loc, "udp.idle_timeout_secs", u.idle_timeout_secs)?,
        dns_idle_timeout: secs(loc, "udp.dns_idle_timeout_secs", u.dns_idle_timeout_secs)?,
        max_sessions: u.max_sessions,
        max_reply_sockets: u.max_reply_sockets,
        pending_datagrams: u.pending_datagrams,
        dns_over_tcp: u.dns_over_tcp,
        dns_answer_timeout: secs(loc, "udp.dns_answer_timeout_secs", u.dns_answer_timeout_secs)?,
        max_sessions_per_source: u.max_sessions_per_source,
        new_sessions_per_source_per_sec: u.new_sessions_per_source_per_sec,
        new_sessions_per_source_burst: u.new_sessions_per_source_burst,
        pending_bytes_per_worker: u.pending_bytes_per_worker,
        pending_bytes_per_source: u.pending_bytes_per_source,
        dns_max_query_bytes: u.dns_max_query_bytes,
        dns_queue_bytes_per_connection: u.dns_queue_bytes_per_connection,
        max_idle_sources: u.max_idle_sources,
    })
}

fn secs(loc: &Locator, key: &str, v: u64) -> Result<Duration, ConfigError> {
    if v == 0 || v > 30 * 24 * 3600 {
        return Err(loc.err(format!("{key} must be between 1 and 2592000 seconds (30 days), not {v}")));
    }
    Ok(Duration::from_secs(v))
}

fn server(loc: &Locator, tunnel: &str, s: &str) -> Result<Server, ConfigError> {
    let bad = || {
        loc.err_at(
            "tunnels",
            s,
            0,
            format!(
                "tunnel \"{tunnel}\": server \"{s}\" must be ip:port or host:port, e.g. \"100.64.0.2:1080\""
            ),
        )
    };
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(bad());
        }
        return Ok(Server { host: a.ip().to_string(), port: a.port(), addr: Some(a) });
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(Server { host: host.to_string(), port, addr: None })
}

fn credentials(
    loc: &Locator,
    tunnel: &str,
    username: Option<String>,
    password: Option<String>,
) -> Result<Option<Credentials>, ConfigError> {
    match (username, password) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) => {
            if u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255 {
                return Err(loc.err(format!(
                    "tunnel \"{tunnel}\": username and password must each be 1-255 bytes (RFC 1929)"
                )));
            }
            Ok(Some(Credentials { username: u, password: p }))
        }
        _ => Err(loc.err(format!("tunnel \"{tunnel}\": give both username and password, or neither"))),
    }
}
