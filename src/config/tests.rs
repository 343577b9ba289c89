use super::*;

const MINIMAL: &str = r#"(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "hk0": Socks5(server: "100.64.0.2:1080"),
        "hk1": Socks5(server: "100.64.1.2:1080", username: "u", password: "p"),
    },
    routes: [
        (source: "10.8.0.10/32", tunnel: "hk0"),
        (source: "10.8.0.11/32", tunnel: "hk1"),
    ],
    udp: (idle_timeout_secs: 300),
)"#;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse("test.ron", text)
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be rejected")
}

fn with(replace: &str, by: &str) -> String {
    assert!(MINIMAL.contains(replace), "fixture lacks {replace}");
    MINIMAL.replacen(replace, by, 1)
}

#[test]
fn spec_minimal_example_parses_exactly_as_written() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.listen, vec!["10.8.0.1:10900".parse().unwrap(), "[fd08::1]:10900".parse().unwrap()]);
    assert_eq!(s.tunnels.len(), 2);
    assert_eq!(s.tunnels[0].name, "hk0");
    match &s.tunnels[1].kind {
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
            assert_eq!(server.addr, Some("100.64.1.2:1080".parse().unwrap()));
            assert_eq!(auth.as_ref().unwrap().username, "u");
            assert!(*udp, "udp defaults to true");
            assert_eq!(*udp_relay, None);
            assert_eq!((*warm, *warm_udp), (2, 2), "two warm connections and associations by default");
            assert_eq!(*warm_idle_secs, 300, "pools go cold after 5 minutes without a flow by default");
            assert_eq!(*warm_max, 64, "pools learn bursts up to 64 by default");
            assert!(*pipeline, "pipelining is probed by default");
        }
        other => panic!("wrong kind {other:?}"),
    }
    assert_eq!(s.routes.lookup("10.8.0.10".parse().unwrap()), Some(RouteTarget::tunnel(0)));
    assert_eq!(s.routes.lookup("10.8.0.11".parse().unwrap()), Some(RouteTarget::tunnel(1)));
    assert_eq!(s.routes.lookup("10.8.0.12".parse().unwrap()), None);
}

#[test]
fn defaults_match_the_spec() {
    let s = parse(MINIMAL).unwrap();
    assert!(s.default.is_none());
    assert_eq!(s.intercept.tcp, TcpIntercept::Redirect);
    assert_eq!((s.intercept.mark, s.intercept.table), (10900, 10900));
    assert_eq!(s.tcp.connect_timeout, Duration::from_secs(10));
    assert_eq!(s.tcp.idle_timeout, Duration::from_secs(3600));
    assert_eq!(s.tcp.half_close_timeout, Duration::from_secs(60));
    assert!(s.tcp.splice);
    assert_eq!(s.udp.idle_timeout, Duration::from_secs(300));
    assert_eq!(s.udp.dns_idle_timeout, Duration::from_secs(20));
    assert_eq!(s.udp.max_sessions, 65536);
    assert_eq!(s.udp.max_reply_sockets, 4096);
    assert_eq!(s.udp.pending_datagrams, 16);
    assert!(s.udp.dns_over_tcp);
    assert_eq!(s.udp.dns_answer_timeout, Duration::from_secs(5));
    assert!(s.threads >= 1);
    assert_eq!(s.control.socket, PathBuf::from("/run/egressd.sock"));
    assert_eq!(s.control.metrics_listen, None);
    assert_eq!(s.control.forget_sources, Duration::from_secs(600), "sources forgotten after 10 idle minutes");
    assert!(s.bypass.is_empty());
}

#[test]
fn every_key_can_be_set() {
    let text = r#"(
        listen: ["10.8.0.1:10900"],
        tunnels: {
            "a": Socks5(server: "exit0.example:1080", udp: false, udp_relay: "100.64.0.3:1081"),
            "b": HttpConnect(server: "100.64.1.2:3128", username: "u", password: "p"),
            "c": Direct(interface: "wg0", mark: 51820, bind: "198.51.100.7"),
        },
        routes: [(source: "10.8.0.0/24", tunnel: "a"), (source: "fd08::10", tunnel: "c")],
        default: Tunnel("b"),
        intercept: (tcp: Tproxy, mark: 7, table: 70, sources: ["10.8.0.0/24"]),
        tcp: (connect_timeout_secs: 3, idle_timeout_secs: 60, half_close_timeout_secs: 7, splice: false),
        udp: (idle_timeout_secs: 30, dns_idle_timeout_secs: 5, max_sessions: 100,
              max_reply_sockets: 10, pending_datagrams: 4, dns_over_tcp: false,
              dns_answer_timeout_secs: 2),
        threads: 2,
        control: (socket: "/tmp/e.sock", metrics_listen: "127.0.0.1:9100", forget_sources_secs: 30),
        bypass: ["203.0.113.0/24"],
    )"#;
    let s = parse(text).unwrap();
    assert_eq!(s.default, Some(1));
    assert_eq!(s.intercept.tcp, TcpIntercept::Tproxy);
    assert_eq!(s.threads, 2);
    assert!(!s.tcp.splice);
    assert_eq!(s.tcp.half_close_timeout, Duration::from_secs(7));
    assert_eq!(s.udp.max_sessions, 100);
    assert_eq!(s.udp.dns_answer_timeout, Duration::from_secs(2));
    assert_eq!(s.control.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(s.control.forget_sources, Duration::from_secs(30));
    assert_eq!(s.bypass[0].to_string(), "203.0.113.0/24");
    match &s.tunnels[0].kind {
        TunnelKind::Socks5 { server, udp, udp_relay, .. } => {
            assert_eq!(server.host, "exit0.example");
            assert_eq!(server.addr, None, "names are resolved later, not while parsing");
            assert!(!udp);
            assert_eq!(*udp_relay, Some("100.64.0.3:1081".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    match &s.tunnels[2].kind {
        TunnelKind::Direct { interface, mark, bind } => {
            assert_eq!(interface.as_deref(), Some("wg0"));
            assert_eq!(*mark, Some(51820));
            assert_eq!(*bind, Some("198.51.100.7".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = err(&with("udp: (idle_timeout_secs: 300)", "udp: (idle_timeout: 300)"));
    assert_eq!(e.line, 11, "{e}");
    assert!(e.msg.contains("unknown key `idle_timeout`"), "{e}");
    let e = err(&with("routes:", "route:"));
    assert_eq!(e.line, 7, "{e}");
    assert!(e.msg.contains("`route`"), "{e}");
}

#[test]
fn bad_listen_address_points_at_it() {
    let e = err(&with("\"10.8.0.1:10900\"", "\"10.8.0.1\""));
    assert_eq!((e.line, e.col), (2, 15), "{e}");
    assert!(e.msg.contains("not a socket address"), "{e}");
    assert!(e.to_string().starts_with("test.ron:2:15: "), "{e}");
}

#[test]
fn bad_cidr_points_at_it() {
    let e = err(&with("\"10.8.0.11/32\"", "\"10.8.0.11/33\""));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.msg.contains("prefix length"), "{e}");
    let e = err(&with("\"10.8.0.11/32\"", "\"10.8.0/24\""));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.msg.contains("not an IP address"), "{e}");
}

#[test]
fn duplicate_tunnel_is_an_error_at_the_second() {
    let e = err(&with("\"hk1\": Socks5", "\"hk0\": Socks5"));
    assert_eq!(e.line, 5, "{e}");
    assert!(e.msg.contains("duplicate tunnel name \"hk0\""), "{e}");
}

#[test]
fn route_to_unknown_tunnel_is_placed() {
    let e = err(&with("tunnel: \"hk1\"", "tunnel: \"hk9\""));
    assert_eq!((e.line, e.col), (9, 42), "{e}");
    assert!(e.msg.contains("\"hk9\", which is not defined"), "{e}");
}

#[test]
fn duplicate_prefix_is_placed_at_the_second_route() {
    let e = err(&with("\"10.8.0.11/32\"", "\"10.8.0.10/32\""));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.msg.contains("same prefix"), "{e}");
    // Different spelling, same prefix.
    let e = err(&with("\"10.8.0.11/32\"", "\"10.8.0.10\""));
    assert_eq!(e.line, 9, "{e}");
}

#[test]
fn empty_listen_is_an_error() {
    let e = err(&with("listen: [\"10.8.0.1:10900\", \"[fd08::1]:10900\"]", "listen: []"));
    assert!(e.msg.contains("listen is empty"), "{e}");
}

#[test]
fn missing_required_key() {
    let e = err("(listen: [\"10.8.0.1:1\"], tunnels: {})");
    assert!(e.msg.contains("missing key `routes`"), "{e}");
}

#[test]
fn credentials_must_come_in_pairs() {
    let e = err(&with(", password: \"p\"", ""));
    assert!(e.msg.contains("both username and password"), "{e}");
}

#[test]
fn bad_server_and_kind() {
    let e = err(&with("\"100.64.0.2:1080\"", "\"100.64.0.2\""));
    assert_eq!(e.line, 4, "{e}");
    assert!(e.msg.contains("ip:port or host:port"), "{e}");
    let e = err(&with("Socks5(server: \"100.64.0.2:1080\")", "Socks4(server: \"100.64.0.2:1080\")"));
    assert!(e.msg.contains("unknown kind `Socks4`"), "{e}");
}

#[test]
fn zero_timeouts_and_limits_are_rejected() {
    assert!(
        err(&with("idle_timeout_secs: 300", "idle_timeout_secs: 0")).msg.contains("udp.idle_timeout_secs")
    );
    assert!(
        err(&with("udp: (idle_timeout_secs: 300)", "udp: (max_sessions: 0)")).msg.contains("max_sessions")
    );
}

#[test]
fn intercept_covers_the_interfaces_unless_sources_narrow_it() {
    // The minimal config: every source on the container interfaces, whatever
    // the routes and `default` say.
    let s = parse(MINIMAL).unwrap();
    assert!(s.intercepted_sources().is_none());
    assert!(s.intercept.interfaces.is_empty());
    let s = parse(&with("udp:", "default: Tunnel(\"hk0\"), udp:")).unwrap();
    assert!(s.intercepted_sources().is_none());
    let s = parse(&with("udp:", "intercept: (sources: [\"10.8.0.0/25\"]), udp:")).unwrap();
    let v: Vec<String> = s.intercepted_sources().unwrap().iter().map(|c| c.to_string()).collect();
    assert_eq!(v, ["10.8.0.0/25"]);
}

#[test]
fn interface_patterns() {
    let s = parse(&with("udp:", "intercept: (interfaces: [\"br-+\", \"br0\", \"veth*\"]), udp:")).unwrap();
    let i: Vec<(String, String)> = s.intercept.interfaces.iter().map(|p| (p.iptables(), p.nft())).collect();
    assert_eq!(
        i,
        [
            ("br-+".into(), "\"br-*\"".into()),
            ("br0".into(), "\"br0\"".into()),
            ("veth+".into(), "\"veth*\"".into())
        ]
    );
    assert!(s.intercept.interfaces[0].matches("br-1a2b3c"));
    assert!(!s.intercept.interfaces[0].matches("br0"));
    assert!(s.intercept.interfaces[1].matches("br0") && !s.intercept.interfaces[1].matches("br01"));
    for bad in ["", "a b", "br0+x", "way-too-long-name0", "br\\\"0"] {
        let e = err(&with("udp:", &format!("intercept: (interfaces: [\"{bad}\"]), udp:")));
        assert!(e.msg.contains("intercept.interfaces") || e.msg.contains("expected"), "{bad}: {e}");
    }
    let e = err(&with("udp:", "intercept: (interfaces: [\"br0\", \"br0\"]), udp:"));
    assert!(e.msg.contains("given twice"), "{e}");
}

#[test]
fn dns_upstream_default_and_redirect() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.dns.upstream.to_string(), "1.1.1.1:53");
    let s = parse(&with("udp:", "dns: (upstream: \"192.0.2.53:53\"), udp:")).unwrap();
    let t = |d: &str| s.dns.target(d.parse().unwrap()).to_string();
    // Non-public resolvers (Docker's embedded DNS forwards to such) go upstream.
    assert_eq!(t("10.0.2.3:53"), "192.0.2.53:53");
    assert_eq!(t("[fd00::1]:53"), "192.0.2.53:53");
    assert_eq!(t("127.0.0.11:53"), "192.0.2.53:53");
    // Public resolvers, and other ports, are left as asked.
    assert_eq!(t("203.0.113.53:53"), "203.0.113.53:53");
    assert_eq!(t("10.0.2.3:5353"), "10.0.2.3:5353");
    for bad in ["10.0.0.1:53", "0.0.0.0:53", "1.1.1.1:0", "[fe80::1]:53"] {
        let e = err(&with("udp:", &format!("dns: (upstream: \"{bad}\"), udp:")));
        assert!(e.msg.contains("dns.upstream"), "{bad}: {e}");
    }
}

#[test]
fn demo_config_is_valid() {
    let s = parse(DEMO_CONFIG).unwrap();
    assert_eq!(s.tunnels.len(), 3);
    assert_eq!(s.routes.len(), 6);
}

#[test]
fn credentials_never_show_in_debug() {
    let s = parse(MINIMAL).unwrap();
    let dump = format!("{s:?}");
    assert!(dump.contains("<hidden>"));
    assert!(!dump.contains("password: \"p\""), "{dump}");
}

#[test]
fn udp_fairness_keys_default_and_parse() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.udp.max_sessions_per_source, 16384);
    assert_eq!(s.udp.new_sessions_per_source_per_sec, 2000);
    assert_eq!(s.udp.new_sessions_per_source_burst, 4096);
    assert_eq!(s.udp.pending_bytes_per_worker, 4 << 20);
    assert_eq!(s.udp.pending_bytes_per_source, 1 << 20);
    let s = parse(&with(
        "udp: (idle_timeout_secs: 300)",
        "udp: (max_sessions_per_source: 10, new_sessions_per_source_per_sec: 5, \
         new_sessions_per_source_burst: 7, pending_bytes_per_worker: 1000, pending_bytes_per_source: 100)",
    ))
    .unwrap();
    assert_eq!(s.udp.max_sessions_per_source, 10);
    assert_eq!(s.udp.new_sessions_per_source_per_sec, 5);
    assert_eq!(s.udp.new_sessions_per_source_burst, 7);
    assert_eq!(s.udp.pending_bytes_per_worker, 1000);
    assert_eq!(s.udp.pending_bytes_per_source, 100);
    for bad in [
        "udp: (max_sessions_per_source: 0)",
        "udp: (new_sessions_per_source_per_sec: 0)",
        "udp: (new_sessions_per_source_burst: 0)",
    ] {
        assert!(err(&with("udp: (idle_timeout_secs: 300)", bad)).msg.contains("at least 1"), "{bad}");
    }
    let e = err(&with(
        "udp: (idle_timeout_secs: 300)",
        "udp: (pending_bytes_per_worker: 10, pending_bytes_per_source: 11)",
    ));
    assert!(e.msg.contains("pending_bytes_per_source"), "{}", e.msg);
}

/// Issue 23: per-source TCP limits, the descriptor share, early bytes and
/// the cap on sources per route.
#[test]
fn tcp_source_limits_and_the_source_cap_default_and_parse() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.tcp.max_flows_per_source, 16384);
    assert_eq!(s.tcp.new_flows_per_source_per_sec, 5000);
    assert_eq!(s.tcp.new_flows_per_source_burst, 10000);
    assert!(s.tcp.fd_share);
    assert_eq!(s.tcp.early_bytes_per_worker, 4 << 20);
    assert_eq!(s.max_sources_per_route, 4096);
    let s = parse(&with(
        "udp: (idle_timeout_secs: 300)",
        "tcp: (max_flows_per_source: 3, new_flows_per_source_per_sec: 4, new_flows_per_source_burst: 5, \
         fd_share: false, early_bytes_per_worker: 0), max_sources_per_route: 6, udp: (idle_timeout_secs: 300)",
    ))
    .unwrap();
    assert_eq!(s.tcp.max_flows_per_source, 3);
    assert_eq!(s.tcp.new_flows_per_source_per_sec, 4);
    assert_eq!(s.tcp.new_flows_per_source_burst, 5);
    assert!(!s.tcp.fd_share);
    assert_eq!(s.tcp.early_bytes_per_worker, 0);
    assert_eq!(s.max_sources_per_route, 6);
    // A 0 is refused where it stands.
    for (bad, col) in [
        ("tcp: (max_flows_per_source: 0),", 29),
        ("tcp: (splice: true, new_flows_per_source_per_sec: 0),", 51),
        ("tcp: (new_flows_per_source_burst: 0),", 35),
        ("max_sources_per_route: 0,", 24),
    ] {
        let e = err(&with("udp: (idle_timeout_secs: 300)", &format!("\n{bad} udp: ()")));
        assert!(e.msg.contains("at least 1"), "{bad}: {e}");
        assert_eq!((e.line, e.col), (12, col), "{bad}: {e}");
    }
}

/// Issue 23: DNS over TCP within bounds, rate state that outlives sessions.
#[test]
fn udp_dns_tcp_and_idle_source_keys_default_and_parse() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.udp.dns_max_query_bytes, 4096);
    assert_eq!(s.udp.dns_queue_bytes_per_connection, 64 << 10);
    assert_eq!(s.udp.max_idle_sources, 4096);
    let s = parse(&with(
        "udp: (idle_timeout_secs: 300)",
        "udp: (dns_max_query_bytes: 512, dns_queue_bytes_per_connection: 514, max_idle_sources: 0)",
    ))
    .unwrap();
    assert_eq!(s.udp.dns_max_query_bytes, 512);
    assert_eq!(s.udp.dns_queue_bytes_per_connection, 514);
    assert_eq!(s.udp.max_idle_sources, 0);
    for (bad, says) in [
        ("udp: (dns_max_query_bytes: 11)", "dns_max_query_bytes"),
        ("udp: (dns_max_query_bytes: 65536)", "dns_max_query_bytes"),
        (
            "udp: (dns_max_query_bytes: 512, dns_queue_bytes_per_connection: 513)",
            "dns_queue_bytes_per_connection",
        ),
        ("udp: (max_idle_sources: 2000000)", "max_idle_sources"),
    ] {
        let e = err(&with("udp: (idle_timeout_secs: 300)", bad));
        assert!(e.msg.contains(says), "{bad}: {}", e.msg);
    }
}

#[test]
fn docker_section() {
    let s = parse(&with("udp:", "docker: (), udp:")).unwrap();
    let d = s.docker.unwrap();
    assert_eq!(d.socket.to_str(), Some("/var/run/docker.sock"));
    assert_eq!(d.label, "egressd.tunnel");
    let s = parse(&with("udp:", "docker: (socket: \"/run/d.sock\", label: \"x.exit\"), udp:")).unwrap();
    assert_eq!(s.docker.unwrap().label, "x.exit");
    assert!(parse(MINIMAL).unwrap().docker.is_none());
    // Label routes only: no config route needed.
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() }, routes: [], docker: ())"#;
    assert!(parse(text).is_ok());
    assert!(err(&text.replace(", docker: ()", "")).msg.contains("docker: ()"));
    assert!(err(&with("udp:", "docker: (label: \"\"), udp:")).msg.contains("docker:"));
}

#[test]
fn warm_pool_and_pipeline_settings() {
    let s = parse(&with(
        r#"Socks5(server: "100.64.1.2:1080""#,
        r#"Socks5(warm: 0, warm_udp: 3, pipeline: false, server: "100.64.1.2:1080""#,
    ))
    .unwrap();
    match &s.tunnels[1].kind {
        TunnelKind::Socks5 { warm, pipeline, .. } => assert_eq!((*warm, *pipeline), (0, false)),
        other => panic!("wrong kind {other:?}"),
    }
    assert_eq!((s.tunnels[1].kind.warm(), s.tunnels[1].kind.warm_udp()), (0, 3));
    let s = parse(&with(
        r#"Socks5(server: "100.64.1.2:1080""#,
        r#"Socks5(udp: false, server: "100.64.1.2:1080""#,
    ))
    .unwrap();
    assert_eq!(s.tunnels[1].kind.warm_udp(), 0, "no UDP, no associations");
    let e = parse(&with(
        r#"Socks5(server: "100.64.1.2:1080""#,
        r#"Socks5(warm_udp: 100, server: "100.64.1.2:1080""#,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("warm_udp is 100; at most 64"), "{e}");
    let e =
        parse(&with(r#"Socks5(server: "100.64.1.2:1080""#, r#"Socks5(warm: 65, server: "100.64.1.2:1080""#))
            .unwrap_err()
            .to_string();
    assert!(e.contains("warm is 65; at most 64"), "{e}");
    // warm_max: the ceiling of learned bursts, never below warm / warm_udp.
    let fixed = |t: &str| with(r#"Socks5(server: "100.64.1.2:1080""#, t);
    let s = parse(&fixed(r#"Socks5(warm: 4, warm_max: 4, server: "100.64.1.2:1080""#)).unwrap();
    assert_eq!((s.tunnels[1].kind.warm(), s.tunnels[1].kind.warm_max()), (4, 4));
    let e = parse(&fixed(r#"Socks5(warm_udp: 8, warm_max: 4, server: "100.64.1.2:1080""#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("warm_max is 4, below warm (2) or warm_udp (8)"), "{e}");
    let e = parse(&fixed(r#"Socks5(warm_max: 65, server: "100.64.1.2:1080""#)).unwrap_err().to_string();
    assert!(e.contains("warm_max is 65; at most 64"), "{e}");
    let h = parse(r#"(listen: ["10.8.0.1:10900"], tunnels: { "h": HttpConnect(server: "100.64.1.2:3128", pipeline: true) }, routes: [(source: "10.8.0.10", tunnel: "h")])"#)
        .unwrap();
    assert!(matches!(h.tunnels[0].kind, TunnelKind::HttpConnect { pipeline: true, .. }));
    assert_eq!(h.tunnels[0].kind.warm(), 0, "HTTP CONNECT tunnels have no pool");
}

/// Issue 26's example, as written there.
const CLASSES: &str = r#"(
    listen: ["10.8.0.1:10900"],
    classes: {
        "slow": (rate: "20mbit"),                          // each direction
        "asym": (rate_up: "5mbit", rate_down: "50mbit"),
        "bulk": (weight: 1),
        "live": (weight: 4),
    },
    tunnels: { "hk0": Socks5(server: "100.64.0.2:1080", rate: "100mbit") },   // the exit's capacity, each direction
    routes: [ (source: "10.8.0.10/32", tunnel: "hk0", class: "slow") ],
    docker: (label: "egressd.tunnel", class_label: "egressd.class"),
)"#;

fn classes_with(replace: &str, by: &str) -> String {
    assert!(CLASSES.contains(replace), "fixture lacks {replace}");
    CLASSES.replacen(replace, by, 1)
}

#[test]
fn classes_parse_as_the_issue_writes_them() {
    let s = parse(CLASSES).unwrap();
    let c = |name: &str, rate_up: Option<u64>, rate_down: Option<u64>, weight: u32| Class {
        name: name.into(),
        rate_up,
        rate_down,
        weight,
        quota: None,
    };
    assert_eq!(
        s.classes,
        [
            c("slow", Some(2_500_000), Some(2_500_000), 1),
            c("asym", Some(625_000), Some(6_250_000), 1),
            c("bulk", None, None, 1),
            c("live", None, None, 4),
        ]
    );
    assert_eq!(s.tunnels[0].rate, Some(12_500_000));
    assert_eq!(s.class_id("live"), Some(3));
    assert_eq!(s.class_id("nope"), None);
    let target = s.routes.lookup("10.8.0.10".parse().unwrap()).unwrap();
    assert_eq!(target, RouteTarget { tunnel: 0, class: Some(0) });
    assert_eq!(s.target_text(target), "hk0, class slow");
    assert_eq!(s.docker.unwrap().class_label, "egressd.class");
    // A prefix route gives its class to each of its addresses.
    let s = parse(&classes_with("\"10.8.0.10/32\"", "\"10.8.0.0/24\"")).unwrap();
    for a in ["10.8.0.1", "10.8.0.200"] {
        assert_eq!(s.routes.lookup(a.parse().unwrap()).and_then(|t| t.class), Some(0), "{a}");
    }
    // Units of every kind, in a class and on a tunnel.
    let s = parse(&classes_with(r#""bulk": (weight: 1)"#, r#""bulk": (rate_down: "2MiB/s", weight: 1000)"#))
        .unwrap();
    assert_eq!(
        (s.classes[2].rate_up, s.classes[2].rate_down, s.classes[2].weight),
        (None, Some(2 << 20), 1000)
    );
    let s = parse(&classes_with(r#"rate: "100mbit""#, r#"rate: "1.5gbit""#)).unwrap();
    assert_eq!(s.tunnels[0].rate, Some(187_500_000));
}

#[test]
fn a_config_without_classes_parses_as_before() {
    let s = parse(MINIMAL).unwrap();
    assert!(s.classes.is_empty());
    assert!(s.tunnels.iter().all(|t| t.rate.is_none()));
    assert!(s.routes.iter().all(|(_, t)| t.class.is_none()));
    assert_eq!(s.target_text(s.routes.lookup("10.8.0.10".parse().unwrap()).unwrap()), "hk0");
    // `classes: {}` is the same as none.
    let empty = parse(&with("udp:", "classes: {}, udp:")).unwrap();
    assert!(empty.classes.is_empty());
    let sorted = |s: &Settings| {
        let mut r: Vec<_> = s.routes.iter().map(|(c, t)| (c.to_string(), t)).collect();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    assert_eq!(sorted(&empty), sorted(&s));
}

#[test]
fn every_tunnel_kind_takes_a_rate() {
    let text = r#"(listen: ["10.8.0.1:10900"], routes: [], docker: (),
        tunnels: {
            "s": Socks5(server: "100.64.0.2:1080", rate: "100mbit"),
            "h": HttpConnect(server: "100.64.1.2:3128", rate: "1gbit"),
            "d": Direct(interface: "wg0", rate: "10MiB/s"),
            "n": Direct(),
        })"#;
    let s = parse(text).unwrap();
    let rates: Vec<Option<u64>> = s.tunnels.iter().map(|t| t.rate).collect();
    assert_eq!(rates, [Some(12_500_000), Some(125_000_000), Some(10 << 20), None]);
}

#[test]
fn rate_with_rate_up_or_down_is_an_error_at_the_class() {
    for bad in [r#"(rate: "20mbit", rate_up: "5mbit")"#, r#"(rate_down: "5mbit", rate: "20mbit")"#] {
        let e = err(&classes_with(r#"(rate: "20mbit")"#, bad));
        assert!(e.msg.contains("class \"slow\": rate sets both directions"), "{e}");
        assert_eq!(e.line, 4, "{e}");
    }
}

#[test]
fn a_class_must_set_something() {
    let e = err(&classes_with(r#"(weight: 1)"#, "()"));
    assert!(e.msg.contains("class \"bulk\" sets nothing"), "{e}");
    assert_eq!(e.line, 6, "{e}");
}

#[test]
fn weight_is_1_to_1000_where_it_stands() {
    for (w, ok) in [("0", false), ("1", true), ("1000", true), ("1001", false), ("-1", false), ("1.5", false)]
    {
        let got = parse(&classes_with("(weight: 4)", &format!("(weight: {w})")));
        match got {
            Ok(s) => assert!(ok && s.classes[3].weight.to_string() == w, "{w}"),
            Err(e) => {
                assert!(!ok, "{w}: {e}");
                // ron places an error after a sign, and a fraction's at its point.
                let col = if w.starts_with('-') || w.contains('.') { 27 } else { 26 };
                assert_eq!((e.line, e.col), (7, col), "{w}: {e}");
            }
        }
    }
    let e = err(&classes_with("(weight: 4)", "(weight: 0)"));
    assert!(e.msg.contains("weight 0 is out of range: 1 to 1000"), "{e}");
}

#[test]
fn bad_rates_are_placed_and_say_what_to_write() {
    let e = err(&classes_with(r#""5mbit""#, r#""5mb""#));
    assert_eq!((e.line, e.col), (5, 28), "{e}");
    assert!(e.msg.contains("unknown unit \"mb\"") && e.msg.contains("kbit, mbit, gbit"), "{e}");
    let e = err(&classes_with(r#"rate: "100mbit""#, r#"rate: "0mbit""#));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.msg.contains("less than 1 byte per second"), "{e}");
    // A number without a unit is not taken as bits or bytes.
    for (bad, says, col) in [
        ("20", "rate 20 has no unit", 24),
        ("-3", "rate -3 has no unit", 25),
        ("2.5", "rate 2.5 has no unit", 24),
    ] {
        let e = err(&classes_with(r#"(rate: "20mbit")"#, &format!("(rate: {bad})")));
        assert_eq!((e.line, e.col), (4, col), "{e}");
        assert!(e.msg.contains(says) && e.msg.contains("as a string"), "{e}");
    }
    let e = err(&classes_with(r#"(rate: "20mbit")"#, "(rate: true)"));
    assert!(e.msg.contains("a rate as a string with a unit"), "{e}");
}

#[test]
fn duplicate_or_bad_class_names_are_placed() {
    let e = err(&classes_with("\"live\": (weight", "\"bulk\": (weight"));
    assert_eq!(e.line, 7, "{e}");
    assert!(e.msg.contains("duplicate class name \"bulk\""), "{e}");
    let e = err(&classes_with("\"live\": (weight", "\"li ve\": (weight"));
    assert_eq!(e.line, 7, "{e}");
    assert!(e.msg.contains("class name \"li ve\" must be 1-64 characters"), "{e}");
    // A key no class has is said so, with the keys there are.
    let e = err(&classes_with("(weight: 4)", "(weight: 4, quote: 5)"));
    assert!(e.msg.contains("unknown key `quote` in class"), "{e}");
}

#[test]
fn route_to_unknown_class_is_placed() {
    let e = err(&classes_with(r#"class: "slow""#, r#"class: "fast""#));
    assert_eq!((e.line, e.col), (10, 62), "{e}");
    assert!(
        e.msg.contains("route for 10.8.0.10/32 names class \"fast\", which is not defined in classes"),
        "{e}"
    );
    assert!(e.to_string().starts_with("test.ron:10:62: "), "{e}");
    // A class named like a tunnel is found where the route names it as a
    // class, not where it names the tunnel.
    let text = classes_with(r#"class: "slow""#, r#"class: "hk0""#)
        .replace("routes: [ (", "routes: [ (source: \"10.8.0.9\", tunnel: \"hk0\"),\n        (");
    let e = err(&text);
    assert_eq!((e.line, e.col), (11, 56), "{e}");
    assert!(e.msg.contains("names class \"hk0\""), "{e}");
    // With no classes at all, too.
    let e = err(&with("tunnel: \"hk1\")", "tunnel: \"hk1\", class :  \"slow\")"));
    assert_eq!((e.line, e.col), (9, 58), "{e}");
}

#[test]
fn class_label_default_and_override() {
    let s = parse(&with("udp:", "docker: (), udp:")).unwrap();
    assert_eq!(s.docker.unwrap().class_label, "egressd.class");
    let s = parse(&with("udp:", "docker: (class_label: \"x.class\"), udp:")).unwrap();
    let d = s.docker.unwrap();
    assert_eq!((d.label.as_str(), d.class_label.as_str()), ("egressd.tunnel", "x.class"));
    assert!(err(&with("udp:", "docker: (class_label: \"\"), udp:")).msg.contains("class_label"));
    let e = err(&with("udp:", "docker: (class_label: \"egressd.tunnel\"), udp:"));
    assert!(e.msg.contains("label and class_label are both \"egressd.tunnel\""), "{e}");
}

/// Issue 27's quotas: a class with a quota, one that throttles, one without.
const QUOTAS: &str = r#"(
    listen: ["10.8.0.1:10900"],
    classes: {
        "metered": (quota: (bytes: "200GiB", every_days: 30)),
        "slowdown": (rate: "20mbit", quota: (bytes: "1.5TB", every_days: 0.0002), on_quota: Throttle("1mbit")),
        "free": (weight: 2),
    },
    tunnels: { "hk0": Socks5(server: "100.64.0.2:1080") },
    routes: [ (source: "10.8.0.0/24", tunnel: "hk0", class: "metered") ],
)"#;

fn quotas_with(replace: &str, by: &str) -> String {
    assert!(QUOTAS.contains(replace), "fixture lacks {replace}");
    QUOTAS.replacen(replace, by, 1)
}

#[test]
fn quotas_parse_as_the_issue_writes_them() {
    let s = parse(QUOTAS).unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        s.classes[0].quota,
        Some(Quota { bytes: 200 << 30, every: 30 * day, on: OnQuota::Reject }),
        "Reject unless on_quota says otherwise"
    );
    assert_eq!(
        s.classes[1].quota,
        Some(Quota {
            bytes: 1_500_000_000_000,
            every: Duration::from_millis(17_280),
            on: OnQuota::Throttle(125_000)
        })
    );
    assert_eq!(s.classes[1].rate_up, Some(2_500_000));
    assert_eq!(s.classes[2].quota, None);
    assert!(s.metered());
    assert_eq!(s.state_dir, PathBuf::from("/var/lib/egressd"), "the default state_dir");
    assert!(!parse(MINIMAL).unwrap().metered());
    // Plain integer bytes, a whole number of days, on_quota: Reject spelled out.
    let s = parse(&quotas_with(
        r#"(bytes: "200GiB", every_days: 30))"#,
        "(bytes: 5000, every_days: 1), on_quota: Reject)",
    ))
    .unwrap();
    assert_eq!(s.classes[0].quota, Some(Quota { bytes: 5000, every: day, on: OnQuota::Reject }));
    // Fractions of a day are kept to the millisecond; the bounds are in.
    for (days, ms) in
        [("0.5", 43_200_000), ("0.0000116", 1002), ("3660", 3660 * 86_400_000), ("3660.0", 3660 * 86_400_000)]
    {
        let s = parse(&quotas_with("every_days: 30", &format!("every_days: {days}"))).unwrap();
        assert_eq!(s.classes[0].quota.unwrap().every, Duration::from_millis(ms), "{days}");
    }
}

#[test]
fn a_quota_alone_is_a_class() {
    let s =
        parse(&quotas_with(r#""free": (weight: 2)"#, r#""free": (quota: (bytes: "1GB", every_days: 7))"#))
            .unwrap();
    let c = &s.classes[2];
    assert_eq!((c.rate_up, c.rate_down, c.weight), (None, None, 1));
    assert_eq!(c.quota.map(|q| q.bytes), Some(1_000_000_000));
}

#[test]
fn bad_quota_bytes_are_placed() {
    for (bad, says, col) in [
        (r#""200 GiBs""#, "unknown unit \"GiBs\"", 37),
        (r#""0GiB""#, "less than 1 byte", 37),
        ("0", "less than 1 byte", 36),
        ("-5", "has a sign", 37),
        ("1.5", "not a whole number of bytes", 36),
        (r#""99999999999TiB""#, "too large", 37),
    ] {
        let e = err(&quotas_with(r#""200GiB""#, bad));
        assert_eq!((e.line, e.col), (4, col), "{bad}: {e}");
        assert!(e.msg.contains(says), "{bad}: {e}");
    }
}

#[test]
fn every_days_out_of_range_is_placed() {
    for bad in ["0", "-1", "0.00001", "3661", "1e9"] {
        let e = err(&quotas_with("every_days: 30", &format!("every_days: {bad}")));
        assert_eq!(e.line, 4, "{bad}: {e}");
        assert!(e.msg.contains("every_days") && e.msg.contains("out of range"), "{bad}: {e}");
    }
    let e = err(&quotas_with("every_days: 30", "every_days: \"30\""));
    assert!(e.msg.contains("a number of days"), "{e}");
}

#[test]
fn quota_keys_are_required_and_known() {
    let e = err(&quotas_with(", every_days: 30", ""));
    assert!(e.msg.contains("missing key `every_days`"), "{e}");
    let e = err(&quotas_with(r#"bytes: "200GiB", "#, ""));
    assert!(e.msg.contains("missing key `bytes`"), "{e}");
    let e = err(&quotas_with("every_days: 30", "every_days: 30, every_hours: 1"));
    assert!(e.msg.contains("unknown key `every_hours` in quota"), "{e}");
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn on_quota_needs_a_quota_and_a_known_kind() {
    let e = err(&quotas_with(r#""free": (weight: 2)"#, r#""free": (weight: 2, on_quota: Reject)"#));
    assert!(e.msg.contains("class \"free\": on_quota needs a quota"), "{e}");
    assert_eq!(e.line, 6, "{e}");
    let e = err(&quotas_with("Throttle(\"1mbit\")", "Drop"));
    assert!(e.msg.contains("unknown kind `Drop`") && e.msg.contains("Reject, Throttle"), "{e}");
    assert_eq!(e.line, 5, "{e}");
    let e = err(&quotas_with("Throttle(\"1mbit\")", "Throttle(\"1mb\")"));
    assert!(e.msg.contains("unknown unit \"mb\""), "{e}");
    assert_eq!(e.line, 5, "{e}");
    let e = err(&quotas_with("Throttle(\"1mbit\")", "Throttle(1)"));
    assert!(e.msg.contains("rate 1 has no unit"), "{e}");
}

#[test]
fn state_dir_is_an_absolute_path() {
    let s = parse(&with("udp:", "state_dir: \"/srv/egressd/state\", udp:")).unwrap();
    assert_eq!(s.state_dir, PathBuf::from("/srv/egressd/state"));
    for bad in ["\"var/lib/egressd\"", "\"\"", "\"./state\""] {
        let e = err(&with("udp:", &format!("state_dir: {bad}, udp:")));
        assert!(e.msg.contains("must be an absolute directory"), "{bad}: {e}");
        assert_eq!((e.line, e.col), (11, 17), "{bad}: {e}");
    }
    let e = err(&with("udp:", "state_dir: 5, udp:"));
    assert_eq!(e.line, 11, "{e}");
}

#[test]
fn drain_timeout_defaults_to_ten_minutes_and_is_bounded() {
    assert_eq!(parse(MINIMAL).unwrap().tcp.drain_timeout, Duration::from_secs(600));
    let s = parse(&with("udp:", "tcp: (drain_timeout_secs: 30), udp:")).unwrap();
    assert_eq!(s.tcp.drain_timeout, Duration::from_secs(30));
    let e = err(&with("udp:", "tcp: (drain_timeout_secs: 0), udp:"));
    assert!(e.msg.contains("tcp.drain_timeout_secs must be between 1 and"), "{e}");
}
