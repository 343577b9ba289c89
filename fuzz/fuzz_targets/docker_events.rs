//! The Docker `/events` stream as the follower reads it: a response head
//! gathered across reads, then the body (chunked, by length or to the
//! close) decoded by `wire::http1::Body`, then its payload cut into event
//! lines by `docker::model::EventLines` — a hostile or broken dockerd's
//! bytes, split anywhere. The head handling mirrors `docker::conn::Conn::take`.
//!
//! Never panics; the decoder never takes more than it is given, and leaves
//! bytes only once the body is done; the payload, and the error if any, do
//! not depend on the split (the whole stream in one read is the reference);
//! the payload is never longer than the stream; and each read reports an
//! event that matters exactly when one of its payload bytes ends an event
//! that matters (fed one byte at a time).
//!
//! Input: a control byte (a scale for the chunk lengths), a count `k`
//! (0..=15), `k` chunk lengths (used in turn; none: one read), the stream.
#![no_main]
use egressd::docker::model::EventLines;
use egressd::wire::Parse;
use egressd::wire::http1::{self, Body, Http1Error};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Http(Http1Error),
    Status(u16),
    /// An event line longer than `model::MAX_EVENT`.
    Event,
}

/// `Conn`'s reading state: the head first, then the body.
struct Reader {
    pending: Vec<u8>,
    body: Option<Body>,
}

impl Reader {
    fn take(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Fail> {
        if let Some(b) = &mut self.body {
            return feed(b, input, out);
        }
        self.pending.extend_from_slice(input);
        match http1::parse_head(&self.pending).map_err(Fail::Http)? {
            Parse::Incomplete => {
                assert!(self.pending.len() <= http1::MAX_HEAD, "an unbounded head");
                Ok(())
            }
            Parse::Done(h, used) => {
                assert!(used <= self.pending.len() && used <= http1::MAX_HEAD);
                if h.status != 200 {
                    return Err(Fail::Status(h.status));
                }
                let rest = self.pending.split_off(used.min(self.pending.len()));
                self.pending = Vec::new();
                feed(self.body.insert(Body::new(h.framing)), &rest, out)
            }
        }
    }

    fn done(&self) -> bool {
        self.body.as_ref().is_some_and(Body::is_done)
    }
}

fn feed(b: &mut Body, input: &[u8], out: &mut Vec<u8>) -> Result<(), Fail> {
    let before = out.len();
    let n = b.feed(input, out).map_err(Fail::Http)?;
    assert!(n <= input.len());
    assert!(n == input.len() || b.is_done(), "bytes left before the body's end");
    assert!(out.len() - before <= n, "more payload than input");
    Ok(())
}

/// Reads `stream` in pieces of `lens` bytes; the payload, how it ended, and
/// per read, the payload range it brought and whether an event mattered.
struct Run {
    payload: Vec<u8>,
    end: Result<(), Fail>,
    reads: Vec<(usize, usize, bool)>,
}

fn run(stream: &[u8], mut lens: impl FnMut() -> usize) -> Run {
    let mut r = Reader { pending: Vec::new(), body: None };
    let mut lines = EventLines::default();
    let mut run = Run { payload: Vec::new(), end: Ok(()), reads: Vec::new() };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < stream.len() && !r.done() {
        let len = lens().clamp(1, stream.len() - pos);
        let got = r.take(&stream[pos..pos + len], &mut out);
        pos += len;
        if let Err(e) = got {
            run.end = Err(e);
            run.payload.extend_from_slice(&out);
            break;
        }
        let Ok(due) = lines.feed(&out) else {
            run.end = Err(Fail::Event);
            break;
        };
        run.reads.push((run.payload.len(), run.payload.len() + out.len(), !due.is_empty()));
        run.payload.extend_from_slice(&out);
        out.clear();
    }
    run
}

fuzz_target!(|data: &[u8]| {
    let [ctl, k, rest @ ..] = data else { return };
    let k = usize::from(k % 16).min(rest.len());
    let (lens, stream) = rest.split_at(k);
    let scale = 1usize << (ctl % 8);
    let whole = run(stream, || usize::MAX);
    let mut i = 0;
    let split = run(stream, || {
        let l = lens.get(i % lens.len().max(1)).map_or(usize::MAX, |&b| (usize::from(b) + 1) * scale);
        i += 1;
        l
    });
    assert_eq!(split.end, whole.end, "the error depends on the split");
    assert_eq!(split.payload, whole.payload, "the payload depends on the split");
    assert!(whole.payload.len() <= stream.len());
    // Which payload bytes end an event that matters, one byte at a time.
    let mut lines = EventLines::default();
    let ends: Vec<bool> = whole
        .payload
        .iter()
        .map(|b| lines.feed(std::slice::from_ref(b)).is_ok_and(|d| !d.is_empty()))
        .collect();
    for &(from, to, relevant) in &split.reads {
        assert_eq!(relevant, ends[from..to].iter().any(|&e| e), "payload {from}..{to}");
    }
});
