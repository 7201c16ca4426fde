//! The client request head parser (`http::request`): httparse tokenises, our rules refuse what
//! a next hop could frame differently. The harness checks that the stricter layer only ever
//! narrows httparse (what we accept, httparse accepts the same way), that each strict rule
//! holds on every accepted head, that refusals carry a defined status, and that a head gives
//! the same answer whole and cut anywhere before its end (a client's head arrives in pieces).

use super::{assert_no_bare_lf, codings, fields, split_points, values};
use crate::http::request::{BodyFraming, Limits, Parsed, RequestError, RequestHead};
use crate::http::{eq_ignore_case, parse_content_length};

/// The production defaults, and small limits (with `underscores_in_headers`) so that the
/// size limits are reachable with short inputs.
const LIMITS: [Limits; 2] = [
    Limits {
        max_request_line: 8192,
        max_header_size: 32 * 1024,
        max_headers: 100,
        underscores_in_headers: false,
    },
    Limits {
        max_request_line: 64,
        max_header_size: 256,
        max_headers: 8,
        underscores_in_headers: true,
    },
];

/// The statuses a refused head may be answered with.
const STATUSES: [u16; 7] = [400, 405, 414, 417, 431, 501, 505];

/// A head that sets every flag, parsed first into a reused `RequestHead` (a connection's
/// head is reused from request to request: nothing of it may leak into the next).
const DIRTY: &[u8] = b"POST http://x.test/a?b HTTP/1.1\r\nHost: y\r\nConnection: close, x\r\n\
Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-A: 1\r\n\r\n";

/// Target `request_head`: the input is what a client sent on a fresh connection.
pub fn request_head(data: &[u8]) {
    for limits in &LIMITS {
        check(data, limits);
    }
}

type Outcome = Result<Option<RequestHead>, RequestError>;

fn parse_into(mut head: RequestHead, buf: &[u8], limits: &Limits) -> Outcome {
    match head.parse(buf, limits)? {
        Parsed::Complete => Ok(Some(head)),
        Parsed::Partial => Ok(None),
    }
}

fn check(buf: &[u8], limits: &Limits) {
    let ours = parse_into(RequestHead::default(), buf, limits);
    let mut dirty = RequestHead::default();
    let _ = dirty.parse(DIRTY, limits);
    let reused = parse_into(dirty, buf, limits);
    assert_eq!(
        format!("{ours:?}"),
        format!("{reused:?}"),
        "a reused head parses differently"
    );
    match ours {
        Err(e) => refused(buf, limits, e),
        Ok(None) => {
            assert!(
                buf.len() <= limits.max_header_size,
                "a partial head past max_header_size must be a 431"
            );
            let line = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
            assert!(
                line <= limits.max_request_line,
                "a long request line must be a 414"
            );
        }
        Ok(Some(head)) => {
            agrees_with_httparse(buf, limits, &head);
            strict_rules_hold(buf, &head);
            for k in split_points(head.len) {
                let part = parse_into(RequestHead::default(), &buf[..k], limits);
                assert!(
                    matches!(part, Ok(None)),
                    "the first {k} bytes of an accepted {}-byte head gave {part:?}",
                    head.len
                );
            }
        }
    }
}

fn refused(buf: &[u8], limits: &Limits, e: RequestError) {
    assert!(STATUSES.contains(&e.status), "undefined status {e:?}");
    assert!(!e.reason.is_empty());
    let slots = limits.max_headers.clamp(1, 128);
    let mut headers = vec![httparse::EMPTY_HEADER; slots];
    let theirs = httparse::Request::new(&mut headers).parse(buf);
    match e.reason {
        "malformed request head" => assert!(theirs.is_err(), "httparse accepts: {theirs:?}"),
        "HTTP version not supported" => {
            assert_eq!(theirs.err(), Some(httparse::Error::Version))
        }
        _ => {}
    }
}

/// What we accept, httparse accepts, with the same method, target, version and fields (less
/// the underscored names we drop when told to).
fn agrees_with_httparse(buf: &[u8], limits: &Limits, head: &RequestHead) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("we accepted a head httparse gives {other:?}"),
    };
    assert_eq!(n, head.len, "head length");
    assert!(head.len <= buf.len() && head.len <= limits.max_header_size);
    assert!(req.headers.len() <= limits.max_headers.clamp(1, 128));
    assert_eq!(
        &buf[head.method.clone()],
        req.method.unwrap_or_default().as_bytes()
    );
    assert_eq!(Some(head.minor_version), req.version);
    let target = req.path.unwrap_or_default().as_bytes();
    if matches!(target.first(), Some(b'/' | b'*')) {
        assert_eq!(head.target(buf), target);
    } else {
        // Absolute form: ours is what follows the authority ("/" when nothing does).
        let rest = head.target(buf);
        assert!(target.ends_with(rest) || (rest == b"/" && head.target.start == usize::MAX));
    }
    let expected: Vec<(&[u8], &[u8])> = req
        .headers
        .iter()
        .filter(|h| limits.underscores_in_headers || !h.name.contains('_'))
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    assert_eq!(fields(buf, &head.headers), expected, "header fields");
}

/// Each strict rule, checked again from the fields themselves.
fn strict_rules_hold(buf: &[u8], head: &RequestHead) {
    assert_no_bare_lf(&buf[..head.len]);
    let method = &buf[head.method.clone()];
    assert_ne!(method, b"CONNECT");
    assert_eq!(head.is_head, method == b"HEAD");
    let named = |name: &[u8]| values(buf, &head.headers, name);
    assert!(named(b"host").len() <= 1, "two Host fields");
    let te = named(b"transfer-encoding");
    let cl = named(b"content-length");
    if !te.is_empty() {
        assert!(cl.is_empty(), "both Content-Length and Transfer-Encoding");
        assert_eq!(head.minor_version, 1, "Transfer-Encoding in HTTP/1.0");
        let codings = codings(&te);
        assert!(codings.len() == 1 && eq_ignore_case(codings[0], b"chunked"));
        assert_eq!(head.body, BodyFraming::Chunked);
    } else if let Some(first) = cl.first() {
        let n = parse_content_length(first).expect("accepted an invalid Content-Length");
        assert!(cl.iter().all(|v| parse_content_length(v) == Some(n)));
        assert_eq!(head.body, BodyFraming::Length(n));
    } else {
        assert_eq!(head.body, BodyFraming::None);
    }
    if head.expect_continue {
        assert!(head.minor_version == 1);
        assert!(!matches!(
            head.body,
            BodyFraming::None | BodyFraming::Length(0)
        ));
    }
    if head.minor_version == 1 {
        assert!(!head.host.is_empty(), "HTTP/1.1 without a host");
    }
    let host = &buf[head.host.clone()];
    assert!(host.len() <= 255);
    assert!(host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)));
    if head.target.start != usize::MAX {
        let target = &buf[head.target.clone()];
        let query_at = memchr::memchr(b'?', target).unwrap_or(target.len());
        for (i, &b) in target.iter().enumerate() {
            let never = b <= b' ' || b >= 0x7f || b"#\\\"<>".contains(&b);
            let path_only = i < query_at && b"[]{}|^`?".contains(&b);
            assert!(!never && !path_only, "byte {b:#x} in the target");
        }
        let mut joined = buf[head.path.clone()].to_vec();
        if head.query.start != head.path.end {
            joined.push(b'?');
        }
        joined.extend_from_slice(&buf[head.query.clone()]);
        assert_eq!(joined, target, "path and query do not make the target");
    }
}
