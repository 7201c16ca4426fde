//! A connection's byte stream: plain TCP, TLS over TCP, or one HTTP/2 stream carrying one
//! exchange. One type for all so the session, the body relays and the upstream pool are
//! written once; the buffer helpers in [`super::io`] pick the path. What only works on plain
//! sockets (splice) asks [`Stream::plain`]; socket options go to the TCP socket underneath
//! (an HTTP/2 stream has none of its own: they do nothing there).

use crate::http2::stream::H2Stream;
use crate::tls::stream::{Facts, TlsConn};
use monoio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's state is large and most connections are plain.
    Tls(Box<TlsConn>),
    /// A client's HTTP/2 stream, read and written as HTTP/1.1 (see `http2::stream`).
    H2(Box<H2Stream>),
}

impl Stream {
    /// The TCP socket (the TLS connection's, for TLS); none for an HTTP/2 stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(t.tcp()),
            Stream::H2(_) => None,
        }
    }

    /// The socket, when bytes go on it as they are (splice needs that).
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            _ => None,
        }
    }

    /// The TLS connection, for a TLS stream.
    pub fn tls(&self) -> Option<&TlsConn> {
        match self {
            Stream::Tls(t) => Some(t),
            _ => None,
        }
    }

    /// The client's TLS session facts (SNI, certificate), over HTTP/1.1 or HTTP/2.
    pub fn tls_facts(&self) -> Option<&Facts> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(&t.facts),
            Stream::H2(h) => h.facts.as_deref(),
        }
    }

    /// Ends the sending side: FIN, after a close_notify on TLS.
    pub async fn shutdown(&mut self, watch: &super::watchdog::Watch) {
        use monoio::io::AsyncWriteRent;
        match self {
            Stream::Plain(s) => {
                let _ = s.shutdown().await;
            }
            Stream::Tls(t) => t.shutdown(watch).await,
            // The stream ends with its response.
            Stream::H2(_) => {}
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    /// -1 for an HTTP/2 stream: socket options are skipped and the watchdog watches nothing.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp().map_or(-1, |t| t.as_raw_fd())
    }
}
