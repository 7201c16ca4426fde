//! The `opentelemetry` plugin (issue #13): W3C trace context through the gateway, samplers,
//! and spans received over OTLP/HTTP and decoded with the OpenTelemetry project's own
//! protocol types (`opentelemetry-proto`).

use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A received span and its resource's attributes.
type Received = (Span, Vec<(String, String)>);

/// An OTLP/HTTP receiver: every span POSTed to `/v1/traces`.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start_on(listener: TcpListener) -> Collector {
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let into = spans.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut all = Vec::new();
                let mut buf = vec![0u8; 65536];
                let body = loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    all.extend_from_slice(&buf[..n]);
                    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&all[..end]).to_lowercase();
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    assert!(head.contains("content-type: application/x-protobuf"));
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap();
                    if all.len() >= end + 4 + len {
                        break Some(all[end + 4..end + 4 + len].to_vec());
                    }
                };
                let Some(body) = body else { continue };
                let req: ExportTraceServiceRequest = prost::Message::decode(&body[..]).unwrap();
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                for rs in req.resource_spans {
                    let resource: Vec<(String, String)> = rs
                        .resource
                        .map(|r| r.attributes)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                        .collect();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            into.lock().unwrap().push((span, resource.clone()));
                        }
                    }
                }
            }
        });
        Collector { port, spans }
    }

    fn start() -> Collector {
        Collector::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn wait(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.spans.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} spans", got.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn text(v: Option<Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s,
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.clone().and_then(|v| v.value)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The gateway section for a collector on `port`, quick batches.
fn otel(port: u16) -> String {
    format!(
        "[plugin_attr.opentelemetry]\ncollector = {{ address = \"127.0.0.1:{port}\", request_timeout = 1 }}\nresource = {{ \"service.name\" = \"edge\", zone = \"a\" }}\nbatch_span_processor = {{ inactive_timeout = 0.2, batch_timeout = 0.5, max_export_batch_size = 50 }}\n"
    )
}

/// A backend answering with the traceparent it got.
fn echo_traceparent() -> Backend {
    Backend::start(|s| Reply::ok(s.header("traceparent").unwrap_or("-")))
}

#[test]
fn a_span_per_request_child_of_the_clients_with_the_context_passed_upstream() {
    let col = Collector::start();
    let be = echo_traceparent();
    let gw = Gateway::start_with(
        &format!(
            "{}[[routes]]\nid = \"r1\"\nname = \"orders\"\nuri = \"/orders/*\"\nplugins.opentelemetry = {{ sampler = {{ name = \"always_on\" }}, additional_attributes = [\"http_x_tenant\", \"arg_page\"], additional_header_prefix_attributes = [\"x-meta-\"] }}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            otel(col.port),
            be.addr()
        ),
        "workers = 2",
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.client().request(
        "GET",
        "/orders/1?page=3",
        &[
            ("traceparent", parent),
            ("tracestate", "vendor=x"),
            ("X-Tenant", "acme"),
            ("X-Meta-Region", "eu"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let upstream_saw = r.text();
    // A request without context starts a trace.
    let r2 = gw.client().get("/orders/2");
    assert_eq!(r2.status, 200);
    let spans = col.wait(2);
    let (child, resource) = spans
        .iter()
        .find(|(s, _)| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the client's trace");
    assert_eq!(hex(&child.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(child.trace_state, "vendor=x");
    // Upstream got this span's context, sampled.
    assert_eq!(
        upstream_saw,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&child.span_id)
        )
    );
    assert_eq!(child.name, "GET /orders/*");
    assert_eq!(child.kind, 2, "SERVER");
    assert!(child.end_time_unix_nano >= child.start_time_unix_nano);
    assert!(child.start_time_unix_nano > 1_700_000_000_000_000_000);
    for (k, v) in [
        ("http.method", "GET"),
        ("http.target", "/orders/1?page=3"),
        ("apisix.route_id", "r1"),
        ("apisix.route_name", "orders"),
        ("http.route", "/orders/*"),
        ("http.status_code", "200"),
        ("apisix.response_source", "upstream"),
        ("http_x_tenant", "acme"),
        ("arg_page", "3"),
        ("x-meta-region", "eu"),
    ] {
        assert_eq!(attr(child, k).as_deref(), Some(v), "{k}");
    }
    assert!(resource.contains(&("service.name".into(), "edge".into())));
    assert!(resource.contains(&("zone".into(), "a".into())));
    let (root, _) = spans
        .iter()
        .find(|(s, _)| s.trace_id != child.trace_id)
        .unwrap();
    assert!(root.parent_span_id.is_empty());
    assert_eq!(
        r2.text(),
        format!("00-{}-{}-01", hex(&root.trace_id), hex(&root.span_id))
    );
}

#[test]
fn samplers_decide_as_apisix_and_unsampled_requests_still_pass_the_context_on() {
    let col = Collector::start();
    let be = echo_traceparent();
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nuri = \"/ratio\"\nplugins.opentelemetry = {{ sampler = {{ name = \"trace_id_ratio\", options = {{ fraction = 0.25 }} }} }}\n{up}\n\
         [[routes]]\nuri = \"/off\"\nplugins.opentelemetry = {{}}\n{up}\n\
         [[routes]]\nuri = \"/parent\"\nplugins.opentelemetry = {{ sampler = {{ name = \"parent_base\", options = {{ root = {{ name = \"always_off\" }} }} }} }}\n{up}\n",
        otel(col.port)
    ));
    let mut client = gw.client();
    for _ in 0..400 {
        assert_eq!(client.get("/ratio").status, 200);
    }
    // always_off (the default): no span, but the upstream still gets a context, unsampled.
    let off = client.get("/off").text();
    assert!(off.starts_with("00-") && off.ends_with("-00"), "{off}");
    // parent_base follows the client's flag; without a parent, the root (always_off).
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let unsampled = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203331-00";
    for tp in [sampled, unsampled] {
        let r = client.request("GET", "/parent", &[("traceparent", tp)], b"");
        assert!(r.text().ends_with(&tp[tp.len() - 3..]), "{}", r.text());
    }
    client.get("/parent");
    std::thread::sleep(Duration::from_secs(2));
    let spans = col.spans.lock().unwrap().clone();
    let ratio = spans
        .iter()
        .filter(|(s, _)| s.name.starts_with("GET /ratio"))
        .count();
    // 25% of 400: 100 expected; the bounds hold with probability above 0.9999.
    assert!((55..=145).contains(&ratio), "{ratio}");
    let parent: Vec<_> = spans
        .iter()
        .filter(|(s, _)| s.name.starts_with("GET /parent"))
        .collect();
    assert_eq!(parent.len(), 1);
    assert_eq!(
        hex(&parent[0].0.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert!(!spans.iter().any(|(s, _)| s.name.starts_with("GET /off")));
}

#[test]
fn a_collector_down_costs_requests_nothing_and_spans_flow_again_when_it_is_back() {
    // The port is reserved by binding it, and taken up again by the collector later.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let be = Backend::named("b");
    let mport = free_port();
    let gw = Gateway::start(&format!(
        "{}[plugin_attr.prometheus]\nexport_addr = \"127.0.0.1:{mport}\"\n[[routes]]\nuri = \"/t\"\nplugins.opentelemetry = {{ sampler = {{ name = \"always_on\" }} }}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        otel(port),
        be.addr()
    ));
    let spans_total = |result: &str| -> f64 {
        let text = Client::connect(([127, 0, 0, 1], mport).into())
            .get("/apisix/prometheus/metrics")
            .text();
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "shardgate_tracing_spans_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or(-1.0)
    };
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(gw.get("/t").status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    // Tried with backoff (1 + 2 + 4 s), then dropped and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while spans_total("dropped") < 5.0 {
        assert!(
            Instant::now() < deadline,
            "dropped {}",
            spans_total("dropped")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let col = Collector::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    for _ in 0..3 {
        assert_eq!(gw.get("/t").status, 200);
    }
    assert_eq!(col.wait(3).len(), 3);
    assert_eq!(spans_total("exported"), 3.0);
}

#[test]
fn tracing_settings_are_checked_with_the_field_named() {
    for (text, want) in [
        ("[plugin_attr.opentelemetry]\ncollector = { address = \"nowhere\" }\n", "collector.address"),
        ("[plugin_attr.opentelemetry]\ntrace_id_source = \"uuid\"\n", "trace_id_source"),
        ("[plugin_attr.opentelemetry]\nbatch_span_processor = { max_queue_size = 0 }\n", "batch_span_processor"),
        ("[[routes]]\nuri = \"/\"\nplugins.opentelemetry = { sampler = { name = \"sometimes\" } }\nupstream = { nodes = { \"127.0.0.1:1\" = 1 } }\n", "sampler"),
        ("[[routes]]\nuri = \"/\"\nplugins.opentelemetry = { additional_attributes = [\"no_such_var\"] }\nupstream = { nodes = { \"127.0.0.1:1\" = 1 } }\n", "additional_attributes"),
    ] {
        let (ok, err) = check_config(text);
        assert!(!ok, "{text}");
        assert!(err.contains(want), "{text}: {err}");
    }
}
