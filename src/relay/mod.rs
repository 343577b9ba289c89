//! One-way byte pumps between two sockets, half-close aware.
//!
//! A [`Pump`] moves bytes from `src` to `dst` until `src` would block,
//! `dst` would block, or `src` ends. Two ways, same states:
//! - **splice** (default): socket → pipe → socket with splice(2), the bytes
//!   never enter user space. A pipe is taken from the worker's pool when data
//!   arrives and given back as soon as it is empty again, so an idle flow
//!   holds no pipe; a pipe still holding bytes stays with its pump.
//! - **copy** (`tcp.splice: false`, or when splice is refused): read into the
//!   worker's shared scratch buffer and write straight on; only bytes `dst`
//!   cannot take yet are kept, in a buffer that exists only while `dst` is
//!   backed up.
//!
//! ```text
//!   Open ──src EOF, all written──► shutdown(dst, Write) ──► Done
//!    │ ├─ dst would block ─► (keep the rest; wait for dst writable)
//!    │ └─ allowance spent ─► Shaped (`pump_within`: the caller's timer pumps again)
//!    └──── read/write error ──► Err (the flow resets both sides)
//! ```
//!
//! A shaped source's pumps read at most their grant (`pump_within`, see
//! `shape`); everyone else's read without bound, as `pump` always did.

mod splice;

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;

pub use splice::{Pipe, PipePool};

/// Where a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// `src` has nothing more for now: wait for it to be readable.
    WaitRead,
    /// `dst` is full: wait for it to be writable.
    WaitWrite,
    /// The allowance (the source's shaper's grant) is spent and `src` may
    /// hold more: come back at the grant's wake-up, not on an edge.
    Shaped,
    /// `src` ended and `dst`'s write side is shut: this direction is over.
    Done,
}

#[derive(Debug)]
pub enum PumpError {
    Read(io::Error),
    Write(io::Error),
    /// splice(2) is not possible here; the pump falls back to copying.
    Unsupported,
}

/// A socket whose write side can be shut (half-close).
pub trait HalfClose {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Two live in every flow, so they are kept small (48 bytes): bytes that
/// `dst` could not take yet sit in a boxed slice that exists only while it is
/// backed up, positions are `u32` (a pipe holds at most 1 GiB).
#[derive(Debug, Default)]
pub struct Pump {
    /// Bytes waiting for `dst` (copy mode, or handshake leftovers), and how
    /// many of them went already.
    held: Option<Box<[u8]>>,
    held_pos: u32,
    /// Bytes in the pipe (splice mode).
    in_pipe: u32,
    eof: bool,
    done: bool,
    /// Bytes written to `dst` so far.
    pub bytes: u64,
    /// The pipe while it holds bytes (splice mode).
    pipe: Option<Pipe>,
    /// Splice or copy, fixed at the first pump from `RelayCtx::splice` (a
    /// reload that turns splice off must not strand bytes in a pipe);
    /// `Some(false)` too when splice was refused for these sockets.
    splice: Option<bool>,
}

/// What a worker lends its pumps: the scratch buffer and the pipe pool.
pub struct RelayCtx {
    pub scratch: Box<[u8]>,
    pub pipes: PipePool,
    /// For pumps that start from now on (`tcp.splice`, live on reload).
    pub splice: bool,
}

impl Pump {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Where this pump stands without moving it: done, or waiting (which
    /// readiness it waits for matters only to the pump itself).
    pub fn state(&self) -> Pumped {
        if self.done { Pumped::Done } else { Pumped::WaitRead }
    }

    /// Bytes of buffer this pump holds (0 when idle).
    pub fn held_capacity(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len())
    }

    /// Queues bytes that arrived before the relay started (after a handshake).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.hold(bytes);
    }

    /// Keeps `bytes` for `dst`, behind any still held.
    fn hold(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.held = Some(match self.held.take() {
            None => bytes.into(),
            Some(old) => [&old[self.held_pos as usize..], bytes].concat().into(),
        });
        self.held_pos = 0;
    }

    /// Writes held bytes; true when none are left (the buffer is freed).
    fn flush_held<D: Write>(&mut self, dst: &mut D) -> Result<bool, PumpError> {
        let Some(held) = &self.held else { return Ok(true) };
        let pos = self.held_pos as usize;
        let n = write_some(dst, &held[pos..], &mut self.bytes)?;
        if pos + n < held.len() {
            // `held` came from one read of at most the scratch buffer (or a
            // handshake's leftovers): its length fits in u32.
            self.held_pos = (pos + n) as u32;
            return Ok(false);
        }
        // Drained: give the memory back; the flow may go idle now.
        self.held = None;
        self.held_pos = 0;
        Ok(true)
    }

    /// Moves bytes between two sockets until something would block or
    /// `src` ends, by splice when enabled, else by copy.
    pub fn pump(
        &mut self,
        src: &mut mio::net::TcpStream,
        dst: &mut mio::net::TcpStream,
        ctx: &mut RelayCtx,
    ) -> Result<Pumped, PumpError> {
        let mut all = usize::MAX;
        self.pump_within(src, dst, ctx, &mut all)
    }

    /// [`Pump::pump`], reading at most `*left` bytes from `src` (a shaped
    /// source's grant): each read takes its length off `*left`, and when
    /// none is left the pump stops with [`Pumped::Shaped`] (bytes already
    /// read are still written first). What `*left` lost is what was read.
    pub fn pump_within(
        &mut self,
        src: &mut mio::net::TcpStream,
        dst: &mut mio::net::TcpStream,
        ctx: &mut RelayCtx,
        left: &mut usize,
    ) -> Result<Pumped, PumpError> {
        if *self.splice.get_or_insert(ctx.splice) {
            match self.pump_splice(src, dst, &mut ctx.pipes, &mut ctx.scratch, left) {
                Err(PumpError::Unsupported) => self.splice = Some(false),
                r => return r,
            }
        }
        self.pump_copy_within(src, dst, &mut ctx.scratch, left)
    }

    /// Gives the pipe back to the pool if it is empty (the flow is ending).
    pub fn release(&mut self, pool: &mut PipePool) {
        if let Some(p) = self.pipe.take()
            && self.in_pipe == 0
        {
            pool.put(p);
        }
    }

    /// Moves bytes until something would block or `src` ends (copy mode).
    pub fn pump_copy<S, D>(
        &mut self,
        src: &mut S,
        dst: &mut D,
        scratch: &mut [u8],
    ) -> Result<Pumped, PumpError>
    where
        S: Read,
        D: Write + HalfClose,
    {
        let mut all = usize::MAX;
        self.pump_copy_within(src, dst, scratch, &mut all)
    }

    /// [`Pump::pump_copy`] within an allowance (see [`Pump::pump_within`]).
    pub fn pump_copy_within<S, D>(
        &mut self,
        src: &mut S,
        dst: &mut D,
        scratch: &mut [u8],
        left: &mut usize,
    ) -> Result<Pumped, PumpError>
    where
        S: Read,
        D: Write + HalfClose,
    {
        if self.done {
            return Ok(Pumped::Done);
        }
        loop {
            if !self.flush_held(dst)? {
                return Ok(Pumped::WaitWrite);
            }
            if self.eof {
                // Peer may already be gone; the flow ends either way.
                let _ = dst.shutdown_write();
                self.done = true;
                return Ok(Pumped::Done);
            }
            if *left == 0 {
                return Ok(Pumped::Shaped);
            }
            let room = scratch.len().min(*left);
            let n = match src.read(&mut scratch[..room]) {
                Ok(0) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => {
                    *left -= n.min(*left);
                    n
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Pumped::WaitRead),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Read(e)),
            };
            let w = write_some(dst, &scratch[..n], &mut self.bytes)?;
            if w < n {
                self.hold(&scratch[w..n]);
                return Ok(Pumped::WaitWrite);
            }
        }
    }
}

/// Writes as much of `buf` as `dst` takes now; counts it.
fn write_some<D: Write>(dst: &mut D, buf: &[u8], bytes: &mut u64) -> Result<usize, PumpError> {
    let mut off = 0;
    while off < buf.len() {
        match dst.write(&buf[off..]) {
            Ok(0) => return Err(PumpError::Write(ErrorKind::WriteZero.into())),
            Ok(n) => {
                off += n;
                *bytes += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PumpError::Write(e)),
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::VecDeque;

    /// A scripted source: chunks, then WouldBlock or EOF.
    struct Src {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
    }
    impl Read for Src {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.chunks.pop_front() {
                Some(c) => {
                    buf[..c.len()].copy_from_slice(&c);
                    Ok(c.len())
                }
                None if self.eof => Ok(0),
                None => Err(ErrorKind::WouldBlock.into()),
            }
        }
    }
    /// A destination that takes at most `room` bytes, then blocks.
    struct Dst {
        got: Vec<u8>,
        room: usize,
        shut: Cell<bool>,
    }
    impl Write for Dst {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl HalfClose for Dst {
        fn shutdown_write(&self) -> io::Result<()> {
            self.shut.set(true);
            Ok(())
        }
    }

    #[test]
    fn backpressure_keeps_bytes_and_half_close_waits_for_them() {
        let mut src = Src { chunks: vec![b"hello".to_vec(), b"world".to_vec()].into(), eof: true };
        let mut dst = Dst { got: vec![], room: 7, shut: Cell::new(false) };
        let mut p = Pump::default();
        let mut scratch = [0u8; 16];
        assert_eq!(p.pump_copy(&mut src, &mut dst, &mut scratch).unwrap(), Pumped::WaitWrite);
        assert_eq!(dst.got, b"hellowo");
        assert!(!dst.shut.get(), "must not half-close while bytes are held");
        dst.room = 100;
        assert_eq!(p.pump_copy(&mut src, &mut dst, &mut scratch).unwrap(), Pumped::Done);
        assert_eq!(dst.got, b"helloworld");
        assert!(dst.shut.get());
        assert_eq!(p.bytes, 10);
        assert!(p.held.is_none(), "no buffer kept after draining");
    }

    #[test]
    fn an_allowance_stops_reading_and_says_so() {
        let mut src = Src { chunks: vec![b"abc".to_vec(), b"def".to_vec()].into(), eof: false };
        let mut dst = Dst { got: vec![], room: 100, shut: Cell::new(false) };
        let mut p = Pump::default();
        p.preload(b"P");
        let mut scratch = [0u8; 16];
        // Held bytes go out whatever the allowance; then 3 are read, no more.
        let mut left = 3;
        assert_eq!(p.pump_copy_within(&mut src, &mut dst, &mut scratch, &mut left).unwrap(), Pumped::Shaped);
        assert_eq!((dst.got.as_slice(), left), (&b"Pabc"[..], 0));
        // Nothing allowed: nothing read, still Shaped (not WaitRead).
        assert_eq!(p.pump_copy_within(&mut src, &mut dst, &mut scratch, &mut 0).unwrap(), Pumped::Shaped);
        let mut left = 10;
        assert_eq!(
            p.pump_copy_within(&mut src, &mut dst, &mut scratch, &mut left).unwrap(),
            Pumped::WaitRead
        );
        assert_eq!((dst.got.as_slice(), left), (&b"Pabcdef"[..], 7));
    }

    #[test]
    fn preload_goes_first_and_idle_waits_for_read() {
        let mut src = Src { chunks: vec![b"B".to_vec()].into(), eof: false };
        let mut dst = Dst { got: vec![], room: 100, shut: Cell::new(false) };
        let mut p = Pump::default();
        p.preload(b"A");
        assert_eq!(p.pump_copy(&mut src, &mut dst, &mut [0u8; 4]).unwrap(), Pumped::WaitRead);
        assert_eq!(dst.got, b"AB");
        assert!(!p.is_done());
    }
}
