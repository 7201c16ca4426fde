//! Buffer-owning I/O helpers over monoio's rent model, each bounded by a [`Watch`].
//!
//! monoio reads into and writes from buffers it takes ownership of for the duration of the
//! operation. These helpers move a connection's `Vec<u8>` in and back out so callers keep
//! one long-lived buffer per connection. A timeout does not cancel the operation: the watchdog
//! shuts the socket down, the operation completes, and the buffer comes back.

use super::stream::Stream;
use super::watchdog::{Dir, Watch};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How an I/O step with a deadline failed.
#[derive(Debug)]
pub enum IoFail {
    Timeout,
    Io(io::Error),
}

/// Reads more bytes after `buf.len()`, keeping at least `min_spare` free space, within
/// `limit`. Returns 0 at end of stream.
pub async fn read_more_timeout(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    limit: Duration,
    watch: &Watch,
) -> Result<usize, IoFail> {
    match stream {
        Stream::Plain(s) => read_plain(s, buf, min_spare, watch.deadline_in(limit), watch).await,
        // Boxed: TLS's larger state would otherwise sit in every plain read's future (and
        // in every future that awaits one), 624 bytes instead of 224; one small allocation
        // per TLS read is nothing beside its crypto.
        Stream::Tls(t) => Box::pin(t.read_more(buf, min_spare, limit, watch)).await,
        Stream::H2(h) => Box::pin(h.read_more(buf, limit)).await,
    }
}

/// [`read_more_timeout`] on a plain socket, until `deadline` (from [`Watch::deadline_in`]).
pub async fn read_plain(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    deadline: Instant,
    watch: &Watch,
) -> Result<usize, IoFail> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    watch.arm_until(stream.as_raw_fd(), Dir::Read, deadline);
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
    *buf = slice.into_inner();
    if watch.disarm() {
        return Err(IoFail::Timeout);
    }
    res.map_err(IoFail::Io)
}

/// What a parkable read got.
pub enum Got {
    /// Bytes read (0: end of stream).
    Bytes(usize),
    /// No byte came for a tick or two and the watchdog cancelled the read; `buf` is as it
    /// was. The connection may now wait without its buffer.
    Parked,
}

/// [`read_plain`] for a read that may wait long (a client's next request head): the
/// watchdog may park it ([`Watch::arm_parkable`]). Costs registering the operation with the
/// watch's canceller (a small hash-set insert and remove) more than a plain read; no extra
/// system call.
pub async fn read_parkable(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    deadline: Instant,
    watch: &Watch,
) -> Result<Got, IoFail> {
    use monoio::io::CancelableAsyncReadRent;
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let handle = watch.arm_parkable(stream.as_raw_fd(), deadline);
    let (res, slice) = stream
        .cancelable_read(std::mem::take(buf).slice_mut(len..), handle)
        .await;
    *buf = slice.into_inner();
    let parked = watch.take_parked();
    if watch.disarm() {
        return Err(IoFail::Timeout);
    }
    match res {
        Ok(n) => Ok(Got::Bytes(n)),
        Err(e) if parked && e.raw_os_error() == Some(libc::ECANCELED) => Ok(Got::Parked),
        Err(e) => Err(IoFail::Io(e)),
    }
}

/// Waits, until `deadline`, for `tcp` to have bytes to read (or to close) with a readiness
/// poll, which holds no buffer: how a parked connection, or a new TLS one before its
/// ClientHello, waits. False when the deadline passed (or the poll failed): an idle
/// connection then closes quietly, as nginx closes idle ones. (On the epoll driver a
/// readiness report may be early; the read that follows then waits.)
pub async fn wait_readable(tcp: &TcpStream, deadline: Instant, watch: &Watch) -> bool {
    if watch.passed(deadline) {
        return false;
    }
    watch.arm_until(tcp.as_raw_fd(), Dir::Read, deadline);
    let ready = tcp.readable(true).await;
    !watch.disarm() && ready.is_ok()
}

/// [`read_more_timeout`] for a read that may wait long (a client's next request head, an
/// upstream's response head), until `deadline`: plain and TLS reads may be parked
/// ([`read_parkable`], `TlsConn::read_parkable`); an HTTP/2 stream's are not (its
/// connection's task does the socket's reads).
pub async fn read_more_parkable(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    deadline: Instant,
    watch: &Watch,
) -> Result<Got, IoFail> {
    // The TLS and HTTP/2 reads take a limit; the plain read (the hot path) the deadline.
    let limit = || deadline.saturating_duration_since(watch.now());
    match stream {
        Stream::Plain(tcp) => read_parkable(tcp, buf, min_spare, deadline, watch).await,
        // Boxed as in `read_more_timeout`.
        Stream::Tls(t) => Box::pin(t.read_parkable(buf, min_spare, limit(), watch)).await,
        other => read_more_timeout(other, buf, min_spare, limit(), watch)
            .await
            .map(Got::Bytes),
    }
}

/// Writes `buf[start..end]` completely; `limit` bounds each write's progress (as nginx's
/// `send_timeout`: the time between two successful writes), not the whole transfer, so a
/// slow but steady reader is not cut off.
pub async fn write_range(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
    watch: &Watch,
) -> Result<(), IoFail> {
    write_range_counted(stream, buf, start, end, limit, watch)
        .await
        .map_err(|(e, _)| e)
}

/// [`write_range`], telling on failure how many bytes had been written.
async fn write_range_counted(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
    watch: &Watch,
) -> Result<(), (IoFail, usize)> {
    let stream = match stream {
        Stream::Plain(s) => s,
        // Boxed for the same reason as reads.
        Stream::Tls(t) => return Box::pin(t.write(&buf[start..end], limit, watch)).await,
        Stream::H2(h) => {
            return Box::pin(h.write(&buf[start..end], limit))
                .await
                .map_err(|e| (e, 0))
        }
    };
    let mut pos = start;
    while pos < end {
        watch.arm(stream.as_raw_fd(), Dir::Write, limit);
        let (res, slice) = stream.write(std::mem::take(buf).slice(pos..end)).await;
        *buf = slice.into_inner();
        if watch.disarm() {
            return Err((IoFail::Timeout, pos - start));
        }
        match res {
            Ok(0) => return Err((IoFail::Io(io::ErrorKind::WriteZero.into()), pos - start)),
            Ok(n) => pos += n,
            Err(e) => return Err((IoFail::Io(e), pos - start)),
        }
    }
    Ok(())
}

/// [`write_all`], telling on failure how many bytes had been written.
pub async fn write_all_counted(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    limit: Duration,
    watch: &Watch,
) -> Result<(), (IoFail, usize)> {
    let end = buf.len();
    write_range_counted(stream, buf, 0, end, limit, watch).await
}

/// Writes all of `buf`.
pub async fn write_all(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    limit: Duration,
    watch: &Watch,
) -> Result<(), IoFail> {
    let end = buf.len();
    write_range(stream, buf, 0, end, limit, watch).await
}
