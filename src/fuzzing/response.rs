//! The upstream response head parser (`http::response`). A response whose end the gateway
//! cannot be sure of must be refused (the client would read the rest as the next response),
//! so the harness checks that what we accept httparse accepts identically, that the framing
//! we choose follows RFC 9112 §6.3 from the fields themselves, and that a head cut anywhere
//! before its end is only ever "partial".

use super::{assert_no_bare_lf, codings, fields, split_points, values};
use crate::http::response::{Parsed, ResponseFraming, ResponseHead};
use crate::http::{contains_token, eq_ignore_case, parse_content_length};

/// The production limit on a response head, and a small one to reach it with short inputs.
const MAX_SIZES: [usize; 2] = [32 * 1024, 200];

/// Target `response_head`: the input is what an upstream sent, answering a GET and a HEAD.
pub fn response_head(data: &[u8]) {
    for max in MAX_SIZES {
        for is_head in [false, true] {
            check(data, is_head, max);
        }
    }
}

type Outcome = Result<Option<ResponseHead>, &'static str>;

fn parse(buf: &[u8], is_head: bool, max: usize) -> Outcome {
    let mut head = ResponseHead::default();
    match head.parse(buf, is_head, max)? {
        Parsed::Complete => Ok(Some(head)),
        Parsed::Partial => Ok(None),
    }
}

fn check(buf: &[u8], is_head: bool, max: usize) {
    match parse(buf, is_head, max) {
        Err(why) => {
            assert!(!why.is_empty());
            if why == "malformed upstream response head" {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let theirs = httparse::Response::new(&mut headers).parse(buf);
                assert!(theirs.is_err(), "httparse accepts: {theirs:?}");
            }
        }
        Ok(None) => assert!(buf.len() <= max, "a partial head past the limit"),
        Ok(Some(head)) => {
            agrees_with_httparse(buf, max, &head);
            framing_follows_the_fields(buf, is_head, &head);
            for k in split_points(head.len) {
                let part = parse(&buf[..k], is_head, max);
                assert!(
                    matches!(part, Ok(None)),
                    "the first {k} bytes of an accepted {}-byte head gave {part:?}",
                    head.len
                );
            }
        }
    }
}

fn agrees_with_httparse(buf: &[u8], max: usize, head: &ResponseHead) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("we accepted a head httparse gives {other:?}"),
    };
    assert_eq!(n, head.len);
    assert!(head.len <= buf.len() && head.len <= max);
    assert_no_bare_lf(&buf[..n]);
    assert_eq!(Some(head.status), resp.code);
    assert!((100..=599).contains(&head.status));
    assert_eq!(Some(head.minor_version), resp.version);
    // httparse hands out a static "" for some reasons (none, or non-ASCII bytes): ours is
    // then an empty range.
    let reason = resp.reason.unwrap_or_default().as_bytes();
    assert_eq!(&buf[head.reason.clone()], reason);
    let theirs: Vec<(&[u8], &[u8])> = resp
        .headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    assert_eq!(fields(buf, &head.headers), theirs, "header fields");
}

fn framing_follows_the_fields(buf: &[u8], is_head: bool, head: &ResponseHead) {
    let named = |name: &[u8]| values(buf, &head.headers, name);
    let te = named(b"transfer-encoding");
    let cl = named(b"content-length");
    let cl_value = cl.first().map(|v| parse_content_length(v));
    if let Some(n) = cl_value {
        let n = n.expect("accepted an invalid Content-Length");
        assert!(cl.iter().all(|v| parse_content_length(v) == Some(n)));
    }
    let codings = codings(&te);
    assert!(codings.len() <= 1 && codings.iter().all(|c| eq_ignore_case(c, b"chunked")));
    let bodiless = is_head || (100..200).contains(&head.status) || matches!(head.status, 204 | 304);
    let expected = if bodiless {
        ResponseFraming::None
    } else if !te.is_empty() {
        assert!(cl.is_empty(), "both Content-Length and Transfer-Encoding");
        if codings.is_empty() {
            ResponseFraming::UntilClose
        } else {
            ResponseFraming::Chunked
        }
    } else if let Some(Some(n)) = cl_value {
        ResponseFraming::Length(n)
    } else {
        ResponseFraming::UntilClose
    };
    assert_eq!(head.framing(), expected);
    let close_asked = named(b"connection")
        .iter()
        .any(|v| contains_token(v, b"close"));
    let keep_alive = named(b"connection")
        .iter()
        .any(|v| contains_token(v, b"keep-alive"));
    let must_close = close_asked
        || expected == ResponseFraming::UntilClose
        || (head.minor_version == 0 && !keep_alive);
    assert_eq!(head.close, must_close, "close");
}
