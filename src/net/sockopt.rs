//! TCP options set on the request path, through socket2 on monoio's streams.
//!
//! monoio's `TcpStream` offers only `set_nodelay`; socket2 has the rest, given a borrowed
//! descriptor. `TCP_NOTSENT_LOWAT` is the one option socket2 lacks.

use socket2::SockRef;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Runs `f` on socket2's view of a monoio stream; None for a stream without a socket of
/// its own (an HTTP/2 stream).
fn with_sock<R>(stream: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> R) -> Option<R> {
    let raw = stream.as_raw_fd();
    if raw < 0 {
        return None;
    }
    // SAFETY: the descriptor is open (not -1) and stays so while `stream` is borrowed,
    // which outlives `f`.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    Some(f(SockRef::from(&fd)))
}

/// Makes a socket non-blocking so that a splice into or out of it never blocks the worker.
/// monoio's io_uring operations keep working on it (the kernel polls non-blocking sockets).
pub fn set_nonblocking(stream: &impl AsRawFd) -> io::Result<()> {
    with_sock(stream, |s| s.set_nonblocking(true))
        .unwrap_or_else(|| Err(io::ErrorKind::Unsupported.into()))
}

/// `TCP_CORK`: hold partial segments until uncorked or shut down. Failure only keeps the
/// kernel's behaviour.
pub fn set_cork(stream: &impl AsRawFd) {
    let _ = with_sock(stream, |s| s.set_cork(true));
}

/// Half-closes: sends the FIN (and whatever a cork still holds) now. Failure means the
/// connection is gone already.
pub fn shutdown_write(stream: &impl AsRawFd) {
    let _ = with_sock(stream, |s| s.shutdown(std::net::Shutdown::Write));
}

/// `TCP_QUICKACK`: acknowledge at once rather than with the next answer.
pub fn set_quickack(stream: &impl AsRawFd) {
    let _ = with_sock(stream, |s| s.set_quickack(true));
}

/// `TCP_NOTSENT_LOWAT`: how many bytes may wait unsent in the socket; 0 restores the
/// kernel's default (the `net.ipv4.tcp_notsent_lowat` sysctl, unlimited unless set).
/// Failure (an old kernel) only leaves the default.
pub fn set_notsent_lowat(stream: &impl AsRawFd, bytes: u32) {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt with a valid int option value on an open socket.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `TCP_LISTEN` in the kernel's `tcp_states.h` (libc does not export it).
const TCP_LISTEN: u8 = 10;

/// How many established connections wait in a listening socket's accept queue (`TCP_INFO`
/// reports it as `tcpi_unacked` for a listener); `None` if the socket is not listening.
pub fn accept_backlog(listener: &std::net::TcpListener) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt with a buffer of `len` bytes on a descriptor `listener` keeps open.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}
