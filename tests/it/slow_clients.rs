//! Slow and departed clients must not hold backend connections: small chunked bodies are
//! read whole before any upstream is contacted, and a client that goes away while the
//! upstream works ends the upstream request (nginx's 499).

use crate::harness::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_trickled_chunked_body_is_buffered_before_the_upstream_is_contacted() {
    let be = Backend::start(|s| Reply::ok(&format!("{} bytes", s.body_len)));
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    c.send_raw(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        be.connections(),
        0,
        "the upstream was contacted before the body was complete"
    );
    c.send_raw(b"6\r\n world\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "11 bytes");
    // The body reaches the upstream whole, re-chunked or not, and the connection goes on.
    assert_eq!(be.last().body, b"hello world");
    assert_eq!(c.get("/again").status, 200);
}

#[test]
fn a_large_chunked_body_still_streams() {
    let be = Backend::start(|s| Reply::ok(&format!("{} bytes", s.body_len)));
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    let chunk = vec![b'x'; 100 * 1024];
    let mut req = b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    req.extend_from_slice(&chunk);
    req.extend_from_slice(b"\r\n");
    c.send_raw(&req);
    // More than the buffering limit has arrived: the upstream is contacted while the rest
    // is still to come.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while be.connections() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(be.connections(), 1);
    c.send_raw(b"3\r\nabc\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), format!("{} bytes", 100 * 1024 + 3));
}

/// A backend that reads one request and then waits (up to 5 s) for the gateway to close the
/// connection instead of answering; counts the connections so closed.
fn patient_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let aborted = Arc::new(AtomicUsize::new(0));
    let a = aborted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let a = a.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                match s.read(&mut buf) {
                    Ok(0) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate");
                    }
                }
            });
        }
    });
    (port, aborted)
}

#[test]
fn a_client_that_leaves_ends_the_upstream_request() {
    let (port, aborted) = patient_backend();
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&format!("127.0.0.1:{port}"), 1)]),
        "timeout = { connect = 5, send = 5, read = 30 }",
    ));
    // A client that closes, and one that half-closes (as nginx, both count as gone).
    for half in [false, true] {
        let mut c = gw.client();
        c.send_raw(b"GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
        if half {
            c.stream.shutdown(Shutdown::Write).unwrap();
        } else {
            drop(c);
        }
        let want = if half { 2 } else { 1 };
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while aborted.load(Ordering::SeqCst) < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            aborted.load(Ordering::SeqCst),
            want,
            "the upstream request was not aborted (half-close: {half})"
        );
    }
    assert!(
        gw.wait_for_event(|_| gw.access_log().matches(" 499 ").count() >= 2),
        "access log: {}",
        gw.access_log()
    );
}

#[test]
fn a_client_with_a_pipelined_request_is_not_taken_for_gone() {
    let be = Backend::start(|s| {
        if s.target == "/slow" {
            Reply::After(Duration::from_millis(300), Box::new(Reply::ok("slow")))
        } else {
            Reply::ok("next")
        }
    });
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    c.send_raw(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().text(), "slow");
    assert_eq!(c.read_response(false).unwrap().text(), "next");
}
