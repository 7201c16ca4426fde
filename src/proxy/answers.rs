//! Answers the gateway makes itself (no route, no upstream, refused requests, upstream
//! failures): APISIX's `{"error_msg": ...}` bodies, and whether the connection can go on
//! after them.

use crate::http::error_page::write_error_with;
use crate::net::io::write_all;
use crate::upstream::UpstreamSpec;

use super::ctx::Outcome;
use super::editor::put_upstream_status;
use super::error::ProxyError;
use super::request_body::BodyState;
use super::session::Conn;

impl Conn {
    /// End of the request body in the buffer when all of it has arrived (so the connection
    /// can go on after an error answer); `None` when some of it is still to come.
    pub(super) fn buffered_body_end(&self) -> Option<usize> {
        self.body_state().ok().filter(|b| b.complete).map(|b| b.end)
    }

    /// Answers with a gateway-made error. `body_end` is where this request's bytes end in the
    /// buffer when they have all been read; without it the connection closes (after
    /// draining what the client is still sending, so it sees the answer).
    pub(super) async fn local_error(
        &mut self,
        status: u16,
        msg: &str,
        body_end: Option<usize>,
    ) -> Outcome {
        let keep = body_end.is_some() && !self.req.head.close && !self.worker.stopping();
        self.linger = body_end.is_none();
        self.out.clear();
        let mut extra = Vec::new();
        put_upstream_status(&mut extra, &self.req.up_statuses);
        write_error_with(
            &mut self.out,
            status,
            msg,
            !keep,
            self.req.head.is_head,
            &extra,
        );
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

    pub(super) async fn fail(
        &mut self,
        f: ProxyError,
        outcome: Outcome,
        retries: u32,
        body: &BodyState,
        up: &UpstreamSpec,
    ) -> Outcome {
        let status = f.status();
        if let ProxyError::ClientGone = f {
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
        if let (Some(checks), Some(&last)) = (&up.checks, self.req.tried.last()) {
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

    /// Ends a request whose client side failed: a client that is gone gets nothing (499 in
    /// the access log); otherwise an error answer, and the connection closes (its framing is
    /// in doubt). `so_far` carries what the attempts left (upstream, retries).
    pub(super) async fn client_failed(&mut self, e: ProxyError, so_far: Outcome) -> Outcome {
        if let ProxyError::ClientGone = e {
            return Outcome {
                status: e.status(),
                keep_alive: false,
                ..so_far
            };
        }
        let mut o = self.local_error(e.status(), &e.message(), None).await;
        o.upstream = so_far.upstream;
        o.retries = so_far.retries;
        o
    }
}
