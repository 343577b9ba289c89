//! Tests of the follower's timing against a fake Engine API on a Unix
//! socket: a thread that serves `/containers/json`, `/containers/{id}/json`
//! and `/events` the way dockerd does (the stream's head, then one chunk per
//! event, nothing while idle) and can hold the head back, hang a list or an
//! inspect, stay silent, or cut the stream. The label routes are read from the live snapshot, as the fronts
//! read them.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Docker, LiveSink, Running, Sink, Timing, start};
use super::model::{Container, Warned};
use crate::config::{DockerSettings, Settings};
use crate::snapshot::{Live, Shared};
use crate::stats::{Counters, Registry};

const FAST: Timing = Timing {
    resync: Duration::from_millis(400),
    io: Duration::from_millis(300),
    backoff_min: Duration::from_millis(50),
    backoff_max: Duration::from_millis(200),
};

const WEB: &str = r#"{"Id":"aaaaaaaaaaaa1111","Names":["/web"],"Labels":{"egressd.tunnel":"hk0"},
    "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.2"}}}}"#;
const DB: &str = r#"{"Id":"bbbbbbbbbbbb2222","Names":["/db"],"Labels":{"egressd.tunnel":"hk0"},
    "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.3"}}}}"#;
const OTHER: &str = r#"{"Id":"cccccccccccc3333","Names":["/other"],"Labels":{"egressd.exit":"hk0"},
    "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.4"}}}}"#;
const DIE: &str = r#"{"Type":"container","Action":"die","Actor":{"ID":"aaaaaaaaaaaa1111"}}"#;
const NEW: &str = r#"{"Id":"eeeeeeeeeeee5555","Names":["/new"],"Labels":{"egressd.tunnel":"hk0"},
    "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.5"}}}}"#;
const DB_MOVED: &str = r#"{"Id":"bbbbbbbbbbbb2222","Names":["/db"],"Labels":{"egressd.tunnel":"hk0"},
    "NetworkSettings":{"Networks":{"other":{"IPAddress":"10.9.0.3"}}}}"#;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    /// An events request, with its `since`.
    Events(Option<f64>),
    /// The events head went out.
    Head,
    List,
    /// An inspect, with the id asked about.
    Inspect(String),
}

#[derive(Default)]
struct State {
    /// The containers a list answers with (JSON objects).
    containers: Vec<&'static str>,
    /// Containers to have halfway through `head_delay`, with a `die` in
    /// the event log: a change while the events request waits for its head.
    before_head: Option<Vec<&'static str>>,
    /// Containers to have between the head and the subscription (dockerd
    /// flushes the head, then subscribes), with a `die` in the event log.
    before_subscribe: Option<Vec<&'static str>>,
    /// Hold the events head back this long.
    head_delay: Duration,
    /// Subscribe this long after the head.
    subscribe_delay: Duration,
    /// Every event so far (wall-clock seconds, JSON), for `since`.
    events: Vec<(f64, String)>,
    /// Never send the events head.
    no_head: bool,
    /// Lists never answer.
    list_hangs: bool,
    /// Inspects never answer.
    inspect_hangs: bool,
    log: Vec<(Instant, Req)>,
    streams: Vec<UnixStream>,
}

struct Fake {
    dir: PathBuf,
    socket: PathBuf,
    state: Arc<Mutex<State>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Fake {
    fn new(containers: Vec<&'static str>) -> Fake {
        let dir = std::env::temp_dir().join(format!(
            "egressd-fake-docker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(State { containers, ..State::default() }));
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { return };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve(c, &st));
            }
        });
        Fake { dir, socket, state }
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
    }

    fn count(&self, r: fn(&Req) -> bool) -> usize {
        self.state.lock().unwrap().log.iter().filter(|(_, q)| r(q)).count()
    }

    fn log(&self) -> Vec<(Instant, Req)> {
        self.state.lock().unwrap().log.clone()
    }

    /// Sends an event on every open stream (one chunk, as dockerd does).
    fn event(&self, json: &str) {
        let mut s = self.state.lock().unwrap();
        s.events.push((wall(), json.to_string()));
        for w in &mut s.streams {
            let _ = w.write_all(chunk(json).as_bytes());
        }
    }

    /// Closes every open event stream (dockerd restarting, a proxy killed).
    fn cut(&self) {
        for s in self.state.lock().unwrap().streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn settings(&self) -> DockerSettings {
        DockerSettings {
            socket: self.socket.clone(),
            label: "egressd.tunnel".into(),
            class_label: "egressd.class".into(),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn chunk(json: &str) -> String {
    format!("{:x}\r\n{json}\n\r\n", json.len() + 1)
}

/// A change of the containers with its `die` in the event log (on no stream).
fn change(s: &mut State, next: Option<Vec<&'static str>>) {
    if let Some(next) = next {
        s.containers = next;
        s.events.push((wall(), DIE.to_string()));
    }
}

fn serve(mut c: UnixStream, st: &Mutex<State>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
    let now = Instant::now();
    if let Some(id) = path.strip_prefix("/containers/").and_then(|p| p.strip_suffix("/json")) {
        let (hang, found) = {
            let mut s = st.lock().unwrap();
            s.log.push((now, Req::Inspect(id.to_string())));
            (s.inspect_hangs, s.containers.iter().find_map(|c| inspected(c, id)))
        };
        if hang {
            let _ = c.read(&mut buf);
            return;
        }
        let (status, body) = match found {
            Some(body) => ("200 OK", body),
            None => ("404 Not Found", format!(r#"{{"message":"No such container: {id}"}}"#)),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(format!("{head}{body}").as_bytes());
    } else if path.starts_with("/containers/json") {
        let (hang, body) = {
            let mut s = st.lock().unwrap();
            s.log.push((now, Req::List));
            (s.list_hangs, format!("[{}]", s.containers.join(",")))
        };
        if hang {
            // Until the client gives up.
            let _ = c.read(&mut buf);
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(format!("{head}{body}").as_bytes());
    } else if path.starts_with("/events") {
        let since: Option<f64> =
            path.split(['?', '&']).find_map(|p| p.strip_prefix("since=")).and_then(|v| v.parse().ok());
        let (delay, no_head) = {
            let mut s = st.lock().unwrap();
            s.log.push((now, Req::Events(since)));
            (s.head_delay, s.no_head)
        };
        std::thread::sleep(delay / 2);
        {
            let mut s = st.lock().unwrap();
            let next = s.before_head.take();
            change(&mut s, next);
        }
        std::thread::sleep(delay / 2);
        if no_head {
            let _ = c.read(&mut buf);
            return;
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Logged before it goes out: the client's next request cannot
        // come before it in the log.
        let wait = {
            let mut s = st.lock().unwrap();
            s.log.push((Instant::now(), Req::Head));
            s.subscribe_delay
        };
        if c.write_all(head.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(wait);
        {
            let mut s = st.lock().unwrap();
            let next = s.before_subscribe.take();
            change(&mut s, next);
            // Subscribed: first what the log holds since `since`, then live.
            if let Some(since) = since {
                let replay: Vec<String> =
                    s.events.iter().filter(|(t, _)| *t >= since).map(|(_, e)| chunk(e)).collect();
                for e in replay {
                    let _ = c.write_all(e.as_bytes());
                }
            }
            if let Ok(w) = c.try_clone() {
                s.streams.push(w);
            }
        }
        // Until the client goes away.
        let _ = c.read(&mut buf);
    }
}

/// A running container's inspect answer from its list entry, if its id is `id`.
fn inspected(listed: &str, id: &str) -> Option<String> {
    let c: serde_json::Value = serde_json::from_str(listed).unwrap();
    (c["Id"] == id).then(|| {
        serde_json::json!({
            "Id": c["Id"],
            "Name": c["Names"][0],
            "State": {"Status": "running", "Running": true},
            "Config": {"Labels": c["Labels"]},
            "NetworkSettings": c["NetworkSettings"],
        })
        .to_string()
    })
}

/// A follower of `fake` writing into a fresh live snapshot.
fn follow(fake: &Fake, timing: Timing) -> (Running, Arc<Live>) {
    follow_at(fake.settings(), timing)
}

fn live() -> Arc<Live> {
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "hk0": Direct() }, routes: [], docker: ())"#;
    Arc::new(Live::new(Shared::new(Arc::new(Settings::parse("t.ron", text).unwrap()))))
}

fn follow_at(d: DockerSettings, timing: Timing) -> (Running, Arc<Live>) {
    let live = live();
    let sink = LiveSink {
        label: d.label.clone(),
        class_label: d.class_label.clone(),
        live: Arc::clone(&live),
        workers: Vec::new(),
        counters: Arc::new(Counters::default()),
        warned: Warned::default(),
        warned_class: Warned::default(),
    };
    (start(d, timing, sink).unwrap(), live)
}

fn routed(live: &Live, addr: &str) -> bool {
    live.load().labels.routes().any(|r| r.addr.to_string() == addr)
}

/// Polls `f` every 5 ms for up to `limit`; how long it took to hold.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

const LONG: Duration = Duration::from_secs(5);
/// What a loaded machine may add to a bound (the bounds tested are far
/// below what the old follower did: never).
const SLACK: Duration = Duration::from_secs(1);

#[test]
fn lists_only_after_the_event_streams_head() {
    let fake = Fake::new(vec![WEB, DB]);
    // web goes away while the events request waits for its head: an event
    // the stream will never carry (it happened before the subscription).
    fake.set(|s| {
        s.head_delay = Duration::from_millis(300);
        s.before_head = Some(vec![DB]);
    });
    // The head is late, not missing: well within the deadline.
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), io: LONG, ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.3")).is_some());
    assert!(within(LONG, || fake.count(|r| *r == Req::Head) == 1).is_some());
    let log = fake.log();
    let head = log.iter().position(|(_, r)| *r == Req::Head).expect("head sent");
    let list = log.iter().position(|(_, r)| *r == Req::List).expect("listed");
    assert!(head < list, "the list came before the stream's head: {log:?}");
    // The list is after the change: web never got a route to inherit.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!routed(&live, "10.8.0.2"));
    f.end();
}

#[test]
fn events_since_just_before_the_request_cover_the_gap_before_the_subscription() {
    let fake = Fake::new(vec![WEB, DB]);
    // web goes after the head went out and the list was taken, before
    // dockerd subscribed the stream: only a replay from `since` carries it.
    fake.set(|s| {
        s.subscribe_delay = Duration::from_millis(300);
        s.before_subscribe = Some(vec![DB]);
    });
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), io: LONG, ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.2")).is_some(), "the first list had web");
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("web's route gone by the replayed event");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let log = fake.log();
    let Some((_, Req::Events(Some(since)))) = log.first() else { panic!("no since: {log:?}") };
    let now = wall();
    assert!(*since <= now && *since > now - 10.0, "since {since}, now {now}");
    f.end();
}

fn container_event(action: &str, id: &str) -> String {
    format!(r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{id}"}}}}"#)
}

fn inspected_ids(fake: &Fake) -> Vec<String> {
    fake.log()
        .into_iter()
        .filter_map(|(_, r)| match r {
            Req::Inspect(id) => Some(id),
            _ => None,
        })
        .collect()
}

#[test]
fn an_event_asks_about_its_container_only() {
    let fake = Fake::new(vec![WEB, DB]);
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.2") && fake.count(|r| *r == Req::Head) == 1).is_some());
    let lists = fake.count(|r| *r == Req::List);
    // web stops: its inspect (a 404 here) takes its route, db's stays.
    fake.set(|s| s.containers = vec![DB]);
    fake.event(DIE);
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(routed(&live, "10.8.0.3"));
    // A new container starts: its inspect brings its route.
    fake.set(|s| s.containers = vec![DB, NEW]);
    fake.event(&container_event("start", "eeeeeeeeeeee5555"));
    assert!(within(LONG, || routed(&live, "10.8.0.5")).is_some());
    // A destroy needs no question.
    fake.set(|s| s.containers = vec![DB]);
    fake.event(&container_event("destroy", "eeeeeeeeeeee5555"));
    assert!(within(LONG, || !routed(&live, "10.8.0.5")).is_some());
    // A network event names the container in its attributes.
    fake.set(|s| s.containers = vec![DB_MOVED]);
    fake.event(
        r#"{"Type":"network","Action":"connect","Actor":{"ID":"n1","Attributes":{"container":"bbbbbbbbbbbb2222"}}}"#,
    );
    assert!(within(LONG, || routed(&live, "10.9.0.3") && !routed(&live, "10.8.0.3")).is_some());
    assert_eq!(inspected_ids(&fake), ["aaaaaaaaaaaa1111", "eeeeeeeeeeee5555", "bbbbbbbbbbbb2222"]);
    assert_eq!(fake.count(|r| *r == Req::List), lists, "an event that names its container lists nothing");
    // An event that names none: a list.
    fake.set(|s| s.containers = vec![WEB, DB]);
    fake.event(r#"{"Type":"network","Action":"destroy","Actor":{"ID":"n1"}}"#);
    assert!(within(LONG, || routed(&live, "10.8.0.2") && routed(&live, "10.8.0.3")).is_some());
    assert_eq!(fake.count(|r| *r == Req::List), lists + 1);
    assert_eq!(fake.count(|r| matches!(r, Req::Events(_))), 1, "one stream throughout");
    f.end();
}

#[test]
fn a_busy_stream_still_lists_every_period() {
    let fake = Fake::new(vec![WEB, DB]);
    let (f, live) = follow(&fake, FAST);
    assert!(within(LONG, || routed(&live, "10.8.0.2") && fake.count(|r| *r == Req::Head) == 1).is_some());
    // db's events come every 50 ms, each answered by an inspect; web goes
    // with no event (lost): the periodic list still comes and finds it.
    fake.set(|s| s.containers = vec![DB]);
    let t0 = Instant::now();
    let gone = within(LONG, || {
        fake.event(&container_event("update", "bbbbbbbbbbbb2222"));
        std::thread::sleep(Duration::from_millis(45));
        !routed(&live, "10.8.0.2")
    });
    let took = gone.expect("web's route gone by a periodic list");
    assert!(took <= FAST.resync + FAST.io + SLACK, "{took:?}");
    assert!(fake.count(|r| matches!(r, Req::Inspect(_))) >= 2, "{:?}", fake.log());
    assert!(routed(&live, "10.8.0.3"));
    // The change no event announced: a fresh stream, as when idle.
    assert!(
        within(LONG, || fake.count(|r| matches!(r, Req::Events(_))) == 2).is_some(),
        "{:?}",
        t0.elapsed()
    );
    f.end();
}

#[test]
fn a_hung_inspect_ends_the_session_and_a_list_catches_up() {
    let fake = Fake::new(vec![WEB]);
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.2") && fake.count(|r| *r == Req::Head) == 1).is_some());
    fake.set(|s| {
        s.inspect_hangs = true;
        s.containers.clear();
    });
    fake.event(DIE);
    // The inspect gives up by its deadline; the list between sessions and
    // the next session's take the route away.
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    assert!(took <= FAST.io + FAST.io + SLACK, "{took:?}");
    assert!(within(LONG, || fake.count(|r| matches!(r, Req::Events(_))) >= 2).is_some());
    f.end();
}

#[test]
fn an_idle_stream_still_resyncs_every_period_and_a_missed_change_reconnects() {
    let fake = Fake::new(vec![WEB]);
    let (f, live) = follow(&fake, FAST);
    assert!(within(LONG, || routed(&live, "10.8.0.2")).is_some());
    // Idle: lists keep coming, one a period (not a busy loop).
    let t0 = Instant::now();
    assert!(within(LONG, || fake.count(|r| *r == Req::List) >= 4).is_some());
    let lists = fake.count(|r| *r == Req::List);
    assert!(t0.elapsed() >= FAST.resync * 2, "{lists} lists in {:?}", t0.elapsed());
    assert_eq!(fake.count(|r| matches!(r, Req::Events(_))), 1, "nothing changed: one stream");
    // web goes with no event (lost): gone within a period and a list.
    fake.set(|s| s.containers.clear());
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    // The bound is a period and a list; a loaded machine gets a second more.
    assert!(took <= FAST.resync + FAST.io + SLACK, "{took:?}");
    // The change no event announced: a fresh stream.
    assert!(within(LONG, || fake.count(|r| matches!(r, Req::Events(_))) == 2).is_some());
    f.end();
}

#[test]
fn a_hung_list_ends_the_session_and_resyncs_go_on() {
    let fake = Fake::new(vec![WEB]);
    let (f, live) = follow(&fake, FAST);
    assert!(within(LONG, || routed(&live, "10.8.0.2")).is_some());
    fake.set(|s| {
        s.list_hangs = true;
        s.containers.clear();
    });
    // The periodic list hangs: the session ends by its deadline and new
    // ones follow (each a stream and a list); the routes stay meanwhile.
    assert!(within(LONG, || fake.count(|r| matches!(r, Req::Events(_))) >= 3).is_some());
    assert!(routed(&live, "10.8.0.2"), "kept while Docker does not answer");
    fake.set(|s| s.list_hangs = false);
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    assert!(took <= FAST.io + FAST.backoff_max + FAST.io + SLACK, "{took:?}");
    f.end();
}

#[test]
fn a_stream_whose_head_never_comes_is_given_up_and_lists_go_on() {
    let fake = Fake::new(vec![WEB]);
    fake.set(|s| s.no_head = true);
    let (f, live) = follow(&fake, FAST);
    // Each attempt gives up on the head by its deadline and lists anyway.
    assert!(within(LONG, || fake.count(|r| matches!(r, Req::Events(_))) >= 3).is_some());
    assert!(routed(&live, "10.8.0.2"));
    let log = fake.log();
    let first_list = log.iter().position(|(_, r)| *r == Req::List).expect("listed");
    let (t_events, _) = log.first().expect("an events request");
    let (t_list, _) = log.get(first_list).expect("a list");
    assert!(*t_list >= *t_events + FAST.io, "a list before the head's deadline: {log:?}");
    fake.set(|s| s.containers.clear());
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    assert!(took <= FAST.io + FAST.backoff_max + FAST.io + SLACK, "{took:?}");
    fake.set(|s| s.no_head = false);
    assert!(within(LONG, || fake.count(|r| *r == Req::Head) >= 1).is_some());
    f.end();
}

#[test]
fn a_cut_stream_reconnects_and_lists_at_once() {
    let fake = Fake::new(vec![WEB, DB]);
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.2") && fake.count(|r| *r == Req::Head) == 1).is_some());
    fake.set(|s| s.containers = vec![DB]);
    fake.cut();
    let took = within(LONG, || !routed(&live, "10.8.0.2")).expect("route gone");
    assert!(took < FAST.backoff_max + SLACK, "{took:?}");
    assert!(routed(&live, "10.8.0.3"));
    f.end();
}

#[test]
fn a_stop_ends_the_thread_promptly_whatever_it_waits_for() {
    let fake = Fake::new(vec![WEB]);
    let (f, live) = follow(&fake, Timing { resync: Duration::from_secs(30), ..FAST });
    assert!(within(LONG, || routed(&live, "10.8.0.2")).is_some());
    // Blocked reading a silent stream (up to 30 s).
    let t0 = Instant::now();
    f.end();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Sleeping between attempts at a socket that is not there.
    let gone = DockerSettings { socket: fake.dir.join("nothing.sock"), label: "x".into(), ..fake.settings() };
    let (f, _) = follow_at(gone, Timing { backoff_min: Duration::from_secs(20), ..FAST });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    f.end();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn a_reload_restarts_the_follower_only_when_docker_changed() {
    let fake = Fake::new(vec![WEB, OTHER]);
    let live = live();
    let mut d = Docker::new(Arc::clone(&live), Vec::new(), Arc::new(Registry::default()));
    let s1 = fake.settings();
    assert!(d.apply(Some(&s1)).unwrap().is_some());
    assert!(within(LONG, || routed(&live, "10.8.0.2")).is_some());
    assert!(!routed(&live, "10.8.0.4"), "other carries another label");
    // Unchanged: the follower keeps running, no new stream.
    assert_eq!(d.apply(Some(&s1)).unwrap(), None);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fake.count(|r| matches!(r, Req::Events(_))), 1);
    // Another label: the old label's routes go at once, the new one's come.
    let s2 = DockerSettings { label: "egressd.exit".into(), ..s1.clone() };
    let what = d.apply(Some(&s2)).unwrap().unwrap();
    assert!(what.contains("the 1 routes of label egressd.tunnel removed"), "{what}");
    assert!(!routed(&live, "10.8.0.2"));
    assert!(within(LONG, || routed(&live, "10.8.0.4")).is_some());
    assert!(!routed(&live, "10.8.0.2"));
    // Another socket, same label: the routes stay while it does not answer.
    let s3 = DockerSettings { socket: fake.dir.join("nothing.sock"), ..s2.clone() };
    let what = d.apply(Some(&s3)).unwrap().unwrap();
    assert!(what.contains("stay until it answers"), "{what}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(routed(&live, "10.8.0.4"));
    // No docker: any more: the label routes go.
    let what = d.apply(None).unwrap().unwrap();
    assert!(what.contains("no longer followed; its 1 label routes removed"), "{what}");
    assert_eq!(live.load().labels.routes().count(), 0);
    assert_eq!(d.apply(None).unwrap(), None);
}

/// Issue 26: a class label naming no class rejects the container (its
/// addresses get no route elsewhere), is counted once and stays counted
/// once; a known class is carried on the route.
#[test]
fn an_unknown_class_label_rejects_and_is_counted_once() {
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "hk0": Direct() }, routes: [],
        classes: { "slow": (rate: "20mbit") }, default: Tunnel("hk0"), docker: ())"#;
    let live = Arc::new(Live::new(Shared::new(Arc::new(Settings::parse("t.ron", text).unwrap()))));
    let counters = Arc::new(Counters::default());
    let mut sink = LiveSink {
        label: "egressd.tunnel".into(),
        class_label: "egressd.class".into(),
        live: Arc::clone(&live),
        workers: Vec::new(),
        counters: Arc::clone(&counters),
        warned: Warned::default(),
        warned_class: Warned::default(),
    };
    let c = |id: &str, class: &str, addr: &str| Container {
        id: id.into(),
        name: id.into(),
        tunnel: "hk0".into(),
        class: Some(class.into()),
        addrs: vec![addr.parse().unwrap()],
    };
    let list = [c("a", "slow", "10.8.0.2"), c("b", "gold", "10.8.0.3")];
    sink.apply(&list);
    sink.apply(&list);
    let view = live.load();
    let class = |a: &str| view.target(a.parse().unwrap()).map(|(_, t)| t.class);
    assert_eq!(class("10.8.0.2"), Some(Some(0)));
    assert_eq!(class("10.8.0.3"), None, "rejected, not sent by default");
    assert_eq!(counters.docker_unknown_class.load(Ordering::Relaxed), 1);
    assert_eq!(counters.docker_unknown_tunnel.load(Ordering::Relaxed), 0);
}
