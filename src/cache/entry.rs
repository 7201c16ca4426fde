//! One cached response: what a hit answers with, and how long it may.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (entries outlive the process on disk, so wall time).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an entry says about a response, apart from its body: enough to answer a hit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The cache key's text (digests can collide; the text tells them apart).
    pub key: String,
    pub status: u16,
    /// The upstream's header fields, minus hop-by-hop ones and the framing.
    pub headers: Vec<(String, String)>,
    /// When it was stored (Unix seconds).
    pub stored: u64,
    /// Fresh for this many seconds after `stored`.
    pub ttl: u64,
    /// After it expires, still served for this many seconds when the upstream fails.
    pub stale_if_error: u64,
    /// The request headers the response varies on (its `Vary`, lower case, sorted): the
    /// entry is one variant of its key.
    #[serde(default)]
    pub vary: Vec<String>,
}

impl Meta {
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored)
    }

    pub fn fresh(&self, now: u64) -> bool {
        self.age(now) < self.ttl
    }

    /// Expired, but within its stale-if-error window.
    pub fn usable_stale(&self, now: u64) -> bool {
        self.age(now) < self.ttl.saturating_add(self.stale_if_error)
    }
}

/// Where an entry's body is.
pub enum Body {
    Memory(Arc<[u8]>),
    /// In the zone's file for the entry's digest (`len` bytes), and, for a small body while
    /// the zone's memory allows, in memory too (`hot`): hits on it read no file.
    Disk {
        len: u64,
        hot: Option<Arc<[u8]>>,
    },
}

/// The largest body a disk zone also keeps in memory.
pub const HOT_MAX: usize = 64 * 1024;

/// One cached response.
pub struct Entry {
    pub meta: Meta,
    pub body: Body,
    /// Bytes the entry accounts for in its zone (memory zones: all of it; disk zones: the
    /// file).
    pub size: u64,
    /// When it was last read or stored (Unix seconds; written at most once a second, so a
    /// hot entry shared by every core is not a contended cache line).
    last_used: AtomicU64,
    /// Its place in the order entries were stored (ties of `last_used` go oldest first).
    pub(super) seq: AtomicU64,
}

impl Entry {
    pub fn new(meta: Meta, body: Body) -> Entry {
        let headers: usize = meta.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let size = match &body {
            Body::Memory(b) => (b.len() + headers + meta.key.len() + 128) as u64,
            Body::Disk { len, .. } => *len + headers as u64 + meta.key.len() as u64 + 64,
        };
        Entry {
            meta,
            body,
            size,
            last_used: AtomicU64::new(now()),
            seq: AtomicU64::new(0),
        }
    }

    /// Notes a read at `t` (Unix seconds).
    pub fn touch(&self, t: u64) {
        if self.last_used.load(Ordering::Relaxed) != t {
            self.last_used.store(t, Ordering::Relaxed);
        }
    }

    /// The eviction order: least recently used first.
    pub fn recency(&self) -> (u64, u64) {
        (
            self.last_used.load(Ordering::Relaxed),
            self.seq.load(Ordering::Relaxed),
        )
    }
}
