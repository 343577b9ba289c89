//! The only `unsafe` in egressd: thin wrappers over syscalls that socket2
//! and std do not offer. One syscall per `unsafe` block, each with a
//! `SAFETY:` note on pointer validity and fd ownership.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Raises the soft limit on open files to the hard limit, so that a default
/// install can hold tens of thousands of flows. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let lim = fd_limits()?;
    if lim.rlim_cur < lim.rlim_max {
        set_fd_soft(lim.rlim_max, lim.rlim_max)?;
    }
    Ok(lim.rlim_max.max(lim.rlim_cur))
}

/// Sets the soft limit on open files (tests that run out of descriptors
/// on purpose, in a process of their own).
#[cfg(test)]
pub fn set_fd_limit(soft: u64) -> io::Result<()> {
    let lim = fd_limits()?;
    set_fd_soft(soft.min(lim.rlim_max), lim.rlim_max)
}

/// The soft and hard limits on open files.
fn fd_limits() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

fn set_fd_soft(soft: u64, hard: u64) -> io::Result<()> {
    let want = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `want` is a valid rlimit read by the kernel during the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signals egressd handles itself: stop (TERM, INT), reload (HUP)
/// and upgrade (USR2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
    Upgrade,
}

impl Signal {
    fn of(sig: libc::c_int) -> Signal {
        match sig {
            libc::SIGHUP => Signal::Reload,
            libc::SIGUSR2 => Signal::Upgrade,
            _ => Signal::Stop,
        }
    }
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
        // SAFETY: `set` is initialised; the signal numbers are valid.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks TERM, INT, HUP and USR2 in the calling thread and every thread it
/// spawns afterwards, so that only [`wait_signal`] receives them.
pub fn block_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: `set` is a valid sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of the blocked signals.
pub fn wait_signal() -> io::Result<Signal> {
    let set = handled_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is valid; `sig` is a valid, writable c_int.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(Signal::of(sig))
}

/// Waits up to `timeout` for one of the blocked signals: `None` when none
/// came (`egressd top` uses the wait as its refresh tick).
pub fn wait_signal_timeout(timeout: std::time::Duration) -> io::Result<Option<Signal>> {
    let set = handled_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as _, // time_t (an alias musl deprecates by name)
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if sig < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(Signal::of(sig)))
}

/// A terminal's settings as they were before [`term_keys_mode`] changed them.
pub struct SavedTerm(libc::termios);

/// Puts the terminal on `fd` in non-canonical mode without echo, reads
/// returning at once with what is there (VMIN 0, VTIME 0): keys arrive one
/// by one and are not shown; Ctrl-C still raises SIGINT (ISIG is kept).
/// Returns the settings [`term_restore`] puts back.
pub fn term_keys_mode(fd: BorrowedFd<'_>) -> io::Result<SavedTerm> {
    // SAFETY: termios is plain data; tcgetattr fills it before it is read.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call (borrowed); `t` is a valid, writable termios.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = SavedTerm(t);
    t.c_lflag &= !(libc::ICANON | libc::ECHO);
    t.c_cc[libc::VMIN] = 0;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: `fd` is open for the call; `t` is a valid termios read by the kernel.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(saved)
}

/// Puts back the settings [`term_keys_mode`] saved.
pub fn term_restore(fd: BorrowedFd<'_>, saved: &SavedTerm) -> io::Result<()> {
    // SAFETY: `fd` is open for the call; `saved.0` is a valid termios read by the kernel.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &saved.0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of the terminal on `fd` (TIOCGWINSZ): (columns, rows).
pub fn term_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `fd` is open for the call; `ws` is a valid, writable winsize, the
    // argument TIOCGWINSZ expects.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ws.ws_col, ws.ws_row))
}

/// Bytes waiting to be read on the stream socket `fd` (SIOCINQ).
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is open for the call; `n` is a valid, writable c_int, the
    // argument FIONREAD (SIOCINQ on sockets) writes.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Asks the kernel to report each datagram's original destination
/// (IP_RECVORIGDSTADDR, and IPV6_RECVORIGDSTADDR on an IPv6 socket).
pub fn set_recv_orig_dst(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR)
    } else {
        (libc::SOL_IP, libc::IP_RECVORIGDSTADDR)
    };
    set_option(fd, level, name, &(1 as libc::c_int))
}

/// Sets a socket's send buffer past `net.core.wmem_max` (SO_SNDBUFFORCE,
/// which needs CAP_NET_ADMIN, as egressd has).
pub fn force_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &v)
}

/// setsockopt(2) with a value of type `T` (an option socket2 does not offer).
fn set_option<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `fd` is a live socket borrowed for the call; `value` points at
    // a valid `T` whose size is passed alongside it, and the kernel only
    // reads it (copying in anything it points to) during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Control-message space, aligned as `cmsghdr` requires; room for an
/// original destination (IPv4 or IPv6) and a little more.
#[repr(C, align(8))]
pub struct CmsgBuf(pub [u8; 128]);

impl Default for CmsgBuf {
    fn default() -> Self {
        CmsgBuf([0; 128])
    }
}

/// Room for any socket address the kernel hands back.
#[repr(C, align(8))]
pub struct NameBuf(pub [u8; std::mem::size_of::<libc::sockaddr_storage>()]);

impl Default for NameBuf {
    fn default() -> Self {
        NameBuf([0; std::mem::size_of::<libc::sockaddr_storage>()])
    }
}

/// What one `recvmsg` returned; the bytes are in the caller's buffers.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Payload bytes written into the data buffer.
    pub len: usize,
    /// Valid bytes of the source address in the `NameBuf`.
    pub name_len: usize,
    /// Valid bytes of control data in the `CmsgBuf`.
    pub ctrl_len: usize,
    /// The datagram was longer than the buffer (MSG_TRUNC).
    pub truncated: bool,
    /// The control data did not fit (MSG_CTRUNC).
    pub ctrl_truncated: bool,
}

/// One `recvmsg` on a non-blocking datagram socket.
// msg_controllen is size_t on glibc, socklen_t on musl: the casts are needed on one of them.
#[allow(clippy::unnecessary_cast)]
pub fn recv_msg(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    name: &mut NameBuf,
    ctrl: &mut CmsgBuf,
) -> io::Result<RecvMeta> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every field we rely on is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.0.as_mut_ptr().cast();
    msg.msg_namelen = name.0.len() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.0.as_mut_ptr().cast();
    msg.msg_controllen = ctrl.0.len() as _;
    // SAFETY: `fd` is a live socket; `msg` points at `iov`, `name` and `ctrl`,
    // all valid and writable for their stated lengths for the whole call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel reports lengths; they are clamped to the buffers they
    // describe, so a caller's slice by them is always in bounds (without
    // MSG_TRUNC in the flags a datagram's length never exceeds the buffer;
    // a longer one is reported by MSG_TRUNC in msg_flags).
    Ok(RecvMeta {
        len: (n as usize).min(buf.len()),
        name_len: (msg.msg_namelen as usize).min(name.0.len()),
        ctrl_len: (msg.msg_controllen as usize).min(ctrl.0.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        ctrl_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h; libc names it for
/// Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Attaches a classic BPF program to the SO_REUSEPORT group of `fd`: for
/// each new connection it returns the index of the socket in the group that
/// takes it (an index past the end falls back to the kernel's hash).
pub fn attach_reuseport_cbpf(fd: BorrowedFd<'_>, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len().try_into().map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        // The kernel only reads the instructions (it copies them in).
        filter: prog.as_ptr().cast_mut(),
    };
    // `fprog` points at `prog.len()` instructions that outlive the call.
    set_option(fd, libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two c_ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe buffer of `size` bytes (F_SETPIPE_SZ); returns the size granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    // SAFETY: `fd` is a live pipe borrowed for the call; F_SETPIPE_SZ takes an int.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Moves up to `len` bytes from `from` to `to` without copying them through
/// user space (SPLICE_F_MOVE | SPLICE_F_NONBLOCK); one side must be a pipe.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are live and borrowed for the call; null offsets mean
    // "use the file position", which is what sockets and pipes require.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Most datagrams one [`recv_mmsg`] call takes.
pub const MMSG_MAX: usize = 32;

/// Address and control space for one datagram of a [`recv_mmsg`] batch;
/// its payload goes to the slot's chunk of the caller's data buffer.
pub struct RecvSlot {
    pub name: NameBuf,
    pub ctrl: CmsgBuf,
    pub meta: RecvMeta,
}

impl Default for RecvSlot {
    fn default() -> RecvSlot {
        RecvSlot {
            name: NameBuf::default(),
            ctrl: CmsgBuf::default(),
            meta: RecvMeta { len: 0, name_len: 0, ctrl_len: 0, truncated: false, ctrl_truncated: false },
        }
    }
}

/// Up to `slots.len()` (at most [`MMSG_MAX`]) datagrams in one `recvmmsg`
/// on a non-blocking socket; slot `i`'s payload lands in
/// `data[i * chunk..(i + 1) * chunk]`. Returns how many slots were filled.
#[allow(clippy::unnecessary_cast)] // see recv_msg
pub fn recv_mmsg(
    fd: BorrowedFd<'_>,
    data: &mut [u8],
    chunk: usize,
    slots: &mut [RecvSlot],
) -> io::Result<usize> {
    // A zero chunk would make every slot's buffer empty (and chunks_exact panic).
    let chunk = chunk.max(1);
    let n = slots.len().min(MMSG_MAX).min(data.len() / chunk);
    // SAFETY: iovec and mmsghdr are plain data; the used entries are set below.
    let mut iov: [libc::iovec; MMSG_MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MMSG_MAX] = unsafe { std::mem::zeroed() };
    for ((i, slot), buf) in slots.iter_mut().take(n).enumerate().zip(data.chunks_exact_mut(chunk)) {
        iov[i] = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = slot.name.0.as_mut_ptr().cast();
        h.msg_namelen = slot.name.0.len() as libc::socklen_t;
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
        h.msg_control = slot.ctrl.0.as_mut_ptr().cast();
        h.msg_controllen = slot.ctrl.0.len() as _;
    }
    // SAFETY: `fd` is a live socket; the first `n` headers point at buffers
    // owned by `slots`, `data` and `iov`, valid and writable for their
    // stated lengths for the whole call; a null timeout is allowed.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // Lengths are clamped to the buffers they describe (see `recv_msg`), and
    // the count to the slots offered, so a caller indexes and slices by them
    // without a check of its own.
    let got = (got as usize).min(n);
    for (slot, m) in slots.iter_mut().zip(msgs.iter()).take(got) {
        let h = &m.msg_hdr;
        slot.meta = RecvMeta {
            len: (m.msg_len as usize).min(chunk),
            name_len: (h.msg_namelen as usize).min(slot.name.0.len()),
            ctrl_len: (h.msg_controllen as usize).min(slot.ctrl.0.len()),
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            ctrl_truncated: h.msg_flags & libc::MSG_CTRUNC != 0,
        };
    }
    Ok(got)
}

/// Sends SIGUSR2 to this process: the control thread asks the main thread
/// (waiting in [`wait_signal`]) for an upgrade the way a service manager does.
pub fn raise_upgrade() -> io::Result<()> {
    // SAFETY: kill(2) with our own pid and a valid signal number reads no memory.
    if unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets `fd` survive exec (clears FD_CLOEXEC), or not: how the new process
/// of an upgrade inherits its end of the handover socket.
pub fn set_inheritable(fd: BorrowedFd<'_>, inherit: bool) -> io::Result<()> {
    let flag = if inherit { 0 } else { libc::FD_CLOEXEC };
    // SAFETY: `fd` is a live descriptor; F_SETFD takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flag) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MSG: usize = 250;

/// Control-message space for [`MAX_FDS_PER_MSG`] descriptors, aligned as
/// `cmsghdr` requires.
#[repr(C, align(8))]
struct FdCmsg([u8; 1024 + 64]);

/// Sends one message (a SOCK_SEQPACKET record) with `fds` attached
/// (SCM_RIGHTS): at most [`MAX_FDS_PER_MSG`] of them.
// msg_controllen is size_t on glibc, socklen_t on musl: the casts are needed on one of them.
#[allow(clippy::unnecessary_cast)]
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut ctrl = FdCmsg([0; 1024 + 64]);
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as libc::c_uint;
    // SAFETY: msghdr is plain data; every field we rely on is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = ctrl.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `ctrl`, large enough for one header
        // and MAX_FDS_PER_MSG ints (checked above), so the first header is valid.
        let cmsg = unsafe { &mut *libc::CMSG_FIRSTHDR(&msg) };
        cmsg.cmsg_level = libc::SOL_SOCKET;
        cmsg.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: CMSG_LEN only computes a size.
        cmsg.cmsg_len = unsafe { libc::CMSG_LEN(payload) } as _;
        // SAFETY: CMSG_DATA points inside `ctrl` with room for `payload`
        // bytes (space computed above); `raw` holds exactly that many.
        unsafe {
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload as usize)
        };
    }
    // SAFETY: `sock` is a live socket; `msg` points at `iov` (valid for
    // `data.len()` bytes, only read) and `ctrl`, both alive for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives one message (a SOCK_SEQPACKET record) and the descriptors
/// attached to it, which arrive close-on-exec and owned by the caller.
/// Blocks as the socket does; `(0, [])` at the peer's end.
#[allow(clippy::unnecessary_cast)]
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut ctrl = FdCmsg([0; 1024 + 64]);
    // SAFETY: msghdr is plain data; every field we rely on is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.0.as_mut_ptr().cast();
    msg.msg_controllen = ctrl.0.len() as _;
    // SAFETY: `sock` is a live socket; `msg` points at `iov` and `ctrl`,
    // valid and writable for their stated lengths for the whole call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_control/msg_controllen, which the kernel set.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a non-null header within the control buffer.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes a size.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (h.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<libc::c_int>();
            // SAFETY: CMSG_DATA of a valid header points at its payload.
            let data = unsafe { libc::CMSG_DATA(c) };
            for i in 0..count {
                // SAFETY: `count` ints fit the payload the kernel wrote; read unaligned.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                // SAFETY: SCM_RIGHTS hands us new descriptors that nothing else owns.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `msg` and `c` are valid as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors truncated (MSG_CTRUNC)"));
    }
    Ok(((n as usize).min(buf.len()), fds))
}

/// Takes ownership of descriptor `fd`, inherited across exec and named in
/// the environment (the handover socket of an upgrade); the caller checked
/// that it is open, and nothing else in the process owns it.
pub fn adopt_fd(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and, inherited at exec and
    // named only by the environment, owned by no other object here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::cmsg::orig_dst_from_cmsgs;

    /// Builds control data with libc's CMSG_* macros, as C code would, and
    /// checks the pure walker agrees with them (differential fixture).
    fn with_cmsg_macros(level: i32, kind: i32, payload: &[u8], pre: Option<(i32, i32, &[u8])>) -> Vec<u8> {
        let mut buf = CmsgBuf::default();
        // SAFETY: msghdr is plain data; only the control fields are used.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = buf.0.len() as _;
        let mut total = 0usize;
        // SAFETY: msg's control pointer/length describe `buf`, which outlives this.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        for (lv, ty, data) in pre.into_iter().chain(std::iter::once((level, kind, payload))) {
            assert!(!c.is_null());
            // SAFETY: `c` points inside `buf` at an aligned header with room
            // for `data` (the buffer is large enough for these fixtures).
            unsafe {
                (*c).cmsg_level = lv;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
            }
            // SAFETY: pure arithmetic on a length.
            total += unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
            // SAFETY: `c` and `msg` describe `buf`; CMSG_NXTHDR returns null at the end.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        buf.0[..total].to_vec()
    }

    fn sockaddr_bytes(a: std::net::SocketAddr) -> Vec<u8> {
        let s = socket2::SockAddr::from(a);
        // SAFETY: `as_ptr` points at `len` valid bytes owned by `s`.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) }.to_vec()
    }

    /// Datagrams longer than a slot's chunk: the lengths handed back never
    /// exceed the buffers they describe (and the truncation is reported),
    /// however many datagrams wait; a zero chunk is not a panic.
    #[test]
    fn recv_mmsg_lengths_stay_within_their_buffers() {
        use std::os::fd::AsFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // A lost datagram fails the deadline below instead of hanging.
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..3u8 {
            tx.send_to(&[i; 100], to).unwrap();
        }
        let mut slots: Vec<RecvSlot> = (0..2).map(|_| RecvSlot::default()).collect();
        let mut data = vec![0u8; 2 * 10];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = 0;
        while seen < 3 {
            assert!(std::time::Instant::now() < deadline, "datagrams did not arrive");
            let got = match recv_mmsg(rx.as_fd(), &mut data, 10, &mut slots) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            assert!(got <= slots.len());
            for (k, s) in slots.iter().take(got).enumerate() {
                assert_eq!(s.meta.len, 10);
                assert!(s.meta.truncated);
                assert!(s.meta.name_len <= s.name.0.len() && s.meta.ctrl_len <= s.ctrl.0.len());
                assert_eq!(&data[k * 10..(k + 1) * 10], &[(seen + k) as u8; 10]);
            }
            seen += got;
        }
        tx.send_to(&[7; 5], to).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            assert!(std::time::Instant::now() < deadline, "datagram did not arrive");
            match recv_mmsg(rx.as_fd(), &mut data, 0, &mut slots) {
                Ok(0) => {}
                Ok(got) => {
                    assert!(got <= slots.len());
                    assert!(slots[0].meta.len <= 1 && slots[0].meta.truncated);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn walker_agrees_with_libc_cmsg_macros() {
        let v4: std::net::SocketAddr = "203.0.113.10:5353".parse().unwrap();
        let ctrl = with_cmsg_macros(libc::SOL_IP, libc::IP_ORIGDSTADDR, &sockaddr_bytes(v4), None);
        assert_eq!(orig_dst_from_cmsgs(&ctrl), Ok(v4));
        let v6: std::net::SocketAddr = "[2001:db8:203::10]:53".parse().unwrap();
        let ttl = 64i32.to_ne_bytes();
        let pre = Some((libc::SOL_IPV6, libc::IPV6_HOPLIMIT, &ttl[..]));
        let ctrl = with_cmsg_macros(libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR, &sockaddr_bytes(v6), pre);
        assert_eq!(orig_dst_from_cmsgs(&ctrl), Ok(v6));
    }
}
