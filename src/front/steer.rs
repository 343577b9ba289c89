//! Which worker serves a source, and the classic BPF program that makes the
//! kernel hand that source's connections to the front loop of the same
//! index.
//!
//! Every front loop has its own SO_REUSEPORT listener; left alone, the
//! kernel spreads new connections over them by a hash of the 4-tuple, so one
//! container's connections wake every front loop, and every front loop
//! feeds every worker. With the program attached, a source's connections are
//! all accepted by front `pick(source)` and handed to worker
//! `pick(source)`: one front loop per burst (fewer wake-ups per connection)
//! and front `i` talks to worker `i` only. The hash is 32-bit so that the
//! program (32-bit ALU) and [`pick`] compute the same index.
//!
//! UDP is not steered: TPROXY picks the socket without the packet, and the
//! kernel falls back to its hash there (the front hands datagrams to
//! `pick(source)` all the same).

use std::net::IpAddr;

/// Fibonacci hashing's multiplier for 32 bits (2^32 / golden ratio).
const GOLDEN: u32 = 0x9e37_79b9;

/// The source address folded to 32 bits: IPv4 as is, IPv6 as the xor of its
/// four words (as the program loads them from the IP header).
fn fold(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u32) ^ ((v >> 32) as u32) ^ ((v >> 64) as u32) ^ ((v >> 96) as u32)
        }
    }
}

/// The worker (and front loop) for a source: stable, spread evenly.
pub fn pick(ip: IpAddr, n: usize) -> usize {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    ((fold(ip).wrapping_mul(GOLDEN) >> 16) % n) as usize
}

fn op(code: u32, k: u32) -> libc::sock_filter {
    // Every code used here fits in 16 bits (linux/filter.h).
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

/// Loads the 32-bit word at `off` bytes into the IP header.
fn load_net(off: u32) -> libc::sock_filter {
    op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, (libc::SKF_NET_OFF as u32).wrapping_add(off))
}

/// The program for a listener of `n` front loops: returns [`pick`] of the
/// packet's source address.
pub fn program(ipv6: bool, n: usize) -> Vec<libc::sock_filter> {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut p = Vec::with_capacity(14);
    if ipv6 {
        // Source address: bytes 8..24 of the IPv6 header; X holds the xor so far.
        p.push(load_net(8));
        for off in [12, 16, 20] {
            p.push(op(libc::BPF_MISC | libc::BPF_TAX, 0));
            p.push(load_net(off));
            p.push(op(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X, 0));
        }
    } else {
        // Source address: bytes 12..16 of the IPv4 header.
        p.push(load_net(12));
    }
    p.push(op(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K, GOLDEN));
    p.push(op(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 16));
    p.push(op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n));
    p.push(op(libc::BPF_RET | libc::BPF_A, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::{Ipv6Addr, SocketAddr, TcpListener};
    use std::os::fd::AsFd;

    use socket2::{Domain, Socket, Type};

    /// Runs the instructions `program` emits on an IP header, as the kernel's
    /// classic BPF would (loads are big-endian).
    fn run(prog: &[libc::sock_filter], header: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        for i in prog {
            let code = u32::from(i.code);
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let off = i.k.wrapping_sub(libc::SKF_NET_OFF as u32) as usize;
                a = u32::from_be_bytes(header[off..off + 4].try_into().unwrap());
            } else if code == libc::BPF_MISC | libc::BPF_TAX {
                x = a;
            } else if code == libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X {
                a ^= x;
            } else if code == libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K {
                a = a.wrapping_mul(i.k);
            } else if code == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K {
                a >>= i.k;
            } else if code == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K {
                a %= i.k;
            } else if code == libc::BPF_RET | libc::BPF_A {
                return a;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
        panic!("no return");
    }

    #[test]
    fn the_program_picks_what_pick_picks() {
        for n in 1..6 {
            let v4 = program(false, n);
            let v6 = program(true, n);
            for i in 0..=255u8 {
                let ip4 = [10, 8, i, i.wrapping_mul(7)];
                let mut h4 = [0u8; 20];
                h4[12..16].copy_from_slice(&ip4);
                assert_eq!(run(&v4, &h4) as usize, pick(IpAddr::from(ip4), n));
                let ip6 = Ipv6Addr::new(0xfd08, 0, 0, u16::from(i), 0, 0, 0x10, u16::from(i) * 3);
                let mut h6 = [0u8; 40];
                h6[8..24].copy_from_slice(&ip6.octets());
                assert_eq!(run(&v6, &h6) as usize, pick(IpAddr::V6(ip6), n));
            }
        }
    }

    #[test]
    fn pick_is_stable_in_range_and_spread() {
        for n in 1..8 {
            for i in 0..=255u8 {
                let ip = IpAddr::from([10, 8, 0, i]);
                assert!(pick(ip, n) < n);
                assert_eq!(pick(ip, n), pick(ip, n));
            }
        }
        // Consecutive container addresses spread over two workers.
        let hits = (0..=255u8).filter(|i| pick(IpAddr::from([10, 8, 0, *i]), 2) == 0).count();
        assert!((96..=160).contains(&hits), "{hits}");
        let hits = (0..=255u8).filter(|i| pick(IpAddr::from([10, 8, 0, *i]), 3) == 0).count();
        assert!((60..=110).contains(&hits), "{hits}");
    }

    fn reuseport_listener(addr: SocketAddr) -> TcpListener {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(128).unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    }

    /// The kernel runs the program: every connection from a source is
    /// accepted by listener `pick(source)` (loopback, sources 127.0.0.x).
    #[test]
    fn the_kernel_steers_each_source_to_its_listener() {
        let first = reuseport_listener("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let second = reuseport_listener(addr);
        let listeners = [first, second];
        crate::sys::attach_reuseport_cbpf(listeners[1].as_fd(), &program(false, 2)).unwrap();
        let mut clients = Vec::new();
        let mut expected = [0usize; 2];
        for last in 2..34u8 {
            for _ in 0..3 {
                let src: SocketAddr = ([127, 0, 0, last], 0).into();
                let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                c.bind(&src.into()).unwrap();
                c.connect(&addr.into()).unwrap();
                expected[pick(src.ip(), 2)] += 1;
                clients.push(c);
            }
        }
        assert!(expected[0] > 0 && expected[1] > 0, "both listeners are expected some: {expected:?}");
        let mut got = [0usize; 2];
        for (i, l) in listeners.iter().enumerate() {
            loop {
                match l.accept() {
                    Ok((_, peer)) => {
                        assert_eq!(pick(peer.ip(), 2), i, "{peer} accepted by listener {i}");
                        got[i] += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }
        assert_eq!(got, expected);
    }
}
