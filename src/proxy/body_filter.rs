//! Relaying a response whose body the plugins change (a header_filter called
//! `ResponseEdits::change_body`): the upstream's body is decoded from its framing, each piece
//! passes through the body filters, and what they hand on goes to the client re-framed:
//! chunked to an HTTP/1.1 client, until close to an HTTP/1.0 one. The length is not known
//! before the last piece, so no Content-Length, and nothing is spliced.
//!
//! A body the filters only read (`ResponseEdits::observe_body`: proxy-cache storing it)
//! takes the same loop, but a Content-Length body goes out with its length, unframed.

use crate::http::chunked::ChunkedScanner;
use crate::http::response::ResponseFraming;
use crate::upstream::pool::UpstreamConn;
use crate::upstream::{Timeouts, UpstreamSpec};
use std::io::Write;
use std::time::Duration;

use super::ctx::Outcome;
use super::error::Abort;
use super::response::read_body;
use super::session::Conn;
use std::net::SocketAddr;

impl Conn {
    /// Sends the edited head and relays the body through the body filters.
    pub(super) async fn relay_changed(
        &mut self,
        mut upc: UpstreamConn,
        up: &UpstreamSpec,
        addr: SocketAddr,
        t: &Timeouts,
        outcome: Outcome,
    ) -> Outcome {
        let http10 = self.req.head.minor_version == 0;
        let framing = self.req.resp.framing();
        // A body only read by the filters (not changed) keeps its length.
        let keeps_length = !self.req.edits.response.body_changes()
            && matches!(framing, ResponseFraming::Length(_));
        // Otherwise an HTTP/1.0 client learns where the body ends from the close.
        let client_keep = (keeps_length || !http10)
            && !self.req.head.close
            && !self.req.early_answer
            && !self.worker.stopping();
        let mut reusable = !self.req.resp.close && !self.req.early_answer;
        self.linger |= self.req.early_answer;
        let sent_as = if keeps_length {
            framing
        } else if http10 {
            ResponseFraming::UntilClose
        } else {
            ResponseFraming::Chunked
        };
        self.build_client_head(&upc.buf, sent_as, false, client_keep, http10);
        upc.buf.drain(..self.req.resp.len);
        let mut relay = Relay {
            framing,
            chunked_out: !keeps_length && !http10,
            read: t.read,
            send: self.settings().send_timeout,
            outcome,
        };
        let result = self
            .relay_filtered(&mut upc, &mut relay, &mut reusable)
            .await;
        self.finish_relay(
            upc,
            result.is_ok(),
            reusable,
            client_keep,
            up,
            addr,
            relay.outcome,
        )
    }

    /// The body loop: payload out of the upstream's framing, through the filters, into the
    /// client's framing.
    async fn relay_filtered(
        &mut self,
        upc: &mut UpstreamConn,
        relay: &mut Relay,
        reusable: &mut bool,
    ) -> Result<(), Abort> {
        let mut piece = Vec::new();
        let mut scanner = ChunkedScanner::new();
        let mut remaining = match relay.framing {
            ResponseFraming::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            // 1. The payload bytes that arrived.
            let last = match relay.framing {
                ResponseFraming::None => true,
                ResponseFraming::Length(_) => {
                    let n = (upc.buf.len() as u64).min(remaining) as usize;
                    if upc.buf.len() > n {
                        // More bytes than announced: never relayed, never reused.
                        *reusable = false;
                    }
                    piece.extend_from_slice(&upc.buf[..n]);
                    upc.buf.clear();
                    remaining -= n as u64;
                    remaining == 0
                }
                ResponseFraming::Chunked => {
                    let data = &upc.buf;
                    let used = scanner
                        .advance(data, |r| piece.extend_from_slice(&data[r]))
                        .map_err(|_| Abort)?;
                    upc.buf.drain(..used);
                    if scanner.is_done() && !upc.buf.is_empty() {
                        *reusable = false;
                        upc.buf.clear();
                    }
                    scanner.is_done()
                }
                ResponseFraming::UntilClose => {
                    piece.extend_from_slice(&upc.buf);
                    upc.buf.clear();
                    false
                }
            };
            // 2 and 3. Through the filters, and out.
            self.pass_on(&mut piece, last, relay).await?;
            if last {
                return Ok(());
            }
            self.worker.pool.enlarge(&mut upc.buf);
            if read_body(upc, relay.read, &self.watch).await? == 0 {
                if relay.framing != ResponseFraming::UntilClose {
                    // Cut short: the client sees no last chunk (or the close), never a
                    // finished-looking body.
                    return Err(Abort);
                }
                return self.pass_on(&mut piece, true, relay).await;
            }
        }
    }

    /// Runs `piece` through the body filters and sends what they hand on (with the pending
    /// head, the first time), framed for the client; after the last piece, the end.
    async fn pass_on(
        &mut self,
        piece: &mut Vec<u8>,
        last: bool,
        relay: &mut Relay,
    ) -> Result<(), Abort> {
        self.filter_piece(piece, last);
        if !piece.is_empty() {
            if relay.chunked_out {
                // An empty chunk would end the body: only pieces with bytes are framed.
                let _ = write!(self.out, "{:x}\r\n", piece.len());
                self.out.extend_from_slice(piece);
                self.out.extend_from_slice(b"\r\n");
            } else {
                self.out.extend_from_slice(piece);
            }
            piece.clear();
        }
        if last && relay.chunked_out {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        if self.out.is_empty() {
            return Ok(());
        }
        self.send_out(relay.send, &mut relay.outcome).await
    }
}

/// One changed-body relay's shape.
struct Relay {
    /// The upstream's framing.
    framing: ResponseFraming,
    /// The client gets chunks (HTTP/1.1); otherwise the body ends at the close.
    chunked_out: bool,
    read: Duration,
    send: Duration,
    outcome: Outcome,
}
