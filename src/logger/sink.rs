//! Where a logger's batches go, sent from the shipper thread with blocking sockets and
//! timeouts (never from a worker).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// How an HTTP batch is joined (APISIX's `concat_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concat {
    /// One JSON object for a batch of one, else a JSON array.
    Json,
    /// One JSON object per line.
    NewLine,
}

#[derive(Debug, Clone)]
pub enum Sink {
    /// `POST` to an `http://` URI.
    Http {
        uri: String,
        host: String,
        port: u16,
        path: String,
        auth_header: Option<String>,
        timeout: Duration,
        concat: Concat,
    },
    Tcp {
        host: String,
        port: u16,
        timeout: Duration,
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
            Sink::Tcp { host, port, .. } => format!("tcp://{host}:{port}"),
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
                ..
            } => {
                let (body, kind) = match concat {
                    Concat::Json => (json(), "application/json"),
                    Concat::NewLine => (batch.join("\n"), "text/plain"),
                };
                let mut s = connect(host, *port, *timeout)?;
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
            } => {
                let mut s = connect(host, *port, *timeout)?;
                s.write_all(json().as_bytes()).map_err(|e| {
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

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = resolve(host, port)?;
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("failed to connect to host[{host}] port[{port}] {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    Ok(s)
}
