//! Relaying the upstream's response: the client head, then the body in its framing
//! (Content-Length copied or spliced, chunked validated, close-delimited re-chunked), and
//! whether the upstream connection can go back to the pool.

use crate::http::chunked::ChunkedScanner;
use crate::http::response::ResponseFraming;
use crate::net::io::{read_more_timeout, write_all, write_range};
use crate::net::sockopt;
use crate::net::splice;
use crate::net::watchdog::Watch;
use crate::upstream::pool::{still_idle, UpstreamConn};
use crate::upstream::{Timeouts, UpstreamSpec};
use std::io::Write;
use std::time::Duration;

use super::ctx::Outcome;
use super::error::Abort;
use super::session::Conn;
use super::COALESCE_LIMIT;
use std::net::SocketAddr;

/// Reads more of a response body; 0 at end of stream. A timeout or error ends the exchange.
pub(super) async fn read_body(
    upc: &mut UpstreamConn,
    read: Duration,
    watch: &Watch,
) -> Result<usize, Abort> {
    read_more_timeout(&mut upc.stream, &mut upc.buf, 16 * 1024, read, watch)
        .await
        .map_err(|_| Abort)
}

impl Conn {
    /// Sends the response head and relays the body. Returns the request's outcome; the
    /// upstream connection goes back to the pool when the exchange ended cleanly.
    pub(super) async fn relay_response(
        &mut self,
        mut upc: UpstreamConn,
        up: &UpstreamSpec,
        addr: SocketAddr,
        t: &Timeouts,
        mut outcome: Outcome,
    ) -> Outcome {
        let status = self
            .req
            .edits
            .response
            .status
            .unwrap_or(self.req.resp.status);
        outcome.status = status;
        outcome.upstream_status = Some(self.req.resp.status);
        if let Some(body) = self.req.edits.response.body.take() {
            return self.send_replaced_body(upc, body, outcome).await;
        }
        let framing = self.req.resp.framing();
        if self.req.edits.response.body_filtered() && framing != ResponseFraming::None {
            return self.relay_changed(upc, up, addr, t, outcome).await;
        }
        let http10 = self.req.head.minor_version == 0;
        let dechunk = http10 && framing == ResponseFraming::Chunked;
        let client_keep = !self.req.head.close
            && !self.req.early_answer
            && !self.worker.stopping()
            && match framing {
                ResponseFraming::None | ResponseFraming::Length(_) => true,
                ResponseFraming::Chunked => !http10,
                // Re-chunked for HTTP/1.1 clients (see relay_until_close).
                ResponseFraming::UntilClose => !http10,
            };
        let mut upstream_reusable = !self.req.resp.close && !self.req.early_answer;
        // The client may still be sending the body the upstream did not take.
        self.linger |= self.req.early_answer;
        self.build_client_head(&upc.buf, framing, dechunk, client_keep, http10);
        let complete = match framing {
            ResponseFraming::None => true,
            ResponseFraming::Length(n) => (upc.buf.len() - self.req.resp.len) as u64 == n,
            _ => false,
        };
        // Not when more bytes from the client are already here (a pipelining client): the
        // close would then reset the connection, and a reset drops whatever the cork still
        // holds (the half-close sends it, but not always all of it at once).
        let pipelined = self.buf.len() > outcome.consumed.max(self.req.head.len);
        // Corked, a complete last answer's tail waits for the half-close right after, and the
        // FIN leaves in the same segment (7 packets per new-connection request instead of 9:
        // 7% less gateway CPU per request measured). Never for an answer still to be relayed:
        // a cork holds partial segments for up to 200 ms, which a streamed body would feel.
        if !client_keep && complete && !pipelined && !self.worker.stopping() {
            sockopt::set_cork(&self.stream);
            self.corked = true;
        }
        let head_len = self.req.resp.len;
        let send = self.settings().send_timeout;

        // Fast path: the whole body is already here and our head is no longer than the
        // upstream's: write our head over the end of theirs, so head and body leave in one
        // write without copying the body.
        if let ResponseFraming::Length(n) = framing {
            let body_here = (upc.buf.len() - head_len) as u64;
            if body_here == n && self.out.len() <= head_len {
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

    /// Sends the upstream's response head with a body a plugin gave instead of its own.
    /// The upstream's body is not read, so its connection is not reused.
    async fn send_replaced_body(
        &mut self,
        upc: UpstreamConn,
        mut body: Vec<u8>,
        mut outcome: Outcome,
    ) -> Outcome {
        if self.req.edits.response.body_changes() {
            self.filter_piece(&mut body, true);
        }
        let http10 = self.req.head.minor_version == 0;
        let keep = !self.req.head.close && !self.req.early_answer && !self.worker.stopping();
        self.linger |= self.req.early_answer;
        let framing = ResponseFraming::Length(body.len() as u64);
        self.build_client_head(&upc.buf, framing, false, keep, http10);
        self.worker.pool.discard(upc);
        if !self.req.head.is_head {
            self.out.extend_from_slice(&body);
        }
        let send = self.settings().send_timeout;
        let ok = self.send_out(send, &mut outcome).await.is_ok();
        outcome.keep_alive = ok && keep;
        outcome
    }

    /// After a relay: pools the upstream connection if the exchange ended cleanly, and
    /// settles whether the client connection stays open.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_relay(
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
    pub(super) async fn send_out(
        &mut self,
        send: Duration,
        outcome: &mut Outcome,
    ) -> Result<(), Abort> {
        outcome.bytes += self.out.len() as u64;
        write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .map_err(|_| Abort)?;
        self.out.clear();
        Ok(())
    }

    /// Writes `upc.buf[..n]` to the client, prefixed by the pending head in `self.out` when
    /// there is one (coalesced into one write when small).
    pub(super) async fn send_body(
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

    pub(super) async fn relay_length(
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
                self.send_body(upc, n, send, outcome).await?;
                remaining -= n as u64;
            }
            if remaining == 0 {
                return Ok(());
            }
            if remaining >= splice::MIN_SPLICE && self.settings().splice {
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
    pub(super) fn splice_ready(&mut self, upc: &mut UpstreamConn) -> bool {
        if self.stream.plain().is_none() || upc.stream.plain().is_none() {
            return false; // TLS bytes are encrypted in user space
        }
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
    pub(super) fn relay_shape(
        &self,
        read: Duration,
        send: Duration,
        deliver: bool,
    ) -> splice::Relay<'_> {
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
    pub(super) async fn splice_rest(
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
        let (sent, result) = splice::relay(
            &self.worker.pipes,
            upc.stream.plain()?,
            self.stream.plain()?,
            len,
            &how,
        )
        .await?;
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

    pub(super) async fn relay_chunked(
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
                    let out = &mut self.out;
                    let data = &upc.buf;
                    let used = scanner
                        .advance(data, |r| out.extend_from_slice(&data[r]))
                        .map_err(|_| Abort)?;
                    upc.buf.drain(..used);
                    if !self.out.is_empty() {
                        self.send_out(send, outcome).await?;
                    }
                } else {
                    let used = scanner.advance(&upc.buf, |_| {}).map_err(|_| Abort)?;
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
    pub(super) async fn relay_until_close(
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
                    let _ = write!(self.out, "{n:x}\r\n");
                    self.out.extend_from_slice(&upc.buf[..n]);
                    self.out.extend_from_slice(b"\r\n");
                    upc.buf.clear();
                }
                if !self.out.is_empty() {
                    self.send_out(send, outcome).await?;
                }
            } else if n > 0 || !self.out.is_empty() {
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
}
