//! A TLS connection over a monoio TCP stream: rustls's state machine fed through the
//! runtime's owned-buffer I/O, with every read and write bounded by the connection's
//! [`Watch`] like plain sockets are.
//!
//! rustls does no I/O itself: ciphertext read from the socket goes into `rbuf` and is handed
//! to rustls from there (`read_tls`), plaintext comes out of its reader; plaintext written
//! is encrypted into rustls's send queue. Large writes go to the socket straight from that
//! queue with non-blocking `writev(2)` calls (a wait for room is an io_uring poll), so no
//! copy of the ciphertext is made in user space: on 1 MiB responses that copy was a tenth of
//! the gateway's CPU. Small ones are copied into `wbuf` and written by io_uring, which
//! submits them with the worker's other operations: a system call of their own cost small
//! HTTPS responses more than the copy (about 5% more CPU each, measured A/B). Reads stay io_uring
//! reads: one operation per wait rather than a poll and a read. We keep
//! the adapter here rather than use monoio-rustls so the session's facts (SNI, the client's
//! certificate) stay reachable after the handshake, no byte pipelined behind the handshake
//! is dropped, the handshake can pick its configuration from the ClientHello (client
//! certificate authentication and protocol versions are per `ssls` object), and buffers
//! follow the gateway's rules (a large write buffer is not kept between writes).

use crate::net::io::{read_parkable, read_plain, Got, IoFail};
use crate::net::watchdog::{Dir, Watch};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::server::{Accepted, Acceptor};
use rustls::{ClientConfig, Connection, ServerConfig};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ciphertext read per socket read: one full TLS record and its header and tag.
const READ_SIZE: usize = 16 * 1024 + 512;
/// Writes of at least this much plaintext go out with writev(2) from rustls's queue; smaller
/// ones through `wbuf` and io_uring (see the module's comment).
const DIRECT_WRITE: usize = 16 * 1024;
/// A write buffer larger than this is freed after the write rather than kept while idle.
const KEEP_WBUF: usize = 20 * 1024;
/// A fatal `internal_error` alert record.
const INTERNAL_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

/// Why a handshake failed, for the log.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed, reset, or sent nothing in time.
    Io(IoFail),
    /// The peer spoke TLS wrongly or was refused (bad certificate, no common version or
    /// cipher).
    Tls(rustls::Error),
    /// No certificate serves the name the client asked for (None: it sent no SNI).
    NoCertificate(Option<Box<str>>),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(IoFail::Timeout) => f.write_str("timed out"),
            HandshakeError::Io(IoFail::Io(e)) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::NoCertificate(Some(name)) => {
                write!(f, "failed to match any SSL certificate by SNI: {name}")
            }
            HandshakeError::NoCertificate(None) => {
                f.write_str("the client sent no SNI and gateway.fallback_sni names no certificate")
            }
        }
    }
}

impl From<IoFail> for HandshakeError {
    fn from(e: IoFail) -> Self {
        HandshakeError::Io(e)
    }
}

/// An established (or establishing) TLS connection.
pub struct TlsConn {
    tcp: TcpStream,
    conn: Connection,
    /// Ciphertext received and not yet handed to rustls: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Small writes' ciphertext on its way to the socket.
    wbuf: Vec<u8>,
    /// What the server side learnt at the handshake (empty on client connections).
    pub facts: Facts,
}

/// What the handshake told the server about its client.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The name the client asked for (SNI), lower case.
    pub server_name: Option<Box<str>>,
    /// The subject of the client's certificate in RFC 2253 form (nginx's
    /// `$ssl_client_s_dn`), when it sent one.
    pub client_s_dn: Option<Box<str>>,
    /// The `ssls` object served demands a client certificate and none was sent: the
    /// session answers 400 to the first request, as nginx does.
    pub missing_client_cert: bool,
    /// The ALPN protocol agreed.
    pub alpn: Option<Box<[u8]>>,
}

/// What the server side decides from a ClientHello: the configuration to continue with and
/// whether a client certificate is required.
pub struct Choice {
    pub config: Arc<ServerConfig>,
    pub client_cert_required: bool,
}

impl TlsConn {
    fn new(tcp: TcpStream, conn: Connection, rbuf: Vec<u8>, rpos: usize) -> TlsConn {
        // Writes go straight from rustls's queue with non-blocking writev(2) (see `flush`);
        // io_uring's reads keep working on a non-blocking socket. (fcntl(2) does not fail on
        // an open socket.)
        let _ = crate::net::sockopt::set_nonblocking(&tcp);
        TlsConn {
            tcp,
            conn,
            rbuf,
            rpos,
            wbuf: Vec::new(),
            facts: Facts::default(),
        }
    }

    /// The TCP socket underneath (socket options, the watchdog).
    /// The socket, rustls's state and the ciphertext read but not yet handed to rustls
    /// (`rbuf[rpos..]`): what an HTTP/2 connection goes on with after ALPN chose `h2`.
    pub fn into_parts(self) -> (TcpStream, Connection, Vec<u8>, usize) {
        (self.tcp, self.conn, self.rbuf, self.rpos)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Accepts a client's handshake by `deadline`, choosing the configuration from its
    /// ClientHello with `choose` (None: refuse, as for a name with no certificate).
    pub async fn accept(
        tcp: TcpStream,
        deadline: Instant,
        watch: &Watch,
        choose: impl FnOnce(&rustls::server::ClientHello<'_>) -> Option<Choice>,
    ) -> Result<TlsConn, HandshakeError> {
        let mut tcp = tcp;
        let mut rbuf = Vec::with_capacity(READ_SIZE);
        let mut acceptor = Acceptor::default();
        let accepted: Accepted = loop {
            rbuf.clear();
            let n = read_plain(&mut tcp, &mut rbuf, READ_SIZE, deadline, watch).await?;
            if n == 0 {
                return Err(HandshakeError::Io(IoFail::Io(
                    io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            let mut pos = 0;
            while pos < rbuf.len() {
                match acceptor.read_tls(&mut &rbuf[pos..]) {
                    Ok(0) => break,
                    Ok(k) => pos += k,
                    Err(e) => return Err(HandshakeError::Io(IoFail::Io(e))),
                }
            }
            match acceptor.accept() {
                Ok(None) => continue,
                Ok(Some(a)) => break a,
                Err((e, mut alert)) => {
                    let mut out = Vec::new();
                    let _ = alert.write_all(&mut out);
                    let _ = send(&mut tcp, out, deadline, watch).await;
                    return Err(HandshakeError::Tls(e));
                }
            }
        };
        let hello = accepted.client_hello();
        let server_name = hello.server_name().map(|n| n.to_ascii_lowercase().into());
        let Some(choice) = choose(&hello) else {
            // No certificate for this name: a fatal internal_error alert, as APISIX's
            // failing certificate phase makes OpenSSL send.
            let _ = send(&mut tcp, INTERNAL_ERROR_ALERT.to_vec(), deadline, watch).await;
            return Err(HandshakeError::NoCertificate(server_name));
        };
        let conn = match accepted.into_connection(choice.config) {
            Ok(c) => c,
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = send(&mut tcp, out, deadline, watch).await;
                return Err(HandshakeError::Tls(e));
            }
        };
        // Everything read so far went to the acceptor and came along into the connection.
        rbuf.clear();
        let mut tls = TlsConn::new(tcp, Connection::Server(conn), rbuf, 0);
        tls.complete(deadline, watch).await?;
        tls.facts.server_name = server_name;
        tls.facts.alpn = tls.conn.alpn_protocol().map(Into::into);
        match tls.conn.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => tls.facts.client_s_dn = super::dn::subject(cert).map(Into::into),
            None => tls.facts.missing_client_cert = choice.client_cert_required,
        }
        Ok(tls)
    }

    /// Connects as a client to `name` over `tcp` within `limit`.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
        watch: &Watch,
    ) -> Result<TlsConn, HandshakeError> {
        let deadline = watch.deadline_in(limit);
        let conn = rustls::ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
        let mut tls = TlsConn::new(tcp, Connection::Client(conn), Vec::new(), 0);
        tls.complete(deadline, watch).await?;
        Ok(tls)
    }

    /// Drives the handshake to its end (and sends what it leaves queued: session tickets).
    async fn complete(&mut self, deadline: Instant, watch: &Watch) -> Result<(), HandshakeError> {
        loop {
            if self.conn.wants_write() {
                self.flush(deadline, watch).await?;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.rpos < self.rbuf.len() {
                self.feed().map_err(|e| self.fail(e))?;
                if let Err(e) = self.conn.process_new_packets() {
                    // The alert rustls queued tells the peer why.
                    let _ = self.flush(deadline, watch).await;
                    return Err(HandshakeError::Tls(e));
                }
                continue;
            }
            self.rbuf.clear();
            self.rpos = 0;
            if read_plain(&mut self.tcp, &mut self.rbuf, READ_SIZE, deadline, watch).await? == 0 {
                return Err(HandshakeError::Io(IoFail::Io(
                    io::ErrorKind::UnexpectedEof.into(),
                )));
            }
        }
    }

    fn fail(&self, e: io::Error) -> HandshakeError {
        HandshakeError::Io(IoFail::Io(e))
    }

    /// Hands received ciphertext to rustls (as much as it takes now).
    fn feed(&mut self) -> io::Result<usize> {
        let n = self.conn.read_tls(&mut &self.rbuf[self.rpos..])?;
        self.rpos += n;
        Ok(n)
    }

    /// Sends everything rustls has queued, by `deadline`, through `wbuf` and io_uring.
    async fn flush(&mut self, deadline: Instant, watch: &Watch) -> Result<(), IoFail> {
        while self.conn.wants_write() {
            self.wbuf.clear();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.wbuf).map_err(IoFail::Io)?;
            }
            let out = std::mem::take(&mut self.wbuf);
            self.wbuf = send(&mut self.tcp, out, deadline, watch).await?;
        }
        if self.wbuf.capacity() > KEEP_WBUF {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// Sends everything rustls has queued, by `deadline`, straight from its queue.
    async fn flush_direct(&mut self, deadline: Instant, watch: &Watch) -> Result<(), IoFail> {
        while !self.try_flush().map_err(IoFail::Io)? {
            watch.arm_until(self.tcp.as_raw_fd(), Dir::Write, deadline);
            let ready = self.tcp.writable(false).await;
            if watch.disarm() {
                return Err(IoFail::Timeout);
            }
            ready.map_err(IoFail::Io)?;
        }
        Ok(())
    }

    /// Reads more plaintext after `buf.len()`, keeping at least `min_spare` free, within
    /// `limit` of waiting for the peer. Returns 0 at end of stream (a close_notify, or the
    /// peer's TCP end: HTTP framing tells a truncated message from a complete one).
    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        limit: Duration,
        watch: &Watch,
    ) -> Result<usize, IoFail> {
        match self.read_some(buf, min_spare, limit, watch, false).await? {
            Got::Bytes(n) => Ok(n),
            // Only parkable reads park.
            Got::Parked => Ok(0),
        }
    }

    /// [`TlsConn::read_more`] for a client's next request head: when the wait for the
    /// peer's ciphertext gets nothing for a tick or two, the watchdog parks it (as
    /// `net::io::read_parkable` does for plain sockets) and the connection lets go of its
    /// buffers ([`TlsConn::release_buffers`]). `Got::Parked`: nothing was added to `buf`.
    pub async fn read_parkable(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        limit: Duration,
        watch: &Watch,
    ) -> Result<Got, IoFail> {
        self.read_some(buf, min_spare, limit, watch, true).await
    }

    async fn read_some(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        limit: Duration,
        watch: &Watch,
        parkable: bool,
    ) -> Result<Got, IoFail> {
        if buf.capacity() - buf.len() < min_spare {
            buf.reserve(min_spare);
        }
        // Plaintext goes only into room the buffer has: it never reallocates here.
        let max = buf.capacity() - buf.len();
        let mut got = 0;
        loop {
            // Plaintext rustls already holds.
            match self.drain(buf, max, &mut got).map_err(IoFail::Io)? {
                Drained::Full | Drained::Ended => return Ok(Got::Bytes(got)),
                Drained::Empty => {}
            }
            // Ciphertext already received.
            if self.rpos < self.rbuf.len() {
                self.feed().map_err(IoFail::Io)?;
                let processed = self.conn.process_new_packets();
                if self.conn.wants_write() {
                    // An alert, or an answer to a key update.
                    let deadline = watch.deadline_in(limit);
                    let _ = self.flush(deadline, watch).await;
                }
                if let Err(e) = processed {
                    return Err(IoFail::Io(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                continue;
            }
            if got > 0 {
                return Ok(Got::Bytes(got));
            }
            // Wait for the peer.
            self.rbuf.clear();
            self.rpos = 0;
            let deadline = watch.deadline_in(limit);
            let (tcp, rbuf) = (&mut self.tcp, &mut self.rbuf);
            let got = match parkable {
                true => read_parkable(tcp, rbuf, READ_SIZE, deadline, watch).await?,
                false => Got::Bytes(read_plain(tcp, rbuf, READ_SIZE, deadline, watch).await?),
            };
            let Got::Bytes(n) = got else {
                self.release_buffers();
                return Ok(Got::Parked);
            };
            if n == 0 {
                // Tell rustls the stream ended; the reader then reports it.
                let _ = self.conn.read_tls(&mut &[][..]);
            }
        }
    }

    /// Lets go of the buffers a connection that waits does not need: ours for ciphertext
    /// both ways (the read buffer only when all it holds went to rustls; the next read takes
    /// a new one), and rustls's receive buffer down to the one 4 KiB read it keeps when it
    /// holds no partial record (it shrinks at a read; this one finds nothing yet). What
    /// stays is rustls's session state: keys, sequence numbers, and those 4 KiB.
    pub fn release_buffers(&mut self) {
        if self.rpos >= self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        self.wbuf = Vec::new();
        let _ = self.conn.read_tls(&mut NothingYet);
    }

    /// Writes `data` completely; `limit` bounds each write's progress. On failure, how many
    /// bytes had been handed on.
    pub async fn write(
        &mut self,
        data: &[u8],
        limit: Duration,
        watch: &Watch,
    ) -> Result<(), (IoFail, usize)> {
        let mut pos = 0;
        while pos < data.len() {
            let n = self
                .conn
                .writer()
                .write(&data[pos..])
                .map_err(|e| (IoFail::Io(e), pos))?;
            if n == 0 {
                return Err((IoFail::Io(io::ErrorKind::WriteZero.into()), pos));
            }
            let deadline = watch.deadline_in(limit);
            let flushed = match data.len() >= DIRECT_WRITE {
                true => self.flush_direct(deadline, watch).await,
                false => self.flush(deadline, watch).await,
            };
            flushed.map_err(|e| (e, pos))?;
            pos += n;
        }
        Ok(())
    }

    /// Moves the plaintext rustls holds into `buf` while `got < max`, counting in `got`.
    fn drain(&mut self, buf: &mut Vec<u8>, max: usize, got: &mut usize) -> io::Result<Drained> {
        let mut reader = self.conn.reader();
        loop {
            if *got >= max {
                return Ok(Drained::Full);
            }
            match reader.fill_buf() {
                Ok([]) => return Ok(Drained::Ended),
                Ok(chunk) => {
                    let n = chunk.len().min(max - *got);
                    buf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    *got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drained::Empty),
                // The peer's TCP end without a close_notify: HTTP framing tells a truncated
                // message from a complete one.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Drained::Ended),
                Err(e) => return Err(e),
            }
        }
    }

    /// Non-blocking read for the tunnel: plaintext rustls holds, else ciphertext read from
    /// the (non-blocking) socket now and decrypted. At most `max` bytes appended to `buf`.
    pub fn try_read(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<crate::net::nonblock::Got> {
        use crate::net::nonblock::{read_fd, Got};
        let mut got = 0;
        loop {
            match self.drain(buf, max, &mut got)? {
                Drained::Full => return Ok(Got::Data(got)),
                // Closed with or without a close_notify: an end all the same for a tunnel.
                Drained::Ended if got == 0 => return Ok(Got::End),
                Drained::Ended => return Ok(Got::Data(got)),
                Drained::Empty => {}
            }
            if got > 0 {
                return Ok(Got::Data(got));
            }
            if self.rpos < self.rbuf.len() {
                self.feed()?;
                let processed = self.conn.process_new_packets();
                // Alerts and key updates rustls wants to answer.
                self.try_flush()?;
                processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                continue;
            }
            self.rbuf.clear();
            self.rpos = 0;
            match read_fd(self.tcp.as_raw_fd(), &mut self.rbuf, READ_SIZE)? {
                Got::Nothing => return Ok(Got::Nothing),
                Got::Data(_) => {}
                Got::End => {
                    // rustls hears of the end; its reader then tells how it ended.
                    let _ = self.conn.read_tls(&mut &[][..]);
                    let _ = self.conn.process_new_packets();
                }
            }
        }
    }

    /// Non-blocking write for the tunnel: encrypts up to one record's worth of `data` once
    /// earlier records are out, and sends what the socket takes. `Ok(0)`: wait until writable.
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.try_flush()? {
            return Ok(0);
        }
        let n = self
            .conn
            .writer()
            .write(&data[..data.len().min(DIRECT_WRITE)])?;
        self.try_flush()?;
        Ok(n)
    }

    /// Sends queued records without waiting; true when none is left.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        let fd = self.tcp.as_raw_fd();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut FdWriter(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues a close_notify (the tunnel's half-close; [`TlsConn::try_flush`] sends it).
    pub fn queue_close(&mut self) {
        self.conn.send_close_notify();
    }

    /// Says goodbye (close_notify) and half-closes the socket.
    pub async fn shutdown(&mut self, watch: &Watch) {
        self.conn.send_close_notify();
        let deadline = watch.deadline_in(Duration::from_secs(1));
        let _ = self.flush(deadline, watch).await;
        let _ = self.tcp.shutdown().await;
    }
}

/// Writes all of `out` to the socket by `deadline`, giving the buffer back.
async fn send(
    tcp: &mut TcpStream,
    out: Vec<u8>,
    deadline: Instant,
    watch: &Watch,
) -> Result<Vec<u8>, IoFail> {
    watch.arm_until(tcp.as_raw_fd(), Dir::Write, deadline);
    let (res, out) = tcp.write_all(out).await;
    if watch.disarm() {
        return Err(IoFail::Timeout);
    }
    res.map_err(IoFail::Io)?;
    Ok(out)
}

/// Where moving rustls's plaintext out stopped.
enum Drained {
    /// The caller's limit was reached.
    Full,
    /// The peer ended the stream.
    Ended,
    /// Nothing more until more ciphertext arrives.
    Empty,
}

/// A reader with nothing yet: lets rustls resize its receive buffer without reading.
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// `writev(2)` on a socket, for rustls to write its queued records to directly.
struct FdWriter(std::os::fd::RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.len().min(64) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        let r = unsafe { libc::writev(self.0, bufs.as_ptr().cast::<libc::iovec>(), n) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
