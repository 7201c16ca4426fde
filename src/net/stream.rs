//! A connection's byte stream: plain TCP, or TLS over TCP. One type for both so the
//! session, the body relays and the upstream pool are written once; the buffer helpers in
//! [`super::io`] pick the path. What only works on plain sockets (splice) asks
//! [`Stream::plain`]; socket options go to the TCP socket underneath either way.

use crate::tls::stream::TlsConn;
use monoio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's state is large and most connections are plain.
    Tls(Box<TlsConn>),
}

impl Stream {
    /// The TCP socket (the TLS connection's, for TLS).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.tcp(),
        }
    }

    /// The socket, when bytes go on it as they are (splice needs that).
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    pub fn tls(&self) -> Option<&TlsConn> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t),
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
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp().as_raw_fd()
    }
}
