//! The thread that follows the Docker Engine API over its Unix socket and
//! keeps the label routes equal to the labelled containers Docker lists.
//!
//! ```text
//!        ┌─ session ─────────────────────────────────────────────────┐
//!  ┌───► │ GET /events?since=T-1s ─► its head ─► list ─► follow:     │
//!  │     │   an event naming a container ─► inspect that one         │
//!  │     │   a destroy ─► its routes go (no request)                 │
//!  │     │   an event naming none, a burst ─► list (timer re-armed)  │
//!  │     │   30 s without a list (the read times out) ─► list:       │
//!  │     │     it changed a route no event announced ─► end: Missed ─┼─► at once ───┐
//!  │     │   a step past its deadline, EOF, bad bytes ─► end: Failed ┼─► one list, ─┤
//!  │     └───────────────────────────────────────────────────────────┘   backoff    │
//!  │                                                                     0.2–5 s    │
//!  └────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Why each step:
//! - The stream's head before the list: a list taken while the events
//!   request is still on its way misses an event that falls in between.
//!   dockerd flushes the head just *before* it subscribes the stream (moby
//!   `getEvents`), so the request also asks for the events `since` a second
//!   before it was sent: dockerd replays them from its event log, and the
//!   gap is closed. A replayed event costs one more list, nothing else.
//! - A read timeout equal to the resync period, and on timeout a list while
//!   the stream is kept: dockerd sends nothing at all on an idle stream, so
//!   silence says nothing about the stream; re-subscribing every 30 s would
//!   be churn. The list is the probe: it goes over a connection of its own
//!   with its own deadline (`io`), so a dockerd that hangs ends the session
//!   there, and the next sessions keep trying with backoff. A list the timer
//!   made that changed a route shows the stream lost or withheld an event:
//!   the session reconnects at once (a fresh stream), logging why.
//! - An event costs one question about the container it names, not a list:
//!   with a thousand containers a list is half a megabyte of JSON or more,
//!   and ten starts a second would list ten times a second. The inspect answer stands for
//!   that container alone (running with the label: its addresses; stopped,
//!   unlabelled or 404: none) in `model::Known`, and the routes are synced
//!   against all of them as after a list, so the flows reset are the same
//!   either way. A destroy needs no question; an event that names no usable
//!   container, or more than `model::MAX_DUE` in one read, asks for a list.
//! - Only a list re-arms the timer (an inspect covers one container): the
//!   routes are never older than one resync period plus one list's round
//!   trip, whatever happens to the stream and however busy it is
//!   (`Timing::resync`; README "Containers choose their exit by label" says
//!   what that window means).
//! - A session that fails is followed by one list on its own: a dockerd
//!   whose event stream hangs (even the head of a new one) but which still
//!   answers lists keeps the routes current, one list per attempt.
//! - Docker unreachable or hung: the label routes stay as they are (a
//!   dockerd restart must not cut every labelled container off).
//!
//! [`Docker`] is what `run` holds: it starts the follower and, on SIGHUP,
//! restarts it when `docker:` changed (the old thread is stopped and joined
//! first, so only one follower ever writes the label routes).

use std::net::IpAddr;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

pub use super::conn::list;
use super::conn::{self, Got};
use super::model::{self, Container, EventLines, Known, Look, Warned};
use crate::config::{DockerSettings, Settings};
use crate::route::Cidr;
use crate::snapshot::{Labels, Live};
use crate::stats::{Counters, Registry};
use crate::worker::{WorkerHandle, reset_everywhere};

/// The follower's clocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// The longest time between two full lists.
    pub resync: Duration,
    /// The deadline of each connect, events head, whole list and inspect.
    pub io: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

pub(super) const TIMING: Timing = Timing {
    resync: Duration::from_secs(30),
    io: Duration::from_secs(10),
    backoff_min: Duration::from_millis(200),
    backoff_max: Duration::from_secs(5),
};

/// How far before the events request its `since` lies.
const SINCE_MARGIN: Duration = Duration::from_secs(1);
const EVENT_FILTERS: &str = r#"{"type":["container","network"]}"#;
/// How long a reset waits for room on a worker's command queue.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// What a list did to the routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Same,
    Changed,
}

/// Where the follower's containers go: the live label routes (or a test's log).
pub(super) trait Sink: Send + 'static {
    /// All the labelled running containers known now (after a list, or an
    /// inspect that changed one of them).
    fn apply(&mut self, containers: &[Container]) -> Applied;
    /// For the log when Docker goes away.
    fn routes(&self) -> usize;
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// A list the timer made changed a route no event announced.
    Missed,
    Failed(String),
}

/// Ends a follower from another thread: wakes its backoff sleep and shuts
/// its sockets down (a read waiting for up to a resync period returns).
#[derive(Default)]
pub(super) struct Stop {
    state: Mutex<Watched>,
    woken: Condvar,
}

#[derive(Default)]
struct Watched {
    stopped: bool,
    next: u64,
    streams: Vec<(u64, UnixStream)>,
}

/// A socket that a [`Stop`] shuts down; forgotten when dropped (with its
/// connection).
pub(super) struct Watch {
    stop: Arc<Stop>,
    key: u64,
}

impl Stop {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `s`; refused once stopped, so no socket opened after the
    /// stop can block the thread.
    pub fn watch(self: &Arc<Self>, s: &UnixStream) -> Result<Watch, String> {
        let clone = s.try_clone().map_err(|e| format!("docker socket: {e}"))?;
        let mut w = self.lock();
        if w.stopped {
            return Err("stopped".into());
        }
        w.next += 1;
        let key = w.next;
        w.streams.push((key, clone));
        Ok(Watch { stop: Arc::clone(self), key })
    }

    pub fn stop(&self) {
        let mut w = self.lock();
        w.stopped = true;
        for (_, s) in &w.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.woken.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Sleeps for `d` unless stopped meanwhile; whether it was stopped.
    fn sleep(&self, d: Duration) -> bool {
        let w = self.lock();
        let (w, _) = self.woken.wait_timeout_while(w, d, |w| !w.stopped).unwrap_or_else(|e| e.into_inner());
        w.stopped
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.lock().streams.retain(|(k, _)| *k != self.key);
    }
}

/// A follower thread and the means to end it.
pub(super) struct Running {
    d: DockerSettings,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the thread and waits for it (bounded: every socket it can
    /// block on is shut down; a reset in progress takes at most `RESET_WAIT`
    /// per worker).
    pub fn end(mut self) -> DockerSettings {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.d.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Starts a follower of `d` feeding `sink`.
pub(super) fn start<S: Sink>(d: DockerSettings, timing: Timing, sink: S) -> std::io::Result<Running> {
    let stop = Arc::new(Stop::default());
    let mut f = Follow {
        d: d.clone(),
        timing,
        sink,
        stop: Arc::clone(&stop),
        ever: false,
        warn_log: Default::default(),
        known: Known::default(),
    };
    let thread = std::thread::Builder::new().name("egressd-docker".into()).spawn(move || f.run())?;
    Ok(Running { d, stop, thread: Some(thread) })
}

struct Follow<S: Sink> {
    d: DockerSettings,
    timing: Timing,
    sink: S,
    stop: Arc<Stop>,
    /// A session has listed at least once.
    ever: bool,
    /// When each kind of end (missed event, lost stream, no dockerd) was
    /// last logged at warn: one kind never silences another.
    warn_log: [crate::lograte::Every; 3],
    /// The labelled running containers, as the last list and the inspects
    /// since have left them.
    known: Known,
}

impl<S: Sink> Follow<S> {
    fn run(&mut self) {
        let t = self.timing;
        let mut backoff = t.backoff_min;
        loop {
            let started = Instant::now();
            let end = self.session().unwrap_or_else(End::Failed);
            if self.stop.stopped() {
                return;
            }
            self.say(&end);
            if let End::Failed(_) = end {
                // A dockerd whose event stream fails or hangs may still
                // answer a list: the routes keep up with it meanwhile.
                if let Err(e) = self.resync() {
                    debug!(target: "egressd::docker", "docker: list between sessions: {e}");
                }
            }
            if started.elapsed() > t.backoff_max || matches!(end, End::Missed) {
                backoff = t.backoff_min;
            }
            if self.stop.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(t.backoff_max);
        }
    }

    /// Logs how a session ended: a warning at most once a minute.
    fn say(&mut self, end: &End) {
        let (kind, text) = match end {
            End::Missed => (
                0,
                format!(
                    "docker: a periodic resync found a change no event announced (events lost or held back); \
                 reconnecting the event stream of {}",
                    self.d.socket.display()
                ),
            ),
            End::Failed(e) if self.ever => {
                (1, format!("docker: {e}; keeping the {} label routes, reconnecting", self.sink.routes()))
            }
            End::Failed(e) => (
                2,
                format!(
                    "docker: {e}; running with the config routes only until {} answers",
                    self.d.socket.display()
                ),
            ),
        };
        if let Some(n) = self.warn_log[kind].due(Instant::now()) {
            warn!(target: "egressd::docker", "{text}{}", crate::lograte::more(n));
        } else {
            debug!(target: "egressd::docker", "{text}");
        }
    }

    /// One connection's life; returns how it ended.
    fn session(&mut self) -> Result<End, String> {
        let t = self.timing;
        let since =
            SystemTime::now().checked_sub(SINCE_MARGIN).and_then(|s| s.duration_since(UNIX_EPOCH).ok());
        let since = since.unwrap_or_default();
        let path = format!(
            "/events?since={}.{:09}&filters={}",
            since.as_secs(),
            since.subsec_nanos(),
            conn::encode(EVENT_FILTERS)
        );
        let mut events = conn::get(&self.d.socket, &path, Instant::now() + t.io, Some(&self.stop))?;
        let mut lines = EventLines::default();
        // What came with the head happened before the list below: the
        // list covers it (the lines still count for the framing).
        let early = events.read_head(Instant::now() + t.io)?;
        lines.feed(&early)?;
        self.resync()?;
        if !self.ever {
            info!(target: "egressd::docker", "docker: following {} (label {})", self.d.socket.display(), self.d.label);
        }
        self.ever = true;
        let mut next = Instant::now() + t.resync;
        let mut out = Vec::new();
        loop {
            match events.read(next, &mut out)? {
                Got::Closed => return Err("the event stream ended (dockerd restarting?)".into()),
                Got::Data => {
                    let due = lines.feed(&out)?;
                    out.clear();
                    if due.all {
                        self.resync()?;
                        next = Instant::now() + t.resync;
                    } else {
                        self.inspect(&due.each)?;
                    }
                    if events.body_done() {
                        return Err("the event stream ended".into());
                    }
                }
                Got::TimedOut => {
                    debug!(target: "egressd::docker", "docker: periodic resync");
                    if self.resync()? == Applied::Changed {
                        return Ok(End::Missed);
                    }
                    next = Instant::now() + t.resync;
                }
            }
        }
    }

    /// Lists the labelled containers (by its own deadline) and makes the
    /// label routes match.
    fn resync(&mut self) -> Result<Applied, String> {
        let containers = conn::list_by(&self.d, Instant::now() + self.timing.io, Some(&self.stop))?;
        if self.stop.stopped() {
            return Err("stopped".into());
        }
        self.known.replace(containers);
        Ok(self.sink.apply(self.known.containers()))
    }

    /// Asks Docker about each container events named (each by its own
    /// deadline; a destroyed one needs no question), and makes the label
    /// routes match as each answers.
    fn inspect(&mut self, each: &[(String, Look)]) -> Result<(), String> {
        for (id, look) in each {
            let now = match look {
                Look::Gone => None,
                Look::Inspect => {
                    conn::inspect(&self.d, id, Instant::now() + self.timing.io, Some(&self.stop))?
                }
            };
            if self.stop.stopped() {
                return Err("stopped".into());
            }
            if self.known.set(id, now) {
                self.sink.apply(self.known.containers());
            }
        }
        Ok(())
    }
}

/// The label routes in the live snapshot, with the flows of changed
/// addresses reset on the workers.
pub(super) struct LiveSink {
    pub label: String,
    pub class_label: String,
    pub live: Arc<Live>,
    pub workers: Vec<WorkerHandle>,
    pub counters: Arc<Counters>,
    pub warned: Warned,
    /// The same for class labels naming no class.
    pub warned_class: Warned,
}

impl LiveSink {
    /// Logs and counts, once per container, the labels that name no tunnel
    /// or no class of the config: those containers are rejected.
    fn warn_unknown(&mut self, settings: &Settings, containers: &[Container]) {
        let unknown = containers
            .iter()
            .filter(|c| settings.tunnel_id(&c.tunnel).is_none())
            .map(|c| (c.id.as_str(), c.tunnel.as_str()));
        let name = |id: &str| containers.iter().find(|c| c.id == id).map_or("", |c| c.name.as_str());
        for (id, tunnel) in self.warned.sync(unknown) {
            Counters::inc(&self.counters.docker_unknown_tunnel);
            warn!(target: "egressd::docker",
                "container {} ({}): label {}={tunnel:?} names no tunnel of the config; it is rejected (never sent through another tunnel)",
                name(&id), id.get(..12).unwrap_or(&id), self.label);
        }
        let unknown_class = containers.iter().filter_map(|c| {
            let class = c.class.as_deref()?;
            settings.class_id(class).is_none().then_some((c.id.as_str(), class))
        });
        for (id, class) in self.warned_class.sync(unknown_class) {
            Counters::inc(&self.counters.docker_unknown_class);
            warn!(target: "egressd::docker",
                "container {} ({}): label {}={class:?} names no class of the config; it is rejected (never sent uncapped or in another class)",
                name(&id), id.get(..12).unwrap_or(&id), self.class_label);
        }
    }
}

impl Sink for LiveSink {
    fn apply(&mut self, containers: &[Container]) -> Applied {
        let shared = self.live.load();
        let current: Vec<model::LabelRoute> = shared.labels.routes().cloned().collect();
        let sync = model::sync(&current, containers);
        self.warn_unknown(&shared.settings, containers);
        if sync.added.is_empty() && sync.reset.is_empty() {
            return Applied::Same;
        }
        let _ = self
            .live
            .update(|cur| Ok::<_, ()>(cur.with_labels(Labels::new(sync.routes.clone(), &cur.settings))));
        for r in &sync.added {
            let class = r.class.as_deref().map(|c| format!(", class {c}")).unwrap_or_default();
            info!(target: "egressd::docker", "route {} -> {}{class} (container {}, {})", r.addr, r.tunnel, r.name, r.short_id());
        }
        for &addr in &sync.reset {
            info!(target: "egressd::docker", "route {addr} removed or changed: its flows are reset");
            reset(&self.workers, addr);
        }
        Counters::set(&self.counters.docker_label_routes, sync.routes.len() as u64);
        Applied::Changed
    }

    fn routes(&self) -> usize {
        self.live.load().labels.routes().count()
    }
}

/// Ends the address's flows on every worker, on their command queues
/// (never dropped behind a full hand-off queue), and returns once each has
/// done it: a later owner of the address must never inherit them.
fn reset(workers: &[WorkerHandle], addr: IpAddr) {
    let source = Cidr::host(addr);
    let missed = reset_everywhere(workers, source, RESET_WAIT);
    if missed > 0 {
        warn!(target: "egressd::docker", "route {addr}: {missed} worker(s) did not do the reset within {RESET_WAIT:?}");
    }
}

/// The Docker follower as `run` keeps it across reloads.
pub struct Docker {
    live: Arc<Live>,
    workers: Vec<WorkerHandle>,
    registry: Arc<Registry>,
    /// One counter block for every follower this process runs.
    counters: Option<Arc<Counters>>,
    running: Option<Running>,
}

impl Docker {
    pub fn new(live: Arc<Live>, workers: Vec<WorkerHandle>, registry: Arc<Registry>) -> Docker {
        Docker { live, workers, registry, counters: None, running: None }
    }

    /// Starts, restarts or stops the follower to match `want` (the
    /// config's `docker:`). Returns what changed, for the reload's log.
    ///
    /// A new label: the old label's routes go at once (their flows reset),
    /// whether or not the new socket answers; the follower then adds the
    /// new label's. A new socket with the same label: the routes stay until
    /// it answers, as when dockerd restarts. No `docker:` any more: the
    /// label routes go.
    pub fn apply(&mut self, want: Option<&DockerSettings>) -> Result<Option<String>, String> {
        if self.running.as_ref().map(|r| &r.d) == want {
            return Ok(None);
        }
        let old = self.running.take().map(Running::end);
        let cleared = match (&old, want) {
            (Some(o), Some(n)) if o.label != n.label => self.clear_routes(),
            (Some(_), None) => self.clear_routes(),
            _ => 0,
        };
        let Some(d) = want else {
            return Ok(Some(format!(
                "docker: no longer followed; its {cleared} label routes removed and their flows reset"
            )));
        };
        let counters = Arc::clone(self.counters.get_or_insert_with(|| self.registry.thread()));
        let sink = LiveSink {
            label: d.label.clone(),
            class_label: d.class_label.clone(),
            live: Arc::clone(&self.live),
            workers: self.workers.clone(),
            counters,
            warned: Warned::default(),
            warned_class: Warned::default(),
        };
        let r = start(d.clone(), TIMING, sink)
            .map_err(|e| format!("cannot follow Docker at {}: {e}", d.socket.display()))?;
        self.running = Some(r);
        let what = format!("{} (label {})", d.socket.display(), d.label);
        Ok(Some(match old {
            None => format!("docker: now following {what}"),
            Some(o) if o.label != d.label => format!(
                "docker: following {what}; the {cleared} routes of label {} removed and their flows reset",
                o.label
            ),
            Some(_) => format!("docker: following {what}; the label routes stay until it answers"),
        }))
    }

    /// Removes every label route, resetting its flows; how many there were.
    fn clear_routes(&self) -> usize {
        let old: Vec<IpAddr> = self.live.load().labels.routes().map(|r| r.addr).collect();
        let _ = self.live.update(|cur| Ok::<_, ()>(cur.with_labels(Labels::default())));
        for &addr in &old {
            reset(&self.workers, addr);
        }
        if let Some(c) = &self.counters {
            Counters::set(&c.docker_label_routes, 0);
        }
        old.len()
    }
}
