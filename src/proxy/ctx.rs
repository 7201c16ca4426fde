//! What one request leaves behind: its status, bytes, upstream facts and keep-alive verdict,
//! for the access log and the connection loop.

use std::net::SocketAddr;
use std::time::Duration;

/// What happened to one request, for the access log and the keep-alive decision.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) status: u16,
    pub(super) bytes: u64,
    pub(super) keep_alive: bool,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream_latency: Option<Duration>,
    pub(super) retries: u32,
    /// End of this request's bytes (head and body) in the client buffer.
    pub(super) consumed: usize,
}
