//! Parsing and validating a request head from a client (RFC 9112).
//!
//! httparse does the tokenising; this module adds the rules a proxy must enforce on top so that
//! it never forwards a request whose framing the next hop could read differently: one
//! Content-Length or one Transfer-Encoding (never both), only `chunked` as a transfer coding,
//! no bare LF, exactly one valid Host, and size limits on the request line and head.
//!
//! The parsed head keeps byte ranges into the connection's read buffer instead of copies, and
//! its vectors are reused from request to request, so parsing does not allocate.

use super::{contains_token, eq_ignore_case, parse_content_length, trim, HeaderRange};
use std::mem::MaybeUninit;
use std::ops::Range;

/// Limits applied while reading a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Keep header names containing `_` (nginx `underscores_in_headers`); when false they
    /// are dropped from the parsed head, so they are neither forwarded nor matched.
    pub underscores_in_headers: bool,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    #[default]
    None,
    Length(u64),
    Chunked,
}

/// A request refused before it reached any upstream; carries the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub reason: &'static str,
}

impl RequestError {
    /// The client did not complete its head within `client_header_timeout`.
    pub const HEAD_TIMEOUT: RequestError = RequestError {
        status: 408,
        reason: "timed out reading the request head",
    };

    const fn bad(reason: &'static str) -> Self {
        RequestError {
            status: 400,
            reason,
        }
    }
}

/// A validated request head, as ranges into the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Range<usize>,
    /// Full request target as sent (origin-form after absolute-form is split off).
    pub target: Range<usize>,
    /// Path part of `target` (before `?`).
    pub path: Range<usize>,
    /// Query string without `?` (empty range when absent).
    pub query: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<HeaderRange>,
    /// Length of the head including the final CRLFCRLF.
    pub len: usize,
    pub body: BodyFraming,
    /// Host from the Host header or the absolute-form target, port included as sent.
    pub host: Range<usize>,
    /// The client asked to close (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Indices into `headers` of the Connection header fields (their tokens name hop-by-hop
    /// headers to drop).
    pub connection: Vec<usize>,
    pub is_head: bool,
    pub idempotent: bool,
}

/// Result of one parse attempt over the bytes received so far.
pub enum Parsed {
    Complete,
    /// More bytes are needed.
    Partial,
}

impl RequestHead {
    /// Parses `buf`. On `Complete`, `self` describes the head at `buf[..self.len]`.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, RequestError> {
        // Size limits first, independent of httparse's view: an endless request line is a 414,
        // an endless head a 431.
        let line_end = memchr(b'\n', buf);
        match line_end {
            None if buf.len() > limits.max_request_line => {
                return Err(RequestError {
                    status: 414,
                    reason: "request line too long",
                })
            }
            Some(n) if n > limits.max_request_line => {
                return Err(RequestError {
                    status: 414,
                    reason: "request line too long",
                })
            }
            _ => {}
        }

        // Uninitialised header slots: initialising 128 of them per request costs more than
        // parsing a typical head.
        let mut storage: [MaybeUninit<httparse::Header<'_>>; 128] =
            [const { MaybeUninit::uninit() }; 128];
        let header_slots = limits.max_headers.clamp(1, storage.len());
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut storage[..header_slots]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > limits.max_header_size {
                    return Err(RequestError {
                        status: 431,
                        reason: "request header fields too large",
                    });
                }
                return Ok(Parsed::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(RequestError {
                    status: 431,
                    reason: "too many header fields",
                })
            }
            Err(httparse::Error::Version) if well_formed_version(buf) => {
                return Err(RequestError {
                    status: 505,
                    reason: "HTTP version not supported",
                })
            }
            Err(_) => return Err(RequestError::bad("malformed request head")),
        };
        if len > limits.max_header_size {
            return Err(RequestError {
                status: 431,
                reason: "request header fields too large",
            });
        }
        let head = &buf[..len];
        if has_bare_lf(head) {
            return Err(RequestError::bad("bare LF in request head"));
        }

        let range_of = |s: &[u8]| super::range_in(buf, s);

        self.len = len;
        self.minor_version = req.version.unwrap_or(1);
        let method = req.method.unwrap_or("");
        self.method = range_of(method.as_bytes());
        self.is_head = method == "HEAD";
        self.idempotent = matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        );
        if method == "CONNECT" {
            return Err(RequestError {
                status: 405,
                reason: "CONNECT is not supported",
            });
        }

        self.headers.clear();
        self.connection.clear();
        self.body = BodyFraming::None;
        self.close = false;
        self.expect_continue = false;
        let mut host: Option<Range<usize>> = None;
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut saw_te = false;
        let mut keep_alive = false;

        for h in req.headers.iter() {
            if !limits.underscores_in_headers && memchr(b'_', h.name.as_bytes()).is_some() {
                continue;
            }
            let name = range_of(h.name.as_bytes());
            let value = range_of(h.value);
            let idx = self.headers.len();
            self.headers.push(HeaderRange {
                name: name.clone(),
                value: value.clone(),
            });
            let n = h.name.as_bytes();
            let v = trim(h.value);
            // Only a handful of names matter here; their lengths tell most others apart cheaply.
            if !matches!(n.len(), 4 | 6 | 10 | 14 | 17) {
                continue;
            }
            if eq_ignore_case(n, b"host") {
                if host.is_some() {
                    return Err(RequestError::bad("duplicate Host header"));
                }
                if !valid_host(v) {
                    return Err(RequestError::bad("invalid Host header"));
                }
                host = Some(range_of(v));
            } else if eq_ignore_case(n, b"content-length") {
                let cl =
                    parse_content_length(v).ok_or(RequestError::bad("invalid Content-Length"))?;
                if content_length.is_some_and(|prev| prev != cl) {
                    return Err(RequestError::bad("conflicting Content-Length headers"));
                }
                content_length = Some(cl);
            } else if eq_ignore_case(n, b"transfer-encoding") {
                saw_te = true;
                for coding in v.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        continue;
                    }
                    if chunked {
                        // Anything after chunked (or chunked twice) is malformed.
                        return Err(RequestError::bad("chunked must be the final coding"));
                    }
                    if eq_ignore_case(coding, b"chunked") {
                        chunked = true;
                    } else {
                        return Err(RequestError {
                            status: 501,
                            reason: "unsupported transfer coding",
                        });
                    }
                }
            } else if eq_ignore_case(n, b"connection") {
                self.connection.push(idx);
                if contains_token(v, b"close") {
                    self.close = true;
                }
                if contains_token(v, b"keep-alive") {
                    keep_alive = true;
                }
            } else if eq_ignore_case(n, b"expect") {
                if eq_ignore_case(v, b"100-continue") {
                    self.expect_continue = true;
                } else {
                    return Err(RequestError {
                        status: 417,
                        reason: "unsupported expectation",
                    });
                }
            }
        }

        if saw_te {
            if content_length.is_some() {
                return Err(RequestError::bad(
                    "both Content-Length and Transfer-Encoding present",
                ));
            }
            if self.minor_version == 0 {
                return Err(RequestError::bad(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if !chunked {
                return Err(RequestError::bad("empty Transfer-Encoding"));
            }
            self.body = BodyFraming::Chunked;
        } else if let Some(cl) = content_length {
            // `Length(0)` is kept (not `None`): the upstream gets `Content-Length: 0`, which
            // servers that insist on a length for a POST need.
            self.body = BodyFraming::Length(cl);
        }
        if self.minor_version == 0 && !keep_alive {
            self.close = true;
        }
        // No body, or an HTTP/1.0 client (which cannot take a 1xx): nothing to expect.
        if matches!(self.body, BodyFraming::None | BodyFraming::Length(0))
            || self.minor_version == 0
        {
            self.expect_continue = false;
        }

        // Request target: origin-form, absolute-form (its authority replaces Host) or `*`.
        let target = req.path.unwrap_or("").as_bytes();
        let mut target_range = range_of(target);
        if target.first() == Some(&b'/') {
        } else if target == b"*" {
            if method != "OPTIONS" {
                return Err(RequestError::bad("asterisk-form is only for OPTIONS"));
            }
        } else if let Some(rest) = strip_scheme(target) {
            let auth_end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let authority = &rest[..auth_end];
            if authority.is_empty() || !valid_host(authority) {
                return Err(RequestError::bad("invalid absolute-form target"));
            }
            if self.minor_version == 1 && host.is_none() {
                // RFC 9112 §3.2: an HTTP/1.1 request without a Host field is refused, also
                // in absolute form.
                return Err(RequestError::bad("missing Host header"));
            }
            if rest.get(auth_end) == Some(&b'?') {
                return Err(RequestError::bad("absolute-form target without a path"));
            }
            host = Some(range_of(authority));
            target_range = range_of(&rest[auth_end..]);
            if target_range.is_empty() {
                // "http://host" means "/"; point at a static "/" via an empty path marker.
                target_range = usize::MAX..usize::MAX;
            }
        } else {
            return Err(RequestError::bad("invalid request target"));
        }
        self.target = target_range.clone();
        if self.target.start != usize::MAX && !valid_target(&buf[self.target.clone()]) {
            return Err(RequestError::bad("invalid character in request target"));
        }
        if self.target.start == usize::MAX {
            self.path = self.target.clone();
            self.query = 0..0;
        } else {
            let t = &buf[self.target.clone()];
            match memchr(b'?', t) {
                Some(q) => {
                    self.path = self.target.start..self.target.start + q;
                    self.query = self.target.start + q + 1..self.target.end;
                }
                None => {
                    self.path = self.target.clone();
                    self.query = self.target.end..self.target.end;
                }
            }
        }

        match host {
            Some(h) => self.host = h,
            None if self.minor_version == 1 => {
                return Err(RequestError::bad("missing Host header"));
            }
            None => self.host = 0..0,
        }
        Ok(Parsed::Complete)
    }

    /// The request target to forward (origin-form).
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        if self.target.start == usize::MAX {
            b"/"
        } else {
            &buf[self.target.clone()]
        }
    }

    /// The path used for routing.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        if self.path.start == usize::MAX {
            b"/"
        } else {
            &buf[self.path.clone()]
        }
    }

    /// The protocol an HTTP/1.1 client asks to switch to (`Upgrade`, with `upgrade` in
    /// `Connection`), for a request without a body.
    pub fn upgrade<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        if self.minor_version != 1
            || self.body != BodyFraming::None
            || !self.listed_in_connection(buf, b"upgrade")
        {
            return None;
        }
        self.headers
            .iter()
            .find(|h| crate::http::eq_ignore_case(&buf[h.name.clone()], b"upgrade"))
            .map(|h| crate::http::trim(&buf[h.value.clone()]))
            .filter(|v| !v.is_empty())
    }

    /// Whether header `idx` is named in a Connection header (and so is hop-by-hop).
    pub fn listed_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection
            .iter()
            .any(|&i| contains_token(&buf[self.headers[i].value.clone()], name))
    }
}

/// Whether the request line ends in a syntactically valid `HTTP/d.d` (so a version error means
/// an unsupported version rather than a malformed line).
fn well_formed_version(buf: &[u8]) -> bool {
    let line = &buf[..memchr(b'\n', buf).unwrap_or(buf.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts.as_slice(), [m, t, v] if !m.is_empty() && !t.is_empty()
        && v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit()
        && v[6] == b'.' && v[7].is_ascii_digit())
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    if t.len() > 7 && eq_ignore_case(&t[..7], b"http://") {
        Some(&t[7..])
    } else if t.len() > 8 && eq_ignore_case(&t[..8], b"https://") {
        Some(&t[8..])
    } else {
        None
    }
}

/// Which bytes a request target may hold: bit 0 = in the path, bit 1 = in the query.
const TARGET_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        // RFC 3986 pchar: unreserved, pct-encoded ('%'), sub-delims, ':' and '@'; plus '/'.
        let pchar = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        // The query also takes '?', and the characters browsers send there unencoded (the
        // WHATWG query percent-encode set leaves them alone); none has a meaning in a path.
        let query = pchar || matches!(c, b'?' | b'[' | b']' | b'{' | b'}' | b'|' | b'^' | b'`');
        t[b] = (pchar as u8) | ((query as u8) << 1);
        b += 1;
    }
    t
};

/// Whether an origin-form target (`/path?query`) holds only characters RFC 3986 allows. `#`
/// (a fragment is never sent), `\`, spaces, controls, quotes, `<`/`>` and bytes >= 0x80 are
/// refused: backends disagree on what they mean (WHATWG parsers read `\` as `/`, many
/// frameworks cut the path at `#`), so a path routed one way could be served another.
pub(crate) fn valid_target(t: &[u8]) -> bool {
    let mut mask = 1;
    for &c in t {
        if c == b'?' {
            mask = 2;
        }
        if TARGET_BYTES[c as usize] & mask == 0 {
            return false;
        }
    }
    true
}

/// Host values: reg-name or IP literal with an optional port; no userinfo, path or spaces.
fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// A LF not preceded by CR: httparse tolerates it, but another parser may not split lines the
/// same way, so it is refused.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|pos| pos == 0 || head[pos - 1] != b'\r')
}

#[inline]
pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_line: 100,
        max_header_size: 400,
        max_headers: 10,
        underscores_in_headers: false,
    };

    fn parse(raw: &[u8]) -> Result<RequestHead, RequestError> {
        let mut h = RequestHead::default();
        match h.parse(raw, &LIMITS)? {
            Parsed::Complete => Ok(h),
            Parsed::Partial => Err(RequestError {
                status: 0,
                reason: "partial",
            }),
        }
    }

    #[test]
    fn parses_simple_get() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(&raw[h.path.clone()], b"/a/b");
        assert_eq!(&raw[h.query.clone()], b"x=1");
        assert_eq!(&raw[h.host.clone()], b"example.com");
        assert_eq!(h.body, BodyFraming::None);
        assert!(!h.close);
    }

    #[test]
    fn absolute_form() {
        let raw = b"GET http://a.test:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(&raw[h.host.clone()], b"a.test:8080");
        assert_eq!(h.target(raw), b"/p?q");
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let e = parse(raw).err().unwrap_or(RequestError {
                status: 0,
                reason: "accepted",
            });
            assert_eq!(e.status, *status, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn refuses_characters_rfc3986_does_not_allow() {
        for target in [
            "/admin#/../public/x",
            "/napi/..\\admin",
            "/caf\u{e9}",
            "/a\"b",
            "/a<b>",
            "/a{b}",
            "/a|b",
            "/a?x=#y",
            "/a?x=\\",
            "/a?x=\u{e9}",
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let e = parse(raw.as_bytes()).err();
            assert_eq!(e.map(|e| e.status), Some(400), "{target} must be refused");
        }
        for target in [
            "/a-b_c.d~e/%41!$&'()*+,;=:@/",
            "/s?q=a/b?c&d[]=1&e={x}|^`",
            "/",
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(parse(raw.as_bytes()).is_ok(), "{target} must pass");
        }
    }

    #[test]
    fn keeps_an_explicit_zero_length() {
        let h = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::Length(0));
        assert!(!h.expect_continue);
    }

    #[test]
    fn size_limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
        assert_eq!(parse(long.as_bytes()).err().unwrap().status, 414);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(500)
        );
        assert_eq!(parse(big.as_bytes()).err().unwrap().status, 431);
    }
}
