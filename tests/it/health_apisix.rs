//! Health checks as APISIX does them, where the first version differed: the probe's Host
//! with `pass_host = "rewrite"`, the status API's shape (one entry per probe target, `{}`
//! when nothing is checked), and a gateway-made 502 counted by passive checks.

use crate::harness::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn control_get(control: u16, path: &str) -> Response {
    Client::connect(([127, 0, 0, 1], control).into()).get(path)
}

#[test]
fn probes_carry_the_rewritten_host() {
    let hosts = Arc::new(Mutex::new(Vec::<String>::new()));
    let h = hosts.clone();
    let be = Backend::start(move |s| {
        if s.target == "/health" {
            h.lock()
                .unwrap()
                .push(s.header("Host").unwrap_or("").to_string());
        }
        Reply::ok("ok")
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&be.addr(), 1)]),
        "pass_host = \"rewrite\"\nupstream_host = \"api.internal\"\n[upstreams.checks.active]\nhttp_path = \"/health\"\nhost = \"checker.example\"\nhealthy = { interval = 1 }\n",
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hosts.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        hosts.lock().unwrap().first().map(String::as_str),
        Some("api.internal"),
        "probes use upstream_host, as proxied requests do"
    );
    // Proxied requests carry it too.
    gw.get("/x");
    assert_eq!(be.last().header("Host"), Some("api.internal"));
}

#[test]
fn status_api_lists_each_probe_target_once_and_nothing_as_an_object() {
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[("127.0.0.1:1", 1)]), ""),
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    let r = control_get(control, "/v1/healthcheck");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{}", "APISIX answers an empty object");
    drop(gw);

    // Two nodes on one address, probed on one port (checks.active.port): one target.
    let be = Backend::named("be");
    let control = free_port();
    let _gw = Gateway::start_with(
        &upstream_config(
            &nodes_map(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]),
            &format!(
                "[upstreams.checks.active]\ntype = \"tcp\"\nport = {}\nhealthy = {{ interval = 1 }}\n",
                be.port
            ),
        ),
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    let v = control_get(control, "/v1/healthcheck/upstreams/u").json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["port"], be.port);
}

#[test]
fn a_gateway_made_502_counts_as_a_passive_http_failure() {
    // The node refuses connections; its active probes go to a healthy port, and passive TCP
    // failures are not counted (0), so only the 502 the client gets can eject it.
    let probe = Backend::named("probe");
    let dead = free_port();
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(
            &nodes_map(&[(&format!("127.0.0.1:{dead}"), 1)]),
            &format!(
                "retries = 0\n[upstreams.checks.active]\ntype = \"tcp\"\nport = {}\nhealthy = {{ interval = 1, successes = 2 }}\nunhealthy = {{ interval = 1 }}\n[upstreams.checks.passive]\nunhealthy = {{ http_statuses = [502], http_failures = 1, tcp_failures = 0, timeouts = 0 }}\n",
                probe.port
            ),
        ),
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    assert_eq!(gw.get("/").status, 502);
    wait_status(
        control,
        "u",
        probe.port,
        "unhealthy",
        Duration::from_secs(3),
    );
    let events = gw.events();
    assert!(events.contains("1 HTTP failures"), "{events}");
}

#[test]
fn running_out_of_file_descriptors_ejects_no_node() {
    // The backend closes every upstream connection, so each request needs a new connect.
    let be = Backend::start(|_| {
        Reply::Full(
            200,
            vec![("Connection".into(), "close".into())],
            b"ok".to_vec(),
        )
    });
    let control = free_port();
    let gw = Gateway::start_with_fd_limit(
        &upstream_config(
            &nodes_map(&[(&be.addr(), 1)]),
            "retries = 0\n[upstreams.checks.active]\nhttp_path = \"/\"\nhealthy = { interval = 1 }\nunhealthy = { interval = 1, tcp_failures = 1 }\n[upstreams.checks.passive]\nunhealthy = { tcp_failures = 1 }\n",
        ),
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
        64,
    );
    let mut first = gw.client();
    assert_eq!(first.get("/before").status, 200);
    // Use up the gateway's descriptors with idle connections (the rest wait in its backlog).
    let idle: Vec<Client> = (0..80).map(|_| gw.client()).collect();
    assert!(
        gw.wait_for_event(|e| e.contains("Too many open files")),
        "{}",
        gw.events()
    );
    // The upstream connect fails for want of a descriptor: a 502, and no verdict on the node.
    let r = first.get("/during");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("Too many open files"), "{}", r.text());
    // A connection to the control API now fails to be accepted too: its accept loop backs
    // off instead of spinning on the error (a spin burns the prober thread's core).
    let _waiting = std::net::TcpStream::connect(("127.0.0.1", control)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = thread_cpu_ticks(gw.child.id(), "shardgate-healt");
    std::thread::sleep(Duration::from_millis(1500));
    let spent = thread_cpu_ticks(gw.child.id(), "shardgate-healt") - before;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        spent < hz / 2,
        "the prober thread used {spent} ticks of CPU in 1.5 s while out of descriptors"
    );
    drop(idle);
    drop(first);
    wait_status(control, "u", be.port, "healthy", Duration::from_secs(3));
    assert!(!gw.events().contains("is unhealthy"), "{}", gw.events());
    assert_eq!(gw.get("/after").status, 200);
}

/// User + system CPU ticks of the thread of process `pid` whose name is `name` (as the
/// kernel shortens it, 15 bytes).
fn thread_cpu_ticks(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread named {name} in process {pid}");
}
