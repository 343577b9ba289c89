//! Zero-downtime upgrades (issue 28): the running egressd starts the new
//! binary with its own arguments and hands it, over a private socket pair
//! (SOCK_SEQPACKET, descriptors by SCM_RIGHTS), the very sockets it serves
//! on and the live state a restart would lose; then it stops accepting and
//! drains. The record format and the exchange are in [`wire`].
//!
//! ```text
//!  egressd upgrade / SIGUSR2 ─► old: check binary ─ spawn(new, same args, EGRESSD_HANDOVER_FD)
//!     old ─ Hello ─► new: config check ─ Ask ─► old: restart-only keys equal?
//!     old ─ Sockets + fds ─► ─ (quota saved, saver stopped) ─ State ─►
//!     new: serves on the same sockets ─ Ready ─► old: stops accepting, drains
//!     (any failure before Ready: the new one is killed, the old serves on)
//! ```
//!
//! The handover socket is inherited, not the public control socket: no
//! other process can ask for the listeners. The kill switch and the
//! intercept rules are never touched: at every moment a socket egressd
//! owns is open, and what no process reads waits in its queue.

mod exchange;
pub mod notify;
pub mod wire;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::warn;
use socket2::{Domain, Socket, Type};

use crate::config::Settings;
use crate::front::FrontSockets;
use crate::quota::{Keeper, Ledger};
use crate::stats::{Counted, Registry};
use crate::sys;
use crate::worker::Moved;
use wire::{Ask, Msg, WireError};

use exchange::Received;
pub use exchange::{Apply, Sink};

/// The environment variable naming the new process's end of the handover socket.
pub const HANDOVER_FD_ENV: &str = "EGRESSD_HANDOVER_FD";
/// Overrides the handover version this binary speaks: for testing that
/// an upgrade between two versions is refused, never for production.
pub const VERSION_ENV: &str = "EGRESSD_HANDOVER_VERSION";
/// How long the new process has to load its config, take the sockets and
/// say it serves.
pub const CONFIRM: Duration = Duration::from_secs(30);
/// Old processes that may be draining at once: each holds its open flows
/// and their memory until they end or `tcp.drain_timeout_secs`; a further
/// upgrade is refused until one has ended.
pub const MAX_DRAINING: usize = 4;
/// How long a drained worker stays for UDP replies and DNS answers still
/// on their way to the sessions it served.
pub const LINGER: Duration = Duration::from_secs(2);

/// The handover version this process speaks.
pub fn version() -> u32 {
    std::env::var(VERSION_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(wire::VERSION)
}

/// What an upgrade tells the one who asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Line(String),
    /// The last word: done, or why not.
    End(Result<(), String>),
    /// Returns once the control thread wrote the last word (the channel
    /// has no room: a send waits for the receiver), before the process ends.
    Sync,
}

/// An upgrade asked over the control socket.
pub struct Request {
    pub binary: Option<PathBuf>,
    /// Report until the old process ends (else until the handover).
    pub wait: bool,
    pub report: Sender<Report>,
}

/// Where the control thread leaves an upgrade request for the main thread
/// (which it then wakes with SIGUSR2, as a service manager would).
#[derive(Default)]
pub struct Desk(Mutex<Option<Request>>);

impl Desk {
    pub fn put(&self, r: Request) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    pub fn take(&self) -> Option<Request> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Refuses a binary that anyone but root could have written: it would run
/// with egressd's privileges and get every listener.
pub fn check_binary(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if m.uid() != 0 {
        return Err(format!("{} is owned by uid {}, not root", path.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}): chmod go-w it",
            path.display(),
            m.mode() & 0o7777
        ));
    }
    if m.mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    Ok(())
}

/// Whether a process still runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The handover socket pair. A SEQPACKET record cannot be larger than its
/// sender's socket buffer (less 32 bytes), 208 KiB by default
/// (`net.core.wmem_default`): a thousand sources' counters are more. So
/// each end's buffer is made to hold a whole record (past `wmem_max`, as
/// CAP_NET_ADMIN allows; else as far as `wmem_max` lets it).
fn link_pair() -> io::Result<(Socket, Socket)> {
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    for s in [&a, &b] {
        let want = wire::MAX_RECORD + (64 << 10);
        if sys::force_send_buffer(s.as_fd(), want).is_err() {
            s.set_send_buffer_size(want)?;
        }
    }
    Ok((a, b))
}

/// How long a send may wait for the other side to read: a peer that stops
/// reading (hung) must not hold this process for ever.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// One end of the handover socket: records in and out, with descriptors.
pub struct Link {
    sock: Socket,
    version: u32,
    buf: Vec<u8>,
    /// The largest record this end can send (see [`link_pair`]).
    max: usize,
}

impl Link {
    fn new(sock: Socket) -> Link {
        let sndbuf = sock.send_buffer_size().unwrap_or(0);
        let max = wire::MAX_RECORD.min(sndbuf.saturating_sub(1024));
        let _ = sock.set_write_timeout(Some(SEND_WAIT));
        Link { sock, version: version(), buf: vec![0; wire::MAX_RECORD + 1], max }
    }

    pub fn send(&self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        let rec = wire::encode(self.version, msg);
        if rec.len() > self.max {
            return Err(format!(
                "handover socket: a record of {} bytes, more than it takes ({} bytes)",
                rec.len(),
                self.max
            ));
        }
        sys::send_with_fds(self.sock.as_fd(), &rec, fds)
            .map(|_| ())
            .map_err(|e| format!("handover socket: {e}"))
    }

    /// Whether `msg` fits one record on this end.
    pub(super) fn fits(&self, msg: &Msg) -> bool {
        wire::encode(self.version, msg).len() <= self.max
    }

    /// The next message and its descriptors, waiting until `deadline`;
    /// `Ok(None)` when the other side closed.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<(Msg, Vec<OwnedFd>)>, String> {
        match self.got(deadline) {
            Got::Msg(m, fds) => Ok(Some((m, fds))),
            Got::Closed => Ok(None),
            Got::TimedOut => Err("timed out".into()),
            Got::Failed(e) => Err(e),
        }
    }

    /// [`Link::recv`], a timeout told apart.
    fn got(&mut self, deadline: Option<Instant>) -> Got {
        let wait =
            deadline.map(|d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        if let Err(e) = self.sock.set_read_timeout(wait) {
            return Got::Failed(e.to_string());
        }
        let mut got = sys::recv_with_fds(self.sock.as_fd(), &mut self.buf);
        // A peer that exits with our record unread resets the socket; the
        // error is said once, and what it sent before (its refusal) is still queued.
        if matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset) {
            got = sys::recv_with_fds(self.sock.as_fd(), &mut self.buf);
        }
        let (n, fds) = match got {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Got::TimedOut;
            }
            Err(e) => return Got::Failed(format!("handover socket: {e}")),
        };
        if n == 0 && fds.is_empty() {
            return Got::Closed;
        }
        let theirs = wire::version_of(&self.buf[..n]);
        match wire::decode(&self.buf[..n], self.version) {
            // A refusal from a process of another version: the versions are the reason.
            Ok(Msg::Refuse { .. }) if theirs.is_some_and(|v| v != self.version) => {
                Got::Failed(WireError::Version(theirs.unwrap_or(0), self.version).to_string())
            }
            Ok(m) => Got::Msg(m, fds),
            Err(e @ WireError::Version(..)) => {
                let _ = self.send(&Msg::Refuse { reason: e.to_string() }, &[]);
                Got::Failed(e.to_string())
            }
            Err(e) => Got::Failed(e.to_string()),
        }
    }
}

/// What [`Link::got`] got.
enum Got {
    Msg(Msg, Vec<OwnedFd>),
    /// The other side closed the link.
    Closed,
    TimedOut,
    Failed(String),
}

/// What the old process hands over.
pub struct Handing<'a> {
    pub settings: &'a Settings,
    /// Per front loop: its TCP listeners, then its UDP sockets.
    pub fronts: Vec<Vec<OwnedFd>>,
    pub control: Option<BorrowedFd<'a>>,
    pub metrics: Option<BorrowedFd<'a>>,
    pub state: wire::State,
    /// The counters as handed over (in `state.counts`), to tell the new
    /// process at the end what the drain added.
    pub counted: Counted,
    pub keeper: &'a Arc<Keeper>,
    /// Older processes still draining.
    pub draining: Vec<u32>,
    /// Stops this process's UDP reading and takes its relaying sessions
    /// out (see [`UdpMove`]).
    pub udp: &'a dyn UdpMove,
}

/// How the old process's UDP sessions leave it.
pub trait UdpMove {
    /// Holds the fronts' UDP reading, then takes every relaying session out
    /// of the workers.
    fn export(&self) -> Result<Vec<Moved>, String>;
    /// A handover that failed: reading again (the sessions taken out are
    /// gone: their clients' next datagrams open new ones).
    fn release(&self);
    /// The workers' per-source buckets that are not full, as they are now.
    fn buckets(&self) -> wire::Buckets;
}

/// A handover the new process confirmed.
pub struct Handed {
    pub pid: u32,
    /// The new process now serves the control socket (so the old one
    /// leaves its file alone at exit).
    pub control: bool,
    link: Option<Link>,
    /// The quota counters as saved at the handover.
    base: Vec<(String, u64)>,
    /// The counters as handed over.
    counted: Counted,
    /// The new process speaks the meter exchange, and the thread that
    /// runs it while this one drains.
    meters: bool,
    sharing: Option<exchange::Sharing>,
}

impl Handed {
    /// As the old process ends: sends what its draining flows added to
    /// the quota counters and to the stats counters since the handover.
    /// The quota bytes are all of them (the meter exchange's reports
    /// were provisional: the new process takes what it was told off).
    pub fn share(&mut self, sink: Sink) {
        let Some(link) = self.link.take().filter(|_| self.meters) else { return };
        match exchange::Sharing::start(link, sink) {
            Ok(s) => self.sharing = Some(s),
            Err((link, e)) => {
                warn!(target: "egressd::upgrade", "cannot share rates and quotas with the new process while draining: {e}");
                self.link = Some(link);
                self.meters = false;
            }
        }
    }

    pub fn finish(mut self, ledger: &Ledger, registry: &Registry) {
        // Quota bytes the new process reported: in this ledger, not this
        // process's to pass on.
        let mut received = Received::new();
        if let Some(s) = self.sharing.take() {
            (self.link, received) = s.stop();
        }
        let Some(link) = self.link else {
            warn!(target: "egressd::upgrade", "the link to the new process is gone: what the drain counted is not passed on");
            return;
        };
        let counts = wire::Counts::of(&registry.counted().since(&self.counted));
        let base: std::collections::HashMap<_, _> = self.base.into_iter().collect();
        let bytes: Vec<(String, u64)> = ledger
            .used_by()
            .into_iter()
            .filter_map(|(name, now)| {
                let before = base.get(&name).copied().unwrap_or(0);
                // A period renewed meanwhile: all of it is new.
                let d = crate::stats::growth(before, now);
                let d = d.saturating_sub(received.get(&name).copied().unwrap_or(0));
                (d > 0).then_some((name, d))
            })
            .collect();
        let mut counts = counts;
        // Within a record: the per-source counts give way (the quietest first).
        counts.trim(|c| link.fits(&Msg::Spent { bytes: bytes.clone(), counts: c.clone() }));
        if let Err(e) = link.send(&Msg::Spent { bytes, counts }, &[]) {
            warn!(target: "egressd::upgrade", "cannot tell the new process what draining flows counted: {e}");
        }
    }
}

/// The old side: starts `binary` and hands over; `say` gets progress lines.
/// On any failure the new process is stopped and this one serves on.
pub fn hand_over(h: &Handing<'_>, binary: &Path, say: &mut dyn FnMut(String)) -> Result<Handed, String> {
    let still: Vec<u32> = h.draining.iter().copied().filter(|&p| alive(p)).collect();
    if still.len() >= MAX_DRAINING {
        return Err(format!(
            "{} older processes still drain their flows (PIDs {still:?}; at most {MAX_DRAINING}): wait for one \
             to end (tcp.drain_timeout_secs) or stop one with kill",
            still.len()
        ));
    }
    check_binary(binary)?;
    let (mine, theirs) = link_pair().map_err(|e| format!("cannot make the handover socket: {e}"))?;
    let mut child = spawn(binary, &theirs)?;
    drop(theirs);
    let pid = child.id();
    say(format!("started {} as PID {pid}", binary.display()));
    let mut link = Link::new(mine);
    match exchange(h, &mut link, pid, &still, say) {
        Ok((base, meters)) => Ok(Handed {
            pid,
            control: h.control.is_some(),
            link: Some(link),
            base,
            counted: h.counted.clone(),
            meters,
            sharing: None,
        }),
        Err(why) => {
            let why = match ended(&mut child) {
                // It ended on its own, before or without saying why: its status is the news.
                Some(status) if why.starts_with("handover socket") || why.contains("ended before") => {
                    format!(
                        "the new process (PID {pid}) exited with {} before the handover (see its log)",
                        code(status)
                    )
                }
                Some(status) => format!("{why}; the new process (PID {pid}) exited with {}", code(status)),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    format!("{why}; the new process (PID {pid}) was stopped")
                }
            };
            if h.keeper.handed() {
                h.keeper.resume();
            }
            h.udp.release();
            Err(why)
        }
    }
}

/// An exit status in words.
fn code(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => s.to_string(),
    }
}

/// The child's exit status, if it ends within a moment.
fn ended(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the new binary with this process's arguments and its end of the
/// handover socket (inherited: the only descriptor that is).
fn spawn(binary: &Path, theirs: &Socket) -> Result<Child, String> {
    sys::set_inheritable(theirs.as_fd(), true).map_err(|e| format!("handover socket: {e}"))?;
    let child = Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_FD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()));
    let _ = sys::set_inheritable(theirs.as_fd(), false);
    child
}

/// The old side's part of the exchange, up to Ready; the quota counters as
/// handed over.
fn exchange(
    h: &Handing<'_>,
    link: &mut Link,
    pid: u32,
    still: &[u32],
    say: &mut dyn FnMut(String),
) -> Result<(Vec<(String, u64)>, bool), String> {
    let deadline = Some(Instant::now() + CONFIRM);
    let hello = Msg::Hello { pid: std::process::id(), draining: still.to_vec(), meters: true };
    if let Err(e) = link.send(&hello, &[]) {
        // It may have said why before it went (a bad config): that is the news.
        return Err(match link.recv(Some(Instant::now() + Duration::from_millis(200))) {
            Ok(Some((Msg::Refuse { reason }, _))) => format!("the new process refused: {reason}"),
            _ => e,
        });
    }
    let ask = match expect(link, deadline, "its config check")? {
        Msg::Ask(a) => a,
        other => return Err(format!("unexpected {}", name(&other))),
    };
    if let Err(why) = restart_only(h.settings, &ask) {
        let _ = link.send(&Msg::Refuse { reason: why.clone() }, &[]);
        return Err(why);
    }
    let control = h.control.filter(|_| ask.control_socket == h.settings.control.socket.display().to_string());
    let metrics = h.metrics.filter(|_| ask.metrics_listen == h.settings.control.metrics_listen);
    let mut fds: Vec<BorrowedFd<'_>> = h.fronts.iter().flatten().map(|f| f.as_fd()).collect();
    fds.extend(control);
    fds.extend(metrics);
    if fds.len() > sys::MAX_FDS_PER_MSG {
        let why = format!("{} sockets to hand over, more than {} at once", fds.len(), sys::MAX_FDS_PER_MSG);
        let _ = link.send(&Msg::Refuse { reason: why.clone() }, &[]);
        return Err(why);
    }
    let per_front = h.fronts.first().map_or(0, Vec::len);
    let sockets = Msg::Sockets {
        fronts: h.fronts.len(),
        per_front,
        control: control.is_some(),
        metrics: metrics.is_some(),
    };
    link.send(&sockets, &fds)?;
    // From here the new process may load the quota state: this one's last save.
    let base = h.keeper.hand_over()?;
    let mut state = wire::State { buckets: h.udp.buckets(), ..h.state.clone() };
    if let Some(left_out) = state.fit(|s| link.fits(&Msg::State(s.clone()))) {
        warn!(target: "egressd::upgrade", "{left_out}");
    }
    let carried = (state.counts.sources.len(), state.buckets.tcp.len() + state.buckets.udp.len());
    link.send(&Msg::State(state), &[])?;
    let moved = send_sessions(link, h.udp.export()?)?;
    match expect(link, deadline, "its confirmation")? {
        Msg::Ready { pid: p } if p == pid => {}
        other => return Err(format!("unexpected {}", name(&other))),
    }
    say(format!(
        "handed over: {} TCP listeners, {} UDP sockets{}{}, {moved} UDP sessions, {} route set routes, {} label \
         routes, quota counters ({}), stats counters ({} sources), spent token buckets ({}) to new process {pid}{}",
        h.fronts.len() * per_front / 2,
        h.fronts.len() * per_front / 2,
        if control.is_some() { ", the control socket" } else { "" },
        if metrics.is_some() { ", the metrics listener" } else { "" },
        h.state.routes.len(),
        h.state.labels.len(),
        base.len(),
        carried.0,
        carried.1,
        if ask.meters { "; the two share rates and quotas while this one drains" } else { "" },
    ));
    Ok((base, ask.meters))
}

/// Most sessions per record: two descriptors each, within SCM_MAX_FD.
const SESSIONS_PER_RECORD: usize = sys::MAX_FDS_PER_MSG / 2;

/// Sends the sessions in records of [`SESSIONS_PER_RECORD`], the last one
/// marked (an empty one when there are none); how many.
fn send_sessions(link: &Link, moved: Vec<Moved>) -> Result<usize, String> {
    let n = moved.len();
    let mut chunks = moved.chunks(SESSIONS_PER_RECORD).peekable();
    if chunks.peek().is_none() {
        return link.send(&Msg::Sessions { sessions: Vec::new(), last: true }, &[]).map(|()| 0);
    }
    while let Some(chunk) = chunks.next() {
        let sessions = chunk
            .iter()
            .map(|m| wire::Session {
                client: m.client,
                dns_only: m.dns_only,
                tunnel: m.tunnel.clone(),
                relay: m.ctrl.is_some(),
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = chunk
            .iter()
            .flat_map(|m| m.ctrl.iter().chain(std::iter::once(&m.data)))
            .map(AsFd::as_fd)
            .collect();
        link.send(&Msg::Sessions { sessions, last: chunks.peek().is_none() }, &fds)?;
    }
    Ok(n)
}

/// The next message, a refusal or the end turned into the reason.
fn expect(link: &mut Link, deadline: Option<Instant>, what: &str) -> Result<Msg, String> {
    match link.recv(deadline) {
        Ok(Some((Msg::Refuse { reason }, _))) => Err(format!("the new process refused: {reason}")),
        Ok(Some((m, _))) => Ok(m),
        Ok(None) => Err(format!("the new process ended before {what}")),
        Err(e) if e == "timed out" => {
            Err(format!("no answer from the new process within {CONFIRM:?} ({what})"))
        }
        Err(e) => Err(e),
    }
}

fn name(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "Hello",
        Msg::Ask(_) => "Ask",
        Msg::Refuse { .. } => "Refuse",
        Msg::Sockets { .. } => "Sockets",
        Msg::State(_) => "State",
        Msg::Ready { .. } => "Ready",
        Msg::Spent { .. } => "Spent",
        Msg::Used(_) => "Used",
        Msg::Sessions { .. } => "Sessions",
    }
}

/// The keys only a restart changes that an upgrade cannot either: the
/// listeners are handed over as they are (so `listen` and `threads`, which
/// shape the SO_REUSEPORT groups, stay), and one `state_dir` keeps its
/// one writer. A new `control.socket` or `metrics_listen` is applied: the
/// new process opens it and the old one's is closed.
pub fn restart_only(cur: &Settings, ask: &Ask) -> Result<(), String> {
    let mut changed = Vec::new();
    if cur.listen != ask.listen {
        changed.push("listen");
    }
    if cur.threads != ask.threads {
        changed.push("threads");
    }
    if cur.state_dir.display().to_string() != ask.state_dir {
        changed.push("state_dir");
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} changed in the config: an upgrade hands over the running listeners and state as they are; apply \
         this with a restart",
        changed.join(", ")
    ))
}

/// What the new process received.
pub struct Taken {
    pub fronts: Vec<FrontSockets>,
    pub control: Option<std::os::unix::net::UnixListener>,
    pub metrics: Option<std::net::TcpListener>,
    pub state: wire::State,
    /// The old process's relaying UDP sessions.
    pub sessions: Vec<Moved>,
    /// The process it replaces, and those still draining before it.
    pub old: u32,
    pub draining: Vec<u32>,
    /// Both speak the meter exchange.
    pub meters: bool,
}

/// The new side: the link to the process being replaced.
pub struct Inherited {
    link: Link,
}

impl Inherited {
    /// The handover socket named by [`HANDOVER_FD_ENV`], when this process
    /// was started by an upgrade.
    pub fn from_env() -> Option<Result<Inherited, String>> {
        let v = std::env::var(HANDOVER_FD_ENV).ok()?;
        Some(take_fd(&v).map(|sock| Inherited { link: Link::new(sock) }))
    }

    /// Tells the old process why this one will not serve.
    pub fn refuse(&self, reason: &str) {
        let _ = self.link.send(&Msg::Refuse { reason: reason.to_string() }, &[]);
    }

    /// Everything up to serving: the sockets and state, checked against
    /// `settings`.
    pub fn receive(&mut self, settings: &Settings) -> Result<Taken, String> {
        let deadline = Some(Instant::now() + CONFIRM);
        let (old, draining, meters) = match self.next(deadline)? {
            (Msg::Hello { pid, draining, meters }, _) => (pid, draining, meters),
            (other, _) => return Err(format!("unexpected {} from the old process", name(&other))),
        };
        let ask = Ask {
            pid: std::process::id(),
            listen: settings.listen.clone(),
            threads: settings.threads,
            state_dir: settings.state_dir.display().to_string(),
            control_socket: settings.control.socket.display().to_string(),
            metrics_listen: settings.control.metrics_listen,
            meters,
        };
        self.link.send(&Msg::Ask(ask), &[])?;
        let (fronts, per_front, control, metrics, fds) = match self.next(deadline)? {
            (Msg::Sockets { fronts, per_front, control, metrics }, fds) => {
                (fronts, per_front, control, metrics, fds)
            }
            (other, _) => return Err(format!("unexpected {} from the old process", name(&other))),
        };
        let taken =
            split(fds, (fronts, per_front, control, metrics), settings).inspect_err(|e| self.refuse(e))?;
        let state = match self.next(deadline)? {
            (Msg::State(s), _) => s,
            (other, _) => return Err(format!("unexpected {} from the old process", name(&other))),
        };
        let mut sessions = Vec::new();
        loop {
            let (rows, last, fds) = match self.next(deadline)? {
                (Msg::Sessions { sessions, last }, fds) => (sessions, last, fds),
                (other, _) => return Err(format!("unexpected {} from the old process", name(&other))),
            };
            if fds.len() != rows.iter().map(wire::Session::fds).sum::<usize>() {
                let why = format!("{} descriptors for {} UDP sessions", fds.len(), rows.len());
                self.refuse(&why);
                return Err(why);
            }
            let mut fds = fds.into_iter();
            for r in rows {
                let ctrl = if r.relay { fds.next() } else { None };
                let Some(data) = fds.next() else { break };
                sessions.push(Moved { client: r.client, dns_only: r.dns_only, tunnel: r.tunnel, ctrl, data });
            }
            if last {
                break;
            }
        }
        let mut draining: Vec<u32> = draining.into_iter().filter(|&p| alive(p)).collect();
        draining.push(old);
        Ok(Taken { state, old, draining, sessions, meters, ..taken })
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<(Msg, Vec<OwnedFd>), String> {
        match self.link.recv(deadline) {
            Ok(Some((Msg::Refuse { reason }, _))) => Err(format!("the old process refused: {reason}")),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the old process closed the handover".into()),
            Err(e) => Err(format!("handover: {e}")),
        }
    }

    /// Serving: tells the old process, then (on a thread of its own)
    /// shares rates and quotas with it while it drains (`meters`: both
    /// speak it), adds what its drain counted to `sink` and logs its end.
    /// The thread ends with the old process: a process that is itself
    /// handed over waits for it before it reports its own counts on (so
    /// bytes drained by the oldest of several reach the one serving).
    pub fn ready(self, old: u32, meters: bool, sink: Sink) -> Result<std::thread::JoinHandle<()>, String> {
        self.link.send(&Msg::Ready { pid: std::process::id() }, &[])?;
        exchange::successor(self.link, old, meters, sink)
    }
}

/// The descriptor number in `v`, taken over (checked to be a socket of ours).
fn take_fd(v: &str) -> Result<Socket, String> {
    let fd: i32 = v.parse().map_err(|_| format!("{HANDOVER_FD_ENV}={v:?} is not a descriptor number"))?;
    if fd < 3 || !Path::new(&format!("/proc/self/fd/{fd}")).exists() {
        return Err(format!("{HANDOVER_FD_ENV}={fd} is not an open descriptor"));
    }
    let owned = sys::adopt_fd(fd).map_err(|e| format!("{HANDOVER_FD_ENV}={fd}: {e}"))?;
    let _ = sys::set_inheritable(owned.as_fd(), false);
    Ok(Socket::from(owned))
}

/// The received descriptors in their places.
fn split(
    fds: Vec<OwnedFd>,
    (fronts, per_front, control, metrics): (usize, usize, bool, bool),
    settings: &Settings,
) -> Result<Taken, String> {
    let want = fronts * per_front + usize::from(control) + usize::from(metrics);
    if fds.len() != want || fronts != settings.threads || per_front != 2 * settings.listen.len() {
        return Err(format!(
            "{} descriptors received for {fronts} fronts of {per_front}{}{}: not what this config serves",
            fds.len(),
            if control { " and the control socket" } else { "" },
            if metrics { " and the metrics listener" } else { "" }
        ));
    }
    let mut it = fds.into_iter();
    let mut out = Vec::new();
    for _ in 0..fronts {
        let mine: Vec<OwnedFd> = it.by_ref().take(per_front).collect();
        out.push(FrontSockets::from_fds(mine, &settings.listen).map_err(|e| e.to_string())?);
    }
    let control = control.then(|| std::os::unix::net::UnixListener::from(it.next().expect("counted")));
    let metrics = metrics.then(|| std::net::TcpListener::from(it.next().expect("counted")));
    Ok(Taken {
        fronts: out,
        control,
        metrics,
        state: wire::State::default(),
        sessions: Vec::new(),
        old: 0,
        draining: Vec::new(),
        meters: false,
    })
}

#[cfg(test)]
mod tests;
