//! Parsing and validating a response head from an upstream.
//!
//! Upstream responses get the same scrutiny as client requests: if the gateway cannot tell for
//! sure where this response ends, it must not relay it (the client would read the leftover
//! bytes as the next response), so it answers 502 instead and discards the connection.

use super::request::has_bare_lf;
use super::{contains_token, eq_ignore_case, parse_content_length, trim, HeaderRange};
use std::ops::Range;

/// How the response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    /// Status line reason phrase.
    pub reason: Range<usize>,
    pub minor_version: u8,
    pub headers: Vec<HeaderRange>,
    pub len: usize,
    pub framing: Option<ResponseFraming>,
    /// The upstream will close after this response (or is HTTP/1.0 without keep-alive).
    pub close: bool,
    pub connection: Vec<usize>,
}

pub enum Parsed {
    Complete,
    Partial,
}

impl ResponseHead {
    /// Parses a response head in `buf` for a request with the given method flag.
    pub fn parse(
        &mut self,
        buf: &[u8],
        request_is_head: bool,
        max_size: usize,
    ) -> Result<Parsed, &'static str> {
        // Most responses carry a handful of headers: try a small (cheap to initialise) slot
        // array first, and the full one only when it is too small.
        let mut small = [httparse::EMPTY_HEADER; 24];
        let mut large;
        let mut resp = httparse::Response::new(&mut small);
        let mut first = resp.parse(buf);
        if let Err(httparse::Error::TooManyHeaders) = first {
            large = [httparse::EMPTY_HEADER; 128];
            resp = httparse::Response::new(&mut large);
            first = resp.parse(buf);
        }
        let len = match first {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > max_size {
                    return Err("upstream response head too large");
                }
                return Ok(Parsed::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err("too many upstream response headers")
            }
            Err(_) => return Err("malformed upstream response head"),
        };
        if len > max_size {
            return Err("upstream response head too large");
        }
        if has_bare_lf(&buf[..len]) {
            return Err("bare LF in upstream response head");
        }
        let range_of = |s: &[u8]| super::range_in(buf, s);
        self.len = len;
        self.status = resp.code.unwrap_or(0);
        self.minor_version = resp.version.unwrap_or(1);
        self.reason = range_of(resp.reason.unwrap_or("").as_bytes());
        if !(100..=599).contains(&self.status) {
            return Err("invalid upstream status code");
        }
        self.headers.clear();
        self.connection.clear();
        let mut content_length: Option<u64> = None;
        let mut saw_te = false;
        let mut chunked_last = false;
        let mut keep_alive = false;
        self.close = false;
        for h in resp.headers.iter() {
            let idx = self.headers.len();
            self.headers.push(HeaderRange {
                name: range_of(h.name.as_bytes()),
                value: range_of(h.value),
            });
            let n = h.name.as_bytes();
            let v = trim(h.value);
            if eq_ignore_case(n, b"content-length") {
                let cl = parse_content_length(v).ok_or("invalid upstream Content-Length")?;
                if content_length.is_some_and(|p| p != cl) {
                    return Err("conflicting upstream Content-Length headers");
                }
                content_length = Some(cl);
            } else if eq_ignore_case(n, b"transfer-encoding") {
                saw_te = true;
                for coding in v.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        continue;
                    }
                    if chunked_last || !eq_ignore_case(coding, b"chunked") {
                        // gzip/deflate transfer codings (which clients rarely accept) would
                        // be lost when the gateway re-frames the body: refuse them.
                        return Err("upstream used a transfer coding other than chunked");
                    }
                    chunked_last = true;
                }
            } else if eq_ignore_case(n, b"connection") {
                self.connection.push(idx);
                if contains_token(v, b"close") {
                    self.close = true;
                }
                if contains_token(v, b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        if self.minor_version == 0 && !keep_alive {
            self.close = true;
        }
        let bodiless = request_is_head
            || (100..200).contains(&self.status)
            || matches!(self.status, 204 | 304);
        self.framing = Some(if bodiless {
            ResponseFraming::None
        } else if saw_te {
            if content_length.is_some() {
                return Err("upstream sent both Content-Length and Transfer-Encoding");
            }
            if chunked_last {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            }
        } else if let Some(cl) = content_length {
            ResponseFraming::Length(cl)
        } else {
            ResponseFraming::UntilClose
        });
        if self.framing == Some(ResponseFraming::UntilClose) {
            self.close = true;
        }
        Ok(Parsed::Complete)
    }

    pub fn framing(&self) -> ResponseFraming {
        self.framing.unwrap_or(ResponseFraming::UntilClose)
    }

    pub fn listed_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection
            .iter()
            .any(|&i| contains_token(&buf[self.headers[i].value.clone()], name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> Result<ResponseHead, &'static str> {
        let mut r = ResponseHead::default();
        match r.parse(raw, head, 1024)? {
            Parsed::Complete => Ok(r),
            Parsed::Partial => Err("partial"),
        }
    }

    #[test]
    fn framing_rules() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert_eq!(r.framing(), ResponseFraming::Length(5));
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(r.framing(), ResponseFraming::None);
        let r = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.framing(), ResponseFraming::None);
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.framing(), ResponseFraming::Chunked);
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(r.framing(), ResponseFraming::UntilClose);
        assert!(r.close);
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert!(r.close);
    }

    #[test]
    fn refuses_bad_responses() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 999 What\r\n\r\n",
        ] {
            assert!(
                parse(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
