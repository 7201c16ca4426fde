//! The order of a request's phases, in one function ([`Conn::handle`]): host and path,
//! routing, the plugins' rewrite / access / before_proxy phases, proxying (or an answer of
//! the gateway's own), the response phases, the access log.

use super::vars::RequestVars;
use crate::http::path::{needs_normalizing, normalize, BadPath};
use crate::log::access::Entry;
use crate::plugin::{Flow, Phase, RequestCtx, ResponseCtx};
use crate::route::{MatchInput, Route};
use crate::worker::Local;
use std::time::{Duration, Instant};

use super::session::Conn;

impl Conn {
    /// Serves the request whose head is parsed. Returns whether the connection stays open.
    pub(super) async fn handle(&mut self) -> bool {
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
    pub(super) fn run_plugins(
        &self,
        local: &Local,
        route: &Route,
    ) -> Result<Option<usize>, (u16, String)> {
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
    pub(super) fn filter_body(&self, data: &[u8]) {
        if let Some((local, index)) = &self.filters {
            let route = local.shared.router.route(*index);
            local
                .plugin_states
                .run_body([&local.shared.global, &route.plugins], data);
        }
    }

    /// The current request's variables (`uri`, `http_*`, `arg_*`, ...).
    pub(super) fn vars(&self) -> RequestVars<'_> {
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
    pub(super) fn route_path(&self) -> &[u8] {
        if self.path_normalized {
            &self.path_buf
        } else {
            self.head.path(&self.buf)
        }
    }
}
