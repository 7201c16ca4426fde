//! Rate-limiting state shared by every core: the counters behind `limit-count`, `limit-req`
//! and `limit-conn` with `policy = "local"`.
//!
//! Exact for the whole gateway, not per core: N workers together admit exactly `count`
//! requests per window, because every core updates the same counter of a key with one
//! compare-and-swap (no lock, no message to another core). The price is that a hot key's
//! counter cache line moves between the cores that serve it; keys are independent.
//!
//! - [`table`]: the keyed cells of one limit (one per plugin instance, or per `group`), in a
//!   lock-free map; idle keys are retired by a sweeper thread, and a table holds at most
//!   [`table::MAX_KEYS`] keys, which bounds its memory.
//! - [`key`]: what a request counts as (`key_type` `var`, `var_combination`, `constant`).
//! - [`window`] (fixed windows), [`bucket`] (leaky bucket), [`conn`] (concurrency): the
//!   cells, each one atomic word updated by compare-and-swap ([`pair`]).

pub mod amount;
pub mod bucket;
pub mod conn;
pub mod key;
pub mod pair;
pub mod table;
pub mod window;

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock (never 0, so 0 can mean "never").
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}

/// A cell the sweeper took away while a request was about to use it: look the key up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired;
