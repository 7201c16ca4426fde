//! OpenTelemetry tracing: W3C trace context, samplers, and the span exporter.
//!
//! The `opentelemetry` plugin makes one server span per sampled request. A finished span is
//! pushed onto a bounded lock-free queue; one exporter thread takes batches off it and POSTs
//! them to the collector as OTLP/HTTP protobuf (`{address}/v1/traces`), with the
//! OpenTelemetry project's own message types (`opentelemetry-proto`). A full queue drops the
//! span; a batch the collector refuses is tried again with backoff (1, 2, 4 s), then
//! dropped. Requests never wait for any of it; the counts are in the metrics
//! (`shardgate_tracing_spans_total{result}`).

use crossbeam_queue::ArrayQueue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `[plugin_attr.opentelemetry]` (APISIX's fields and its tracer's defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `random`, or `x-request-id` (a request's `X-Request-Id`, when it is 32 hex digits,
    /// is its trace id).
    pub trace_id_source: String,
    /// Resource attributes (`service.name` defaults to `APISIX`).
    pub resource: BTreeMap<String, serde_json::Value>,
    pub collector: Collector,
    pub batch_span_processor: BatchSpans,
    pub set_ngx_var: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Collector {
    /// `host:port` of an OTLP/HTTP receiver.
    pub address: String,
    /// Seconds.
    pub request_timeout: u64,
    pub request_headers: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSpans {
    pub drop_on_queue_full: bool,
    pub max_queue_size: usize,
    /// Seconds the oldest span of a batch waits at most.
    pub batch_timeout: f64,
    /// Seconds without a new span after which a partial batch goes.
    pub inactive_timeout: f64,
    pub max_export_batch_size: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            trace_id_source: "random".into(),
            resource: BTreeMap::new(),
            collector: Collector::default(),
            batch_span_processor: BatchSpans::default(),
            set_ngx_var: false,
        }
    }
}

impl Default for Collector {
    fn default() -> Collector {
        Collector {
            address: "127.0.0.1:4318".into(),
            request_timeout: 3,
            request_headers: BTreeMap::new(),
        }
    }
}

impl Default for BatchSpans {
    fn default() -> BatchSpans {
        BatchSpans {
            drop_on_queue_full: true,
            max_queue_size: 2048,
            batch_timeout: 5.0,
            inactive_timeout: 2.0,
            max_export_batch_size: 256,
        }
    }
}

impl Settings {
    /// Checks the settings; errors name the field.
    pub fn check(&self) -> Result<(), crate::config::ConfigError> {
        let f = "plugin_attr.opentelemetry";
        let bad = |field: &str, why: &str| {
            Err(crate::config::ConfigError::invalid(
                format!("{f}.{field}"),
                why,
            ))
        };
        if !matches!(self.trace_id_source.as_str(), "random" | "x-request-id") {
            return bad("trace_id_source", "expect \"random\" or \"x-request-id\"");
        }
        if self.set_ngx_var {
            return bad(
                "set_ngx_var",
                "not supported (there are no nginx variables)",
            );
        }
        let host_port = self.collector.address.rsplit_once(':');
        if !host_port.is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            return bad("collector.address", "expect host:port");
        }
        let b = &self.batch_span_processor;
        if b.max_queue_size == 0 || b.max_export_batch_size == 0 {
            return bad(
                "batch_span_processor",
                "queue and batch sizes must be at least 1",
            );
        }
        if !(b.batch_timeout > 0.0 && b.inactive_timeout > 0.0) {
            return bad("batch_span_processor", "timeouts must be above 0");
        }
        Ok(())
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the process's tracing settings (at start, before any plugin is built).
pub fn configure(s: Settings) {
    let _ = SETTINGS.set(s);
}

pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::default)
}

/// What the exporter did with spans.
#[derive(Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

pub fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(Counters::default)
}

/// A finished span, as the plugin hands it over.
pub struct Finished {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub trace_state: String,
    pub name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<(String, Attr)>,
    /// `Some(message)`: the span's status is ERROR.
    pub error: Option<String>,
}

pub enum Attr {
    Str(String),
    Int(i64),
}

fn queue() -> &'static ArrayQueue<Finished> {
    static Q: OnceLock<ArrayQueue<Finished>> = OnceLock::new();
    Q.get_or_init(|| {
        let s = settings().clone();
        let q = ArrayQueue::new(s.batch_span_processor.max_queue_size);
        std::thread::Builder::new()
            .name("shardgate-otel".into())
            .spawn(move || export_loop(s))
            .expect("span exporter thread");
        q
    })
}

/// Hands a finished span to the exporter; a full queue drops it (counted).
pub fn submit(span: Finished) {
    if queue().push(span).is_err() {
        counters().dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the exporter (so the first sampled request does not).
pub fn start() {
    let _ = queue();
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish() | 1
    });
}

/// A random non-zero u64 (SplitMix64 per thread: ids need to be unique, not secret).
pub fn random_u64() -> u64 {
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).max(1)
    })
}

fn export_loop(s: Settings) {
    let b = &s.batch_span_processor;
    let q = queue();
    let mut batch: Vec<Finished> = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        // Wait for more only when there is not a full batch waiting already.
        if batch.len() + q.len() < b.max_export_batch_size {
            std::thread::sleep(Duration::from_millis(50));
        }
        while batch.len() < b.max_export_batch_size {
            let Some(span) = q.pop() else { break };
            if batch.is_empty() {
                first = Some(Instant::now());
            }
            last = Instant::now();
            batch.push(span);
        }
        let now = Instant::now();
        let due = batch.len() >= b.max_export_batch_size
            || (!batch.is_empty()
                && (now.duration_since(last).as_secs_f64() >= b.inactive_timeout
                    || first
                        .is_some_and(|f| now.duration_since(f).as_secs_f64() >= b.batch_timeout)));
        if !due {
            continue;
        }
        let spans = std::mem::take(&mut batch);
        first = None;
        let n = spans.len() as u64;
        let body = prost::Message::encode_to_vec(&request(&s, spans));
        let mut sent = false;
        for backoff in [0u64, 1, 2, 4] {
            if backoff > 0 {
                std::thread::sleep(Duration::from_secs(backoff));
            }
            match post(&s.collector, &body) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => crate::warn!("opentelemetry: exporting {n} spans failed: {e}"),
            }
        }
        let c = counters();
        match sent {
            true => c.exported.fetch_add(n, Ordering::Relaxed),
            false => c.dropped.fetch_add(n, Ordering::Relaxed),
        };
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn request(s: &Settings, spans: Vec<Finished>) -> ExportTraceServiceRequest {
    let mut resource = vec![kv(
        "hostname",
        any_value::Value::StringValue(crate::metrics::exposition::hostname()),
    )];
    if !s.resource.contains_key("service.name") {
        resource.push(kv(
            "service.name",
            any_value::Value::StringValue("APISIX".into()),
        ));
    }
    for (k, v) in &s.resource {
        let v = match v {
            serde_json::Value::String(t) => any_value::Value::StringValue(t.clone()),
            serde_json::Value::Bool(b) => any_value::Value::BoolValue(*b),
            serde_json::Value::Number(n) if n.is_i64() => {
                any_value::Value::IntValue(n.as_i64().unwrap_or_default())
            }
            other => any_value::Value::StringValue(other.to_string()),
        };
        resource.push(kv(k, v));
    }
    let spans = spans
        .into_iter()
        .map(|f| Span {
            trace_id: f.trace_id.to_vec(),
            span_id: f.span_id.to_vec(),
            parent_span_id: f.parent.map(|p| p.to_vec()).unwrap_or_default(),
            trace_state: f.trace_state,
            name: f.name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: f.start_unix_nano,
            end_time_unix_nano: f.end_unix_nano,
            attributes: f
                .attributes
                .into_iter()
                .map(|(k, v)| match v {
                    Attr::Str(s) => kv(&k, any_value::Value::StringValue(s)),
                    Attr::Int(i) => kv(&k, any_value::Value::IntValue(i)),
                })
                .collect(),
            status: f.error.map(|message| Status {
                message,
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry-lua".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(c: &Collector, body: &[u8]) -> Result<(), String> {
    let timeout = Duration::from_secs(c.request_timeout.max(1));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&c.address)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {}", c.address))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut extra = String::new();
    for (k, v) in &c.request_headers {
        let v = match v {
            serde_json::Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        c.address,
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut line = [0u8; 12];
    s.read_exact(&mut line).map_err(|e| e.to_string())?;
    match std::str::from_utf8(&line[9..12])
        .ok()
        .and_then(|t| t.parse::<u16>().ok())
    {
        Some(code) if code < 300 => Ok(()),
        Some(code) => Err(format!("collector answered {code}")),
        None => Err("not an HTTP answer".into()),
    }
}
