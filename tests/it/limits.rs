//! Rate limiting through real sockets (issue #12): limit-count, limit-req and limit-conn
//! with `policy = "local"`, exact across workers.

use crate::harness::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn upstream(be: &Backend) -> String {
    format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr())
}

/// Sends `total` GETs to `path` from `threads` threads, a new connection each, and counts
/// the answers by status.
fn flood(gw: &Gateway, path: &str, total: usize, threads: usize) -> (usize, usize, usize) {
    let (ok, refused, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let addr = gw.addr();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ok, refused, other) = (ok.clone(), refused.clone(), other.clone());
            let path = path.to_string();
            let n = total / threads + usize::from(t < total % threads);
            std::thread::spawn(move || {
                for _ in 0..n {
                    let r = Client::connect(addr).request("GET", &path, &[], b"");
                    match r.status {
                        200 => &ok,
                        503 => &refused,
                        _ => &other,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

#[test]
fn limit_count_local_is_exact_for_the_whole_gateway_not_per_worker() {
    let be = Backend::start(|_| Reply::ok("ok"));
    let body = format!(
        "[[routes]]\nuri = \"/c\"\nplugins.limit-count = {{ count = 100, time_window = 60 }}\n{}\n",
        upstream(&be)
    );
    let gw = Gateway::start_with(&body, "workers = 2");
    // 300 requests on 300 connections from 30 threads: the kernel spreads the connections
    // over both workers' listeners; together they admit exactly 100.
    let (ok, refused, other) = flood(&gw, "/c", 300, 30);
    assert_eq!((ok, refused, other), (100, 200, 0));
}

#[test]
fn limit_count_headers_keys_groups_windows_and_reloads() {
    let be = Backend::start(|_| Reply::ok("ok"));
    let up = upstream(&be);
    let routes = |count: u32| {
        format!(
            "[[routes]]\nid = \"user\"\nuri = \"/user\"\n\
             plugins.limit-count = {{ count = {count}, time_window = 2, key = \"http_x_user\", rejected_code = 429, rejected_msg = \"slow down\" }}\n{up}\n\
             [[routes]]\nid = \"g1\"\nuri = \"/g1\"\n\
             plugins.limit-count = {{ count = 3, time_window = 60, key = \"shared\", key_type = \"constant\", group = \"g\" }}\n{up}\n\
             [[routes]]\nid = \"g2\"\nuri = \"/g2\"\n\
             plugins.limit-count = {{ count = 3, time_window = 60, key = \"shared\", key_type = \"constant\", group = \"g\" }}\n{up}\n\
             [[routes]]\nid = \"combo\"\nuri = \"/combo\"\n\
             plugins.limit-count = {{ count = 1, time_window = 60, key = \"$http_x_a:$http_x_b\", key_type = \"var_combination\", show_limit_quota_header = false }}\n{up}\n"
        )
    };
    let gw = Gateway::start(&routes(2));
    let get = |path: &str, headers: &[(&str, &str)]| gw.client().request("GET", path, headers, b"");
    let quota = |r: &Response| {
        (
            r.header("x-ratelimit-limit").unwrap_or("-").to_string(),
            r.header("x-ratelimit-remaining").unwrap_or("-").to_string(),
        )
    };

    // Per user: 2 pass with the quota headers, the third is refused with rejected_code and
    // rejected_msg and still carries them.
    let r = get("/user", &[("X-User", "ann")]);
    assert_eq!(r.status, 200);
    assert_eq!(quota(&r), ("2".into(), "1".into()));
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some("2"),
        "the window opened"
    );
    let r = get("/user", &[("X-User", "ann")]);
    assert_eq!((r.status, quota(&r)), (200, ("2".into(), "0".into())));
    let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 0.0 && reset <= 2.0, "{reset}");
    let r = get("/user", &[("X-User", "ann")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error_msg"], "slow down");
    assert_eq!(quota(&r), ("2".into(), "0".into()));
    // Another user has their own counter; no X-User counts as the client address.
    assert_eq!(get("/user", &[("X-User", "bob")]).status, 200);
    assert_eq!(get("/user", &[]).status, 200);
    assert_eq!(get("/user", &[]).status, 200);
    assert_eq!(get("/user", &[]).status, 429);

    // Routes in one group share one counter.
    assert_eq!(get("/g1", &[]).status, 200);
    assert_eq!(get("/g2", &[]).status, 200);
    assert_eq!(get("/g1", &[]).status, 200);
    let r = get("/g2", &[]);
    assert_eq!((r.status, quota(&r)), (503, ("3".into(), "0".into())));

    // var_combination: the rendered text is the key; no quota headers when turned off.
    let r = get("/combo", &[("X-A", "1"), ("X-B", "2")]);
    assert_eq!((r.status, quota(&r)), (200, ("-".into(), "-".into())));
    assert_eq!(get("/combo", &[("X-A", "1"), ("X-B", "2")]).status, 503);
    assert_eq!(get("/combo", &[("X-A", "1"), ("X-B", "3")]).status, 200);

    // A reload that leaves a plugin's configuration alone keeps its counters; one that
    // changes it starts afresh (APISIX keys counters by configuration version).
    gw.write_config(&routes(2));
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_for_event(|e| e.matches("config reloaded").count() >= 1));
    assert_eq!(get("/user", &[("X-User", "ann")]).status, 429);
    assert_eq!(get("/g1", &[]).status, 503);
    gw.write_config(&routes(5));
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_for_event(|e| e.matches("config reloaded").count() >= 2));
    let r = get("/user", &[("X-User", "ann")]);
    assert_eq!((r.status, quota(&r)), (200, ("5".into(), "4".into())));

    // Used up, then after the window (2 s from ann's first request) the key starts again.
    let opened = Instant::now();
    for _ in 0..4 {
        assert_eq!(get("/user", &[("X-User", "ann")]).status, 200);
    }
    assert_eq!(get("/user", &[("X-User", "ann")]).status, 429);
    let r = loop {
        let r = get("/user", &[("X-User", "ann")]);
        if r.status == 200 || opened.elapsed() > Duration::from_secs(6) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 200);
    assert!(
        opened.elapsed() > Duration::from_millis(1500),
        "{:?}",
        opened.elapsed()
    );
    assert_eq!(quota(&r), ("5".into(), "4".into()));
}

#[test]
fn limit_count_refuses_bad_configuration_naming_the_field() {
    for (conf, expected) in [
        ("{ time_window = 60 }", "count"),
        ("{ count = -100, time_window = 60 }", "count"),
        (
            "{ count = 1, time_window = 60, key_type = \"var\", key = \"nope\" }",
            "unknown variable 'nope'",
        ),
        (
            "{ count = 1, time_window = 60, policy = \"redis\" }",
            "redis_host",
        ),
        (
            "{ count = 1, time_window = 60, window_type = \"sliding\" }",
            "window_type",
        ),
    ] {
        let (ok, out) = check_config(&format!(
            "[[routes]]\nuri = \"/\"\nplugins.limit-count = {conf}\nupstream = {{ nodes = {{ \"127.0.0.1:1\" = 1 }} }}\n"
        ));
        assert!(!ok, "{conf} accepted");
        assert!(
            out.contains("limit-count") && out.contains(expected),
            "{conf}: {out}"
        );
    }
}

#[test]
fn limit_req_admits_rate_plus_burst_delays_or_refuses_the_rest() {
    let be = Backend::start(|_| Reply::ok("ok"));
    let up = upstream(&be);
    let body = format!(
        "[[routes]]\nuri = \"/nodelay\"\n\
         plugins.limit-req = {{ rate = 0.1, burst = 9, key = \"remote_addr\", nodelay = true }}\n{up}\n\
         [[routes]]\nuri = \"/paced\"\n\
         plugins.limit-req = {{ rate = 5, burst = 10, key = \"http_x_user\", rejected_code = 429, rejected_msg = \"too fast\" }}\n{up}\n\
         [[routes]]\nuri = \"/strict\"\n\
         plugins.limit-req = {{ rate = 1, burst = 0, key = \"http_x_user\", nodelay = true, rejected_code = 429, rejected_msg = \"too fast\" }}\n{up}\n"
    );
    let gw = Gateway::start_with(&body, "workers = 2");
    // One request per 10 s plus a burst of 9, on 60 connections spread over both workers:
    // exactly 10 pass at once (the bucket is the gateway's, not each worker's).
    assert_eq!(flood(&gw, "/nodelay", 60, 12), (10, 50, 0));

    let get = |path: &str, user: &str| gw.client().request("GET", path, &[("X-User", user)], b"");
    // 5 per second: back-to-back requests are paced (delayed), none refused.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get("/paced", "ann").status, 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "5 requests at 5/s were not delayed: {:?}",
        started.elapsed()
    );
    // No burst: the second at once is refused with rejected_code and rejected_msg; another
    // key is independent.
    assert_eq!(get("/strict", "ann").status, 200);
    let r = get("/strict", "ann");
    assert_eq!(
        (r.status, r.json()["error_msg"].as_str()),
        (429, Some("too fast"))
    );
    assert_eq!(get("/strict", "bob").status, 200);
}

#[test]
fn limit_conn_counts_requests_in_progress_and_releases_them_however_they_end() {
    // "/slow" is held 1.5 s by the backend.
    let be = Backend::start(|s| match s.target.as_str() {
        "/slow" => Reply::After(Duration::from_millis(1500), Box::new(Reply::ok("slow"))),
        _ => Reply::ok("ok"),
    });
    let up = upstream(&be);
    let dead = format!(
        "upstream = {{ nodes = {{ \"127.0.0.1:{}\" = 1 }} }}",
        free_port()
    );
    let conf = "plugins.limit-conn = { conn = 1, burst = 0, default_conn_delay = 0.1, key = \"k\", key_type = \"var_combination\", rejected_msg = \"busy\" }";
    let body = format!(
        "[[routes]]\nuri = \"/slow\"\n{conf}\n{up}\n\
         [[routes]]\nuri = \"/down\"\n{conf}\n{dead}\n"
    );
    let gw = Gateway::start_with(&body, "workers = 2");
    let addr = gw.addr();

    // One in progress: the next is refused, whichever worker it lands on.
    let mut holder = Client::connect(addr);
    holder.send("GET", "/slow", &[], b"");
    std::thread::sleep(Duration::from_millis(300));
    let r = gw.client().request("GET", "/slow", &[], b"");
    assert_eq!(
        (r.status, r.json()["error_msg"].as_str()),
        (503, Some("busy"))
    );
    // The client goes away mid-request: its count is released (at the latest when the
    // gateway learns the request is over), and one request at a time passes again.
    drop(holder);
    let started = Instant::now();
    let r = loop {
        let r = gw.client().request("GET", "/slow", &[], b"");
        if r.status == 200 || started.elapsed() > Duration::from_secs(6) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        r.status, 200,
        "the aborted request's count was never released"
    );

    // A request that fails upstream (502) is released too. One connection: its next
    // request is read only after the previous one's log phase, where the count is released
    // (a new connection may reach the other worker before that).
    let mut client = gw.client();
    for _ in 0..3 {
        assert_eq!(client.request("GET", "/down", &[], b"").status, 502);
    }
}

#[test]
fn limit_conn_burst_delays_the_excess() {
    let be =
        Backend::start(|_| Reply::After(Duration::from_millis(200), Box::new(Reply::ok("ok"))));
    let body = format!(
        "[[routes]]\nuri = \"/\"\nplugins.limit-conn = {{ conn = 1, burst = 1, default_conn_delay = 0.5, only_use_default_delay = true, key = \"remote_addr\" }}\n{}\n",
        upstream(&be)
    );
    let gw = Gateway::start(&body);
    let addr = gw.addr();
    // Three at once: one in progress, one admitted by the burst after a 0.5 s delay, one
    // refused.
    let started = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20 * i));
                let r = Client::connect(addr).request("GET", "/", &[], b"");
                (r.status, started.elapsed())
            })
        })
        .collect();
    let mut results: Vec<(u16, Duration)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    results.sort();
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 503]
    );
    let slowest = results[0].1.max(results[1].1);
    assert!(
        slowest >= Duration::from_millis(650),
        "the burst request was not delayed: {slowest:?}"
    );
}

/// Sends `n` pipelined GETs of `path` with header `X-K: <prefix>-<i>` (a key each) on one
/// connection, in batches; returns how many got a 200.
fn distinct_keys(addr: std::net::SocketAddr, path: &str, prefix: &str, n: usize) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ok, mut buf, mut carry) = (0, vec![0u8; 1 << 16], Vec::new());
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut out = Vec::with_capacity(batch.len() * 64);
        for i in batch {
            write!(
                out,
                "GET {path} HTTP/1.1\r\nHost: x\r\nX-K: {prefix}-{i}\r\n\r\n"
            )
            .unwrap();
        }
        s.write_all(&out).unwrap();
        let (mut answered, needle) = (0, b"HTTP/1.1 ");
        while answered < batch.len() {
            let got = s.read(&mut buf).unwrap();
            assert!(got > 0, "connection closed");
            carry.extend_from_slice(&buf[..got]);
            let mut at = 0;
            while let Some(p) = carry[at..]
                .windows(needle.len() + 3)
                .position(|w| w.starts_with(needle))
            {
                let status = &carry[at + p + needle.len()..at + p + needle.len() + 3];
                ok += usize::from(status == b"200");
                answered += 1;
                at += p + needle.len();
            }
            carry.drain(..at);
        }
    }
    ok
}

#[test]
fn a_million_distinct_keys_keep_memory_bounded() {
    let be = Backend::start(|_| Reply::ok("ok"));
    let body = format!(
        "[[routes]]\nuri = \"/k\"\nplugins.limit-count = {{ count = 5, time_window = 1, key = \"http_x_k\" }}\n{}\n",
        upstream(&be)
    );
    let gw = Gateway::start(&body);
    let pid = gw.child.id();
    let addr = gw.addr();
    let round = |prefix: &str| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let prefix = format!("{prefix}{t}");
                std::thread::spawn(move || distinct_keys(addr, "/k", &prefix, 125_000))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    };
    let before = crate::memory::rss_kib(pid);
    // Two rounds of half a million new keys each: every request is a key's first, so all
    // pass; idle keys are swept once their 1 s window is over, so the second round reuses
    // the first's memory instead of adding to it.
    assert_eq!(round("a"), 500_000);
    let after_first = crate::memory::rss_kib(pid);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(round("b"), 500_000);
    let after_second = crate::memory::rss_kib(pid);
    eprintln!("rss KiB: before {before}, after 500k keys {after_first}, after 1M {after_second}");
    // At most 64 MiB for a full table (table.rs); far less here.
    assert!(
        after_first - before < 64 * 1024,
        "{before} -> {after_first} KiB"
    );
    assert!(
        after_second < after_first + 16 * 1024,
        "memory grew with the second half million keys: {after_first} -> {after_second} KiB"
    );
}
