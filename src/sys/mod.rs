//! The only `unsafe` in egressd: thin wrappers over syscalls that socket2
//! and std do not offer. One syscall per `unsafe` block, each with a
//! `SAFETY:` note on pointer validity and fd ownership.
#![allow(unsafe_code)]

use std::io;

/// Raises the soft limit on open files to the hard limit, so that a default
/// install can hold tens of thousands of flows. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit read by the kernel during the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// The signals egressd handles itself: stop (TERM, INT) and reload (HUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `set` is initialised; the signal numbers are valid.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks TERM, INT and HUP in the calling thread and every thread it
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
    Ok(if sig == libc::SIGHUP { Signal::Reload } else { Signal::Stop })
}
