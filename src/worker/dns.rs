//! DNS over TCP for tunnels without UDP (SOCKS5 `udp: false`).
//!
//! A container's datagram to port 53 becomes a framed query (RFC 1035
//! §4.2.2) on a TCP connection through the tunnel to the same destination;
//! each framed answer goes back to the container as a datagram from that
//! destination. One connection per (session, DNS server), reused for the
//! session's later queries and closed with the session.
//!
//! ```text
//!   query ─► Connecting ──► Handshaking (CONNECT dst:53) ──► Open ──answers──► datagrams to the client
//!             (queries queue in `out`, up to pending_datagrams)        └─ EOF / error ─► closed (DNS clients retry)
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::Interest;
use mio::net::TcpStream;
use socket2::SockRef;

use super::slab::{self, Kind};
use super::{Drive, WorkerLoop, auth_of, connect, drive_handshake, keepalive};
use crate::config::Tunnel;
use crate::stats::Counters;
use crate::upstream::{self, Handshake};
use crate::wire::Parse;
use crate::wire::dns;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Handshaking,
    Open,
}

pub(super) struct DnsConn {
    /// The owning session's slot (it closes this connection when it ends).
    pub(super) session: usize,
    client: SocketAddr,
    pub(super) dst: SocketAddr,
    tunnel: Arc<Tunnel>,
    stream: TcpStream,
    stage: Stage,
    /// Until the tunnel is open.
    hs: Option<Box<Handshake>>,
    /// Framed queries not yet written.
    out: Vec<u8>,
    out_pos: usize,
    /// Queries sent or queued and not yet answered.
    waiting: usize,
    /// Bytes of answers read but not yet a whole frame.
    inbuf: Vec<u8>,
    started: Instant,
}

impl WorkerLoop {
    /// Carries one query of `session` to `dst` over TCP; false if dropped.
    pub(super) fn dns_query(
        &mut self,
        session: usize,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
        q: &[u8],
    ) {
        if !dns::is_query(q) {
            Counters::inc(&self.counters.udp_drop_bad_header);
            return;
        }
        let slot = match self.udp.dns_conn_for(session, dst) {
            Some(slot) => slot,
            None => match self.open_dns_conn(session, client, dst, t) {
                Some(slot) => slot,
                None => {
                    Counters::inc(&self.counters.udp_assoc_failed);
                    return;
                }
            },
        };
        let pending_max = self.udp.pending_max;
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        if c.waiting >= pending_max {
            Counters::inc(&self.counters.udp_drop_pending);
            return;
        }
        let Ok(prefix) = dns::encode_len(q.len()) else {
            Counters::inc(&self.counters.udp_drop_bad_header);
            return;
        };
        c.out.extend_from_slice(&prefix);
        c.out.extend_from_slice(q);
        c.waiting += 1;
        Counters::inc(&self.counters.dns_tcp_queries);
        Counters::inc(&self.counters.udp_dgrams_up);
        Counters::add(&self.counters.udp_bytes_up, q.len() as u64);
        if c.stage == Stage::Open && self.flush_dns(slot).is_err() {
            self.close_dns(slot, "write error");
        }
    }

    fn open_dns_conn(
        &mut self,
        session: usize,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
    ) -> Option<usize> {
        let server = t.kind.server().and_then(|s| s.addr)?;
        // A resolver no exit can reach is asked at `dns.upstream`; the answers
        // still come from `dst`, the address the client asked.
        let hs = Box::new(upstream::for_tcp(&t.kind, self.settings.dns.target(dst))?);
        let stream = match connect(server, &t.kind) {
            Ok(s) => s,
            Err(e) => {
                debug!(target: "egressd::udp", "{client} -> dns {dst} via {}: {e}", t.name);
                return None;
            }
        };
        let conn = DnsConn {
            session,
            client,
            dst,
            tunnel: Arc::clone(t),
            stream,
            stage: Stage::Connecting,
            hs: Some(hs),
            out: Vec::new(),
            out_pos: 0,
            waiting: 0,
            inbuf: Vec::new(),
            started: self.now,
        };
        let (slot, generation) = self.udp.dns.insert(conn);
        let token = slab::token(slot, generation, Kind::DnsTcp);
        let c = self.udp.dns.get_mut(slot).expect("just inserted");
        if self
            .poll
            .registry()
            .register(&mut c.stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.udp.dns.remove(slot);
            return None;
        }
        self.udp.add_dns_conn(session, dst, slot);
        let deadline = self.now + self.settings.tcp.connect_timeout;
        self.timers.push(std::cmp::Reverse((deadline, token)));
        debug!(target: "egressd::udp", "{client} -> dns {dst} via {}: over TCP", t.name);
        Some(slot)
    }

    pub(super) fn on_dns_event(&mut self, slot: usize, ev: &mio::event::Event) {
        let scratch = &mut self.relay.scratch;
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        loop {
            match c.stage {
                Stage::Connecting => {
                    if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                        return;
                    }
                    if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                        let why = format!("connect: {e}");
                        return self.close_dns(slot, &why);
                    }
                    match c.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotConnected => return,
                        Err(e) => {
                            let why = format!("connect: {e}");
                            return self.close_dns(slot, &why);
                        }
                    }
                    let _ = keepalive(&SockRef::from(&c.stream));
                    c.stage = Stage::Handshaking;
                }
                Stage::Handshaking => {
                    let Some(hs) = c.hs.as_mut() else { return self.close_dns(slot, "no handshake") };
                    match drive_handshake(&mut c.stream, hs, auth_of(&c.tunnel), scratch) {
                        Drive::Pending => return,
                        Drive::Failed(why, _) => {
                            let why = format!("handshake: {why}");
                            return self.close_dns(slot, &why);
                        }
                        Drive::Done(extra) => {
                            c.inbuf.extend_from_slice(&scratch[extra]);
                            c.stage = Stage::Open;
                            c.hs = None;
                        }
                    }
                }
                Stage::Open => break,
            }
        }
        if self.flush_dns(slot).is_err() {
            return self.close_dns(slot, "write error");
        }
        self.read_dns(slot);
    }

    fn flush_dns(&mut self, slot: usize) -> std::io::Result<()> {
        let Some(c) = self.udp.dns.get_mut(slot) else { return Ok(()) };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        Ok(())
    }

    /// Reads answers and sends each back to the client as a datagram.
    fn read_dns(&mut self, slot: usize) {
        let now = self.now;
        loop {
            let Some(c) = self.udp.dns.get_mut(slot) else { return };
            let n = match c.stream.read(&mut self.relay.scratch) {
                Ok(0) => return self.close_dns(slot, "closed by the server"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.close_dns(slot, &why);
                }
            };
            c.inbuf.extend_from_slice(&self.relay.scratch[..n]);
            let (client, dst) = (c.client, c.dst);
            let mut used = 0;
            loop {
                let c = self.udp.dns.get_mut(slot).expect("live");
                match dns::parse_frame(&c.inbuf[used..]) {
                    Ok(Parse::Done(msg, len)) => {
                        c.waiting = c.waiting.saturating_sub(1);
                        let r = self.udp.replies.send(dst, client, msg);
                        let sent = msg.len() as u64;
                        used += len;
                        self.count_reply(r, dst, client, sent);
                        Counters::inc(&self.counters.dns_tcp_answers);
                        self.udp.table.touch_inbound(&client, now);
                    }
                    Ok(Parse::Incomplete) => break,
                    Err(e) => {
                        let why = format!("bad answer framing: {e}");
                        return self.close_dns(slot, &why);
                    }
                }
            }
            let c = self.udp.dns.get_mut(slot).expect("live");
            c.inbuf.drain(..used);
            if c.inbuf.is_empty() {
                c.inbuf = Vec::new();
            }
        }
    }

    /// The connect/handshake deadline of a DNS connection.
    pub(super) fn expire_dns(&mut self, slot: usize) {
        let timeout = self.settings.tcp.connect_timeout;
        if let Some(c) = self.udp.dns.get(slot)
            && c.stage != Stage::Open
            && c.started + timeout <= self.now
        {
            self.close_dns(slot, "no answer from the tunnel in time (connect_timeout_secs)");
        }
    }

    pub(super) fn close_dns(&mut self, slot: usize, why: &str) {
        if let Some(c) = self.udp.dns.remove(slot) {
            debug!(target: "egressd::udp", "{} -> dns {} via {}: connection closed: {why}; {} queries unanswered",
                c.client, c.dst, c.tunnel.name, c.waiting);
            self.udp.forget_dns_conn(c.session, slot);
        }
    }
}
