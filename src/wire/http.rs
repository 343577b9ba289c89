//! HTTP CONNECT (RFC 9110 §9.3.6): the request we send and the response
//! head we read back, with Basic proxy authentication (RFC 7617).

use std::fmt;
use std::net::SocketAddr;

use super::Parse;

/// The most we read looking for the end of a response head.
pub const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// No end of head within [`MAX_HEAD`] bytes.
    HeadTooLong,
    /// The first line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A status other than 2xx: 407 (auth), 403, 502, ...
    Status(u16),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HttpError::HeadTooLong => write!(f, "proxy response head longer than {MAX_HEAD} bytes"),
            HttpError::BadStatusLine => f.write_str("not an HTTP response"),
            HttpError::Status(407) => {
                f.write_str("proxy replied 407: proxy authentication required or rejected")
            }
            HttpError::Status(s) => write!(f, "proxy replied {s}"),
        }
    }
}

/// The CONNECT request for `dst`, with Basic credentials when given.
pub fn encode_connect(dst: SocketAddr, auth: Option<(&str, &str)>) -> Vec<u8> {
    let mut r = format!("CONNECT {dst} HTTP/1.1\r\nHost: {dst}\r\n").into_bytes();
    if let Some((user, pass)) = auth {
        r.extend_from_slice(b"Proxy-Authorization: Basic ");
        let mut cred = Vec::with_capacity(user.len() + 1 + pass.len());
        cred.extend_from_slice(user.as_bytes());
        cred.push(b':');
        cred.extend_from_slice(pass.as_bytes());
        base64(&cred, &mut r);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// Standard base64 with padding, appended to `out`.
pub fn base64(input: &[u8], out: &mut Vec<u8>) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63]);
        out.push(A[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 { A[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if chunk.len() > 2 { A[n as usize & 63] } else { b'=' });
    }
}

/// The response head at the start of `buf`: `Done(status, head length)`
/// for a 2xx status, `Incomplete` until the blank line arrives. Bytes after
/// the head belong to the tunnel. Accepts CRLF or bare LF line ends.
pub fn parse_response_head(buf: &[u8]) -> Result<Parse<u16>, HttpError> {
    // Reject non-HTTP early, without waiting for a head that never ends.
    let prefix = &buf[..buf.len().min(5)];
    if prefix != &b"HTTP/"[..prefix.len()] {
        return Err(HttpError::BadStatusLine);
    }
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let end = find_head_end(window);
    let Some(head_len) = end else {
        return if buf.len() >= MAX_HEAD { Err(HttpError::HeadTooLong) } else { Ok(Parse::Incomplete) };
    };
    let line_end = window.iter().position(|&b| b == b'\n').unwrap_or(head_len);
    let line = &window[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // HTTP/1.x SP 3DIGIT [SP reason]
    let ok_version =
        line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[7].is_ascii_digit() && line[8] == b' ';
    if !ok_version {
        return Err(HttpError::BadStatusLine);
    }
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|&b| b != b' ') {
        return Err(HttpError::BadStatusLine);
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(200..300).contains(&status) {
        return Err(HttpError::Status(status));
    }
    Ok(Parse::Done(status, head_len))
}

/// Length of the head including its blank line, if it is complete.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'\n') {
        let nl = i + p;
        // The next line is empty: "\n\n" or "\n\r\n".
        match b.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_plain_and_with_auth() {
        let r = encode_connect("203.0.113.10:80".parse().unwrap(), None);
        assert_eq!(r, b"CONNECT 203.0.113.10:80 HTTP/1.1\r\nHost: 203.0.113.10:80\r\n\r\n");
        let r = encode_connect("[2001:db8::1]:443".parse().unwrap(), Some(("Aladdin", "open sesame")));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn base64_padding() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            let mut v = Vec::new();
            base64(i.as_bytes(), &mut v);
            assert_eq!(v, o.as_bytes());
        }
    }

    #[test]
    fn heads() {
        let ok = b"HTTP/1.1 200 Connection established\r\nProxy-agent: x\r\n\r\nHELLO";
        assert_eq!(parse_response_head(ok), Ok(Parse::Done(200, ok.len() - 5)));
        for cut in 0..ok.len() - 5 {
            assert_eq!(parse_response_head(&ok[..cut]), Ok(Parse::Incomplete), "cut {cut}");
        }
        assert_eq!(parse_response_head(b"HTTP/1.0 200\n\n"), Ok(Parse::Done(200, 14)));
        assert_eq!(parse_response_head(b"HTTP/1.1 407 Proxy Auth\r\n\r\n"), Err(HttpError::Status(407)));
        assert_eq!(parse_response_head(b"HTTP/1.1 502 Bad\r\n\r\n"), Err(HttpError::Status(502)));
        assert_eq!(parse_response_head(b"\x05\x00"), Err(HttpError::BadStatusLine));
        assert_eq!(parse_response_head(b"HTTP/2 200\r\n\r\n"), Err(HttpError::BadStatusLine));
        assert_eq!(parse_response_head(b"HTTP/1.1 2x0 OK\r\n\r\n"), Err(HttpError::BadStatusLine));
        assert_eq!(parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n"), Err(HttpError::BadStatusLine));
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse_response_head(&long), Err(HttpError::HeadTooLong));
    }
}
