//! The status dashboard on the control listener: `GET /dashboard` (one self-contained
//! page) and `GET /v1/dashboard.json` (what the page polls each second): the cores' counters
//! added up, latency buckets, per-route and per-upstream traffic (routes recorded by the
//! `prometheus` plugin), node health, per-worker load and config version, TLS certificates and their
//! expiry.

use super::exposition::Context;
use super::series::LATENCY_TYPES;
use super::Metrics;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// The page (HTML, CSS and script in one file; no outside resources).
pub const PAGE: &str = include_str!("dashboard.html");

/// The `q` quantile (0..1) of a histogram given by per-bucket counts (`counts[i]` for
/// bucket `bounds[i]`, the last past the largest bound), interpolated within its bucket as
/// Prometheus' `histogram_quantile` does.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(&hi) = bounds.get(i) else {
                return Some(lo);
            };
            return Some(lo + (hi - lo) * ((rank - seen as f64) / n as f64).clamp(0.0, 1.0));
        }
        seen += n;
    }
    bounds.last().copied()
}

/// The dashboard's data.
pub fn json(m: &Metrics, cx: &Context<'_>) -> Value {
    let bounds = &m.settings.buckets;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut latency = vec![0u64; bounds.len() + 1];
    let mut status: BTreeMap<u16, u64> = BTreeMap::new();
    // Per route: requests, 5xx, latency buckets. Per upstream the same (upstream latency)
    // and requests per node.
    let mut routes: BTreeMap<String, Traffic> = BTreeMap::new();
    let mut upstream_traffic: BTreeMap<&str, Traffic> = BTreeMap::new();
    let upstream_of = upstream_of_routes(cx);
    debug_assert_eq!(LATENCY_TYPES[..2], ["request", "upstream"]);
    for core in &m.cores {
        for (k, cells) in core.series.pin().iter() {
            let n = load(&cells.requests);
            *status.entry(k.code).or_default() += n;
            let request = &cells.latency[0];
            for (i, b) in request.buckets.iter().enumerate() {
                latency[i] += load(b);
            }
            let r = routes
                .entry(k.route.to_string())
                .or_insert_with(|| Traffic::new(bounds.len()));
            r.add(k.code, n, request);
            if let Some(&up) = upstream_of.get(&*k.route) {
                let u = upstream_traffic
                    .entry(up)
                    .or_insert_with(|| Traffic::new(bounds.len()));
                u.add(k.code, n, &cells.latency[1]);
                if let Some(ip) = k.node {
                    *u.nodes.entry(ip.to_string()).or_default() += n;
                }
            }
        }
    }
    let workers: Vec<Value> = m
        .cores
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "worker": i,
                "requests": load(&c.requests),
                "config_version": load(&c.config_version),
                "active": c.active.load(Ordering::Relaxed),
            })
        })
        .collect();
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|(route, t)| t.json(bounds, "route", &route, false))
        .collect();
    let traffic: Vec<Value> = upstream_traffic
        .into_iter()
        .map(|(upstream, t)| t.json(bounds, "upstream", upstream, true))
        .collect();
    let mut upstreams = Vec::new();
    for u in cx.snapshot.upstreams.iter().filter(|u| u.checks.is_some()) {
        let mut seen = Vec::new();
        let mut nodes = Vec::new();
        for t in u.nodes.iter().filter_map(|n| n.health.as_ref()) {
            if seen.contains(&t.id) {
                continue;
            }
            seen.push(t.id);
            let st = t.machine.lock().unwrap_or_else(|e| e.into_inner()).clone();
            nodes.push(json!({
                "address": t.probe_addr.to_string(),
                "status": st.status.as_str(),
                "success": st.counters.success,
                "failures": st.counters.http_failure + st.counters.tcp_failure + st.counters.timeout_failure,
            }));
        }
        upstreams.push(json!({ "name": crate::health::checker_name(&u.key), "nodes": nodes }));
    }
    let requests: u64 = m.cores.iter().map(|c| load(&c.requests)).sum();
    let now = crate::log::now_secs();
    let certificates: Vec<Value> = cx
        .snapshot
        .tls
        .iter()
        .flat_map(|t| t.certs.served.iter())
        .map(|c| {
            json!({
                "id": c.id,
                "snis": c.snis,
                "expires": c.not_after_text,
                "days_left": (c.not_after - now).div_euclid(86_400),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_version": cx.config.config_version,
        "requests": requests,
        "latency": { "bounds": &bounds[..], "counts": latency },
        "status": status.into_iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "routes": routes,
        "traffic": traffic,
        "upstreams": upstreams,
        "workers": workers,
        "certificates": certificates,
    })
}

/// One route's or upstream's requests, 5xx answers and latency buckets, added up over the
/// cores' series.
struct Traffic {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
    /// Requests per node address (upstreams only).
    nodes: BTreeMap<String, u64>,
}

impl Traffic {
    fn new(bounds: usize) -> Traffic {
        Traffic {
            requests: 0,
            errors: 0,
            buckets: vec![0; bounds + 1],
            nodes: BTreeMap::new(),
        }
    }

    /// As the page shows it: `{<label>: name, requests, errors, p50_ms, p99_ms[, nodes]}`.
    fn json(&self, bounds: &[f64], label: &str, name: &str, nodes: bool) -> Value {
        let mut v = json!({
            label: name,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": quantile(bounds, &self.buckets, 0.5),
            "p99_ms": quantile(bounds, &self.buckets, 0.99),
        });
        if nodes {
            v["nodes"] = json!(self.nodes);
        }
        v
    }

    fn add(&mut self, code: u16, n: u64, latency: &super::series::Histogram) {
        self.requests += n;
        if code >= 500 {
            self.errors += n;
        }
        for (sum, b) in self.buckets.iter_mut().zip(latency.buckets.iter()) {
            *sum += b.load(Ordering::Relaxed);
        }
    }
}

/// Which upstream each route of the running config uses, by the route's metrics label (its
/// id, or its name under `prefer_name`): upstream traffic is the traffic of the routes that
/// use it now. An upstream chosen per request by a plugin (`traffic-split`) is counted under
/// the route's own.
fn upstream_of_routes<'a>(cx: &'a Context<'_>) -> std::collections::HashMap<&'a str, &'a str> {
    let router = &cx.snapshot.router;
    let mut of = std::collections::HashMap::new();
    for r in (0..router.len()).map(|i| router.route(i)) {
        let Some(up) = r.upstream.and_then(|u| cx.snapshot.upstreams.get(u)) else {
            continue;
        };
        of.insert(&*r.id, &*up.key);
        if let Some(name) = &r.labels.name {
            of.entry(&**name).or_insert(&*up.key);
        }
    }
    of
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let bounds = [1.0, 2.0, 5.0];
        // 10 under 1 ms, 10 in (1, 2], none above.
        let counts = [10, 10, 0, 0];
        assert_eq!(quantile(&bounds, &counts, 0.5), Some(1.0));
        assert_eq!(quantile(&bounds, &counts, 0.75), Some(1.5));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // Past the largest bound: the largest bound, as Prometheus answers.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 4], 0.99), Some(5.0));
    }
}
