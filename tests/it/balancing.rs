//! Load-balancing algorithms through the real gateway: chash (APISIX/nginx-compatible ring),
//! least_conn, ewma, and node priority.

use crate::harness::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn chash_config(nodes: &[(String, u32)], hash_on: &str, key: &str) -> String {
    let list: Vec<(&str, u32)> = nodes.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    format!(
        "[[upstreams]]\nid = \"u\"\ntype = \"chash\"\nhash_on = \"{hash_on}\"\nkey = \"{key}\"\nnodes = {}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n",
        nodes_map(&list)
    )
}

/// Which backend answers each key (sent as header X-Key), one fresh connection per key.
fn map_keys(gw: &Gateway, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let r = gw.client().request("GET", "/k", &[("X-Key", k)], b"");
            assert_eq!(r.status, 200);
            r.text()
        })
        .collect()
}

#[test]
fn chash_matches_apisix_vectors() {
    // The vectors name the node addresses, so these backends need those exact ports.
    let b1980 = Backend::named("1980");
    let b1981 = Backend::named("1981");
    // Route through a local port map: the ring hashes the configured node names, so the
    // nodes must be 127.0.0.1:1980 and :1981; forward them to our backends with a tiny relay.
    let _r1 = PortRelay::start(1980, b1980.port);
    let _r2 = PortRelay::start(1981, b1981.port);
    let gw = Gateway::start(&chash_config(
        &[("127.0.0.1:1980".into(), 1), ("127.0.0.1:1981".into(), 1)],
        "header",
        "X-Key",
    ));
    for (key, want) in [
        ("127.0.0.1", "1980"),
        ("jack", "1981"),
        ("tom", "1980"),
        ("custom-one", "1980"),
        ("cuscookie", "1981"),
        ("chash_val_1", "1981"),
        ("chash_val_2", "1980"),
        ("chash_val_3", "1980"),
        ("chash_val_4", "1981"),
        ("chash_val_5", "1980"),
        ("chash_val_6", "1981"),
    ] {
        let r = gw.client().request("GET", "/v", &[("X-Key", key)], b"");
        assert_eq!(r.text(), want, "key {key}");
    }
    // A missing key falls back to the client address: "127.0.0.1" -> 1980.
    assert_eq!(gw.get("/no-key").text(), "1980");
}

/// Forwards a fixed loopback port to another one (so a test can own port 1980 only while it
/// runs, whatever backend answers behind it).
struct PortRelay {
    stop: Arc<AtomicBool>,
    port: u16,
}

impl PortRelay {
    fn start(port: u16, to: u16) -> PortRelay {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} is needed by the APISIX vectors: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        PortRelay { stop, port }
    }
}

impl Drop for PortRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn chash_is_stable_across_workers_restarts_and_node_removal() {
    let backends: Vec<Backend> = (0..5).map(|i| Backend::named(&format!("n{i}"))).collect();
    let nodes: Vec<(String, u32)> = backends.iter().map(|b| (b.addr(), 1)).collect();
    let config = chash_config(&nodes, "header", "X-Key");
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();

    let gw = Gateway::start_with(&config, "workers = 2");
    let first = map_keys(&gw, &keys);
    // Every key again, on fresh connections spread over both workers: identical.
    assert_eq!(map_keys(&gw, &keys), first, "a key moved between workers");
    drop(gw);

    let gw = Gateway::start_with(&config, "workers = 2");
    assert_eq!(map_keys(&gw, &keys), first, "a key moved across a restart");

    // Remove one of five nodes by reload: only that node's keys may move.
    let fewer = chash_config(&nodes[..4], "header", "X-Key");
    gw.write_config(&fewer);
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_for_event(|e| e.contains("config reloaded")));
    let after = map_keys(&gw, &keys);
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    for (a, b) in first.iter().zip(&after) {
        if a != b {
            assert_eq!(a, "n4", "a key of a surviving node moved");
        }
    }
    assert!(moved < 300, "{moved} of 1000 keys moved");
    assert!(moved > 100, "the removed node held about a fifth: {moved}");
}

#[test]
fn chash_follows_weights() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let gw = Gateway::start(&chash_config(
        &[(a.addr(), 3), (b.addr(), 1)],
        "vars",
        "arg_id",
    ));
    let mut c = gw.client();
    let mut on_a = 0;
    for i in 0..10_000 {
        if c.get(&format!("/w?id={i}")).text() == "a" {
            on_a += 1;
        }
    }
    let share = on_a as f64 / 10_000.0;
    assert!((share - 0.75).abs() <= 0.10 * 0.75, "a got {share}");
}

#[test]
fn chash_vars_combinations_and_cookie() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let nodes = [(a.addr(), 1), (b.addr(), 1)];
    let gw = Gateway::start(&chash_config(&nodes, "vars_combinations", "$host$uri"));
    let mut seen = HashMap::new();
    for i in 0..40 {
        let path = format!("/p{}", i % 8);
        let r = gw.client().request("GET", &path, &[], b"");
        let prev = seen.insert(path.clone(), r.text());
        assert!(prev.is_none() || prev == Some(r.text()), "{path} moved");
    }
    assert_eq!(seen.len(), 8);
    let gw = Gateway::start(&chash_config(&nodes, "cookie", "sid"));
    let pick = |sid: &str| {
        gw.client()
            .request(
                "GET",
                "/c",
                &[("Cookie", &format!("theme=dark; sid={sid}"))],
                b"",
            )
            .text()
    };
    for sid in ["s1", "s2", "s3", "s4"] {
        assert_eq!(pick(sid), pick(sid));
    }
}

#[test]
fn least_conn_avoids_a_node_holding_long_requests() {
    let make = |name: &'static str| {
        Backend::start(move |s| {
            if s.target == "/hold" {
                Reply::After(Duration::from_millis(1500), Box::new(Reply::ok(name)))
            } else {
                Reply::ok(name)
            }
        })
    };
    let (a, b) = (make("a"), make("b"));
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&a.addr(), 1), (&b.addr(), 1)]),
        "type = \"least_conn\"",
    ));
    let addr = gw.addr();
    let long = std::thread::spawn(move || Client::connect(addr).get("/hold").text());
    std::thread::sleep(Duration::from_millis(300));
    let quick: Vec<String> = (0..10).map(|_| gw.get("/quick").text()).collect();
    let held = long.join().unwrap();
    assert!(
        quick.iter().all(|q| *q != held),
        "new requests went to the busy node {held}: {quick:?}"
    );
}

#[test]
fn ewma_shifts_traffic_off_a_slow_node_and_back() {
    let slow = Arc::new(AtomicBool::new(false));
    let fast = Backend::named("fast");
    let s = slow.clone();
    let flaky = Backend::start(move |_| {
        if s.load(Ordering::SeqCst) {
            Reply::After(Duration::from_millis(50), Box::new(Reply::ok("flaky")))
        } else {
            Reply::ok("flaky")
        }
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&fast.addr(), 1), (&flaky.addr(), 1)]),
        "type = \"ewma\"",
    ));
    let addr = gw.addr();
    // Share of `flaky` among the requests of 4 concurrent clients over `window`.
    let share = |window: Duration| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let end = Instant::now() + window;
                    let (mut flaky, mut total) = (0, 0);
                    while Instant::now() < end && total < 5000 {
                        if c.get("/e").text() == "flaky" {
                            flaky += 1;
                        }
                        total += 1;
                    }
                    (flaky, total)
                })
            })
            .collect();
        let (f, t) = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        f as f64 / t.max(1) as f64
    };
    // Waits up to 20 s for a one-second window in which `flaky` gets more than `min`.
    let wait_for_share = |min: f64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = share(Duration::from_secs(1));
            if s > min {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: flaky got only {s}");
        }
    };
    // Peak-EWMA reacts to a single slow answer by design, and on a busy 2-core CI machine a
    // scheduling hiccup is one: the node that drew it loses its traffic until its cost has
    // decayed (seconds). So "equal nodes share the traffic" is asserted as "within a few
    // seconds, over a one-second window", not for the first half second.
    wait_for_share(0.2, "both nodes serve while equal");
    slow.store(true, Ordering::SeqCst);
    let _ = share(Duration::from_secs(2));
    let while_slow = share(Duration::from_secs(1));
    assert!(while_slow < 0.1, "slow node still got {while_slow}");
    slow.store(false, Ordering::SeqCst);
    wait_for_share(0.25, "recovered node did not win traffic back");
}

#[test]
fn lower_priority_nodes_serve_only_when_higher_ones_are_down() {
    let primary = Backend::named("primary");
    let backup = Backend::named("backup");
    let dead_port = free_port();
    let config = |primary_addr: &str| {
        format!(
            "[[upstreams]]\nid = \"u\"\nnodes = [{{ host = \"127.0.0.1\", port = {}, weight = 1 }}, {{ host = \"127.0.0.1\", port = {}, weight = 1, priority = -1 }}]\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n",
            primary_addr, backup.port
        )
    };
    let gw = Gateway::start(&config(&primary.port.to_string()));
    for _ in 0..50 {
        assert_eq!(gw.get("/p").text(), "primary");
    }
    assert_eq!(backup.requests(), 0);
    // Primary down: every request still succeeds, on the backup.
    let gw = Gateway::start(&config(&dead_port.to_string()));
    for _ in 0..20 {
        let r = gw.get("/p");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "backup");
    }
}
