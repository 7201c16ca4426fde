//! The prober: one thread (its own monoio runtime, not pinned to a worker's core) that runs the
//! active checks of every target, applies the passive outcomes the workers report, and serves
//! the health status API on the control listener, and the Prometheus exporter.
//!
//! Each target has one probe loop: probe, apply the result to the state machine, sleep
//! `healthy.interval` or `unhealthy.interval` depending on the state, again. A probe is a TCP
//! connect (`type = "tcp"`), or a connect plus `GET http_path` whose status line decides
//! (`type = "http"`, or `"https"` over TLS, the certificate verified when
//! `https_verify_certificate`): a status in `healthy.http_statuses` is a success, one in
//! `unhealthy.http_statuses` (or an unreadable answer) an HTTP failure, any other is ignored;
//! a timeout counts as a timeout, a refused or reset connection as a TCP failure.

use super::state::{Report, Thresholds};
use super::{PassiveQueue, Target};
use crate::control::status::ConfigStatus;
use crate::http::request::{Limits, Parsed, RequestHead};
use crate::net::io::{read_more_timeout, write_all, IoFail};
use crate::net::stream::Stream;
use crate::net::watchdog::{Watch, Watchdog};
use crate::snapshot::Snapshot;
use crate::tls::stream::TlsConn;
use crossbeam_queue::SegQueue;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::ClientConfig;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Messages from the control plane.
pub enum ProberMsg {
    /// The live targets and the snapshot they belong to (after every successful (re)load).
    Update(Vec<Arc<Target>>, Arc<Snapshot>),
    Shutdown,
}

pub struct ProberHandle {
    pub mailbox: Arc<SegQueue<ProberMsg>>,
    pub passive: Arc<PassiveQueue>,
    pub thread: std::thread::JoinHandle<()>,
}

const TICK: Duration = Duration::from_millis(25);

struct State {
    targets: RefCell<HashMap<u32, Arc<Target>>>,
    snapshot: RefCell<Arc<Snapshot>>,
    /// Where the configuration comes from, for `/v1/config`.
    config: Arc<ConfigStatus>,
    /// Every worker's metrics (the exporter), and health transitions counted.
    metrics: Arc<crate::metrics::Metrics>,
}

/// The listeners the prober thread serves (bound before it starts, so a port in use fails
/// the start).
pub struct ControlListeners {
    /// The control API (`gateway.control_listen`).
    pub control: Option<std::net::TcpListener>,
    /// The Prometheus exporter (`plugin_attr.prometheus.export_addr`).
    pub exporter: Option<std::net::TcpListener>,
}

/// What a listener of the prober thread serves.
#[derive(Clone, Copy)]
enum Api {
    Control,
    Metrics,
}

/// Starts the prober thread, serving `listeners`.
pub fn spawn(
    listeners: ControlListeners,
    targets: Vec<Arc<Target>>,
    snapshot: Arc<Snapshot>,
    config: Arc<ConfigStatus>,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<ProberHandle> {
    let mailbox = Arc::new(SegQueue::new());
    let passive = Arc::new(PassiveQueue::new());
    let (mb, pq) = (mailbox.clone(), passive.clone());
    let thread = std::thread::Builder::new()
        .name("shardgate-health".into())
        .spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("health runtime");
            let state = Rc::new(State {
                targets: RefCell::new(HashMap::new()),
                snapshot: RefCell::new(snapshot),
                config,
                metrics,
            });
            rt.block_on(run(listeners, targets, state, mb, pq));
        })?;
    Ok(ProberHandle {
        mailbox,
        passive,
        thread,
    })
}

async fn run(
    listeners: ControlListeners,
    targets: Vec<Arc<Target>>,
    state: Rc<State>,
    mailbox: Arc<SegQueue<ProberMsg>>,
    passive: Arc<PassiveQueue>,
) {
    adopt(&state, targets);
    for (listener, api) in [
        (listeners.control, Api::Control),
        (listeners.exporter, Api::Metrics),
    ] {
        let Some(l) = listener else { continue };
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(serve(l, state.clone(), api));
            }
            Err(e) => crate::error!("control listener: {e}"),
        }
    }
    loop {
        monoio::time::sleep(TICK).await;
        WATCHDOG.with(|w| w.tick());
        while let Some(msg) = mailbox.pop() {
            match msg {
                ProberMsg::Update(targets, snapshot) => {
                    *state.snapshot.borrow_mut() = snapshot;
                    adopt(&state, targets);
                }
                ProberMsg::Shutdown => return,
            }
        }
        while let Some(batch) = passive.pop() {
            let targets = state.targets.borrow();
            for (id, report) in batch {
                if let Some(t) = targets.get(&id) {
                    if apply(t, report, &t.checks.passive.thresholds, "passive") {
                        crate::metrics::bump(&state.metrics.health_transitions, 1);
                    }
                }
            }
        }
    }
}

/// Starts probe loops for targets not seen before; forgets retired ones.
fn adopt(state: &Rc<State>, targets: Vec<Arc<Target>>) {
    let mut known = state.targets.borrow_mut();
    known.retain(|_, t| !t.retired.load(Ordering::Relaxed));
    for t in targets {
        if known.insert(t.id, t.clone()).is_none() {
            monoio::spawn(probe_loop(t, state.metrics.clone()));
        }
    }
}

/// Applies a report; logs a usability change with its reason. Returns whether it changed.
pub fn apply(t: &Target, report: Report, thresholds: &Thresholds, source: &str) -> bool {
    let transition = {
        let mut m = t.machine.lock().unwrap_or_else(|e| e.into_inner());
        let tr = m.report(report, thresholds);
        // Under the lock: a reload copying this target's state sees both or neither.
        if let Some(tr) = &tr {
            t.set_usable(tr.usable);
        }
        tr
    };
    let Some(tr) = transition else {
        return false;
    };
    if tr.usable {
        crate::info!(
            "health: {} ({}) is healthy again after {} ({source} check)",
            t.probe_addr,
            t.hostname,
            tr.reason
        );
    } else {
        crate::warn!(
            "health: {} ({}) is unhealthy: {} ({source} check)",
            t.probe_addr,
            t.hostname,
            tr.reason
        );
    }
    true
}

async fn probe_loop(t: Arc<Target>, metrics: Arc<crate::metrics::Metrics>) {
    let active = t.checks.active.clone();
    loop {
        if t.retired.load(Ordering::Relaxed) {
            return;
        }
        if let Some(report) = probe(&t).await {
            if apply(&t, report, &active.thresholds, "active") {
                crate::metrics::bump(&metrics.health_transitions, 1);
            }
        }
        let interval = if t.usable() {
            active.healthy_interval
        } else {
            active.unhealthy_interval
        };
        monoio::time::sleep(interval).await;
    }
}

/// The trusted CAs and the probe configurations made with them (not verifying, verifying).
type ProbeTls = (Arc<rustls::RootCertStore>, [Arc<ClientConfig>; 2]);

thread_local! {
    /// Bounds the reads and writes of https probes (the TLS layer works with watches).
    static WATCHDOG: Watchdog = Watchdog::default();
    /// Client configurations of https probes (verifying, not verifying), made again when
    /// the trusted CAs change.
    static PROBE_TLS: RefCell<Option<ProbeTls>> = const { RefCell::new(None) };
}

/// The client configuration of an https probe.
fn probe_tls(verify: bool) -> Arc<ClientConfig> {
    let roots = crate::upstream::tls::current_roots();
    PROBE_TLS.with(|cell| {
        let mut cached = cell.borrow_mut();
        let fresh = !matches!(&*cached, Some((r, _)) if Arc::ptr_eq(r, &roots));
        if fresh {
            let configs = [false, true].map(|v| crate::upstream::tls::probe_config(v, &roots));
            *cached = Some((roots, configs));
        }
        cached.as_ref().expect("set above").1[verify as usize].clone()
    })
}

/// Completes an https probe's handshake; the name sent is the probe's Host without port.
async fn probe_handshake(
    tcp: TcpStream,
    t: &Target,
    limit: Duration,
    watch: &Watch,
) -> Result<TlsConn, String> {
    let host = crate::upstream::tls::sni_of(t.host_header.as_bytes());
    let name = crate::tls::client::server_name(host)
        .ok_or_else(|| format!("cannot send {:?} as TLS server name", t.host_header))?;
    TlsConn::connect(tcp, probe_tls(t.checks.active.verify), name, limit, watch)
        .await
        .map_err(|e| e.to_string())
}

/// One probe. `None`: an answer that counts neither way.
async fn probe(t: &Target) -> Option<Report> {
    let a = &t.checks.active;
    let watch = WATCHDOG.with(|w| w.watch());
    let work = async {
        let tcp = match TcpStream::connect_addr(t.probe_addr).await {
            Ok(s) => s,
            // Out of file descriptors (or memory) here says nothing about the node.
            Err(e) if crate::upstream::local_resource_error(&e) => return None,
            Err(_) => return Some(Report::TcpFailure),
        };
        if a.tcp_only {
            return Some(Report::Success);
        }
        let mut stream = match a.https {
            false => Stream::Plain(tcp),
            true => match probe_handshake(tcp, t, a.timeout, &watch).await {
                Ok(tls) => Stream::Tls(Box::new(tls)),
                Err(why) => {
                    // A certificate that does not verify fails the node, as a refused
                    // connection would; the log says why.
                    crate::warn!(
                        "health: https probe of {} ({}): TLS handshake failed: {why}",
                        t.probe_addr,
                        t.hostname
                    );
                    return Some(Report::TcpFailure);
                }
            },
        };
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shardgate-health\r\nConnection: close\r\n",
            a.http_path, t.host_header
        );
        for h in &a.req_headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        if write_all(&mut stream, &mut req, a.timeout, &watch)
            .await
            .is_err()
        {
            return Some(Report::TcpFailure);
        }
        // The status line is enough.
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        loop {
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                return classify(&buf[..end], a);
            }
            if buf.len() >= 1024 {
                return Some(Report::HttpFailure);
            }
            match read_more_timeout(&mut stream, &mut buf, 512, a.timeout, &watch).await {
                Ok(0) if buf.is_empty() => return Some(Report::TcpFailure),
                Ok(0) => return Some(Report::HttpFailure),
                Ok(_) => {}
                Err(IoFail::Timeout) => return Some(Report::Timeout),
                Err(_) => return Some(Report::TcpFailure),
            }
        }
    };
    monoio::time::timeout(a.timeout, work)
        .await
        .unwrap_or(Some(Report::Timeout))
}

/// A status in `healthy.http_statuses` is a success, one in `unhealthy.http_statuses` or an
/// unreadable status line an HTTP failure; any other status counts neither way (as in APISIX).
fn classify(status_line: &[u8], a: &super::ActiveCheck) -> Option<Report> {
    let line = String::from_utf8_lossy(status_line);
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(s) if a.healthy_statuses.contains(&s) => Some(Report::Success),
        Some(s) if !a.unhealthy_statuses.contains(&s) => None,
        _ => Some(Report::HttpFailure),
    }
}

/// Serves one of the prober's listeners: the control API (APISIX's shape:
/// `GET /v1/healthcheck`, `GET /v1/healthcheck/{upstreams|routes|services}/{id}`,
/// `GET /v1/config`, the status dashboard `GET /dashboard` and its `GET /v1/dashboard.json`)
/// or the Prometheus exporter (`GET {export_uri}`).
async fn serve(listener: TcpListener, state: Rc<State>, api: Api) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(status_conn(stream, state.clone(), api));
            }
            Err(e) => {
                // EMFILE and friends: the connection stays queued; back off instead of
                // spinning on the same error.
                crate::warn!("control API: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn status_conn(mut stream: TcpStream, state: Rc<State>, api: Api) {
    let limits = Limits {
        max_request_line: 8192,
        max_header_size: 16 * 1024,
        max_headers: 64,
        underscores_in_headers: false,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head = RequestHead::default();
    let read = async {
        loop {
            match head.parse(&buf, &limits) {
                Ok(Parsed::Complete) => return true,
                Ok(Parsed::Partial) => {}
                Err(_) => return false,
            }
            let len = buf.len();
            if buf.capacity() - len < 1024 {
                buf.reserve(4096);
            }
            let (res, slice) = stream
                .read(monoio::buf::IoBufMut::slice_mut(
                    std::mem::take(&mut buf),
                    len..,
                ))
                .await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return false;
            }
        }
    };
    if !matches!(
        monoio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        return;
    }
    let method = String::from_utf8_lossy(&buf[head.method.clone()]).to_string();
    let path = String::from_utf8_lossy(head.path(&buf)).to_string();
    let json = "application/json";
    let (status, kind, body) = match api {
        _ if method != "GET" => (
            405,
            json,
            serde_json::json!({"error_msg": "only GET is supported"}).to_string(),
        ),
        Api::Metrics => match path == state.metrics.settings.export_uri {
            true => {
                let cx = crate::metrics::exposition::Context {
                    snapshot: &state.snapshot.borrow(),
                    config: &state.config.get(),
                };
                let text = crate::metrics::exposition::render(&state.metrics, &cx);
                (200, "text/plain; version=0.0.4; charset=utf-8", text)
            }
            false => (
                404,
                json,
                serde_json::json!({"error_msg": "not found"}).to_string(),
            ),
        },
        Api::Control if path == "/dashboard" => (
            200,
            "text/html; charset=utf-8",
            crate::metrics::dashboard::PAGE.to_string(),
        ),
        Api::Control if path == "/v1/dashboard.json" => {
            let cx = crate::metrics::exposition::Context {
                snapshot: &state.snapshot.borrow(),
                config: &state.config.get(),
            };
            let v = crate::metrics::dashboard::json(&state.metrics, &cx);
            (200, json, v.to_string())
        }
        Api::Control if path.trim_end_matches('/') == "/v1/config" => {
            (200, json, serde_json::json!(state.config.get()).to_string())
        }
        Api::Control => {
            let (status, body) = status_response(&path, &state.snapshot.borrow());
            (status, json, body.to_string())
        }
    };
    let out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::http::reason_phrase(status),
        body.len()
    );
    let _ = stream.write_all(out.into_bytes()).await;
}

fn upstream_json(u: &crate::upstream::UpstreamSpec) -> Option<serde_json::Value> {
    let checks = u.checks.as_ref()?;
    let (kind, id) = super::resource(&u.key);
    // Nodes that share a probe target (`checks.active.port` maps them to one address) are
    // one entry, listed where the first of them is, as APISIX lists a target once.
    let mut seen: Vec<u32> = Vec::new();
    let nodes: Vec<serde_json::Value> = u
        .nodes
        .iter()
        .filter_map(|n| n.health.as_ref())
        .filter(|t| {
            let new = !seen.contains(&t.id);
            seen.push(t.id);
            new
        })
        .map(|t| {
            let m = t.machine.lock().unwrap_or_else(|e| e.into_inner()).clone();
            serde_json::json!({
                "ip": t.probe_addr.ip().to_string(),
                "port": t.probe_addr.port(),
                "hostname": t.hostname,
                "status": m.status.as_str(),
                "counter": {
                    "success": m.counters.success,
                    "http_failure": m.counters.http_failure,
                    "tcp_failure": m.counters.tcp_failure,
                    "timeout_failure": m.counters.timeout_failure,
                }
            })
        })
        .collect();
    Some(serde_json::json!({
        "name": format!("/{kind}/{id}"),
        "type": if checks.active.tcp_only { "tcp" } else { "http" },
        "nodes": nodes,
    }))
}

fn status_response(path: &str, snap: &Snapshot) -> (u16, serde_json::Value) {
    let path = path.trim_end_matches('/');
    if path == "/v1/healthcheck" {
        let all: Vec<_> = snap
            .upstreams
            .iter()
            .filter_map(|u| upstream_json(u))
            .collect();
        if all.is_empty() {
            // APISIX answers an empty Lua table, which its JSON encoder writes as `{}`.
            return (200, serde_json::json!({}));
        }
        return (200, serde_json::Value::Array(all));
    }
    let Some(rest) = path.strip_prefix("/v1/healthcheck/") else {
        return (404, serde_json::json!({"error_msg": "not found"}));
    };
    let (kind, id) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(kind, "upstreams" | "routes" | "services") {
        return (
            400,
            serde_json::json!({"error_msg": format!("invalid src type {kind}")}),
        );
    }
    if id.is_empty() {
        return (
            404,
            serde_json::json!({"error_msg": format!("missing src id for src type {kind}")}),
        );
    }
    let found = snap
        .upstreams
        .iter()
        .find(|u| super::resource(&u.key) == (kind, id));
    match found {
        None => (
            404,
            serde_json::json!({"error_msg": format!("{kind}[{id}] not found")}),
        ),
        Some(u) => match upstream_json(u) {
            Some(v) => (200, v),
            None => (
                404,
                serde_json::json!({"error_msg": format!("no checker for {kind}[{id}]")}),
            ),
        },
    }
}

/// Binds the control listener (exclusive: no SO_REUSEPORT, so a second instance fails loudly
/// instead of sharing it).
pub fn bind_control(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
