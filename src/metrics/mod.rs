//! Prometheus metrics: what each core records, and how a scrape adds the cores up.
//!
//! Every worker owns one [`CoreShard`]: the request series its requests touched (APISIX's
//! `apisix_http_status`, `apisix_http_latency`, `apisix_bandwidth`, one entry per label
//! set) and a few plain counters (requests, connections, retries, pool use, config version).
//! Only that worker writes its shard, with plain loads and stores on its own cache lines: no
//! lock, no read-modify-write shared with another core. A scrape (on the prober thread, off
//! the request path) reads every shard and adds them up ([`exposition`]).
//!
//! A worker finds a request's series in its own hash map ([`series::Recorder`]); a label set
//! seen for the first time is also published into the shard's lock-free map, where the
//! scrape finds it. At most `max_series` ([`MAX_SERIES`]) label sets per core: a request with a label set
//! past that bound is counted in `shardgate_metrics_series_dropped_total` and recorded
//! nowhere else, so a flood of consumers or nodes cannot grow memory without bound.

pub mod dashboard;
pub mod exposition;
pub mod series;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

pub use series::{Recorder, Served};

/// Label sets (series) a core records at most by default (`max_series`), each about 0.5 KiB.
pub const MAX_SERIES: usize = 10_000;

/// APISIX's default latency buckets, in milliseconds.
pub const DEFAULT_BUCKETS: [f64; 15] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

/// Adds `n` to a counter only this thread writes: a load and a store, no locked instruction.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Adds `n` (may be negative) to a gauge only this thread writes.
#[inline]
pub fn shift(g: &AtomicI64, n: i64) {
    g.store(g.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One worker's metrics. Written by that worker only; read by scrapes.
#[derive(Default)]
pub struct CoreShard {
    /// The request series, by label set.
    pub series: papaya::HashMap<series::SeriesKey, Arc<series::Cells>>,
    /// Requests whose label set was past [`MAX_SERIES`].
    pub dropped: AtomicU64,
    /// Every request this worker answered (`apisix_http_requests_total`).
    pub requests: AtomicU64,
    /// Client connections accepted, and open now (nginx's `accepted`/`handled`, `active`).
    pub accepted: AtomicU64,
    pub active: AtomicI64,
    /// Times this worker stopped accepting at `max_connections`.
    pub accept_paused: AtomicU64,
    /// Connections whose request head is being received, and requests being served
    /// (nginx's `reading`, `writing`); the rest of `active` is `waiting`.
    pub reading: AtomicI64,
    pub writing: AtomicI64,
    /// Extra upstream attempts after a failed one.
    pub retries: AtomicU64,
    /// Upstream connections taken from the keepalive pool, and opened anew.
    pub pool_reused: AtomicU64,
    pub pool_opened: AtomicU64,
    /// The config version this worker serves.
    pub config_version: AtomicU64,
}

/// `[plugin_attr.prometheus]`, the exporter's settings (read once at start, as APISIX reads
/// `plugin_attr` from its config.yaml).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the exporter listens (`export_addr`), unless `enable_export_server` is false.
    pub export_addr: Option<std::net::SocketAddr>,
    pub export_uri: String,
    pub metric_prefix: String,
    /// Latency buckets in milliseconds, ascending.
    pub buckets: Arc<[f64]>,
    /// Label sets per worker at most.
    pub max_series: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            export_addr: Some(([127, 0, 0, 1], 9091).into()),
            export_uri: "/apisix/prometheus/metrics".into(),
            metric_prefix: "apisix_".into(),
            buckets: DEFAULT_BUCKETS.into(),
            max_series: MAX_SERIES,
        }
    }
}

/// Every worker's shard, and the settings: what a scrape reads.
pub struct Metrics {
    pub settings: Settings,
    pub cores: Vec<Arc<CoreShard>>,
    /// Health state changes of upstream nodes (written by the prober thread only).
    pub health_transitions: AtomicU64,
    /// Configuration changes applied, and how long the last one took to compile and reach
    /// every worker (written by the control thread only).
    pub reloads: AtomicU64,
    pub last_apply_us: AtomicU64,
}

impl Metrics {
    pub fn new(settings: Settings, workers: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            settings,
            cores: (0..workers).map(|_| Arc::default()).collect(),
            health_transitions: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            last_apply_us: AtomicU64::new(0),
        })
    }
}
