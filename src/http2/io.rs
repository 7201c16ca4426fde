//! The byte stream under an HTTP/2 connection, in the poll style the `h2` crate drives
//! (tokio's `AsyncRead`/`AsyncWrite`): the TCP socket through monoio's poll-io mode, and for
//! TLS, the connection's rustls state moved over from the handshake (`TlsConn::into_parts`)
//! with the ciphertext already read behind the handshake.
//!
//! An h2c connection starts with the bytes the HTTP/1.1 session read before it saw the
//! connection preface: they are read first.

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext read per socket read: one full TLS record with its header and tag.
const READ_SIZE: usize = 16 * 1024 + 512;

pub struct H2Io {
    tcp: TcpStreamPoll,
    tls: Option<Box<Tls>>,
    /// h2c: bytes already read from the socket, served before it.
    prefix: Vec<u8>,
    prefix_pos: usize,
}

/// rustls's state and the ciphertext read but not yet handed to it.
struct Tls {
    conn: rustls::Connection,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl H2Io {
    /// A plain connection whose first bytes (`prefix`) were already read.
    pub fn plain(tcp: TcpStream, prefix: Vec<u8>) -> io::Result<H2Io> {
        Ok(H2Io {
            tcp: tcp.try_into_poll_io().map_err(|(e, _)| e)?,
            tls: None,
            prefix,
            prefix_pos: 0,
        })
    }

    /// A TLS connection after its handshake: rustls's state and unread ciphertext.
    pub fn tls(
        tcp: TcpStream,
        conn: rustls::Connection,
        rbuf: Vec<u8>,
        rpos: usize,
    ) -> io::Result<H2Io> {
        Ok(H2Io {
            tcp: tcp.try_into_poll_io().map_err(|(e, _)| e)?,
            tls: Some(Box::new(Tls { conn, rbuf, rpos })),
            prefix: Vec::new(),
            prefix_pos: 0,
        })
    }

    /// Writes rustls's queued records; Ready once none is left.
    fn poll_send_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while tls.conn.wants_write() {
            let mut out = PollWriter {
                tcp: &mut self.tcp,
                cx,
            };
            match tls.conn.write_tls(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let tls = self.tls.as_mut().expect("a TLS stream");
            match tls.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer's TCP end without a close_notify: h2 sees an end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if tls.rpos < tls.rbuf.len() {
                let n = tls.conn.read_tls(&mut &tls.rbuf[tls.rpos..])?;
                tls.rpos += n;
                let processed = tls.conn.process_new_packets();
                // Alerts, tickets and key updates rustls wants to send go out when they can.
                if let Poll::Ready(Err(e)) = self.poll_send_tls(cx) {
                    return Poll::Ready(Err(e));
                }
                if let Err(e) = processed {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                continue;
            }
            // The socket is read into the buffer's spare room, which is not zeroed first
            // (that was 16.5 KiB of memset per read).
            tls.rbuf.clear();
            tls.rpos = 0;
            tls.rbuf.reserve(READ_SIZE);
            let mut rb = ReadBuf::uninit(&mut tls.rbuf.spare_capacity_mut()[..READ_SIZE]);
            let read = Pin::new(&mut self.tcp).poll_read(cx, &mut rb);
            let filled = rb.filled().len();
            let tls = self.tls.as_mut().expect("a TLS stream");
            // SAFETY: the first `filled` bytes of the spare room were written by the read
            // (ReadBuf's filled part is initialized), and `filled <= READ_SIZE <= capacity`.
            unsafe { tls.rbuf.set_len(filled) };
            if read.is_pending() {
                // Poll-mode reads hold no buffer while they wait (the read happens once the
                // socket is readable), so a connection with nothing to read keeps none: an
                // idle HTTP/2 connection is 16.5 KiB lighter. The next read takes one again.
                tls.rbuf = Vec::new();
                return Poll::Pending;
            }
            ready!(read)?;
            if filled == 0 {
                // rustls hears of the end; its reader then tells how it ended.
                let _ = tls.conn.read_tls(&mut &[][..]);
                let _ = tls.conn.process_new_packets();
            }
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tls.is_some() {
            return this.poll_read_tls(cx, buf);
        }
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.is_none() {
            return Pin::new(&mut this.tcp).poll_write(cx, data);
        }
        // Records queued earlier go first: that is the backpressure on the writer.
        ready!(this.poll_send_tls(cx))?;
        let tls = this.tls.as_mut().expect("a TLS stream");
        let n = tls.conn.writer().write(data)?;
        if let Poll::Ready(Err(e)) = this.poll_send_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.is_none() {
            return Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        }
        ready!(this.poll_send_tls(cx))?;
        let tls = this.tls.as_mut().expect("a TLS stream");
        let n = tls.conn.writer().write_vectored(bufs)?;
        if let Poll::Ready(Err(e)) = this.poll_send_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_mut() {
            tls.conn.send_close_notify();
            ready!(this.poll_send_tls(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// rustls writes its records through this: the socket's poll write, with "not now" as
/// `WouldBlock` (the task is woken when the socket has room).
struct PollWriter<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
