//! Large bodies stream through in bounded memory, byte for byte.

use crate::harness::backend::{fill_pattern, Fnv};
use crate::harness::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 256 << 20;
/// The gateway's resident memory must stay under this while 256 MiB pass through.
const RSS_LIMIT_KIB: u64 = 96 * 1024;

/// Samples the gateway's RSS every 20 ms until stopped; returns the peak.
pub(crate) fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let peak = Arc::new(AtomicU64::new(0));
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak.load(Ordering::SeqCst)
    });
    (stop, handle)
}

#[test]
fn large_upload_and_download_are_byte_identical_in_bounded_memory() {
    let be = Backend::start(|s| {
        if s.method == "POST" {
            Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash))
        } else {
            Reply::Pattern(SIZE)
        }
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&be.addr(), 1)]),
        "timeout = { connect = 5, send = 30, read = 30 }",
    ));
    let (stop, peak) = watch_rss(gw.child.id());

    // Upload: streamed from a writer thread while the response is awaited.
    let mut c = gw.client();
    c.send_raw(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let mut hash = Fnv::default();
        let mut piece = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < SIZE {
            fill_pattern(&mut piece, off);
            hash.update(&piece);
            writer.write_all(&piece).unwrap();
            off += piece.len() as u64;
        }
        hash.0
    });
    let r = c.read_response(false).unwrap();
    let sent_hash = uploader.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("{SIZE} {sent_hash:x}"));

    // Download on the same connection.
    let r = c.get("/download");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, SIZE);
    let mut expect = vec![0u8; SIZE as usize];
    fill_pattern(&mut expect, 0);
    assert!(r.body == expect, "downloaded bytes differ");

    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "gateway RSS peaked at {peak} KiB"
    );
}

#[test]
fn chunked_upload_streams_through() {
    let be = Backend::start(|s| Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash)));
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    c.send_raw(b"POST /chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut writer = c.stream.try_clone().unwrap();
    let total: u64 = 16 << 20;
    let uploader = std::thread::spawn(move || {
        let mut hash = Fnv::default();
        let mut off = 0u64;
        let mut piece = vec![0u8; 100_000];
        while off < total {
            let n = (total - off).min(piece.len() as u64) as usize;
            fill_pattern(&mut piece[..n], off);
            hash.update(&piece[..n]);
            writer.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
            writer.write_all(&piece[..n]).unwrap();
            writer.write_all(b"\r\n").unwrap();
            off += n as u64;
        }
        writer.write_all(b"0\r\n\r\n").unwrap();
        hash.0
    });
    let r = c.read_response(false).unwrap();
    let hash = uploader.join().unwrap();
    assert_eq!(r.text(), format!("{total} {hash:x}"));
    assert_eq!(c.get("/after").status, 200);
}

/// A response body long enough to be relayed with splice(2) (more than 64 KiB past the
/// first read), with an odd length so no piece boundary lines up.
const LONG: u64 = (5 << 20) + 123;

fn one_upstream(be: &Backend, extra: &str) -> String {
    upstream_config(&nodes_map(&[(&be.addr(), 1)]), extra)
}

#[test]
fn long_responses_are_identical_spliced_copied_and_on_epoll() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/long" => Reply::Pattern(LONG),
        _ => Reply::ok("small"),
    });
    let mut expect = vec![0u8; LONG as usize];
    fill_pattern(&mut expect, 0);
    for extra in [
        "workers = 1",
        "workers = 1\nsplice = false",
        "workers = 1\ndriver = \"epoll\"",
    ] {
        let gw = Gateway::start_with(&one_upstream(&be, ""), extra);
        let before = be.connections();
        let mut c = gw.client();
        for _ in 0..2 {
            let r = c.get("/long");
            assert_eq!(r.status, 200, "{extra}");
            assert_eq!(r.body.len() as u64, LONG, "{extra}");
            assert!(r.body == expect, "body differs with {extra:?}");
        }
        // The client connection and the upstream connection both stay usable.
        assert_eq!(c.get("/small").text(), "small", "{extra}");
        assert_eq!(
            be.connections() - before,
            1,
            "upstream reused with {extra:?}"
        );
    }
}

/// A head announcing `LONG` bytes and the first 300 KiB of them.
fn long_head_and_start() -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
    let mut start = vec![0u8; 300 << 10];
    fill_pattern(&mut start, 0);
    v.extend_from_slice(&start);
    v
}

/// Reads from `c` until end of stream (or `limit`), returning how many bytes came.
fn read_to_close(c: &mut Client, limit: Duration) -> u64 {
    use std::io::Read;
    c.stream.set_read_timeout(Some(limit)).unwrap();
    let mut total = c.leftover().len() as u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) => panic!("connection not closed after {total} bytes: {e}"),
        }
    }
}

#[test]
fn upstream_dying_mid_long_body_closes_the_client_connection() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/cut" => Reply::RawClose(long_head_and_start()),
        _ => Reply::ok("fine"),
    });
    let gw = Gateway::start(&one_upstream(&be, ""));
    let mut c = gw.client();
    c.send("GET", "/cut", &[], b"");
    let got = read_to_close(&mut c, Duration::from_secs(5));
    assert!(
        got < LONG,
        "a truncated body must not look complete ({got} bytes)"
    );
    assert!(
        got >= 300 << 10,
        "what the upstream sent is relayed ({got} bytes)"
    );
    assert_eq!(gw.get("/after").text(), "fine");
}

#[test]
fn upstream_stalling_mid_long_body_is_cut_at_the_read_timeout() {
    let be = Backend::start(|_| {
        Reply::RawThen(
            long_head_and_start(),
            Duration::from_secs(6),
            b"late".to_vec(),
        )
    });
    let gw = Gateway::start(&one_upstream(
        &be,
        "timeout = { connect = 2, send = 2, read = 1 }",
    ));
    let mut c = gw.client();
    c.send("GET", "/stall", &[], b"");
    let start = std::time::Instant::now();
    let got = read_to_close(&mut c, Duration::from_secs(5));
    assert!(got < LONG, "{got} bytes");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, read timeout is 1 s"
    );
}

#[test]
fn a_client_that_stops_reading_a_long_body_is_cut_at_send_timeout() {
    const HUGE: u64 = 256 << 20;
    let be = Backend::start(|s| match s.target.as_str() {
        "/huge" => Reply::Pattern(HUGE),
        _ => Reply::ok("fine"),
    });
    let gw = Gateway::start_with(&one_upstream(&be, ""), "workers = 1\nsend_timeout = 1");
    let mut c = gw.client();
    c.send("GET", "/huge", &[], b"");
    // Read nothing for longer than send_timeout: the gateway gives up on this client.
    std::thread::sleep(Duration::from_secs(3));
    let got = read_to_close(&mut c, Duration::from_secs(5));
    assert!(
        got < HUGE / 2,
        "the gateway kept sending to a stuck client: {got} bytes"
    );
    // Other clients are served meanwhile.
    assert_eq!(gw.get("/other").text(), "fine");
}

#[test]
fn urgent_data_in_a_long_body_ends_the_relay_instead_of_spinning() {
    use std::io::Read;
    // A backend that puts a TCP urgent byte in the middle of a long body: splice(2) stops in
    // front of it although the socket keeps polling readable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut stream = socket2::Socket::from(stream);
        let mut req = [0u8; 4096];
        let _ = stream.read(&mut req);
        let _ = stream.write_all(&long_head_and_start());
        let _ = stream.send_out_of_band(b"!");
        let _ = stream.write_all(&[b'x'; 1000]);
        std::thread::sleep(Duration::from_secs(8));
    });
    let be = Backend::start(|_| Reply::ok("fine"));
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\ntimeout = {{ connect = 2, send = 2, read = 3 }}\n\
         [[upstreams]]\nid = \"ok\"\nnodes = {}\n\
         [[routes]]\nuri = \"/urgent\"\nupstream_id = \"u\"\n[[routes]]\nuri = \"/*\"\nupstream_id = \"ok\"\n",
        nodes_map(&[(&addr, 1)]),
        nodes_map(&[(&be.addr(), 1)])
    ));
    let mut c = gw.client();
    c.send("GET", "/urgent", &[], b"");
    let start = std::time::Instant::now();
    let got = read_to_close(&mut c, Duration::from_secs(6));
    assert!(got < LONG, "{got} bytes");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the relay ended only after {:?}",
        start.elapsed()
    );
    // The worker is not stuck in a loop: it serves the next request.
    assert_eq!(gw.get("/other").text(), "fine");
    server.join().unwrap();
}

#[test]
fn bytes_past_a_spliced_body_never_reach_the_next_response() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/long" => {
            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
            let mut body = vec![0u8; LONG as usize];
            fill_pattern(&mut body, 0);
            v.extend_from_slice(&body);
            v.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl");
            Reply::Raw(v)
        }
        _ => Reply::ok("clean"),
    });
    let gw = Gateway::start(&one_upstream(&be, ""));
    let mut c = gw.client();
    let r = c.get("/long");
    assert_eq!(r.body.len() as u64, LONG);
    for _ in 0..3 {
        assert_eq!(c.get("/next").text(), "clean");
    }
}

#[test]
fn long_uploads_are_identical_spliced_and_copied_and_pipelining_survives() {
    let be = Backend::start(|s| {
        if s.method == "POST" {
            Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash))
        } else {
            Reply::ok("next")
        }
    });
    let mut body = vec![0u8; LONG as usize];
    fill_pattern(&mut body, 0);
    let mut hash = Fnv::default();
    hash.update(&body);
    for extra in ["workers = 1", "workers = 1\nsplice = false"] {
        let gw = Gateway::start_with(&one_upstream(&be, ""), extra);
        let mut c = gw.client();
        // The body and a pipelined request in one go: the relay must take exactly the body.
        let mut bytes =
            format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut writer = c.stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
        let r = c.read_response(false).unwrap();
        assert_eq!(r.text(), format!("{LONG} {:x}", hash.0), "{extra}");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.text(), "next", "{extra}");
        sender.join().unwrap();
    }
}

#[test]
fn a_client_stalling_mid_upload_gets_408() {
    let be = Backend::start(|s| Reply::ok(&format!("{}", s.body_len)));
    for extra in [
        "workers = 1\nclient_body_timeout = 1",
        "workers = 1\nclient_body_timeout = 1\nsplice = false",
    ] {
        let gw = Gateway::start_with(&one_upstream(&be, ""), extra);
        let mut c = gw.client();
        let mut bytes =
            format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
        bytes.extend_from_slice(&vec![b'a'; 300 << 10]);
        c.send_raw(&bytes);
        let start = std::time::Instant::now();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 408, "{extra}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{extra}: {:?}",
            start.elapsed()
        );
    }
}

/// A backend that answers 413 as soon as it has a request head, without reading the body,
/// then closes (so the gateway's further writes fail) or, with `hold`, keeps the connection
/// without reading (so they time out); returns its address.
fn early_413_backend(hold: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
                );
                if hold {
                    std::thread::sleep(Duration::from_secs(5));
                }
                // Closing with the body unread resets the connection.
            });
        }
    });
    addr
}

#[test]
fn an_upstream_answering_before_the_whole_upload_is_relayed() {
    let closing = early_413_backend(false);
    let holding = early_413_backend(true);
    let config = |addr: &str| {
        upstream_config(
            &nodes_map(&[(addr, 1)]),
            "timeout = { connect = 1, send = 0.5, read = 5 }",
        )
    };
    let cases = [
        (&closing, "workers = 1"),
        (&closing, "workers = 1\nsplice = false"),
        // Not closed, just no longer reading: the answer comes at the send timeout, not a 504.
        (&holding, "workers = 1"),
        (&holding, "workers = 1\nsplice = false"),
    ];
    for (addr, extra) in cases {
        let body = config(addr);
        let gw = Gateway::start_with(&body, extra);
        let mut c = gw.client();
        let mut bytes =
            format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
        bytes.extend_from_slice(&vec![b'a'; LONG as usize]);
        // Like many clients, write the whole request before reading anything: the gateway
        // must drain the rest of the body (lingering close) rather than reset the connection
        // and lose the answer.
        c.stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        c.stream
            .write_all(&bytes)
            .expect("the gateway drains the body");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 413, "{extra}");
        assert_eq!(r.text(), "too large", "{extra}");
        assert_eq!(r.header("connection"), Some("close"), "{extra}");
        assert!(
            c.is_closed(),
            "{extra}: the connection closes after an early answer"
        );
    }
}
