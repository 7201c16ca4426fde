//! Zero-copy relay of long bodies with `splice(2)`: upstream socket → pipe → client socket
//! for responses, client socket → pipe → upstream socket for request bodies.
//!
//! Relaying a body through a user-space buffer copies every byte twice (kernel to user on the
//! read, user to kernel on the write). For a 1 MiB response those two copies were most of the
//! gateway's own CPU time. `splice` moves references to the socket's pages into a pipe and
//! from the pipe into the other socket instead, so the bytes are never copied by us.
//!
//! The splices are plain non-blocking system calls made on the worker's thread; only the
//! waits for readiness go through the runtime (an io_uring poll). io_uring's own splice
//! opcode is not used on purpose: the kernel always hands it to an io-wq helper thread, which
//! would move the work off the worker's core.
//!
//! Only bodies with a known length are spliced (responses only without a body filter: the
//! bytes never reach user space, so nothing can look at them), and only when enough of the
//! body is still to come for the extra system calls to pay off.

use super::io::IoFail;
use super::sockopt;
use super::watchdog::{Dir, Watch};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Bodies with at least this much still to relay go through a pipe; shorter tails are
/// cheaper to copy than to splice.
pub const MIN_SPLICE: u64 = 64 * 1024;

/// Requested pipe capacity. More than the default 64 KiB means fewer system calls per body
/// (measured on 1 MiB responses with `splice_lowat = 16384`: 328 µs of gateway CPU each with
/// 64 KiB pipes, 257-262 with 256 KiB). 256 KiB keeps an unprivileged user's pipe quota
/// (`fs.pipe-user-pages-soft`, 64 MiB) good for 256 pipes; past it the kernel refuses the
/// resize and the pipe keeps working at its default size.
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// Idle pipes kept per core. Few: idle pipes count against the user's pipe quota too.
const MAX_IDLE: usize = 16;

/// Wake-ups in a row that let neither side move before the relay starts pausing between
/// polls. A socket can poll ready and still refuse a splice (urgent data ahead in the
/// source's stream, memory pressure on the destination's side); polling again at once would
/// be a busy loop. The pauses last until progress resumes or the wait's deadline passes.
const IDLE_WAKEUPS_BEFORE_PAUSING: u32 = 8;
const IDLE_PAUSE: Duration = Duration::from_millis(10);

/// A non-blocking pipe used as the in-kernel buffer between two sockets. Only ever pooled
/// empty.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on a descriptor we own; failure only leaves the default size.
        unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        Ok(Pipe { read, write })
    }
}

/// This core's idle pipes.
#[derive(Default)]
pub struct PipePool {
    idle: RefCell<Vec<Pipe>>,
}

impl PipePool {
    /// An empty pipe, new if none is idle; `None` if the process is out of descriptors (the
    /// caller then copies instead).
    pub fn get(&self) -> Option<Pipe> {
        if let Some(p) = self.idle.borrow_mut().pop() {
            return Some(p);
        }
        Pipe::new().ok()
    }

    /// Returns a pipe that is known to be empty.
    pub fn put(&self, pipe: Pipe) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push(pipe);
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two open descriptors with no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Which end of a relay failed, and how.
#[derive(Debug)]
pub enum RelayError {
    /// Reading from `from`: it ended early, failed, or sent nothing within `read`.
    Source(IoFail),
    /// Writing to `to`: it failed or took nothing within `send`.
    Destination(IoFail),
}

/// How one relay is bounded and shaped.
pub struct Relay<'a> {
    /// Longest wait for the source between two steps of progress.
    pub read: Duration,
    /// Longest wait for the destination between two steps of progress.
    pub send: Duration,
    /// The connection's watch, which enforces both.
    pub watch: &'a Watch,
    /// `TCP_NOTSENT_LOWAT` on the destination while the relay runs (0 = not set).
    ///
    /// Without a limit a splice fills the destination's whole send buffer at once, and the
    /// unsent backlog is then transmitted by whoever processes the receiver's next window
    /// update: the receive path of its ACK. On loopback that runs on the receiver's own CPU,
    /// which then pays for the gateway's transmission and its own delivery. With 16 KiB the
    /// gateway moves bytes only as the receiver takes them, transmitting them itself: on
    /// 1 MiB responses over loopback the gateway's CPU rises from about 105 to 260 µs per
    /// response (still below nginx's 400) and requests/s from 0.73x to 1.05x nginx's,
    /// because the load generator's cost per response falls from 340 to 200 µs (16-32 KiB
    /// measure the same; 64 KiB is already as bad as no limit). Uploads behave alike (the
    /// backend in the client's place). It also keeps the kernel memory a slow receiver pins
    /// small, which is why HTTP/2 servers commonly set the same value. It is reset after
    /// the relay: later writes from buffers on the same connection would only be split into
    /// more wake-ups by it.
    pub lowat: u32,
    /// Bytes already taken from a failing source are still handed to the destination before
    /// the error (a client gets what the upstream did send); without it the relay fails at
    /// once (an upload the client abandoned is not worth finishing).
    pub deliver_after_source_failure: bool,
}

/// Moves exactly `len` bytes from `from` to `to` (a response body from the upstream to the
/// client, or a request body the other way) through a pipe from `pipes`. Both sockets must be
/// non-blocking. Returns the bytes delivered to `to`, or `None` when no pipe could be had
/// (the caller copies instead).
pub async fn relay(
    pipes: &PipePool,
    from: &TcpStream,
    to: &TcpStream,
    len: u64,
    how: &Relay<'_>,
) -> Option<(u64, Result<(), RelayError>)> {
    let pipe = pipes.get()?;
    if how.lowat > 0 {
        sockopt::set_notsent_lowat(to, how.lowat);
    }
    let (sent, result) = relay_through(&pipe, from, to, len, how).await;
    if how.lowat > 0 {
        sockopt::set_notsent_lowat(to, 0);
    }
    // After an error the pipe may still hold bytes: it is dropped, not pooled.
    if result.is_ok() {
        pipes.put(pipe);
    }
    Some((sent, result))
}

/// The relay loop. Waiting for `from` is bounded by `how.read`, for `to` by `how.send`, each
/// counted from the last step of progress.
async fn relay_through(
    pipe: &Pipe,
    from: &TcpStream,
    to: &TcpStream,
    len: u64,
    how: &Relay<'_>,
) -> (u64, Result<(), RelayError>) {
    let Relay {
        read,
        send,
        watch,
        deliver_after_source_failure,
        ..
    } = *how;
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let mut left = len; // still to take from `from`
    let mut in_pipe: u64 = 0; // taken, not yet given to `to`
    let mut sent: u64 = 0;
    // The source failed: what it did send is still delivered, then the relay fails.
    let mut source_failed: Option<io::Error> = None;
    // Since the last progress: the deadline of the side being waited for, and the wake-ups
    // that moved nothing. A wake-up without progress must not restart the clock.
    let mut stalled: Option<(Dir, Instant)> = None;
    let mut idle_wakeups = 0u32;
    loop {
        if in_pipe == 0 || !deliver_after_source_failure {
            if let Some(e) = source_failed {
                return (sent, Err(RelayError::Source(IoFail::Io(e))));
            }
        }
        if in_pipe == 0 && left == 0 {
            return (sent, Ok(()));
        }
        let mut progressed = false;
        if left > 0 && source_failed.is_none() {
            // Never more than the body: bytes past it belong to no one and stay unread.
            match splice(src, pipe_w, left.min(PIPE_SIZE as u64) as usize) {
                Ok(0) => {
                    let early = io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short");
                    source_failed = Some(early);
                    progressed = true;
                }
                Ok(n) => {
                    left -= n as u64;
                    in_pipe += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    source_failed = Some(e);
                    progressed = true;
                }
            }
        }
        if in_pipe > 0 {
            match splice(pipe_r, dst, in_pipe as usize) {
                Ok(n) => {
                    in_pipe -= n as u64;
                    sent += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (sent, Err(RelayError::Destination(IoFail::Io(e)))),
            }
        }
        if progressed {
            stalled = None;
            idle_wakeups = 0;
            continue;
        }
        // Neither side can move. With bytes in the pipe the destination is the one holding
        // things up (an empty source is no reason to wait while the destination could take
        // more); with none, the source is.
        let (dir, fd, limit) = if in_pipe > 0 {
            (Dir::Write, dst, send)
        } else {
            (Dir::Read, src, read)
        };
        let fail = |e: IoFail| match dir {
            Dir::Read => RelayError::Source(e),
            Dir::Write => RelayError::Destination(e),
        };
        if let Some((d, at)) = stalled {
            if d == dir && idle_wakeups >= IDLE_WAKEUPS_BEFORE_PAUSING {
                if watch.passed(at) {
                    return (sent, Err(fail(IoFail::Timeout)));
                }
                monoio::time::sleep(IDLE_PAUSE).await;
            }
        }
        let deadline = match stalled {
            Some((d, at)) if d == dir => at,
            _ => watch.deadline_in(limit),
        };
        stalled = Some((dir, deadline));
        watch.arm_until(fd, dir, deadline);
        let r = if dir == Dir::Write {
            to.writable(false).await
        } else {
            from.readable(false).await
        };
        let waited = (watch.disarm(), r);
        idle_wakeups += 1;
        match waited {
            (true, _) => return (sent, Err(fail(IoFail::Timeout))),
            (false, Err(e)) => return (sent, Err(fail(IoFail::Io(e)))),
            (false, Ok(())) => {}
        }
    }
}
