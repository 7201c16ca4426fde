//! A connection that waits more than a tick or two for its next bytes parks: it gives its
//! buffers back and waits for readability (`proxy::session`); a TLS connection also lets go
//! of its ciphertext buffers (`tls::stream`). Parking must be invisible to clients (a next
//! request, a head arriving in pieces, a TLS record arriving in pieces, the timeouts) and
//! must make idle connections cheap, plain or TLS.

use crate::harness::tls::{client_config, pair};
use crate::harness::*;
use crate::memory::rss_kib;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Longer than two watchdog ticks (25 ms each): the wait is parked.
const PARK: Duration = Duration::from_millis(150);

#[test]
fn a_parked_keep_alive_connection_serves_its_next_requests() {
    let be = Backend::named("b");
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/r{i}")).status, 200);
        std::thread::sleep(PARK);
    }
    assert!(!c.is_closed(), "the connection stays open across parks");
    assert_eq!(c.get("/last").status, 200);
    assert_eq!(be.requests(), 4);
}

#[test]
fn a_head_that_arrives_in_pieces_across_parks_reaches_the_upstream_whole() {
    let be = Backend::named("b");
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    // The first piece parks a new connection, the next ones a partly received head.
    std::thread::sleep(PARK);
    for piece in [
        &b"GET /pie"[..],
        b"ces?q=1 HTTP/1.1\r\nHo",
        b"st: t\r\nX-Long: ",
        &[b'v'; 3000],
        b"\r\nX-Last: end\r\n",
        b"\r\n",
    ] {
        c.send_raw(piece);
        std::thread::sleep(PARK);
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    let seen = be.last();
    assert_eq!(seen.target, "/pieces?q=1");
    assert_eq!(seen.header("x-long").map(str::len), Some(3000));
    assert_eq!(seen.header("x-last"), Some("end"));
    // A pipelined pair split mid-head behaves the same.
    c.send_raw(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /tw");
    std::thread::sleep(PARK);
    c.send_raw(b"o HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert_eq!(be.last().target, "/two");
}

#[test]
fn a_parked_connection_keeps_its_timeouts() {
    let be = Backend::named("b");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
        "keepalive_timeout = 0.5\nclient_header_timeout = 0.5",
    );
    // Idle past keepalive_timeout: closed quietly.
    let mut idle = gw.client();
    assert_eq!(idle.get("/a").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        idle.is_closed(),
        "an idle connection outlived keepalive_timeout"
    );
    // Silent past client_header_timeout: closed quietly.
    let mut silent = TcpStream::connect(gw.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        silent.read(&mut byte).unwrap_or(0),
        0,
        "closed without a word"
    );
    // Half a head past client_header_timeout: 408.
    let mut half = gw.client();
    half.send_raw(b"GET /slow HTTP/1.1\r\nHost: t\r\n");
    let r = half.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(half.is_closed());
    assert_eq!(be.requests(), 1);
}

/// Raises this process's soft descriptor limit to its hard limit; returns the limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn idle_keep_alive_connections_hold_no_buffers() {
    let n = 2000.min(raise_nofile().saturating_sub(500) as usize);
    let be = Backend::named("b");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
        "workers = 1",
    );
    let pid = gw.child.id();
    for _ in 0..20 {
        assert_eq!(gw.get("/warm").status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let request = b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut conns = Vec::with_capacity(n);
    // One at a time: one upstream connection serves them all.
    for _ in 0..n {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed before answering");
            got.extend_from_slice(&buf[..k]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        conns.push(s);
    }
    // Parked after two ticks; spare buffers trimmed and pages returned within two seconds.
    std::thread::sleep(Duration::from_millis(2500));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    eprintln!("{n} idle connections: RSS {before} -> {after} KiB, {per:.2} KiB each");
    // A connection that kept its scratch set would cost 20 KiB and more.
    assert!(per < 8.0, "{per:.2} KiB per idle connection");
    assert_eq!(gw.get("/still").status, 200);
}

#[test]
fn requests_sent_as_their_connection_parks_are_never_lost() {
    // Gaps around the park delay (one to two ticks): many requests arrive just as the
    // watchdog cancels the read that waits for them. A cancelled read must either have
    // its bytes or have consumed none (a dropped read buffer would lose the request).
    let be = Backend::named("b");
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let addr = gw.addr();
    requests_across_the_park_delay(40, move || Client::connect(addr));
    assert_eq!(be.requests(), 40 * 30);
}

/// 30 requests on each of `conns` connections made by `connect`, each after a gap around
/// the park delay (one to two ticks), so that many arrive just as the watchdog cancels the
/// read that waits for them; every one must be answered.
fn requests_across_the_park_delay(
    conns: u64,
    connect: impl Fn() -> Client + Clone + Send + 'static,
) {
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            let connect = connect.clone();
            std::thread::spawn(move || {
                let mut c = connect();
                for i in 0..30u64 {
                    let gap = 15 + (t * 7 + i * 13) % 40;
                    std::thread::sleep(Duration::from_millis(gap));
                    assert_eq!(c.get(&format!("/t{t}/{i}")).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("every request answered");
    }
}

/// A gateway (`extra` in its `[gateway]`) whose TLS listener serves the test CA's server
/// certificate for `localhost`; the listener's address and a client configuration that
/// trusts the certificate.
fn tls_gateway(
    tag: &str,
    be: &Backend,
    extra: &str,
) -> (Gateway, SocketAddr, Arc<rustls::ClientConfig>) {
    let dir = temp_dir(tag);
    certificates(&dir);
    let (cert, key) = pair(&dir, "server");
    let port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "[[ssls]]\nid = \"s\"\nsnis = [\"localhost\"]\ncert = '''{cert}'''\nkey = '''{key}'''\n{}",
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), "")
        ),
        &format!("listen_tls = [\"127.0.0.1:{port}\"]\n{extra}"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    (gw, addr, client_config(&dir, None))
}

#[test]
fn a_parked_tls_connection_serves_heads_and_records_that_arrive_in_pieces() {
    let be = Backend::named("b");
    let (_gw, addr, config) = tls_gateway("park-tls", &be, "");
    let mut c = Client::connect_tls(addr, config, Some("localhost")).unwrap();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/r{i}")).status, 200);
        std::thread::sleep(PARK);
    }
    // A head in pieces, one TLS record each, with a park after each.
    for piece in [
        &b"GET /pie"[..],
        b"ces?q=1 HTTP/1.1\r\nHo",
        b"st: t\r\nX-Last: end\r\n",
        b"\r\n",
    ] {
        c.send_raw(piece);
        std::thread::sleep(PARK);
    }
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert_eq!(be.last().target, "/pieces?q=1");
    assert_eq!(be.last().header("x-last"), Some("end"));
    // One record cut in two TCP writes: the connection parks holding half a record.
    let mut record = Vec::new();
    {
        let tls = c.tls.as_mut().unwrap();
        tls.writer()
            .write_all(b"GET /halves HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        while tls.wants_write() {
            tls.write_tls(&mut record).unwrap();
        }
    }
    let half = record.len() / 2;
    c.stream.write_all(&record[..half]).unwrap();
    std::thread::sleep(PARK);
    c.stream.write_all(&record[half..]).unwrap();
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert_eq!(be.last().target, "/halves");
    assert_eq!(be.requests(), 5);
}

#[test]
fn a_parked_tls_connection_keeps_its_timeouts() {
    let be = Backend::named("b");
    let (_gw, addr, config) = tls_gateway(
        "park-tls-timeouts",
        &be,
        "keepalive_timeout = 0.5\nclient_header_timeout = 0.5\nssl_handshake_timeout = 0.5",
    );
    let mut idle = Client::connect_tls(addr, config.clone(), Some("localhost")).unwrap();
    assert_eq!(idle.get("/a").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        idle.is_closed(),
        "an idle connection outlived keepalive_timeout"
    );
    // Half a head past client_header_timeout: 408.
    let mut half = Client::connect_tls(addr, config, Some("localhost")).unwrap();
    half.send_raw(b"GET /slow HTTP/1.1\r\nHost: t\r\n");
    assert_eq!(half.read_response(false).unwrap().status, 408);
    // No ClientHello past ssl_handshake_timeout: closed.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(silent.read(&mut byte).unwrap_or(0), 0, "closed");
    assert_eq!(be.requests(), 1);
}

#[test]
fn idle_tls_connections_keep_only_their_session_state() {
    let n = 1000.min(raise_nofile().saturating_sub(500) as usize);
    let be = Backend::named("b");
    let (gw, addr, config) = tls_gateway("park-tls-memory", &be, "workers = 1");
    let pid = gw.child.id();
    for _ in 0..20 {
        let mut c = Client::connect_tls(addr, config.clone(), Some("localhost")).unwrap();
        assert_eq!(c.get("/warm").status, 200);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let start = rss_kib(pid);
    // Connected, no ClientHello yet: a poll waits for it, no buffer.
    let silent: Vec<_> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(2500));
    let fresh = rss_kib(pid);
    drop(silent);
    std::thread::sleep(Duration::from_millis(2500));
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Client::connect_tls(addr, config.clone(), Some("localhost")).unwrap();
        assert_eq!(c.get(&format!("/idle{i}")).status, 200);
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let after = rss_kib(pid);
    let per_fresh = fresh.saturating_sub(start) as f64 / n as f64;
    let per_idle = after.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "{n} TLS connections: silent {start} -> {fresh} KiB ({per_fresh:.2} each), \
         idle {before} -> {after} KiB ({per_idle:.2} each)"
    );
    // Before parking: a 16.5 KiB read buffer per silent connection, 57 KiB per idle one
    // (both ciphertext buffers, the scratch set, rustls's buffers).
    assert!(per_fresh < 6.0, "{per_fresh:.2} KiB per silent connection");
    assert!(per_idle < 20.0, "{per_idle:.2} KiB per idle connection");
    assert_eq!(conns[0].get("/still").status, 200);
}

#[test]
fn tls_requests_sent_as_their_connection_parks_are_never_lost() {
    // As for plain connections: a cancelled read of ciphertext either has its bytes or
    // consumed none.
    let be = Backend::named("b");
    let (_gw, addr, config) = tls_gateway("park-tls-race", &be, "");
    requests_across_the_park_delay(20, move || {
        Client::connect_tls(addr, config.clone(), Some("localhost")).unwrap()
    });
    assert_eq!(be.requests(), 20 * 30);
}

#[test]
fn a_slow_upstream_is_awaited_without_the_connections_buffers() {
    let be = Backend::start(|seen| match seen.target.as_str() {
        // The head in two pieces, a park apart: the parked read keeps the first piece.
        "/pieces" => Reply::RawThen(
            b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
            PARK,
            b"ngth: 6\r\n\r\npieces".to_vec(),
        ),
        _ => Reply::After(Duration::from_secs(5), Box::new(Reply::ok("late"))),
    });
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
        "workers = 1",
    );
    assert_eq!(gw.get("/pieces").text(), "pieces");
    let addr = gw.addr();
    let per = long_poll_memory(gw.child.id(), move || Client::connect(addr));
    // Holding the upstream connection's 32 KiB buffer and the client's 16 KiB one through
    // the wait, it was 61 KiB. Measured 6.6-11.5 KiB on a quiet machine, up to 20.5 while the
    // other test groups run (the allocator's pages, not the buffers): the bound is below the
    // buffers alone.
    assert!(per < 30.0, "{per:.2} KiB per request awaiting its upstream");
    let (tls_gw, tls_addr, config) = tls_gateway("park-long-poll", &be, "workers = 1");
    let per = long_poll_memory(tls_gw.child.id(), move || {
        Client::connect_tls(tls_addr, config.clone(), Some("localhost")).unwrap()
    });
    // Over TLS it was 90 KiB: the client's ciphertext buffers as well.
    assert!(
        per < 30.0,
        "{per:.2} KiB per TLS request awaiting its upstream"
    );
}

/// Sends a request on each of 300 connections made by `connect` to a gateway (process
/// `pid`) whose upstream answers after 5 s; the gateway's memory per waiting request,
/// measured once the waits have parked. Every request must then get its answer.
fn long_poll_memory(pid: u32, connect: impl Fn() -> Client) -> f64 {
    let n = 300;
    std::thread::sleep(Duration::from_millis(1500));
    let before = rss_kib(pid);
    let mut clients: Vec<_> = (0..n)
        .map(|i| {
            let mut c = connect();
            c.send_raw(format!("GET /poll{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            c
        })
        .collect();
    // Parked after two ticks; the buffers given back trimmed from the spares after a second,
    // and returned to the system by the allocator a little later: the lowest of a few
    // samples before the answers come (at 5 s), since on a busy machine (the test groups run
    // in parallel) the settling takes longer.
    std::thread::sleep(Duration::from_millis(2000));
    let during = (0..4)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(400));
            rss_kib(pid)
        })
        .min()
        .unwrap_or(u64::MAX);
    let per = during.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "{n} requests awaiting the upstream: RSS {before} -> {during} KiB, {per:.2} KiB each"
    );
    for c in &mut clients {
        let r = c.read_response(false).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "late"));
    }
    per
}
