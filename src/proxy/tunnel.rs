//! After a `101 Switching Protocols` (WebSocket): the upstream's 101 goes to the client, then
//! bytes flow both ways as they come, each direction on its own, until both sides have ended
//! theirs or the tunnel has been idle for the upstream read timeout (nginx's
//! `proxy_read_timeout` on an upgraded connection).
//!
//! One task drives both directions: it moves whatever can move now with non-blocking reads
//! and writes (`net::nonblock`), and when nothing can, waits for whichever socket becomes
//! readable or writable first. A direction whose source ended is half-closed on its
//! destination once its bytes are out, so a client that closes its sending side still gets
//! the rest of the server's messages. Plain and TLS on either side (ws and wss, to ws or wss
//! backends).
//!
//! A quiet tunnel holds no buffer: the client connection's and the upstream's buffers go
//! back when the tunnel starts, and each direction borrows a buffer from the core's spares
//! (`upstream::pool`) only while it has bytes in flight.

use crate::http::{eq_ignore_case, is_hop_by_hop, push_decimal};
use crate::net::io::write_all;
use crate::net::nonblock::Got;
use crate::net::stream::Stream;
use crate::upstream::pool::{Pool, UpstreamConn, SMALL_BUF};
use crate::upstream::Timeouts;
use std::io;
use std::time::Instant;

use super::ctx::Outcome;
use super::editor::{gateway_owned, put_header};
use super::session::Conn;

/// One direction of the tunnel: bytes read from its source that its destination has not
/// taken yet.
struct Flow {
    /// Borrowed from the pool's spares while bytes are in flight; empty (no allocation)
    /// while the direction is quiet.
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    /// The source ended its side.
    ended: bool,
    /// A TLS close_notify is queued on the destination.
    close_queued: bool,
    /// The destination's sending side has been closed (the direction is finished).
    closed: bool,
    /// Bytes delivered to the destination.
    total: u64,
}

impl Flow {
    fn new(pending: Vec<u8>) -> Flow {
        Flow {
            buf: pending,
            sent: 0,
            ended: false,
            close_queued: false,
            closed: false,
            total: 0,
        }
    }

    /// Moves what can move now from `src` to `dst`. Returns whether anything happened.
    fn step(&mut self, src: &mut Stream, dst: &mut Stream, pool: &Pool) -> io::Result<bool> {
        let mut moved = false;
        loop {
            if self.sent < self.buf.len() {
                let n = dst.try_write(&self.buf[self.sent..])?;
                if n == 0 {
                    return Ok(moved);
                }
                self.sent += n;
                self.total += n as u64;
                moved = true;
                continue;
            }
            // Everything read so far is out (TLS: its records too, checked below).
            self.buf.clear();
            self.sent = 0;
            if !dst.try_flush()? {
                return Ok(moved);
            }
            if self.ended {
                if self.closed {
                    return Ok(moved);
                }
                if !self.close_queued {
                    dst.queue_close();
                    self.close_queued = true;
                }
                if dst.try_flush()? {
                    dst.finish_write();
                    self.closed = true;
                    moved = true;
                }
                return Ok(moved);
            }
            if self.buf.capacity() == 0 {
                self.buf = pool.buffer();
            }
            match src.try_read(&mut self.buf, SMALL_BUF)? {
                Got::Data(_) => moved = true,
                Got::End => {
                    self.ended = true;
                    moved = true;
                }
                Got::Nothing => {
                    // Quiet: the buffer goes back until the source has bytes again.
                    pool.recycle(std::mem::take(&mut self.buf));
                    return Ok(moved);
                }
            }
        }
    }

    /// Waiting on the source makes sense (nothing pending, not ended).
    fn wants_read(&self) -> bool {
        !self.ended && self.sent >= self.buf.len()
    }

    /// Waiting on the destination makes sense (bytes or a close pending).
    fn wants_write(&self) -> bool {
        !self.closed && (self.sent < self.buf.len() || self.ended)
    }
}

impl Conn {
    /// Relays the upstream's 101 and then both directions until the tunnel ends. The
    /// connection closes after (it is no longer HTTP).
    pub(super) async fn tunnel(
        &mut self,
        mut upc: UpstreamConn,
        t: &Timeouts,
        mut outcome: Outcome,
    ) -> Outcome {
        outcome.status = 101;
        outcome.upstream_status = Some(101);
        outcome.keep_alive = false;
        self.build_switch_head(&upc.buf);
        let head_len = self.out.len() as u64;
        let send = self.settings().send_timeout;
        if write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .is_err()
        {
            self.worker.pool.discard(upc);
            return outcome;
        }
        outcome.bytes = head_len;
        // What either side sent after its head belongs to the new protocol.
        let from_upstream = upc.buf.split_off(self.req.resp.len.min(upc.buf.len()));
        let head_end = self.req.head.len.min(self.buf.len());
        let from_client = self.buf.split_off(head_end);
        // The connection's buffers are not needed any more: only the request head stays
        // (the access log reads it), in a buffer of its size.
        self.buf.shrink_to_fit();
        self.out = Vec::new();
        self.worker.pool.recycle(std::mem::take(&mut upc.buf));
        let mut up = Flow::new(from_client);
        let mut down = Flow::new(from_upstream);
        let ready = self.stream.make_nonblocking().is_ok() && upc.stream.make_nonblocking().is_ok();
        if ready {
            let end = self
                .relay_both(&mut upc.stream, &mut up, &mut down, t)
                .await;
            if let Err(e) = end {
                crate::info!("websocket tunnel from {} ended: {e}", self.peer_ip);
            }
        }
        outcome.bytes += down.total;
        outcome.consumed = self.buf.len();
        self.worker.pool.discard(upc);
        outcome
    }

    /// The loop: move, else wait for a socket or the idle deadline.
    async fn relay_both(
        &mut self,
        upstream: &mut Stream,
        up: &mut Flow,
        down: &mut Flow,
        t: &Timeouts,
    ) -> io::Result<()> {
        let idle = t.read;
        let mut last = Instant::now();
        loop {
            let pool = &self.worker.pool;
            let a = up.step(&mut self.stream, upstream, pool)?;
            let b = down.step(upstream, &mut self.stream, pool)?;
            if up.closed && down.closed {
                return Ok(());
            }
            if a || b {
                last = Instant::now();
                continue;
            }
            let left = idle.saturating_sub(last.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
            let client = &self.stream;
            let upstream = &*upstream;
            monoio::select! {
                r = when(up.wants_read(), client.readable()) => r?,
                r = when(up.wants_write(), upstream.writable()) => r?,
                r = when(down.wants_read(), upstream.readable()) => r?,
                r = when(down.wants_write(), client.writable()) => r?,
                _ = monoio::time::sleep(left) => {}
            }
        }
    }

    /// The 101 for the client: the upstream's status line and fields, less hop-by-hop ones
    /// and plus the plugins' header edits, with the upstream's `Upgrade` and
    /// `Connection: upgrade`.
    fn build_switch_head(&mut self, src: &[u8]) {
        let out = &mut self.out;
        let resp = &self.req.resp;
        let edits = &self.req.edits.response;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, 101);
        out.push(b' ');
        let reason = &src[resp.reason.clone()];
        match reason.is_empty() {
            true => out.extend_from_slice(b"Switching Protocols"),
            false => out.extend_from_slice(reason),
        }
        out.extend_from_slice(b"\r\n");
        let mut protocol: &[u8] = b"websocket";
        for h in &resp.headers {
            let name = &src[h.name.clone()];
            if eq_ignore_case(name, b"upgrade") {
                protocol = &src[h.value.clone()];
                continue;
            }
            if is_hop_by_hop(name)
                || resp.listed_in_connection(src, name)
                || eq_ignore_case(name, b"content-length")
                || edits.headers.drops(name)
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&src[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in edits.headers.written() {
            if !gateway_owned(name.as_bytes()) {
                put_header(out, name, value);
            }
        }
        out.extend_from_slice(b"Upgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\nConnection: upgrade\r\n\r\n");
    }
}

/// `fut` when `on`, else a future that never completes (a `select!` branch turned off).
async fn when<F: std::future::Future>(on: bool, fut: F) -> F::Output {
    match on {
        true => fut.await,
        false => std::future::pending().await,
    }
}
