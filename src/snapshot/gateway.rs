//! The `[gateway]` section, in two parts: process settings, read once at start
//! ([`ProcessSettings`]: listeners, workers, io_uring, the control listener, the access log),
//! and the reloadable client-side limits, timeouts and switches every connection reads
//! ([`super::Settings`]).

use super::{Result, Settings};
use crate::config::seconds;
use crate::config::{ConfigError, GatewayConfig};
use crate::http::request::Limits;
use std::net::SocketAddr;

/// The settings that take effect only at start: a reload that changes one is reported, and
/// the running value is kept until a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    pub listen: Vec<SocketAddr>,
    /// Listeners that terminate TLS.
    pub listen_tls: Vec<SocketAddr>,
    /// Where the control API (health status) listens; `None` = off.
    pub control_listen: Option<SocketAddr>,
    pub workers: usize,
    pub pin_cores: bool,
    pub cpus: Vec<usize>,
    pub driver: String,
    pub io_uring_flags: bool,
    pub io_uring_defer_taskrun: bool,
    pub io_uring_entries: u32,
    pub access_log: String,
    pub access_log_format: String,
    pub watch_config: bool,
}

impl ProcessSettings {
    /// The `gateway.*` fields that differ in `next`.
    pub fn changed_in(&self, next: &ProcessSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, field: &'static str| {
            if differs {
                changed.push(field);
            }
        };
        check(self.listen != next.listen, "gateway.listen");
        check(self.listen_tls != next.listen_tls, "gateway.listen_tls");
        check(
            self.control_listen != next.control_listen,
            "gateway.control_listen",
        );
        check(self.workers != next.workers, "gateway.workers");
        check(self.pin_cores != next.pin_cores, "gateway.pin_cores");
        check(self.cpus != next.cpus, "gateway.cpus");
        check(self.driver != next.driver, "gateway.driver");
        check(
            self.io_uring_flags != next.io_uring_flags,
            "gateway.io_uring_flags",
        );
        check(
            self.io_uring_defer_taskrun != next.io_uring_defer_taskrun,
            "gateway.io_uring_defer_taskrun",
        );
        check(
            self.io_uring_entries != next.io_uring_entries,
            "gateway.io_uring_entries",
        );
        check(self.access_log != next.access_log, "gateway.access_log");
        check(
            self.access_log_format != next.access_log_format,
            "gateway.access_log_format",
        );
        check(
            self.watch_config != next.watch_config,
            "gateway.watch_config",
        );
        changed
    }
}

pub(super) fn compile_gateway(g: &GatewayConfig) -> Result<(Settings, ProcessSettings)> {
    if g.listen.is_empty() {
        return Err(ConfigError::invalid(
            "gateway.listen",
            "needs at least one address",
        ));
    }
    let addrs = |field: &str, list: &[String]| -> Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for (i, l) in list.iter().enumerate() {
            let addr: SocketAddr = l.parse().map_err(|_| {
                ConfigError::invalid(
                    format!("{field}[{i}]"),
                    format!("'{l}' is not an ip:port address"),
                )
            })?;
            out.push(addr);
        }
        Ok(out)
    };
    let listen = addrs("gateway.listen", &g.listen)?;
    let listen_tls = addrs("gateway.listen_tls", &g.listen_tls)?;
    if let Some(both) = listen_tls.iter().find(|a| listen.contains(a)) {
        return Err(ConfigError::invalid(
            "gateway.listen_tls",
            format!("{both} is also in gateway.listen"),
        ));
    }
    if !matches!(g.access_log_format.as_str(), "text" | "json") {
        return Err(ConfigError::invalid(
            "gateway.access_log_format",
            "must be \"text\" or \"json\"",
        ));
    }
    if !matches!(g.driver.as_str(), "auto" | "io_uring" | "epoll") {
        return Err(ConfigError::invalid(
            "gateway.driver",
            "must be \"auto\", \"io_uring\" or \"epoll\"",
        ));
    }
    if g.io_uring_entries < 256 {
        return Err(ConfigError::invalid(
            "gateway.io_uring_entries",
            "must be at least 256",
        ));
    }
    for (field, v) in [
        ("gateway.max_request_line", g.max_request_line),
        ("gateway.max_header_size", g.max_header_size),
        ("gateway.max_headers", g.max_headers),
    ] {
        if v == 0 {
            return Err(ConfigError::invalid(field, "must be greater than 0"));
        }
    }
    if g.max_headers > 128 {
        return Err(ConfigError::invalid(
            "gateway.max_headers",
            "must be at most 128",
        ));
    }
    if g.max_header_size < g.max_request_line {
        return Err(ConfigError::invalid(
            "gateway.max_header_size",
            "must be at least gateway.max_request_line",
        ));
    }
    if g.splice_lowat > 1 << 30 {
        return Err(ConfigError::invalid(
            "gateway.splice_lowat",
            "must be at most 1073741824 bytes (0 = leave the kernel's default)",
        ));
    }
    let graceful_shutdown_timeout = seconds(
        "gateway.graceful_shutdown_timeout",
        g.graceful_shutdown_timeout,
        true,
    )?;
    let settings = Settings {
        limits: Limits {
            max_request_line: g.max_request_line,
            max_header_size: g.max_header_size,
            max_headers: g.max_headers,
            underscores_in_headers: g.underscores_in_headers,
        },
        client_header_timeout: seconds(
            "gateway.client_header_timeout",
            g.client_header_timeout,
            false,
        )?,
        client_body_timeout: seconds("gateway.client_body_timeout", g.client_body_timeout, false)?,
        keepalive_timeout: seconds("gateway.keepalive_timeout", g.keepalive_timeout, false)?,
        send_timeout: seconds("gateway.send_timeout", g.send_timeout, false)?,
        ssl_handshake_timeout: seconds(
            "gateway.ssl_handshake_timeout",
            g.ssl_handshake_timeout,
            false,
        )?,
        fail_open: g.healthcheck_fail_open,
        splice: g.splice,
        splice_lowat: g.splice_lowat,
        steal_accepts: g.steal_accepts,
        max_connections: g.max_connections,
        graceful_shutdown_timeout,
        http2: check_http2(&g.http2)?,
    };
    let control_listen = match g.control_listen.as_str() {
        "off" => None,
        a => Some(a.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "gateway.control_listen",
                format!("'{a}' is not an ip:port address (or \"off\")"),
            )
        })?),
    };
    let process = ProcessSettings {
        listen,
        listen_tls,
        control_listen,
        workers: g.workers,
        pin_cores: g.pin_cores,
        cpus: g.cpus.clone(),
        driver: g.driver.clone(),
        io_uring_flags: g.io_uring_flags,
        io_uring_defer_taskrun: g.io_uring_defer_taskrun,
        io_uring_entries: g.io_uring_entries,
        access_log: g.access_log.clone(),
        access_log_format: g.access_log_format.clone(),
        watch_config: g.watch_config,
    };
    Ok((settings, process))
}

/// Checks `[gateway.http2]` against what HTTP/2 allows (RFC 9113 §6.5.2).
fn check_http2(h: &crate::config::Http2Config) -> Result<crate::config::Http2Config> {
    let bad =
        |field: &str, why: &str| Err(ConfigError::invalid(format!("gateway.http2.{field}"), why));
    if h.max_concurrent_streams == 0 {
        return bad("max_concurrent_streams", "must be at least 1");
    }
    if h.max_header_list_size < 1024 {
        return bad("max_header_list_size", "must be at least 1024 bytes");
    }
    for (field, v) in [
        ("initial_window_size", h.initial_window_size),
        ("connection_window_size", h.connection_window_size),
    ] {
        if v == 0 || v > (1 << 31) - 1 {
            return bad(field, "must be between 1 and 2147483647 bytes");
        }
    }
    if !(16_384..=16_777_215).contains(&h.max_frame_size) {
        return bad("max_frame_size", "must be between 16384 and 16777215 bytes");
    }
    if h.max_requests == 0 {
        return bad("max_requests", "must be at least 1");
    }
    Ok(*h)
}
