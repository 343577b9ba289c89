//! FrontLoop: one per core. Accepts the containers' redirected connections,
//! finds each one's original destination and route, and hands it to the
//! worker picked by the client's source address.
//!
//! Each front loop has its own SO_REUSEPORT listener per listen address (the
//! kernel spreads connections across them) and its own `mio::Poll`.
//! Listeners are IP_TRANSPARENT so TPROXY'd TCP arrives as well as
//! REDIRECTed TCP; the two are told apart per connection:
//!
//! ```text
//!   accepted socket's local address != listener's  → TPROXY:   orig_dst = local address
//!   equal                                          → REDIRECT: orig_dst = SO_ORIGINAL_DST
//!   orig_dst is one of our listeners (or unknown)  → closed (loop guard)
//! ```
//!
//! With `intercept.tcp: Redirect` (the default) conntrack is asked first, so
//! a REDIRECTed connection costs one syscall (getsockopt) instead of two: for
//! a TPROXY'd connection conntrack's original destination is the untouched
//! one, which is the local address, and without a conntrack entry (TPROXY,
//! no conntrack) the local address is read as above.

mod steer;
mod udp;

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, SockRef, Socket, Type};

use crate::config::{Settings, TcpIntercept};
use crate::snapshot::{Live, Shared};
use crate::stats::Counters;
use crate::wire::sockaddr::unmapped;
use crate::worker::{Handoff, TcpHandoff, WorkerHandle, reset};

/// How long accepting pauses when the process is out of file descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);
/// Tokens from here on name UDP sockets; below, TCP listeners.
const UDP_TOKEN: usize = 1 << 16;
/// The stop wake-up (a front loop sleeps until an event, however long).
const WAKER: Token = Token(usize::MAX);

/// Holds every front loop's UDP reading (an upgrade: while sessions move
/// between processes nobody reads, and datagrams wait in the sockets'
/// queues). Each front says when it has seen the hold.
#[derive(Debug, Default)]
pub struct UdpHold {
    on: AtomicBool,
    seen: std::sync::atomic::AtomicUsize,
}

impl UdpHold {
    /// Holds from the start (the new process of an upgrade).
    pub fn held() -> UdpHold {
        UdpHold { on: AtomicBool::new(true), seen: Default::default() }
    }

    /// Holds, wakes the fronts and waits (up to `wait`) until all `n` have
    /// finished what they were reading; whether they all did.
    pub fn hold(&self, wakers: &[Arc<mio::Waker>], wait: Duration) -> bool {
        self.seen.store(0, Ordering::SeqCst);
        self.on.store(true, Ordering::SeqCst);
        for w in wakers {
            let _ = w.wake();
        }
        let until = Instant::now() + wait;
        while self.seen.load(Ordering::SeqCst) < wakers.len() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Reading again: what queued meanwhile is read at once.
    pub fn release(&self, wakers: &[Arc<mio::Waker>]) {
        self.on.store(false, Ordering::SeqCst);
        for w in wakers {
            let _ = w.wake();
        }
    }
}

pub struct FrontLoop {
    id: usize,
    /// UDP reading held (see [`UdpHold`]), and whether this loop holds now.
    hold: Arc<UdpHold>,
    holding: bool,
    poll: Poll,
    listeners: Vec<(TcpListener, SocketAddr)>,
    udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
    slots: Vec<crate::sys::RecvSlot>,
    rdata: Box<[u8]>,
    /// The UDP batch being filled for each worker.
    batches: Vec<Option<Box<crate::worker::UdpBatch>>>,
    workers: Vec<WorkerHandle>,
    live: Arc<Live>,
    seen: u64,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    paused_until: Option<Instant>,
    /// The accept-pause warning, once a minute at most.
    pause_warned: crate::lograte::Every,
    /// The full-queue warning, once a minute at most.
    queue_warned: crate::lograte::Every,
    /// Woken to stop (see [`FrontLoop::waker`]).
    waker: Arc<mio::Waker>,
}

/// A listening socket for `addr`, as every front loop opens it (`fronts`
/// of them: the kernel hands each source's connections to the front loop
/// that serves it, see `steer`).
pub fn tcp_listener(addr: SocketAddr, fronts: usize) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit keepalive: no setsockopt per connection.
    crate::worker::keepalive(&SockRef::from(&s))?;
    // Urgent (MSG_OOB) bytes stay in the stream, so the relay passes them on
    // as data instead of losing them; accepted sockets inherit it.
    s.set_out_of_band_inline(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Without CAP_NET_ADMIN this fails; REDIRECT still works, TPROXY won't.
    let transparent =
        if addr.is_ipv4() { s.set_ip_transparent_v4(true) } else { s.set_ip_transparent_v6(true) };
    if let Err(e) = transparent {
        debug!(target: "egressd::front", "IP_TRANSPARENT on {addr}: {e} (TPROXY'd TCP will not arrive)");
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    // On the group, so attaching again as each front joins changes nothing.
    if let Err(e) = crate::sys::attach_reuseport_cbpf(s.as_fd(), &steer::program(addr.is_ipv6(), fronts)) {
        debug!(target: "egressd::front", "SO_ATTACH_REUSEPORT_CBPF on {addr}: {e} (connections spread by the kernel's hash)");
    }
    Ok(TcpListener::from_std(s.into()))
}

/// One front loop's sockets: a TCP listener and a UDP socket per listen
/// address, in the config's order. Opened here, or received from the
/// process an upgrade replaces (the same sockets: nothing queued is lost).
pub struct FrontSockets {
    tcp: Vec<(TcpListener, SocketAddr)>,
    udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
}

impl FrontSockets {
    /// Opens front loop sockets for `listen` (`fronts` loops share them by
    /// SO_REUSEPORT); errors name the address and the usual fix.
    pub fn open(listen: &[SocketAddr], fronts: usize) -> io::Result<FrontSockets> {
        let mut tcp = Vec::new();
        for addr in listen {
            let l = tcp_listener(*addr, fronts)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (TCP): {e}")))?;
            tcp.push((l, *addr));
        }
        let mut udp = Vec::new();
        for addr in listen {
            let u = udp::udp_socket(*addr).map_err(|e| {
                let why = if e.kind() == ErrorKind::PermissionDenied {
                    "IP_TRANSPARENT needs CAP_NET_ADMIN: run as root or grant it (systemd \
                     AmbientCapabilities=CAP_NET_ADMIN, or setcap cap_net_admin+ep on the binary)"
                        .to_string()
                } else {
                    e.to_string()
                };
                io::Error::new(e.kind(), format!("cannot listen on {addr} (UDP, TPROXY): {why}"))
            })?;
            udp.push((u, *addr));
        }
        Ok(FrontSockets { tcp, udp })
    }

    /// Copies of the descriptors, TCP listeners first, for an upgrade.
    pub fn fds(&self) -> io::Result<Vec<OwnedFd>> {
        let tcp = self.tcp.iter().map(|(l, _)| l.as_fd().try_clone_to_owned());
        let udp = self.udp.iter().map(|(u, _)| u.as_fd().try_clone_to_owned());
        tcp.chain(udp).collect()
    }

    /// The sockets [`FrontSockets::fds`] gave, received by the new process
    /// of an upgrade; each must be bound to its `listen` address (else the
    /// config is not the one they were opened for).
    pub fn from_fds(fds: Vec<OwnedFd>, listen: &[SocketAddr]) -> io::Result<FrontSockets> {
        if fds.len() != 2 * listen.len() {
            return Err(io::Error::other(format!(
                "{} sockets for {} listen addresses",
                fds.len(),
                listen.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let check = |got: io::Result<SocketAddr>, want: SocketAddr, what: &str| match got {
            Ok(a) if a == want => Ok(()),
            Ok(a) => {
                Err(io::Error::other(format!("the {what} socket handed over for {want} is bound to {a}")))
            }
            Err(e) => Err(io::Error::other(format!("the {what} socket handed over for {want}: {e}"))),
        };
        for addr in listen {
            let l = std::net::TcpListener::from(fds.next().expect("counted above"));
            check(l.local_addr(), *addr, "TCP")?;
            l.set_nonblocking(true)?;
            tcp.push((TcpListener::from_std(l), *addr));
        }
        for addr in listen {
            let u = std::net::UdpSocket::from(fds.next().expect("counted above"));
            check(u.local_addr(), *addr, "UDP")?;
            u.set_nonblocking(true)?;
            udp.push((mio::net::UdpSocket::from_std(u), *addr));
        }
        Ok(FrontSockets { tcp, udp })
    }
}

impl FrontLoop {
    pub fn new(
        id: usize,
        live: Arc<Live>,
        workers: Vec<WorkerHandle>,
        counters: Arc<Counters>,
        sockets: FrontSockets,
        hold: Arc<UdpHold>,
    ) -> io::Result<FrontLoop> {
        let seen = live.generation();
        let shared = live.load();
        let poll = Poll::new()?;
        let FrontSockets { tcp: mut listeners, mut udp } = sockets;
        for (i, (l, _)) in listeners.iter_mut().enumerate() {
            poll.registry().register(l, Token(i), Interest::READABLE)?;
        }
        for (i, (u, _)) in udp.iter_mut().enumerate() {
            poll.registry().register(u, Token(UDP_TOKEN + i), Interest::READABLE)?;
        }
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        Ok(FrontLoop {
            waker,
            id,
            hold,
            holding: false,
            poll,
            listeners,
            udp,
            slots: udp::recv_slots(),
            rdata: udp::recv_data(),
            batches: (0..workers.len()).map(|_| None).collect(),
            workers,
            live,
            seen,
            shared,
            counters,
            paused_until: None,
            pause_warned: Default::default(),
            queue_warned: Default::default(),
        })
    }

    /// What wakes this loop to look at the stop flag: it sleeps until an
    /// event otherwise, however long.
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }

    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::SeqCst) {
            let timeout = self.paused_until.map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                return Err(e);
            }
            let held = self.hold.on.load(Ordering::SeqCst);
            if held != self.holding {
                self.holding = held;
                if held {
                    // Between two turns: nothing half read, every batch handed over.
                    self.hold.seen.fetch_add(1, Ordering::SeqCst);
                } else {
                    // Edge-triggered: what queued while held raised its event then.
                    for i in 0..self.udp.len() {
                        self.recv_all(i);
                    }
                }
            }
            let generation = self.live.generation();
            if generation != self.seen {
                self.seen = generation;
                self.shared = self.live.load();
            }
            // Datagrams are served whether or not accepting is paused: a
            // pause is about file descriptors, and an existing session
            // needs none. Edge-triggered, so an event skipped here would
            // leave the queue unread until the next datagram.
            for ev in events.iter() {
                let t = ev.token().0;
                if t >= UDP_TOKEN && ev.token() != WAKER && !self.holding {
                    self.recv_all(t - UDP_TOKEN);
                }
            }
            if let Some(t) = self.paused_until {
                if Instant::now() < t {
                    continue;
                }
                // Resume: the backlog may hold connections that raised no new event.
                self.paused_until = None;
                for i in 0..self.listeners.len() {
                    self.accept_all(i);
                }
                continue;
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t < UDP_TOKEN && self.paused_until.is_none() {
                    self.accept_all(t);
                }
            }
        }
        debug!(target: "egressd::front", "front {} stopped accepting", self.id);
        Ok(())
    }

    /// Accepts until the backlog is empty (edge-triggered).
    fn accept_all(&mut self, i: usize) {
        if i >= self.listeners.len() {
            return;
        }
        loop {
            match self.listeners[i].0.accept() {
                Ok((stream, peer)) => {
                    Counters::inc(&self.counters.tcp_accepted);
                    // mio hands out its own type; workers take a std stream.
                    let std_stream = std::net::TcpStream::from(std::os::fd::OwnedFd::from(stream));
                    self.dispatch(std_stream, unmapped(peer), i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    Counters::inc(&self.counters.accept_paused);
                    let now = Instant::now();
                    if let Some(n) = self.pause_warned.due(now) {
                        warn!(target: "egressd::front", "accept: {e}; pausing accepts for {EMFILE_PAUSE:?} (raise the fd limit?); counted in accept_paused, logged once a minute{}",
                            crate::lograte::more(n));
                    } else {
                        debug!(target: "egressd::front", "accept: {e}; pausing accepts for {EMFILE_PAUSE:?}");
                    }
                    self.paused_until = Some(now + EMFILE_PAUSE);
                    return;
                }
                // ECONNABORTED and friends concern one connection only.
                Err(e) => debug!(target: "egressd::front", "accept: {e}"),
            }
        }
    }

    fn dispatch(&mut self, stream: std::net::TcpStream, client: SocketAddr, listener: usize) {
        let sock = SockRef::from(&stream);
        let listen_addr = self.listeners[listener].1;
        let conntrack_first = self.shared.settings.intercept.tcp == TcpIntercept::Redirect;
        let orig_dst = match orig_dst(&sock, listen_addr, conntrack_first) {
            Some(d) if !self.is_own_listener(d) => d,
            other => {
                Counters::inc(&self.counters.drop_loop_guard);
                debug!(target: "egressd::front", "{client}: connection straight to the listener (orig_dst {other:?}); closed");
                reset(&sock);
                return;
            }
        };
        let Some((source, tunnel)) = self.shared.route(client.ip()) else {
            Counters::inc(&self.counters.drop_no_route);
            debug!(target: "egressd::front", "{client} -> tcp {orig_dst}: no route for this source; reset");
            reset(&sock);
            return;
        };
        let w = worker_for(client.ip(), self.workers.len());
        let h = Handoff::Tcp(Box::new(TcpHandoff {
            stream,
            client,
            orig_dst,
            tunnel: Arc::clone(tunnel),
            source,
            generation: self.seen,
        }));
        match self.workers[w].try_send(h) {
            // An atomic swap; an eventfd write only if the worker sleeps.
            Ok(()) => self.workers[w].wake(),
            Err(Handoff::Tcp(h)) => {
                Counters::inc(&self.counters.drop_queue_full);
                if let Some(n) = self.queue_warned.due(Instant::now()) {
                    warn!(target: "egressd::front", "{client} -> tcp {orig_dst}: worker {w} queue full; reset (counted: drop_queue_full){}",
                        crate::lograte::more(n));
                } else {
                    debug!(target: "egressd::front", "{client} -> tcp {orig_dst}: worker {w} queue full; reset");
                }
                reset(&SockRef::from(&h.stream));
            }
            Err(_) => unreachable!("a TCP hand-off comes back as TCP"),
        }
    }

    fn is_own_listener(&self, d: SocketAddr) -> bool {
        self.listeners.iter().any(|(_, a)| *a == d)
    }
}

/// The connection's original destination (see the module doc).
fn orig_dst(sock: &SockRef, listen_addr: SocketAddr, conntrack_first: bool) -> Option<SocketAddr> {
    let conntrack = || {
        let orig = if listen_addr.is_ipv4() { sock.original_dst_v4() } else { sock.original_dst_v6() };
        orig.ok().and_then(|a| a.as_socket()).map(unmapped)
    };
    if conntrack_first && let Some(d) = conntrack() {
        return Some(d);
    }
    let local = unmapped(sock.local_addr().ok()?.as_socket()?);
    if local != listen_addr {
        return Some(local);
    }
    if conntrack_first { None } else { conntrack() }
}

/// The worker for a client: stable per source address, spread evenly; the
/// front loop of the same index accepts its connections (`steer`).
pub fn worker_for(ip: IpAddr, n: usize) -> usize {
    steer::pick(ip, n)
}

/// Logs what the daemon will do, once at start.
pub fn log_summary(s: &Settings) {
    for a in &s.listen {
        info!(target: "egressd", "listening on {a} (TCP, and UDP by TPROXY)");
    }
    for t in &s.tunnels {
        match t.kind.server() {
            Some(srv) => info!(target: "egressd", "tunnel {}: {} via {srv}", t.name, t.kind.label()),
            None => info!(target: "egressd", "tunnel {}: {}", t.name, t.kind.label()),
        }
    }
    let mut routes: Vec<_> = s.routes.iter().collect();
    routes.sort_by_key(|(c, _)| (!c.is_ipv4(), c.addr(), c.len()));
    for (c, target) in routes {
        info!(target: "egressd", "route {c} -> {}", s.target_text(target));
    }
    match s.default {
        Some(id) => info!(target: "egressd", "other sources -> {}", s.tunnels[usize::from(id)].name),
        None => info!(target: "egressd", "other sources -> reject"),
    }
    if !s.classes.is_empty() {
        info!(target: "egressd", "{} bandwidth classes parsed; their rate caps and weights are not enforced by this version",
            s.classes.len());
    }
    info!(target: "egressd", "{} front loops, {} tunnel workers", s.threads, s.threads);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_normalized() {
        let a: SocketAddr = "[::ffff:10.8.0.10]:5000".parse().unwrap();
        assert_eq!(unmapped(a), "10.8.0.10:5000".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[fd08::10]:5000".parse().unwrap();
        assert_eq!(unmapped(b), b);
    }
}
