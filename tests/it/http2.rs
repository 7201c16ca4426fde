//! HTTP/2 from clients (issue #14): curl over h2 (ALPN) and h2c (prior knowledge) to
//! HTTP/1.1 backends, big bodies both ways, many concurrent streams on one connection
//! (h2load), trailers both ways (Python h2), and the abuse cases RFC 9113 defences cover:
//! rapid reset, CONTINUATION floods, oversized headers, bad frames, PING/SETTINGS floods,
//! zero-window stalls and bodies that never come. After each, the gateway keeps serving.

use crate::harness::backend::fill_pattern;
use crate::harness::py;
use crate::harness::*;
use std::process::Command;

/// GOAWAY / RST_STREAM error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u64 = 1;
const INTERNAL_ERROR: u64 = 2;
const ENHANCE_YOUR_CALM: u64 = 11;

/// curl with `args`; (stdout, stderr, success).
fn curl(args: &[&str]) -> (String, String, bool) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// curl over TLS asking for h2 (trusting `ca`), with the version it spoke appended as
/// ` v=N`; `extra` goes before the URL.
fn curl_h2(ca: &str, extra: &[&str], url: &str) -> (String, String, bool) {
    let mut args = vec!["--http2", "--cacert", ca, "-w", " v=%{http_version}"];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args)
}

/// The h2peer.py case's report.
fn peer(args: &[&str]) -> serde_json::Value {
    py::report("h2peer.py", args)
}

fn echo_backend() -> Backend {
    Backend::start(|s| {
        if s.target.starts_with("/big") {
            return Reply::Pattern(8 << 20);
        }
        if s.target.starts_with("/trailers") {
            return Reply::Raw(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/grpc\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"
                    .to_vec(),
            );
        }
        Reply::ok(&format!(
            "{} HTTP/1.{} {} {} len={} chunked={} cookie={}",
            s.method,
            s.version,
            s.header("host").unwrap_or("-"),
            s.header("x-forwarded-proto").unwrap_or("-"),
            s.body_len,
            s.header("transfer-encoding").is_some(),
            s.header("cookie").unwrap_or("-"),
        ))
    })
}

/// A gateway with h2c on its plain port and h2 on a TLS port; (gateway, TLS port, CA file).
fn h2_gateway(be: &Backend, extra: &str) -> (Gateway, u16, String) {
    gateway_with(be, extra, "h2c = true")
}

/// A gateway with a TLS port, `extra` in `[gateway]` and `http2` in `[gateway.http2]`.
fn gateway_with(be: &Backend, extra: &str, http2: &str) -> (Gateway, u16, String) {
    let dir = temp_dir("h2");
    certificates(&dir);
    let cert = std::fs::read_to_string(dir.join("server.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("server.key")).unwrap();
    let tls_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "[[ssls]]\nid = \"s\"\nsnis = [\"localhost\"]\ncert = '''{cert}'''\nkey = '''{key}'''\n\
             [[routes]]\nuri = \"/*\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            be.addr()
        ),
        &format!("workers = 1\nlisten_tls = [\"127.0.0.1:{tls_port}\"]\n{extra}\n[gateway.http2]\n{http2}"),
    );
    (gw, tls_port, dir.join("ca.pem").display().to_string())
}

#[test]
fn h2_over_tls_and_h2c_reach_http1_backends_with_big_bodies_both_ways() {
    let be = echo_backend();
    let (gw, tls_port, ca) = h2_gateway(&be, "");
    let https = format!("https://localhost:{tls_port}");
    let h2c = format!("http://127.0.0.1:{}", gw.port);

    let (out, err, ok) = curl_h2(
        &ca,
        &["-H", "Cookie: a=1", "-H", "Cookie: b=2"],
        &format!("{https}/echo"),
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("GET HTTP/1.1 localhost:{tls_port} https len=0 chunked=false cookie=a=1; b=2 v=2")
    );
    let (out, err, ok) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " v=%{http_version}",
        &format!("{h2c}/echo"),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("GET HTTP/1.1 127.0.0.1:{} http len=0", gw.port)),
        "{out}"
    );
    assert!(out.ends_with(" v=2"), "{out}");

    // 5 MiB up, with and without a Content-Length (chunked to the backend without one).
    let file = temp_dir("h2-body").join("up.bin");
    std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
    let upload = format!("@{}", file.display());
    let (out, err, ok) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--data-binary",
        &upload,
        &format!("{https}/up"),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("POST HTTP/1.1") && out.contains("len=5242880 chunked=false"),
        "{out}"
    );
    let (out, err, ok) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &upload,
        &format!("{h2c}/up"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("len=5242880 chunked=true"), "{out}");
    // 8 MiB down, the pattern intact.
    let down = temp_dir("h2-down").join("down.bin");
    let (_, err, ok) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "-o",
        &down.display().to_string(),
        &format!("{https}/big"),
    ]);
    assert!(ok, "{err}");
    let got = std::fs::read(&down).unwrap();
    assert_eq!(got.len(), 8 << 20);
    let mut want = vec![0u8; got.len()];
    fill_pattern(&mut want, 0);
    assert!(got == want, "the 8 MiB body arrives intact");

    // HTTP/1.1 still served on both listeners.
    let (out, _, ok) = curl(&[
        "--http1.1",
        "-w",
        " v=%{http_version}",
        &format!("{h2c}/echo"),
    ]);
    assert!(ok && out.ends_with(" v=1.1"), "{out}");
    assert!(
        gw.wait_for_event(|_| gw.access_log().contains("\"GET /echo HTTP/2.0\" 200")),
        "h2 requests are logged as HTTP/2.0: {}",
        gw.access_log()
    );
}

#[test]
fn h2_is_offered_and_h2c_taken_only_where_configured() {
    let be = echo_backend();
    let (gw, tls_port, ca) = gateway_with(&be, "", "enable = false");
    // No h2 in ALPN: curl falls back to HTTP/1.1.
    let (out, err, ok) = curl_h2(&ca, &[], &format!("https://localhost:{tls_port}/echo"));
    assert!(ok, "{err}");
    assert!(out.ends_with(" v=1.1"), "{out}");
    // h2c is off by default: the preface is not a request.
    let (_, _, ok) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/echo", gw.port),
    ]);
    assert!(!ok, "h2c refused where not configured");
    // A bad [gateway.http2] value is refused with its field named.
    let (ok, msg) = check_config("[gateway.http2]\nmax_frame_size = 100\n");
    assert!(!ok && msg.contains("gateway.http2.max_frame_size"), "{msg}");
}

#[test]
fn many_concurrent_streams_on_one_connection() {
    let be = echo_backend();
    let (gw, _, _) = h2_gateway(&be, "");
    let h2load = |n: &str| {
        let out = Command::new("h2load")
            .args(["-n", n, "-c", "1", "-m", "100"])
            .arg(format!("http://127.0.0.1:{}/echo", gw.port))
            .output()
            .expect("h2load (nghttp2-client)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = h2load("1000");
    assert!(
        text.contains("1000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 1000 2xx"), "{text}");
    assert!(be.requests() >= 1000);
    // max_requests (default 1000, nginx's keepalive_requests): then a graceful GOAWAY (the
    // streams already on their way when it is sent are still served), and h2load (which
    // does not reconnect) counts the rest as failed.
    let text = h2load("1500");
    let succeeded: u32 = text
        .split(" succeeded")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((1000..1200).contains(&succeeded), "{text}");
    // nghttp: many streams at once, each answered.
    let out = Command::new("nghttp")
        .args(["-n", "-s", "-m", "50"])
        .arg(format!("http://127.0.0.1:{}/echo", gw.port))
        .output()
        .expect("nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("/echo").count(), 50, "{text}");
}

#[test]
fn trailers_pass_both_ways() {
    let be = echo_backend();
    let (gw, _, _) = h2_gateway(&be, "");
    let port = gw.port.to_string();
    // Response trailers (the backend's chunked trailer section) arrive as trailing HEADERS.
    let r = peer(&["exchange", &port, "/trailers", "0", "no"]);
    assert_eq!(r["status"], 200);
    assert_eq!(r["body"], 5);
    assert_eq!(r["trailers"]["grpc-status"], "0");
    assert_eq!(r["trailers"]["grpc-message"], "fine");
    assert_eq!(r["headers"]["content-type"], "application/grpc");
    // A request with a body and trailers goes up chunked, whole.
    let r = peer(&["exchange", &port, "/echo", "300000", "yes"]);
    assert_eq!(r["status"], 200);
    let seen = be.last();
    assert_eq!(seen.body_len, 300_000);
    assert!(seen.header("transfer-encoding").is_some());
}

#[test]
fn abuse_gets_its_rfc_error_and_the_gateway_keeps_serving() {
    let be = echo_backend();
    let (gw, _, _) = h2_gateway(&be, "");
    let port = gw.port.to_string();
    let still_serving = |case: &str| {
        let (out, err, ok) = curl(&[
            "--http2-prior-knowledge",
            &format!("http://127.0.0.1:{port}/echo"),
        ]);
        assert!(ok && out.starts_with("GET"), "after {case}: {out} {err}");
    };

    // Rapid reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM.
    let r = peer(&["rapid_reset", &port, "2000"]);
    assert_eq!(r["goaway"], ENHANCE_YOUR_CALM, "{r}");
    still_serving("rapid reset");
    // CONTINUATION flood (CVE-2024-27316): the endless header block is cut off.
    let r = peer(&["continuation", &port, "200"]);
    assert!(
        r["goaway"].as_u64().is_some_and(|c| c != 0) && r["closed"] == true,
        "{r}"
    );
    still_serving("CONTINUATION flood");
    // A header list over max_header_list_size: 431 on that stream, the connection lives.
    let r = peer(&["big_headers", &port, "40000"]);
    assert_eq!(r["statuses"]["1"], 431, "{r}");
    assert_eq!(r["closed"], false);
    // Connection errors: GOAWAY PROTOCOL_ERROR.
    for kind in [
        "data_on_stream_0",
        "window_update_zero",
        "headers_on_even_stream",
    ] {
        let r = peer(&["bad_frame", &port, kind]);
        assert_eq!(r["goaway"], PROTOCOL_ERROR, "{kind}: {r}");
        assert_eq!(r["closed"], true, "{kind}: {r}");
    }
    // RFC 9113 names FRAME_SIZE_ERROR and COMPRESSION_ERROR for these; the h2 crate sends
    // PROTOCOL_ERROR (README: HTTP/2). Either way a GOAWAY and a closed connection.
    for kind in ["settings_bad_length", "garbage_hpack"] {
        let r = peer(&["bad_frame", &port, kind]);
        assert!(r["goaway"].as_u64().is_some_and(|c| c != 0), "{kind}: {r}");
        assert_eq!(r["closed"], true, "{kind}: {r}");
    }
    still_serving("bad frames");
    // PING and SETTINGS floods: answered (the h2 crate acknowledges them as it writes, so
    // a client that does not read stalls only itself), and the request after them served.
    for kind in ["ping", "settings"] {
        let r = peer(&["flood", &port, kind, "20000"]);
        assert!(
            r["statuses"]["1"] == 200 || r["goaway"] == ENHANCE_YOUR_CALM,
            "{kind} flood: {r}"
        );
    }
    still_serving("floods");
}

#[test]
fn stalled_and_silent_streams_time_out_and_others_are_served() {
    let be = echo_backend();
    let (gw, _, _) = h2_gateway(&be, "send_timeout = 1\nclient_body_timeout = 1");
    let port = gw.port.to_string();
    // A client that never opens its window: the stream is reset after send_timeout.
    let r = peer(&["stall", &port, "/big", "6"]);
    assert_eq!(r["statuses"]["1"], 200, "{r}");
    assert_eq!(r["resets"]["1"], INTERNAL_ERROR, "{r}");
    // A body announced and never sent: 408 after client_body_timeout.
    let r = peer(&["no_body", &port, "/echo", "6"]);
    assert_eq!(r["statuses"]["1"], 408, "{r}");
    let (out, _, ok) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{port}/echo"),
    ]);
    assert!(ok && out.starts_with("GET"), "{out}");
}

#[test]
fn an_idle_connection_gets_a_graceful_goaway_after_keepalive_timeout() {
    let be = echo_backend();
    let (gw, _, _) = h2_gateway(&be, "keepalive_timeout = 1");
    let r = peer(&["idle", &gw.port.to_string(), "8"]);
    assert_eq!(r["goaway"], 0, "NO_ERROR: {r}");
    assert_eq!(r["closed"], true, "{r}");
}
