//! A real HTTP/1.1 backend on 127.0.0.1 with scripted replies, counting the connections and
//! requests it sees. One thread per connection; stops when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the backend received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_hash: u64,
    /// The body itself when at most 1 MiB.
    pub body: Vec<u8>,
    /// The request head exactly as received.
    pub raw_head: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the backend does with a request.
pub enum Reply {
    /// Status, extra headers, body; framed with Content-Length, keep-alive.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Bytes written verbatim, then the connection stays open for the next request.
    Raw(Vec<u8>),
    /// Bytes written verbatim, then the connection is closed.
    RawClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Bytes written verbatim, then after a pause more bytes, on the same open connection.
    RawThen(Vec<u8>, Duration, Vec<u8>),
    /// Wait, then do the inner reply.
    After(Duration, Box<Reply>),
    /// A body of `len` pattern bytes with Content-Length, written in 64 KiB pieces.
    Pattern(u64),
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Full(200, vec![], body.as_bytes().to_vec())
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

struct State {
    connections: AtomicUsize,
    requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Killed: no more accepts, every open connection closes at its next request.
    dead: AtomicBool,
    handler: Box<Handler>,
    /// Speaks TLS with this configuration (see [`Backend::start_tls`]).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What TLS clients asked for, per connection.
    handshakes: Mutex<Vec<Handshake>>,
}

/// A TLS client as a TLS backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub sni: Option<String>,
    /// It showed a certificate.
    pub client_cert: bool,
    /// It resumed an earlier session.
    pub resumed: bool,
}

/// A backend connection: plain TCP, or rustls over it.
trait Conn: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

pub struct Backend {
    pub port: u16,
    state: Arc<State>,
}

/// FNV-1a over a stream of bytes: enough to compare large bodies end to end.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// The deterministic byte at offset `i` of a pattern body.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 7) as u8
}

pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
}

impl Backend {
    /// A backend answering 200 with `name` as the body (and `X-Backend: name`).
    pub fn named(name: &str) -> Backend {
        let n = name.to_string();
        Backend::start(move |_| {
            Reply::Full(
                200,
                vec![("X-Backend".into(), n.clone())],
                n.clone().into_bytes(),
            )
        })
    }

    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
        Backend::start_inner(None, handler)
    }

    /// A backend that speaks TLS (rustls) with `config`, recording each handshake.
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        Backend::start_inner(Some(config), handler)
    }

    /// Each TLS connection's handshake so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.handshakes.lock().unwrap().clone()
    }

    fn start_inner(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            handler: Box::new(handler),
            tls,
            handshakes: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) || st.dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || match st.tls.clone() {
                    None => serve(stream, st),
                    Some(config) => {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        let mut stream = stream;
                        while conn.is_handshaking() {
                            if conn.complete_io(&mut stream).is_err() {
                                return; // refused (a client certificate missing or bad)
                            }
                        }
                        st.handshakes.lock().unwrap().push(Handshake {
                            sni: conn.server_name().map(str::to_string),
                            client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                        });
                        serve(rustls::StreamOwned::new(conn, stream), st)
                    }
                });
            }
        });
        Backend { port, state }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Simulates a crash: the port stops accepting and open connections close.
    pub fn kill(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }

    /// Requests seen whose target is not `path` (e.g. traffic other than health probes).
    pub fn requests_except(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.target != path).count()
    }

    /// Requests seen for `path`.
    pub fn requests_for(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.target == path).count()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("backend saw no request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn serve(mut stream: impl Conn, st: Arc<State>) {
    let _ = stream.tcp().set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(e) = find_head_end(&buf) {
                break e;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&buf[..head_end]).is_err() {
            return;
        }
        let mut seen = Seen {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect(),
            raw_head: buf[..head_end].to_vec(),
            ..Default::default()
        };
        buf.drain(..head_end);
        // Body.
        let mut hash = Fnv::default();
        let mut keep_body = |data: &[u8], seen: &mut Seen| {
            hash.update(data);
            seen.body_len += data.len() as u64;
            if seen.body.len() + data.len() <= 1 << 20 {
                seen.body.extend_from_slice(data);
            }
        };
        let chunked = seen
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            // Minimal de-chunking (the gateway already validated the framing).
            loop {
                let line_end = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size = u64::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers until an empty line.
                    loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            let empty = p == 0;
                            buf.drain(..p + 2);
                            if empty {
                                break;
                            }
                            continue;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    break;
                }
                let mut left = size as usize + 2;
                while left > 0 {
                    if buf.is_empty() {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let take = left.min(buf.len());
                    let data_take = take.min(left.saturating_sub(2));
                    keep_body(&buf[..data_take], &mut seen);
                    buf.drain(..take);
                    left -= take;
                }
            }
        } else if let Some(cl) = seen.header("content-length") {
            let mut left: u64 = cl.trim().parse().unwrap();
            while left > 0 {
                if buf.is_empty() {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let take = (buf.len() as u64).min(left) as usize;
                keep_body(&buf[..take], &mut seen);
                buf.drain(..take);
                left -= take as u64;
            }
        }
        seen.body_hash = hash.0;
        if st.dead.load(Ordering::SeqCst) {
            return;
        }
        st.requests.fetch_add(1, Ordering::SeqCst);
        let reply = (st.handler)(&seen);
        let is_head = seen.method == "HEAD";
        st.seen.lock().unwrap().push(seen);
        if !send_reply(&mut stream, reply, is_head) {
            let _ = stream.tcp().shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Sends a reply; returns whether the connection stays open.
fn send_reply(stream: &mut impl Conn, reply: Reply, is_head: bool) -> bool {
    match reply {
        Reply::Full(status, headers, body) => {
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (n, v) in headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            if !is_head {
                bytes.extend_from_slice(&body);
            }
            stream.write_all(&bytes).is_ok()
        }
        Reply::Raw(bytes) => stream.write_all(&bytes).is_ok(),
        Reply::RawClose(bytes) => {
            let _ = stream.write_all(&bytes);
            false
        }
        Reply::Close => false,
        Reply::RawThen(first, pause, then) => {
            if stream.write_all(&first).is_err() {
                return false;
            }
            std::thread::sleep(pause);
            stream.write_all(&then).is_ok()
        }
        Reply::After(d, inner) => {
            std::thread::sleep(d);
            send_reply(stream, *inner, is_head)
        }
        Reply::Pattern(len) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            let mut piece = vec![0u8; 64 * 1024];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(piece.len() as u64) as usize;
                fill_pattern(&mut piece[..n], off);
                if stream.write_all(&piece[..n]).is_err() {
                    return false;
                }
                off += n as u64;
            }
            true
        }
    }
}
