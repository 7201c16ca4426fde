//! One client connection: the keep-alive loop (read a head, serve it, go round again),
//! head reading with its timeouts, refusals of malformed heads, and the lingering close.

use crate::http::error_page::write_error;
use crate::http::request::{Parsed, RequestError};
use crate::log::access::Entry;
use crate::net::io::{
    read_more_parkable, read_more_timeout, wait_readable, write_all, Got, IoFail,
};
use crate::net::sockopt;
use crate::net::stream::Stream;
use crate::net::watchdog::{later, Watch};
use crate::tls::stream::TlsConn;
use crate::worker::state::Worker;
use monoio::net::TcpStream;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::ctx::Ctx;
use super::scratch::Scratch;
use super::{BODY_CHUNK, LINGER_IDLE, LINGER_TOTAL};

/// The listener a connection came in on.
pub struct Entrance {
    /// Its port (for `X-Forwarded-Port`), known without a syscall.
    pub port: Rc<str>,
    /// It terminates TLS.
    pub tls: bool,
}

/// Accepts a connection (completing its TLS handshake on a TLS listener) and serves
/// requests on it until it closes: HTTP/1.1 here, HTTP/2 (`http2`) when ALPN chose `h2` or a
/// plain connection starts with the h2c preface.
///
/// An HTTP/1.1 connection is busy or parked. Busy, the request path runs in a boxed future
/// with a scratch set (buffers, parsed heads) from the core's spares, reading the next request
/// with the buffer as soon as a response is done: one read per request on the hot path. When
/// that read gets no byte for a tick or two (25-50 ms, see `net::watchdog`), the watchdog
/// cancels it and the connection parks: the boxed future and the scratch set go back, and
/// this small future waits for readability (`wait_readable`, an io_uring poll that holds no
/// buffer) with nothing but the bytes of a partly received head: 1.2-1.9 KiB in all for a
/// plain connection. A TLS connection parks the same way and also lets go of its ciphertext
/// buffers; it keeps rustls's session state (`TlsConn::release_buffers`).
pub fn serve(
    worker: Rc<Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
) -> impl std::future::Future<Output = ()> {
    // Counted open from here, not from the task's first poll: the accept loop compares the
    // count with `max_connections` before its next accept.
    let open = Gauge::up(&worker, |s| &s.active);
    crate::metrics::bump(&worker.metrics.shard().accepted, 1);
    // The socket enters the task once, as a `Stream`: an async fn keeps its arguments for
    // its whole life, and a second copy would make every parked connection 80 bytes larger.
    connection(worker, Stream::Plain(tcp), peer, entrance, open)
}

/// [`serve`]'s task.
async fn connection(
    worker: Rc<Worker>,
    mut stream: Stream,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
    _open: Gauge,
) {
    let watch = worker.watchdog.watch();
    if entrance.tls {
        let Stream::Plain(tcp) = stream else { return };
        // A new connection that has sent nothing holds no memory for its handshake yet: its
        // ClientHello is waited for with a poll (one operation more per handshake, nothing
        // beside its crypto).
        let limit = worker.current().shared.settings.ssl_handshake_timeout;
        let deadline = watch.deadline_in(limit);
        if !wait_readable(&tcp, deadline, &watch).await {
            crate::info!("TLS handshake with {peer} failed: timed out");
            return;
        }
        // Boxed: the handshake's state (and the TLS connection it returns, several KiB)
        // stays out of every plain connection's task.
        let accept = accept_tls(&worker, tcp, peer, deadline, &watch, &entrance);
        stream = match Box::pin(accept).await {
            Some(tls) => tls,
            None => return,
        };
    }
    let mut parked: Option<Parked> = None;
    loop {
        if let (Some(p), Some(tcp)) = (&parked, stream.tcp()) {
            // Past the deadline, a partial head goes on to the busy part: it answers 408.
            if !wait_readable(tcp, p.deadline, &watch).await && p.head.is_empty() {
                return;
            }
        }
        let first = parked.as_ref().is_none_or(|p| p.first);
        let head = parked.take().map(|p| (p.head.into_vec(), p.deadline));
        let busy = exchanges(
            worker.clone(),
            stream,
            watch.clone(),
            peer,
            &entrance,
            first,
            head,
        );
        // No await inside this match: its scrutinee would stay in the task for good.
        let h2c = match Box::pin(busy).await {
            Next::Parked(s, p) => {
                stream = s;
                parked = Some(p);
                continue;
            }
            Next::H2c(Stream::Plain(tcp), prefix) => crate::http2::H2Io::plain(tcp, prefix),
            Next::H2c(..) | Next::Closed => return,
        };
        if let Ok(io) = h2c {
            Box::pin(crate::http2::serve(worker, io, None, peer, entrance)).await;
        }
        return;
    }
}

/// A parked connection's state: what it keeps while it holds no scratch set.
struct Parked {
    /// Bytes of a request head partly received (empty between requests).
    head: Box<[u8]>,
    /// When the wait ends: `client_header_timeout` after a head's first byte or a
    /// connection's accept, `keepalive_timeout` after a response.
    deadline: Instant,
    /// No request has been served yet.
    first: bool,
    /// The `reading` gauge unit of a partial head.
    _reading: Option<Gauge>,
}

/// How a busy period of a connection ended.
enum Next {
    /// The read for the next head got nothing for a tick or two: wait without memory.
    Parked(Stream, Parked),
    Closed,
    /// The client sent the HTTP/2 preface: the connection goes on as h2c with these bytes.
    H2c(Stream, Vec<u8>),
}

/// Serves one HTTP/2 stream as a connection carrying one exchange.
pub async fn serve_stream(
    worker: Rc<Worker>,
    stream: crate::http2::stream::H2Stream,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
) {
    let watch = worker.watchdog.watch();
    let h2 = Stream::H2(Box::new(stream));
    exchanges(worker, h2, watch, peer, &entrance, true, None).await;
}

/// Runs the keep-alive loop on `stream` with recycled memory from the core's pool until
/// the connection closes or parks, then gives the memory back.
/// `partial`: the bytes of a head received before parking and the deadline of the wait.
async fn exchanges(
    worker: Rc<Worker>,
    stream: Stream,
    watch: Rc<Watch>,
    peer: SocketAddr,
    entrance: &Entrance,
    first: bool,
    partial: Option<(Vec<u8>, Instant)>,
) -> Next {
    let local_port = entrance.port.clone();
    let mut s = worker.take_scratch();
    let mut head_deadline = None;
    if let Some((bytes, deadline)) = partial {
        s.buf.extend_from_slice(&bytes);
        head_deadline = Some(deadline);
    }
    let mut peer_ip = s.peer_ip;
    peer_ip.clear();
    let _ = write!(peer_ip, "{}", peer.ip());
    let local = worker.current();
    let mut conn = Conn {
        worker,
        stream,
        buf: s.buf,
        out: s.out,
        peer_ip,
        peer,
        local_port,
        watch,
        linger: false,
        nonblocking: false,
        corked: false,
        h2c: false,
        req: Ctx {
            settings: local.shared.settings,
            local,
            route: None,
            plugins: false,
            head: s.head,
            resp: s.resp,
            host_lc: s.host_lc,
            path_normalized: false,
            path_buf: s.path_buf,
            tried: s.tried,
            key_buf: s.key_buf,
            up_statuses: s.up_statuses,
            early_answer: false,
            upgrade: false,
            edits: Default::default(),
            real_ip: Default::default(),
            consumer: Default::default(),
            merged: None,
        },
    };
    let end = conn.run(first, head_deadline).await;
    let Conn {
        worker,
        stream,
        mut buf,
        mut out,
        peer_ip,
        req,
        h2c,
        ..
    } = conn;
    let next = match (h2c, end) {
        (true, _) => Next::H2c(stream, buf.clone()),
        (false, RunEnd::Parked { deadline, first }) => {
            let reading = (!buf.is_empty()).then(|| Gauge::up(&worker, |s| &s.reading));
            let parked = Parked {
                head: buf.as_slice().into(),
                deadline,
                first,
                _reading: reading,
            };
            Next::Parked(stream, parked)
        }
        (false, RunEnd::Closed) => Next::Closed,
    };
    buf.clear();
    out.clear();
    worker.give_scratch(Scratch {
        buf,
        out,
        head: req.head,
        resp: req.resp,
        host_lc: req.host_lc,
        path_buf: req.path_buf,
        peer_ip,
        tried: req.tried,
        key_buf: req.key_buf,
        up_statuses: req.up_statuses,
    });
    next
}

/// Completes a client's TLS handshake; a connection that chose `h2` by ALPN is served here as
/// HTTP/2 to its end (`None`, as for a failed handshake), others go on as HTTP/1.1.
async fn accept_tls(
    worker: &Rc<Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    watch: &Watch,
    entrance: &Rc<Entrance>,
) -> Option<Stream> {
    let tls = handshake(worker, tcp, peer, deadline, watch).await?;
    if tls.facts.alpn.as_deref() != Some(b"h2") {
        return Some(Stream::Tls(Box::new(tls)));
    }
    let facts = Rc::new(tls.facts.clone());
    let (tcp, conn, rbuf, rpos) = tls.into_parts();
    if let Ok(io) = crate::http2::H2Io::tls(tcp, conn, rbuf, rpos) {
        let (worker, entrance) = (worker.clone(), entrance.clone());
        Box::pin(crate::http2::serve(worker, io, Some(facts), peer, entrance)).await;
    }
    None
}

/// Completes a client's TLS handshake with the current snapshot's certificates, by
/// `deadline` (`ssl_handshake_timeout` after the accept). A failure is logged (as nginx logs
/// them, at info) and the connection closed.
async fn handshake(
    worker: &Rc<Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    watch: &Watch,
) -> Option<TlsConn> {
    let tls = worker.current().shared.tls.clone();
    let choose = |hello: &rustls::server::ClientHello<'_>| tls.as_ref()?.choose(hello);
    let accepted = TlsConn::accept(tcp, deadline, watch, choose).await;
    match accepted {
        Ok(t) => Some(t),
        Err(e) => {
            crate::info!("TLS handshake with {peer} failed: {e}");
            None
        }
    }
}

/// Where [`Conn::run`] stopped.
pub(super) enum RunEnd {
    Closed,
    /// The read for the next head was parked: the buffer holds what
    /// arrived of it (maybe nothing); the wait ends at `deadline`. `first`: no request has
    /// been served yet.
    Parked {
        deadline: Instant,
        first: bool,
    },
}

/// What [`Conn::read_head`] got.
pub(super) enum HeadRead {
    Complete,
    /// The client closed, went idle past its timeout, or switched to h2c (`Conn::h2c`).
    Closed,
    /// The read was parked (see [`RunEnd::Parked`]); the wait ends at this deadline.
    Parked(Instant),
}

pub(super) struct Conn {
    pub(super) worker: Rc<Worker>,
    pub(super) stream: Stream,
    /// Received bytes; the current request's head starts at 0.
    pub(super) buf: Vec<u8>,
    /// Scratch for heads the gateway writes (to the upstream and to the client).
    pub(super) out: Vec<u8>,
    pub(super) peer_ip: String,
    /// The client's address (`remote_addrs` matching).
    pub(super) peer: SocketAddr,
    pub(super) local_port: Rc<str>,
    /// Bounds every read and write of this connection (and of its upstream attempts).
    pub(super) watch: Rc<Watch>,
    /// The last answer was sent while the client may still be sending a body.
    pub(super) linger: bool,
    /// The client socket has been made non-blocking (done on the first splice).
    pub(super) nonblocking: bool,
    /// The last answer was written corked: its tail and the FIN leave together at the
    /// half-close that ends the connection.
    pub(super) corked: bool,
    /// The client sent the HTTP/2 connection preface (h2c with prior knowledge, where
    /// `gateway.http2.h2c` allows it): the connection goes on as HTTP/2.
    pub(super) h2c: bool,
    /// The request being served.
    pub(super) req: Ctx,
}

impl Conn {
    /// The client's address as this request knows it: the peer's, or what real-ip found.
    pub(super) fn remote_ip(&self) -> &str {
        self.req.real_ip.get().map_or(&self.peer_ip, |s| s.as_str())
    }

    /// Client-side settings of the snapshot this request started on (small and `Copy`).
    pub(super) fn settings(&self) -> crate::snapshot::Settings {
        self.req.settings
    }

    /// The certificate served demands a client certificate and the client sent none.
    fn client_cert_missing(&self) -> bool {
        self.stream
            .tls_facts()
            .is_some_and(|f| f.missing_client_cert)
    }

    /// Serves requests until the connection closes or, on a plain connection, parks (see
    /// [`RunEnd`]). `head_deadline`: the deadline of a head partly received before parking.
    pub(super) async fn run(&mut self, mut first: bool, head_deadline: Option<Instant>) -> RunEnd {
        let mut head_deadline = head_deadline;
        loop {
            match self.read_head(first, head_deadline.take()).await {
                Ok(HeadRead::Complete) if first && self.client_cert_missing() => {
                    self.refuse(RequestError {
                        status: 400,
                        reason: "No required SSL certificate was sent",
                    })
                    .await;
                    return RunEnd::Closed;
                }
                Ok(HeadRead::Complete) => {}
                Ok(HeadRead::Closed) => return RunEnd::Closed,
                Ok(HeadRead::Parked(deadline)) => return RunEnd::Parked { deadline, first },
                Err(e) => {
                    self.refuse(e).await;
                    return RunEnd::Closed;
                }
            }
            first = false;
            self.worker.request_started();
            let keep = self.handle().await;
            self.worker.request_finished();
            if !keep || self.worker.stopping() {
                if self.corked {
                    // Half-close now rather than leave the FIN to close(2): a close with
                    // unread bytes in the socket resets the connection and would throw the
                    // corked tail away.
                    sockopt::shutdown_write(&self.stream);
                }
                if self.linger {
                    self.linger_close().await;
                }
                return RunEnd::Closed;
            }
        }
    }

    /// Closes after an answer sent while the client may still be sending its body: closing at
    /// once would make the kernel reset the connection, and the client could lose the answer.
    /// Half-close, then read and discard until the client closes, goes quiet for
    /// `LINGER_IDLE`, or `LINGER_TOTAL` has passed (nginx's lingering close, with its
    /// `lingering_timeout` and `lingering_time` defaults). Not capped by size: a client that
    /// writes its whole body before it reads must get to the end of it.
    pub(super) async fn linger_close(&mut self) {
        self.stream.shutdown(&self.watch).await;
        let deadline = Instant::now() + LINGER_TOTAL;
        loop {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let wait = left.min(LINGER_IDLE);
            match read_more_timeout(
                &mut self.stream,
                &mut self.buf,
                BODY_CHUNK,
                wait,
                &self.watch,
            )
            .await
            {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Reads until a complete request head is in the buffer. On a plain connection the read
    /// may be parked ([`HeadRead::Parked`]) when nothing arrives for a tick or two, so a quiet
    /// or slow client holds its bytes, not the connection's scratch memory. `resume`: the
    /// deadline of the wait that was parked before (of the head when the buffer holds part
    /// of one, else of the keep-alive or first-request wait).
    pub(super) async fn read_head(
        &mut self,
        first: bool,
        resume: Option<Instant>,
    ) -> Result<HeadRead, RequestError> {
        // A request keeps the settings it started with, whatever reloads happen meanwhile.
        self.req.settings = self.worker.current().shared.settings;
        let (header_timeout, idle_timeout, limits) = {
            let s = self.settings();
            (s.client_header_timeout, s.keepalive_timeout, s.limits)
        };
        let (mut head_deadline, wait_deadline) = match self.buf.is_empty() {
            true => (None, resume),
            false => (resume, None),
        };
        // Counted as `reading` while a head is partly received.
        let mut reading: Option<Gauge> = None;
        loop {
            if first && self.buf.starts_with(crate::http2::PREFACE_START) && self.h2c_allowed() {
                self.h2c = true;
                return Ok(HeadRead::Closed);
            }
            if !self.buf.is_empty() {
                if let Parsed::Complete = self.req.head.parse(&self.buf, &limits)? {
                    return Ok(HeadRead::Complete);
                }
                let d = *head_deadline.get_or_insert_with(|| later(Instant::now(), header_timeout));
                if self.watch.passed(d) {
                    return Err(RequestError::HEAD_TIMEOUT);
                }
                if reading.is_none() {
                    reading = Some(Gauge::up(&self.worker, |s| &s.reading));
                }
            }
            let deadline = head_deadline.or(wait_deadline).unwrap_or_else(|| {
                self.watch.deadline_in(match first {
                    true => header_timeout,
                    false => idle_timeout,
                })
            });
            let had_bytes = !self.buf.is_empty();
            let got =
                read_more_parkable(&mut self.stream, &mut self.buf, 4096, deadline, &self.watch);
            match got.await {
                Ok(Got::Bytes(0)) | Err(IoFail::Io(_)) => return Ok(HeadRead::Closed),
                Ok(Got::Bytes(_)) => {}
                Ok(Got::Parked) => return Ok(HeadRead::Parked(deadline)),
                Err(IoFail::Timeout) if !had_bytes => return Ok(HeadRead::Closed),
                Err(IoFail::Timeout) => return Err(RequestError::HEAD_TIMEOUT),
            }
        }
    }

    /// A plain connection on a gateway that takes h2c.
    fn h2c_allowed(&self) -> bool {
        self.settings().http2.h2c && self.stream.plain().is_some()
    }

    /// Answers a request refused at the head stage, then the connection closes.
    pub(super) async fn refuse(&mut self, e: RequestError) {
        let start = Instant::now();
        crate::metrics::bump(&self.worker.metrics.shard().requests, 1);
        self.out.clear();
        write_error(&mut self.out, e.status, e.reason, true, false);
        let bytes = self.out.len() as u64;
        let send = self.settings().send_timeout;
        let sent = write_all(&mut self.stream, &mut self.out, send, &self.watch)
            .await
            .is_ok();
        // Log before lingering: the linger reuses the buffer that holds the request line.
        if self.worker.log.enabled() {
            let line_end = self.buf.iter().position(|&b| b == b'\r' || b == b'\n');
            let line = &self.buf[..line_end.unwrap_or(self.buf.len()).min(256)];
            self.worker.log.log(&Entry {
                remote: &self.peer_ip,
                method: b"-",
                uri: line,
                protocol: "HTTP/1.1",
                host: b"",
                status: e.status,
                bytes,
                latency: start.elapsed(),
                route: None,
                upstream: None,
                upstream_status: None,
                upstream_latency: None,
                retries: 0,
            });
        }
        if sent {
            self.linger_close().await;
        }
    }
}

/// One unit of a connection gauge of this core's metrics (`active`, `reading`), given back
/// when dropped, however the connection ends.
struct Gauge {
    worker: Rc<Worker>,
    gauge: fn(&crate::metrics::CoreShard) -> &std::sync::atomic::AtomicI64,
}

impl Gauge {
    fn up(
        worker: &Rc<Worker>,
        gauge: fn(&crate::metrics::CoreShard) -> &std::sync::atomic::AtomicI64,
    ) -> Gauge {
        crate::metrics::shift(gauge(worker.metrics.shard()), 1);
        Gauge {
            worker: worker.clone(),
            gauge,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        crate::metrics::shift((self.gauge)(self.worker.metrics.shard()), -1);
    }
}
