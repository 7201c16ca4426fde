//! One client connection: the keep-alive loop (read a head, serve it, go round again),
//! head reading with its timeouts, refusals of malformed heads, and the lingering close.

use crate::http::error_page::write_error;
use crate::http::request::{Parsed, RequestError};
use crate::log::access::Entry;
use crate::net::io::{read_more_timeout, write_all, IoFail};
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
pub async fn serve(worker: Rc<Worker>, tcp: TcpStream, peer: SocketAddr, entrance: Rc<Entrance>) {
    let _open = Gauge::up(&worker, |s| &s.active);
    crate::metrics::bump(&worker.metrics.shard().accepted, 1);
    let watch = worker.watchdog.watch();
    let stream = match entrance.tls {
        false => Stream::Plain(tcp),
        // Boxed: the handshake's state stays out of every plain connection's task.
        true => match Box::pin(handshake(&worker, tcp, peer, &watch)).await {
            Some(tls) if tls.facts.alpn.as_deref() == Some(b"h2") => {
                let facts = Rc::new(tls.facts.clone());
                let (tcp, conn, rbuf, rpos) = tls.into_parts();
                if let Ok(io) = crate::http2::H2Io::tls(tcp, conn, rbuf, rpos) {
                    Box::pin(crate::http2::serve(worker, io, Some(facts), peer, entrance)).await;
                }
                return;
            }
            Some(tls) => Stream::Tls(Box::new(tls)),
            None => return,
        },
    };
    let h2c = exchanges(worker.clone(), stream, watch, peer, entrance.clone()).await;
    if let Some((Stream::Plain(tcp), prefix)) = h2c {
        if let Ok(io) = crate::http2::H2Io::plain(tcp, prefix) {
            Box::pin(crate::http2::serve(worker, io, None, peer, entrance)).await;
        }
    }
}

/// Serves one HTTP/2 stream as a connection carrying one exchange.
pub async fn serve_stream(
    worker: Rc<Worker>,
    stream: crate::http2::stream::H2Stream,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
) {
    let watch = worker.watchdog.watch();
    exchanges(worker, Stream::H2(Box::new(stream)), watch, peer, entrance).await;
}

/// Runs the keep-alive loop on `stream` with a connection's recycled memory. Returns the
/// stream and the bytes read when the client turned out to speak h2c.
async fn exchanges(
    worker: Rc<Worker>,
    stream: Stream,
    watch: Rc<Watch>,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
) -> Option<(Stream, Vec<u8>)> {
    let local_port = entrance.port.clone();
    let s = worker.take_scratch();
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
    conn.run().await;
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
    let handoff = h2c.then(|| (stream, buf.clone()));
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
    handoff
}

/// Completes a client's TLS handshake with the current snapshot's certificates, within
/// `ssl_handshake_timeout`. A failure is logged (as nginx logs them, at info) and the
/// connection closed.
async fn handshake(
    worker: &Rc<Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    watch: &Watch,
) -> Option<TlsConn> {
    let local = worker.current();
    let limit = local.shared.settings.ssl_handshake_timeout;
    let tls = local.shared.tls.clone();
    drop(local);
    let accepted = TlsConn::accept(tcp, limit, watch, |hello| tls.as_ref()?.choose(hello)).await;
    match accepted {
        Ok(t) => Some(t),
        Err(e) => {
            crate::info!("TLS handshake with {peer} failed: {e}");
            None
        }
    }
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

    pub(super) async fn run(&mut self) {
        let mut first = true;
        loop {
            match self.read_head(first).await {
                Ok(true) if first && self.client_cert_missing() => {
                    self.refuse(RequestError {
                        status: 400,
                        reason: "No required SSL certificate was sent",
                    })
                    .await;
                    return;
                }
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.refuse(e).await;
                    return;
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
                return;
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

    /// Waits for a complete request head. `Ok(false)`: the client closed or went idle.
    pub(super) async fn read_head(&mut self, first: bool) -> Result<bool, RequestError> {
        // A request keeps the settings it started with, whatever reloads happen meanwhile.
        self.req.settings = self.worker.current().shared.settings;
        let (header_timeout, idle_timeout, limits) = {
            let s = self.settings();
            (s.client_header_timeout, s.keepalive_timeout, s.limits)
        };
        let mut deadline: Option<Instant> = None;
        // Counted as `reading` while a head is partly received.
        let mut reading: Option<Gauge> = None;
        loop {
            if first && self.buf.starts_with(crate::http2::PREFACE_START) && self.h2c_allowed() {
                self.h2c = true;
                return Ok(false);
            }
            if !self.buf.is_empty() {
                if let Parsed::Complete = self.req.head.parse(&self.buf, &limits)? {
                    return Ok(true);
                }
                deadline.get_or_insert_with(|| later(Instant::now(), header_timeout));
                if reading.is_none() {
                    reading = Some(Gauge::up(&self.worker, |s| &s.reading));
                }
            }
            let limit = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if first => header_timeout,
                None => idle_timeout,
            };
            let had_bytes = !self.buf.is_empty();
            match read_more_timeout(&mut self.stream, &mut self.buf, 4096, limit, &self.watch).await
            {
                Ok(0) | Err(IoFail::Io(_)) => return Ok(false),
                Ok(_) => {}
                Err(IoFail::Timeout) if !had_bytes => return Ok(false),
                Err(IoFail::Timeout) => {
                    return Err(RequestError {
                        status: 408,
                        reason: "timed out reading the request head",
                    })
                }
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
