//! The scrape: every core's shard added up and written in Prometheus' text format 0.0.4,
//! with APISIX's metric names and labels (so its Grafana dashboards and alerts work), then
//! Shardgate's own (`shardgate_*`).

use super::series::{Cells, SeriesKey, LATENCY_TYPES};
use super::Metrics;
use crate::control::status::Status;
use crate::snapshot::Snapshot;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a scrape reports besides the shards.
pub struct Context<'a> {
    /// The snapshot the prober holds: upstream nodes and their health.
    pub snapshot: &'a Snapshot,
    /// Where the config comes from (etcd reachability).
    pub config: &'a Status,
}

/// The labels of the latency and bandwidth series.
type FlowKey = (Arc<str>, Arc<str>, Arc<str>, Option<IpAddr>);

#[derive(Default)]
struct Flow {
    /// Per latency type: per-bucket counts and the sum.
    latency: [(Vec<u64>, f64); 3],
    ingress: u64,
    egress: u64,
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The exposition text.
pub fn render(m: &Metrics, cx: &Context<'_>) -> String {
    let p = &m.settings.metric_prefix;
    let bounds = &m.settings.buckets;
    let mut status: BTreeMap<SeriesKey, u64> = BTreeMap::new();
    let mut flows: BTreeMap<FlowKey, Flow> = BTreeMap::new();
    for core in &m.cores {
        for (k, cells) in core.series.pin().iter() {
            *status.entry(k.clone()).or_default() += load(&cells.requests);
            let flow = flows
                .entry((
                    k.route.clone(),
                    k.service.clone(),
                    k.consumer.clone(),
                    k.node,
                ))
                .or_default();
            add_flow(flow, cells, bounds.len());
        }
    }
    let sum = |f: fn(&super::CoreShard) -> u64| m.cores.iter().map(|c| f(c)).sum::<u64>();
    let mut out = String::with_capacity(4096 + status.len() * 300 + flows.len() * 2500);

    family(
        &mut out,
        p,
        "bandwidth",
        "counter",
        "Total bandwidth in bytes consumed per service in APISIX",
    );
    for (k, f) in &flows {
        for (ty, v) in [("ingress", f.ingress), ("egress", f.egress)] {
            let _ = writeln!(out, "{p}bandwidth{{type=\"{ty}\",{}}} {v}", flow_labels(k));
        }
    }

    if let Some(etcd) = &cx.config.etcd {
        family(
            &mut out,
            p,
            "etcd_modify_indexes",
            "gauge",
            "Etcd modify index for APISIX keys",
        );
        let _ = writeln!(
            out,
            "{p}etcd_modify_indexes{{key=\"x_etcd_index\"}} {}",
            cx.config.revision
        );
        family(
            &mut out,
            p,
            "etcd_reachable",
            "gauge",
            "Config server etcd reachable from APISIX, 0 is unreachable",
        );
        let _ = writeln!(out, "{p}etcd_reachable {}", u8::from(etcd.reachable));
    }

    family(
        &mut out,
        p,
        "http_latency",
        "histogram",
        "HTTP request latency in milliseconds per service in APISIX",
    );
    for (k, f) in &flows {
        for (i, ty) in LATENCY_TYPES.iter().enumerate() {
            let (counts, total) = &f.latency[i];
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let labels = format!("type=\"{ty}\",{}", flow_labels(k));
            let mut cumulative = 0;
            for (b, n) in bounds.iter().zip(counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{p}http_latency_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{p}http_latency_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{p}http_latency_sum{{{labels}}} {total}");
            let _ = writeln!(out, "{p}http_latency_count{{{labels}}} {count}");
        }
    }

    family(
        &mut out,
        p,
        "http_requests_total",
        "gauge",
        "The total number of client requests since APISIX started",
    );
    let _ = writeln!(out, "{p}http_requests_total {}", sum(|c| load(&c.requests)));

    family(
        &mut out,
        p,
        "http_status",
        "counter",
        "HTTP status codes per service in APISIX",
    );
    for (k, v) in &status {
        let _ = writeln!(
            out,
            "{p}http_status{{code=\"{}\",route=\"{}\",matched_uri=\"{}\",matched_host=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\",{},response_source=\"{}\"}} {v}",
            k.code,
            Escaped(&k.route),
            Escaped(&k.matched_uri),
            Escaped(&k.matched_host),
            Escaped(&k.service),
            Escaped(&k.consumer),
            Node(k.node),
            AI_LABELS,
            k.source.as_str(),
        );
    }

    family(
        &mut out,
        p,
        "nginx_http_current_connections",
        "gauge",
        "Number of HTTP connections",
    );
    let gauge = |f: fn(&super::CoreShard) -> i64| m.cores.iter().map(|c| f(c)).sum::<i64>().max(0);
    let active = gauge(|c| c.active.load(Ordering::Relaxed));
    let reading = gauge(|c| c.reading.load(Ordering::Relaxed));
    let writing = gauge(|c| c.writing.load(Ordering::Relaxed));
    let accepted = sum(|c| load(&c.accepted));
    for (state, v) in [
        ("accepted", accepted as i64),
        ("active", active),
        ("handled", accepted as i64),
        ("reading", reading),
        ("waiting", (active - reading - writing).max(0)),
        ("writing", writing),
    ] {
        let _ = writeln!(
            out,
            "{p}nginx_http_current_connections{{state=\"{state}\"}} {v}"
        );
    }

    family(&mut out, p, "node_info", "gauge", "Info of APISIX node");
    let _ = writeln!(
        out,
        "{p}node_info{{hostname=\"{}\",version=\"{}\"}} 1",
        Escaped(&hostname()),
        env!("CARGO_PKG_VERSION")
    );

    upstream_status(&mut out, p, cx.snapshot);
    own(&mut out, m, cx);
    out
}

/// The labels APISIX 3.14 adds for AI proxying, constant for plain HTTP requests.
const AI_LABELS: &str = "request_type=\"traditional_http\",request_llm_model=\"\",llm_model=\"\"";

fn flow_labels(k: &FlowKey) -> String {
    format!(
        "route=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\",{AI_LABELS}",
        Escaped(&k.0),
        Escaped(&k.1),
        Escaped(&k.2),
        Node(k.3)
    )
}

fn add_flow(flow: &mut Flow, cells: &Cells, bounds: usize) {
    for (i, h) in cells.latency.iter().enumerate() {
        let (counts, sum) = &mut flow.latency[i];
        counts.resize(bounds + 1, 0);
        for (c, b) in counts.iter_mut().zip(h.buckets.iter()) {
            *c += load(b);
        }
        *sum += f64::from_bits(load(&h.sum));
    }
    flow.ingress += load(&cells.ingress);
    flow.egress += load(&cells.egress);
}

/// `apisix_upstream_status`: 1 for a healthy node, 0 for an unhealthy one, for upstreams
/// with health checks (APISIX's name: `/apisix/upstreams/1`, `/apisix/routes/1`).
fn upstream_status(out: &mut String, p: &str, snap: &Snapshot) {
    family(
        out,
        p,
        "upstream_status",
        "gauge",
        "Upstream status from health check",
    );
    for u in snap.upstreams.iter().filter(|u| u.checks.is_some()) {
        let name = crate::health::checker_name(&u.key);
        let mut seen = Vec::new();
        for t in u.nodes.iter().filter_map(|n| n.health.as_ref()) {
            if seen.contains(&t.id) {
                continue;
            }
            seen.push(t.id);
            let up = t.usable();
            let _ = writeln!(
                out,
                "{p}upstream_status{{name=\"/apisix{}\",ip=\"{}\",port=\"{}\"}} {}",
                Escaped(&name),
                t.probe_addr.ip(),
                t.probe_addr.port(),
                u8::from(up)
            );
        }
    }
}

/// Shardgate's own metrics: per worker, the pool, retries, health, config.
fn own(out: &mut String, m: &Metrics, cx: &Context<'_>) {
    let s = "shardgate_";
    family(
        out,
        s,
        "worker_requests_total",
        "counter",
        "Requests answered, per worker",
    );
    for (i, c) in m.cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "{s}worker_requests_total{{worker=\"{i}\"}} {}",
            load(&c.requests)
        );
    }
    family(
        out,
        s,
        "worker_config_version",
        "gauge",
        "The config version each worker serves",
    );
    for (i, c) in m.cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "{s}worker_config_version{{worker=\"{i}\"}} {}",
            load(&c.config_version)
        );
    }
    let total =
        |f: fn(&super::CoreShard) -> &AtomicU64| m.cores.iter().map(|c| load(f(c))).sum::<u64>();
    for (name, help, v) in [
        (
            "upstream_retries_total",
            "Upstream attempts after a failed one",
            total(|c| &c.retries),
        ),
        (
            "upstream_pool_reused_total",
            "Upstream connections taken from the keepalive pool",
            total(|c| &c.pool_reused),
        ),
        (
            "upstream_pool_opened_total",
            "Upstream connections opened anew",
            total(|c| &c.pool_opened),
        ),
        (
            "accept_paused_total",
            "Times a worker stopped accepting because it had max_connections open",
            total(|c| &c.accept_paused),
        ),
        (
            "metrics_series_dropped_total",
            "Requests not recorded because their worker had reached its series limit",
            total(|c| &c.dropped),
        ),
        (
            "health_transitions_total",
            "Upstream node health state changes",
            load(&m.health_transitions),
        ),
        (
            "config_reloads_total",
            "Configuration changes applied",
            load(&m.reloads),
        ),
    ] {
        family(out, s, name, "counter", help);
        let _ = writeln!(out, "{s}{name} {v}");
    }
    family(out, s, "tracing_spans_total", "counter", "Spans exported to the collector, or dropped (queue full, or the collector refused them after retries)");
    let t = crate::tracing::counters();
    for (result, v) in [
        ("exported", load(&t.exported)),
        ("dropped", load(&t.dropped)),
    ] {
        let _ = writeln!(out, "{s}tracing_spans_total{{result=\"{result}\"}} {v}");
    }
    family(out, s, "logger_entries_total", "counter", "Log entries sent, or dropped (queue full, or refused past max_retry_count), per logger and target");
    for ((logger, target), c) in crate::logger::counters() {
        for (result, v) in [("sent", load(&c.sent)), ("dropped", load(&c.dropped))] {
            let _ = writeln!(
                out,
                "{s}logger_entries_total{{logger=\"{logger}\",target=\"{}\",result=\"{result}\"}} {v}",
                Escaped(&target)
            );
        }
    }
    cache(out, s);
    family(
        out,
        s,
        "config_version",
        "gauge",
        "The config version the control plane last applied",
    );
    let _ = writeln!(out, "{s}config_version {}", cx.config.config_version);
    family(
        out,
        s,
        "config_apply_seconds",
        "gauge",
        "How long the last configuration change took to compile and reach every worker",
    );
    let _ = writeln!(
        out,
        "{s}config_apply_seconds {}",
        load(&m.last_apply_us) as f64 / 1e6
    );
}

/// The proxy-cache zones: lookups by result, stores, evictions, entries and bytes held (a
/// `per_worker` zone summed over its workers).
fn cache(out: &mut String, s: &str) {
    let mut zones: BTreeMap<&str, [u64; 7]> = BTreeMap::new();
    for z in crate::cache::all() {
        let (entries, bytes) = z.usage();
        let t = zones.entry(&z.name).or_default();
        for (i, v) in [
            z.stats.hits(),
            z.stats.misses(),
            load(&z.stats.stored),
            load(&z.stats.evicted),
            entries as u64,
            bytes,
            z.capacity(),
        ]
        .into_iter()
        .enumerate()
        {
            t[i] += v;
        }
    }
    if zones.is_empty() {
        return;
    }
    family(out, s, "cache_lookups_total", "counter", "proxy-cache lookups answered from the zone (hit: HIT, UPDATING) or sent upstream (miss: MISS, EXPIRED)");
    for (name, t) in &zones {
        for (result, v) in [("hit", t[0]), ("miss", t[1])] {
            let _ = writeln!(
                out,
                "{s}cache_lookups_total{{zone=\"{name}\",result=\"{result}\"}} {v}"
            );
        }
    }
    for (i, name, kind, help) in [
        (
            2,
            "cache_stored_total",
            "counter",
            "Responses stored in the zone",
        ),
        (
            3,
            "cache_evicted_total",
            "counter",
            "Entries evicted to keep the zone within its size",
        ),
        (4, "cache_entries", "gauge", "Entries the zone holds"),
        (
            5,
            "cache_bytes",
            "gauge",
            "Bytes the zone's entries take (memory zones) or their files (disk zones)",
        ),
        (6, "cache_capacity_bytes", "gauge", "The zone's size"),
    ] {
        family(out, s, name, kind, help);
        for (zone, t) in &zones {
            let _ = writeln!(out, "{s}{name}{{zone=\"{zone}\"}} {}", t[i]);
        }
    }
}

fn family(out: &mut String, prefix: &str, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} {kind}"
    );
}

/// A label value with `\`, `"` and newlines escaped.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The `node` label: the upstream's IP, or empty.
struct Node(Option<IpAddr>);

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => Ok(()),
        }
    }
}

/// This host's name (`apisix_node_info`, log entries).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
