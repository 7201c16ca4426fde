//! The per-core keepalive pool of upstream connections, and the core's pool of relay buffers.
//!
//! Each core keeps its own idle connections per node address: no locks, no sharing, and a
//! connection is always used by the core that opened it. Taking is LIFO (the most recently
//! used connection is the most likely to still be open on the backend's side); when a node's
//! pool is full the oldest idle connection is closed, as nginx's `keepalive` does.
//!
//! Idle connections hold no buffer: a connection gets a read buffer from the core's buffer
//! pool when a request starts using it and gives it back when it goes idle (and while a
//! response that is long in coming is awaited: `proxy::upstream`), so hundreds of
//! idle keepalive connections cost a socket each, not a socket and 32 KiB each. Long bodies
//! are relayed through a larger buffer: measured on loopback with 1 MiB responses, 256 KiB
//! reads and writes cost about 350 µs of CPU per response against about 440 µs with 64 KiB
//! and 820 µs with 16 KiB (per-operation overhead dominates), while 1 MiB buffers got worse
//! again. Both kinds of buffer are recycled, never freed per request (spares beyond what the
//! last second needed are freed on the sweep).

use crate::net::stream::Stream;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::KeepalivePolicy;
use crate::fold_hash::FoldHash;
use crate::spares::Spares;

/// Read buffer of an upstream connection in use: a response head plus a small body fit.
pub const SMALL_BUF: usize = 32 * 1024;
/// Relay buffer for bodies that do not fit in a small buffer.
pub const LARGE_BUF: usize = 256 * 1024;
/// Recycled buffers kept per core at most, per kind (trimmed to recent need, `crate::spares`).
const KEEP_SMALL: usize = 256;
const KEEP_LARGE: usize = 16;

/// What a pooled connection may be reused for: the node, and for TLS its name and client
/// identity (see [`super::tls::UpstreamTls::pool_key`]; 0 for plain TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: u64,
}

impl PoolKey {
    pub fn plain(addr: SocketAddr) -> PoolKey {
        PoolKey { addr, tls: 0 }
    }
}

/// What a TLS connection was made for: its pool key part, and the name itself (compared on
/// reuse: keys are hashes). Boxed in [`UpstreamConn`], which plain connections keep small.
pub struct TlsIdentity {
    pub key: u64,
    pub sni: Box<[u8]>,
}

/// An open connection to a node and what it carries along.
pub struct UpstreamConn {
    pub stream: Stream,
    /// Set on TLS connections.
    pub tls: Option<Box<TlsIdentity>>,
    /// Bytes read but not yet consumed (len = filled). Empty with no capacity while idle.
    pub buf: Vec<u8>,
    /// Requests sent on this connection so far.
    pub served: u32,
    /// Came out of the pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
    /// The socket has been made non-blocking (done on its first splice).
    pub nonblocking: bool,
}

struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

/// Whether a pooled connection is still open with nothing to read: the backend may have
/// closed it while it sat in the pool (end of stream), or sent bytes no request asked for
/// (which would otherwise be read as the next response). One non-blocking peek per reuse.
pub fn still_idle(stream: &Stream) -> bool {
    use std::os::fd::AsRawFd;
    peek_would_block(stream.as_raw_fd())
}

/// A non-blocking one-byte peek at socket `fd`: true when nothing is there to read (no data,
/// no end of stream, no error). The raw system call: libc's `recv` wraps it in thread
/// cancellation bookkeeping this never needs, a measurable share of a per-request peek.
pub fn peek_would_block(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recvfrom(2) writing at most one byte into a local, with no address buffer.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            (&mut byte as *mut u8).cast::<libc::c_void>(),
            1usize,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

pub struct Pool {
    idle: RefCell<HashMap<PoolKey, VecDeque<Idle>, FoldHash>>,
    /// Spare buffers, by kind.
    small: Spares<Vec<u8>>,
    large: Spares<Vec<u8>>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Default::default(),
            small: Spares::new(KEEP_SMALL),
            large: Spares::new(KEEP_LARGE),
        }
    }
}

impl Pool {
    /// Wraps a freshly connected stream, with a buffer.
    pub fn attach(&self, stream: Stream, tls: Option<Box<TlsIdentity>>) -> UpstreamConn {
        UpstreamConn {
            stream,
            tls,
            buf: self.buffer(),
            served: 0,
            reused: false,
            nonblocking: false,
        }
    }

    /// An idle connection for `key` (made for TLS name `sni`, empty for plain TCP) that has
    /// not expired by `now`, if any, with a buffer attached.
    pub fn take(&self, key: PoolKey, sni: &[u8], now: Instant) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let q = idle.get_mut(&key)?;
        while let Some(entry) = q.pop_back() {
            // Peek at every connection before reuse, however briefly it sat idle: a backend
            // may have closed it, or sent bytes no request asked for (an extra response a few
            // milliseconds after a complete one), which would otherwise reach the next,
            // unrelated client as its answer. One recv(2) per reuse.
            // Plain connections (key.tls == 0) have no name to compare.
            let same_name = key.tls == 0 || entry.conn.tls.as_ref().is_some_and(|t| *t.sni == *sni);
            if entry.expires > now && same_name && still_idle(&entry.conn.stream) {
                drop(idle);
                let mut conn = entry.conn;
                conn.reused = true;
                conn.buf = self.buffer();
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection after a cleanly finished exchange; closes it instead when the
    /// policy says so. Its buffer goes back to the buffer pool either way.
    pub fn put(
        &self,
        addr: SocketAddr,
        mut conn: UpstreamConn,
        policy: &KeepalivePolicy,
        now: Instant,
    ) {
        let clean = conn.buf.is_empty();
        self.recycle(std::mem::take(&mut conn.buf));
        if !clean || conn.served >= policy.requests || policy.size == 0 {
            return;
        }
        conn.reused = false;
        let mut idle = self.idle.borrow_mut();
        let key = PoolKey {
            addr,
            tls: conn.tls.as_ref().map_or(0, |t| t.key),
        };
        let q = idle.entry(key).or_default();
        while q.len() >= policy.size {
            q.pop_front();
        }
        let Some(expires) = now.checked_add(policy.idle_timeout) else {
            return;
        };
        q.push_back(Idle { conn, expires });
    }

    /// Gives a connection's buffer back when the connection is dropped instead of pooled.
    pub fn discard(&self, mut conn: UpstreamConn) {
        self.recycle(std::mem::take(&mut conn.buf));
    }

    /// Moves `buf`'s bytes into a large relay buffer (for a long body), recycling the old one.
    pub fn enlarge(&self, buf: &mut Vec<u8>) {
        if buf.capacity() >= LARGE_BUF {
            return;
        }
        let mut large = self
            .large
            .take()
            .unwrap_or_else(|| Vec::with_capacity(LARGE_BUF));
        large.extend_from_slice(buf);
        let small = std::mem::replace(buf, large);
        self.recycle(small);
    }

    /// A small buffer (from the spares, or new).
    pub fn buffer(&self) -> Vec<u8> {
        self.small
            .take()
            .unwrap_or_else(|| Vec::with_capacity(SMALL_BUF))
    }

    /// Keeps `buf` for reuse when it is one of the pool's sizes (else frees it).
    pub fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() >= LARGE_BUF {
            self.large.give(buf);
        } else if buf.capacity() >= SMALL_BUF {
            self.small.give(buf);
        }
    }

    /// Closes expired idle connections and frees spare buffers the last interval did not
    /// need; run every second so idle sockets and a burst's buffers do not pile up.
    pub fn sweep(&self) {
        self.small.trim();
        self.large.trim();
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        idle.retain(|_, q| {
            q.retain(|e| e.expires > now);
            !q.is_empty()
        });
    }

    /// Drops every idle connection and spare buffer (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
        self.small.clear();
        self.large.clear();
    }
}
