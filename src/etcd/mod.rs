//! The etcd provider (`deployment.config_provider = "etcd"`): resources live in an etcd v3
//! cluster under APISIX's key layout, so gateways pointed at one cluster share one
//! configuration, and a cluster that APISIX filled is served as it is.
//!
//! - [`client`]: the calls (range, put, delete, watch) over etcd's JSON gateway, with
//!   endpoint fail-over and user/password auth; [`conn`]: one HTTP/1.1 connection, plain or
//!   TLS ([`tls`]);
//! - [`layout`]: keys and values as APISIX writes them;
//! - [`watch`]: the thread that follows the cluster and hands [`Update`]s to the control loop.
//!
//! Admin API writes go to etcd; every gateway, the writer too, applies what its watch
//! delivers (the writer answers once its own workers serve the write's revision).

pub mod client;
pub mod conn;
pub mod layout;
pub mod tls;
pub mod watch;

pub use client::{Client, EtcdError, Kv, WatchEvent};

/// What the watcher tells the control loop.
#[derive(Debug)]
pub enum Update {
    /// Everything under the prefix, read at `revision` (after a compaction).
    Full { revision: i64, kvs: Vec<Kv> },
    /// What changed, up to `revision`.
    Changes {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// The cluster cannot be reached; the last good configuration keeps serving.
    Down(String),
    /// Watching again, through this endpoint.
    Up(String),
}
