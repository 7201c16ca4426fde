//! The `[gateway]` section: listeners, client-side limits and timeouts, and the switches
//! every connection reads ([`super::Settings`]).

use super::{Result, Settings};
use crate::config::seconds;
use crate::config::{ConfigError, GatewayConfig};
use crate::http::request::Limits;
use std::net::SocketAddr;

pub(super) fn compile_gateway(g: &GatewayConfig) -> Result<(Settings, Vec<SocketAddr>)> {
    if g.listen.is_empty() {
        return Err(ConfigError::invalid(
            "gateway.listen",
            "needs at least one address",
        ));
    }
    let mut listen = Vec::new();
    for (i, l) in g.listen.iter().enumerate() {
        let addr: SocketAddr = l.parse().map_err(|_| {
            ConfigError::invalid(
                format!("gateway.listen[{i}]"),
                format!("'{l}' is not an ip:port address"),
            )
        })?;
        listen.push(addr);
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
        fail_open: g.healthcheck_fail_open,
        splice: g.splice,
        splice_lowat: g.splice_lowat,
        steal_accepts: g.steal_accepts,
        graceful_shutdown_timeout,
    };
    Ok((settings, listen))
}
