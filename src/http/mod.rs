//! HTTP/1.1 framing of our own: httparse for heads, strict validation on top, a streaming
//! chunked scanner, and the header rules a proxy applies when it rewrites a head.
//! (monoio-http's h1 codec buffers whole bodies and mis-frames HEAD/304; see the README.)

pub mod chunked;
pub mod coding;
pub mod error_page;
pub mod path;
pub mod request;
pub mod response;

use std::ops::Range;

/// The position of `part` (a sub-slice of `whole`, as httparse hands out) as a range of
/// `whole`; an empty range when `part` does not lie inside `whole` (httparse returns a static
/// empty reason phrase for `HTTP/1.1 200` and for reasons with non-ASCII bytes).
pub fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let base = whole.as_ptr() as usize;
    let start = part.as_ptr() as usize;
    if start < base || start + part.len() > base + whole.len() {
        return 0..0;
    }
    start - base..start - base + part.len()
}

/// A header field as byte ranges into the buffer its head was parsed from.
#[derive(Debug, Clone, Default)]
pub struct HeaderRange {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

#[inline]
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Trims optional whitespace (SP / HTAB) at both ends.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Whether header `name` is the one a variable names (`x_env` in `http_x_env` or
/// `upstream_http_x_env`): case-insensitive, `_` standing for `-`. A name spelled with an
/// underscore (`X_Env`) does not match: nginx ignores such headers by default, and an edge
/// that strips `X-Env` would let `X_Env` through.
pub fn names_header(name: &[u8], var: &str) -> bool {
    name.len() == var.len()
        && name.iter().zip(var.bytes()).all(|(&a, b)| {
            let a = a.to_ascii_lowercase();
            (a == b && a != b'_') || (a == b'-' && b == b'_')
        })
}

/// A form or query component decoded (`a+b%20c` is `a b c`): `+` is a space, `%XY` a byte;
/// a `%` without two hex digits after it stays as it is.
pub fn decode_form_component(s: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| eq_ignore_case(trim(t), token))
}

/// Parses a Content-Length value: 1*DIGIT, or a list of identical 1*DIGIT values
/// (RFC 9110 §8.6). Signs, spaces inside numbers, empty values and overflow are refused.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + (d - b'0') as u64);
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers the proxy re-frames itself.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
    ];
    HOP.iter().any(|h| eq_ignore_case(name, h))
        || (name.len() > 6 && eq_ignore_case(&name[..6], b"proxy-"))
}

/// Standard reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    // RFC 9110's phrases, and the other registered codes a plugin may answer with.
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// Appends `n` in decimal: what `write!(out, "{n}")` does, without the formatting machinery
/// (twice per proxied response, where it was a visible share of the CPU).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(Decimal::new(n).as_bytes());
}

/// `n` in decimal, written without `core::fmt` (whose machinery cost a header value tens of
/// nanoseconds on the request path).
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    /// Appends the digits to `out`.
    pub fn push_to(&self, out: &mut String) {
        // Digits only: valid UTF-8 (the check is cheaper than pushing char by char).
        out.push_str(std::str::from_utf8(self.as_bytes()).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_rules() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"42, 42"), Some(42));
        assert_eq!(parse_content_length(b"42, 43"), None);
        assert_eq!(parse_content_length(b"+42"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }

    #[test]
    fn hop_by_hop() {
        assert!(is_hop_by_hop(b"Keep-Alive"));
        assert!(is_hop_by_hop(b"Proxy-Authorization"));
        assert!(!is_hop_by_hop(b"Proxy"));
        assert!(!is_hop_by_hop(b"Content-Type"));
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 204, 65_536, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
