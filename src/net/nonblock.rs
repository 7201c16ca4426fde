//! Non-blocking steps on a connection, for a relay that waits on two sockets at once (the
//! WebSocket tunnel): try a read or a write now, and wait for readiness apart from it.
//!
//! The buffer-owning helpers in [`super::io`] hand a buffer to the kernel and get it back
//! when the operation completes, so a read cannot be abandoned when the other socket has
//! something to say. Here nothing is in flight while we wait: the wait is a readiness poll
//! (dropped freely), and reads and writes are plain non-blocking system calls on sockets
//! made non-blocking. TLS goes through rustls's buffers the same way (`TlsConn::try_*`).

use super::stream::Stream;
use std::io;
use std::os::fd::AsRawFd;

/// What a non-blocking read found.
pub enum Got {
    /// Bytes appended to the buffer.
    Data(usize),
    /// The peer ended its side (FIN, or TLS close_notify).
    End,
    /// Nothing now: wait until readable.
    Nothing,
}

/// `read(2)` into `buf`'s spare room (at most `max` bytes), appending.
pub fn read_fd(fd: std::os::fd::RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<Got> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: `spare` is writable memory of at least `want` bytes owned by `buf`.
    let r = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Got::Nothing),
            _ => Err(e),
        };
    }
    if r == 0 {
        return Ok(Got::End);
    }
    // SAFETY: the kernel initialised the first `r` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + r as usize) };
    Ok(Got::Data(r as usize))
}

/// `send(2)` without SIGPIPE; `Ok(0)`: the socket has no room now.
pub fn write_fd(fd: std::os::fd::RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length for the duration of the call.
    let r = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    Ok(r as usize)
}

impl Stream {
    /// Makes the socket non-blocking (TLS sockets already are).
    pub fn make_nonblocking(&self) -> io::Result<()> {
        super::sockopt::set_nonblocking(self)
    }

    /// Reads what is there now, at most `max` bytes, appending to `buf`.
    pub fn try_read(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<Got> {
        match self {
            Stream::Plain(s) => read_fd(s.as_raw_fd(), buf, max),
            Stream::Tls(t) => t.try_read(buf, max),
            Stream::H2(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Writes what fits now of `data`; `Ok(0)`: nothing fits, wait until writable. On TLS,
    /// ciphertext that did not fit stays queued ([`Stream::try_flush`] sends it).
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => write_fd(s.as_raw_fd(), data),
            Stream::Tls(t) => t.try_write(data),
            Stream::H2(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Sends queued TLS records; true when none is left.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        match self {
            Stream::Tls(t) => t.try_flush(),
            _ => Ok(true),
        }
    }

    /// Ends the sending side without waiting: on TLS, queues a close_notify (sent by
    /// [`Stream::try_flush`], after which [`Stream::finish_write`] sends the FIN).
    pub fn queue_close(&mut self) {
        if let Stream::Tls(t) = self {
            t.queue_close();
        }
    }

    /// Sends the FIN (after [`Stream::queue_close`] and a complete flush).
    pub fn finish_write(&self) {
        super::sockopt::shutdown_write(self);
    }

    /// Waits until the socket is readable (or has an error or end).
    pub async fn readable(&self) -> io::Result<()> {
        match self.tcp() {
            Some(t) => t.readable(false).await,
            None => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Waits until the socket has room to write.
    pub async fn writable(&self) -> io::Result<()> {
        match self.tcp() {
            Some(t) => t.writable(false).await,
            None => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}
