//! The splice(2) pump and the per-worker pool of pipes it borrows.

use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};

use socket2::SockRef;

use super::{PumpError, Pumped, write_some};
use crate::sys;

/// Bytes a pipe is asked to hold (F_SETPIPE_SZ); the kernel may give less.
const PIPE_SIZE: usize = 512 * 1024;
/// Empty pipes kept for reuse per worker; more are closed.
const POOL_MAX: usize = 128;

#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// At most PIPE_SIZE (or what the kernel gave): fits in u32.
    size: u32,
}

/// Empty pipes, reused so that a burst of data costs no pipe2 call.
#[derive(Debug, Default)]
pub struct PipePool {
    free: Vec<Pipe>,
}

impl PipePool {
    fn get(&mut self) -> std::io::Result<Pipe> {
        if let Some(p) = self.free.pop() {
            return Ok(p);
        }
        let (r, w) = sys::pipe()?;
        let size = sys::set_pipe_size(w.as_fd(), PIPE_SIZE).unwrap_or(64 * 1024).min(PIPE_SIZE);
        Ok(Pipe { r, w, size: size as u32 })
    }

    /// Takes back an EMPTY pipe.
    pub fn put(&mut self, p: Pipe) {
        if self.free.len() < POOL_MAX {
            self.free.push(p);
        }
    }

    pub fn idle(&self) -> usize {
        self.free.len()
    }
}

impl super::Pump {
    /// Moves what `src` has to `dst` through a pipe of the pool (taken
    /// while bytes are in it, given back when the socket is idle), until
    /// one side would block or the stream ends.
    pub(super) fn pump_splice(
        &mut self,
        src: &mut mio::net::TcpStream,
        dst: &mut mio::net::TcpStream,
        pool: &mut PipePool,
        scratch: &mut [u8],
        left: &mut usize,
    ) -> Result<Pumped, PumpError> {
        if self.done {
            return Ok(Pumped::Done);
        }
        // Bytes that came with the handshake reply go first, by plain write.
        if !self.flush_held(dst)? {
            return Ok(Pumped::WaitWrite);
        }
        loop {
            if self.in_pipe > 0 && !self.drain_pipe(dst)? {
                return Ok(Pumped::WaitWrite);
            }
            if self.eof {
                if let Some(p) = self.pipe.take() {
                    pool.put(p);
                }
                let _ = SockRef::from(&*dst).shutdown(Shutdown::Write);
                self.done = true;
                return Ok(Pumped::Done);
            }
            if *left == 0 {
                return Ok(Pumped::Shaped);
            }
            if let Some(wait) = self.fill_pipe(src, dst, pool, scratch, left)? {
                return Ok(wait);
            }
        }
    }

    /// Writes what the pipe holds to `dst`; false when `dst` is full first.
    fn drain_pipe(&mut self, dst: &mut mio::net::TcpStream) -> Result<bool, PumpError> {
        while self.in_pipe > 0 {
            let pipe = self.pipe.as_ref().expect("bytes are in a pipe");
            match sys::splice(pipe.r.as_fd(), dst.as_fd(), self.in_pipe as usize) {
                Ok(0) => return Err(PumpError::Write(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    // n <= in_pipe (splice moves at most what it is
                    // asked); saturating all the same, a count the
                    // kernel reports must not wrap into a huge one.
                    self.in_pipe = self.in_pipe.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                    self.bytes += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(PumpError::Write(e)),
            }
        }
        Ok(true)
    }

    /// Splices what `src` has into a pipe; `Some` when the pump must wait.
    fn fill_pipe(
        &mut self,
        src: &mut mio::net::TcpStream,
        dst: &mut mio::net::TcpStream,
        pool: &mut PipePool,
        scratch: &mut [u8],
        left: &mut usize,
    ) -> Result<Option<Pumped>, PumpError> {
        let pipe = match self.pipe.take() {
            Some(p) => p,
            None => pool.get().map_err(|_| PumpError::Unsupported)?,
        };
        match sys::splice(src.as_fd(), pipe.w.as_fd(), (pipe.size as usize).min(*left)) {
            Ok(0) => {
                pool.put(pipe);
                self.read_past_urgent(src, dst, scratch, left)
            }
            Ok(n) => {
                *left -= n.min(*left);
                // n <= pipe.size, a u32.
                self.in_pipe = n as u32;
                self.pipe = Some(pipe);
                Ok(None)
            }
            // The pipe is empty, so this means the socket is: idle again,
            // and the pipe goes back to the pool.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                pool.put(pipe);
                Ok(Some(Pumped::WaitRead))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                self.pipe = Some(pipe);
                Ok(None)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) && self.bytes == 0 => {
                pool.put(pipe);
                Err(PumpError::Unsupported)
            }
            Err(e) => {
                pool.put(pipe);
                Err(PumpError::Read(e))
            }
        }
    }

    /// splice read 0: EOF, or urgent data at the head of the queue (splice,
    /// in tcp_read_sock, never reads past the urgent mark). A plain read
    /// does (the sockets are SO_OOBINLINE, so the urgent byte is read in
    /// line) and tells the two apart.
    fn read_past_urgent(
        &mut self,
        src: &mut mio::net::TcpStream,
        dst: &mut mio::net::TcpStream,
        scratch: &mut [u8],
        left: &mut usize,
    ) -> Result<Option<Pumped>, PumpError> {
        let room = scratch.len().min(*left);
        match src.read(&mut scratch[..room]) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                *left -= n.min(*left);
                let w = write_some(dst, &scratch[..n], &mut self.bytes)?;
                if w < n {
                    self.hold(&scratch[w..n]);
                    return Ok(Some(Pumped::WaitWrite));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Some(Pumped::WaitRead)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PumpError::Read(e)),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pump, Pumped, RelayCtx};
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// A connected pair of non-blocking mio streams over loopback.
    fn pair() -> (mio::net::TcpStream, mio::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (mio::net::TcpStream::from_std(a), mio::net::TcpStream::from_std(b))
    }

    fn ctx(splice: bool) -> RelayCtx {
        RelayCtx { scratch: vec![0u8; 16 * 1024].into_boxed_slice(), pipes: PipePool::default(), splice }
    }

    /// client_w → [src … pump … dst] → server_r, with half-close at the end.
    fn relay(splice: bool) {
        let (mut client_w, mut src) = pair();
        let (mut dst, mut server_r) = pair();
        let mut ctx = ctx(splice);
        let mut p = Pump::default();
        p.preload(b"head:");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut sent, mut got) = (0usize, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 65536];
        loop {
            assert!(Instant::now() < deadline, "relay stalled");
            if sent < data.len() {
                match client_w.write(&data[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                if sent == data.len() {
                    client_w.shutdown(Shutdown::Write).unwrap();
                }
            }
            let r = p.pump(&mut src, &mut dst, &mut ctx).unwrap();
            match server_r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if r == Pumped::Done && got.len() == data.len() + 5 {
                // EOF must follow.
                continue;
            }
        }
        assert_eq!(&got[..5], b"head:");
        assert!(got[5..] == data[..], "bytes differ");
        assert!(p.is_done());
        assert_eq!(p.bytes as usize, data.len() + 5);
        p.release(&mut ctx.pipes);
        if splice {
            assert!(ctx.pipes.idle() >= 1, "the pipe went back to the pool");
        }
    }

    #[test]
    fn splice_relays_everything_then_half_closes() {
        relay(true);
    }

    #[test]
    fn copy_relays_everything_then_half_closes() {
        relay(false);
    }

    /// splice(2) returns 0 at an urgent mark; that is not EOF (issue 14).
    fn urgent_mid_stream(splice: bool) {
        let (client_w, mut src) = pair();
        let (mut dst, mut server_r) = pair();
        SockRef::from(&src).set_out_of_band_inline(true).unwrap();
        SockRef::from(&server_r).set_out_of_band_inline(true).unwrap();
        let mut ctx = ctx(splice);
        let mut p = Pump::default();
        let cw = SockRef::from(&client_w);
        let mut want = vec![b'A'; 5000];
        cw.send(&want).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        cw.send_out_of_band(b"!").unwrap();
        want.push(b'!');
        std::thread::sleep(Duration::from_millis(50));
        cw.send(&[b'B'; 5000]).unwrap();
        want.extend_from_slice(&[b'B'; 5000]);
        cw.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "relay stalled: {} of {} bytes", got.len(), want.len());
            let _ = p.pump(&mut src, &mut dst, &mut ctx).unwrap();
            match server_r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }

    #[test]
    fn splice_passes_urgent_data_on() {
        urgent_mid_stream(true);
    }

    #[test]
    fn copy_passes_urgent_data_on() {
        urgent_mid_stream(false);
    }
}
