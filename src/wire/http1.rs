//! HTTP/1.1 responses as the Docker Engine API sends them over its Unix
//! socket: a response head, then a body framed by `Content-Length` or by
//! chunked transfer coding (RFC 9112 §7.1), or read to the end.
//!
//! Pure and bounded: [`parse_head`] reads at most [`MAX_HEAD`] bytes; the
//! [`Body`] decoder takes bytes in any split and writes the payload to the
//! caller's buffer, refusing chunk-size lines longer than [`MAX_CHUNK_LINE`]
//! and trailers longer than [`MAX_HEAD`]. Total sizes are the caller's to
//! bound (it knows whether it reads a list or an endless event stream).
//!
//! ```text
//!           ┌──────── size line ─────────┐
//!  Size ──► │ hex [;ext] CRLF            │── 0 ──► Trailer ── CRLF CRLF ──► Done
//!           └───► Data(n) ── n bytes ──► DataEnd ── CRLF ──► Size
//! ```

use std::fmt;

use super::Parse;

/// The most we read looking for the end of a response head (and trailers).
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest chunk-size line we accept (hex digits and extensions).
pub const MAX_CHUNK_LINE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http1Error {
    HeadTooLong,
    BadStatusLine,
    BadHeader,
    BadContentLength,
    BadChunk,
    ChunkLineTooLong,
}

impl fmt::Display for Http1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Http1Error::HeadTooLong => "response head too long",
            Http1Error::BadStatusLine => "not an HTTP/1.x response",
            Http1Error::BadHeader => "malformed header line",
            Http1Error::BadContentLength => "bad Content-Length",
            Http1Error::BadChunk => "bad chunked framing",
            Http1Error::ChunkLineTooLong => "chunk-size line too long",
        })
    }
}

/// How the body after the head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes.
    ToEof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
}

/// Parses a response head; `Done(head, n)` with `n` the head's length.
pub fn parse_head(buf: &[u8]) -> Result<Parse<Head>, Http1Error> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(Http1Error::HeadTooLong) } else { Ok(Parse::Incomplete) };
    };
    if end + 4 > MAX_HEAD {
        return Err(Http1Error::HeadTooLong);
    }
    let mut lines = buf[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().and_then(status_code).ok_or(Http1Error::BadStatusLine)?;
    let mut framing = Framing::ToEof;
    let mut length: Option<u64> = None;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or(Http1Error::BadHeader)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(Http1Error::BadHeader);
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
            if last.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = decimal(value).ok_or(Http1Error::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::BadContentLength);
            }
            length = Some(n);
        }
    }
    // RFC 9112 §6.3: chunked wins over a Content-Length; no body for 204/304.
    let framing = match (framing, length) {
        _ if status == 204 || status == 304 || (100..200).contains(&status) => Framing::Length(0),
        (Framing::Chunked, _) => Framing::Chunked,
        (_, Some(n)) => Framing::Length(n),
        (f, None) => f,
    };
    Ok(Parse::Done(Head { status, framing }, end + 4))
}

fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() || rest.first() != Some(&b' ') || rest.len() < 4 {
        return None;
    }
    let code = &rest[1..4];
    if !code.iter().all(u8::is_ascii_digit) || rest.get(4).is_some_and(|&b| b != b' ') {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body decoder's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ToEof,
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes a body framed as the head said, in any split of the input.
#[derive(Debug, Clone)]
pub struct Body {
    state: State,
    /// A partial size line, CRLF or trailer section being read.
    line: Vec<u8>,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::ToEof => State::ToEof,
        };
        Body { state, line: Vec::new() }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes `input`, appends the payload to `out`, and returns how many
    /// bytes of `input` were used (less than all only once the body is done:
    /// the rest belongs to the next response).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Http1Error> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match self.state {
                State::Done => break,
                State::ToEof => {
                    out.extend_from_slice(rest);
                    i = input.len();
                }
                State::Length(n) | State::Data(n) => {
                    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::DataEnd,
                        (_, l) => State::Data(l),
                    };
                }
                State::Size | State::DataEnd | State::Trailer => {
                    let limit = if self.state == State::Trailer { MAX_HEAD } else { MAX_CHUNK_LINE };
                    let nl = rest.iter().position(|&b| b == b'\n');
                    let take = nl.map_or(rest.len(), |p| p + 1);
                    if self.line.len() + take > limit {
                        return Err(if self.state == State::Trailer {
                            Http1Error::HeadTooLong
                        } else {
                            Http1Error::ChunkLineTooLong
                        });
                    }
                    self.line.extend_from_slice(&rest[..take]);
                    i += take;
                    if nl.is_some() {
                        self.end_of_line()?;
                    }
                }
            }
        }
        Ok(i)
    }

    /// A whole line (ending in `\n`) is in `self.line`.
    fn end_of_line(&mut self) -> Result<(), Http1Error> {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.state = match self.state {
            State::DataEnd if line.is_empty() => State::Size,
            State::DataEnd => return Err(Http1Error::BadChunk),
            State::Size => {
                let size = line.split(|&b| b == b';').next().map(trim).unwrap_or_default();
                if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Http1Error::BadChunk);
                }
                let n = size.iter().fold(0u64, |n, &d| n * 16 + u64::from(hex(d)));
                if n == 0 { State::Trailer } else { State::Data(n) }
            }
            // Trailer fields are read and dropped, up to the empty line.
            State::Trailer if line.is_empty() => State::Done,
            State::Trailer => {
                self.line.clear();
                return Ok(());
            }
            s => s,
        };
        self.line.clear();
        Ok(())
    }
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Parse<Head>, Http1Error> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn heads() {
        let h = "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n[";
        assert_eq!(head(h), Ok(Parse::Done(Head { status: 200, framing: Framing::Chunked }, h.len() - 1)));
        let h = "HTTP/1.0 404 Not Found\r\ncontent-length:  12 \r\n\r\n";
        assert_eq!(head(h), Ok(Parse::Done(Head { status: 404, framing: Framing::Length(12) }, h.len())));
        let h = "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n";
        assert_eq!(head(h).unwrap(), Parse::Done(Head { status: 200, framing: Framing::ToEof }, h.len()));
        let h = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(head(h).unwrap(), Parse::Done(Head { status: 204, framing: Framing::Length(0) }, h.len()));
        assert_eq!(head("HTTP/1.1 200 OK\r\nA: b\r\n"), Ok(Parse::Incomplete));
        assert_eq!(head("HTTP/2 200\r\n\r\n"), Err(Http1Error::BadStatusLine));
        assert_eq!(head("HTTP/1.1 20x OK\r\n\r\n"), Err(Http1Error::BadStatusLine));
        assert_eq!(head("HTTP/1.1 200 OK\r\nno colon\r\n\r\n"), Err(Http1Error::BadHeader));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(Http1Error::BadContentLength)
        );
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), Err(Http1Error::BadContentLength));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Err(Http1Error::HeadTooLong));
    }

    /// Feeds `input` split at every `step` bytes; the payload and what was left.
    fn decode(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), Http1Error> {
        let mut b = Body::new(framing);
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(step.max(1)) {
            let n = b.feed(part, &mut out)?;
            used += n;
            if n < part.len() {
                break;
            }
        }
        Ok((out, used, b.is_done()))
    }

    #[test]
    fn chunked_in_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nHTTP/1.1 next";
        let end = body.len() - "HTTP/1.1 next".len();
        for step in 1..=body.len() {
            let (out, used, done) = decode(Framing::Chunked, body, step).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert!(done);
            assert_eq!(used, end, "step {step}");
        }
        // Bare LF line ends are accepted.
        let (out, _, done) = decode(Framing::Chunked, b"3\nabc\n0\n\n", 2).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
    }

    #[test]
    fn chunked_errors() {
        assert_eq!(decode(Framing::Chunked, b"zz\r\n", 4).unwrap_err(), Http1Error::BadChunk);
        assert_eq!(decode(Framing::Chunked, b"3\r\nabcX\r\n", 9).unwrap_err(), Http1Error::BadChunk);
        assert_eq!(decode(Framing::Chunked, b"\r\n", 9).unwrap_err(), Http1Error::BadChunk);
        let long = "1".repeat(MAX_CHUNK_LINE + 1);
        assert_eq!(decode(Framing::Chunked, long.as_bytes(), 7).unwrap_err(), Http1Error::ChunkLineTooLong);
        assert_eq!(decode(Framing::Chunked, b"1234567890abcdef0\r\n", 4).unwrap_err(), Http1Error::BadChunk);
    }

    #[test]
    fn length_and_eof() {
        let (out, used, done) = decode(Framing::Length(3), b"abcdef", 2).unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"abc"[..], 3, true));
        let (out, used, done) = decode(Framing::ToEof, b"abcdef", 4).unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"abcdef"[..], 6, false));
        assert!(Body::new(Framing::Length(0)).is_done());
    }
}
