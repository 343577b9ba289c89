//! The handover format: what the running egressd and the new binary of an
//! upgrade say to each other, one SOCK_SEQPACKET record per message.
//!
//! ```text
//!   egressd-handover <version>\n      ← every record; another version: refused
//!   {"Hello":{...}}                    ← one message, JSON
//! ```
//!
//! Descriptors (SCM_RIGHTS) ride with the record that lists them. Pure:
//! [`decode`] takes any bytes (the fuzz target `handover` feeds it).
//!
//! ```text
//!   old                                   new (started with EGRESSD_HANDOVER_FD)
//!    │ Hello {pid, draining}          ─►   │ loads and checks its config
//!    │                                ◄─   Ask {what its config serves} | Refuse
//!    │ (restart-only keys compared)        │
//!    │ Sockets {...} + listeners      ─►   │
//!    │ (quota saver paused, saved)         │
//!    │ State {routes, labels, counts} ─►   │ serves on the same sockets (UDP held)
//!    │ (its fronts stop reading UDP)       │
//!    │ Sessions {...} + fds, ..., last ─►  │ takes the UDP sessions, reads UDP
//!    │                                ◄─   Ready {pid}
//!    │ stops accepting, drains ...         │
//!    │ Used {per source, per identity} ◄─► │ every 100 ms both ways (meters)
//!    │ Spent {bytes, counts}          ─►   │ added to its quota counters and stats
//!    ╳ exits (end of stream)               │ logs the old process's end
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::stats::{Counted, Snapshot};
use crate::worker::Used;

/// The version this binary speaks. Bumped on any change to [`Msg`] a peer
/// of the previous version could misread: between two versions the
/// upgrade is refused, in either direction (a rollback too).
pub const VERSION: u32 = 1;

/// A record's first line, up to the version.
const MAGIC: &str = "egressd-handover ";

/// The longest record (a `State` of many routes and labels; larger ones
/// are refused as malformed rather than read in part).
pub const MAX_RECORD: usize = 4 << 20;

/// One message of the handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Old → new, first: who hands over, and the older processes still
    /// draining (so the new one knows how many there are).
    Hello {
        pid: u32,
        draining: Vec<u32>,
        /// It speaks the meter exchange (`Used`) while it drains; absent
        /// from a peer that predates it.
        #[serde(default)]
        meters: bool,
    },
    /// New → old: what the new config would serve, to compare the keys
    /// that only a restart changes.
    Ask(Ask),
    /// Either way: the upgrade stops here, and why.
    Refuse { reason: String },
    /// Old → new: the listening sockets, attached in this order: for each
    /// front loop its TCP listeners then its UDP sockets (one per listen
    /// address each), then the control socket and the metrics listener
    /// when present.
    Sockets { fronts: usize, per_front: usize, control: bool, metrics: bool },
    /// Old → new: the live routing state.
    State(State),
    /// Old → new, after `State`: relaying UDP sessions, their descriptors
    /// attached in order (a relayed one's control connection, then its
    /// relay socket; a Direct one's socket); `last` ends them.
    Sessions { sessions: Vec<Session>, last: bool },
    /// New → old: serving; the old one may stop accepting.
    Ready { pid: u32 },
    /// Either way after `Ready`, about ten times a second while the old
    /// one drains, when both said `meters`: what the sender's shaped and
    /// metered flows moved (and what it passes on from a third process).
    Used(Used),
    /// Old → new, as the old one ends: bytes its draining flows counted
    /// after the handover, per quota identity, and what they added to its
    /// counters (absent from a peer that predates it).
    Spent {
        bytes: Vec<(String, u64)>,
        #[serde(default)]
        counts: Counts,
    },
}

/// What the new process's config would serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub pid: u32,
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub state_dir: String,
    pub control_socket: String,
    pub metrics_listen: Option<SocketAddr>,
    /// It speaks the meter exchange too (only when the Hello said so).
    #[serde(default)]
    pub meters: bool,
}

/// The routing state a restart would lose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// `route set` routes: source CIDR and tunnel name.
    pub routes: Vec<(String, String)>,
    /// Docker label routes, as the follower last saw them.
    pub labels: Vec<Label>,
    /// The counters' totals (stats, top, Prometheus), so that they go on
    /// from where they were; absent from a peer that predates them.
    #[serde(default)]
    pub counts: Counts,
    /// The per-source new-flow and new-session buckets that are not full,
    /// so that a source gets no fresh burst from an upgrade.
    #[serde(default)]
    pub buckets: Buckets,
}

impl State {
    /// Makes the record fit (`fits`: one record of the link, at most
    /// [`MAX_RECORD`]): the counters of the quietest sources, then buckets,
    /// are left out until it does (routes and labels never: without them
    /// the upgrade is refused). Says what was left out, if anything.
    pub fn fit(&mut self, fits: impl Fn(&State) -> bool) -> Option<String> {
        if fits(self) {
            return None;
        }
        let (sources, tcp, udp) = (self.counts.sources.len(), self.buckets.tcp.len(), self.buckets.udp.len());
        let rest = State { counts: Counts::default(), ..self.clone() };
        self.counts.trim(|c| fits(&State { counts: c.clone(), ..rest.clone() }));
        let no_buckets = |s: &State| s.buckets.tcp.is_empty() && s.buckets.udp.is_empty();
        while !fits(self) && !no_buckets(self) {
            self.buckets.tcp.truncate(self.buckets.tcp.len() / 2);
            self.buckets.udp.truncate(self.buckets.udp.len() / 2);
        }
        Some(format!(
            "the state record was too large: handed over the counters of {} of {sources} sources, the buckets of {} of \
             {tcp} (TCP) and {} of {udp} (UDP) sources",
            self.counts.sources.len(),
            self.buckets.tcp.len(),
            self.buckets.udp.len()
        ))
    }
}

/// Token buckets by source, in thousandths of a token held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// New TCP flows (`tcp.new_flows_per_source_per_sec`).
    pub tcp: Vec<(IpAddr, u64)>,
    /// New UDP sessions (`udp.new_sessions_per_source_per_sec`).
    pub udp: Vec<(IpAddr, u64)>,
}

/// Counter totals by name (gauges left out: they are each process's own):
/// all of egressd, per tunnel, per route source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: Vec<(String, u64)>,
    pub tunnels: Vec<(String, Vec<(String, u64)>)>,
    pub sources: Vec<(String, Vec<(String, u64)>)>,
}

impl Counts {
    pub fn of(c: &Counted) -> Counts {
        let rows = |v: &[(String, Snapshot)]| -> Vec<(String, Vec<(String, u64)>)> {
            v.iter().map(|(n, s)| (n.clone(), s.totals())).filter(|(_, t)| !t.is_empty()).collect()
        };
        Counts { total: c.total.totals(), tunnels: rows(&c.tunnels), sources: rows(&c.sources) }
    }

    /// Leaves out the counts of the quietest sources (fewest bytes moved)
    /// until `fits` says the record they go in fits.
    pub fn trim(&mut self, fits: impl Fn(&Counts) -> bool) {
        if fits(self) {
            return;
        }
        let moved = |c: &[(String, u64)]| -> u64 {
            c.iter()
                .filter(|(n, _)| n.ends_with("_bytes_up") || n.ends_with("_bytes_down"))
                .fold(0u64, |a, (_, v)| a.saturating_add(*v))
        };
        self.sources.sort_by_key(|(_, c)| std::cmp::Reverse(moved(c)));
        while !fits(self) && !self.sources.is_empty() {
            self.sources.truncate(self.sources.len() / 2);
        }
    }

    /// The counts this build knows (names it does not have are left out).
    pub fn counted(&self) -> Counted {
        let rows = |v: &[(String, Vec<(String, u64)>)]| -> Vec<(String, Snapshot)> {
            v.iter().map(|(n, t)| (n.clone(), Snapshot::from_totals(t))).collect()
        };
        Counted {
            total: Snapshot::from_totals(&self.total),
            tunnels: rows(&self.tunnels),
            sources: rows(&self.sources),
        }
    }
}

/// One Docker label route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub addr: IpAddr,
    pub id: String,
    pub name: String,
    pub tunnel: String,
    pub class: Option<String>,
}

/// One UDP session on its way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client: SocketAddr,
    pub dns_only: bool,
    pub tunnel: String,
    /// Through a SOCKS5 relay (two descriptors), else Direct (one).
    pub relay: bool,
}

impl Session {
    /// Descriptors it carries.
    pub fn fds(&self) -> usize {
        if self.relay { 2 } else { 1 }
    }
}

/// Why a record was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Not a handover record at all (or cut short).
    Malformed(String),
    /// A record of another version (theirs, ours): the upgrade must be refused.
    Version(u32, u32),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Malformed(why) => write!(f, "malformed handover record: {why}"),
            WireError::Version(theirs, ours) => write!(
                f,
                "the other process speaks handover version {theirs}, this one {ours}: an upgrade between them \
                 (or a rollback) is refused; restart instead"
            ),
        }
    }
}

/// The record for `msg` in `version` (always [`VERSION`], but for tests of
/// a refusal and the `EGRESSD_HANDOVER_VERSION` override).
pub fn encode(version: u32, msg: &Msg) -> Vec<u8> {
    let mut out = format!("{MAGIC}{version}\n").into_bytes();
    // A Msg holds strings, numbers and addresses only: serializing cannot fail.
    out.extend(serde_json::to_vec(msg).unwrap_or_default());
    out
}

/// The version of a record, when its first line says one.
pub fn version_of(record: &[u8]) -> Option<u32> {
    let nl = record.iter().position(|&b| b == b'\n')?;
    std::str::from_utf8(&record[..nl]).ok()?.strip_prefix(MAGIC)?.parse().ok()
}

/// The message of a record of version `want`.
pub fn decode(record: &[u8], want: u32) -> Result<Msg, WireError> {
    if record.len() > MAX_RECORD {
        return Err(WireError::Malformed(format!("{} bytes, more than {MAX_RECORD}", record.len())));
    }
    let Some(version) = version_of(record) else {
        return Err(WireError::Malformed("no `egressd-handover VERSION` line".into()));
    };
    let body = &record[record.iter().position(|&b| b == b'\n').unwrap_or(0) + 1..];
    match serde_json::from_slice::<Msg>(body) {
        Ok(m) if version == want => Ok(m),
        // A refusal is read whatever its version: it says why in words.
        Ok(m @ Msg::Refuse { .. }) => Ok(m),
        _ if version != want => Err(WireError::Version(version, want)),
        Err(e) => Err(WireError::Malformed(e.to_string())),
        Ok(_) => unreachable!("version == want handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello { pid: 7, draining: vec![3, 5], meters: true },
            Msg::Ask(Ask {
                pid: 8,
                listen: vec!["10.8.0.1:10900".parse().unwrap(), "[fd08::1]:10900".parse().unwrap()],
                threads: 2,
                state_dir: "/var/lib/egressd".into(),
                control_socket: "/run/egressd.sock".into(),
                metrics_listen: None,
                meters: true,
            }),
            Msg::Refuse { reason: "listen changed".into() },
            Msg::Sockets { fronts: 2, per_front: 2, control: true, metrics: false },
            Msg::State(State {
                routes: vec![("10.8.0.12/32".into(), "hk1".into())],
                labels: vec![Label {
                    addr: "10.8.0.20".parse().unwrap(),
                    id: "abc".into(),
                    name: "web\n\"1\"".into(),
                    tunnel: "a".into(),
                    class: Some("gold".into()),
                }],
                counts: Counts {
                    total: vec![("tcp_bytes_up".into(), 7)],
                    tunnels: vec![("hk1".into(), vec![("tcp_bytes_up".into(), 7)])],
                    sources: vec![("10.8.0.12/32".into(), vec![("tcp_bytes_up".into(), 7)])],
                },
                buckets: Buckets {
                    tcp: vec![("10.8.0.12".parse().unwrap(), 0)],
                    udp: vec![("fd00::5".parse().unwrap(), 999)],
                },
            }),
            Msg::Sessions {
                sessions: vec![Session {
                    client: "10.8.0.11:40000".parse().unwrap(),
                    dns_only: false,
                    tunnel: "exit1".into(),
                    relay: true,
                }],
                last: true,
            },
            Msg::Ready { pid: 8 },
            Msg::Spent { bytes: vec![("web".into(), 1 << 40)], counts: Counts::default() },
            Msg::Used(Used {
                rates: vec![("10.8.0.10".parse().unwrap(), [1, u64::MAX])],
                quota: vec![("web".into(), 5)],
            }),
        ]
    }

    #[test]
    fn a_peer_without_counts_is_understood_both_ways() {
        // A State and a Spent as the build before the counts wrote them.
        let old_state =
            b"egressd-handover 1\n{\"State\":{\"routes\":[[\"10.8.0.12/32\",\"hk1\"]],\"labels\":[]}}";
        match decode(old_state, VERSION) {
            Ok(Msg::State(s)) => assert_eq!((s.routes.len(), s.counts), (1, Counts::default())),
            other => panic!("{other:?}"),
        }
        let old_spent = b"egressd-handover 1\n{\"Spent\":{\"bytes\":[[\"web\",5]]}}";
        assert!(
            matches!(decode(old_spent, VERSION), Ok(Msg::Spent { counts, .. }) if counts == Counts::default())
        );
        // The older build ignores the field it does not know (serde's
        // default for structs): checked on the JSON it would read.
        #[derive(serde::Deserialize)]
        struct OldState {
            routes: Vec<(String, String)>,
        }
        let now = encode(VERSION, &all()[4]);
        let json = &now[now.iter().position(|&b| b == b'\n').unwrap() + 1..];
        let v: std::collections::HashMap<String, OldState> = serde_json::from_slice(json).unwrap();
        assert_eq!(v["State"].routes.len(), 1);
    }

    #[test]
    fn a_state_too_large_for_a_record_keeps_its_routes_and_the_busiest_sources() {
        let mut s = State { routes: vec![("10.8.0.12/32".into(), "hk1".into())], ..State::default() };
        let row = |i: u64| -> Vec<(String, u64)> {
            let mut v: Vec<(String, u64)> = (0..20).map(|k| (format!("some_counter_{k}"), i)).collect();
            v.push(("tcp_bytes_down".into(), i));
            v
        };
        for i in 0..40_000u64 {
            s.counts.sources.push((format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255), row(i)));
        }
        for i in 0..100_000u32 {
            s.buckets.tcp.push((IpAddr::from(i.to_be_bytes()), 0));
        }
        let fits = |s: &State| encode(VERSION, &Msg::State(s.clone())).len() <= MAX_RECORD;
        let why = s.fit(fits).expect("too large at first");
        assert!(encode(VERSION, &Msg::State(s.clone())).len() <= MAX_RECORD, "{why}");
        assert_eq!(s.routes.len(), 1);
        assert!(!s.counts.sources.is_empty() && s.counts.sources.len() < 40_000, "{why}");
        assert_eq!(s.counts.sources[0].1.last().unwrap().1, 39_999, "the busiest first");
        // One that fits is left as it is.
        let mut small = State::default();
        assert_eq!(small.fit(fits), None);
    }

    #[test]
    fn counts_travel_by_name_and_unknown_names_are_left_out() {
        let mut c = Counted::default();
        c.total.tcp_bytes_up = 5;
        c.total.tcp_flows_active = 2;
        c.sources.push(("10.8.0.10/32".into(), c.total));
        let w = Counts::of(&c);
        assert_eq!(w.total, vec![("tcp_bytes_up".to_string(), 5)], "no gauge travels");
        let back = w.counted();
        assert_eq!((back.total.tcp_bytes_up, back.total.tcp_flows_active), (5, 0));
        let mut odd = w.clone();
        odd.total.push(("counter_of_a_later_build".into(), 9));
        assert_eq!(odd.counted(), back);
    }

    #[test]
    fn every_message_comes_back_as_it_was_sent() {
        for m in all() {
            let rec = encode(VERSION, &m);
            assert!(rec.starts_with(b"egressd-handover 1\n"), "{:?}", String::from_utf8_lossy(&rec));
            assert_eq!(decode(&rec, VERSION), Ok(m));
        }
    }

    #[test]
    fn another_version_is_refused_but_its_refusal_is_read() {
        let rec = encode(2, &Msg::Hello { pid: 1, draining: vec![], meters: false });
        assert_eq!(decode(&rec, VERSION), Err(WireError::Version(2, VERSION)));
        assert!(
            WireError::Version(2, 1)
                .to_string()
                .starts_with("the other process speaks handover version 2, this one 1")
        );
        let why = Msg::Refuse { reason: "handover version 1, this binary speaks 2".into() };
        assert_eq!(decode(&encode(2, &why), VERSION), Ok(why));
        // A later version's new message is still a version error, not "malformed".
        let mut later = b"egressd-handover 3\n".to_vec();
        later.extend(br#"{"Resume":{"x":1}}"#);
        assert_eq!(decode(&later, VERSION), Err(WireError::Version(3, VERSION)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in [
            &b""[..],
            b"egressd-handover\n{}",
            b"egressd-handover x\n{}",
            b"egressd-handover 1\n",
            b"egressd-handover 1\n{\"Hello\":{\"pid\":-1,\"draining\":[]}}",
            b"hello 1\n{}",
            b"egressd-handover 1{}",
        ] {
            assert!(matches!(decode(bad, VERSION), Err(WireError::Malformed(_))), "{bad:?}");
        }
        let huge = vec![b' '; MAX_RECORD + 1];
        assert!(matches!(decode(&huge, VERSION), Err(WireError::Malformed(_))));
    }
}
