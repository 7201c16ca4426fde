//! The order of a request's phases, in one function ([`Conn::handle`]): host and path,
//! routing, the plugins' rewrite / access / before_proxy phases, proxying (or an answer of
//! the gateway's own), the response phases, the access log.

use super::vars::{RequestVars, ResponseVars};
use crate::http::path::{needs_normalizing, normalize, BadPath};
use crate::log::access::Entry;
use crate::plugin::{
    Answer, BodyCtx, Chain, Flow, LogCtx, Phase, PhaseSet, RequestCtx, RequestHeaders, ResponseCtx,
    ResponseHeaders, EMPTY_CHAIN,
};
use crate::route::{MatchInput, Route};
use crate::worker::state::Local;
use std::time::{Duration, Instant};

use super::ctx::{Ctx, Edits, Outcome};
use super::request_body::BodyAt;
use super::session::Conn;

impl Conn {
    /// Serves the request whose head is parsed: every phase, in order. Returns whether the
    /// connection stays open.
    pub(super) async fn handle(&mut self) -> bool {
        self.linger = false;
        // The request runs on the snapshot current now, to its end, whatever reloads come.
        self.req.begin(self.worker.current());
        let local = self.req.local.clone();
        // Clock reads cost about 1% of a small request each: only when the access log or a
        // plugin (metrics, loggers) wants the time.
        let start = (self.worker.log.enabled() || local.shared.timed).then(Instant::now);

        // 1. Host and path: the lower-case host without port; the path normalized as nginx's
        //    $uri (a path that cannot be is a 400).
        self.set_host();
        if let Err(BadPath(why)) = self.normalize_path() {
            let outcome = self.local_error(400, why, None).await;
            return self.finish(outcome, None, start);
        }

        // 2. Routing.
        let route = self.find_route(&local);

        // 3. The request body, read whole first when a plugin reads it (request-validation).
        // 4. Plugins: rewrite, access, before_proxy; any may answer, or choose the upstream.
        // 5. Proxying, or an answer of the gateway's own.
        self.req.route = route.map(|r| r.index);
        let route_chain = route.map_or(&EMPTY_CHAIN, |r| &r.plugins);
        // Plugins that see the request or the response run their phases (and their edits
        // are reset after); log-only ones (metrics, loggers) leave both paths as they are
        // without plugins and run at the end.
        let uses = local.shared.global.uses.with(route_chain.uses);
        self.req.plugins = uses.has(PhaseSet::REQUEST_AND_RESPONSE);
        let logs = uses.has(PhaseSet::LOG);
        let outcome = 'serve: {
            let reads_body = local.shared.global.reads_body.max(route_chain.reads_body);
            if let Some(limit) = reads_body {
                if let Err(e) = self.buffer_body(limit).await {
                    break 'serve self.client_failed(e, Outcome::default()).await;
                }
            }
            let decision = if self.req.plugins {
                let upstream = route.and_then(|r| r.upstream);
                self.run_plugins(&local, route_chain, upstream, reads_body)
                    .await
            } else {
                Ok(route.and_then(|r| r.upstream))
            };
            match (route, decision) {
                (_, Err(answer)) => {
                    let end = self.buffered_body_end();
                    self.answer(answer, end).await
                }
                // Global rules run for a request no route matched, as in APISIX; still a 404.
                (None, Ok(_)) => {
                    let end = self.buffered_body_end();
                    self.local_error(404, "404 Route Not Found", end).await
                }
                (Some(_), Ok(None)) => {
                    let end = self.buffered_body_end();
                    let why = "missing upstream configuration in Route or Service";
                    self.local_error(503, why, end).await
                }
                (Some(route), Ok(Some(ui))) => self.proxy(&local, route, ui).await,
            }
        };

        // 6. The log phase of the plugins, then the access log. (After plugins that saw the
        //    request, their per-request values are dropped here: limit-conn's count is
        //    released when its slot is.)
        if self.req.plugins || logs {
            // The consumer's own plugins may log too.
            let merged = self.req.merged.clone();
            let route_chain = request_chain(&merged, self.req.route, &local);
            let global = &local.shared.global;
            if global.uses.with(route_chain.uses).has(PhaseSet::LOG) {
                self.log_phase(&local, route_chain, route, &outcome, start);
            }
            if self.req.plugins {
                self.req.edits.slots.clear();
            }
        }
        self.finish(outcome, route.map(|r| &*r.id), start)
    }

    /// The log phase of the plugins of `route_chain` and the global rules.
    fn log_phase(
        &mut self,
        local: &Local,
        route_chain: &Chain,
        route: Option<&Route>,
        outcome: &Outcome,
        start: Option<Instant>,
    ) {
        let worker = self.worker.clone();
        let (request, edits, _) = self.request_parts();
        let served = crate::metrics::Served {
            route,
            path: request.path,
            host: request.host,
            consumer: request.consumer.get().map(|c| &**c),
            status: outcome.status,
            node: outcome.upstream,
            upstream_status: outcome.upstream_status,
            latency: start.map_or(Duration::ZERO, |t| t.elapsed()),
            upstream_latency: outcome.upstream_latency,
            request_bytes: outcome.consumed.max(request.head.len) as u64,
            bytes_sent: outcome.bytes,
        };
        let headers = RequestHeaders {
            buf: request.buf,
            fields: &request.head.headers,
        };
        let vars = ResponseVars::new(request, outcome.status, ResponseHeaders::Gateway(&[]));
        let mut ctx = LogCtx {
            status: outcome.status,
            slots: &mut edits.slots,
            served: &served,
            vars: &vars,
            headers,
            metrics: &worker.metrics,
            metrics_recorded: false,
        };
        local
            .plugin_states
            .log([&local.shared.global, route_chain], &mut ctx);
    }

    /// Logs the request and drops its bytes from the buffer when the connection goes on.
    /// Returns whether it does.
    fn finish(&mut self, outcome: Outcome, route: Option<&str>, start: Option<Instant>) -> bool {
        if outcome.retries > 0 {
            let shard = self.worker.metrics.shard();
            crate::metrics::bump(&shard.retries, u64::from(outcome.retries));
        }
        if self.worker.log.enabled() {
            self.worker.log.log(&Entry {
                remote: self.remote_ip(),
                method: &self.buf[self.req.head.method.clone()],
                uri: self.req.head.target(&self.buf),
                protocol: self.protocol(),
                host: &self.req.host_lc,
                status: outcome.status,
                bytes: outcome.bytes,
                latency: start.map_or(Duration::ZERO, |t| t.elapsed()),
                route,
                upstream: outcome.upstream,
                upstream_status: outcome.upstream_status,
                upstream_latency: outcome.upstream_latency,
                retries: outcome.retries,
            });
        }
        // The head (and the body, when forwarded) are consumed; keep what follows.
        if outcome.keep_alive {
            let consumed = outcome.consumed.max(self.req.head.len).min(self.buf.len());
            self.buf.drain(..consumed);
        }
        outcome.keep_alive
    }

    /// Sets the lower-case Host without its port.
    fn set_host(&mut self) {
        self.req.host_lc.clear();
        let host = &self.buf[self.req.head.host.clone()];
        let without_port = match host.iter().rposition(|&b| b == b':') {
            Some(i) if host.first() != Some(&b'[') => &host[..i],
            _ => host,
        };
        self.req
            .host_lc
            .extend(without_port.iter().map(|b| b.to_ascii_lowercase()));
    }

    /// Normalizes the path when it needs it (percent-decoding, dot segments, slashes).
    fn normalize_path(&mut self) -> Result<(), BadPath> {
        self.req.path_normalized = needs_normalizing(self.req.head.path(&self.buf));
        if self.req.path_normalized {
            let raw = self.req.head.path(&self.buf);
            normalize(raw, &mut self.req.path_buf)?;
        }
        Ok(())
    }

    /// The route for this request, if any.
    fn find_route<'l>(&self, local: &'l Local) -> Option<&'l Route> {
        let vars = self.vars();
        local.shared.router.find(&MatchInput {
            path: self.route_path(),
            host: &self.req.host_lc,
            method: &self.buf[self.req.head.method.clone()],
            remote: self.peer.ip(),
            vars: &vars,
        })
    }

    /// Runs the rewrite, access and before_proxy phases of the global and route plugins
    /// (`reads_body`: one of them reads bodies up to this size). Returns the upstream to use,
    /// or the answer a plugin gave.
    pub(super) async fn run_plugins(
        &mut self,
        local: &Local,
        route_chain: &Chain,
        upstream: Option<usize>,
        reads_body: Option<usize>,
    ) -> Result<Option<usize>, Answer> {
        let body_at = reads_body.and_then(|limit| self.whole_body(limit));
        let peer = self.peer.ip();
        let (vars, edits) = self.vars_and_edits();
        let body = body_at.map(|at| match at {
            BodyAt::Buffer(r) => &vars.buf[r],
            BodyAt::Decoded => &edits.decoded_body[..],
        });
        let mut ctx = RequestCtx {
            vars: &vars,
            headers: RequestHeaders {
                buf: vars.buf,
                fields: &vars.head.headers,
            },
            body,
            upstream,
            request: &mut edits.request,
            response: &mut edits.response,
            remote_addr: vars.real_ip,
            consumer: vars.consumer,
            peer,
            slots: &mut edits.slots,
        };
        let global = &local.shared.global;
        let states = &local.plugin_states;
        let mut merged = None;
        let mut chain = route_chain;
        for phase in [Phase::Rewrite, Phase::Access, Phase::BeforeProxy] {
            let chains = [global, chain];
            let flow = match global.awaits || chain.awaits {
                true => states.run(chains, phase, &mut ctx).await,
                false => states.run_now(chains, phase, &mut ctx),
            };
            if let Flow::Respond(answer) = flow {
                return Err(answer);
            }
            // Authenticated as a consumer with plugins of its own: they run their rewrite
            // phase now, then the merged chain goes on (APISIX's merge of consumer and
            // route).
            let consumers = &local.shared.consumer_chains;
            if phase == Phase::Rewrite && !consumers.is_empty() {
                if let Some(own) = ctx.consumer.get().and_then(|c| consumers.get(&c.username)) {
                    let flow = states.run([&EMPTY_CHAIN, own], phase, &mut ctx).await;
                    if let Flow::Respond(answer) = flow {
                        return Err(answer);
                    }
                    chain = &**merged.insert(std::rc::Rc::new(Chain::merged(route_chain, own)));
                }
            }
        }
        let upstream = ctx.upstream;
        self.req.merged = merged;
        Ok(upstream)
    }

    /// Runs the plugins' header_filter on a response about to go out with `status`: the
    /// upstream's (its head parsed in `req.resp`, its bytes in `upstream_buf`), or one the
    /// gateway made (`gateway`: its header fields). Returns the status to send.
    pub(super) fn response_phase(
        &mut self,
        status: u16,
        upstream_buf: &[u8],
        gateway: Option<&[(String, String)]>,
    ) -> u16 {
        if !self.req.plugins {
            return status;
        }
        let local = self.req.local.clone();
        let merged = self.req.merged.clone();
        let route_chain = request_chain(&merged, self.req.route, &local);
        let (request, edits, resp) = self.request_parts();
        let headers = match gateway {
            Some(fields) => ResponseHeaders::Gateway(fields),
            None => ResponseHeaders::Upstream {
                buf: upstream_buf,
                head: resp,
            },
        };
        let vars = ResponseVars::new(request, status, headers);
        let mut ctx = ResponseCtx {
            vars: &vars,
            status,
            by_gateway: gateway.is_some(),
            headers,
            response: &mut edits.response,
            slots: &mut edits.slots,
        };
        local
            .plugin_states
            .header_filter([&local.shared.global, route_chain], &mut ctx);
        ctx.status
    }

    /// Passes a piece of the response body through the plugins' body filters (only when a
    /// header_filter asked to change the body). `last`: the body ends with this piece.
    pub(super) fn filter_piece(&mut self, data: &mut Vec<u8>, last: bool) {
        let local = &self.req.local;
        let route_chain = request_chain(&self.req.merged, self.req.route, local);
        let mut ctx = BodyCtx {
            data,
            last,
            slots: &mut self.req.edits.slots,
        };
        local
            .plugin_states
            .body_filter([&local.shared.global, route_chain], &mut ctx);
    }

    /// The request's variables, beside the plugins' edits (borrowed apart, so a phase can
    /// read the one and change the other).
    pub(super) fn vars_and_edits(&mut self) -> (RequestVars<'_>, &mut Edits) {
        let (vars, edits, _) = self.request_parts();
        (vars, edits)
    }

    /// The request's variables, the plugins' edits and the upstream's response head, borrowed
    /// apart.
    fn request_parts(
        &mut self,
    ) -> (
        RequestVars<'_>,
        &mut Edits,
        &crate::http::response::ResponseHead,
    ) {
        let Ctx {
            head,
            host_lc,
            path_buf,
            path_normalized,
            edits,
            real_ip,
            consumer,
            resp,
            local,
            route,
            ..
        } = &mut self.req;
        let route = route.map(|i| local.shared.router.route(i));
        let real_ip = &*real_ip;
        let consumer = &*consumer;
        let path = if *path_normalized {
            &path_buf[..]
        } else {
            head.path(&self.buf)
        };
        let vars = RequestVars {
            buf: &self.buf,
            head,
            path,
            host: host_lc,
            remote_ip: &self.peer_ip,
            real_ip,
            consumer,
            server_port: &self.local_port,
            tls: self.stream.tls_facts(),
            route,
        };
        (vars, edits, resp)
    }

    /// The current request's variables (`uri`, `http_*`, `arg_*`, ...).
    pub(super) fn vars(&self) -> RequestVars<'_> {
        RequestVars {
            buf: &self.buf,
            head: &self.req.head,
            path: self.route_path(),
            host: &self.req.host_lc,
            remote_ip: &self.peer_ip,
            real_ip: &self.req.real_ip,
            consumer: &self.req.consumer,
            server_port: &self.local_port,
            tls: self.stream.tls_facts(),
            route: self
                .req
                .route
                .map(|i| self.req.local.shared.router.route(i)),
        }
    }

    /// The request's protocol as nginx's `$server_protocol` names it.
    pub(super) fn protocol(&self) -> &'static str {
        match (&self.stream, self.req.head.minor_version) {
            (crate::net::stream::Stream::H2(_), _) => "HTTP/2.0",
            (_, 0) => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    }

    /// The path routing and the `uri` variable see: normalized when the raw one needed it.
    pub(super) fn route_path(&self) -> &[u8] {
        if self.req.path_normalized {
            &self.req.path_buf
        } else {
            self.req.head.path(&self.buf)
        }
    }
}

/// The plugins of a request's route (`route`), or the chain merged with its consumer's.
fn request_chain<'l>(
    merged: &'l Option<std::rc::Rc<Chain>>,
    route: Option<usize>,
    local: &'l Local,
) -> &'l Chain {
    match (merged, route) {
        (Some(merged), _) => merged,
        (None, Some(i)) => &local.shared.router.route(i).plugins,
        (None, None) => &EMPTY_CHAIN,
    }
}
