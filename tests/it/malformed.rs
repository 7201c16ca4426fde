//! Requests the gateway must refuse without forwarding a byte: ambiguous framing (request
//! smuggling), invalid syntax, oversized heads; plus the slow-client header timeout.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn malformed_requests_are_refused_and_never_forwarded() {
    let be = Backend::named("reached");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
        "max_request_line = 1024\nmax_header_size = 4096\nmax_headers = 20",
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(2000));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(5000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..30)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL + TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE + CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(), 400),
        ("CL list differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec(), 400),
        ("signed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".to_vec(), 400),
        ("hex CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello".to_vec(), 400),
        ("empty CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n".to_vec(), 400),
        ("TE not chunked last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE unknown coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nx\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk without CRLF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk size then garbage", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ignored-garbage\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk size 2^32", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100000000\r\nx\r\n0\r\n\r\n".to_vec(), 400),
        ("request line as trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  b\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello".to_vec(), 400),
        ("bare LF in head", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), 400),
        ("bare LF after header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n".to_vec(), 400),
        ("NUL in header value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".to_vec(), 400),
        ("control char in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: v\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("absolute-form without Host", b"GET http://a/ HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("absolute-form without path", b"GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("bad Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), 400),
        ("bad request target", b"GET nothing HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("bad version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), 505),
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), 400),
        ("long request line", long_uri.into_bytes(), 414),
        ("header too large", big_header.into_bytes(), 431),
        ("too many headers", many_headers.into_bytes(), 431),
    ];
    for (name, raw, status) in &cases {
        let mut c = gw.client();
        c.send_raw(raw);
        let r = c
            .read_response(false)
            .unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        assert!(r.json()["error_msg"].is_string(), "{name}");
        assert!(
            c.is_closed(),
            "{name}: connection must close after a refused request"
        );
    }
    assert_eq!(be.requests(), 0, "a malformed request reached the backend");
    // Still serving.
    assert_eq!(gw.get("/fine").status, 200);
}

#[test]
fn slow_client_gets_header_timeout() {
    let be = Backend::named("x");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
        "client_header_timeout = 0.5",
    );
    let mut c = gw.client();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n");
    let start = Instant::now();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(c.is_closed());
    assert_eq!(be.requests(), 0);
}
