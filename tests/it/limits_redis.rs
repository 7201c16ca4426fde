//! limit-count with `policy = "redis"` and `"redis-cluster"` against real Redis servers:
//! exact across gateway processes, and what happens when Redis dies or stalls.

use crate::harness::redis::{cli, shared_cluster, shared_redis, Redis};
use crate::harness::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A route id no other test (or run) uses, so counters in a shared Redis never meet.
fn unique_id(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn route(id: &str, be: &Backend, limit: &str) -> String {
    format!(
        "[[routes]]\nid = \"{id}\"\nuri = \"/{id}\"\nplugins.limit-count = {limit}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        be.addr()
    )
}

/// Sends `total` requests, alternating between the gateways, a new connection each, from
/// `threads` threads; counts (200, 503, other).
fn flood(gws: &[&Gateway], path: &str, total: usize, threads: usize) -> (usize, usize, usize) {
    let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let addrs: Vec<_> = gws.iter().map(|g| g.addr()).collect();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (counts, addrs, path) = (counts.clone(), addrs.clone(), path.to_string());
            std::thread::spawn(move || {
                for i in (t..total).step_by(threads) {
                    let r = Client::connect(addrs[i % addrs.len()]).request("GET", &path, &[], b"");
                    let slot = match r.status {
                        200 => 0,
                        503 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let [a, b, c] = &*counts;
    (
        a.load(Ordering::Relaxed),
        b.load(Ordering::Relaxed),
        c.load(Ordering::Relaxed),
    )
}

#[test]
fn two_gateways_sharing_one_redis_admit_exactly_count_together() {
    let (addr, _private) = shared_redis();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let be = Backend::start(|_| Reply::ok("ok"));
    let id = unique_id("redis");
    let body = route(
        &id,
        &be,
        &format!("{{ count = 100, time_window = 60, policy = \"redis\", redis_host = \"{host}\", redis_port = {port} }}"),
    );
    let a = Gateway::start_with(&body, "workers = 2");
    let b = Gateway::start_with(&body, "workers = 2");
    // The quota headers come from Redis's count.
    let r = a.get(&format!("/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("60"));
    // 299 more over both gateways' four workers: exactly 99 pass.
    assert_eq!(flood(&[&a, &b], &format!("/{id}"), 299, 20), (99, 200, 0));
    let r = b.get(&format!("/{id}"));
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (503, Some("0"))
    );
}

#[test]
fn two_gateways_sharing_a_redis_cluster_admit_exactly_count_together() {
    let Some(nodes) = shared_cluster() else {
        panic!("no Redis Cluster: run the suite with tests/run.sh, which starts one");
    };
    let be = Backend::start(|_| Reply::ok("ok"));
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut body = String::new();
    let mut ids = Vec::new();
    // Several routes, so their keys land on different masters.
    for _ in 0..4 {
        let id = unique_id("cluster");
        body.push_str(&route(
            &id,
            &be,
            &format!("{{ count = 20, time_window = 60, policy = \"redis-cluster\", redis_cluster_nodes = [{list}], redis_cluster_name = \"test\" }}"),
        ));
        ids.push(id);
    }
    let a = Gateway::start_with(&body, "workers = 2");
    let b = Gateway::start_with(&body, "workers = 2");
    for id in &ids {
        assert_eq!(
            flood(&[&a, &b], &format!("/{id}"), 50, 10),
            (20, 30, 0),
            "{id}"
        );
    }
    // The counters are spread over the masters: more than one holds some.
    let holding = nodes
        .iter()
        .filter(|n| cli(n, &["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(holding >= 2, "all counters on one master");
}

/// Waits until `/closed` stops answering 500 (Redis reachable again).
fn recovered(gw: &Gateway) {
    let started = Instant::now();
    while gw.get("/closed").status == 500 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redis_down_or_stalled_follows_allow_degradation_and_recovers_by_itself() {
    let mut redis = Redis::start();
    let be = Backend::start(|_| Reply::ok("ok"));
    let limit = |degrade: bool| {
        format!(
            "{{ count = 2, time_window = 60, policy = \"redis\", redis_host = \"127.0.0.1\", redis_port = {}, redis_timeout = 300, allow_degradation = {degrade} }}",
            redis.port
        )
    };
    let body = format!(
        "{}{}",
        route("open", &be, &limit(true)),
        route("closed", &be, &limit(false))
    );
    // One worker: every request meets the same connection's state (each worker has its own).
    let gw = Gateway::start(&body);
    let statuses =
        |path: &str, n: usize| -> Vec<u16> { (0..n).map(|_| gw.get(path).status).collect() };
    assert_eq!(statuses("/open", 3), [200, 200, 503]);
    assert_eq!(statuses("/closed", 3), [200, 200, 503]);

    // Killed: the degrading route lets everything through, the other answers 500 with
    // APISIX's message; neither waits long for a dead server.
    redis.kill();
    let started = Instant::now();
    assert_eq!(statuses("/open", 5), [200; 5]);
    let r = gw.get("/closed");
    assert_eq!(
        (r.status, r.json()["error_msg"].as_str()),
        (500, Some("failed to limit count"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(gw.wait_for_event(|e| e.contains("redis 127.0.0.1:")));

    // Back (empty): limiting resumes within about a second, without a reload.
    redis.restart();
    recovered(&gw);
    assert_eq!(gw.get("/closed").status, 200);
    assert_eq!(gw.get("/closed").status, 503);

    // Stalled (SIGSTOP): calls time out after redis_timeout and degrade the same way; once
    // it runs again, limits apply again.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(redis.pid() as i32, libc::SIGSTOP) };
    let r = gw.get("/closed");
    assert_eq!(r.status, 500);
    assert_eq!(gw.get("/open").status, 200);
    unsafe { libc::kill(redis.pid() as i32, libc::SIGCONT) };
    recovered(&gw);
    assert_eq!(gw.get("/closed").status, 503);
}

#[test]
fn limit_req_and_limit_conn_in_redis_hold_across_two_gateways() {
    let (addr, _private) = shared_redis();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let redis = format!("policy = \"redis\", redis_host = \"{host}\", redis_port = {port}");
    let be = Backend::start(|s| match s.target.as_str() {
        t if t.contains("slow") => {
            Reply::After(Duration::from_millis(800), Box::new(Reply::ok("slow")))
        }
        _ => Reply::ok("ok"),
    });
    let (req, conn) = (unique_id("req"), unique_id("conn-slow"));
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let body = format!(
        "[[routes]]\nid = \"{req}\"\nuri = \"/{req}\"\n\
         plugins.limit-req = {{ rate = 0.1, burst = 9, key = \"remote_addr\", nodelay = true, {redis} }}\n{up}\n\
         [[routes]]\nid = \"{conn}\"\nuri = \"/{conn}\"\n\
         plugins.limit-conn = {{ conn = 1, burst = 0, default_conn_delay = 0.1, key = \"remote_addr\", {redis} }}\n{up}\n"
    );
    let a = Gateway::start_with(&body, "workers = 2");
    let b = Gateway::start_with(&body, "workers = 2");
    // One leaky bucket for both gateways: 1 + a burst of 9 pass, the rest are refused.
    assert_eq!(flood(&[&a, &b], &format!("/{req}"), 40, 8), (10, 30, 0));

    // One request in progress on gateway a: gateway b refuses the next, then admits one
    // once a's has ended (released with ZREM), also when a's client went away.
    for abort in [false, true] {
        let path = format!("/{conn}");
        // The holder's request is counted in Redis once it reached the backend (a loaded
        // machine may take a while). The previous round's release is a ZREM sent after its
        // answer: a holder that comes first is refused, and tries again.
        let started = Instant::now();
        let mut holder = loop {
            let before = be.requests_for(&path);
            let mut holder = Client::connect(a.addr());
            holder.send("GET", &path, &[], b"");
            let sent = Instant::now();
            while be.requests_for(&path) == before && sent.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if be.requests_for(&path) > before {
                break holder;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never proxied");
        };
        assert_eq!(b.get(&path).status, 503, "abort={abort}");
        if abort {
            drop(holder);
        } else {
            assert_eq!(holder.read_response(false).unwrap().status, 200);
        }
        let started = Instant::now();
        while b.get(&format!("/{conn}")).status != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never released (abort={abort})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
