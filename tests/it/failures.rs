//! Failing backends: per-phase timeouts (504), refused and dead nodes (502), retries and
//! failover, retry_timeout, and invalid upstream responses (502, nothing leaked).

use crate::harness::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A listener whose accept queue is full, so further connects hang in SYN-SENT.
struct Blackhole {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(c);
        }
    }
    Blackhole {
        addr,
        _listener: s,
        _fillers: fillers,
    }
}

#[test]
fn connect_timeout_is_504_in_time() {
    let hole = blackhole();
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&hole.addr.to_string(), 1)]),
        "timeout = { connect = 0.5, send = 5, read = 5 }",
    ));
    let start = Instant::now();
    let r = gw.get("/slow-connect");
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("connect timed out"));
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn read_timeout_is_504_in_time() {
    let be = Backend::start(|_| Reply::After(Duration::from_secs(3), Box::new(Reply::ok("late"))));
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&be.addr(), 1)]),
        "timeout = { connect = 1, send = 1, read = 0.5 }",
    ));
    let start = Instant::now();
    let r = gw.get("/slow-read");
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("read timed out"));
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[test]
fn send_timeout_is_504_in_time() {
    // A backend that accepts and never reads.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = sink.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let held: Vec<TcpStream> = sink.incoming().take(1).filter_map(Result::ok).collect();
        std::thread::sleep(Duration::from_secs(8));
        drop(held);
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&addr.to_string(), 1)]),
        "timeout = { connect = 1, send = 0.5, read = 5 }",
    ));
    let mut c = gw.client();
    let total: usize = 128 << 20;
    c.send_raw(
        format!("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let start = Instant::now();
    std::thread::spawn(move || {
        let piece = vec![7u8; 1 << 20];
        for _ in 0..(total >> 20) {
            if writer.write_all(&piece).is_err() {
                break;
            }
        }
    });
    let r = c.read_response(false).unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("send timed out"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(holder);
}

#[test]
fn failover_to_live_node_gives_no_client_errors() {
    let live = Backend::named("live");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&dead, 1), (&live.addr(), 1)]),
        "",
    ));
    let mut c = gw.client();
    for i in 0..100 {
        let r = c.get(&format!("/f{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(live.requests(), 100);
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.access_log().contains("retries=1"));
}

#[test]
fn all_nodes_dead_is_502_with_json() {
    let d1 = format!("127.0.0.1:{}", free_port());
    let d2 = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&d1, 1), (&d2, 1)]), ""));
    let start = Instant::now();
    let r = gw.get("/dead");
    assert_eq!(r.status, 502);
    assert!(r.json()["error_msg"].as_str().is_some());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn retries_only_idempotent_requests_after_sending() {
    let broken = Backend::start(|_| Reply::Close);
    let good = Backend::named("good");
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&broken.addr(), 1), (&good.addr(), 1)]),
        "retries = 1",
    ));
    let mut ok = 0;
    for _ in 0..10 {
        let r = gw.get("/idem");
        if r.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "GETs are retried on the other node");
    // POSTs that reached the broken node are not retried.
    let mut failed = 0;
    for _ in 0..10 {
        let r = gw.client().request("POST", "/post", &[], b"payload");
        if r.status == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(
        failed >= 4,
        "about half the POSTs hit the broken node: {failed}"
    );
    assert_eq!(good.requests(), 10 + (10 - failed));
}

#[test]
fn retry_timeout_bounds_the_retries() {
    let slow_fail =
        || Backend::start(|_| Reply::After(Duration::from_millis(300), Box::new(Reply::Close)));
    let (a, b, c) = (slow_fail(), slow_fail(), slow_fail());
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&a.addr(), 1), (&b.addr(), 1), (&c.addr(), 1)]),
        "retries = 10\nretry_timeout = 0.5",
    ));
    let r = gw.get("/rt");
    assert_eq!(r.status, 502);
    assert_eq!(a.requests() + b.requests() + c.requests(), 2);
}

#[test]
fn invalid_upstream_responses_are_502() {
    let be = Backend::start(|s| {
        match s.target.as_str() {
        "/garbage" => Reply::RawClose(b"HTTP/1.1 OK no status\r\n\r\n".to_vec()),
        "/cl-te" => Reply::RawClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        "/two-cl" => Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec()),
        "/bare-lf" => Reply::RawClose(b"HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\nabc".to_vec()),
        "/bad-cl" => Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc".to_vec()),
        "/te-gzip" => Reply::RawClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        _ => Reply::ok("fine"),
    }
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&be.addr(), 1)]),
        "retries = 0",
    ));
    for path in [
        "/garbage", "/cl-te", "/two-cl", "/bare-lf", "/bad-cl", "/te-gzip",
    ] {
        let r = gw.get(path);
        assert_eq!(r.status, 502, "{path}");
        assert!(
            r.json()["error_msg"]
                .as_str()
                .unwrap()
                .contains("invalid upstream response"),
            "{path}"
        );
    }
}

#[test]
fn extra_upstream_bytes_never_leak_into_the_next_response() {
    let be = Backend::start(|s| {
        match s.target.as_str() {
        "/extra" => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl".to_vec()),
        _ => Reply::ok("clean"),
    }
    });
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    assert_eq!(c.get("/extra").text(), "hello");
    for _ in 0..3 {
        assert_eq!(c.get("/next").text(), "clean");
    }
}

#[test]
fn upstream_dying_mid_body_closes_the_client_connection() {
    let be = Backend::start(|_| {
        Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec())
    });
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    c.send("GET", "/cut", &[], b"");
    let start = Instant::now();
    assert!(
        c.read_response(false).is_err(),
        "a truncated body must not look complete"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn every_node_timing_out_is_504_not_502() {
    let slow =
        || Backend::start(|_| Reply::After(Duration::from_secs(2), Box::new(Reply::ok("late"))));
    let (a, b) = (slow(), slow());
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&a.addr(), 1), (&b.addr(), 1)]),
        "retries = 5\ntimeout = { connect = 1, send = 1, read = 0.3 }",
    ));
    let r = gw.get("/slow");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("read timed out"));
}
