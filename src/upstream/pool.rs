//! The per-core keepalive pool of upstream connections.
//!
//! Each core keeps its own idle connections per node address: no locks, no sharing, and a
//! connection is always used by the core that opened it. A connection travels with its read
//! buffer, so a reused connection also reuses its memory.
//!
//! Taking is LIFO (the most recently used connection is the most likely to still be open on
//! the backend's side); when a node's pool is full the oldest idle connection is closed, as
//! nginx's `keepalive` does.

use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::KeepalivePolicy;

/// Read buffer size of an upstream connection; also the relay chunk size for response bodies.
pub const UPSTREAM_BUF: usize = 64 * 1024;

/// An open connection to a node and what it carries along.
pub struct UpstreamConn {
    pub stream: TcpStream,
    /// Bytes read but not yet consumed are `buf[..]` (len = filled).
    pub buf: Vec<u8>,
    /// Requests sent on this connection so far.
    pub served: u32,
    /// Came out of the pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
}

impl UpstreamConn {
    pub fn new(stream: TcpStream) -> Self {
        UpstreamConn {
            stream,
            buf: Vec::with_capacity(UPSTREAM_BUF),
            served: 0,
            reused: false,
        }
    }
}

struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, VecDeque<Idle>>>,
}

impl Pool {
    /// An idle connection to `addr` that has not expired, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let q = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = q.pop_back() {
            if entry.expires > now {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection after a cleanly finished exchange; closes it instead when the
    /// policy says so.
    pub fn put(&self, addr: SocketAddr, conn: UpstreamConn, policy: &KeepalivePolicy) {
        if conn.served >= policy.requests || policy.size == 0 || !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let q = idle.entry(addr).or_default();
        while q.len() >= policy.size {
            q.pop_front();
        }
        q.push_back(Idle {
            conn,
            expires: Instant::now() + policy.idle_timeout,
        });
    }

    /// Closes expired idle connections; run periodically so idle sockets do not pile up.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        idle.retain(|_, q| {
            q.retain(|e| e.expires > now);
            !q.is_empty()
        });
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
