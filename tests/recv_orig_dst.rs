//! The real kernel path for UDP original destinations, without privileges:
//! IP_RECVORIGDSTADDR works on a plain socket, where the original
//! destination is simply the socket's own address.
//!
//! Both families must run: a host without an IPv6 loopback fails the IPv6
//! test (with the reason) rather than passing it with nothing checked.
//! libtest has no run-time skip, and an `#[ignore]` would hide the check on
//! every host that can run it; egressd's IPv6 path (and the netns suites)
//! need IPv6 anyway.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use egressd::sys::{self, CmsgBuf, NameBuf};
use egressd::wire::{cmsg, sockaddr};

fn round_trip(bind: &str) -> (SocketAddr, SocketAddr, SocketAddr) {
    let rx = UdpSocket::bind(bind)
        .unwrap_or_else(|e| panic!("cannot bind {bind}: {e} (no loopback of this family here: not tested)"));
    sys::set_recv_orig_dst(rx.as_fd(), rx.local_addr().unwrap().is_ipv6()).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind(bind).unwrap();
    tx.send_to(b"hello", to).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Wait until readable (recv_msg itself never blocks).
    let mut peek = [0u8; 1];
    let _ = rx.peek_from(&mut peek).unwrap();
    let (mut buf, mut name, mut ctrl) = ([0u8; 64], NameBuf::default(), CmsgBuf::default());
    let m = sys::recv_msg(rx.as_fd(), &mut buf, &mut name, &mut ctrl).unwrap();
    assert_eq!(&buf[..m.len], b"hello");
    assert!(!m.truncated && !m.ctrl_truncated);
    let src = sockaddr::parse(&name.0[..m.name_len]).expect("source address");
    let dst = cmsg::orig_dst_from_cmsgs(&ctrl.0[..m.ctrl_len]).expect("original destination");
    (src, dst, to)
}

#[test]
fn ipv4_loopback_reports_source_and_original_destination() {
    let (src, dst, to) = round_trip("127.0.0.1:0");
    assert_eq!(dst, to);
    assert!(src.ip().is_loopback());
}

#[test]
fn ipv6_loopback_reports_original_destination() {
    let (src, dst, to) = round_trip("[::1]:0");
    assert_eq!(dst, to);
    assert!(src.ip().is_loopback());
}

#[test]
fn truncation_is_reported() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    sys::set_recv_orig_dst(rx.as_fd(), false).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = rx.peek_from(&mut [0u8; 1]).unwrap();
    let (mut buf, mut name, mut ctrl) = ([0u8; 10], NameBuf::default(), CmsgBuf::default());
    let m = sys::recv_msg(rx.as_fd(), &mut buf, &mut name, &mut ctrl).unwrap();
    assert!(m.truncated, "a 100-byte datagram into 10 bytes must say MSG_TRUNC");
    assert_eq!(m.len, 10);
}
