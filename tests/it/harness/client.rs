//! A small, strict HTTP/1.1 client over a plain TcpStream, able to send malformed bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw_head: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The status, and for a refusal the JSON body's `message` (APISIX's plugins' form).
    pub fn refusal(&self) -> (u16, String) {
        let msg = match self.status {
            200 => String::new(),
            _ => self.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        (self.status, msg)
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// TLS over `stream` (see [`Client::connect_tls`]).
    pub tls: Option<Box<rustls::ClientConnection>>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to gateway");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            tls: None,
        }
    }

    /// Connects and completes a TLS handshake for `sni` (None: no SNI, the address then).
    pub fn connect_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        sni: Option<&str>,
    ) -> io::Result<Client> {
        let mut c = Client::connect(addr);
        let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("127.0.0.1"))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_owned();
        let mut conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut c.stream)?;
        }
        c.tls = Some(Box::new(conn));
        Ok(c)
    }

    /// The TLS session (panics on a plain client).
    pub fn session(&self) -> &rustls::ClientConnection {
        self.tls.as_ref().expect("a TLS client")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            None => self.stream.write_all(bytes).expect("write to gateway"),
            Some(conn) => rustls::Stream::new(&mut **conn, &mut self.stream)
                .write_all(bytes)
                .expect("write to gateway"),
        }
    }

    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(out),
            Some(conn) => match rustls::Stream::new(&mut **conn, &mut self.stream).read(out) {
                // A TCP close without close_notify: the end, as on a plain socket.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }

    /// Sends a request; adds `Host: test.local` unless a Host is given, and Content-Length
    /// for a non-empty body unless a framing header is given.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
        if !has("host") {
            req.push_str("Host: test.local\r\n");
        }
        if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(method, path, headers, body);
        self.read_response(method == "HEAD")
            .unwrap_or_else(|e| panic!("{method} {path}: no response: {e}"))
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = self.read_some(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response (skipping 1xx), de-chunking a chunked body.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let resp = self.read_one(head_request)?;
            if resp.status >= 200 {
                return Ok(resp);
            }
        }
    }

    /// Reads one response, 1xx included.
    pub fn read_one(&mut self, head_request: bool) -> io::Result<Response> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response head",
                ));
            }
        };
        let raw_head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        r.parse(&self.buf[..head_end])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {raw_head}")))?;
        let status = r.code.unwrap();
        let version = r.version.unwrap();
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).to_string(),
                )
            })
            .collect();
        self.buf.drain(..head_end);
        let mut resp = Response {
            status,
            version,
            headers,
            body: Vec::new(),
            raw_head,
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if self.fill()? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk"))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    loop {
                        if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            let empty = p == 0;
                            self.buf.drain(..p + 2);
                            if empty {
                                return Ok(resp);
                            }
                            continue;
                        }
                        if self.fill()? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    if self.fill()? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(cl) = resp.header("content-length") {
            let cl: usize = cl.trim().parse().unwrap();
            while self.buf.len() < cl {
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            resp.body = self.buf.drain(..cl).collect();
        } else {
            while self.fill()? > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    /// True when the server closed the connection (EOF or reset within the read timeout).
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        match self.read_some(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// Bytes received and not yet consumed by a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}
