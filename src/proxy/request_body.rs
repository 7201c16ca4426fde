//! The request body: how much of it is already here, reading small bodies whole before any
//! upstream is involved (so they can be replayed and a slow client holds no backend), and
//! sending head and body upstream (copied, re-chunked or spliced).

use crate::http::chunked::ChunkedScanner;
use crate::http::request::{BodyFraming, RequestError};
use crate::net::io::{read_more_timeout, write_all, write_all_counted, write_range};
use crate::net::splice;
use crate::upstream::pool::UpstreamConn;
use crate::upstream::{Node, Timeouts, UpstreamSpec};
use std::time::Duration;

use super::editor::put_chunk;
use super::error::ProxyError;
use super::session::Conn;
use super::BODY_CHUNK;

/// Where a whole request body is (see [`Conn::whole_body`]).
pub(super) enum BodyAt {
    Buffer(std::ops::Range<usize>),
    Decoded,
}

/// How a request's body sits in the client buffer when forwarding starts.
pub(super) struct BodyState {
    /// The whole body is already in `buf[head.len..end]`: it can be replayed on a retry.
    pub(super) complete: bool,
    /// End of the body bytes in `buf` (when complete) or of what has arrived so far.
    pub(super) end: usize,
    /// For a Content-Length body not yet complete, bytes still to come after `end`.
    pub(super) remaining: u64,
}

impl Conn {
    /// How much of the body is already here.
    pub(super) fn body_state(&self) -> Result<BodyState, RequestError> {
        let start = self.req.head.len;
        let avail = self.buf.len() - start;
        Ok(match self.req.head.body {
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

    /// Reads the rest of a Content-Length body of `len` bytes into the client buffer, answering
    /// `Expect: 100-continue` first.
    pub(super) async fn read_small_body(&mut self, len: usize) -> Result<(), ProxyError> {
        let (body_timeout, send_timeout) = {
            let s = self.settings();
            (s.client_body_timeout, s.send_timeout)
        };
        self.send_continue(send_timeout).await?;
        let end = self.req.head.len + len;
        while self.buf.len() < end {
            self.read_body_bytes(end - self.buf.len(), body_timeout)
                .await?;
        }
        Ok(())
    }

    /// One read of request body bytes into the client buffer (at least `min_spare` free).
    pub(super) async fn read_body_bytes(
        &mut self,
        min_spare: usize,
        body_timeout: Duration,
    ) -> Result<(), ProxyError> {
        match read_more_timeout(
            &mut self.stream,
            &mut self.buf,
            min_spare,
            body_timeout,
            &self.watch,
        )
        .await
        {
            Ok(0) => Err(ProxyError::ClientGone),
            Err(e) => Err(ProxyError::client_read(e)),
            Ok(_) => Ok(()),
        }
    }

    /// Answers `Expect: 100-continue` (once) before the body is read.
    pub(super) async fn send_continue(&mut self, send_timeout: Duration) -> Result<(), ProxyError> {
        if self.req.head.expect_continue {
            self.req.head.expect_continue = false;
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            write_all(&mut self.stream, &mut self.out, send_timeout, &self.watch)
                .await
                .map_err(|_| ProxyError::ClientGone)?;
        }
        Ok(())
    }

    /// Reads the whole body into the client buffer when it is no larger than `limit` (for
    /// plugins that read bodies). A larger body is left to stream; a malformed one is the
    /// proxy step's to refuse.
    pub(super) async fn buffer_body(&mut self, limit: usize) -> Result<(), ProxyError> {
        match self.body_state() {
            Ok(b) if !b.complete => {}
            _ => return Ok(()),
        }
        match self.req.head.body {
            BodyFraming::Length(n) if n <= limit as u64 => self.read_small_body(n as usize).await,
            BodyFraming::Chunked => self.read_small_chunked(limit).await,
            _ => Ok(()),
        }
    }

    /// Where the whole body is, when all of it has arrived and it is no larger than
    /// `limit`: its bytes in the client buffer, or (chunked) its payload decoded into
    /// `edits.decoded_body`.
    pub(super) fn whole_body(&mut self, limit: usize) -> Option<BodyAt> {
        let b = self.body_state().ok().filter(|b| b.complete)?;
        let start = self.req.head.len;
        if self.req.head.body != BodyFraming::Chunked {
            return (b.end - start <= limit).then_some(BodyAt::Buffer(start..b.end));
        }
        let out = &mut self.req.edits.decoded_body;
        out.clear();
        let data = &self.buf[start..b.end];
        ChunkedScanner::new()
            .advance(data, |r| out.extend_from_slice(&data[r]))
            .ok()?;
        (out.len() <= limit).then_some(BodyAt::Decoded)
    }

    /// Reads a chunked body into the client buffer until it is complete or more than
    /// `limit` bytes of it are here (the rest is then streamed). Errors as
    /// [`Conn::read_small_body`]; a malformed body is the caller's to find.
    pub(super) async fn read_small_chunked(&mut self, limit: usize) -> Result<(), ProxyError> {
        let (body_timeout, send_timeout) = {
            let s = self.settings();
            (s.client_body_timeout, s.send_timeout)
        };
        self.send_continue(send_timeout).await?;
        loop {
            match self.body_state() {
                Ok(b) if !b.complete && self.buf.len() - self.req.head.len <= limit => {}
                _ => return Ok(()),
            }
            self.read_body_bytes(16 * 1024, body_timeout).await?;
        }
    }

    /// Sends head and body on `upc`. Body bytes beyond what is buffered are streamed from the
    /// client, after which the request can no longer be replayed.
    pub(super) async fn send_request(
        &mut self,
        upc: &mut UpstreamConn,
        up: &UpstreamSpec,
        node: &Node,
        body: &mut BodyState,
        t: &Timeouts,
        streamed: &mut bool,
    ) -> Result<(), ProxyError> {
        if !body.complete && self.req.edits.request.body.take().is_some() {
            crate::warn!("a plugin replaced a request body still streaming in: ignored");
        }
        self.build_upstream_head(up, node);
        let body_start = self.req.head.len;
        // Chunked bodies are re-encoded canonically (plain sizes, no extensions, no trailers),
        // so the upstream never sees framing details that a lenient parser could read
        // differently; their payload passes unchanged.
        let chunked = self.req.head.body == BodyFraming::Chunked;
        let mut encoder = ChunkedScanner::new();
        if let Some(replaced) = &self.req.edits.request.body {
            self.out.extend_from_slice(replaced);
        } else if chunked {
            let (buf, out) = (&self.buf, &mut self.out);
            let data = &buf[body_start..body.end];
            encoder
                .advance(data, |r| put_chunk(out, &data[r]))
                .map_err(|_| ProxyError::BadChunkedBody)?;
            if encoder.is_done() {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            self.out.extend_from_slice(&self.buf[body_start..body.end]);
        }
        upc.served += 1;
        write_all_counted(&mut upc.stream, &mut self.out, t.send, &self.watch)
            .await
            .map_err(|(e, written)| match ProxyError::upstream_send(e) {
                ProxyError::Send(e) if written > 0 => ProxyError::SendPartial(e),
                f => f,
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
        if self.req.head.expect_continue {
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            write_all(&mut self.stream, &mut self.out, send_timeout, &self.watch)
                .await
                .map_err(|_| ProxyError::ClientGone)?;
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
                Ok(0) => return Err(ProxyError::ClientGone),
                Err(e) => return Err(ProxyError::client_read(e)),
                Ok(_) => {}
            }
            let (take, done) = if chunked {
                self.out.clear();
                let (buf, out) = (&self.buf, &mut self.out);
                let new = &buf[body_start..];
                let used = encoder
                    .advance(new, |r| put_chunk(out, &new[r]))
                    .map_err(|_| ProxyError::BadChunkedBody)?;
                let done = encoder.is_done();
                if done {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write_all(&mut upc.stream, &mut self.out, t.send, &self.watch)
                    .await
                    .map_err(ProxyError::upstream_send)?;
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
                .map_err(ProxyError::upstream_send)?;
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

    /// Forwards the rest of a Content-Length request body (`len` bytes still in the client's
    /// socket) with splice(2). `None` when no pipe could be had (the caller copies instead).
    pub(super) async fn splice_request_body(
        &mut self,
        upc: &mut UpstreamConn,
        len: u64,
        body_timeout: Duration,
        send: Duration,
    ) -> Option<Result<(), ProxyError>> {
        if !self.splice_ready(upc) {
            return None;
        }
        let how = self.relay_shape(body_timeout, send, false);
        let (_, result) = splice::relay(
            &self.worker.pipes,
            self.stream.plain()?,
            upc.stream.plain()?,
            len,
            &how,
        )
        .await?;
        Some(match result {
            Ok(()) => Ok(()),
            Err(splice::RelayError::Source(e)) => Err(ProxyError::client_read(e)),
            Err(splice::RelayError::Destination(e)) => Err(ProxyError::upstream_send(e)),
        })
    }
}
