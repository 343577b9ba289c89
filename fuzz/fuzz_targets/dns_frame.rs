//! DNS-over-TCP framing on arbitrary stream bytes: never panics, never
//! claims more bytes than it was given, and what it parses re-encodes to
//! the same bytes.
#![no_main]
use egressd::wire::Parse;
use egressd::wire::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Walk the stream frame by frame, as the worker does.
    let mut at = 0;
    let mut out = [0u8; 512];
    while at <= data.len() {
        match dns::parse_frame(&data[at..]) {
            Ok(Parse::Done(msg, n)) => {
                assert!(!msg.is_empty() && n == msg.len() + 2 && at + n <= data.len());
                assert_eq!(&data[at + 2..at + n], msg);
                assert_eq!(dns::encode_len(msg.len()), Ok([data[at], data[at + 1]]));
                if let Ok(w) = dns::encode_frame(msg, &mut out) {
                    assert_eq!(&out[..w], &data[at..at + n]);
                }
                assert_eq!(dns::message_id(msg).is_some(), msg.len() >= 2);
                let _ = dns::is_query(msg);
                at += n;
            }
            Ok(Parse::Incomplete) => {
                let rest = &data[at..];
                assert!(
                    rest.len() < 2 || usize::from(u16::from_be_bytes([rest[0], rest[1]])) > rest.len() - 2
                );
                break;
            }
            Err(e) => {
                assert_eq!(e, dns::DnsFrameError::ZeroLength);
                assert_eq!(&data[at..at + 2], &[0, 0]);
                break;
            }
        }
    }
    // The payload taken as one UDP datagram.
    if dns::is_query(data) {
        assert!(data.len() >= dns::HEADER_LEN && data[2] & 0x80 == 0);
    }
});
