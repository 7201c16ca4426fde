//! The loggers (issue #13): http-logger, tcp-logger, udp-logger and file-logger deliver every
//! entry to real sinks on 127.0.0.1, in APISIX's shapes; a sink that is down costs the
//! requests nothing, and what is lost is counted in the metrics.

use crate::harness::tls::{issue, server_config};
use crate::harness::*;
use serde_json::Value;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until `got()` holds at least `n` entries; returns them.
fn wait_entries(n: usize, got: impl Fn() -> Vec<Value>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = got();
        if all.len() >= n {
            return all;
        }
        assert!(Instant::now() < deadline, "{} of {n} entries", all.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The entries in a batch body: one object, an array of them, or one per line.
fn entries(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(one) => vec![one],
        Err(_) => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect(),
    }
}

#[test]
fn http_logger_delivers_every_entry_in_batches_with_apisix_fields() {
    let sink = Backend::named("sink");
    let be = Backend::named("app");
    let gw = Gateway::start_with(
        &format!(
            r#"[[routes]]
id = "logged"
uri = "/logged"
service_id = "svc"
plugins.key-auth = {{}}
plugins.http-logger = {{ uri = "http://{}/collect?x=1", batch_max_size = 5, inactive_timeout = 1, auth_header = "Bearer t0ken" }}
[[routes]]
id = "formatted"
uri = "/formatted"
plugins.http-logger = {{ uri = "http://{0}/fmt", batch_max_size = 1, concat_method = "new_line", log_format = {{ host = "$host", client = "$remote_addr", agent = "$http_user_agent", status = "$status", took = "$request_time", up = "$upstream_addr", fixed = "yes", inner = {{ method = "$request_method" }} }} }}
upstream = {{ nodes = {{ "{1}" = 1 }} }}
[[services]]
id = "svc"
upstream = {{ nodes = {{ "{1}" = 1 }} }}
[[consumers]]
username = "jack"
plugins.key-auth = {{ key = "jack-key" }}
"#,
            sink.addr(),
            be.addr()
        ),
        "workers = 2",
    );
    for i in 0..12 {
        let r = gw.client().request(
            "GET",
            &format!("/logged?n={i}"),
            &[("apikey", "jack-key"), ("X-Trace", "t")],
            b"",
        );
        assert_eq!(r.status, 200);
    }
    let got = || {
        sink.seen()
            .iter()
            .filter(|s| s.target == "/collect?x=1")
            .flat_map(|s| entries(&s.body))
            .collect::<Vec<_>>()
    };
    let all = wait_entries(12, got);
    assert_eq!(all.len(), 12);
    let batch = sink
        .seen()
        .into_iter()
        .find(|s| s.target == "/collect?x=1")
        .unwrap();
    assert_eq!(batch.method, "POST");
    assert_eq!(batch.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(batch.header("content-type"), Some("application/json"));
    // Batches of at most 5: the 12 entries came in at least 3 posts.
    assert!(sink.requests_for("/collect?x=1") >= 3);
    let e = &all[0];
    assert_eq!(e["route_id"], "logged");
    assert_eq!(e["service_id"], "svc");
    assert_eq!(e["consumer"]["username"], "jack");
    assert_eq!(e["request"]["method"], "GET");
    assert_eq!(e["request"]["headers"]["x-trace"], "t");
    assert!(e["request"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("/logged?n="));
    assert!(e["request"]["querystring"]["n"].is_string());
    assert_eq!(e["response"]["status"], 200);
    assert!(e["response"]["size"].as_u64().unwrap() > 0);
    assert!(e["request"]["size"].as_u64().unwrap() > 0);
    assert_eq!(e["upstream"], be.addr());
    assert_eq!(e["client_ip"], "127.0.0.1");
    assert!(e["latency"].as_f64().unwrap() > 0.0);
    assert!(e["upstream_latency"].as_f64().is_some());
    assert!(e["start_time"].as_f64().unwrap() > 1.7e12);

    // log_format: the variables asked for, plus route_id and service_id; one per post.
    let r = gw
        .client()
        .request("GET", "/formatted", &[("User-Agent", "probe/1")], b"");
    assert_eq!(r.status, 200);
    let fmt = wait_entries(1, || {
        sink.seen()
            .iter()
            .filter(|s| s.target == "/fmt")
            .flat_map(|s| entries(&s.body))
            .collect()
    });
    let f = &fmt[0];
    assert_eq!(f["agent"], "probe/1");
    assert_eq!(f["status"], "200");
    assert_eq!(f["client"], "127.0.0.1");
    assert_eq!(f["fixed"], "yes");
    assert_eq!(f["inner"]["method"], "GET");
    assert_eq!(f["up"], be.addr());
    assert_eq!(f["route_id"], "formatted");
    assert!(f["took"].as_f64().is_some());
}

#[test]
fn tcp_udp_and_file_loggers_deliver_to_real_sinks() {
    let be = Backend::named("app");
    // A TCP sink: each connection is one batch.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let tcp_got = Arc::new(Mutex::new(Vec::new()));
    let into = tcp_got.clone();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let mut buf = Vec::new();
            if s.and_then(|mut s| s.read_to_end(&mut buf)).is_ok() {
                into.lock().unwrap().extend(entries(&buf));
            }
        }
    });
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let udp_got = Arc::new(Mutex::new(Vec::new()));
    let into = udp_got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = udp.recv(&mut buf) {
            into.lock().unwrap().extend(entries(&buf[..n]));
        }
    });
    let dir = temp_dir("file-logger");
    let file = dir.join("access.json");
    let gw = Gateway::start(&format!(
        r#"[[routes]]
id = "t"
uri = "/t"
plugins.tcp-logger = {{ host = "127.0.0.1", port = {tcp_port}, batch_max_size = 3, inactive_timeout = 1 }}
plugins.udp-logger = {{ host = "127.0.0.1", port = {udp_port}, batch_max_size = 1 }}
plugins.file-logger = {{ path = "{}" }}
upstream = {{ nodes = {{ "{}" = 1 }} }}
"#,
        file.display(),
        be.addr()
    ));
    for _ in 0..7 {
        assert_eq!(gw.get("/t").status, 200);
    }
    let tcp_entries = wait_entries(7, || tcp_got.lock().unwrap().clone());
    let udp_entries = wait_entries(7, || udp_got.lock().unwrap().clone());
    let file_entries = wait_entries(7, || {
        std::fs::read(&file)
            .map(|b| entries(&b))
            .unwrap_or_default()
    });
    for e in [&tcp_entries[0], &udp_entries[0], &file_entries[0]] {
        assert_eq!(e["route_id"], "t");
        assert_eq!(e["response"]["status"], 200);
    }
    assert_eq!(
        (tcp_entries.len(), udp_entries.len(), file_entries.len()),
        (7, 7, 7)
    );
}

#[test]
fn a_sink_that_is_down_costs_requests_nothing_and_drops_are_counted_until_it_is_back() {
    let be = Backend::named("app");
    let sink_port = free_port();
    let mport = free_port();
    let gw = Gateway::start(&format!(
        r#"[plugin_attr.prometheus]
export_addr = "127.0.0.1:{mport}"
[[routes]]
uri = "/d"
plugins.http-logger = {{ uri = "http://127.0.0.1:{sink_port}/in", batch_max_size = 2, inactive_timeout = 1, max_retry_count = 1, retry_delay = 1, timeout = 1 }}
upstream = {{ nodes = {{ "{}" = 1 }} }}
"#,
        be.addr()
    ));
    let scrape = || {
        Client::connect(([127, 0, 0, 1], mport).into())
            .get("/apisix/prometheus/metrics")
            .text()
    };
    let count = |text: &str, result: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("shardgate_logger_entries_total{logger=\"http-logger\"")
                    && l.contains(&format!("result=\"{result}\""))
                    && l.contains(&format!(":{sink_port}/in"))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    // Down: requests are answered as usual; the 4 entries are tried twice, then dropped.
    for _ in 0..4 {
        let t = Instant::now();
        assert_eq!(gw.get("/d").status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(&scrape(), "dropped") < 4.0 {
        assert!(Instant::now() < deadline, "{}", scrape());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back: later entries flow again, with no reload.
    let sink = TcpListener::bind(("127.0.0.1", sink_port)).unwrap();
    let got = Arc::new(Mutex::new(0usize));
    let into = got.clone();
    std::thread::spawn(move || {
        for s in sink.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = vec![0u8; 65536];
            let mut all = Vec::new();
            // Read the head and the body (Content-Length), answer 200.
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&all).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        *into.lock().unwrap() += entries(body.as_bytes()).len();
                        use std::io::Write;
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                        break;
                    }
                }
            }
        }
    });
    for _ in 0..3 {
        assert_eq!(gw.get("/d").status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while *got.lock().unwrap() < 3 {
        assert!(Instant::now() < deadline, "{}", scrape());
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = scrape();
    assert_eq!(count(&text, "sent"), 3.0, "{text}");
    assert_eq!(count(&text, "dropped"), 4.0, "{text}");
}

#[test]
fn logger_configs_are_checked_with_the_field_named() {
    for (plugin, want) in [
        ("http-logger = { uri = \"ftp://x/\" }", "uri"),
        (
            "http-logger = { uri = \"https://x/\", ssl_verify = \"yes\" }",
            "ssl_verify",
        ),
        (
            "http-logger = { uri = \"http://x/\", include_req_body = true }",
            "include_req_body",
        ),
        (
            "http-logger = { uri = \"http://x/\", log_format = { a = \"$no_such_var\" } }",
            "log_format.a",
        ),
        (
            "http-logger = { uri = \"http://x/\", batch_max_size = 0 }",
            "batch_max_size",
        ),
        ("tcp-logger = { host = \"127.0.0.1\" }", "port"),
        (
            "tcp-logger = { host = \"127.0.0.1\", port = 9, tls = 1 }",
            "tls",
        ),
        ("file-logger = { }", "path"),
        (
            "file-logger = { path = \"/tmp/x\", match = [[[\"arg_a\", \"~~\", \"(\"]]] }",
            "match[0][0]",
        ),
        ("http-logger = { uri = \"http://x/\", match = [] }", "match"),
        ("udp-logger = { host = \"h\", port = 1, nope = 1 }", "nope"),
    ] {
        let (ok, err) = check_config(&format!(
            "[[routes]]\nuri = \"/\"\nplugins.{plugin}\nupstream = {{ nodes = {{ \"127.0.0.1:1\" = 1 }} }}\n"
        ));
        assert!(!ok, "{plugin}");
        assert!(err.contains(want), "{plugin}: {err}");
    }
}

/// What a TLS log server got on one connection: the SNI it was sent, the entries.
type SniAndEntries = (Option<String>, Vec<Value>);

#[test]
fn loggers_ship_over_tls_verified_or_not_with_their_sni() {
    let be = Backend::named("app");
    let dir = temp_dir("logger-tls");
    certificates(&dir);
    let san = Some("DNS:localhost,IP:127.0.0.1");
    issue(&dir, "wrong", "/CN=wrong", san, "other", false);
    // HTTPS sinks: one with a certificate from the trusted CA, one from a CA nobody trusts.
    let good = Backend::start_tls(server_config(&dir, "server", false), |_| Reply::ok("ok"));
    let wrong = Backend::start_tls(server_config(&dir, "wrong", false), |_| Reply::ok("ok"));
    // A TLS TCP sink: each connection's SNI and the entries it carried.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let tcp_got: Arc<Mutex<Vec<SniAndEntries>>> = Arc::default();
    let (into, config) = (tcp_got.clone(), server_config(&dir, "server", false));
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(s) = s else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            let mut buf = Vec::new();
            // Ends with the logger's close_notify: read_to_end sees a clean end.
            if tls.read_to_end(&mut buf).is_ok() {
                let sni = tls.conn.server_name().map(str::to_string);
                into.lock().unwrap().push((sni, entries(&buf)));
            }
        }
    });
    let mport = free_port();
    let port = |b: &Backend| b.addr().rsplit_once(':').unwrap().1.to_string();
    let (gp, wp) = (port(&good), port(&wrong));
    let gw = Gateway::start_with(
        &format!(
            r#"[plugin_attr.prometheus]
export_addr = "127.0.0.1:{mport}"
[[routes]]
uri = "/verified"
plugins.http-logger = {{ uri = "https://localhost:{gp}/v", ssl_verify = true, batch_max_size = 1 }}
upstream_id = "app"
[[routes]]
uri = "/unverified"
plugins.http-logger = {{ uri = "https://127.0.0.1:{wp}/u", batch_max_size = 1 }}
upstream_id = "app"
[[routes]]
uri = "/refused"
plugins.http-logger = {{ uri = "https://localhost:{wp}/r", ssl_verify = true, batch_max_size = 1, max_retry_count = 0 }}
upstream_id = "app"
[[routes]]
uri = "/tcp"
plugins.tcp-logger = {{ host = "127.0.0.1", port = {tcp_port}, tls = true, tls_options = "logs.test", batch_max_size = 1 }}
upstream_id = "app"
[[upstreams]]
id = "app"
nodes = {{ "{}" = 1 }}
"#,
            be.addr()
        ),
        &format!(
            "ssl_trusted_certificate = \"{}\"",
            dir.join("ca.pem").display()
        ),
    );
    for path in ["/verified", "/unverified", "/refused", "/tcp"] {
        for _ in 0..3 {
            assert_eq!(gw.get(path).status, 200, "{path}");
        }
    }
    let from = |be: &Backend, target: &str| {
        be.seen()
            .iter()
            .filter(|s| s.target == target)
            .flat_map(|s| entries(&s.body))
            .collect::<Vec<_>>()
    };
    let verified = wait_entries(3, || from(&good, "/v"));
    assert_eq!(verified[0]["request"]["uri"], "/verified");
    assert!(good
        .handshakes()
        .iter()
        .all(|h| h.sni.as_deref() == Some("localhost")));
    // Not verified: the untrusted certificate is taken (an IP: no SNI).
    let unverified = wait_entries(3, || from(&wrong, "/u"));
    assert_eq!(unverified[0]["request"]["uri"], "/unverified");
    let tcp_entries = wait_entries(3, || {
        tcp_got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, e)| e.clone())
            .collect()
    });
    assert_eq!(tcp_entries[0]["request"]["uri"], "/tcp");
    assert!(tcp_got
        .lock()
        .unwrap()
        .iter()
        .all(|(sni, _)| sni.as_deref() == Some("logs.test")));
    // Verified against a certificate the trusted CA did not sign: nothing delivered, the
    // entries dropped and counted.
    let dropped = || {
        Client::connect(([127, 0, 0, 1], mport).into())
            .get("/apisix/prometheus/metrics")
            .text()
            .lines()
            .filter(|l| {
                l.starts_with("shardgate_logger_entries_total{logger=\"http-logger\"")
                    && l.contains("result=\"dropped\"")
                    && l.contains(&format!(":{wp}/r"))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while dropped() < 3.0 {
        assert!(Instant::now() < deadline, "{} dropped", dropped());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(from(&wrong, "/r").is_empty());
}

#[test]
fn file_logger_match_logs_only_the_requests_it_names() {
    // APISIX's `match`: one of the lists must hold, every condition of it; the response's
    // status is a variable too.
    let be = Backend::named("app");
    let dir = temp_dir("file-logger-match");
    let file = dir.join("matched.json");
    let gw = Gateway::start(&format!(
        r#"[[routes]]
id = "m"
uri = "/m/*"
plugins.file-logger = {{ path = "{}", match = [[["arg_name", "==", "jack"], ["request_method", "==", "GET"]], [["status", "==", 404]]] }}
plugins.response-rewrite = {{ status_code = 404, vars = [["uri", "==", "/m/gone"]] }}
upstream = {{ nodes = {{ "{}" = 1 }} }}
"#,
        file.display(),
        be.addr()
    ));
    let mut c = gw.client();
    // Logged: the first (jack, GET) and the fourth (404); not: a POST by jack, rose, no name.
    for (method, path) in [
        ("GET", "/m/a?name=jack"),
        ("POST", "/m/b?name=jack"),
        ("GET", "/m/c?name=rose"),
        ("GET", "/m/gone"),
        ("GET", "/m/d"),
    ] {
        let r = c.request(method, path, &[], b"");
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
    }
    let got = wait_entries(2, || {
        std::fs::read(&file)
            .map(|b| entries(&b))
            .unwrap_or_default()
    });
    // The last request is logged after the others (one shipper, in order): nothing more.
    std::thread::sleep(Duration::from_millis(300));
    let all = entries(&std::fs::read(&file).unwrap());
    assert_eq!(all.len(), 2, "{all:?}");
    let uris: Vec<_> = got.iter().map(|e| e["request"]["uri"].clone()).collect();
    assert_eq!(uris, ["/m/a?name=jack", "/m/gone"], "{all:?}");
    assert_eq!(got[1]["response"]["status"], 404);
}
