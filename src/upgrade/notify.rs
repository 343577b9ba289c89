//! Telling systemd about the daemon's state: the `sd_notify(3)` protocol,
//! without libsystemd and without `unsafe`.
//!
//! Under `Type=notify`, systemd gives the service a datagram socket in
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) and reads
//! newline-separated `KEY=VALUE` lines from it. An upgrade needs it: the
//! running daemon starts the new binary as its child, says
//! `MAINPID=<child>` so that systemd follows the new process instead of
//! stopping the unit when the old one exits, and the child says `READY=1`
//! once it serves. The child inherits `NOTIFY_SOCKET`, so it is never
//! unset here.
//!
//! Out of the environment, [`notify`] is a no-op (`Ok(false)`): egressd run
//! by hand or under `Type=simple` behaves as before.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV: &str = "NOTIFY_SOCKET";

/// One line of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// `READY=1`: start-up (or a reload) is done.
    Ready,
    /// `STOPPING=1`: shutting down, e.g. draining after an upgrade.
    Stopping,
    /// `RELOADING=1`: a config reload began; `Ready` ends it. (Only
    /// `Type=notify-reload` would also want `MONOTONIC_USEC=`.)
    Reloading,
    /// `MAINPID=<pid>`: systemd should follow this process from now on.
    MainPid(u32),
    /// `STATUS=<text>`: free text for `systemctl status`, one line.
    Status(String),
}

/// The datagram for `state`, one `KEY=VALUE` line each, joined by `\n`.
pub fn message(state: &[State]) -> String {
    let lines: Vec<String> = state
        .iter()
        .map(|s| match s {
            State::Ready => "READY=1".to_string(),
            State::Stopping => "STOPPING=1".to_string(),
            State::Reloading => "RELOADING=1".to_string(),
            State::MainPid(pid) => format!("MAINPID={pid}"),
            // A newline would start a new KEY=VALUE line, and systemd drops
            // a datagram that holds a NUL byte: both become spaces.
            State::Status(text) => format!("STATUS={}", text.replace(['\n', '\r', '\0'], " ")),
        })
        .collect();
    lines.join("\n")
}

/// Sends `state` to the socket named in `NOTIFY_SOCKET`: `Ok(true)` when
/// sent, `Ok(false)` when the variable is unset or empty (not run by
/// systemd with `Type=notify`), an error when it names no usable socket or
/// the send fails.
pub fn notify(state: &[State]) -> io::Result<bool> {
    let Some(value) = std::env::var_os(ENV) else { return Ok(false) };
    if value.is_empty() {
        return Ok(false);
    }
    let socket = value.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{ENV}={value:?} is not UTF-8"))
    })?;
    notify_to(socket, state)?;
    Ok(true)
}

/// Sends `state` as one datagram to `socket`, written as in
/// `NOTIFY_SOCKET`: an absolute path or `@abstract-name`.
pub fn notify_to(socket: &str, state: &[State]) -> io::Result<()> {
    let addr = address(socket)?;
    let msg = message(state);
    let sent = UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        let text = format!("{ENV} {socket}: sent {sent} of {} bytes", msg.len());
        return Err(io::Error::new(io::ErrorKind::WriteZero, text));
    }
    Ok(())
}

/// The socket address `NOTIFY_SOCKET` names. Other forms systemd may use
/// (`vsock:`, for VMs) are refused rather than guessed at.
fn address(socket: &str) -> io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) if !name.is_empty() => SocketAddr::from_abstract_name(name),
        Some(_) => Err(refused(socket, "an abstract name after '@' is empty")),
        None if socket.starts_with('/') => SocketAddr::from_pathname(socket),
        None => Err(refused(socket, "neither an absolute path nor an @abstract name")),
    }
}

fn refused(socket: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{ENV}={socket:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A name no other test (nor a concurrent test run) uses.
    fn unique(tag: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!("egressd-notify-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    fn recv(listener: &UnixDatagram) -> Vec<u8> {
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn message_ready_and_mainpid() {
        assert_eq!(message(&[State::Ready, State::MainPid(1234)]), "READY=1\nMAINPID=1234");
        assert_eq!(message(&[State::Stopping, State::Reloading]), "STOPPING=1\nRELOADING=1");
        assert_eq!(message(&[]), "");
    }

    #[test]
    fn message_status_is_one_line() {
        let status = State::Status("draining 3 flows\nold pid 7\r\0".into());
        assert_eq!(message(&[State::Ready, status]), "READY=1\nSTATUS=draining 3 flows old pid 7  ");
    }

    #[test]
    fn notify_to_path_socket_sends_exact_bytes() {
        let path = std::env::temp_dir().join(unique("path"));
        let listener = UnixDatagram::bind(&path).unwrap();
        let state = [State::MainPid(4321), State::Status("upgrading".into())];
        let sent = notify_to(path.to_str().unwrap(), &state);
        let got = recv(&listener);
        let _ = std::fs::remove_file(&path);
        sent.unwrap();
        assert_eq!(got, b"MAINPID=4321\nSTATUS=upgrading");
    }

    #[test]
    fn notify_to_abstract_socket_sends_exact_bytes() {
        let name = unique("abstract");
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(&format!("@{name}"), &[State::Ready, State::MainPid(99)]).unwrap();
        assert_eq!(recv(&listener), b"READY=1\nMAINPID=99");
    }

    #[test]
    fn notify_to_refuses_relative_and_odd_addresses() {
        for socket in ["run/systemd/notify", "notify", "@", "vsock:2:1234"] {
            let err = notify_to(socket, &[State::Ready]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{socket}");
            assert!(err.to_string().contains(ENV), "{err}");
        }
    }

    #[test]
    fn notify_to_absent_socket_is_an_error() {
        let path = std::env::temp_dir().join(unique("absent"));
        assert!(notify_to(path.to_str().unwrap(), &[State::Ready]).is_err());
    }
}
