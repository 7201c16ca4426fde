//! One HTTP/1.1 connection to an etcd endpoint's JSON gateway, plain or TLS, blocking with
//! timeouts (it runs on control-plane threads, never on a worker). etcd is a trusted peer,
//! but its answers are read as strictly as an upstream's and bounded: a head over 64 KiB or
//! a body over 256 MiB is an error.

use crate::http::chunked::ChunkedScanner;
use crate::http::response::{Parsed, ResponseFraming, ResponseHead};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;
/// How much one read asks for.
const READ_SIZE: usize = 64 * 1024;

/// An endpoint from `deployment.etcd.host`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// As configured, for messages.
    pub url: String,
}

impl Endpoint {
    /// `http://host:port` or `https://host:port` (the port defaults to 2379).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("'{url}' must start with http:// or https://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("'{url}' must be scheme://host:port"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("'{url}': '{p}' is not a port"))?,
            ),
            _ => (rest, 2379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            url: url.to_string(),
        })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A response head: what the caller needs of it (the framing is kept by the connection).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// The server closes after this response.
    pub close: bool,
}

/// Where the body of the current response stands.
enum Body {
    Done,
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
}

/// A connection, reused for unary calls while it stays good. Responses are read with the
/// gateway's own strict parsers: [`ResponseHead`] for the head, [`ChunkedScanner`] for
/// chunked bodies (a watch is one long chunked body).
pub struct Conn {
    stream: Stream,
    /// Bytes read and not consumed yet.
    buf: Vec<u8>,
    body: Body,
    host_header: String,
}

impl Conn {
    /// Connects within `timeout` (per address), and sets `timeout` for every read and write.
    pub fn open(
        ep: &Endpoint,
        tls: Option<&(Arc<rustls::ClientConfig>, Option<String>)>,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for addr in (ep.host.as_str(), ep.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let stream = match (ep.tls, tls) {
            (false, _) => Stream::Plain(tcp),
            (true, None) => {
                return Err(io::Error::other(
                    "https endpoint without a TLS configuration",
                ))
            }
            (true, Some((config, sni))) => {
                let name = sni.clone().unwrap_or_else(|| ep.host.clone());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(io::Error::other)?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                // Handshake now, so a certificate problem is reported as such.
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock)?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(READ_SIZE),
            body: Body::Done,
            host_header: format!("{}:{}", ep.host, ep.port),
        })
    }

    /// Changes the read timeout (a watch waits longer than a call).
    pub fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        match &self.stream {
            Stream::Plain(s) => s.set_read_timeout(Some(t)),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(t)),
        }
    }

    /// Sends `POST path` with a JSON body.
    pub fn post(&mut self, path: &str, body: &[u8], token: Option<&str>) -> io::Result<()> {
        let mut req = Vec::with_capacity(256 + body.len());
        write!(
            req,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host_header,
            body.len()
        )?;
        if let Some(t) = token {
            write!(req, "Authorization: {t}\r\n")?;
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.stream.write_all(&req)?;
        self.stream.flush()
    }

    /// Reads more bytes into `buf`; 0 at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + READ_SIZE, 0);
        let read = self.stream.read(&mut self.buf[start..]);
        self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Reads a response head.
    pub fn head(&mut self) -> io::Result<Head> {
        loop {
            let mut head = ResponseHead::default();
            match head.parse(&self.buf, false, MAX_HEAD).map_err(bad)? {
                Parsed::Complete => {
                    self.buf.drain(..head.len);
                    self.body = match head.framing() {
                        ResponseFraming::None => Body::Done,
                        ResponseFraming::Length(n) => Body::Length(n),
                        ResponseFraming::Chunked => Body::Chunked(ChunkedScanner::new()),
                        ResponseFraming::UntilClose => Body::UntilClose,
                    };
                    return Ok(Head {
                        status: head.status,
                        close: head.close,
                    });
                }
                Parsed::Partial if self.buf.len() >= MAX_HEAD => {
                    return Err(bad("response head over 64 KiB"))
                }
                Parsed::Partial => {
                    if self.fill()? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }

    /// The next payload bytes of the current response's body; `None` at its end.
    pub fn payload(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if matches!(self.body, Body::Length(0)) {
                self.body = Body::Done;
            }
            if matches!(self.body, Body::Done) {
                return Ok(None);
            }
            if self.buf.is_empty() && self.fill()? == 0 {
                if matches!(self.body, Body::UntilClose) {
                    self.body = Body::Done;
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let Conn { buf, body, .. } = self;
            match body {
                Body::Done => unreachable!("returned above"),
                Body::UntilClose => return Ok(Some(std::mem::take(buf))),
                Body::Length(left) => {
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    return Ok(Some(buf.drain(..take).collect()));
                }
                Body::Chunked(scanner) => {
                    let mut out = Vec::new();
                    let used = scanner
                        .advance(buf, |r| out.extend_from_slice(&buf[r]))
                        .map_err(|e| bad(e.0))?;
                    buf.drain(..used);
                    if scanner.is_done() {
                        *body = Body::Done;
                    }
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
                }
            }
        }
    }

    /// Reads the whole body of the current response.
    pub fn body(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(piece) = self.payload()? {
            if out.len() + piece.len() > MAX_BODY {
                return Err(bad("response body over 256 MiB"));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:2379").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 2379));
        let e = Endpoint::parse("https://etcd.local").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (true, "etcd.local", 2379));
        let e = Endpoint::parse("http://[::1]:23790/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 23790));
        assert!(Endpoint::parse("127.0.0.1:2379").is_err());
        assert!(Endpoint::parse("http://h:x").is_err());
        assert!(Endpoint::parse("http://h:1/v3").is_err());
    }
}
