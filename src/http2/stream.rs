//! One HTTP/2 stream seen by the request path as a connection carrying one HTTP/1.1
//! exchange, so routing, plugins, balancers, retries, timeouts and logging serve h2 exactly
//! as they serve HTTP/1.1, from one code path.
//!
//! Reading gives the request as HTTP/1.1: a head made from the pseudo-headers and fields,
//! then the body from DATA frames (with its Content-Length, or chunked, with the request's
//! trailers in the chunked trailer section). Flow-control capacity is given back as the
//! session reads, so a stream holds at most its window plus the session's buffer.
//!
//! Writing takes the HTTP/1.1 response the session writes: the head becomes a HEADERS frame
//! (hop-by-hop fields dropped), the body DATA frames, sent as the client's window allows,
//! and a chunked body's trailer section becomes trailing HEADERS (gRPC's `grpc-status`).
//! The session frames every response it writes (Content-Length or chunked), so where the
//! response ends is never guessed.

use crate::http::chunked::ChunkedScanner;
use crate::http::{eq_ignore_case, is_hop_by_hop};
use crate::net::io::IoFail;
use crate::tls::stream::Facts;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use std::io::{self, Write as _};
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

/// Most header fields in a response head the session writes.
const MAX_FIELDS: usize = 256;

pub struct H2Stream {
    /// The request as HTTP/1.1 bytes not read yet (the head, then body framing pieces).
    pending: Vec<u8>,
    pending_pos: usize,
    body: Option<RecvStream>,
    /// The request body goes up chunked (no Content-Length was given).
    chunked: bool,
    is_head: bool,
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    out: Out,
    /// Scratch: payload ranges of a chunked response piece.
    ranges: Vec<Range<usize>>,
    /// The request is a gRPC call (`content-type: application/grpc...`): an answer that is
    /// not a gRPC response (the gateway's own errors) goes out as a gRPC status.
    grpc: bool,
    /// The TLS session's facts (SNI, client certificate), shared by the connection's streams.
    pub facts: Option<Rc<Facts>>,
}

/// Where the response the session writes stands.
enum Out {
    /// Collecting the head.
    Head(Vec<u8>),
    /// Body bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedScanner>),
    /// A non-gRPC answer to a gRPC call: its body is collected (`left` bytes to come), then
    /// it goes out as a trailers-only gRPC response.
    GrpcError {
        status: u16,
        body: Vec<u8>,
        left: u64,
    },
    /// The response is complete.
    Done,
}

fn broken(why: &'static str) -> IoFail {
    IoFail::Io(io::Error::new(io::ErrorKind::BrokenPipe, why))
}

fn h2_fail(e: h2::Error) -> IoFail {
    IoFail::Io(io::Error::other(e))
}

impl H2Stream {
    /// A stream for `req`, answered through `respond`.
    pub fn new(
        req: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        facts: Option<Rc<Facts>>,
    ) -> H2Stream {
        let (parts, body) = req.into_parts();
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        match parts.uri.path_and_query() {
            Some(pq) if parts.method != http::Method::CONNECT => {
                head.extend_from_slice(pq.as_str().as_bytes())
            }
            _ => {
                head.extend_from_slice(parts.uri.authority().map_or("/", |a| a.as_str()).as_bytes())
            }
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        // :authority is the Host (RFC 9113 §8.3.1); a Host field stands only without it.
        let authority = parts.uri.authority();
        if let Some(a) = authority {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(a.as_str().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let mut cookies = 0;
        let mut length = false;
        for (name, value) in &parts.headers {
            if (authority.is_some() && name == http::header::HOST) || name == http::header::TE {
                continue;
            }
            if name == http::header::COOKIE {
                cookies += 1;
                continue;
            }
            length |= name == http::header::CONTENT_LENGTH;
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        // Cookie crumbs (RFC 9113 §8.2.3) become one field again.
        if cookies > 0 {
            head.extend_from_slice(b"cookie: ");
            for (i, v) in parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .enumerate()
            {
                if i > 0 {
                    head.extend_from_slice(b"; ");
                }
                head.extend_from_slice(v.as_bytes());
            }
            head.extend_from_slice(b"\r\n");
        }
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let ended = body.is_end_stream();
        let chunked = !ended && !length;
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        H2Stream {
            pending: head,
            pending_pos: 0,
            body: (!ended).then_some(body),
            chunked,
            is_head: parts.method == http::Method::HEAD,
            respond: Some(respond),
            send: None,
            out: Out::Head(Vec::new()),
            ranges: Vec::new(),
            grpc,
            facts,
        }
    }

    /// The HTTP/1.1 request head made from the stream's HEADERS, before the session has
    /// read any of it (what the request path parses; the fuzzing harness checks it).
    pub fn request_head(&self) -> &[u8] {
        &self.pending[self.pending_pos..]
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Hands the client's side of the stream (its request body, and the response handle)
    /// to a relay that speaks HTTP/2 to the upstream itself (gRPC). None once a response
    /// has been started here.
    pub fn take_client(&mut self) -> Option<(Option<RecvStream>, SendResponse<Bytes>)> {
        let respond = self.respond.take()?;
        self.out = Out::Done;
        Some((self.body.take(), respond))
    }

    /// Appends more of the request to `buf`; 0 once it has all been read.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>, limit: Duration) -> Result<usize, IoFail> {
        loop {
            if self.pending_pos < self.pending.len() {
                let rest = &self.pending[self.pending_pos..];
                buf.extend_from_slice(rest);
                let n = rest.len();
                self.pending.clear();
                self.pending_pos = 0;
                return Ok(n);
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            let next = monoio::time::timeout(limit, body.data())
                .await
                .map_err(|_| IoFail::Timeout)?;
            match next {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    if !self.chunked {
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    let start = buf.len();
                    let _ = write!(buf, "{:x}\r\n", data.len());
                    buf.extend_from_slice(&data);
                    buf.extend_from_slice(b"\r\n");
                    return Ok(buf.len() - start);
                }
                Some(Err(e)) => return Err(h2_fail(e)),
                None => {
                    let mut body = self.body.take().expect("checked above");
                    if self.chunked {
                        let trailers = monoio::time::timeout(limit, body.trailers())
                            .await
                            .map_err(|_| IoFail::Timeout)?
                            .map_err(h2_fail)?;
                        self.pending.extend_from_slice(b"0\r\n");
                        for (name, value) in trailers.iter().flatten() {
                            self.pending.extend_from_slice(name.as_str().as_bytes());
                            self.pending.extend_from_slice(b": ");
                            self.pending.extend_from_slice(value.as_bytes());
                            self.pending.extend_from_slice(b"\r\n");
                        }
                        self.pending.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }

    /// Takes the next piece of the HTTP/1.1 response; `limit` bounds each wait for the
    /// client's flow-control window (a client that never opens it is a send timeout).
    pub async fn write(&mut self, data: &[u8], limit: Duration) -> Result<(), IoFail> {
        if let Out::Head(head) = &mut self.out {
            head.extend_from_slice(data);
            return match self.start_response()? {
                Some(rest) => self.write_body(&rest, limit).await,
                None => Ok(()),
            };
        }
        self.write_body(data, limit).await
    }

    /// Once the collected head is complete (interim 1xx heads skipped): sends it as HEADERS
    /// and returns the bytes that followed it.
    fn start_response(&mut self) -> Result<Option<Vec<u8>>, IoFail> {
        let Out::Head(collected) = &mut self.out else {
            return Ok(None);
        };
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut parsed = httparse::Response::new(&mut fields);
            let len = match parsed.parse(collected) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(broken("the response head does not parse")),
            };
            let status = parsed.code.unwrap_or(502);
            if (100..200).contains(&status) {
                collected.drain(..len);
                continue;
            }
            let mut resp = Response::new(());
            *resp.status_mut() =
                StatusCode::from_u16(status).map_err(|_| broken("bad response status"))?;
            let mut length: Option<u64> = None;
            let mut chunked = false;
            for f in parsed.headers.iter() {
                let name = f.name.as_bytes();
                if eq_ignore_case(name, b"transfer-encoding") {
                    chunked = true;
                    continue;
                }
                if is_hop_by_hop(name) {
                    continue;
                }
                if eq_ignore_case(name, b"content-length") {
                    length = crate::http::parse_content_length(f.value);
                }
                let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name),
                    HeaderValue::from_bytes(f.value),
                ) else {
                    continue;
                };
                resp.headers_mut().append(n, v);
            }
            let rest = collected.split_off(len);
            let grpc_answer = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if self.grpc && !grpc_answer {
                self.out = Out::GrpcError {
                    status,
                    body: Vec::new(),
                    left: length.unwrap_or(0),
                };
                if length.unwrap_or(0) == 0 {
                    self.grpc_error()?;
                }
                return Ok(Some(rest));
            }
            let bodiless = self.is_head || status == 204 || status == 304;
            self.out = match (bodiless, chunked, length) {
                (true, _, _) | (false, false, Some(0)) => Out::Done,
                (false, true, _) => Out::Chunked(Box::new(ChunkedScanner::keeping_trailers())),
                (false, false, Some(n)) => Out::Length(n),
                // The session frames what it writes; without framing, nothing follows.
                (false, false, None) => Out::Done,
            };
            let end = matches!(self.out, Out::Done);
            let respond = self.respond.as_mut().ok_or(broken("response sent twice"))?;
            let send = respond.send_response(resp, end).map_err(h2_fail)?;
            self.respond = None;
            self.send = Some(send);
            return Ok(Some(rest));
        }
    }

    async fn write_body(&mut self, mut data: &[u8], limit: Duration) -> Result<(), IoFail> {
        while !data.is_empty() {
            match &mut self.out {
                Out::Head(_) | Out::Done => return Ok(()),
                Out::GrpcError { body, left, .. } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    body.extend_from_slice(&data[..n.min(1024)]);
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.grpc_error()?;
                    }
                }
                Out::Length(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    let last = *left == 0;
                    if last {
                        self.out = Out::Done;
                    }
                    self.send_data(&data[..n], last, limit).await?;
                    data = &data[n..];
                }
                Out::Chunked(scanner) => {
                    self.ranges.clear();
                    let ranges = &mut self.ranges;
                    let used = scanner
                        .advance(data, |r| ranges.push(r))
                        .map_err(|_| broken("the response's chunked framing is broken"))?;
                    let trailers = scanner.is_done().then(|| scanner.take_trailers());
                    let ranges = std::mem::take(&mut self.ranges);
                    for r in &ranges {
                        self.send_data(&data[r.clone()], false, limit).await?;
                    }
                    self.ranges = ranges;
                    if let Some(t) = trailers {
                        self.out = Out::Done;
                        self.finish(&t)?;
                    }
                    data = &data[used..];
                }
            }
        }
        Ok(())
    }

    /// Sends `data` as DATA frames as the window allows; `last` ends the stream with it.
    async fn send_data(&mut self, data: &[u8], last: bool, limit: Duration) -> Result<(), IoFail> {
        let send = self.send.as_mut().ok_or(broken("no response started"))?;
        send_flowing(send, Bytes::copy_from_slice(data), last, limit).await
    }

    /// Ends the stream after a chunked body: its trailer section (`name: value` lines) as
    /// trailing HEADERS, or an empty DATA frame when there is none.
    fn finish(&mut self, section: &[u8]) -> Result<(), IoFail> {
        let send = self.send.as_mut().ok_or(broken("no response started"))?;
        let mut trailers = HeaderMap::new();
        for line in section.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            if is_hop_by_hop(name) {
                continue;
            }
            let value = crate::http::trim(&line[colon + 1..]);
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                trailers.append(n, v);
            }
        }
        match trailers.is_empty() {
            true => send.send_data(Bytes::new(), true),
            false => send.send_trailers(trailers),
        }
        .map_err(h2_fail)
    }
}

impl H2Stream {
    /// Sends the collected non-gRPC answer as a trailers-only gRPC response: HTTP 200,
    /// `grpc-status` mapped from the HTTP status (gRPC's HTTP-to-gRPC mapping) and
    /// `grpc-message` from the answer's message.
    fn grpc_error(&mut self) -> Result<(), IoFail> {
        let Out::GrpcError { status, body, .. } = std::mem::replace(&mut self.out, Out::Done)
        else {
            return Ok(());
        };
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                ["error_msg", "message"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(crate::http::trim(&body)).into_owned());
        let respond = self.respond.as_mut().ok_or(broken("response sent twice"))?;
        respond
            .send_response(grpc_status_response(grpc_code(status), &message), true)
            .map_err(h2_fail)?;
        self.respond = None;
        Ok(())
    }
}

/// The gRPC status for a gateway answer's HTTP status (gRPC's "HTTP to gRPC status code
/// mapping"; a 504, the gateway's upstream timeout, as DEADLINE_EXCEEDED).
pub fn grpc_code(http: u16) -> u32 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        504 => 4,              // DEADLINE_EXCEEDED
        429 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A trailers-only gRPC response (RFC-style "Trailers-Only": one HEADERS frame ending the
/// stream) with `code` and `message` (percent-encoded as gRPC asks).
pub fn grpc_status_response(code: u32, message: &str) -> Response<()> {
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes().take(512) {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

/// Sends `data` on `send` as its peer's flow-control window allows (waiting at most `limit`
/// for each opening: a peer that never opens it is a send timeout); `last` ends the stream.
pub async fn send_flowing(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
    limit: Duration,
) -> Result<(), IoFail> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let room = monoio::time::timeout(limit, std::future::poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .map_err(|_| IoFail::Timeout)?;
        let room = match room {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(h2_fail(e)),
            None => return Err(broken("the peer reset the stream")),
        };
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        send.send_data(piece, last && data.is_empty())
            .map_err(h2_fail)?;
        if data.is_empty() {
            return Ok(());
        }
    }
    if last {
        send.send_data(Bytes::new(), true).map_err(h2_fail)?;
    }
    Ok(())
}

impl Drop for H2Stream {
    /// A stream the session left without a complete response is reset, so the client
    /// does not take a truncated body for a whole one.
    fn drop(&mut self) {
        if matches!(self.out, Out::Done) {
            return;
        }
        if let Some(r) = self.respond.as_mut() {
            r.send_reset(Reason::INTERNAL_ERROR);
        }
        if let Some(s) = self.send.as_mut() {
            s.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}
