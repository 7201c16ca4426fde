//! WebSocket through the gateway (issue #14): a real client and server (Python
//! `websockets`) over ws and wss, text, binary and large messages, ping/pong and close codes;
//! what a route without `enable_websocket` does; a backend that refuses the upgrade;
//! half-close and the idle timeout at the byte level; limit-conn and least_conn counting a
//! live WebSocket; graceful shutdown.

use crate::harness::py::{self, PyServer};
use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

fn ws_server(name: &str) -> PyServer {
    PyServer::start("ws.py", &["serve", name])
}

/// Runs ws.py's exchange against `url`; what it saw.
fn check(url: &str, cafile: Option<&str>) -> serde_json::Value {
    let mut args = vec!["check", url];
    args.extend(cafile);
    py::report("ws.py", &args)
}

fn assert_exchange(seen: &serde_json::Value, proto: &str) {
    assert_eq!(seen["text"], "hello");
    assert_eq!(seen["binary_ok"], true, "100 KiB binary message");
    assert_eq!(seen["large_ok"], true, "3 MiB message");
    assert_eq!(seen["pong"], true);
    assert_eq!(seen["close_code"], 4001);
    assert_eq!(seen["close_reason"], "bye");
    let h = &seen["headers"];
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["x-forwarded-proto"], proto);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h["sec-websocket-key"].is_string());
}

const UPGRADE: &str = "GET /ws/raw HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads until the head of the 101 is complete; returns what followed it.
fn read_101(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    got.split_off(end)
}

#[test]
fn messages_pings_and_close_codes_pass_both_ways() {
    let ws = ws_server("A");
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/ws/*\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        ws.addr()
    ));
    let seen = check(&format!("ws://127.0.0.1:{}/ws/chat", gw.port), None);
    assert_exchange(&seen, "http");
    assert!(
        gw.wait_for_event(|_| gw.access_log().contains(" 101 ")),
        "the tunnel is logged as a 101: {}",
        gw.access_log()
    );
}

#[test]
fn wss_to_the_gateway_and_to_a_tls_backend() {
    let dir = temp_dir("wss");
    certificates(&dir);
    let cert = dir.join("server.pem").display().to_string();
    let key = dir.join("server.key").display().to_string();
    let ca = dir.join("ca.pem").display().to_string();
    let plain = ws_server("plain");
    let secure = PyServer::start("ws.py", &["serve", "secure", &cert, &key]);
    let tls_port = free_port();
    let (c, k) = (
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    );
    let gw = Gateway::start_with(
        &format!(
            "[[ssls]]\nid = \"s\"\nsnis = [\"localhost\"]\ncert = '''{c}'''\nkey = '''{k}'''\n\
             [[routes]]\nuri = \"/ws/*\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n\
             [[routes]]\nuri = \"/wss/*\"\nenable_websocket = true\nupstream = {{ scheme = \"https\", nodes = {{ \"{}\" = 1 }}, tls = {{ verify = false }} }}\n",
            plain.addr(),
            secure.addr()
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"),
    );
    // wss from the client, ws to the backend.
    let seen = check(&format!("wss://localhost:{tls_port}/ws/a"), Some(&ca));
    assert_exchange(&seen, "https");
    // wss on both sides.
    let seen = check(&format!("wss://localhost:{tls_port}/wss/a"), Some(&ca));
    assert_exchange(&seen, "https");
    // ws from the client, wss to the backend.
    let seen = check(&format!("ws://127.0.0.1:{}/wss/a", gw.port), None);
    assert_exchange(&seen, "http");
}

#[test]
fn without_enable_websocket_the_upgrade_is_not_forwarded_and_a_refusal_keeps_framing() {
    let ws = ws_server("A");
    let refusing = Backend::start(|s| {
        Reply::ok(&format!(
            "no upgrade here ({})",
            s.header("upgrade").unwrap_or("none")
        ))
    });
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/off/*\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n\
         [[routes]]\nuri = \"/refused/*\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        ws.addr(),
        refusing.addr()
    ));
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut c = gw.client();
    // Not enabled: the backend sees a plain GET (the websockets server then answers 200 with
    // its name rather than switching).
    let r = c.request("GET", "/off/x", &upgrade, b"");
    assert_eq!((r.status, r.text()), (200, "A".to_string()));
    // Enabled, but the backend answers 200: relayed as a normal response, and the connection
    // goes on with the next request.
    let r = c.request("GET", "/refused/x", &upgrade, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "no upgrade here (websocket)");
    let r = c.get("/off/y");
    assert_eq!((r.status, r.text()), (200, "A".to_string()));
    // Other protocols pass as nginx passes them; h2c never does.
    let other = [("Upgrade", "custom/1"), ("Connection", "Upgrade")];
    let r = c.request("GET", "/refused/x", &other, b"");
    assert_eq!(r.text(), "no upgrade here (custom/1)");
    let h2c = [
        ("Upgrade", "h2c"),
        ("Connection", "Upgrade, HTTP2-Settings"),
    ];
    let r = c.request("GET", "/refused/x", &h2c, b"");
    assert_eq!(r.text(), "no upgrade here (none)");
    // A websockets client on the route without it is refused by the backend's answer.
    let out = py::run(
        "ws.py",
        &["check", &format!("ws://127.0.0.1:{}/off/x", gw.port)],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 200"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw upgrading backend for one connection: answers the upgrade with a 101, then runs
/// `after` on the socket; what `after` returns comes back through the handle.
fn raw_backend(
    after: impl FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .unwrap();
        after(&mut s)
    });
    (addr, h)
}

#[test]
fn half_close_both_ways_and_an_idle_tunnel_times_out() {
    // The client ends its side first: the backend sees the end, and its answer, sent after,
    // still reaches the client.
    let (first, _) = raw_backend(|s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"got ").unwrap();
        s.write_all(&got).unwrap();
        Vec::new()
    });
    // The backend ends its side first: the client still sends, and the backend gets it.
    let (second, late) = raw_backend(|s| {
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let ws = ws_server("A");
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/first\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{first}\" = 1 }} }}\n\
         [[routes]]\nuri = \"/second\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{second}\" = 1 }} }}\n\
         [[routes]]\nuri = \"/ws/*\"\nenable_websocket = true\ntimeout = {{ connect = 2, send = 2, read = 1 }}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        ws.addr()
    ));
    let upgrade = |path: &str| UPGRADE.replace("/ws/raw", path);

    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{}early-bytes", upgrade("/first")).as_bytes())
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = read_101(&mut s);
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "got early-bytes");

    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade("/second").as_bytes()).unwrap();
    let mut rest = read_101(&mut s);
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye", "the backend's bytes, then its end");
    s.write_all(b"late words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(late.join().unwrap(), b"late words");

    // Nothing sent either way for longer than the read timeout: the gateway closes.
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(UPGRADE.as_bytes()).unwrap();
    let rest = read_101(&mut s);
    assert!(rest.is_empty());
    let mut all = Vec::new();
    let r = s.read_to_end(&mut all);
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "closed by the gateway, not by our read timeout: {r:?}"
    );
}

/// A WebSocket held open by a background client.
struct Held {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    /// The name of the server it reached.
    server: String,
}

/// Opens a WebSocket held for `secs` in the background; returns once it is open.
fn hold(url: &str, secs: &str) -> Held {
    let mut child = py::spawn("ws.py", &["hold", url, secs]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let server = line
        .trim()
        .strip_prefix("open ")
        .unwrap_or_else(|| panic!("not open: {line}"))
        .to_string();
    Held { child, out, server }
}

#[test]
fn a_live_websocket_counts_for_limit_conn_and_least_conn() {
    let a = ws_server("A");
    let b = ws_server("B");
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/limited/*\"\nenable_websocket = true\n\
         plugins.limit-conn = {{ conn = 1, burst = 0, default_conn_delay = 0.1, key = \"remote_addr\" }}\n\
         upstream = {{ nodes = {{ \"{}\" = 1 }} }}\n\
         [[routes]]\nuri = \"/balanced/*\"\nenable_websocket = true\n\
         upstream = {{ type = \"least_conn\", nodes = {{ \"{}\" = 1, \"{}\" = 1 }} }}\n",
        a.addr(),
        a.addr(),
        b.addr()
    ));
    // limit-conn: while the WebSocket lives it holds the one connection allowed.
    let mut held = hold(&format!("ws://127.0.0.1:{}/limited/x", gw.port), "30");
    assert_eq!(gw.get("/limited/plain").status, 503);
    held.child.kill().unwrap();
    held.child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.get("/limited/plain").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is given back when the WebSocket ends"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // least_conn: the node holding a WebSocket is avoided while it lives.
    let mut held = hold(&format!("ws://127.0.0.1:{}/balanced/x", gw.port), "30");
    let names: Vec<String> = (0..4).map(|_| gw.get("/balanced/plain").text()).collect();
    assert!(
        names.iter().all(|n| n != &held.server),
        "every plain request to the node without the WebSocket ({}): {names:?}",
        held.server
    );
    // A second WebSocket goes there too; with one each, both nodes are in use again.
    let mut other = hold(&format!("ws://127.0.0.1:{}/balanced/x", gw.port), "30");
    assert_ne!(other.server, held.server);
    for h in [&mut held, &mut other] {
        h.child.kill().unwrap();
        h.child.wait().unwrap();
    }
}

#[test]
fn graceful_shutdown_keeps_websockets_through_the_grace_period_then_closes_them() {
    let ws = ws_server("A");
    let mut gw = Gateway::start_with(
        &format!(
            "[[routes]]\nuri = \"/ws/*\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            ws.addr()
        ),
        "workers = 1\ngraceful_shutdown_timeout = 2",
    );
    let mut held = hold(&format!("ws://127.0.0.1:{}/ws/x", gw.port), "60");
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "the gateway exits at the end of the grace period"
    );
    let mut line = String::new();
    held.out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("closed") || line.starts_with("error"),
        "the WebSocket is closed, not held to its end: {line}"
    );
    // It kept working after the signal (an echo every 0.2 s through a 2 s grace period).
    let echoes: u32 = line
        .split(" after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(echoes >= 3, "echoes during the grace period: {line}");
    let _ = held.child.wait();
    assert!(
        gw.events().contains("still in flight"),
        "the tunnel was still open when the grace period ended: {}",
        gw.events()
    );
}

#[test]
fn quiet_websockets_hold_no_buffers() {
    // A quiet tunnel gives its buffers back (proxy::tunnel): 300 of them cost far less than
    // the 190 KiB each they held when every tunnel kept its connection's and its
    // upstream's buffers (benches/conn-memory.sh --modes ws).
    let ws = ws_server("Q");
    let gw = Gateway::start_with(
        &format!(
            "[[routes]]\nuri = \"/ws/*\"\nenable_websocket = true\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            ws.addr()
        ),
        "workers = 1",
    );
    let pid = gw.child.id();
    let mut warm = TcpStream::connect(gw.addr()).unwrap();
    warm.write_all(UPGRADE.as_bytes()).unwrap();
    read_101(&mut warm);
    std::thread::sleep(Duration::from_millis(1500));
    let before = crate::memory::rss_kib(pid);
    let n = 300;
    let tunnels: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(UPGRADE.as_bytes()).unwrap();
            read_101(&mut s);
            s
        })
        .collect();
    // Spare buffers trimmed and pages returned within two pool sweeps.
    std::thread::sleep(Duration::from_millis(2500));
    let after = crate::memory::rss_kib(pid);
    let per = after.saturating_sub(before) as f64 / n as f64;
    eprintln!("{n} quiet websockets: RSS {before} -> {after} KiB, {per:.1} KiB each");
    assert!(per < 40.0, "{per:.1} KiB per quiet websocket");
    drop(tunnels);
    let mut again = TcpStream::connect(gw.addr()).unwrap();
    again.write_all(UPGRADE.as_bytes()).unwrap();
    read_101(&mut again);
}
