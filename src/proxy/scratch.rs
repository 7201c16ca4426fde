//! A connection's reusable memory, kept per core between connections. Its own file because
//! the worker's per-core state holds a pool of these: it depends on nothing of the request
//! path but the parsed-head types.

use crate::http::request::RequestHead;
use crate::http::response::ResponseHead;

/// Scratch sets a core keeps at most (`crate::spares` trims them to recent need).
pub const MAX_KEPT: usize = 256;

/// Initial size of a client connection's read buffer.
pub(super) const CLIENT_BUF: usize = 16 * 1024;

/// A connection's reusable memory. Recycled per core when a connection ends, so accepting a
/// connection allocates nothing once the core has warmed up.
pub struct Scratch {
    pub(super) buf: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) head: RequestHead,
    pub(super) resp: ResponseHead,
    pub(super) host_lc: Vec<u8>,
    pub(super) path_buf: Vec<u8>,
    pub(super) peer_ip: String,
    pub(super) tried: Vec<usize>,
    pub(super) key_buf: Vec<u8>,
    pub(super) up_statuses: Vec<u16>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            buf: Vec::with_capacity(CLIENT_BUF),
            out: Vec::with_capacity(4096),
            head: RequestHead::default(),
            resp: ResponseHead::default(),
            host_lc: Vec::with_capacity(64),
            path_buf: Vec::new(),
            peer_ip: String::with_capacity(46),
            tried: Vec::with_capacity(4),
            key_buf: Vec::new(),
            up_statuses: Vec::with_capacity(4),
        }
    }

    /// Worth keeping: buffers that grew for a large head or body are let go.
    pub fn reusable(&self) -> bool {
        self.buf.capacity() <= 4 * CLIENT_BUF && self.out.capacity() <= 4 * CLIENT_BUF
    }
}
