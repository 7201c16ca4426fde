//! The upstream attempt loop: pick a node (balancer, health, weights), take a pooled
//! connection or connect, send, read the response head, and on failure decide whether and
//! where to try again.

use super::vars::RequestVars;
use crate::http::request::BodyFraming;
use crate::http::response::{self};
use crate::net::io::{read_more_parkable, wait_readable, Got, IoFail};
use crate::net::sockopt;
use crate::net::stream::Stream;
use crate::route::Route;
use crate::tls::stream::{HandshakeError, TlsConn};
use crate::upstream::balancer::{Balancer, PickContext};
use crate::upstream::pool::{Pool, UpstreamConn};
use crate::upstream::pool::{PoolKey, TlsIdentity};
use crate::upstream::tls::{sni_of, UpstreamTls};
use crate::upstream::{HashOn, Node, Timeouts, UpstreamSpec};
use crate::vars::VarSource;
use crate::worker::state::Local;
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::ctx::Outcome;
use super::editor::upstream_host;
use super::error::{ProxyError, Side};
use super::request_body::BodyState;
use super::session::Conn;
use super::{BUFFERED_BODY_MAX, EARLY_ANSWER_WAIT};

pub(super) enum Retry {
    /// The same node on a fresh connection (the pooled one was stale); not counted.
    Fresh,
    /// Another node, counted against `retries`.
    Other,
    No,
}

/// Fills `out` with a consistent-hashing key. A key whose source is missing falls back to
/// the client address, as APISIX does (a present but empty value hashes as empty).
pub(super) fn hash_key(out: &mut Vec<u8>, hash_on: &HashOn, vars: &RequestVars<'_>) {
    out.clear();
    let found = match hash_on {
        HashOn::Var(v) | HashOn::Header(v) | HashOn::Cookie(v) => match vars.var(v) {
            Some(value) => {
                out.extend_from_slice(value);
                true
            }
            None => false,
        },
        HashOn::Template(t) => t.render(vars, out),
        // No consumer (no authentication plugin identified one): the client address, as
        // APISIX falls back.
        HashOn::Consumer => match vars.consumer.get() {
            Some(c) => {
                out.extend_from_slice(c.username.as_bytes());
                true
            }
            None => false,
        },
    };
    if !found {
        out.clear();
        out.extend_from_slice(vars.remote().as_bytes());
    }
}

/// Where a new upstream connection goes: the node, and for TLS the configuration, the
/// name and the pool key part.
pub(super) struct Target<'a> {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<(&'a UpstreamTls, &'a [u8])>,
    pub(super) key: PoolKey,
}

impl<'a> Target<'a> {
    /// The target for `node` of `up`, sending `host` (the Host sent upstream).
    pub(super) fn new(up: &'a UpstreamSpec, node: &Node, host: &'a [u8]) -> Target<'a> {
        match up.tls.as_deref() {
            None => Target {
                addr: node.addr,
                tls: None,
                key: PoolKey::plain(node.addr),
            },
            Some(t) => {
                let sni = t.sni.as_deref().map_or(sni_of(host), str::as_bytes);
                Target {
                    addr: node.addr,
                    tls: Some((t, sni)),
                    key: PoolKey {
                        addr: node.addr,
                        tls: t.pool_key(sni),
                    },
                }
            }
        }
    }

    /// The TLS name ("" for plain TCP).
    pub(super) fn sni(&self) -> &[u8] {
        self.tls.map_or(&[][..], |(_, sni)| sni)
    }
}

/// Connects to `addr` within `limit`, with Nagle off (small frames and heads go out now).
pub(super) async fn connect_tcp(
    addr: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, ProxyError> {
    let tcp = match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ProxyError::Connect(e)),
        Err(_) => return Err(ProxyError::ConnectTimeout),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Opens a connection to `target` (TCP connect, then the TLS handshake for TLS), the whole
/// within `limit` (the upstream connect timeout).
pub(super) async fn connect(
    pool: &Pool,
    target: &Target<'_>,
    limit: Duration,
    watch: &crate::net::watchdog::Watch,
) -> Result<UpstreamConn, ProxyError> {
    let start = Instant::now();
    let tcp = connect_tcp(target.addr, limit).await?;
    let Some((tls, sni)) = target.tls else {
        return Ok(pool.attach(Stream::Plain(tcp), None));
    };
    let name = crate::tls::client::server_name(sni).ok_or_else(|| {
        ProxyError::Tls(
            format!(
                "cannot send \"{}\" as TLS server name",
                String::from_utf8_lossy(sni)
            )
            .into(),
        )
    })?;
    let left = limit.saturating_sub(start.elapsed());
    match TlsConn::connect(tcp, tls.config.clone(), name, left, watch).await {
        Ok(conn) => Ok(pool.attach(
            Stream::Tls(Box::new(conn)),
            Some(Box::new(TlsIdentity {
                key: target.key.tls,
                sni: sni.into(),
            })),
        )),
        Err(HandshakeError::Io(IoFail::Timeout)) => Err(ProxyError::ConnectTimeout),
        Err(e) => {
            // As nginx logs "upstream SSL certificate verify error": the reason is here.
            crate::warn!(
                "TLS handshake with upstream {} (SNI \"{}\") failed: {e}",
                target.addr,
                String::from_utf8_lossy(sni)
            );
            Err(ProxyError::Tls(e.to_string().into()))
        }
    }
}

impl Conn {
    /// Forwards the request to the route's upstream (with retries) and relays the response.
    pub(super) async fn proxy(&mut self, local: &Rc<Local>, route: &Route, ui: usize) -> Outcome {
        let up: &UpstreamSpec = &local.shared.upstreams[ui];
        if up.grpc {
            return self.grpc(local, route, ui).await;
        }
        if up.drained {
            let end = self.buffered_body_end();
            return self.local_error(503, "no valid upstream node", end).await;
        }
        let timeouts: Timeouts = route.timeout.unwrap_or(up.timeouts);
        // WebSocket (any Upgrade but h2c, which is served by prior knowledge only), where
        // the route enables it; elsewhere the Upgrade header is dropped as hop-by-hop and
        // the request goes up as a plain one (APISIX's `enable_websocket`).
        self.req.upgrade = route.websocket
            && self
                .req
                .head
                .upgrade(&self.buf)
                .is_some_and(|p| !crate::http::eq_ignore_case(p, b"h2c"));
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
            let read = match self.req.head.body {
                BodyFraming::Length(n) if n <= BUFFERED_BODY_MAX as u64 => {
                    Some(self.read_small_body(n as usize).await)
                }
                BodyFraming::Chunked => Some(self.read_small_chunked(BUFFERED_BODY_MAX).await),
                _ => None,
            };
            match read {
                None => {}
                Some(Ok(())) => match self.body_state() {
                    Ok(b) => body = b,
                    Err(e) => return self.local_error(e.status, e.reason, None).await,
                },
                Some(Err(e)) => return self.client_failed(e, Outcome::default()).await,
            }
        }
        let retry_deadline = up.retry_timeout.and_then(|t| Instant::now().checked_add(t));
        self.req.tried.clear();
        if let Some(hash_on) = &up.hash_on {
            let mut key = std::mem::take(&mut self.req.key_buf);
            hash_key(&mut key, hash_on, &self.vars());
            self.req.key_buf = key;
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
        let mut last_failure: Option<ProxyError> = None;
        // Attempts are timed only for someone who reads the time (the access log, a
        // latency-aware balancer).
        let timed = self.worker.log.enabled()
            || self.req.local.shared.timed
            || balancer.borrow().measures_latency();

        loop {
            // Pick the node: the same one again for the invisible stale-connection retry.
            let node_idx = match fresh_retry {
                Some(i) => i,
                None => {
                    let tried: &[usize] = if lone { &[] } else { &self.req.tried };
                    let mut ctx = PickContext::new(tried);
                    if up.hash_on.is_some() {
                        ctx = ctx.with_key(&self.req.key_buf);
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
                self.req.tried.push(node_idx);
            }
            outcome.upstream = Some(node.addr);
            let attempt_start = timed.then(Instant::now);
            balancer.borrow_mut().started(node_idx);

            let host = upstream_host(&self.buf, &self.req.head, &self.req.edits.request, up, node);
            let target = Target::new(up, node, host);
            let pooled = if fresh_retry.take().is_some() {
                None
            } else {
                let now = self.worker.watchdog.now();
                self.worker.pool.take(target.key, target.sni(), now)
            };
            let shard = self.worker.metrics.shard();
            let result = match pooled {
                Some(c) => {
                    crate::metrics::bump(&shard.pool_reused, 1);
                    Ok(c)
                }
                None => {
                    crate::metrics::bump(&shard.pool_opened, 1);
                    connect(&self.worker.pool, &target, timeouts.connect, &self.watch).await
                }
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
                Err(e) if e.side() == Side::Client => {
                    balancer.borrow_mut().finished(node_idx, None);
                    self.worker.pool.discard(upc);
                    outcome.retries = retries_done;
                    return self.client_failed(e, outcome).await;
                }
                Err(
                    f
                    @ (ProxyError::Send(_) | ProxyError::SendPartial(_) | ProxyError::SendTimeout),
                ) if streamed => match self.read_response_head(&mut upc, EARLY_ANSWER_WAIT).await {
                    Ok(()) => {
                        self.req.early_answer = true;
                        Ok(())
                    }
                    Err(_) => Err(f),
                },
                Err(f) => Err(f),
            };
            match sent {
                Ok(()) => {
                    if let Some(report) = up
                        .checks
                        .as_ref()
                        .and_then(|c| c.passive.classify(self.req.resp.status))
                    {
                        self.worker.report_health(node, report);
                    }
                    self.req.up_statuses.push(self.req.resp.status);
                    self.response_phase(self.req.resp.status, &upc.buf, None);
                    let rtt = attempt_start.map(|t| t.elapsed());
                    outcome.upstream_latency = rtt;
                    outcome.retries = retries_done;
                    outcome.consumed = body.end;
                    let outcome = match self.req.resp.status {
                        101 => self.tunnel(upc, &timeouts, outcome).await,
                        _ => {
                            self.relay_response(upc, up, node.addr, &timeouts, outcome)
                                .await
                        }
                    };
                    // An early answer's time includes the upload (or the send timeout): no
                    // latency sample for the balancer.
                    let sample = rtt.filter(|_| !self.req.early_answer);
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
    pub(super) fn attempt_failed(
        &mut self,
        balancer: &RefCell<Box<dyn Balancer>>,
        node_idx: usize,
        node: &Node,
        f: &ProxyError,
    ) {
        match f.health_report() {
            Some(report) => {
                balancer.borrow_mut().failed(node_idx);
                self.worker.report_health(node, report);
            }
            None => balancer.borrow_mut().finished(node_idx, None),
        }
        if !matches!(f, ProxyError::ClientGone) {
            self.req.up_statuses.push(f.status());
        }
    }

    /// Decides whether and how to retry after `f`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn after_failure(
        &self,
        f: &ProxyError,
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
            && (self.req.head.idempotent || matches!(f, ProxyError::Send(_)))
        {
            return Retry::Fresh;
        }
        if retries_done >= up.retries || deadline.is_some_and(|d| Instant::now() >= d) {
            return Retry::No;
        }
        if f.nothing_sent() || (replayable && self.req.head.idempotent) {
            Retry::Other
        } else {
            Retry::No
        }
    }

    /// Reads the response head into `upc.buf` and parses it into `self.req.resp`, skipping
    /// interim 1xx responses.
    pub(super) async fn read_response_head(
        &mut self,
        upc: &mut UpstreamConn,
        read: Duration,
    ) -> Result<(), ProxyError> {
        // While the upstream works, the watchdog also looks at the client now and then: one
        // that has gone away ends the wait (nginx's 499) instead of leaving the upstream to
        // finish work nobody will read.
        self.watch.watch_client(self.stream.as_raw_fd());
        let result = self.read_response_head_inner(upc, read).await;
        self.watch.watch_client(-1);
        result
    }

    pub(super) async fn read_response_head_inner(
        &mut self,
        upc: &mut UpstreamConn,
        read: Duration,
    ) -> Result<(), ProxyError> {
        let max = self.settings().limits.max_header_size;
        loop {
            if !upc.buf.is_empty() {
                match self.req.resp.parse(&upc.buf, self.req.head.is_head, max) {
                    Ok(response::Parsed::Complete) => {
                        if self.req.resp.status == 101 && !self.req.upgrade {
                            return Err(ProxyError::Invalid("unexpected 101 Switching Protocols"));
                        }
                        if (100..200).contains(&self.req.resp.status) && self.req.resp.status != 101
                        {
                            let n = self.req.resp.len;
                            upc.buf.drain(..n);
                            continue;
                        }
                        return Ok(());
                    }
                    Ok(response::Parsed::Partial) => {}
                    Err(why) => return Err(ProxyError::Invalid(why)),
                }
            }
            // Parkable, as a client's next head is: an upstream that takes a tick or two (a
            // long poll, slow work) is waited for without the connection's buffer.
            let deadline = self.watch.deadline_in(read);
            let got =
                read_more_parkable(&mut upc.stream, &mut upc.buf, 4096, deadline, &self.watch);
            match got.await {
                Ok(Got::Bytes(0)) => return Err(ProxyError::Closed),
                Ok(Got::Bytes(_)) => {}
                Ok(Got::Parked) => self.wait_parked(upc, deadline).await?,
                Err(IoFail::Timeout) if self.watch.client_gone() => {
                    return Err(ProxyError::ClientGone)
                }
                Err(IoFail::Timeout) => return Err(ProxyError::ReadTimeout),
                Err(IoFail::Io(e)) => return Err(ProxyError::Read(e)),
            }
        }
    }

    /// The upstream's read for its response head was parked: its 32 KiB buffer goes back to
    /// the core's pool (unless it holds part of the head) while a readiness poll, which holds
    /// none, waits until `deadline`; then the connection takes a buffer again. The client's
    /// read buffer keeps only what it holds (the request's head, which later phases read, and
    /// anything pipelined behind it) and gets its room back after; a TLS client lets go of
    /// its ciphertext buffers. The client is still watched meanwhile (499 when it leaves).
    async fn wait_parked(
        &mut self,
        upc: &mut UpstreamConn,
        deadline: Instant,
    ) -> Result<(), ProxyError> {
        if upc.buf.is_empty() {
            self.worker.pool.recycle(std::mem::take(&mut upc.buf));
        }
        let client_room = self.buf.capacity();
        self.buf.shrink_to_fit();
        if let Stream::Tls(t) = &mut self.stream {
            t.release_buffers();
        }
        let ready = match upc.stream.tcp() {
            Some(tcp) => wait_readable(tcp, deadline, &self.watch).await,
            None => true,
        };
        self.buf.reserve(client_room - self.buf.len());
        if upc.buf.capacity() == 0 {
            upc.buf = self.worker.pool.buffer();
        }
        match ready {
            true => Ok(()),
            false if self.watch.client_gone() => Err(ProxyError::ClientGone),
            false if self.watch.passed(deadline) => Err(ProxyError::ReadTimeout),
            // The poll failed: the read that follows says how.
            false => Ok(()),
        }
    }
}
