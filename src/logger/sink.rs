//! Where a logger's batches go, sent from the shipper thread with blocking sockets and
//! timeouts (never from a worker).

use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

/// How an HTTP batch is joined (APISIX's `concat_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concat {
    /// One JSON object for a batch of one, else a JSON array.
    Json,
    /// One JSON object per line.
    NewLine,
}

/// TLS to a log server (http-logger's `https://`, tcp-logger's `tls`).
#[derive(Debug, Clone)]
pub struct LogTls {
    /// Verify the server's certificate against `gateway.ssl_trusted_certificate` (or the
    /// system's CAs): http-logger's `ssl_verify`; tcp-logger never verifies, as APISIX.
    pub verify: bool,
    /// The name sent as SNI (and verified); `None`: no SNI (tcp-logger without
    /// `tls_options`).
    pub sni: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Sink {
    /// `POST` to an `http://` or `https://` URI.
    Http {
        uri: String,
        host: String,
        port: u16,
        path: String,
        auth_header: Option<String>,
        timeout: Duration,
        concat: Concat,
        tls: Option<LogTls>,
    },
    Tcp {
        host: String,
        port: u16,
        timeout: Duration,
        tls: Option<LogTls>,
    },
    Udp {
        host: String,
        port: u16,
    },
    /// Lines appended to a file.
    File {
        path: String,
    },
}

impl Sink {
    /// The target as the metrics and the log name it.
    pub fn target(&self) -> String {
        match self {
            Sink::Http { uri, .. } => uri.clone(),
            Sink::Tcp {
                host,
                port,
                tls: None,
                ..
            } => format!("tcp://{host}:{port}"),
            Sink::Tcp { host, port, .. } => format!("tcp+tls://{host}:{port}"),
            Sink::Udp { host, port } => format!("udp://{host}:{port}"),
            Sink::File { path } => path.clone(),
        }
    }

    /// A file takes every entry as it comes (APISIX's file-logger has no batches).
    pub fn unbatched(&self) -> bool {
        matches!(self, Sink::File { .. })
    }

    /// Sends one batch (`batch_max_size` 1: a single JSON object, as APISIX sends it).
    pub fn send(&self, batch: &[String], batch_max_size: usize) -> Result<(), String> {
        let json = || match (batch_max_size, batch) {
            (1, [one]) => one.clone(),
            _ => format!("[{}]", batch.join(",")),
        };
        match self {
            Sink::Http {
                host,
                port,
                path,
                auth_header,
                timeout,
                concat,
                tls,
                ..
            } => {
                let (body, kind) = match concat {
                    Concat::Json => (json(), "application/json"),
                    Concat::NewLine => (batch.join("\n"), "text/plain"),
                };
                let mut s = connect(host, *port, *timeout)?.secure(tls.as_ref(), |e| {
                    format!("failed to perform SSL with host[{host}] port[{port}] {e}")
                })?;
                let auth = auth_header
                    .as_deref()
                    .map(|a| format!("Authorization: {a}\r\n"))
                    .unwrap_or_default();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes())
                    .and_then(|_| s.write_all(body.as_bytes()))
                    .map_err(|e| {
                        format!("error while sending data to [{host}] port[{port}] {e}")
                    })?;
                let mut line = [0u8; 12];
                s.read_exact(&mut line).map_err(|e| {
                    format!("error while sending data to [{host}] port[{port}] {e}")
                })?;
                let status = std::str::from_utf8(&line[9..12])
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or("not an HTTP answer")?;
                if status >= 400 {
                    return Err(format!(
                        "server returned status code[{status}] host[{host}] port[{port}]"
                    ));
                }
                Ok(())
            }
            Sink::Tcp {
                host,
                port,
                timeout,
                tls,
            } => {
                let mut s = connect(host, *port, *timeout)?.secure(tls.as_ref(), |e| {
                    format!(
                        "failed to perform TLS handshake to TCP server: host[{host}] port[{port}] err: {e}"
                    )
                })?;
                s.write_all(json().as_bytes())
                    .and_then(|()| s.finish())
                    .map_err(|e| {
                        format!("failed to send data to TCP server: host[{host}] port[{port}] {e}")
                    })
            }
            Sink::Udp { host, port } => {
                let addr = resolve(host, *port)?;
                let local: SocketAddr = match addr {
                    SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let sock = UdpSocket::bind(local).map_err(|e| e.to_string())?;
                sock.send_to(json().as_bytes(), addr)
                    .map(|_| ())
                    .map_err(|e| {
                        format!("failed to send data to UDP server: host[{host}] port[{port}] {e}")
                    })
            }
            Sink::File { path } => {
                let mut text = batch.join("\n");
                text.push('\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .map_err(|e| format!("failed to write {path}: {e}"))
            }
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve host[{host}]"))
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<Conn, String> {
    let addr = resolve(host, port)?;
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("failed to connect to host[{host}] port[{port}] {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    Ok(Conn::Plain(s))
}

/// A connection to a log server, plain or TLS (the socket's timeouts bound the handshake).
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// Completes a TLS handshake on the connection when `tls` says so; a failure is
    /// reported by `fail`.
    fn secure(self, tls: Option<&LogTls>, fail: impl Fn(String) -> String) -> Result<Conn, String> {
        let (tcp, tls) = match (self, tls) {
            (Conn::Plain(tcp), Some(tls)) => (tcp, tls),
            (conn, _) => return Ok(conn),
        };
        let roots = tls.verify.then(crate::upstream::tls::current_roots);
        let mut config = crate::tls::client::builder(roots)
            .map_err(|e| fail(e.to_string()))?
            .with_no_client_auth();
        config.enable_sni = tls.sni.is_some();
        // Without SNI the name only matters to verification, which is off then (tcp-logger).
        let name = tls.sni.as_deref().unwrap_or("localhost");
        let name = crate::tls::client::server_name(name.as_bytes())
            .ok_or_else(|| fail(format!("\"{name}\" is not a server name")))?;
        let conn =
            ClientConnection::new(Arc::new(config), name).map_err(|e| fail(e.to_string()))?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(Conn::Tls(Box::new(s)))
    }

    /// Ends what was sent: on TLS, a close_notify, then what the server still sends (its
    /// session tickets) is read until it closes too (within the socket's timeout): a socket
    /// closed with unread bytes is reset, and a reset can reach the server before it has
    /// read the batch.
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(s) => {
                s.conn.send_close_notify();
                s.flush()?;
                let _ = s.sock.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 4096];
                while matches!(s.sock.read(&mut sink), Ok(n) if n > 0) {}
                Ok(())
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}
