use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn settings() -> Settings {
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() }, routes: [(source: "10.8.0.10", tunnel: "a")])"#;
    Settings::parse("t.ron", text).unwrap()
}

fn ask_of(s: &Settings) -> Ask {
    Ask {
        pid: 1,
        listen: s.listen.clone(),
        threads: s.threads,
        state_dir: s.state_dir.display().to_string(),
        control_socket: s.control.socket.display().to_string(),
        metrics_listen: s.control.metrics_listen,
        meters: true,
    }
}

#[test]
fn restart_only_keys_that_cannot_be_handed_over_refuse_the_upgrade() {
    let s = settings();
    assert_eq!(restart_only(&s, &ask_of(&s)), Ok(()));
    let mut a = ask_of(&s);
    a.control_socket = "/run/other.sock".into();
    a.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
    assert_eq!(restart_only(&s, &a), Ok(()), "applied by the new process, not refused");
    let mut a = ask_of(&s);
    a.listen.push("10.9.0.1:10900".parse().unwrap());
    a.threads += 1;
    a.state_dir = "/srv/x".into();
    let e = restart_only(&s, &a).unwrap_err();
    assert!(e.starts_with("listen, threads, state_dir changed"), "{e}");
}

#[test]
fn only_a_root_owned_binary_nobody_else_can_write_is_started() {
    let dir = std::env::temp_dir().join(format!("eg-upgrade-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("egressd");
    std::fs::write(&bin, "#!/bin/sh\nexit 0\n").unwrap();
    let mode = |m| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(m)).unwrap();
    let root = std::fs::metadata(&bin).map(|m| m.uid() == 0).unwrap();
    mode(0o755);
    if root {
        assert_eq!(check_binary(&bin), Ok(()));
    } else {
        assert!(check_binary(&bin).unwrap_err().contains("not root"));
    }
    mode(0o775);
    assert!(check_binary(&bin).unwrap_err().contains(if root { "writable by group" } else { "not root" }));
    mode(0o644);
    if root {
        assert!(check_binary(&bin).unwrap_err().contains("not executable"));
    }
    assert!(check_binary(&dir).unwrap_err().contains("not a regular file"));
    assert!(check_binary(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn this_process_is_alive_and_a_free_pid_is_not() {
    assert!(alive(std::process::id()));
    assert!(!alive(u32::MAX - 1));
}

#[test]
fn records_carry_descriptors_and_a_version_mismatch_is_answered_with_a_refusal() {
    let (a, b) = link_pair().unwrap();
    let (mut a, mut b) = (Link::new(a), Link::new(b));
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    a.send(&Msg::Ready { pid: 5 }, &[file.as_fd()]).unwrap();
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let (m, fds) = b.recv(deadline).unwrap().unwrap();
    assert_eq!(m, Msg::Ready { pid: 5 });
    assert_eq!(fds.len(), 1);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fds.into_iter().next().unwrap()), &mut text)
        .unwrap();
    assert!(text.starts_with(&std::process::id().to_string()), "the same file came across: {text}");
    // The other side speaks version 99: its record is refused, and told why.
    b.version = 99;
    b.send(&Msg::Hello { pid: 1, draining: vec![], meters: false }, &[]).unwrap();
    let e = a.recv(deadline).unwrap_err();
    assert!(
        e.starts_with(&format!("the other process speaks handover version 99, this one {}", wire::VERSION))
    );
    // ... and the refusal, of version 1, is the same news seen from 99.
    let e = b.recv(deadline).unwrap_err();
    assert!(
        e.starts_with(&format!("the other process speaks handover version {}, this one 99", wire::VERSION))
    );
    drop(a);
    assert!(b.recv(deadline).unwrap().is_none(), "end of stream");
}

#[test]
#[ignore = "needs root: SO_SNDBUFFORCE needs CAP_NET_ADMIN, as egressd has (cargo test -- --include-ignored)"]
fn a_record_past_the_default_socket_buffer_goes_whole() {
    let (a, b) = link_pair().unwrap();
    let (a, mut b) = (Link::new(a), Link::new(b));
    // About 1 MiB of counters (a few thousand sources): five times what a
    // SEQPACKET socket takes at net.core.wmem_default (208 KiB).
    let mut s = wire::State::default();
    for i in 0..4000u32 {
        let row = (0..12).map(|k| (format!("tcp_counter_{k}"), u64::from(i) << 20)).collect();
        s.counts.sources.push((format!("10.9.{}.{}/32", i >> 8, i & 255), row));
    }
    let msg = Msg::State(s);
    let n = wire::encode(a.version, &msg).len();
    assert!(n > 512 << 10 && n <= wire::MAX_RECORD, "{n} bytes");
    // Control: a pair left at the default buffer refuses it (EMSGSIZE).
    let default: usize =
        std::fs::read_to_string("/proc/sys/net/core/wmem_default").unwrap().trim().parse().unwrap();
    if default < n {
        let (c, _d) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
        let e = sys::send_with_fds(c.as_fd(), &wire::encode(a.version, &msg), &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
    }
    a.send(&msg, &[]).unwrap();
    let (got, _) = b.recv(Some(Instant::now() + Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(got, msg);
    // Past what the link takes: a clear error, not EMSGSIZE.
    let too_big = Msg::Refuse { reason: "x".repeat(a.max + 1) };
    let e = a.send(&too_big, &[]).unwrap_err();
    assert!(e.contains("more than it takes"), "{e}");
}

#[test]
fn a_silent_peer_times_out() {
    let (a, _b) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
    let mut a = Link::new(a);
    let e = a.recv(Some(Instant::now() + Duration::from_millis(50))).unwrap_err();
    assert_eq!(e, "timed out");
}

/// Records what another process's reports would do here.
#[derive(Default)]
struct Seen(Mutex<Vec<crate::worker::Used>>);

impl Apply for Seen {
    fn apply(&self, used: &crate::worker::Used) {
        self.0.lock().unwrap().push(used.clone());
    }
}

fn sink(seen: &Arc<Seen>) -> Sink {
    Sink {
        ledger: Arc::default(),
        registry: Arc::default(),
        keep: Duration::from_secs(600),
        meters: Arc::default(),
        apply: Arc::clone(seen) as Arc<dyn Apply>,
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "waited 5 s for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn while_the_old_process_drains_both_share_their_reports_then_it_says_what_it_counted() {
    use crate::worker::Used;
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
    let (old_seen, new_seen) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let (old_sink, new_sink) = (sink(&old_seen), sink(&new_seen));
    // The new process also has a successor of its own (a third process):
    // what the old one reports is passed on to it.
    let (_, third) = new_sink.meters.link();
    let newer = exchange::successor(Link::new(b), 1, true, new_sink.clone()).unwrap();
    let sharing = exchange::Sharing::start(Link::new(a), old_sink.clone()).map_err(|(_, e)| e).unwrap();
    wait_for("both links", || old_sink.meters.on() && new_sink.meters.on());
    let from_old =
        Used { rates: vec![("10.8.0.10".parse().unwrap(), [5, 6])], quota: vec![("web".into(), 11)] };
    old_sink.meters.send(None, &from_old);
    wait_for("the old process's report", || !new_seen.0.lock().unwrap().is_empty());
    assert_eq!(new_seen.0.lock().unwrap()[0], from_old);
    // Applied here first, then passed on: waited for.
    assert_eq!(third.recv_timeout(Duration::from_secs(5)).unwrap(), from_old, "passed on to the third");
    let from_new = Used { rates: vec![("10.8.0.10".parse().unwrap(), [1, 2])], quota: vec![] };
    new_sink.meters.send(None, &from_new);
    wait_for("the new process's report", || !old_seen.0.lock().unwrap().is_empty());
    assert_eq!(old_seen.0.lock().unwrap()[0], from_new);
    assert!(third.try_recv().is_ok(), "its own report goes to the third too");
    // The old process ends: a last report, then what its drain counted.
    old_sink.meters.send(None, &from_old);
    let (link, received) = sharing.stop();
    let link = link.expect("the link back");
    assert!(received.is_empty(), "the new process reported no quota bytes");
    assert!(!old_sink.meters.on(), "unlinked");
    let mut counts = wire::Counts::default();
    counts.total.push(("tcp_bytes_down".into(), 42));
    // Its drain counted 30 quota bytes for "web" in all; its reports said
    // 22 of them (applied as they came): the rest is added now.
    let q = crate::config::Quota {
        bytes: 1 << 30,
        every: Duration::from_secs(3600),
        on: crate::config::OnQuota::Reject,
    };
    let web = new_sink.ledger.meter("web", &q, 1_000);
    link.send(&Msg::Spent { bytes: vec![("web".into(), 30)], counts }, &[]).unwrap();
    drop(link);
    newer.join().unwrap();
    assert_eq!(web.used(), 8);
    assert_eq!(new_seen.0.lock().unwrap().len(), 2, "the last report came before the end");
    assert_eq!(new_sink.registry.total().tcp_bytes_down, 42);
}
