//! Logging: the per-core access log, and the gateway's own event log on stderr.

pub mod access;

use std::fmt::Arguments;

/// Writes one event line to stderr: `2026-11-26T08:49:46Z [level] message`.
/// Events (startup, reloads, refused configs, shutdown) are rare; this is not on the hot path.
pub fn event(level: &str, args: Arguments<'_>) {
    let mut ts = [0u8; 20];
    let ts = access::iso8601_utc(now_secs(), &mut ts);
    eprintln!("{ts} [{level}] {args}");
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::event("info", format_args!($($t)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::event("warn", format_args!($($t)*)) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::event("error", format_args!($($t)*)) };
}
