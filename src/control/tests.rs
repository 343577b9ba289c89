use super::*;

#[test]
fn requests_round_trip() {
    let reqs = [
        Request::Stats,
        Request::Metrics,
        Request::Top,
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
    let ctl = Control {
        live: Arc::clone(&live),
        workers: Vec::new(),
        registry: Arc::default(),
        pools: Arc::default(),
        quota: Arc::new(Keeper::detached()),
        upgrades: Arc::default(),
    };
    let dir = std::env::temp_dir().join(format!("egressd-ctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctl.sock");
    let _t = ctl.spawn(bind_unix(&path).unwrap(), &path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let g0 = live.generation();
    let set = Request::RouteSet { source: "10.8.0.11".parse().unwrap(), tunnel: "b".into(), reset: false };
    ask(&path, &set).unwrap();
    assert_eq!(live.generation(), g0 + 1);
    assert_eq!(
        live.load().route_id("10.8.0.11".parse().unwrap()),
        Some((Some("10.8.0.11/32".parse().unwrap()), 1))
    );
    let list = ask(&path, &Request::RouteList).unwrap();
    assert!(list.contains("10.8.0.11/32 -> b"), "{list}");
    let bad = Request::RouteSet { source: "10.8.0.12".parse().unwrap(), tunnel: "zz".into(), reset: false };
    assert_eq!(ask(&path, &bad), Err("no tunnel named \"zz\"".into()));
    ask(&path, &Request::RouteDel { source: "10.8.0.11".parse().unwrap(), reset: false }).unwrap();
    assert_eq!(live.load().route_id("10.8.0.11".parse().unwrap()), None);
    assert!(ask(&path, &Request::Stats).unwrap().contains("tunnel"));
    // A second daemon must not take over a live socket.
    let ctl2 = Control {
        live,
        workers: Vec::new(),
        registry: Arc::default(),
        pools: Arc::default(),
        quota: Arc::new(Keeper::detached()),
        upgrades: Arc::default(),
    };
    assert!(bind_unix(&path).is_err());
    drop(ctl2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_a_stale_socket_is_replaced() {
    let dir = std::env::temp_dir().join(format!("egressd-ctl-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A regular file (say, the config) stays, and the error names it.
    let file = dir.join("egressd.ron");
    std::fs::write(&file, "(listen: [])").unwrap();
    let e = bind_unix(&file).unwrap_err();
    assert!(e.to_string().contains(&*file.to_string_lossy()), "{e}");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "(listen: [])");
    // So does a directory.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    assert!(bind_unix(&sub).is_err());
    assert!(sub.is_dir());
    // A socket nobody listens on any more is replaced.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(UnixStream::connect(&stale).is_err(), "stale: nobody answers");
    let l = bind_unix(&stale).unwrap();
    assert!(UnixStream::connect(&stale).is_ok());
    // A live one is not.
    assert_eq!(bind_unix(&stale).unwrap_err().kind(), io::ErrorKind::AddrInUse);
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_route_outside_intercept_sources_warns() {
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    let within = [c("10.8.0.0/24"), c("fd08::/64")];
    assert!(intercepted(&within, c("10.8.0.12/32")));
    assert!(intercepted(&within, c("10.8.0.0/25")));
    assert!(intercepted(&within, c("fd08::12/128")));
    assert!(!intercepted(&within, c("10.9.0.5/32")));
    assert!(!intercepted(&within, c("10.8.0.0/16")), "wider than what is intercepted");
    assert!(intercepted(&[], c("10.9.0.5/32")), "empty: everything on the interfaces");
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() },
        routes: [(source: "10.8.0.10", tunnel: "a")], intercept: (sources: ["10.8.0.0/24"]))"#;
    let s = crate::config::Settings::parse("t.ron", text).unwrap();
    let ctl = Control {
        live: Arc::new(Live::new(Shared::new(Arc::new(s)))),
        workers: Vec::new(),
        registry: Arc::default(),
        pools: Arc::default(),
        quota: Arc::new(Keeper::detached()),
        upgrades: Arc::default(),
    };
    let out =
        ctl.handle(Request::RouteSet { source: c("10.9.0.5/32"), tunnel: "a".into(), reset: false }).unwrap();
    assert!(out.contains("warning: 10.9.0.5/32 is not within intercept.sources"), "{out}");
    let out =
        ctl.handle(Request::RouteSet { source: c("10.8.0.5/32"), tunnel: "a".into(), reset: false }).unwrap();
    assert!(!out.contains("warning"), "{out}");
}

/// Issue 26: `route list` names a route's class, and why a label route
/// rejects (an unknown class as an unknown tunnel); `route set`
/// replaces a route whole, its class too.
#[test]
fn route_list_shows_classes_and_rejections() {
    use crate::snapshot::{LabelRoute, Labels};
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(), "b": Direct() },
        classes: { "slow": (rate: "20mbit") },
        routes: [(source: "10.8.0.0/24", tunnel: "a", class: "slow"), (source: "10.9.0.1", tunnel: "b")])"#;
    let s = Arc::new(crate::config::Settings::parse("t.ron", text).unwrap());
    let lr = |addr: &str, tunnel: &str, class: Option<&str>| LabelRoute {
        addr: addr.parse().unwrap(),
        id: "0123456789abcdef".into(),
        name: format!("c{addr}"),
        tunnel: tunnel.into(),
        class: class.map(str::to_string),
    };
    let labels = Labels::new(
        vec![
            lr("10.8.0.2", "b", Some("slow")),
            lr("10.8.0.3", "b", Some("gold")),
            lr("10.8.0.4", "zz", None),
            lr("10.8.0.5", "b", None),
        ],
        &s,
    );
    let ctl = Control {
        live: Arc::new(Live::new(Shared::new(Arc::clone(&s)).with_labels(labels))),
        workers: Vec::new(),
        registry: Arc::default(),
        pools: Arc::default(),
        quota: Arc::new(Keeper::detached()),
        upgrades: Arc::default(),
    };
    let list = route_list(&ctl.live.load());
    assert_eq!(
        list,
        "10.8.0.2/32 -> b, class slow  (docker: c10.8.0.2 0123456789ab)\n\
         10.8.0.3/32 -> reject (class label names unknown class \"gold\")  (docker: c10.8.0.3 0123456789ab)\n\
         10.8.0.4/32 -> reject (label names unknown tunnel \"zz\")  (docker: c10.8.0.4 0123456789ab)\n\
         10.8.0.5/32 -> b  (docker: c10.8.0.5 0123456789ab)\n\
         10.8.0.0/24 -> a, class slow  (config)\n\
         10.9.0.1/32 -> b  (config)\n\
         (default) -> reject\n"
    );
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    ctl.handle(Request::RouteSet { source: c("10.8.0.0/24"), tunnel: "b".into(), reset: false }).unwrap();
    assert!(route_list(&ctl.live.load()).contains("10.8.0.0/24 -> b  (route set)\n"));
}

#[test]
fn top_rows_name_the_tunnel_and_sum_drops() {
    use crate::snapshot::{LabelRoute, Labels};
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(), "b": Direct() },
        routes: [(source: "10.8.0.0/24", tunnel: "a")], default: Tunnel("b"))"#;
    let s = Arc::new(crate::config::Settings::parse("t.ron", text).unwrap());
    let lr = |addr: &str, name: &str, tunnel: &str| LabelRoute {
        addr: addr.parse().unwrap(),
        id: "0123456789abcdef".into(),
        name: name.into(),
        tunnel: tunnel.into(),
        class: None,
    };
    let labels = Labels::new(vec![lr("10.8.0.4", "w2\tx", "b"), lr("10.8.0.5", "bad", "typo")], &s);
    let shared = Shared::new(Arc::clone(&s)).with_labels(labels);
    let r = Registry::default();
    let w2 = r.source("10.8.0.4/32");
    stats::Counters::add(&w2.tcp_bytes_up, 10);
    stats::Counters::add(&w2.udp_bytes_up, 5);
    stats::Counters::add(&w2.tcp_bytes_down, 1000);
    stats::Counters::inc(&w2.tcp_flows_active);
    stats::Counters::inc(&w2.udp_sessions_active);
    stats::Counters::add(&w2.udp_drop_shed, 3);
    stats::Counters::add(&w2.drop_queue_full, 2);
    stats::Counters::add(&w2.tcp_drop_fd_share, 4);
    stats::Counters::add(&w2.udp_sessions_total, 50); // not a drop
    stats::Counters::add(&w2.shape_rate_up, 625_000);
    stats::Counters::add(&w2.shape_rate_down, 2_500_000);
    stats::Counters::add(&w2.tcp_held_bytes, 4096);
    r.source("10.8.0.0/24");
    r.source("10.8.0.5/32");
    r.source("10.8.0.9/32"); // its route is gone
    r.source("(default)");
    let out = top_rows(&shared, &r.per_source());
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert!(rows.iter().all(|f| f.len() == 11), "{out}");
    let row = |src: &str| rows.iter().find(|f| f[0] == src).unwrap_or_else(|| panic!("{src}: {out}"));
    assert_eq!(
        row("10.8.0.4/32"),
        &["10.8.0.4/32", "w2?x", "b", "1", "1", "15", "1000", "9", "625000", "2500000", "4096"]
    );
    assert_eq!(row("10.8.0.0/24")[1..3], ["-", "a"]);
    assert_eq!(row("10.8.0.5/32")[1..3], ["bad", "reject"]);
    assert_eq!(row("10.8.0.9/32")[1..3], ["-", "-"]);
    assert_eq!(row("(default)")[1..3], ["-", "b"]);
    // `stats` lists what each source had refused, by counter.
    let text = refusals(&r.per_source());
    assert!(
        text.contains("10.8.0.4/32              drop_queue_full 2, tcp_drop_fd_share 4, udp_drop_shed 3"),
        "{text}"
    );
    assert!(!text.contains("10.8.0.5/32"), "{text}");
    assert_eq!(refusals(&[]), "");
}

/// Set in the child process of the test below.
const OUT_OF_FDS: &str = "EGRESSD_TEST_OUT_OF_FDS";

fn scrape(c: &mut std::net::TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body
}

/// With every descriptor taken (a flood with tcp.fd_share off), a scrape
/// still gets its answer: the metrics thread gives up its spare for it.
/// Runs in a process of its own (the descriptor limit is the process's).
#[test]
fn a_scrape_is_answered_when_descriptors_run_out() {
    if std::env::var_os(OUT_OF_FDS).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "control::tests::a_scrape_is_answered_when_descriptors_run_out", "--nocapture"])
            .env(OUT_OF_FDS, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let _stop = spawn_metrics(l, Arc::default(), Arc::default()).unwrap();
    // Served while descriptors are there (the thread and its spare are up).
    let mut first = std::net::TcpStream::connect(addr).unwrap();
    assert!(scrape(&mut first).contains("egressd_tcp_flows_total"));
    // The client's socket first, then every descriptor taken.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    crate::sys::set_fd_limit(256).unwrap();
    let mut fill = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fill.push(f);
    }
    assert!(std::fs::File::open("/dev/null").is_err(), "the table is full");
    client.connect(&addr.into()).unwrap();
    let mut c: std::net::TcpStream = client.into();
    let body = scrape(&mut c);
    drop(fill);
    assert!(body.contains("egressd_tcp_flows_total"), "no answer with the table full: {body:?}");
}
