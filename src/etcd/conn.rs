//! One HTTP/1.1 connection to an etcd endpoint's JSON gateway, plain or TLS, blocking with
//! timeouts (it runs on control-plane threads, never on a worker). etcd is a trusted peer,
//! but its answers are still bounded: a head over 64 KiB or a body over 256 MiB is an error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;

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

/// A response head: what the body's framing needs.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    chunked: bool,
    length: Option<usize>,
    /// The server closes after this response.
    pub close: bool,
}

/// A connection, reused for unary calls while it stays good.
pub struct Conn {
    reader: BufReader<Stream>,
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
            reader: BufReader::with_capacity(64 * 1024, stream),
            host_header: format!("{}:{}", ep.host, ep.port),
        })
    }

    /// Changes the read timeout (a watch waits longer than a call).
    pub fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        match self.reader.get_ref() {
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
        let s = self.reader.get_mut();
        s.write_all(&req)?;
        s.flush()
    }

    /// Reads a response head.
    pub fn head(&mut self) -> io::Result<Head> {
        let mut total = 0;
        let mut line = Vec::new();
        let mut head = Head {
            status: 0,
            chunked: false,
            length: None,
            close: false,
        };
        loop {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            total += n;
            if total > MAX_HEAD {
                return Err(bad("response head over 64 KiB"));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if head.status == 0 {
                head.status = text
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .filter(|_| text.starts_with("HTTP/1."))
                    .ok_or_else(|| bad("not an HTTP/1.x response"))?;
                continue;
            }
            if text.is_empty() {
                return Ok(head);
            }
            let Some((name, value)) = text.split_once(':') else {
                return Err(bad("malformed response header"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                head.close = value.eq_ignore_ascii_case("close");
            }
        }
    }

    /// Reads a whole body framed as `head` says.
    pub fn body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked {
            let mut out = Vec::new();
            while let Some(chunk) = self.chunk()? {
                if out.len() + chunk.len() > MAX_BODY {
                    return Err(bad("response body over 256 MiB"));
                }
                out.extend_from_slice(&chunk);
            }
            return Ok(out);
        }
        let Some(len) = head.length else {
            // Until close.
            let mut out = Vec::new();
            (&mut self.reader)
                .take(MAX_BODY as u64)
                .read_to_end(&mut out)?;
            return Ok(out);
        };
        if len > MAX_BODY {
            return Err(bad("response body over 256 MiB"));
        }
        let mut out = vec![0; len];
        self.reader.read_exact(&mut out)?;
        Ok(out)
    }

    /// The next chunk of a chunked body; `None` after the last one (trailers skipped).
    pub fn chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        self.line(&mut line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            loop {
                self.line(&mut line)?;
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
            }
        }
        if size > MAX_BODY {
            return Err(bad("chunk over 256 MiB"));
        }
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(bad("chunk without CRLF"));
        }
        data.truncate(size);
        Ok(Some(data))
    }

    fn line(&mut self, line: &mut Vec<u8>) -> io::Result<()> {
        line.clear();
        let n = (&mut self.reader).take(4096).read_until(b'\n', line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\n") {
            return Err(bad("chunk line over 4 KiB"));
        }
        Ok(())
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
