//! gRPC to `scheme = "grpc"` (h2c) and `"grpcs"` (h2 over TLS) upstreams: the client's
//! HTTP/2 stream is relayed to a stream on a pooled, multiplexed HTTP/2 connection to the
//! node (`upstream::h2pool`), frames as they come both ways, so unary and all three kinds of
//! streaming calls work; trailers (`grpc-status`, `grpc-message`) pass through. Routing and
//! the request plugins have run as for any request; the response phases do not run on gRPC
//! responses.
//!
//! Errors are gRPC errors: an answer of the gateway's own before the call reached a node
//! (a plugin's refusal, no node, a failed connection) becomes a trailers-only response with
//! the matching `grpc-status` (`http2::stream`); after that, a failure is `UNAVAILABLE`,
//! and a call past its `grpc-timeout` deadline (or the upstream read timeout before the
//! response head) is `DEADLINE_EXCEEDED`.

use crate::http::{eq_ignore_case, is_hop_by_hop};
use crate::http2::stream::{grpc_status_response, send_flowing};
use crate::http2::H2Io;
use crate::net::io::IoFail;
use crate::net::stream::Stream;
use crate::route::Route;
use crate::tls::stream::TlsConn;
use crate::upstream::balancer::PickContext;
use crate::upstream::pool::PoolKey;
use crate::upstream::{Node, Timeouts, UpstreamSpec};
use crate::worker::state::Local;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::ctx::Outcome;
use super::editor::upstream_host;
use super::error::ProxyError;
use super::session::Conn;
use super::upstream::{connect_tcp, hash_key, Target};

/// gRPC status codes used here.
const UNAVAILABLE: u32 = 14;
const DEADLINE_EXCEEDED: u32 = 4;

/// Longest wait when no deadline applies (a streaming call may be long-lived).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Conn {
    /// Serves a request on a route whose upstream speaks gRPC.
    pub(super) async fn grpc(&mut self, local: &Rc<Local>, route: &Route, ui: usize) -> Outcome {
        let up: &UpstreamSpec = &local.shared.upstreams[ui];
        if !matches!(self.stream, Stream::H2(_)) {
            return self
                .local_error(400, "gRPC upstreams are reached over HTTP/2 only", None)
                .await;
        }
        if up.drained {
            return self.local_error(503, "no valid upstream node", None).await;
        }
        let timeouts: Timeouts = route.timeout.unwrap_or(up.timeouts);
        let deadline = self.grpc_deadline();
        if let Some(hash_on) = &up.hash_on {
            let mut key = std::mem::take(&mut self.req.key_buf);
            hash_key(&mut key, hash_on, &self.vars());
            self.req.key_buf = key;
        }
        let balancer = &local.balancers[ui];
        self.req.tried.clear();
        let mut retries = 0;
        let (node_idx, sender, key) = loop {
            let tried: &[usize] = if up.nodes.len() == 1 {
                &[]
            } else {
                &self.req.tried
            };
            let mut ctx = PickContext::new(tried);
            if up.hash_on.is_some() {
                ctx = ctx.with_key(&self.req.key_buf);
            }
            if up.checks.is_some() && up.nodes.iter().any(|n| n.usable()) {
                ctx = ctx.skipping_unhealthy(&up.nodes);
            }
            let picked = balancer.borrow_mut().pick(&up.nodes, &ctx);
            let Some(i) = picked else {
                let why = "all upstream nodes tried or none available";
                return self.local_error(502, why, None).await;
            };
            let node = &up.nodes[i];
            self.req.tried.push(i);
            balancer.borrow_mut().started(i);
            match self.h2_sender(up, node, timeouts.connect).await {
                Ok((s, key)) => break (i, s, key),
                Err(f) => {
                    self.attempt_failed(balancer, i, node, &f);
                    if retries < up.retries {
                        retries += 1;
                        continue;
                    }
                    let mut o = self.local_error(f.status(), &f.message(), None).await;
                    o.upstream = Some(node.addr);
                    o.retries = retries;
                    return o;
                }
            }
        };
        let node = &up.nodes[node_idx];
        let start = Instant::now();
        let mut outcome = self.call(sender, key, up, node, &timeouts, deadline).await;
        balancer
            .borrow_mut()
            .finished(node_idx, Some(start.elapsed()));
        outcome.upstream = Some(node.addr);
        outcome.retries = retries;
        outcome
    }

    /// A handle on the core's HTTP/2 connection to `node`, opened now if there is none
    /// (or the one there failed).
    async fn h2_sender(
        &mut self,
        up: &UpstreamSpec,
        node: &Node,
        limit: Duration,
    ) -> Result<(SendRequest<Bytes>, PoolKey), ProxyError> {
        let host = upstream_host(&self.buf, &self.req.head, &self.req.edits.request, up, node);
        let target = Target::new(up, node, host);
        if let Some(open) = self.worker.h2.get(target.key) {
            match open.ready().await {
                Ok(s) => return Ok((s, target.key)),
                Err(_) => self.worker.h2.drop_conn(target.key),
            }
        }
        let started = Instant::now();
        let tcp = connect_tcp(target.addr, limit).await?;
        let io = match target.tls {
            None => H2Io::plain(tcp, Vec::new()),
            Some((tls, sni)) => {
                let name = crate::tls::client::server_name(sni)
                    .ok_or_else(|| ProxyError::Tls("bad TLS server name".into()))?;
                let left = limit.saturating_sub(started.elapsed());
                let conn = TlsConn::connect(tcp, tls.config.clone(), name, left, &self.watch)
                    .await
                    .map_err(|e| ProxyError::Tls(e.to_string().into()))?;
                let (tcp, conn, rbuf, rpos) = conn.into_parts();
                H2Io::tls(tcp, conn, rbuf, rpos)
            }
        }
        .map_err(ProxyError::Connect)?;
        let left = limit.saturating_sub(started.elapsed());
        let handshake = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io);
        let (sender, connection) = match monoio::time::timeout(left, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(ProxyError::Read(std::io::Error::other(e))),
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        monoio::spawn(async move {
            let _ = connection.await;
        });
        let sender = sender
            .ready()
            .await
            .map_err(|e| ProxyError::Read(std::io::Error::other(e)))?;
        self.worker.h2.put(target.key, sender.clone());
        Ok((sender, target.key))
    }

    /// One call: the request up, the response (head, messages, trailers) down.
    async fn call(
        &mut self,
        mut sender: SendRequest<Bytes>,
        key: PoolKey,
        up: &UpstreamSpec,
        node: &Node,
        t: &Timeouts,
        deadline: Option<Instant>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let request = self.upstream_request(up, node);
        let Stream::H2(h) = &mut self.stream else {
            return outcome;
        };
        let Some((body, mut respond)) = h.take_client() else {
            return outcome;
        };
        let (response, up_send) = match sender.send_request(request, body.is_none()) {
            Ok(pair) => pair,
            Err(e) => {
                crate::info!("gRPC call to {} not sent: {e}", node.addr);
                self.worker.h2.drop_conn(key);
                outcome.status = 502;
                let _ = respond.send_response(
                    grpc_status_response(UNAVAILABLE, "upstream unavailable"),
                    true,
                );
                return outcome;
            }
        };
        // The request's messages go up on a task of their own: a bidirectional call
        // reads responses while the client is still sending.
        if let Some(body) = body {
            monoio::spawn(pump(body, up_send, t.send));
        }
        let left = |d: Option<Instant>, cap: Duration| {
            d.map_or(cap, |d| {
                d.saturating_duration_since(Instant::now()).min(cap)
            })
        };
        let asked = Instant::now();
        let head = monoio::time::timeout(left(deadline, t.read), response).await;
        outcome.upstream_latency = Some(asked.elapsed());
        let (parts, mut up_body) = match head {
            Ok(Ok(r)) => r.into_parts(),
            Ok(Err(e)) => {
                crate::info!("gRPC call to {} failed: {e}", node.addr);
                outcome.status = 502;
                let _ = respond
                    .send_response(grpc_status_response(UNAVAILABLE, "upstream failed"), true);
                return outcome;
            }
            Err(_) => {
                outcome.status = 504;
                let msg = "deadline exceeded waiting for the upstream";
                let _ = respond.send_response(grpc_status_response(DEADLINE_EXCEEDED, msg), true);
                return outcome;
            }
        };
        outcome.status = parts.status.as_u16();
        outcome.upstream_status = Some(outcome.status);
        let mut head = http::Response::new(());
        *head.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name.as_str().as_bytes()) {
                head.headers_mut().append(name.clone(), value.clone());
            }
        }
        let ended = up_body.is_end_stream();
        let mut down = match respond.send_response(head, ended) {
            Ok(s) => s,
            Err(_) => return outcome,
        };
        if ended {
            return outcome;
        }
        // Messages down until the trailers, or the deadline.
        loop {
            let next = monoio::time::timeout(left(deadline, FOREVER), up_body.data()).await;
            match next {
                Ok(Some(Ok(data))) => {
                    let _ = up_body.flow_control().release_capacity(data.len());
                    outcome.bytes += data.len() as u64;
                    if send_flowing(&mut down, data, false, t.send).await.is_err() {
                        return outcome;
                    }
                }
                Ok(None) => {
                    let trailers = up_body.trailers().await;
                    let _ = match trailers {
                        Ok(Some(t)) => down.send_trailers(t),
                        Ok(None) => down.send_data(Bytes::new(), true),
                        Err(_) => {
                            down.send_trailers(status_trailers(UNAVAILABLE, "upstream failed"))
                        }
                    };
                    return outcome;
                }
                Ok(Some(Err(_))) => {
                    let _ = down.send_trailers(status_trailers(UNAVAILABLE, "upstream failed"));
                    return outcome;
                }
                Err(_) => {
                    let msg = "deadline exceeded";
                    let _ = down.send_trailers(status_trailers(DEADLINE_EXCEEDED, msg));
                    return outcome;
                }
            }
        }
    }

    /// The request for the node: the client's method, path (or a plugin's rewrite) and
    /// fields, the Host per `pass_host` as `:authority`, and `te: trailers`.
    fn upstream_request(&self, up: &UpstreamSpec, node: &Node) -> http::Request<()> {
        let buf = &self.buf;
        let head = &self.req.head;
        let edits = &self.req.edits.request;
        let authority = upstream_host(buf, head, edits, up, node);
        let path = match &edits.uri {
            Some(uri) => uri.as_bytes(),
            None => head.target(buf),
        };
        let scheme = if up.tls.is_some() { "https" } else { "http" };
        let uri = format!(
            "{scheme}://{}{}",
            String::from_utf8_lossy(authority),
            String::from_utf8_lossy(path)
        );
        let mut req = http::Request::new(());
        *req.method_mut() =
            http::Method::from_bytes(&buf[head.method.clone()]).unwrap_or(http::Method::POST);
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let fields = req.headers_mut();
        let edited = !edits.headers.is_empty();
        for h in &head.headers {
            let name = &buf[h.name.clone()];
            if is_hop_by_hop(name)
                || eq_ignore_case(name, b"host")
                || head.listed_in_connection(buf, name)
                || (edited && edits.headers.drops(name))
            {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(&buf[h.value.clone()]),
            ) {
                fields.append(n, v);
            }
        }
        if edited {
            for (name, value) in edits.headers.written() {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    fields.insert(n, v);
                }
            }
        }
        fields.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        req
    }

    /// The call's deadline from its `grpc-timeout` field (`<digits><H|M|S|m|u|n>`).
    fn grpc_deadline(&self) -> Option<Instant> {
        let h = self
            .req
            .head
            .headers
            .iter()
            .find(|h| eq_ignore_case(&self.buf[h.name.clone()], b"grpc-timeout"))?;
        let v = crate::http::trim(&self.buf[h.value.clone()]);
        let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
        if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let d = match unit {
            b"H" => Duration::from_secs(n * 3600),
            b"M" => Duration::from_secs(n * 60),
            b"S" => Duration::from_secs(n),
            b"m" => Duration::from_millis(n),
            b"u" => Duration::from_micros(n),
            b"n" => Duration::from_nanos(n),
            _ => return None,
        };
        Instant::now().checked_add(d)
    }
}

/// Trailers carrying a gRPC status.
fn status_trailers(code: u32, message: &str) -> http::HeaderMap {
    let mut t = grpc_status_response(code, message).into_parts().0.headers;
    t.remove(http::header::CONTENT_TYPE);
    t
}

/// Relays the client's request messages (and trailers) to the upstream stream; a client
/// that resets its stream resets the upstream's.
async fn pump(mut from: RecvStream, mut to: SendStream<Bytes>, limit: Duration) {
    loop {
        match from.data().await {
            Some(Ok(data)) => {
                let n = data.len();
                if let Err(e) = send_flowing(&mut to, data, false, limit).await {
                    if matches!(e, IoFail::Timeout) {
                        to.send_reset(h2::Reason::CANCEL);
                    }
                    return;
                }
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(_)) => {
                to.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => {
                let _ = match from.trailers().await {
                    Ok(Some(t)) => to.send_trailers(t),
                    _ => to.send_data(Bytes::new(), true),
                };
                return;
            }
        }
    }
}
