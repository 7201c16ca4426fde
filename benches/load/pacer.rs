//! Waiting for an open-loop request's due time with microsecond precision.
//!
//! monoio's timers tick in milliseconds: every request due within the same millisecond
//! would be released together, and an open-loop run at 17,000 requests/s would reach the
//! server as seventeen-request bursts a thousand times a second, not as the even stream
//! that many independent clients make. A server sees fewer, fuller wake-ups in bursts, so
//! CPU per request and latency below saturation would be measured on a load shape no real
//! client mix has. A timerfd (a kernel high-resolution timer) per connection, awaited
//! through the ring like a socket, releases each request at its own due time.

use monoio::net::UnixStream;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Instant;

/// One connection's timer.
pub struct Pacer {
    /// The timerfd, wrapped so the runtime can wait for it to become readable (expired).
    timer: UnixStream,
}

impl Pacer {
    pub fn new() -> io::Result<Pacer> {
        // SAFETY: plain system call; the descriptor is owned by the stream below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        Ok(Pacer {
            timer: UnixStream::from_std(std)?,
        })
    }

    /// Returns at `due` (at once when it has passed).
    pub async fn until(&self, due: Instant) -> io::Result<()> {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        let fd = self.timer.as_raw_fd();
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.timer.readable(false).await?;
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into the array (resets the timer's readiness).
        unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
        Ok(())
    }
}
