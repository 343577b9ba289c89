//! The per-wake-up read budget (issue 14) stops reading a UDP socket before
//! `WouldBlock` and relies on this: with edge-triggered epoll, a socket left
//! readable raises no new event by itself, but re-registering it
//! (`EPOLL_CTL_MOD`) queues one at once. Without the re-arm, the datagrams
//! left behind would wait for the next one to arrive.

use std::net::UdpSocket as StdUdp;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

#[test]
fn reregistering_a_still_readable_socket_raises_an_event() {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let mut rx = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    poll.registry().register(&mut rx, Token(7), Interest::READABLE).unwrap();
    let tx = StdUdp::bind("127.0.0.1:0").unwrap();
    for i in 0..3u8 {
        tx.send_to(&[i], to).unwrap();
    }
    let wait = Some(Duration::from_secs(2));
    poll.poll(&mut events, wait).unwrap();
    assert!(events.iter().any(|e| e.token() == Token(7) && e.is_readable()));
    // Read one of three: the budget ran out before WouldBlock.
    let mut buf = [0u8; 16];
    assert_eq!(rx.recv(&mut buf).unwrap(), 1);
    // Edge-triggered: no new event although two datagrams wait.
    poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
    assert!(events.is_empty(), "an edge-triggered socket re-reported itself");
    // The re-arm brings it back at once.
    poll.registry().reregister(&mut rx, Token(7), Interest::READABLE).unwrap();
    poll.poll(&mut events, wait).unwrap();
    assert!(events.iter().any(|e| e.token() == Token(7) && e.is_readable()), "no event after the re-arm");
    assert_eq!(rx.recv(&mut buf).unwrap(), 1);
    assert_eq!(rx.recv(&mut buf).unwrap(), 1);
    assert!(rx.recv(&mut buf).is_err());
}
