//! The `prometheus` plugin and its exporter (issue #13): APISIX's metric names and labels,
//! counts that add up over 2 workers, promtool's check, and a real Prometheus scraping it.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The exporter section for a gateway whose exporter listens on `port`.
fn exporter(port: u16, extra: &str) -> String {
    format!("[plugin_attr.prometheus]\nexport_addr = \"127.0.0.1:{port}\"\n{extra}\n")
}

fn scrape(port: u16) -> String {
    let r = Client::connect(([127, 0, 0, 1], port).into()).get("/apisix/prometheus/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

/// Scrapes until `done` holds (a request is recorded in its log phase, just after its
/// response is sent); fails after 5 s.
fn scrape_until(port: u16, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(port);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// Service `shop` (named `shop-svc`) and the start of route `r1` (named `orders`) in it.
fn orders(be: &Backend) -> String {
    format!(
        "[[services]]\nid = \"shop\"\nname = \"shop-svc\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n[[routes]]\nid = \"r1\"\nname = \"orders\"\n",
        be.addr()
    )
}

/// One request on its own connection (so the two workers share them): the bytes sent and
/// the bytes received.
fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (usize, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: metrics.test\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    (req.len(), got.len())
}

#[test]
fn counts_add_up_over_two_workers_with_apisix_names_and_pass_promtool() {
    let be = Backend::named("m");
    let mport = free_port();
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start_with(
        &format!(
            r#"{}{}
uris = ["/orders", "/orders/*"]
hosts = ["metrics.test", "*.other.test"]
service_id = "shop"
plugins.prometheus = {{ prefer_name = true }}
plugins.key-auth = {{}}
[[routes]]
id = "r2"
uri = "/quiet"
{up}
[[consumers]]
username = "jack"
plugins.key-auth = {{ key = "jack-key" }}
"#,
            exporter(mport, ""),
            orders(&be),
        ),
        "workers = 2",
    );
    let (mut sent, mut received) = (0, 0);
    for i in 0..40 {
        let (s, r) = raw_get(gw.addr(), &format!("/orders/{i}"), "apikey: jack-key\r\n");
        sent += s;
        received += r;
    }
    for _ in 0..10 {
        let (s, r) = raw_get(gw.addr(), "/orders", "");
        sent += s;
        received += r;
    }
    // Not recorded: no prometheus plugin on this route, and no route.
    for _ in 0..7 {
        raw_get(gw.addr(), "/quiet", "");
    }
    for _ in 0..3 {
        raw_get(gw.addr(), "/nowhere", "");
    }
    let text = scrape(mport);

    // prefer_name: the route and its service by name.
    let r1 = [("route", "orders")];
    let ok = [
        ("code", "200"),
        ("route", "orders"),
        ("matched_uri", "/orders/*"),
        ("matched_host", "metrics.test"),
        ("service", "shop-svc"),
        ("consumer", "jack"),
        ("node", "127.0.0.1"),
        ("request_type", "traditional_http"),
        ("response_source", "upstream"),
    ];
    assert_eq!(sample(&text, "apisix_http_status", &ok), 40.0, "{text}");
    let refused = [
        ("code", "401"),
        ("matched_uri", "/orders"),
        ("consumer", ""),
        ("node", ""),
        ("response_source", "apisix"),
    ];
    assert_eq!(
        sample(&text, "apisix_http_status", &refused),
        10.0,
        "{text}"
    );
    assert_eq!(sample(&text, "apisix_http_status", &[]), 50.0);
    // Every request counts in the total, recorded or not; both workers served some.
    assert_eq!(sample(&text, "apisix_http_requests_total", &[]), 60.0);
    for w in ["0", "1"] {
        let n = sample(&text, "shardgate_worker_requests_total", &[("worker", w)]);
        assert!(n > 0.0, "worker {w} served none: {text}");
    }

    // Histograms: one observation per request of each type (upstream only when one
    // answered), cumulative buckets ending in +Inf = count.
    for (ty, want) in [("request", 50.0), ("upstream", 40.0), ("apisix", 50.0)] {
        let labels = [("type", ty), r1[0]];
        assert_eq!(
            sample(&text, "apisix_http_latency_count", &labels),
            want,
            "{ty}"
        );
        let inf = [("type", ty), r1[0], ("le", "+Inf")];
        assert_eq!(sample(&text, "apisix_http_latency_bucket", &inf), want);
        let mut last = 0.0;
        for b in [
            "1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "60000",
        ] {
            let labels = [("type", ty), r1[0], ("le", b)];
            let n = sample(&text, "apisix_http_latency_bucket", &labels);
            assert!(n >= last, "buckets of {ty} not cumulative at {b}");
            last = n;
        }
        assert!(sample(&text, "apisix_http_latency_sum", &labels) > 0.0);
    }
    // Bandwidth: exactly the bytes of the recorded requests, both ways.
    let ingress = sample(&text, "apisix_bandwidth", &[("type", "ingress"), r1[0]]);
    let egress = sample(&text, "apisix_bandwidth", &[("type", "egress"), r1[0]]);
    assert_eq!((ingress, egress), (sent as f64, received as f64));
    assert_eq!(sample(&text, "apisix_node_info", &[]), 1.0);
    assert!(text.contains("# TYPE apisix_http_latency histogram"));
    assert!(text.contains("# TYPE apisix_http_status counter"));
    // The 60 requests' connections, and the harness's readiness probe.
    assert_eq!(
        sample(
            &text,
            "apisix_nginx_http_current_connections",
            &[("state", "accepted")]
        ),
        61.0
    );

    // promtool: 0 = clean, 3 = lint warnings only (APISIX's counter names lack `_total`).
    let dir = temp_dir("promtool");
    let path = dir.join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool (tests/run.sh installs Debian's prometheus)");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "promtool {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_global_rule_covers_every_request_and_each_is_recorded_once() {
    let be = Backend::named("m");
    let mport = free_port();
    let gw = Gateway::start(&format!(
        r#"{}{}
uri = "/orders"
service_id = "shop"
plugins.prometheus = {{ prefer_name = true }}
[[global_rules]]
id = "all"
plugins.prometheus = {{}}
"#,
        exporter(mport, ""),
        orders(&be),
    ));
    for _ in 0..5 {
        assert_eq!(gw.get("/orders").status, 200);
    }
    assert_eq!(gw.get("/nowhere").status, 404);
    let text = scrape_until(mport, |t| sample(t, "apisix_http_status", &[]) == 6.0);
    // One record per request: the global rule's (global rules run first), by id.
    let by_id = [("route", "r1"), ("service", "shop"), ("code", "200")];
    assert_eq!(sample(&text, "apisix_http_status", &by_id), 5.0, "{text}");
    let by_name = [("route", "orders")];
    assert_eq!(sample(&text, "apisix_http_status", &by_name), 0.0, "{text}");
    let missed = [
        ("code", "404"),
        ("route", ""),
        ("response_source", "apisix"),
    ];
    assert_eq!(sample(&text, "apisix_http_status", &missed), 1.0, "{text}");
}

#[test]
fn series_keep_counting_across_reloads_and_follow_renamed_labels() {
    // A core recognises a request's series by where its label strings live (the route's
    // own); a reload compiles new routes with new strings: the same labels must still count
    // into the same series, and changed ones into their own.
    let be = Backend::named("m");
    let mport = free_port();
    // `priority` changes each time, so the route is compiled anew (new strings).
    let body = |name: &str, priority: usize| {
        format!(
            "{}[[routes]]\nid = \"r1\"\nname = \"{name}\"\npriority = {priority}\nuri = \"/orders\"\nplugins.prometheus = {{ prefer_name = true }}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            exporter(mport, ""),
            be.addr()
        )
    };
    let gw = Gateway::start(&body("orders", 0));
    let count = |t: &str, name: &str| sample(t, "apisix_http_status", &[("route", name)]);
    for _ in 0..3 {
        assert_eq!(gw.get("/orders").status, 200);
    }
    scrape_until(mport, |t| count(t, "orders") == 3.0);
    for (name, reloads) in [("orders", 1), ("orders", 2), ("shop", 3)] {
        gw.write_config(&body(name, reloads));
        gw.signal(libc::SIGHUP);
        assert!(gw.wait_for_event(|e| e.matches("config reloaded").count() >= reloads));
        for _ in 0..3 {
            assert_eq!(gw.get("/orders").status, 200);
        }
    }
    let text = scrape_until(mport, |t| count(t, "orders") + count(t, "shop") == 12.0);
    assert_eq!(count(&text, "orders"), 9.0, "{text}");
    assert_eq!(count(&text, "shop"), 3.0, "{text}");
}

#[test]
fn upstream_health_connections_and_the_series_bound_are_reported() {
    let be = Backend::named("up");
    let dead = free_port();
    let mport = free_port();
    let mocks: String = (0..5)
        .map(|i| {
            format!(
                "[[routes]]\nuri = \"/m{i}\"\nplugins.prometheus = {{}}\nplugins.mocking = {{ response_status = {}, response_example = \"x\" }}\n",
                201 + i
            )
        })
        .collect();
    let gw = Gateway::start_with(
        &format!(
            r#"{}
[[upstreams]]
id = "u"
nodes = {{ "{}" = 1, "127.0.0.1:{dead}" = 1 }}
checks.active = {{ type = "tcp", healthy = {{ interval = 1, successes = 1 }}, unhealthy = {{ interval = 1, tcp_failures = 1 }} }}
{mocks}
"#,
            exporter(mport, "max_series = 3"),
            be.addr()
        ),
        "workers = 1",
    );
    // Health: the live node 1, the dead one 0, as APISIX names the checker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(mport);
        if text.contains(&format!("port=\"{dead}\"}} 0")) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let port = be.addr().rsplit_once(':').unwrap().1.to_string();
    let live = [("name", "/apisix/upstreams/u"), ("port", port.as_str())];
    assert_eq!(
        sample(&text, "apisix_upstream_status", &live),
        1.0,
        "{text}"
    );
    assert!(sample(&text, "shardgate_health_transitions_total", &[]) >= 1.0);

    // A connection with half a request head is `reading`, and `active`.
    let mut half = TcpStream::connect(gw.addr()).unwrap();
    half.write_all(b"GET /m0 HTTP/1.1\r\nHost: x\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(mport);
        let state = |s: &str| {
            sample(
                &text,
                "apisix_nginx_http_current_connections",
                &[("state", s)],
            )
        };
        if state("reading") == 1.0 && state("active") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(half);

    // Five status codes, one worker, at most 3 series: the last two are counted as dropped.
    for i in 0..5 {
        for _ in 0..2 {
            assert_eq!(gw.get(&format!("/m{i}")).status, 201 + i);
        }
    }
    let dropped = |t: &str| sample(t, "shardgate_metrics_series_dropped_total", &[]);
    let text = scrape_until(mport, |t| dropped(t) == 4.0);
    assert_eq!(sample(&text, "apisix_http_status", &[]), 6.0, "{text}");
}

#[test]
fn exporter_settings_are_checked_and_a_taken_port_fails_the_start() {
    for (attr, field) in [
        (
            "export_addr = \"nowhere\"",
            "plugin_attr.prometheus.export_addr",
        ),
        (
            "export_addr = { ip = \"127.0.0.1\", port = 99999 }",
            "export_addr.port",
        ),
        (
            "default_buckets = [5, 1]",
            "plugin_attr.prometheus.default_buckets",
        ),
        (
            "export_uri = \"metrics\"",
            "plugin_attr.prometheus.export_uri",
        ),
        (
            "metric_prefix = \"9x\"",
            "plugin_attr.prometheus.metric_prefix",
        ),
        ("nope = 1", "nope"),
    ] {
        let (ok, err) = check_config(&format!("[plugin_attr.prometheus]\n{attr}\n"));
        assert!(!ok, "{attr}");
        assert!(err.contains(field), "{attr}: {err}");
    }
    // APISIX's { ip, port } form, custom buckets and prefix, and a taken port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir("taken-exporter");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_listen = \"off\"\n[deployment]\nconfig_provider = \"file\"\n[plugin_attr.prometheus]\nexport_addr = {{ ip = \"127.0.0.1\", port = {port} }}\n",
            free_port()
        ),
    )
    .unwrap();
    let (ok, _, err) = cli(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("plugin_attr.prometheus.export_addr"), "{err}");

    let be = Backend::named("m");
    let mport = free_port();
    let attr = format!(
        "[plugin_attr.prometheus]\nexport_addr = {{ ip = \"127.0.0.1\", port = {mport} }}\nmetric_prefix = \"edge_\"\ndefault_buckets = [0.5, 250]\nexport_uri = \"/m\"\n"
    );
    let gw = Gateway::start(&format!(
        "{attr}[[routes]]\nuri = \"/b\"\nplugins.prometheus = {{}}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        be.addr()
    ));
    raw_get(gw.addr(), "/b", "");
    let r = Client::connect(([127, 0, 0, 1], mport).into()).get("/m");
    let text = r.text();
    assert!(
        text.contains("edge_http_latency_bucket{type=\"request\""),
        "{text}"
    );
    assert!(text.contains("le=\"250\"} 1"), "{text}");
    assert!(!text.contains("le=\"1000\""), "{text}");
    let other = Client::connect(([127, 0, 0, 1], mport).into()).get("/apisix/prometheus/metrics");
    assert_eq!(other.status, 404);
}

/// A real Prometheus, scraping every second; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = temp_dir("prometheus");
        let port = free_port();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shardgate\n    metrics_path: /apisix/prometheus/metrics\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (tests/run.sh installs Debian's prometheus)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query's single result, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let r = std::panic::catch_unwind(|| {
            Client::connect(([127, 0, 0, 1], self.port).into()).get(&path)
        })
        .ok()?;
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        let result = v["data"]["result"].as_array()?;
        let value = result.first()?["value"][1].as_str()?;
        value.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_counts_of_two_workers() {
    let be = Backend::named("m");
    let mport = free_port();
    let gw = Gateway::start_with(
        &format!(
            "{}[[routes]]\nid = \"scraped\"\nuri = \"/s\"\nplugins.prometheus = {{}}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            exporter(mport, ""),
            be.addr()
        ),
        "workers = 2",
    );
    let prom = Prometheus::start(mport);
    for _ in 0..37 {
        raw_get(gw.addr(), "/s", "");
    }
    let queries = [
        (
            "sum(apisix_http_status{route=\"scraped\",code=\"200\"})",
            37.0,
        ),
        (
            "sum(apisix_http_latency_count{route=\"scraped\",type=\"request\"})",
            37.0,
        ),
        ("count(shardgate_worker_requests_total)", 2.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    for (q, want) in queries {
        loop {
            let got = prom.query(q);
            if got == Some(want) {
                break;
            }
            assert!(Instant::now() < deadline, "{q}: {got:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (apisix_http_latency_bucket{route=\"scraped\",type=\"request\"}))")
        .expect("a quantile");
    assert!(p99 > 0.0 && p99 <= 60000.0, "{p99}");
}
