//! Answers the gateway makes itself (no route, no upstream, refused requests, upstream
//! failures): APISIX's `{"error_msg": ...}` bodies, and whether the connection can go on
//! after them.

use crate::http::{push_decimal, reason_phrase};
use crate::net::io::write_all;
use crate::plugin::Answer;
use crate::upstream::UpstreamSpec;

use super::ctx::Outcome;
use super::editor::{put_header, put_upstream_status};
use super::error::ProxyError;
use super::request_body::BodyState;
use super::session::Conn;

impl Conn {
    /// End of the request body in the buffer when all of it has arrived (so the connection
    /// can go on after an error answer); `None` when some of it is still to come.
    pub(super) fn buffered_body_end(&self) -> Option<usize> {
        self.body_state().ok().filter(|b| b.complete).map(|b| b.end)
    }

    /// Answers with a gateway-made error (APISIX's `{"error_msg": ...}` body). `body_end`
    /// is where this request's bytes end in the buffer when they have all been read; without
    /// it the connection closes (after draining what the client is still sending, so it sees
    /// the answer).
    pub(super) async fn local_error(
        &mut self,
        status: u16,
        msg: &str,
        body_end: Option<usize>,
    ) -> Outcome {
        self.answer(Answer::error(status, msg), body_end).await
    }

    /// Sends an answer the gateway makes (an error, or a plugin's): the plugins'
    /// header_filter sees it first and may change it, as it would an upstream's response.
    pub(super) async fn answer(&mut self, mut answer: Answer, body_end: Option<usize>) -> Outcome {
        let keep = body_end.is_some() && !self.req.head.close && !self.worker.stopping();
        self.linger = body_end.is_none();
        answer.status = self.response_phase(answer.status, &[], Some(&answer.headers));
        if let Some(body) = self.req.edits.response.body.take() {
            answer.body = body;
        }
        if self.req.edits.response.body_changes() {
            // The whole body is here: one last piece, and its length is known after.
            self.filter_piece(&mut answer.body, true);
        }
        let edits = &mut self.req.edits.response;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(answer.status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(answer.status).as_bytes());
        out.extend_from_slice(b"\r\nServer: shardgate\r\n");
        for (name, value) in &answer.headers {
            if !edits.headers.drops(name.as_bytes()) {
                put_header(out, name, value);
            }
        }
        for (name, value) in edits.headers.written() {
            put_header(out, name, value);
        }
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, answer.body.len() as u64);
        out.extend_from_slice(b"\r\n");
        put_upstream_status(out, &self.req.up_statuses);
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.req.head.is_head {
            out.extend_from_slice(&answer.body);
        }
        let bytes = self.out.len() as u64;
        let send = self.settings().send_timeout;
        let ok = write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .is_ok();
        Outcome {
            status: answer.status,
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
