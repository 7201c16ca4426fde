//! One client connection: read a request head, route it, forward it to an upstream node with
//! retries, relay the response back, log it, and go round again while keep-alive allows.
//!
//! Bodies are streamed in both directions through the two connections' buffers (bounded:
//! at most one buffer's worth of a body is in memory at a time). The request is sent
//! completely before the response is read, as nginx does with its default buffering.
//!
//! Framing is never guessed: a request whose framing is in doubt gets a 4xx and the
//! connection closes; an upstream response whose framing is in doubt is a 502 (before any
//! byte reached the client) or a closed client connection (after), so no byte of it can be
//! read as part of the next response.

use super::io::{read_more_timeout, write_all, write_all_counted, write_range, IoFail};
use super::sockopt;
use super::splice;
use super::state::{Local, Worker};
use super::vars::RequestVars;
use super::watchdog::{later, Watch};
use crate::health::state::Report;
use crate::http::chunked::ChunkedScanner;
use crate::http::error_page::{write_error, write_error_with};
use crate::http::path::{needs_normalizing, normalize, BadPath};
use crate::http::request::{BodyFraming, Parsed, RequestError, RequestHead};
use crate::http::response::{self, ResponseFraming, ResponseHead};
use crate::http::{eq_ignore_case, is_hop_by_hop, push_decimal};
use crate::log::access::Entry;
use crate::plugin::{Flow, Phase, RequestCtx, ResponseCtx};
use crate::route::vars::VarSource;
use crate::route::{MatchInput, Route};
use crate::upstream::balancer::{Balancer, PickContext};
use crate::upstream::pool::{still_idle, Pool, UpstreamConn};
use crate::upstream::{HashOn, Node, PassHost, TemplatePart, Timeouts, UpstreamSpec};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Initial size of a client connection's read buffer.
const CLIENT_BUF: usize = 16 * 1024;
/// Read chunk while streaming a request body.
const BODY_CHUNK: usize = 64 * 1024;
/// Request bodies up to this size are read completely before the upstream is contacted.
const BUFFERED_BODY_MAX: usize = 64 * 1024;
/// A response head and body are sent in one write when together they fit in this.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Lingering close: the longest quiet gap, and the longest drain in all (nginx's defaults).
const LINGER_IDLE: Duration = Duration::from_secs(5);
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// How long to look for the answer of an upstream that stopped taking a streamed body. An
/// answer sent before that happened is already in our socket: this only bounds the read.
const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(100);

/// Accepts a connection and serves requests on it until it closes.
/// `local_port` is the listener's port (for `X-Forwarded-Port`), known without a syscall.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, local_port: Rc<str>) {
    let s = worker.take_scratch();
    let watch = worker.watchdog.watch();
    let mut peer_ip = s.peer_ip;
    peer_ip.clear();
    let _ = write!(peer_ip, "{}", peer.ip());
    let settings = worker.current().shared.settings;
    let mut conn = Conn {
        settings,
        worker,
        stream,
        buf: s.buf,
        out: s.out,
        head: s.head,
        resp: s.resp,
        host_lc: s.host_lc,
        peer_ip,
        peer,
        local_port,
        tried: s.tried,
        key_buf: s.key_buf,
        up_statuses: s.up_statuses,
        watch,
        linger: false,
        early_answer: false,
        path_normalized: false,
        path_buf: Vec::new(),
        filters: None,
        nonblocking: false,
        corked: false,
    };
    conn.run().await;
    let Conn {
        worker,
        mut buf,
        mut out,
        head,
        resp,
        host_lc,
        peer_ip,
        tried,
        key_buf,
        up_statuses,
        ..
    } = conn;
    buf.clear();
    out.clear();
    worker.give_scratch(Scratch {
        buf,
        out,
        head,
        resp,
        host_lc,
        peer_ip,
        tried,
        key_buf,
        up_statuses,
    });
}

/// A connection's reusable memory. Recycled per core when a connection ends, so accepting a
/// connection allocates nothing once the core has warmed up.
pub struct Scratch {
    buf: Vec<u8>,
    out: Vec<u8>,
    head: RequestHead,
    resp: ResponseHead,
    host_lc: Vec<u8>,
    peer_ip: String,
    tried: Vec<usize>,
    key_buf: Vec<u8>,
    up_statuses: Vec<u16>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            buf: Vec::with_capacity(CLIENT_BUF),
            out: Vec::with_capacity(4096),
            head: RequestHead::default(),
            resp: ResponseHead::default(),
            host_lc: Vec::with_capacity(64),
            peer_ip: String::with_capacity(46),
            tried: Vec::with_capacity(4),
            key_buf: Vec::new(),
            up_statuses: Vec::with_capacity(4),
        }
    }

    /// Worth keeping: buffers that grew for a large head or body are let go.
    pub fn reusable(&self) -> bool {
        self.buf.capacity() <= 4 * CLIENT_BUF && self.out.capacity() <= 4 * CLIENT_BUF
    }
}

struct Conn {
    worker: Rc<Worker>,
    stream: TcpStream,
    /// Received bytes; the current request's head starts at 0.
    buf: Vec<u8>,
    /// Scratch for heads the gateway writes (to the upstream and to the client).
    out: Vec<u8>,
    head: RequestHead,
    resp: ResponseHead,
    host_lc: Vec<u8>,
    peer_ip: String,
    /// The client's address (`remote_addrs` matching).
    peer: SocketAddr,
    local_port: Rc<str>,
    tried: Vec<usize>,
    /// The request's consistent-hashing key (chash upstreams).
    key_buf: Vec<u8>,
    /// The status of each upstream attempt of this request (nginx's `$upstream_status`;
    /// 502/504 for attempts that got no answer): the `X-APISIX-Upstream-Status` header.
    up_statuses: Vec<u16>,
    /// Bounds every read and write of this connection (and of its upstream attempts).
    watch: Rc<Watch>,
    /// The last answer was sent while the client may still be sending a body.
    linger: bool,
    /// The upstream answered before it had taken the whole request body (and stopped taking
    /// it): the answer is relayed, then the connection closes (lingering).
    early_answer: bool,
    /// The request path needed normalizing; the result is in `path_buf`.
    path_normalized: bool,
    path_buf: Vec<u8>,
    /// The snapshot and route index whose plugins filter this response (when it has any).
    filters: Option<(Rc<Local>, usize)>,
    /// The client socket has been made non-blocking (done on the first splice).
    nonblocking: bool,
    /// Client-side settings, taken from the current snapshot when a request starts.
    settings: crate::snapshot::Settings,
    /// The last answer was written corked: its tail and the FIN leave together at the
    /// half-close that ends the connection.
    corked: bool,
}

/// What happened to one request, for the access log and the keep-alive decision.
#[derive(Default)]
struct Outcome {
    status: u16,
    bytes: u64,
    keep_alive: bool,
    upstream: Option<SocketAddr>,
    upstream_status: Option<u16>,
    upstream_latency: Option<Duration>,
    retries: u32,
    /// End of this request's bytes (head and body) in the client buffer.
    consumed: usize,
}

/// Why an attempt at an upstream node failed before a response head arrived.
#[derive(Debug)]
enum Failure {
    ConnectTimeout,
    Connect(std::io::Error),
    SendTimeout,
    Send(std::io::Error),
    /// Sending failed after part of the request had gone out: the upstream may have started
    /// on it, so only an idempotent request may be sent again.
    SendPartial(std::io::Error),
    ReadTimeout,
    Read(std::io::Error),
    /// The upstream closed the connection before a complete response head.
    Closed,
    Invalid(&'static str),
    /// The client closed its connection while the upstream was working (nginx's 499): the
    /// attempt is abandoned, not retried, and says nothing about the node.
    ClientGone,
}

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => 504,
            Failure::ClientGone => 499,
            _ => 502,
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::ConnectTimeout => "upstream connect timed out".into(),
            Failure::Connect(e) => format!("upstream connect failed: {e}"),
            Failure::SendTimeout => "upstream send timed out".into(),
            Failure::Send(e) | Failure::SendPartial(e) => format!("upstream send failed: {e}"),
            Failure::ReadTimeout => "upstream read timed out".into(),
            Failure::Read(e) => format!("upstream read failed: {e}"),
            Failure::Closed => "upstream closed the connection prematurely".into(),
            Failure::Invalid(why) => format!("invalid upstream response: {why}"),
            Failure::ClientGone => "client closed the connection".into(),
        }
    }

    /// How this failure counts for passive health checks (`None`: it says nothing about the
    /// node: the client left, or this host ran out of descriptors or memory).
    fn health_report(&self) -> Option<Report> {
        Some(match self {
            Failure::ClientGone => return None,
            Failure::Connect(e) if crate::upstream::local_resource_error(e) => return None,
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => {
                Report::Timeout
            }
            Failure::Invalid(_) => Report::HttpFailure,
            _ => Report::TcpFailure,
        })
    }

    /// Failures where nothing reached the upstream, so any request may be retried.
    fn nothing_sent(&self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::Connect(_))
    }

    /// A reused pooled connection that turned out dead: worth one fresh connection.
    fn stale_connection(&self) -> bool {
        matches!(
            self,
            Failure::Send(_) | Failure::SendPartial(_) | Failure::Read(_) | Failure::Closed
        )
    }

    /// Failures where no other node can do better: the client left, or this host is out of
    /// a local resource (another connect would fail the same way).
    fn final_for_request(&self) -> bool {
        match self {
            Failure::ClientGone => true,
            Failure::Connect(e) => crate::upstream::local_resource_error(e),
            _ => false,
        }
    }
}

/// The request is over; the connection must close (client gone, or framing lost).
struct Abort;

/// How a request's body sits in the client buffer when forwarding starts.
struct BodyState {
    /// The whole body is already in `buf[head.len..end]`: it can be replayed on a retry.
    complete: bool,
    /// End of the body bytes in `buf` (when complete) or of what has arrived so far.
    end: usize,
    /// For a Content-Length body not yet complete, bytes still to come after `end`.
    remaining: u64,
}

impl Conn {
    /// Client-side settings of the snapshot this request started on (small and `Copy`).
    fn settings(&self) -> crate::snapshot::Settings {
        self.settings
    }

    async fn run(&mut self) {
        let mut first = true;
        loop {
            match self.read_head(first).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.refuse(e).await;
                    return;
                }
            }
            first = false;
            self.worker.request_started();
            let keep = self.handle().await;
            self.worker.request_finished();
            if !keep || self.worker.stopping() {
                if self.corked {
                    // Half-close now rather than leave the FIN to close(2): a close with
                    // unread bytes in the socket resets the connection and would throw the
                    // corked tail away.
                    sockopt::shutdown_write(&self.stream);
                }
                if self.linger {
                    self.linger_close().await;
                }
                return;
            }
        }
    }

    /// Closes after an answer sent while the client may still be sending its body: closing at
    /// once would make the kernel reset the connection, and the client could lose the answer.
    /// Half-close, then read and discard until the client closes, goes quiet for
    /// `LINGER_IDLE`, or `LINGER_TOTAL` has passed (nginx's lingering close, with its
    /// `lingering_timeout` and `lingering_time` defaults). Not capped by size: a client that
    /// writes its whole body before it reads must get to the end of it.
    async fn linger_close(&mut self) {
        use monoio::io::AsyncWriteRent;
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER_TOTAL;
        loop {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let wait = left.min(LINGER_IDLE);
            match read_more_timeout(
                &mut self.stream,
                &mut self.buf,
                BODY_CHUNK,
                wait,
                &self.watch,
            )
            .await
            {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Waits for a complete request head. `Ok(false)`: the client closed or went idle.
    async fn read_head(&mut self, first: bool) -> Result<bool, RequestError> {
        // A request keeps the settings it started with, whatever reloads happen meanwhile.
        self.settings = self.worker.current().shared.settings;
        let (header_timeout, idle_timeout, limits) = {
            let s = self.settings();
            (s.client_header_timeout, s.keepalive_timeout, s.limits)
        };
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                if let Parsed::Complete = self.head.parse(&self.buf, &limits)? {
                    return Ok(true);
                }
                deadline.get_or_insert_with(|| later(Instant::now(), header_timeout));
            }
            let limit = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if first => header_timeout,
                None => idle_timeout,
            };
            let had_bytes = !self.buf.is_empty();
            match read_more_timeout(&mut self.stream, &mut self.buf, 4096, limit, &self.watch).await
            {
                Ok(0) | Err(IoFail::Io(_)) => return Ok(false),
                Ok(_) => {}
                Err(IoFail::Timeout) if !had_bytes => return Ok(false),
                Err(IoFail::Timeout) => {
                    return Err(RequestError {
                        status: 408,
                        reason: "timed out reading the request head",
                    })
                }
            }
        }
    }

    /// Answers a request refused at the head stage, then the connection closes.
    async fn refuse(&mut self, e: RequestError) {
        let start = Instant::now();
        self.out.clear();
        write_error(&mut self.out, e.status, e.reason, true, false);
        let bytes = self.out.len() as u64;
        let send = self.settings().send_timeout;
        let sent = write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .is_ok();
        // Log before lingering: the linger reuses the buffer that holds the request line.
        if self.worker.log.enabled() {
            let line_end = self.buf.iter().position(|&b| b == b'\r' || b == b'\n');
            let line = &self.buf[..line_end.unwrap_or(self.buf.len()).min(256)];
            self.worker.log.log(&Entry {
                remote: &self.peer_ip,
                method: b"-",
                uri: line,
                minor_version: 1,
                host: b"",
                status: e.status,
                bytes,
                latency: start.elapsed(),
                route: None,
                upstream: None,
                upstream_status: None,
                upstream_latency: None,
                retries: 0,
            });
        }
        if sent {
            self.linger_close().await;
        }
    }

    /// Serves the request whose head is parsed. Returns whether the connection stays open.
    async fn handle(&mut self) -> bool {
        // Clock reads cost about 1% of a small request each: only when the log wants the time.
        let start = self.worker.log.enabled().then(Instant::now);
        self.linger = false;
        self.early_answer = false;
        self.up_statuses.clear();
        let local = self.worker.current();
        self.host_lc.clear();
        {
            let host = &self.buf[self.head.host.clone()];
            let without_port = match host.last() {
                _ if host.first() == Some(&b'[') => host,
                _ => match host.iter().rposition(|&b| b == b':') {
                    Some(i) => &host[..i],
                    None => host,
                },
            };
            self.host_lc
                .extend(without_port.iter().map(|b| b.to_ascii_lowercase()));
        }
        // Route on the normalized path (as nginx's $uri), refusing paths that cannot be.
        self.path_normalized = needs_normalizing(self.head.path(&self.buf));
        if self.path_normalized {
            let raw = self.head.path(&self.buf);
            if let Err(BadPath(why)) = normalize(raw, &mut self.path_buf) {
                let outcome = self.local_error(400, why, None).await;
                return outcome.keep_alive;
            }
        }
        let route = {
            let vars = self.vars();
            local.shared.router.find(&MatchInput {
                path: self.route_path(),
                host: &self.host_lc,
                method: &self.buf[self.head.method.clone()],
                remote: self.peer.ip(),
                vars: &vars,
            })
        };

        let outcome = match route {
            None => {
                let end = self.buffered_body_end();
                self.local_error(404, "404 Route Not Found", end).await
            }
            Some(route) => {
                let with_plugins = !local.shared.global.is_empty() || !route.plugins.is_empty();
                let decision = if with_plugins {
                    self.filters = Some((local.clone(), route.index));
                    self.run_plugins(&local, route)
                } else {
                    Ok(route.upstream)
                };
                let outcome = match decision {
                    Err((status, message)) => {
                        let end = self.buffered_body_end();
                        self.local_error(status, &message, end).await
                    }
                    Ok(None) => {
                        let end = self.buffered_body_end();
                        self.local_error(
                            503,
                            "missing upstream configuration in Route or Service",
                            end,
                        )
                        .await
                    }
                    Ok(Some(ui)) => self.proxy(&local, route, ui).await,
                };
                if with_plugins {
                    let resp = ResponseCtx {
                        status: outcome.status,
                    };
                    local.plugin_states.run_response(
                        [&local.shared.global, &route.plugins],
                        &resp,
                        true,
                    );
                    self.filters = None;
                }
                outcome
            }
        };

        if self.worker.log.enabled() {
            let target_end = if self.head.target.start == usize::MAX {
                0
            } else {
                self.head.target.end
            };
            let uri = if target_end == 0 {
                &b"/"[..]
            } else {
                &self.buf[self.head.target.start.min(target_end)..target_end]
            };
            self.worker.log.log(&Entry {
                remote: &self.peer_ip,
                method: &self.buf[self.head.method.clone()],
                uri,
                minor_version: self.head.minor_version,
                host: &self.host_lc,
                status: outcome.status,
                bytes: outcome.bytes,
                latency: start.map_or(Duration::ZERO, |t| t.elapsed()),
                route: route.map(|r| &*r.id),
                upstream: outcome.upstream,
                upstream_status: outcome.upstream_status,
                upstream_latency: outcome.upstream_latency,
                retries: outcome.retries,
            });
        }
        // The head (and the body, when forwarded) are consumed; keep what follows.
        if outcome.keep_alive {
            let consumed = outcome.consumed.max(self.head.len).min(self.buf.len());
            self.buf.drain(..consumed);
        }
        outcome.keep_alive
    }

    /// Runs the rewrite, access and before_proxy phases of the global and route plugins.
    /// Returns the upstream to use, or the answer a plugin gave.
    fn run_plugins(&self, local: &Local, route: &Route) -> Result<Option<usize>, (u16, String)> {
        let vars = self.vars();
        let mut ctx = RequestCtx {
            vars: &vars,
            upstream: route.upstream,
        };
        let chains = [&local.shared.global, &route.plugins];
        for phase in [Phase::Rewrite, Phase::Access, Phase::BeforeProxy] {
            if let Flow::Respond { status, message } =
                local.plugin_states.run(chains, &mut ctx, phase)
            {
                return Err((status, message));
            }
        }
        Ok(ctx.upstream)
    }

    /// Shows response body bytes to the plugins' body_filter phase (when the route has any).
    fn filter_body(&self, data: &[u8]) {
        if let Some((local, index)) = &self.filters {
            let route = local.shared.router.route(*index);
            local
                .plugin_states
                .run_body([&local.shared.global, &route.plugins], data);
        }
    }

    /// The current request's variables (`uri`, `http_*`, `arg_*`, ...).
    fn vars(&self) -> RequestVars<'_> {
        RequestVars {
            buf: &self.buf,
            head: &self.head,
            path: self.route_path(),
            host: &self.host_lc,
            remote_ip: &self.peer_ip,
            server_port: &self.local_port,
        }
    }

    /// The path routing and the `uri` variable see: normalized when the raw one needed it.
    fn route_path(&self) -> &[u8] {
        if self.path_normalized {
            &self.path_buf
        } else {
            self.head.path(&self.buf)
        }
    }

    /// End of the request body in the buffer when all of it has arrived (so the connection
    /// can go on after an error answer); `None` when some of it is still to come.
    fn buffered_body_end(&self) -> Option<usize> {
        self.body_state().ok().filter(|b| b.complete).map(|b| b.end)
    }

    /// Answers with a gateway-made error. `body_end` is where this request's bytes end in the
    /// buffer when they have all been read; without it the connection closes (after
    /// draining what the client is still sending, so it sees the answer).
    async fn local_error(&mut self, status: u16, msg: &str, body_end: Option<usize>) -> Outcome {
        let keep = body_end.is_some() && !self.head.close && !self.worker.stopping();
        self.linger = body_end.is_none();
        self.out.clear();
        let mut extra = Vec::new();
        put_upstream_status(&mut extra, &self.up_statuses);
        write_error_with(&mut self.out, status, msg, !keep, self.head.is_head, &extra);
        let bytes = self.out.len() as u64;
        let send = self.settings().send_timeout;
        let ok = write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .is_ok();
        Outcome {
            status,
            bytes,
            keep_alive: keep && ok,
            consumed: body_end.unwrap_or(0),
            ..Default::default()
        }
    }

    /// Writes the request head for `node` into `self.out`.
    fn build_upstream_head(&mut self, up: &UpstreamSpec, node: &Node) {
        let buf = &self.buf;
        let head = &self.head;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(&buf[head.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(head.target(buf));
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        let client_host = &buf[head.host.clone()];
        match &up.pass_host {
            PassHost::Pass if !client_host.is_empty() => out.extend_from_slice(client_host),
            PassHost::Pass | PassHost::Node => out.extend_from_slice(node.host_port.as_bytes()),
            PassHost::Rewrite(h) => out.extend_from_slice(h.as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let mut xff: Option<usize> = None;
        let mut forwarded = false;
        for (i, h) in head.headers.iter().enumerate() {
            let name = &buf[h.name.clone()];
            if is_hop_by_hop(name)
                || eq_ignore_case(name, b"host")
                || eq_ignore_case(name, b"content-length")
                || eq_ignore_case(name, b"expect")
                || eq_ignore_case(name, b"x-real-ip")
                || eq_ignore_case(name, b"x-forwarded-proto")
                || eq_ignore_case(name, b"x-forwarded-host")
                || eq_ignore_case(name, b"x-forwarded-port")
                || head.listed_in_connection(buf, name)
            {
                continue;
            }
            if eq_ignore_case(name, b"x-forwarded-for") {
                xff.get_or_insert(i);
                continue;
            }
            if eq_ignore_case(name, b"forwarded") {
                forwarded = true;
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        match head.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        if xff.is_some() {
            for h in &head.headers {
                if eq_ignore_case(&buf[h.name.clone()], b"x-forwarded-for") {
                    out.extend_from_slice(crate::http::trim(&buf[h.value.clone()]));
                    out.extend_from_slice(b", ");
                }
            }
        }
        out.extend_from_slice(self.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\nX-Real-IP: ");
        out.extend_from_slice(self.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
        out.extend_from_slice(client_host);
        out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
        out.extend_from_slice(self.local_port.as_bytes());
        out.extend_from_slice(b"\r\n");
        if forwarded {
            // A client's `Forwarded` (RFC 7239) is rebuilt as X-Forwarded-For is: its
            // elements, then ours, so the last element is always the one this hop vouches for.
            out.extend_from_slice(b"Forwarded: ");
            for h in &head.headers {
                if eq_ignore_case(&buf[h.name.clone()], b"forwarded") {
                    out.extend_from_slice(crate::http::trim(&buf[h.value.clone()]));
                    out.extend_from_slice(b", ");
                }
            }
            if self.peer_ip.contains(':') {
                let _ = write!(out, "for=\"[{}]\"", self.peer_ip);
            } else {
                let _ = write!(out, "for={}", self.peer_ip);
            }
            out.extend_from_slice(b";proto=http\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// How much of the body is already here.
    fn body_state(&self) -> Result<BodyState, RequestError> {
        let start = self.head.len;
        let avail = self.buf.len() - start;
        Ok(match self.head.body {
            BodyFraming::None => BodyState {
                complete: true,
                end: start,
                remaining: 0,
            },
            BodyFraming::Length(n) if n <= avail as u64 => BodyState {
                complete: true,
                end: start + n as usize,
                remaining: 0,
            },
            BodyFraming::Length(n) => BodyState {
                complete: false,
                end: self.buf.len(),
                remaining: n - avail as u64,
            },
            BodyFraming::Chunked => {
                let mut s = ChunkedScanner::new();
                let used = s
                    .advance(&self.buf[start..], |_| {})
                    .map_err(|_| RequestError {
                        status: 400,
                        reason: "invalid chunked request body",
                    })?;
                let done = s.is_done();
                BodyState {
                    complete: done,
                    end: start + used,
                    remaining: 0,
                }
            }
        })
    }

    /// Forwards the request to the route's upstream (with retries) and relays the response.
    async fn proxy(&mut self, local: &Rc<Local>, route: &Route, ui: usize) -> Outcome {
        let up: &UpstreamSpec = &local.shared.upstreams[ui];
        if up.drained {
            let end = self.buffered_body_end();
            return self.local_error(503, "no valid upstream node", end).await;
        }
        let timeouts: Timeouts = route.timeout.unwrap_or(up.timeouts);
        let mut body = match self.body_state() {
            Ok(b) => b,
            Err(e) => {
                return self.local_error(e.status, e.reason, None).await;
            }
        };
        // The listener turns quick ACKs off (the answer carries the ACK). A client that
        // writes its head and body separately with Nagle on would wait for that ACK before
        // sending the body, so acknowledge at once while a body is on its way.
        if !body.complete {
            sockopt::set_quickack(&self.stream);
        }
        // A small body still on its way is read whole before any upstream is involved (as
        // nginx buffers request bodies): a slow client then holds no backend connection, and
        // the request can be retried and replayed. Chunked bodies too, up to the same size.
        if !body.complete {
            let read = match self.head.body {
                BodyFraming::Length(n) if n <= BUFFERED_BODY_MAX as u64 => {
                    Some(self.read_small_body(n as usize).await)
                }
                BodyFraming::Chunked => Some(self.read_small_chunked().await),
                _ => None,
            };
            match read {
                None => {}
                Some(Ok(())) => match self.body_state() {
                    Ok(b) => body = b,
                    Err(e) => return self.local_error(e.status, e.reason, None).await,
                },
                Some(Err((0, _))) => {
                    return Outcome {
                        status: 499,
                        keep_alive: false,
                        ..Outcome::default()
                    }
                }
                Some(Err((status, reason))) => return self.local_error(status, reason, None).await,
            }
        }
        let retry_deadline = up.retry_timeout.and_then(|t| Instant::now().checked_add(t));
        self.tried.clear();
        if let Some(hash_on) = &up.hash_on {
            let mut key = std::mem::take(&mut self.key_buf);
            hash_key(&mut key, hash_on, &self.vars());
            self.key_buf = key;
        }
        let balancer = &local.balancers[ui];
        // Health: skip unhealthy nodes, unless every node is unhealthy (then, like APISIX,
        // use them all, or refuse when `healthcheck_fail_open = false`). Weight-0 nodes serve
        // only when every weighted node is unhealthy (see `balancer`).
        let mut skip_unhealthy = false;
        let mut standby = false;
        if up.checks.is_some() {
            if up.nodes.iter().any(|n| n.usable()) {
                skip_unhealthy = true;
                standby = !up.nodes.iter().any(|n| n.weight > 0 && n.usable());
            } else if self.settings().fail_open {
                self.worker.warn_all_unhealthy(&up.key);
            } else {
                let end = self.buffered_body_end();
                return self.local_error(503, "no healthy upstream node", end).await;
            }
        }
        // A lone node is tried again on a retry (APISIX sends `retries + 1` attempts to it);
        // with several nodes, each retry goes to a node not tried yet.
        let lone = up.nodes.len() == 1;
        let mut retries_done = 0u32;
        let mut fresh_retry: Option<usize> = None;
        let mut streamed = false;
        let mut outcome = Outcome::default();
        let mut last_failure: Option<Failure> = None;
        // Attempts are timed only for someone who reads the time (the access log, a
        // latency-aware balancer).
        let timed = self.worker.log.enabled() || balancer.borrow().measures_latency();

        loop {
            // Pick the node: the same one again for the invisible stale-connection retry.
            let node_idx = match fresh_retry {
                Some(i) => i,
                None => {
                    let tried: &[usize] = if lone { &[] } else { &self.tried };
                    let mut ctx = PickContext::new(tried);
                    if up.hash_on.is_some() {
                        ctx = ctx.with_key(&self.key_buf);
                    }
                    if skip_unhealthy {
                        ctx = ctx.skipping_unhealthy(&up.nodes);
                    }
                    if standby {
                        ctx = ctx.standby();
                    }
                    let picked = balancer.borrow_mut().pick(&up.nodes, &ctx);
                    match picked {
                        Some(i) => i,
                        None => {
                            // Every node tried: answer with what went wrong last.
                            if let Some(f) = last_failure.take() {
                                return self.fail(f, outcome, retries_done, &body, up).await;
                            }
                            let mut o = self
                                .local_error(
                                    502,
                                    "all upstream nodes tried or none available",
                                    body.complete.then_some(body.end),
                                )
                                .await;
                            o.retries = retries_done;
                            o.upstream = outcome.upstream;
                            return o;
                        }
                    }
                }
            };
            let node = &up.nodes[node_idx];
            if fresh_retry.is_none() {
                self.tried.push(node_idx);
            }
            outcome.upstream = Some(node.addr);
            let attempt_start = timed.then(Instant::now);
            balancer.borrow_mut().started(node_idx);

            let pooled = if fresh_retry.take().is_some() {
                None
            } else {
                self.worker.pool.take(node.addr, self.worker.watchdog.now())
            };
            let result = match pooled {
                Some(c) => Ok(c),
                None => connect(&self.worker.pool, node.addr, timeouts.connect).await,
            };
            let mut upc = match result {
                Ok(c) => c,
                Err(f) => {
                    self.attempt_failed(balancer, node_idx, node, &f);
                    match self.after_failure(
                        &f,
                        up,
                        retries_done,
                        retry_deadline,
                        &body,
                        streamed,
                        false,
                    ) {
                        Retry::Fresh | Retry::Other => {
                            retries_done += 1;
                            last_failure = Some(f);
                            continue;
                        }
                        Retry::No => return self.fail(f, outcome, retries_done, &body, up).await,
                    }
                }
            };
            let reused = upc.reused;

            let sent = self
                .send_request(&mut upc, up, node, &mut body, &timeouts, &mut streamed)
                .await;
            let sent = match sent {
                Ok(()) => self.read_response_head(&mut upc, timeouts.read).await,
                // A server may answer before it has the whole body (RFC 9112 §9.3: a 413, a
                // 401) and then close, or stop reading; writing on then fails or times out.
                // Its answer, already in our socket (the kernel keeps received bytes readable
                // after a reset), is what the client should get rather than a 502 or 504.
                // Only for a streamed body: a body sent whole in one write that fails is
                // nearly always a pooled connection the upstream closed while idle, retried
                // as such. An upstream that stops reading without closing is noticed only at
                // the send timeout: the upstream is not read while the body streams.
                Err(SendError::Upstream(
                    f @ (Failure::Send(_) | Failure::SendPartial(_) | Failure::SendTimeout),
                )) if streamed => {
                    match self.read_response_head(&mut upc, EARLY_ANSWER_WAIT).await {
                        Ok(()) => {
                            self.early_answer = true;
                            Ok(())
                        }
                        Err(_) => Err(f),
                    }
                }
                Err(SendError::Upstream(f)) => Err(f),
                Err(SendError::Client(status, reason)) => {
                    balancer.borrow_mut().finished(node_idx, None);
                    self.worker.pool.discard(upc);
                    if status == 0 {
                        return Outcome {
                            status: 499,
                            keep_alive: false,
                            retries: retries_done,
                            ..outcome
                        };
                    }
                    let mut o = self.local_error(status, reason, None).await;
                    o.upstream = outcome.upstream;
                    return o;
                }
            };
            match sent {
                Ok(()) => {
                    if let Some(report) = up
                        .checks
                        .as_ref()
                        .and_then(|c| c.passive.classify(self.resp.status))
                    {
                        self.worker.report_health(node, report);
                    }
                    self.up_statuses.push(self.resp.status);
                    if self.filters.is_some() {
                        let resp = ResponseCtx {
                            status: self.resp.status,
                        };
                        local.plugin_states.run_response(
                            [&local.shared.global, &route.plugins],
                            &resp,
                            false,
                        );
                    }
                    let rtt = attempt_start.map(|t| t.elapsed());
                    outcome.upstream_latency = rtt;
                    outcome.retries = retries_done;
                    outcome.consumed = body.end;
                    let outcome = self
                        .relay_response(upc, up, node.addr, &timeouts, outcome)
                        .await;
                    // An early answer's time includes the upload (or the send timeout): no
                    // latency sample for the balancer.
                    let sample = rtt.filter(|_| !self.early_answer);
                    balancer.borrow_mut().finished(node_idx, sample);
                    return outcome;
                }
                Err(f) => {
                    let fresh_connection = upc.buf.is_empty();
                    self.worker.pool.discard(upc);
                    let decision = self.after_failure(
                        &f,
                        up,
                        retries_done,
                        retry_deadline,
                        &body,
                        streamed,
                        // Only while nothing of a response arrived.
                        reused && fresh_connection,
                    );
                    // A pooled connection that failed before any response byte was most likely
                    // closed by the backend while idle: not evidence against the node.
                    if reused && fresh_connection && f.stale_connection() {
                        balancer.borrow_mut().finished(node_idx, None);
                    } else {
                        self.attempt_failed(balancer, node_idx, node, &f);
                    }
                    match decision {
                        Retry::Fresh => {
                            fresh_retry = Some(node_idx);
                            continue;
                        }
                        Retry::Other => {
                            retries_done += 1;
                            last_failure = Some(f);
                            continue;
                        }
                        Retry::No => return self.fail(f, outcome, retries_done, &body, up).await,
                    }
                }
            }
        }
    }

    /// Books a failed attempt: the balancer hears of it, passive health checks count it
    /// (unless it says nothing about the node), and it joins `$upstream_status`.
    fn attempt_failed(
        &mut self,
        balancer: &RefCell<Box<dyn Balancer>>,
        node_idx: usize,
        node: &Node,
        f: &Failure,
    ) {
        match f.health_report() {
            Some(report) => {
                balancer.borrow_mut().failed(node_idx);
                self.worker.report_health(node, report);
            }
            None => balancer.borrow_mut().finished(node_idx, None),
        }
        if !matches!(f, Failure::ClientGone) {
            self.up_statuses.push(f.status());
        }
    }

    /// Reads the rest of a Content-Length body of `len` bytes into the client buffer, answering
    /// `Expect: 100-continue` first. Errors: (0, _) = the client went away; else the status.
    async fn read_small_body(&mut self, len: usize) -> Result<(), (u16, &'static str)> {
        let (body_timeout, send_timeout) = {
            let s = self.settings();
            (s.client_body_timeout, s.send_timeout)
        };
        self.send_continue(send_timeout).await?;
        let end = self.head.len + len;
        while self.buf.len() < end {
            self.read_body_bytes(end - self.buf.len(), body_timeout)
                .await?;
        }
        Ok(())
    }

    /// One read of request body bytes into the client buffer (at least `min_spare` free).
    /// Errors: (0, _) = the client went away; 408 when it was silent for `body_timeout`.
    async fn read_body_bytes(
        &mut self,
        min_spare: usize,
        body_timeout: Duration,
    ) -> Result<(), (u16, &'static str)> {
        match read_more_timeout(
            &mut self.stream,
            &mut self.buf,
            min_spare,
            body_timeout,
            &self.watch,
        )
        .await
        {
            Ok(0) | Err(IoFail::Io(_)) => Err((0, "")),
            Err(IoFail::Timeout) => Err((408, "timed out reading the request body")),
            Ok(_) => Ok(()),
        }
    }

    /// Answers `Expect: 100-continue` (once) before the body is read.
    async fn send_continue(&mut self, send_timeout: Duration) -> Result<(), (u16, &'static str)> {
        if self.head.expect_continue {
            self.head.expect_continue = false;
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            write_all(&mut self.stream, &mut self.out, send_timeout, &self.watch)
                .await
                .map_err(|_| (0, ""))?;
        }
        Ok(())
    }

    /// Reads a chunked body into the client buffer until it is complete or more than
    /// `BUFFERED_BODY_MAX` bytes of it are here (the rest is then streamed). Errors as
    /// [`Conn::read_small_body`]; a malformed body is the caller's to find.
    async fn read_small_chunked(&mut self) -> Result<(), (u16, &'static str)> {
        let (body_timeout, send_timeout) = {
            let s = self.settings();
            (s.client_body_timeout, s.send_timeout)
        };
        self.send_continue(send_timeout).await?;
        loop {
            match self.body_state() {
                Ok(b) if !b.complete && self.buf.len() - self.head.len <= BUFFERED_BODY_MAX => {}
                _ => return Ok(()),
            }
            self.read_body_bytes(16 * 1024, body_timeout).await?;
        }
    }

    /// Decides whether and how to retry after `f`.
    #[allow(clippy::too_many_arguments)]
    fn after_failure(
        &self,
        f: &Failure,
        up: &UpstreamSpec,
        retries_done: u32,
        deadline: Option<Instant>,
        body: &BodyState,
        streamed: bool,
        reused: bool,
    ) -> Retry {
        if f.final_for_request() {
            return Retry::No;
        }
        let replayable = body.complete && !streamed;
        // A reused connection that failed before any response byte was most likely closed by
        // the backend while idle. Replay on a fresh one, but a non-idempotent request only if
        // not one byte of it could be written (it may otherwise have been processed).
        if reused
            && f.stale_connection()
            && replayable
            && (self.head.idempotent || matches!(f, Failure::Send(_)))
        {
            return Retry::Fresh;
        }
        if retries_done >= up.retries || deadline.is_some_and(|d| Instant::now() >= d) {
            return Retry::No;
        }
        if f.nothing_sent() || (replayable && self.head.idempotent) {
            Retry::Other
        } else {
            Retry::No
        }
    }

    async fn fail(
        &mut self,
        f: Failure,
        outcome: Outcome,
        retries: u32,
        body: &BodyState,
        up: &UpstreamSpec,
    ) -> Outcome {
        let status = f.status();
        if let Failure::ClientGone = f {
            // Nobody to answer: log 499 and close, as nginx does.
            return Outcome {
                status,
                keep_alive: false,
                retries,
                ..outcome
            };
        }
        // Passive checks judge the answer the client gets, as APISIX's do (its log phase
        // classifies the final status): a gateway-made 502 or 504 counts as an HTTP failure
        // of the last node tried when that status is in `passive.unhealthy.http_statuses`.
        if let (Some(checks), Some(&last)) = (&up.checks, self.tried.last()) {
            if let Some(report) = checks.passive.classify(status) {
                self.worker.report_health(&up.nodes[last], report);
            }
        }
        // A body we did not finish reading leaves the connection's framing unknown: close.
        let end = body.complete.then_some(body.end);
        let mut o = self.local_error(status, &f.message(), end).await;
        o.upstream = outcome.upstream;
        o.upstream_status = Some(status);
        o.retries = retries;
        o
    }

    /// Sends head and body on `upc`. Body bytes beyond what is buffered are streamed from the
    /// client, after which the request can no longer be replayed.
    async fn send_request(
        &mut self,
        upc: &mut UpstreamConn,
        up: &UpstreamSpec,
        node: &Node,
        body: &mut BodyState,
        t: &Timeouts,
        streamed: &mut bool,
    ) -> Result<(), SendError> {
        self.build_upstream_head(up, node);
        let body_start = self.head.len;
        // Chunked bodies are re-encoded canonically (plain sizes, no extensions, no trailers),
        // so the upstream never sees framing details that a lenient parser could read
        // differently; their payload passes unchanged.
        let chunked = self.head.body == BodyFraming::Chunked;
        let mut encoder = ChunkedScanner::new();
        if chunked {
            let (buf, out) = (&self.buf, &mut self.out);
            let data = &buf[body_start..body.end];
            encoder
                .advance(data, |r| put_chunk(out, &data[r]))
                .map_err(|_| SendError::Client(400, "invalid chunked request body"))?;
            if encoder.is_done() {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            self.out.extend_from_slice(&self.buf[body_start..body.end]);
        }
        upc.served += 1;
        write_all_counted(&mut upc.stream, &mut self.out, t.send, &self.watch)
            .await
            .map_err(|(e, written)| {
                SendError::Upstream(match send_failure(e) {
                    Failure::Send(e) if written > 0 => Failure::SendPartial(e),
                    f => f,
                })
            })?;
        if body.complete {
            return Ok(());
        }

        // Streaming: the rest of the body comes from the client as we forward it.
        *streamed = true;
        let (body_timeout, send_timeout) = {
            let s = self.settings();
            (s.client_body_timeout, s.send_timeout)
        };
        if self.head.expect_continue {
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            write_all(&mut self.stream, &mut self.out, send_timeout, &self.watch)
                .await
                .map_err(|_| SendError::Client(0, ""))?;
        }
        self.buf.truncate(body_start);
        if !chunked && body.remaining >= splice::MIN_SPLICE && self.settings().splice {
            let len = body.remaining;
            if let Some(done) = self
                .splice_request_body(upc, len, body_timeout, t.send)
                .await
            {
                done?;
                body.remaining = 0;
                body.complete = true;
                body.end = body_start;
                return Ok(());
            }
        }
        loop {
            match read_more_timeout(
                &mut self.stream,
                &mut self.buf,
                BODY_CHUNK,
                body_timeout,
                &self.watch,
            )
            .await
            {
                Ok(0) | Err(IoFail::Io(_)) => return Err(SendError::Client(0, "")),
                Err(IoFail::Timeout) => {
                    return Err(SendError::Client(408, "timed out reading the request body"))
                }
                Ok(_) => {}
            }
            let (take, done) = if chunked {
                self.out.clear();
                let (buf, out) = (&self.buf, &mut self.out);
                let new = &buf[body_start..];
                let used = encoder
                    .advance(new, |r| put_chunk(out, &new[r]))
                    .map_err(|_| SendError::Client(400, "invalid chunked request body"))?;
                let done = encoder.is_done();
                if done {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write_all(&mut upc.stream, &mut self.out, t.send, &self.watch)
                    .await
                    .map_err(|e| SendError::Upstream(send_failure(e)))?;
                (used, done)
            } else {
                let new_len = self.buf.len() - body_start;
                let take = (new_len as u64).min(body.remaining) as usize;
                body.remaining -= take as u64;
                write_range(
                    &mut upc.stream,
                    &mut self.buf,
                    body_start,
                    body_start + take,
                    t.send,
                    &self.watch,
                )
                .await
                .map_err(|e| SendError::Upstream(send_failure(e)))?;
                (take, body.remaining == 0)
            };
            // Drop the forwarded bytes; anything after them is the next request.
            self.buf.drain(body_start..body_start + take);
            if done {
                body.complete = true;
                body.end = body_start;
                return Ok(());
            }
        }
    }

    /// Reads the response head into `upc.buf` and parses it into `self.resp`, skipping
    /// interim 1xx responses.
    async fn read_response_head(
        &mut self,
        upc: &mut UpstreamConn,
        read: Duration,
    ) -> Result<(), Failure> {
        // While the upstream works, the watchdog also looks at the client now and then: one
        // that has gone away ends the wait (nginx's 499) instead of leaving the upstream to
        // finish work nobody will read.
        self.watch.watch_client(self.stream.as_raw_fd());
        let result = self.read_response_head_inner(upc, read).await;
        self.watch.watch_client(-1);
        result
    }

    async fn read_response_head_inner(
        &mut self,
        upc: &mut UpstreamConn,
        read: Duration,
    ) -> Result<(), Failure> {
        let max = self.settings().limits.max_header_size;
        loop {
            if !upc.buf.is_empty() {
                match self.resp.parse(&upc.buf, self.head.is_head, max) {
                    Ok(response::Parsed::Complete) => {
                        if self.resp.status == 101 {
                            return Err(Failure::Invalid("unexpected 101 Switching Protocols"));
                        }
                        if (100..200).contains(&self.resp.status) {
                            let n = self.resp.len;
                            upc.buf.drain(..n);
                            continue;
                        }
                        return Ok(());
                    }
                    Ok(response::Parsed::Partial) => {}
                    Err(why) => return Err(Failure::Invalid(why)),
                }
            }
            match read_more_timeout(&mut upc.stream, &mut upc.buf, 4096, read, &self.watch).await {
                Ok(0) => return Err(Failure::Closed),
                Ok(_) => {}
                Err(IoFail::Timeout) if self.watch.client_gone() => {
                    return Err(Failure::ClientGone)
                }
                Err(IoFail::Timeout) => return Err(Failure::ReadTimeout),
                Err(IoFail::Io(e)) => return Err(Failure::Read(e)),
            }
        }
    }

    /// Sends the response head and relays the body. Returns the request's outcome; the
    /// upstream connection goes back to the pool when the exchange ended cleanly.
    async fn relay_response(
        &mut self,
        mut upc: UpstreamConn,
        up: &UpstreamSpec,
        addr: SocketAddr,
        t: &Timeouts,
        mut outcome: Outcome,
    ) -> Outcome {
        let framing = self.resp.framing();
        let http10 = self.head.minor_version == 0;
        let dechunk = http10 && framing == ResponseFraming::Chunked;
        let client_keep = !self.head.close
            && !self.early_answer
            && !self.worker.stopping()
            && match framing {
                ResponseFraming::None | ResponseFraming::Length(_) => true,
                ResponseFraming::Chunked => !http10,
                // Re-chunked for HTTP/1.1 clients (see relay_until_close).
                ResponseFraming::UntilClose => !http10,
            };
        let mut upstream_reusable = !self.resp.close && !self.early_answer;
        // The client may still be sending the body the upstream did not take.
        self.linger |= self.early_answer;
        outcome.status = self.resp.status;
        outcome.upstream_status = Some(self.resp.status);
        self.build_client_head(&upc.buf, framing, dechunk, client_keep, http10);
        let complete = match framing {
            ResponseFraming::None => true,
            ResponseFraming::Length(n) => (upc.buf.len() - self.resp.len) as u64 == n,
            _ => false,
        };
        // Not when more bytes from the client are already here (a pipelining client): the
        // close would then reset the connection, and a reset drops whatever the cork still
        // holds (the half-close sends it, but not always all of it at once).
        let pipelined = self.buf.len() > outcome.consumed.max(self.head.len);
        // Corked, a complete last answer's tail waits for the half-close right after, and the
        // FIN leaves in the same segment (7 packets per new-connection request instead of 9:
        // 7% less gateway CPU per request measured). Never for an answer still to be relayed:
        // a cork holds partial segments for up to 200 ms, which a streamed body would feel.
        if !client_keep && complete && !pipelined && !self.worker.stopping() {
            sockopt::set_cork(&self.stream);
            self.corked = true;
        }
        let head_len = self.resp.len;
        let send = self.settings().send_timeout;

        // Fast path: the whole body is already here and our head is no longer than the
        // upstream's: write our head over the end of theirs, so head and body leave in one
        // write without copying the body.
        if let ResponseFraming::Length(n) = framing {
            let body_here = (upc.buf.len() - head_len) as u64;
            if body_here == n && self.out.len() <= head_len {
                self.filter_body(&upc.buf[head_len..]);
                let start = head_len - self.out.len();
                upc.buf[start..head_len].copy_from_slice(&self.out);
                self.out.clear();
                let end = upc.buf.len();
                outcome.bytes += (end - start) as u64;
                let sent = write_range(
                    &mut self.stream,
                    &mut upc.buf,
                    start,
                    end,
                    send,
                    &self.watch,
                )
                .await;
                upc.buf.clear();
                return self.finish_relay(
                    upc,
                    sent.is_ok(),
                    upstream_reusable,
                    client_keep,
                    up,
                    addr,
                    outcome,
                );
            }
        }
        upc.buf.drain(..head_len);

        let result: Result<(), Abort> = match framing {
            ResponseFraming::None => {
                if !upc.buf.is_empty() {
                    upstream_reusable = false;
                    upc.buf.clear();
                }
                self.send_out(send, &mut outcome).await
            }
            ResponseFraming::Length(n) => {
                self.relay_length(
                    &mut upc,
                    n,
                    t.read,
                    send,
                    &mut outcome,
                    &mut upstream_reusable,
                )
                .await
            }
            ResponseFraming::Chunked => {
                self.relay_chunked(
                    &mut upc,
                    dechunk,
                    t.read,
                    send,
                    &mut outcome,
                    &mut upstream_reusable,
                )
                .await
            }
            ResponseFraming::UntilClose => {
                upstream_reusable = false;
                self.relay_until_close(&mut upc, !http10, t.read, send, &mut outcome)
                    .await
            }
        };
        self.finish_relay(
            upc,
            result.is_ok(),
            upstream_reusable,
            client_keep,
            up,
            addr,
            outcome,
        )
    }

    /// After a relay: pools the upstream connection if the exchange ended cleanly, and
    /// settles whether the client connection stays open.
    #[allow(clippy::too_many_arguments)]
    fn finish_relay(
        &self,
        upc: UpstreamConn,
        ok: bool,
        upstream_reusable: bool,
        client_keep: bool,
        up: &UpstreamSpec,
        addr: SocketAddr,
        mut outcome: Outcome,
    ) -> Outcome {
        if ok && upstream_reusable {
            self.worker
                .pool
                .put(addr, upc, &up.keepalive, self.worker.watchdog.now());
        } else {
            self.worker.pool.discard(upc);
        }
        outcome.keep_alive = ok && client_keep;
        outcome
    }

    /// Writes `self.out` (a response head, possibly with body bytes) to the client.
    async fn send_out(&mut self, send: Duration, outcome: &mut Outcome) -> Result<(), Abort> {
        outcome.bytes += self.out.len() as u64;
        write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .map_err(|_| Abort)?;
        self.out.clear();
        Ok(())
    }

    /// Writes `upc.buf[..n]` to the client, prefixed by the pending head in `self.out` when
    /// there is one (coalesced into one write when small).
    async fn send_body(
        &mut self,
        upc: &mut UpstreamConn,
        n: usize,
        send: Duration,
        outcome: &mut Outcome,
    ) -> Result<(), Abort> {
        if !self.out.is_empty() {
            if self.out.len() + n <= COALESCE_LIMIT {
                self.out.extend_from_slice(&upc.buf[..n]);
                upc.buf.drain(..n);
                return self.send_out(send, outcome).await;
            }
            self.send_out(send, outcome).await?;
        }
        outcome.bytes += n as u64;
        write_range(&mut self.stream, &mut upc.buf, 0, n, send, &self.watch)
            .await
            .map_err(|_| Abort)?;
        upc.buf.drain(..n);
        Ok(())
    }

    async fn relay_length(
        &mut self,
        upc: &mut UpstreamConn,
        total: u64,
        read: Duration,
        send: Duration,
        outcome: &mut Outcome,
        reusable: &mut bool,
    ) -> Result<(), Abort> {
        let mut remaining = total;
        loop {
            if upc.buf.len() as u64 > remaining {
                // More bytes than announced: never relay them, never reuse the connection.
                *reusable = false;
                upc.buf.truncate(remaining as usize);
            }
            let n = upc.buf.len();
            if n > 0 || !self.out.is_empty() {
                self.filter_body(&upc.buf[..n]);
                self.send_body(upc, n, send, outcome).await?;
                remaining -= n as u64;
            }
            if remaining == 0 {
                return Ok(());
            }
            if remaining >= splice::MIN_SPLICE && self.filters.is_none() && self.settings().splice {
                if let Some(done) = self
                    .splice_rest(upc, remaining, read, send, outcome, reusable)
                    .await
                {
                    return done;
                }
            }
            // The body goes on past this buffer: relay the rest through a large one.
            self.worker.pool.enlarge(&mut upc.buf);
            if read_body(upc, read, &self.watch).await? == 0 {
                return Err(Abort);
            }
        }
    }

    /// Makes both sockets non-blocking (monoio's io_uring sockets are blocking, and a splice
    /// on a blocking socket could stall the worker). `false` when that fails (the caller
    /// copies instead).
    fn splice_ready(&mut self, upc: &mut UpstreamConn) -> bool {
        if !self.nonblocking {
            if sockopt::set_nonblocking(&self.stream).is_err() {
                return false;
            }
            self.nonblocking = true;
        }
        if !upc.nonblocking {
            if sockopt::set_nonblocking(&upc.stream).is_err() {
                return false;
            }
            upc.nonblocking = true;
        }
        true
    }

    /// How the relays of this connection are shaped: the configured unsent limit, and the
    /// connection's watch for the given limits.
    fn relay_shape(&self, read: Duration, send: Duration, deliver: bool) -> splice::Relay<'_> {
        splice::Relay {
            read,
            send,
            watch: &self.watch,
            lowat: self.settings().splice_lowat,
            deliver_after_source_failure: deliver,
        }
    }

    /// Relays the last `len` response body bytes with splice(2). `None` when no pipe could be
    /// had (the caller copies instead).
    async fn splice_rest(
        &mut self,
        upc: &mut UpstreamConn,
        len: u64,
        read: Duration,
        send: Duration,
        outcome: &mut Outcome,
        reusable: &mut bool,
    ) -> Option<Result<(), Abort>> {
        if !self.splice_ready(upc) {
            return None;
        }
        let how = self.relay_shape(read, send, true);
        let (sent, result) =
            splice::relay(&self.worker.pipes, &upc.stream, &self.stream, len, &how).await?;
        outcome.bytes += sent;
        Some(match result {
            Ok(()) => {
                // Bytes past the body stayed in the socket: such a connection is not reused
                // (the copying relay sees them in its buffer and decides the same).
                if !still_idle(&upc.stream) {
                    *reusable = false;
                }
                Ok(())
            }
            Err(_) => Err(Abort),
        })
    }

    /// Forwards the rest of a Content-Length request body (`len` bytes still in the client's
    /// socket) with splice(2). `None` when no pipe could be had (the caller copies instead).
    async fn splice_request_body(
        &mut self,
        upc: &mut UpstreamConn,
        len: u64,
        body_timeout: Duration,
        send: Duration,
    ) -> Option<Result<(), SendError>> {
        if !self.splice_ready(upc) {
            return None;
        }
        let how = self.relay_shape(body_timeout, send, false);
        let (_, result) =
            splice::relay(&self.worker.pipes, &self.stream, &upc.stream, len, &how).await?;
        Some(match result {
            Ok(()) => Ok(()),
            Err(splice::RelayError::Source(IoFail::Timeout)) => {
                Err(SendError::Client(408, "timed out reading the request body"))
            }
            Err(splice::RelayError::Source(_)) => Err(SendError::Client(0, "")),
            Err(splice::RelayError::Destination(e)) => Err(SendError::Upstream(send_failure(e))),
        })
    }

    async fn relay_chunked(
        &mut self,
        upc: &mut UpstreamConn,
        dechunk: bool,
        read: Duration,
        send: Duration,
        outcome: &mut Outcome,
        reusable: &mut bool,
    ) -> Result<(), Abort> {
        let mut scanner = ChunkedScanner::new();
        loop {
            if !upc.buf.is_empty() {
                if dechunk {
                    // HTTP/1.0 client: forward payload only, the connection close ends it.
                    let before = self.out.len();
                    let out = &mut self.out;
                    let data = &upc.buf;
                    let used = scanner
                        .advance(data, |r| out.extend_from_slice(&data[r]))
                        .map_err(|_| Abort)?;
                    upc.buf.drain(..used);
                    self.filter_body(&self.out[before..]);
                    if !self.out.is_empty() {
                        self.send_out(send, outcome).await?;
                    }
                } else {
                    let data = &upc.buf;
                    let used = scanner
                        .advance(data, |r| self.filter_body(&data[r]))
                        .map_err(|_| Abort)?;
                    self.send_body(upc, used, send, outcome).await?;
                }
                if scanner.is_done() {
                    if !upc.buf.is_empty() {
                        *reusable = false;
                        upc.buf.clear();
                    }
                    if !self.out.is_empty() {
                        self.send_out(send, outcome).await?;
                    }
                    return Ok(());
                }
            } else if !self.out.is_empty() {
                // Send the head now rather than after the first chunk arrives.
                self.send_out(send, outcome).await?;
            }
            // The body goes on past this buffer: relay the rest through a large one.
            self.worker.pool.enlarge(&mut upc.buf);
            if read_body(upc, read, &self.watch).await? == 0 {
                return Err(Abort);
            }
        }
    }

    /// Relays a body that ends when the upstream closes. HTTP/1.1 clients get it re-chunked
    /// (`rechunk`), as nginx does: the connection can stay open, and a body cut short by an
    /// upstream error is visibly incomplete (no last chunk) instead of looking finished.
    async fn relay_until_close(
        &mut self,
        upc: &mut UpstreamConn,
        rechunk: bool,
        read: Duration,
        send: Duration,
        outcome: &mut Outcome,
    ) -> Result<(), Abort> {
        loop {
            let n = upc.buf.len();
            if rechunk {
                if n > 0 {
                    self.filter_body(&upc.buf[..n]);
                    let _ = write!(self.out, "{n:x}\r\n");
                    self.out.extend_from_slice(&upc.buf[..n]);
                    self.out.extend_from_slice(b"\r\n");
                    upc.buf.clear();
                }
                if !self.out.is_empty() {
                    self.send_out(send, outcome).await?;
                }
            } else if n > 0 || !self.out.is_empty() {
                self.filter_body(&upc.buf[..n]);
                self.send_body(upc, n, send, outcome).await?;
            }
            // The body goes on past this buffer: relay the rest through a large one.
            self.worker.pool.enlarge(&mut upc.buf);
            if read_body(upc, read, &self.watch).await? == 0 {
                if rechunk {
                    self.out.extend_from_slice(b"0\r\n\r\n");
                    self.send_out(send, outcome).await?;
                }
                return Ok(());
            }
        }
    }

    /// Writes the client-facing response head into `self.out`.
    fn build_client_head(
        &mut self,
        src: &[u8],
        framing: ResponseFraming,
        dechunk: bool,
        keep: bool,
        http10: bool,
    ) {
        let out = &mut self.out;
        let resp = &self.resp;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(resp.status));
        out.push(b' ');
        let reason = &src[resp.reason.clone()];
        if reason.is_empty() {
            out.extend_from_slice(crate::http::reason_phrase(resp.status).as_bytes());
        } else {
            out.extend_from_slice(reason);
        }
        out.extend_from_slice(b"\r\n");
        for h in &resp.headers {
            let name = &src[h.name.clone()];
            if is_hop_by_hop(name) || resp.listed_in_connection(src, name) {
                continue;
            }
            // Content-Length is re-written for framed bodies; a 204 (or 1xx) must not carry one
            // at all (HEAD and 304 keep theirs: they describe the representation).
            if eq_ignore_case(name, b"content-length")
                && (framing != ResponseFraming::None || resp.status == 204 || resp.status < 200)
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&src[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        put_upstream_status(out, &self.up_statuses);
        match framing {
            ResponseFraming::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            ResponseFraming::Chunked if !dechunk => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            ResponseFraming::UntilClose if !http10 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            _ => {}
        }
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

enum Retry {
    /// The same node on a fresh connection (the pooled one was stale); not counted.
    Fresh,
    /// Another node, counted against `retries`.
    Other,
    No,
}

enum SendError {
    Upstream(Failure),
    /// The client side failed: status 0 = it went away, else answer with this status.
    Client(u16, &'static str),
}

/// Reads more of a response body; 0 at end of stream. A timeout or error ends the exchange.
async fn read_body(upc: &mut UpstreamConn, read: Duration, watch: &Watch) -> Result<usize, Abort> {
    read_more_timeout(&mut upc.stream, &mut upc.buf, 16 * 1024, read, watch)
        .await
        .map_err(|_| Abort)
}

/// Fills `out` with a consistent-hashing key. A key whose source is missing falls back to
/// the client address, as APISIX does (a present but empty value hashes as empty).
fn hash_key(out: &mut Vec<u8>, hash_on: &HashOn, vars: &RequestVars<'_>) {
    out.clear();
    let found = match hash_on {
        HashOn::Var(v) | HashOn::Header(v) | HashOn::Cookie(v) => match vars.var(v) {
            Some(value) => {
                out.extend_from_slice(value);
                true
            }
            None => false,
        },
        HashOn::Template(parts) => {
            let mut any = false;
            for part in parts {
                match part {
                    TemplatePart::Literal(s) => out.extend_from_slice(s.as_bytes()),
                    TemplatePart::Var(v) => {
                        if let Some(value) = vars.var(v) {
                            out.extend_from_slice(value);
                            any = true;
                        }
                    }
                }
            }
            any
        }
        HashOn::Consumer => false,
    };
    if !found {
        out.clear();
        out.extend_from_slice(vars.remote_ip.as_bytes());
    }
}

/// Appends `X-APISIX-Upstream-Status: 502, 502, 500` when the last attempt's status is a 5xx
/// (APISIX's header, with nginx's `$upstream_status` as its value).
fn put_upstream_status(out: &mut Vec<u8>, statuses: &[u16]) {
    if !statuses.last().is_some_and(|s| (500..600).contains(s)) {
        return;
    }
    out.extend_from_slice(b"X-APISIX-Upstream-Status: ");
    for (i, s) in statuses.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{s}");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk in canonical form.
fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn send_failure(e: IoFail) -> Failure {
    match e {
        IoFail::Timeout => Failure::SendTimeout,
        IoFail::Io(e) => Failure::Send(e),
    }
}

async fn connect(pool: &Pool, addr: SocketAddr, limit: Duration) -> Result<UpstreamConn, Failure> {
    match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(pool.attach(stream))
        }
        Ok(Err(e)) => Err(Failure::Connect(e)),
        Err(_) => Err(Failure::ConnectTimeout),
    }
}
