//! Accepted client sockets inherit keepalive from egressd's listener, so no
//! setsockopt is spent per connection (checked on the real kernel path).

use std::time::{Duration, Instant};

use socket2::SockRef;

#[test]
fn accepted_sockets_inherit_keepalive() {
    let l = egressd::front::tcp_listener("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = l.local_addr().unwrap();
    let _c = std::net::TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (s, _) = loop {
        match l.accept() {
            Ok(x) => break x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    let r = SockRef::from(&s);
    assert!(r.keepalive().unwrap(), "SO_KEEPALIVE inherited");
    assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
    assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
    assert_eq!(r.tcp_keepalive_retries().unwrap(), 6);
}
