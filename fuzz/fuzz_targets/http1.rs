//! Docker Engine API responses: the HTTP/1.1 head and the chunked body
//! decoder, fed in pieces of every size. Never a panic, never more consumed
//! than given, and a body split differently decodes to the same bytes.
#![no_main]
use egressd::wire::Parse;
use egressd::wire::http1::{Body, Framing, parse_head};
use libfuzzer_sys::fuzz_target;

fn decode(input: &[u8], step: usize) -> (Result<Vec<u8>, ()>, usize) {
    let mut b = Body::new(Framing::Chunked);
    let mut out = Vec::new();
    let mut used = 0;
    for part in input.chunks(step) {
        match b.feed(part, &mut out) {
            Ok(n) => {
                assert!(n <= part.len());
                used += n;
                if n < part.len() {
                    assert!(b.is_done());
                    break;
                }
            }
            Err(_) => return (Err(()), used),
        }
    }
    (Ok(out), used)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Done(_, n)) = parse_head(data) {
        assert!(n <= data.len());
    }
    let Some((&step, rest)) = data.split_first() else { return };
    let (a, used_a) = decode(rest, usize::from(step) + 1);
    let (b, used_b) = decode(rest, rest.len().max(1));
    if let (Ok(a), Ok(b)) = (&a, &b) {
        assert_eq!(a, b);
        assert_eq!(used_a, used_b);
    }
    assert!(a.is_ok() == b.is_ok());
    // The container list parser takes the body as it comes.
    let _ = egressd::docker::model::parse_list(rest, "egressd.tunnel", "egressd.class");
    let _ = egressd::docker::model::event_matters(rest);
});
