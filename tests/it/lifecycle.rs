//! Process lifecycle: `check`, the shipped config with its demo backends, SIGHUP reload under
//! traffic, refused reloads, SIGTERM draining in-flight requests.

use crate::harness::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn repo_file(name: &str) -> String {
    format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_shipped_config_and_names_bad_fields() {
    let out = Command::new(bin())
        .args(["check", "-c", &repo_file("config.toml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("syntax is ok"));

    let cases = [
        (
            "[[upstreams]]\nid = \"u\"\nretries = -1\nnodes = { \"127.0.0.1:1\" = 1 }\n",
            "upstreams[0] (id \"u\").retries",
        ),
        (
            "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"missing\"\n",
            "routes[0] (id \"r\").upstream_id",
        ),
        ("[gateway]\nworkerz = 2\n", "workerz"),
        ("[[routes]]\nuri = \"/\"\nupstream_id = \n", "line 3"),
    ];
    for (text, want) in cases {
        let (ok, err) = check_config(text);
        assert!(!ok, "{text}");
        assert!(err.contains(want), "{err:?} should name {want:?}");
    }
}

#[test]
fn shipped_config_answers_with_its_demo_backends() {
    // Run where its store (data/) may be created.
    let cwd = temp_dir("shipped");
    let mut child = Command::new(bin())
        .args(["run", "-c", &repo_file("config.toml")])
        .current_dir(&cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9080));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "shipped config did not start");
        assert!(child.try_wait().unwrap().is_none(), "gateway exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(addr);
    let mut demo1 = 0;
    for _ in 0..8 {
        let r = c.get("/api/hello");
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["uri"], "/api/hello");
        if j["backend"] == "demo-1" {
            demo1 += 1;
        }
    }
    assert_eq!(demo1, 6, "3:1 weights over 8 requests on one connection");
    let r = c.request("GET", "/api/x", &[("X-Env", "canary")], b"");
    assert_eq!(r.json()["backend"], "demo-2");
    // The shipped global rule records every request; its exporter answers on 9091.
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], 9091));
    let text = Client::connect(metrics)
        .get("/apisix/prometheus/metrics")
        .text();
    assert!(
        text.contains("apisix_http_status{code=\"200\",route=\"api\""),
        "{text}"
    );

    // APISIX's quickstart against the Admin API, with the key generated on first start.
    let key = std::fs::read_to_string(cwd.join("data/admin_key")).expect("a generated key");
    let mode = std::fs::metadata(cwd.join("data/admin_key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 9180));
    let r = Client::connect(admin).request(
        "PUT",
        "/apisix/admin/routes/1",
        &[("X-API-KEY", key.trim())],
        br#"{"uri":"/get","upstream":{"nodes":{"127.0.0.1:9001":1}}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.get("/get");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "demo-1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
}

fn two_backend_config(target: &str, a: &Backend, b: &Backend) -> String {
    format!(
        "[[upstreams]]\nid = \"a\"\nnodes = {}\n[[upstreams]]\nid = \"b\"\nnodes = {}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"{target}\"\n",
        nodes_map(&[(&a.addr(), 1)]),
        nodes_map(&[(&b.addr(), 1)])
    )
}

#[test]
fn sighup_reload_under_traffic_drops_nothing() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start_with(&two_backend_config("a", &a, &b), "workers = 2");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for t in 0..4 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        let addr = gw.addr();
        loaders.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut c = Client::connect(addr);
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                // Alternate keep-alive and fresh connections.
                if i % 50 == 0 {
                    c = Client::connect(addr);
                }
                c.send("GET", &format!("/load/{t}/{i}"), &[], b"");
                match c.read_response(false) {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        c = Client::connect(addr);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..4 {
        let target = if round % 2 == 0 { "b" } else { "a" };
        gw.write_config(&two_backend_config(target, &a, &b));
        gw.signal(libc::SIGHUP);
        let want = format!("config reloaded: version {}", round + 2);
        assert!(gw.wait_for_event(|e| e.contains(&want)), "{}", gw.events());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }
    assert!(done.load(Ordering::SeqCst) > 100);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(a.requests() > 0 && b.requests() > 0);
    // Last config routes to "a".
    assert_eq!(gw.get("/final").text(), "a");
}

#[test]
fn invalid_reload_is_refused_and_old_config_keeps_serving() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start(&two_backend_config("a", &a, &b));
    gw.write_config("[[upstreams]]\nid = \"a\"\nnodes = { \"127.0.0.1:1\" = -5 }\n");
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("reload refused")),
        "{}",
        gw.events()
    );
    assert!(gw.events().contains("upstreams[0] (id \"a\").nodes"));
    assert_eq!(gw.get("/still").text(), "a");
}

#[test]
fn config_file_change_is_picked_up_without_a_signal() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start_with(&two_backend_config("a", &a, &b), "watch_config = true");
    assert_eq!(gw.get("/x").text(), "a");
    gw.write_config(&two_backend_config("b", &a, &b));
    assert!(
        gw.wait_for_event(|e| e.contains("config reloaded")),
        "{}",
        gw.events()
    );
    assert_eq!(gw.get("/x").text(), "b");
}

/// A gateway with `workers` workers in front of a backend that answers "finished" after 3 s.
fn gateway_before_a_slow_backend(workers: usize) -> (Backend, Gateway) {
    let slow = Backend::start(|_| {
        Reply::After(Duration::from_millis(3000), Box::new(Reply::ok("finished")))
    });
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&slow.addr(), 1)]), ""),
        &format!("workers = {workers}\ngraceful_shutdown_timeout = 10"),
    );
    (slow, gw)
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let (_slow, mut gw) = gateway_before_a_slow_backend(2);
    let addr = gw.addr();
    let inflight: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.get(&format!("/slow/{i}"));
                (
                    r.status,
                    r.text(),
                    r.header("connection").map(str::to_string),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    gw.signal(libc::SIGTERM);
    // While the requests drain, the listeners are shut: new connections are refused (within
    // a tick of the signal) rather than queued on a socket nobody accepts from any more. The
    // drain lasts until the slow answers come (about 2.6 s from here), so the port is still
    // ours while this looks.
    let signalled = Instant::now();
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                signalled.elapsed() < Duration::from_secs(2),
                "still accepting {:?} after SIGTERM: {other:?}\n{}",
                signalled.elapsed(),
                gw.events()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in inflight {
        let (status, text, connection) = h.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(text, "finished");
        assert_eq!(connection.as_deref(), Some("close"));
    }
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("gateway did not exit");
    assert!(status.success(), "{status}");
    // (Not checked: that the port refuses connections afterwards. Once the process is gone the
    // port is free, and a concurrently running test may bind it.)
    assert!(gw.events().contains("stopped"), "{}", gw.events());
}

#[test]
fn sigterm_shuts_idle_workers_listeners_too() {
    // One request in flight and four workers: at least three have nothing to drain and stop
    // at once, the process stays up for the fourth. Every listener must be shut, not only
    // those of the worker still draining.
    let (_slow, mut gw) = gateway_before_a_slow_backend(4);
    let addr = gw.addr();
    let inflight = std::thread::spawn(move || Client::connect(addr).get("/slow").text());
    std::thread::sleep(Duration::from_millis(400));
    gw.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 10 {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused_in_a_row += 1,
            other => {
                refused_in_a_row = 0;
                assert!(
                    signalled.elapsed() < Duration::from_secs(2),
                    "still accepting {:?} after SIGTERM: {other:?}\n{}",
                    signalled.elapsed(),
                    gw.events()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(inflight.join().unwrap(), "finished");
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("gateway did not exit");
    assert!(status.success(), "{status}");
}

#[test]
fn a_reload_mid_request_keeps_that_requests_settings() {
    // 16 MiB that the client does not read for 2 s: with the 30 s send_timeout the request
    // started with, it arrives whole; the 0.5 s one a reload brings in meanwhile must not
    // apply to it.
    const SIZE: u64 = 16 << 20;
    let be = Backend::start(|_| {
        Reply::After(
            std::time::Duration::from_millis(800),
            Box::new(Reply::Pattern(SIZE)),
        )
    });
    let body = upstream_config(&nodes_map(&[(&be.addr(), 1)]), "");
    let gw = Gateway::start_with(&body, "workers = 1\nsend_timeout = 30");
    let mut c = gw.client();
    c.send("GET", "/big", &[], b"");
    // The request must have started (reached the backend) before the reload.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while be.requests() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace("send_timeout = 30", "send_timeout = 0.5"),
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("config reloaded")),
        "{}",
        gw.events()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let r = c.read_response(false).expect("the whole response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, SIZE);
    assert!(
        gw.events().contains("version 2"),
        "the reload was taken: {}",
        gw.events()
    );
}

#[test]
fn balancer_and_plugin_state_survive_a_reload_of_something_else() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let c = Backend::named("c");
    // Route /rr: round robin 3:1 (a a b a a a b a); route /split: traffic-split 3:1 between
    // upstream "a" and "b" (the same smooth sequence, kept by the plugin's per-core state).
    let config = |extra: &str| {
        format!(
            r#"
[[upstreams]]
id = "rr"
nodes = [{{ host = "127.0.0.1", port = {ap}, weight = 3 }}, {{ host = "127.0.0.1", port = {bp}, weight = 1 }}]
[[upstreams]]
id = "a"
nodes = {{ "{a}" = 1 }}
[[upstreams]]
id = "b"
nodes = {{ "{b}" = 1 }}
[[routes]]
id = "rr"
uri = "/rr"
upstream_id = "rr"
[[routes]]
id = "split"
uri = "/split"
upstream_id = "c"
[routes.plugins.traffic-split]
rules = [{{ weighted_upstreams = [{{ upstream_id = "a", weight = 3 }}, {{ upstream_id = "b", weight = 1 }}] }}]
[[upstreams]]
id = "c"
nodes = {{ "{c}" = 1 }}
{extra}
"#,
            a = a.addr(),
            b = b.addr(),
            c = c.addr(),
            ap = a.port,
            bp = b.port
        )
    };
    let gw = Gateway::start(&config(""));
    let mut client = gw.client();
    let mut take =
        |path: &str, n: usize| -> Vec<String> { (0..n).map(|_| client.get(path).text()).collect() };
    assert_eq!(take("/rr", 2), ["a", "a"]);
    assert_eq!(take("/split", 2), ["a", "a"]);
    // An unrelated change: a new route.
    gw.write_config(&config(
        "[[routes]]\nid = \"new\"\nuri = \"/new\"\nupstream_id = \"c\"\n",
    ));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("live on all workers") && e.contains("version 2")),
        "{}",
        gw.events()
    );
    assert_eq!(gw.get("/new").text(), "c");
    // Both sequences go on where they were (a reset would start again with "a a").
    assert_eq!(take("/rr", 2), ["b", "a"]);
    assert_eq!(take("/split", 2), ["b", "a"]);
    // Changing the upstream itself starts its balancer afresh.
    gw.write_config(&config("").replace("weight = 3", "weight = 2"));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("version 3")),
        "{}",
        gw.events()
    );
    assert_eq!(take("/rr", 3), ["a", "b", "a"]);
}

#[test]
fn a_reload_applies_resources_and_client_settings_and_reports_process_settings() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start(&two_backend_config("a", &a, &b));
    let many_headers = [("X-1", "1"), ("X-2", "2"), ("X-3", "3"), ("X-4", "4")];
    assert_eq!(
        gw.client().request("GET", "/x", &many_headers, b"").status,
        200
    );
    // Process settings (workers, io_uring entries) wait for a restart; a client limit and
    // the resources change now.
    let section = gw.gateway_section().replace(
        "workers = 1",
        "workers = 3\nio_uring_entries = 2048\nmax_headers = 4",
    );
    gw.write_whole_config(&format!("{section}\n{}", two_backend_config("b", &a, &b)));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("config reloaded")),
        "{}",
        gw.events()
    );
    let events = gw.events();
    assert!(
        events.contains("gateway.workers changed: it takes effect at the next restart"),
        "{events}"
    );
    assert!(
        events.contains("gateway.io_uring_entries changed"),
        "{events}"
    );
    assert!(!events.contains("gateway.max_headers changed"), "{events}");
    assert_eq!(gw.get("/x").text(), "b");
    assert_eq!(
        gw.client().request("GET", "/x", &many_headers, b"").status,
        431,
        "the new header limit applies"
    );
}

#[test]
fn node_host_names_resolve_or_are_refused_with_their_field() {
    let be = Backend::named("named");
    let port = be.addr().rsplit_once(':').unwrap().1.to_string();
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {{ \"localhost:{port}\" = 1 }}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n"
    ));
    assert_eq!(gw.get("/x").text(), "named");
    // A name that does not resolve: refused at load, the field named; a reload keeps serving.
    let bad = "[[upstreams]]\nid = \"u\"\nnodes = { \"no-such-host.invalid:80\" = 1 }\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n";
    let (ok, err) = check_config(bad);
    assert!(!ok);
    assert!(
        err.contains("upstreams[0] (id \"u\").nodes.\"no-such-host.invalid:80\"")
            && err.contains("cannot resolve"),
        "{err}"
    );
    gw.write_config(bad);
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_for_event(|e| e.contains("reload refused")));
    assert_eq!(gw.get("/x").text(), "named");
}
