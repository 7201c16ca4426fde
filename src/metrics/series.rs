//! Request series: one label set's counters and latency histograms, and the per-core
//! [`Recorder`] that finds a request's series without allocating.

use super::{bump, CoreShard};
use crate::fold_hash::FoldHash;
use crate::route::Route;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a finished request was and how it went: what the metrics (and loggers) record.
pub struct Served<'a> {
    pub route: Option<&'a Route>,
    /// The normalized path and the lower-case host without port.
    pub path: &'a [u8],
    pub host: &'a [u8],
    pub consumer: Option<&'a crate::consumer::Identity>,
    pub status: u16,
    /// The upstream node that answered (or was tried last).
    pub node: Option<SocketAddr>,
    /// The upstream's status, when one answered.
    pub upstream_status: Option<u16>,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    /// Request bytes received (head and body), response bytes sent.
    pub request_bytes: u64,
    pub bytes_sent: u64,
}

/// Who made the response (APISIX's `response_source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The upstream answered.
    Upstream,
    /// The proxy gave up on the upstream (502, 504): nginx's error pages in APISIX.
    Nginx,
    /// The gateway answered by itself (no route, a plugin's refusal).
    Apisix,
}

impl Source {
    /// Who made the response of the request `s` describes.
    pub fn of(s: &Served<'_>) -> Source {
        match (s.upstream_status, s.node) {
            (Some(_), _) => Source::Upstream,
            (None, Some(_)) => Source::Nginx,
            (None, None) => Source::Apisix,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Nginx => "nginx",
            Source::Apisix => "apisix",
        }
    }
}

/// One label set of `apisix_http_status` (the latency and bandwidth series are the same
/// sets without `code`, `matched_uri`, `matched_host` and `response_source`, added up at
/// scrape time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub code: u16,
    pub route: Arc<str>,
    pub matched_uri: Arc<str>,
    pub matched_host: Arc<str>,
    pub service: Arc<str>,
    pub consumer: Arc<str>,
    pub node: Option<IpAddr>,
    pub source: Source,
}

/// A request's labels, borrowed: looked up without building a key.
#[derive(Hash)]
struct View<'a> {
    code: u16,
    route: &'a str,
    matched_uri: &'a str,
    matched_host: &'a str,
    service: &'a str,
    consumer: &'a str,
    node: Option<IpAddr>,
    source: Source,
}

impl View<'_> {
    fn is(&self, k: &SeriesKey) -> bool {
        self.code == k.code
            && self.node == k.node
            && self.source == k.source
            && *self.route == *k.route
            && *self.matched_uri == *k.matched_uri
            && *self.matched_host == *k.matched_host
            && *self.service == *k.service
            && *self.consumer == *k.consumer
    }

    /// Where its strings live (address and length of each).
    fn sources(&self) -> Sources {
        let at = |s: &str| (s.as_ptr() as usize, s.len());
        Sources([
            at(self.route),
            at(self.matched_uri),
            at(self.matched_host),
            at(self.service),
            at(self.consumer),
        ])
    }

    fn key(&self) -> SeriesKey {
        SeriesKey {
            code: self.code,
            route: self.route.into(),
            matched_uri: self.matched_uri.into(),
            matched_host: self.matched_host.into(),
            service: self.service.into(),
            consumer: self.consumer.into(),
            node: self.node,
            source: self.source,
        }
    }
}

/// A histogram written by one core: per-bucket counts (not cumulative; the last slot is
/// past the largest bound), the sum as f64 bits.
pub struct Histogram {
    pub buckets: Box<[AtomicU64]>,
    pub sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: usize) -> Histogram {
        Histogram {
            buckets: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        bump(&self.buckets[i], 1);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// The latency types of `apisix_http_latency`, in [`Cells::latency`] order.
pub const LATENCY_TYPES: [&str; 3] = ["request", "upstream", "apisix"];

/// One series' values.
pub struct Cells {
    pub requests: AtomicU64,
    /// `request`, `upstream`, `apisix` latency, milliseconds.
    pub latency: [Histogram; 3],
    pub ingress: AtomicU64,
    pub egress: AtomicU64,
}

impl Cells {
    fn new(bounds: usize) -> Cells {
        Cells {
            requests: AtomicU64::new(0),
            latency: [0, 1, 2].map(|_| Histogram::new(bounds)),
            ingress: AtomicU64::new(0),
            egress: AtomicU64::new(0),
        }
    }
}

/// Where a label set's strings were last seen, so the next request with the same labels is
/// recognised without reading them: a route's labels are the same strings (the route's own)
/// request after request. Equal addresses and lengths with other contents would take one of
/// them freed and its address reused, and the new labels hashing to the same 64 bits.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sources([(usize, usize); 5]);

/// One series a core has seen: its key, its values, where its strings were last seen.
struct SeenSeries {
    key: SeriesKey,
    cells: Arc<Cells>,
    sources: Sources,
}

/// Series by their labels' hash (colliding label sets share the vector).
type Seen = HashMap<u64, Vec<SeenSeries>, FoldHash>;

/// A core's way into its shard: its own index of the series it has seen.
pub struct Recorder {
    shard: Arc<CoreShard>,
    bounds: Arc<[f64]>,
    max_series: usize,
    seen: RefCell<Seen>,
    len: Cell<usize>,
}

impl Recorder {
    pub fn new(shard: Arc<CoreShard>, settings: &super::Settings) -> Recorder {
        Recorder {
            shard,
            bounds: settings.buckets.clone(),
            max_series: settings.max_series,
            seen: RefCell::default(),
            len: Cell::new(0),
        }
    }

    pub fn shard(&self) -> &CoreShard {
        &self.shard
    }

    /// Records one request. `prefer_name`: routes and services are labelled by name when
    /// they have one (the plugin's `prefer_name`).
    pub fn record(&self, s: &Served<'_>, prefer_name: bool) {
        let (route, service, matched_uri, matched_host) = match s.route {
            Some(r) => {
                let route = match (&r.labels.name, prefer_name) {
                    (Some(n), true) => &**n,
                    _ => &*r.id,
                };
                let service = match (&r.labels.service_name, prefer_name) {
                    (Some(n), true) => &**n,
                    _ => r.service_id.as_deref().unwrap_or(""),
                };
                (
                    route,
                    service,
                    r.matched_uri(s.path),
                    r.matched_host(s.host),
                )
            }
            None => ("", "", "", ""),
        };
        let source = Source::of(s);
        let view = View {
            code: s.status,
            route,
            matched_uri,
            matched_host,
            service,
            consumer: s.consumer.map_or("", |c| &c.username),
            node: s.node.map(|n| n.ip()),
            source,
        };
        let hash = FoldHash.hash_one(&view);
        let mut seen = self.seen.borrow_mut();
        let bucket = seen.entry(hash).or_default();
        let sources = view.sources();
        let same = |e: &SeenSeries| {
            e.sources == sources
                && e.key.code == view.code
                && e.key.node == view.node
                && e.key.source == view.source
        };
        let i = match bucket.iter().position(same) {
            Some(i) => i,
            None => match bucket.iter().position(|e| view.is(&e.key)) {
                Some(i) => {
                    bucket[i].sources = sources;
                    i
                }
                None => {
                    if self.len.get() >= self.max_series {
                        bump(&self.shard.dropped, 1);
                        return;
                    }
                    let key = view.key();
                    let cells = Arc::new(Cells::new(self.bounds.len()));
                    self.shard.series.pin().insert(key.clone(), cells.clone());
                    self.len.set(self.len.get() + 1);
                    bucket.push(SeenSeries {
                        key,
                        cells,
                        sources,
                    });
                    bucket.len() - 1
                }
            },
        };
        let cells = &bucket[i].cells;
        bump(&cells.requests, 1);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let total = ms(s.latency);
        cells.latency[0].observe(&self.bounds, total);
        if let Some(up) = s.upstream_latency {
            let up = ms(up);
            cells.latency[1].observe(&self.bounds, up);
            cells.latency[2].observe(&self.bounds, (total - up).max(0.0));
        } else {
            cells.latency[2].observe(&self.bounds, total);
        }
        bump(&cells.ingress, s.request_bytes);
        bump(&cells.egress, s.bytes_sent);
    }
}
