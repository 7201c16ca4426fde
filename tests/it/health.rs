//! Health checks through real sockets: active HTTP and TCP probes, probe timeouts, passive
//! ejection from real traffic, one probe per interval whatever the number of workers, the
//! status API, and a node killed under load.

use crate::harness::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A backend whose `/health` answers 500 while `sick` is set (and 200 otherwise); every other
/// path answers its name.
fn checked_backend(name: &'static str, sick: Arc<AtomicBool>) -> Backend {
    Backend::start(move |s| {
        if s.target == "/health" {
            if sick.load(Ordering::SeqCst) {
                Reply::Full(500, vec![], b"sick".to_vec())
            } else {
                Reply::ok("ok")
            }
        } else {
            Reply::ok(name)
        }
    })
}

const HTTP_CHECKS: &str = r#"[upstreams.checks.active]
http_path = "/health"
timeout = 0.5
healthy = { interval = 1, successes = 2 }
unhealthy = { interval = 1, http_failures = 2, tcp_failures = 2, timeouts = 2 }
"#;

#[test]
fn failing_health_path_ejects_and_recovers() {
    let sick = Arc::new(AtomicBool::new(false));
    let flaky = checked_backend("flaky", sick.clone());
    let good = checked_backend("good", Arc::new(AtomicBool::new(false)));
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(
            &nodes_map(&[(&flaky.addr(), 1), (&good.addr(), 1)]),
            HTTP_CHECKS,
        ),
        &format!("control_listen = \"127.0.0.1:{control}\""),
    );
    // Both serve while healthy.
    let served: Vec<String> = (0..10).map(|_| gw.get("/a").text()).collect();
    assert!(served.iter().any(|s| s == "flaky") && served.iter().any(|s| s == "good"));

    sick.store(true, Ordering::SeqCst);
    // unhealthy.interval (1 s) x http_failures (2), plus one interval of phase and slack.
    let took = wait_status(
        control,
        "u",
        flaky.port,
        "unhealthy",
        Duration::from_secs(5),
    );
    assert!(
        took <= Duration::from_millis(3500),
        "ejected after {took:?}"
    );
    assert!(
        gw.events().contains("is unhealthy: 2 HTTP failures"),
        "{}",
        gw.events()
    );
    let before = flaky.requests_except("/health");
    for _ in 0..20 {
        assert_eq!(gw.get("/b").text(), "good");
    }
    assert_eq!(
        flaky.requests_except("/health"),
        before,
        "an ejected node got client traffic"
    );

    sick.store(false, Ordering::SeqCst);
    let took = wait_status(control, "u", flaky.port, "healthy", Duration::from_secs(5));
    assert!(
        took <= Duration::from_millis(3500),
        "recovered after {took:?}"
    );
    let served: Vec<String> = (0..10).map(|_| gw.get("/c").text()).collect();
    assert!(
        served.iter().any(|s| s == "flaky"),
        "recovered node gets traffic again"
    );
}

#[test]
fn tcp_checks_and_probe_timeouts() {
    let good = Backend::named("good");
    let closed = free_port();
    let slow = Backend::start(|s| {
        if s.target == "/health" {
            Reply::After(Duration::from_secs(2), Box::new(Reply::ok("late")))
        } else {
            Reply::ok("slow")
        }
    });
    let control = free_port();
    let tcp_checked = upstream_config(
        &nodes_map(&[(&good.addr(), 1), (&format!("127.0.0.1:{closed}"), 1)]),
        "[upstreams.checks.active]\ntype = \"tcp\"\nhealthy = { interval = 1 }\nunhealthy = { interval = 1, tcp_failures = 2 }\n",
    );
    let http_checked = format!(
        "[[upstreams]]\nid = \"t\"\nnodes = {}\n{HTTP_CHECKS}\n",
        nodes_map(&[(&slow.addr(), 1), (&good.addr(), 1)]),
    );
    let body = format!("{tcp_checked}\n{http_checked}");
    let gw = Gateway::start_with(&body, &format!("control_listen = \"127.0.0.1:{control}\""));
    wait_status(control, "u", closed, "unhealthy", Duration::from_secs(5));
    wait_status(control, "t", slow.port, "unhealthy", Duration::from_secs(6));
    let all = Client::connect(([127, 0, 0, 1], control).into())
        .get("/v1/healthcheck")
        .json();
    let list = all.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let u = list.iter().find(|x| x["name"] == "/upstreams/u").unwrap();
    assert_eq!(u["type"], "tcp");
    let dead = u["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["port"] == closed)
        .unwrap();
    assert!(
        dead["counter"]["tcp_failure"].as_u64().unwrap() >= 2,
        "{dead}"
    );
    let t = list.iter().find(|x| x["name"] == "/upstreams/t").unwrap();
    let timed_out = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["port"] == slow.port)
        .unwrap();
    assert!(
        timed_out["counter"]["timeout_failure"].as_u64().unwrap() >= 2,
        "{timed_out}"
    );
    assert!(gw.events().contains("timeouts"), "{}", gw.events());

    // The status API's errors, APISIX's shapes.
    let mut c = Client::connect(([127, 0, 0, 1], control).into());
    let r = c.get("/v1/healthcheck/upstreams/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error_msg"], "upstreams[nope] not found");
    let r = Client::connect(([127, 0, 0, 1], control).into()).get("/v1/healthcheck/route/1");
    assert_eq!(r.status, 400);
}

#[test]
fn passive_checks_eject_after_server_errors() {
    let failing = Backend::start(|s| {
        if s.target == "/health" {
            Reply::ok("ok")
        } else {
            Reply::Full(500, vec![], b"boom".to_vec())
        }
    });
    let good = Backend::named("good");
    let control = free_port();
    let checks = "[upstreams.checks.active]\nhttp_path = \"/health\"\nhealthy = { interval = 300 }\nunhealthy = { interval = 300 }\n[upstreams.checks.passive]\nunhealthy = { http_failures = 3 }\n";
    let gw = Gateway::start_with(
        &upstream_config(
            &nodes_map(&[(&failing.addr(), 1), (&good.addr(), 1)]),
            checks,
        ),
        &format!("control_listen = \"127.0.0.1:{control}\"\nworkers = 1"),
    );
    // Round robin alternates: the failing node answers 500 (passed through) three times.
    let statuses: Vec<u16> = (0..6).map(|_| gw.get("/x").status).collect();
    let fives = statuses.iter().filter(|&&s| s == 500).count();
    assert_eq!(
        fives, 3,
        "round robin over one worker alternates: {statuses:?}"
    );
    wait_status(
        control,
        "u",
        failing.port,
        "unhealthy",
        Duration::from_secs(3),
    );
    for _ in 0..20 {
        assert_eq!(gw.get("/y").status, 200);
    }
}

#[test]
fn one_probe_per_interval_with_two_workers() {
    let be = checked_backend("x", Arc::new(AtomicBool::new(false)));
    let other = checked_backend("y", Arc::new(AtomicBool::new(false)));
    // Two upstreams with the same node and the same checks: still one target.
    let body = format!(
        "{}\n[[upstreams]]\nid = \"v\"\nnodes = {}\n{}\n",
        upstream_config(
            &nodes_map(&[(&be.addr(), 1), (&other.addr(), 1)]),
            HTTP_CHECKS
        ),
        nodes_map(&[(&be.addr(), 1)]),
        HTTP_CHECKS
    );
    let _gw = Gateway::start_with(&body, "workers = 2");
    let start = be.requests_for("/health");
    std::thread::sleep(Duration::from_millis(3200));
    let probes = be.requests_for("/health") - start;
    assert!(
        (2..=4).contains(&probes),
        "{probes} probes in 3.2 s at 1 s intervals"
    );
}

#[test]
fn killing_a_node_under_load_loses_no_request() {
    let sick = Arc::new(AtomicBool::new(false));
    let nodes: Vec<Backend> = ["a", "b", "c"]
        .into_iter()
        .map(|n| checked_backend(n, sick.clone()))
        .collect();
    let control = free_port();
    let list: Vec<(String, u32)> = nodes.iter().map(|b| (b.addr(), 1)).collect();
    let list: Vec<(&str, u32)> = list.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    let checks = format!("retries = 2\n{HTTP_CHECKS}[upstreams.checks.passive]\nunhealthy = {{ tcp_failures = 2 }}\n");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&list), &checks),
        &format!("control_listen = \"127.0.0.1:{control}\"\nworkers = 2"),
    );
    let url = format!("http://127.0.0.1:{}/load", gw.port);
    let dir = temp_dir("killload");
    let json = dir.join("load.json");
    let load = Command::new(env!("CARGO_BIN_EXE_sg-load"))
        .args(["--url", &url, "-c", "16", "-d", "5", "--quiet", "--json"])
        .arg(&json)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    nodes[1].kill();
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 1000, "{v}");
    assert_eq!(v["errors"], 0, "client requests failed: {v}");
    wait_status(
        control,
        "u",
        nodes[1].port,
        "unhealthy",
        Duration::from_secs(5),
    );

    // After ejection, requests make no attempt at the dead node: no retries at all.
    std::thread::sleep(Duration::from_millis(300));
    let lines_before = gw.access_log().lines().count();
    let mut c = gw.client();
    for _ in 0..60 {
        assert_eq!(c.get("/after").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = gw.access_log();
    let after: Vec<&str> = log.lines().skip(lines_before).collect();
    assert!(after.len() >= 60);
    assert!(
        after.iter().all(|l| l.ends_with("retries=0")),
        "{:?}",
        after.iter().find(|l| !l.ends_with("retries=0"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn all_unhealthy_fails_open_or_refuses() {
    let dead1 = free_port();
    let dead2 = free_port();
    let checks = "[upstreams.checks.active]\ntype = \"tcp\"\nhealthy = { interval = 1 }\nunhealthy = { interval = 1, tcp_failures = 1 }\n";
    let nodes = nodes_map(&[
        (&format!("127.0.0.1:{dead1}"), 1),
        (&format!("127.0.0.1:{dead2}"), 1),
    ]);
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(&nodes, checks),
        &format!("control_listen = \"127.0.0.1:{control}\"\nhealthcheck_fail_open = false"),
    );
    wait_status(control, "u", dead1, "unhealthy", Duration::from_secs(4));
    wait_status(control, "u", dead2, "unhealthy", Duration::from_secs(4));
    let r = gw.get("/z");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error_msg"], "no healthy upstream node");

    // Fail-open (the default): every node is tried anyway (and here fails: 502).
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(&nodes, checks),
        &format!("control_listen = \"127.0.0.1:{control}\""),
    );
    wait_status(control, "u", dead1, "unhealthy", Duration::from_secs(4));
    wait_status(control, "u", dead2, "unhealthy", Duration::from_secs(4));
    assert_eq!(gw.get("/z").status, 502);
    assert!(gw.wait_for_event(|e| e.contains("every node of upstream u is unhealthy")));
}
