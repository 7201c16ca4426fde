//! Forwarding behaviour: weighted balancing, keepalive pools, pass_host, hop-by-hop headers,
//! X-Forwarded-*, HEAD/204/304 framing, chunked both ways, HTTP/1.0, Expect: 100-continue.

use crate::harness::*;
use std::collections::HashMap;

fn single_upstream(addr: &str, extra: &str) -> String {
    upstream_config(&nodes_map(&[(addr, 1)]), extra)
}

#[test]
fn weights_three_to_one_interleaved() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&a.addr(), 3), (&b.addr(), 1)]),
        "",
    ));
    let mut client = gw.client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut sequence = String::new();
    for _ in 0..400 {
        let r = client.get("/x");
        assert_eq!(r.status, 200);
        sequence.push_str(&r.text());
        *counts.entry(r.text()).or_default() += 1;
    }
    let a_share = counts["a"] as f64 / 400.0;
    assert!((a_share - 0.75).abs() <= 0.05, "{counts:?}");
    // Smooth WRR interleaves: never more than three a's in a row.
    assert!(!sequence.contains("aaaa"), "bursty: {}", &sequence[..40]);
}

#[test]
fn weights_hold_across_connections_and_array_form() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start_with(
        &format!(
            r#"
[[upstreams]]
id = "u"
nodes = [{{ host = "127.0.0.1", port = {}, weight = 3 }}, {{ host = "127.0.0.1", port = {}, weight = 1 }}]
[[routes]]
uri = "/*"
upstream_id = "u"
"#,
            a.port, b.port
        ),
        "workers = 2",
    );
    let mut a_count = 0;
    for _ in 0..400 {
        if gw.get("/x").text() == "a" {
            a_count += 1;
        }
    }
    assert!(
        (a_count as f64 / 400.0 - 0.75).abs() <= 0.05,
        "a got {a_count}/400"
    );
}

#[test]
fn keepalive_pool_reuses_upstream_connections() {
    let be = Backend::named("x");
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    for _ in 0..5 {
        let mut c = gw.client();
        for _ in 0..60 {
            assert_eq!(c.get("/k").status, 200);
        }
    }
    assert_eq!(be.requests(), 300);
    assert!(
        be.connections() <= 3,
        "backend saw {} connections",
        be.connections()
    );
}

#[test]
fn keepalive_requests_limit_rotates_connections() {
    let be = Backend::named("x");
    let gw = Gateway::start(&single_upstream(
        &be.addr(),
        "keepalive_pool = { size = 4, idle_timeout = 60, requests = 10 }",
    ));
    let mut c = gw.client();
    for _ in 0..100 {
        assert_eq!(c.get("/k").status, 200);
    }
    assert_eq!(be.connections(), 10);
}

#[test]
fn pass_host_modes() {
    let be = Backend::start(|s| Reply::ok(s.header("host").unwrap_or("<none>")));
    let port = be.port;
    let body = format!(
        r#"
[[upstreams]]
id = "pass"
nodes = {{ "127.0.0.1:{port}" = 1 }}
[[upstreams]]
id = "node"
pass_host = "node"
nodes = {{ "localhost:{port}" = 1 }}
[[upstreams]]
id = "rewrite"
pass_host = "rewrite"
upstream_host = "internal.example"
nodes = {{ "127.0.0.1:{port}" = 1 }}
[[routes]]
uri = "/pass"
upstream_id = "pass"
[[routes]]
uri = "/node"
upstream_id = "node"
[[routes]]
uri = "/rewrite"
upstream_id = "rewrite"
"#
    );
    let gw = Gateway::start(&body);
    let mut c = gw.client();
    let h = [("Host", "client.example:8443")];
    assert_eq!(
        c.request("GET", "/pass", &h, b"").text(),
        "client.example:8443"
    );
    assert_eq!(
        c.request("GET", "/node", &h, b"").text(),
        format!("localhost:{port}")
    );
    assert_eq!(
        c.request("GET", "/rewrite", &h, b"").text(),
        "internal.example"
    );
}

#[test]
fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let be = Backend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nX-End: kept\r\n\r\nok"
                .to_vec(),
        )
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    let r = c.request(
        "GET",
        "/h?x=1",
        &[
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic Zm9v"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-End-To-End", "yes"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"] {
        assert!(
            r.header(gone).is_none(),
            "response kept {gone}: {}",
            r.raw_head
        );
    }
    assert_eq!(r.header("x-end"), Some("kept"));
    let seen = be.last();
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "upstream got {gone}: {:?}",
            String::from_utf8_lossy(&seen.raw_head)
        );
    }
    assert_eq!(seen.target, "/h?x=1");
    assert_eq!(seen.header("x-end-to-end"), Some("yes"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("test.local"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gw.port.to_string().as_str())
    );
    // The client connection stays usable.
    assert_eq!(c.get("/again").status, 200);
}

#[test]
fn bodiless_responses_are_framed_right() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/204" => Reply::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        "/304" => Reply::Raw(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n".to_vec(),
        ),
        "/204cl" => Reply::Raw(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec()),
        _ => Reply::Full(200, vec![], b"hello".to_vec()),
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    let r = c.request("HEAD", "/head", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    let r = c.get("/204");
    assert_eq!(r.status, 204);
    let r = c.get("/304");
    assert_eq!(r.status, 304);
    assert_eq!(r.header("content-length"), Some("5"));
    let r = c.get("/204cl");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("content-length"),
        None,
        "a 204 carries no Content-Length"
    );
    let r = c.get("/plain");
    assert_eq!(r.text(), "hello");
    assert!(c.leftover().is_empty());
}

#[test]
fn chunked_both_ways_with_extensions_and_trailers() {
    let be = Backend::start(|s| {
        let body = String::from_utf8_lossy(&s.body).to_string();
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        out.extend_from_slice(format!("{:x};ext=1\r\n{body}\r\n", body.len()).as_bytes());
        out.extend_from_slice(b"3\r\nend\r\n0\r\nX-Trailer: t\r\n\r\n");
        Reply::Raw(out)
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    let r = c.request(
        "POST",
        "/c",
        &[("Transfer-Encoding", "chunked")],
        b"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-Req-Trailer: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello worldend");
    assert_eq!(be.last().body, b"hello world");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    // Keep-alive survives a chunked exchange.
    let r = c.request("POST", "/c", &[], b"again");
    assert_eq!(r.text(), "againend");
}

#[test]
fn close_delimited_response_is_rechunked_for_http11_clients() {
    let be = Backend::start(|_| Reply::RawClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()));
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    let r = c.get("/eof");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "until the end");
    // Re-chunked for an HTTP/1.1 client: the connection stays usable.
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.get("/eof").text(), "until the end");
    // An HTTP/1.0 client gets it close-delimited.
    let mut c = gw.client();
    c.send_raw(b"GET /eof HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "until the end");
    assert!(r.header("transfer-encoding").is_none());
}

#[test]
fn http10_client_gets_dechunked_body_and_close() {
    let be = Backend::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nold \r\n6\r\nclient\r\n0\r\n\r\n".to_vec())
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    c.send_raw(b"GET /ten HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "old client");
    assert_eq!(r.version, 1, "the gateway answers as HTTP/1.1");
    assert!(r.header("transfer-encoding").is_none());
    assert_eq!(be.last().version, 1);

    // HTTP/1.0 with keep-alive and a Content-Length response keeps the connection.
    let be2 = Backend::named("ka");
    let gw2 = Gateway::start(&single_upstream(&be2.addr(), ""));
    let mut c = gw2.client();
    for _ in 0..3 {
        c.send_raw(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.text(), "ka");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let be = Backend::start(|s| Reply::ok(&format!("got {}", s.body_len)));
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    c.send_raw(
        b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.read_one(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send_raw(b"hello world");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "got 11");
    assert!(be.last().header("expect").is_none());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let be = Backend::start(|s| Reply::ok(&s.target));
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    c.send_raw(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: t\r\n\r\n");
    for want in ["/1", "/2", "/3"] {
        assert_eq!(c.read_response(false).unwrap().text(), want);
    }
}

#[test]
fn stale_pooled_connection_is_retried_invisibly() {
    // The backend answers properly, then closes the connection without saying so: the
    // gateway pools it, and finds it dead on the next request.
    let be = Backend::start(|s| {
        let body = s.target.clone();
        Reply::RawClose(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), "retries = 0"));
    let mut c = gw.client();
    for i in 0..20 {
        // Longer than a worker tick: the pooled connection is checked before reuse.
        std::thread::sleep(std::time::Duration::from_millis(60));
        let r = if i % 2 == 0 {
            c.get(&format!("/g{i}"))
        } else {
            c.request("POST", &format!("/p{i}"), &[], b"body")
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.text().ends_with(&i.to_string()));
    }
    assert_eq!(
        be.requests(),
        20,
        "every request reached the backend exactly once"
    );
}

#[test]
fn invalid_reason_phrases_are_relayed_safely() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/bare" => Reply::Raw(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        _ => Reply::Raw(b"HTTP/1.1 200 Tr\xe8s bien\r\nContent-Length: 2\r\n\r\nok".to_vec()),
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    for path in ["/bare", "/latin1", "/bare"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), "ok");
    }
}

#[test]
fn stray_bytes_on_an_idle_pooled_connection_never_reach_a_client() {
    // The backend answers a HEAD, then sends a whole extra "response" 100 ms later, while the
    // connection sits in the gateway's pool.
    let be = Backend::start(|s| {
        if s.method == "HEAD" {
            Reply::RawThen(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n".to_vec(),
                std::time::Duration::from_millis(100),
                b"HTTP/1.1 200 OK\r\nX-Poison: yes\r\nContent-Length: 8\r\n\r\npoisoned".to_vec(),
            )
        } else {
            Reply::ok(&format!("clean {}", s.target))
        }
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let r = gw.client().request("HEAD", "/head", &[], b"");
    assert_eq!(r.status, 200);
    std::thread::sleep(std::time::Duration::from_millis(250));
    for i in 0..3 {
        let r = gw.get(&format!("/after{i}"));
        assert_eq!(r.header("x-poison"), None, "a stray response leaked");
        assert_eq!(r.text(), format!("clean /after{i}"));
    }
}

#[test]
fn a_stray_response_right_after_a_complete_one_never_reaches_the_next_client() {
    // The extra response arrives 5 ms after a complete one; the next request, a few
    // milliseconds later, reuses the pooled connection well within one worker tick.
    let be = Backend::start(|s| {
        if s.target == "/first" {
            Reply::RawThen(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst".to_vec(),
                std::time::Duration::from_millis(5),
                b"HTTP/1.1 200 OK\r\nX-Poison: yes\r\nContent-Length: 8\r\n\r\npoisoned".to_vec(),
            )
        } else {
            Reply::ok(&format!("clean {}", s.target))
        }
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    for i in 0..5 {
        assert_eq!(gw.get("/first").text(), "first");
        std::thread::sleep(std::time::Duration::from_millis(12));
        let r = gw.get(&format!("/next{i}"));
        assert_eq!(
            r.header("x-poison"),
            None,
            "attempt {i}: a stray response leaked"
        );
        assert_eq!(r.text(), format!("clean /next{i}"));
    }
}

#[test]
fn keepalive_idle_timeout_closes_pooled_connections() {
    let be = Backend::named("x");
    let gw = Gateway::start(&single_upstream(
        &be.addr(),
        "keepalive_pool = { size = 4, idle_timeout = 0.2, requests = 100 }",
    ));
    assert_eq!(gw.get("/1").status, 200);
    assert_eq!(gw.get("/2").status, 200);
    assert_eq!(be.connections(), 1);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(gw.get("/3").status, 200);
    assert_eq!(be.connections(), 2);
}

#[test]
fn error_answers_keep_the_connection_when_the_body_was_read() {
    let be = Backend::named("x");
    let gw =
        Gateway::start(&single_upstream(&be.addr(), "").replace("uri = \"/*\"", "uri = \"/only\""));
    let mut c = gw.client();
    let r = c.request("POST", "/missing", &[], b"some body");
    assert_eq!(r.status, 404);
    assert!(r.header("connection").is_none());
    assert_eq!(c.get("/only").text(), "x");
}

#[test]
fn small_bodies_are_read_whole_before_the_upstream_is_contacted() {
    let be = Backend::start(|s| Reply::ok(&format!("got {}", s.body_len)));
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));
    let mut c = gw.client();
    let body = vec![b'x'; 30_000];
    c.send_raw(b"POST /slow-body HTTP/1.1\r\nHost: t\r\nContent-Length: 30000\r\n\r\n");
    c.send_raw(&body[..10_000]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A slow client holds no backend connection while its body trickles in.
    assert_eq!(be.connections(), 0);
    c.send_raw(&body[10_000..]);
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "got 30000");
    assert_eq!(c.get("/next").status, 200);
}

#[test]
fn chunked_request_bodies_are_re_encoded_canonically() {
    use std::io::{Read, Write};
    // A raw backend that keeps the exact bytes it receives.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while !all.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        all
    });
    let gw = Gateway::start(&single_upstream(&format!("127.0.0.1:{port}"), ""));
    let r = gw.client().request(
        "POST",
        "/c",
        &[("Transfer-Encoding", "chunked")],
        b"5;ext=\"quoted\"\r\nhello\r\n06\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(r.text(), "ok");
    let raw = got.join().unwrap();
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        String::from_utf8_lossy(&raw[body_at..]),
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
}

#[test]
fn connection_close_answers_arrive_whole_and_streamed_ones_are_not_held() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let be = Backend::start(|s| match s.target.as_str() {
        "/stream" => Reply::RawThen(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst".to_vec(),
            Duration::from_millis(1500),
            b"-last".to_vec(),
        ),
        _ => Reply::ok("whole answer"),
    });
    let gw = Gateway::start(&single_upstream(&be.addr(), ""));

    // The last answer of a connection (complete in hand) comes whole, then end of stream.
    let mut c = gw.client();
    c.send("GET", "/small", &[("Connection", "close")], b"");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "whole answer");
    assert!(
        c.is_closed(),
        "the gateway closes after a Connection: close answer"
    );

    // A body still being relayed is not held back for the close: "first" arrives while the
    // upstream is still pausing.
    let mut c = gw.client();
    c.send("GET", "/stream", &[("Connection", "close")], b"");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while !got.ends_with(b"first") {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "the first part waited {:?} for the rest",
        start.elapsed()
    );
    while !got.ends_with(b"first-last") {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
}
