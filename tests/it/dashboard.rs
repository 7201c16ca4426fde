//! The status dashboard (issue #13) in a real headless browser (Debian's chromium): the page
//! loads, renders its charts and tables from live data, and shows traffic and health changes.

use crate::harness::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs chromium headless on `url` with `args` (a fresh profile each time); its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = temp_dir("chromium");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (tests/run.sh installs Debian's chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `data-NAME="..."` in the dumped DOM.
fn data(dom: &str, name: &str) -> u64 {
    let key = format!("data-{name}=\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in {dom}"))
        + key.len();
    dom[at..].split('"').next().unwrap().parse().unwrap()
}

/// The text of the table `id`'s body.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom.find(&format!("<table id=\"{id}\"")).expect("table");
    let end = dom[start..].find("</table>").unwrap() + start;
    &dom[start..end]
}

#[test]
fn the_dashboard_renders_live_traffic_and_node_health_in_chromium() {
    let be = Backend::named("live");
    let dead = free_port();
    let control = free_port();
    let port = be
        .addr()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse::<u16>()
        .unwrap();
    let dir = temp_dir("dashboard-certs");
    certificates(&dir);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let gw = Gateway::start_with(
        &format!(
            r#"[[ssls]]
id = "edge-cert"
snis = ["localhost"]
cert = '''{}'''
key = '''{}'''
[[upstreams]]
id = "u"
nodes = {{ "{}" = 1, "127.0.0.1:{dead}" = 1 }}
checks.active = {{ type = "tcp", healthy = {{ interval = 1, successes = 1 }}, unhealthy = {{ interval = 1, tcp_failures = 1 }} }}
[[routes]]
id = "api"
uri = "/*"
upstream_id = "u"
[[global_rules]]
id = "m"
plugins.prometheus = {{}}
"#,
            read("server.pem"),
            read("server.key"),
            be.addr()
        ),
        &format!("workers = 2\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    wait_status(control, "u", dead, "unhealthy", Duration::from_secs(10));

    // Traffic all along the page's life.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), gw.addr());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Client::connect(addr).get("/x");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("http://127.0.0.1:{control}/dashboard");
    let dom = chromium(&url, &["--dump-dom"]);
    // Polled several times; the totals grew while the page ran.
    assert!(data(&dom, "polls") >= 3, "{dom}");
    assert!(
        data(&dom, "last-total") > data(&dom, "first-total"),
        "{dom}"
    );
    // Charts drawn from the samples.
    let rps = dom.split("<svg id=\"rps\"").nth(1).unwrap();
    let points = rps
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(points.split(' ').count() >= 2, "{points}");
    // Tables: the route, both workers, each node's health.
    assert!(table(&dom, "routes").contains("<td>api</td>"), "{dom}");
    // The upstream's traffic, by the route that uses it, with the node that served it.
    let upstreams = table(&dom, "traffic");
    assert!(upstreams.contains("<td>u</td>"), "{upstreams}");
    assert!(upstreams.contains("<td>127.0.0.1: "), "{upstreams}");
    assert_eq!(table(&dom, "workers").matches("<tr>").count(), 3);
    let nodes = table(&dom, "nodes");
    assert!(
        nodes.contains(&format!(
            "<td>127.0.0.1:{port}</td><td class=\"healthy\">healthy</td>"
        )),
        "{nodes}"
    );
    assert!(
        nodes.contains(&format!(
            "<td>127.0.0.1:{dead}</td><td class=\"unhealthy\">unhealthy</td>"
        )),
        "{nodes}"
    );

    // The certificate served, with its expiry.
    let certs = table(&dom, "certs");
    assert!(
        certs.contains("<td>edge-cert</td><td>localhost</td>"),
        "{certs}"
    );
    assert!(certs.contains(" UTC</td>"), "{certs}");

    // A screenshot, as the README shows it.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            "--window-size=1100,800",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    // The live node goes down: the next load shows it.
    be.kill();
    wait_status(control, "u", port, "unhealthy", Duration::from_secs(10));
    let dom = chromium(&url, &["--dump-dom"]);
    let nodes = table(&dom, "nodes");
    assert!(
        nodes.contains(&format!(
            "<td>127.0.0.1:{port}</td><td class=\"unhealthy\">unhealthy</td>"
        )),
        "{nodes}"
    );
}
