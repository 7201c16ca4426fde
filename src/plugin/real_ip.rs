//! `real-ip` (APISIX priority 23000, rewrite phase): take the client's address from a
//! variable a trusted proxy in front sets (`source`: `http_x_forwarded_for`,
//! `http_x_real_ip`, `arg_realip`, ...) instead of the peer's, when the peer is one of
//! `trusted_addresses` (or always, without that list). From `X-Forwarded-For` the last
//! address is taken, or with `recursive` the rightmost one that is not trusted. The result
//! becomes `remote_addr` for the plugins after it (ip-restriction), the access log, and the
//! X-Real-IP / X-Forwarded-For the upstream gets. A value that is not an IP address is
//! ignored.

use super::{BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::route::IpNet;
use crate::vars::Var;
use serde::Deserialize;
use std::cell::RefCell;
use std::net::IpAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    source: String,
    trusted_addresses: Option<Vec<String>>,
    #[serde(default)]
    recursive: bool,
}

pub struct RealIp {
    source: Var,
    /// `source` is X-Forwarded-For: a list, read from the right.
    forwarded_for: bool,
    trusted: Vec<IpNet>,
    recursive: bool,
}

impl RealIp {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let source = Var::parse(&c.source)
            .map_err(|e| format!("property \"source\" validation failed: {e}"))?;
        let trusted = c
            .trusted_addresses
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| IpNet::parse(a).map_err(|e| format!("trusted_addresses[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RealIp {
            forwarded_for: c.source == "http_x_forwarded_for",
            source,
            trusted,
            recursive: c.recursive,
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The address `value` names, per the rules above.
    fn pick(&self, value: &str) -> Option<IpAddr> {
        let parse = |s: &str| strip_port(s.trim()).parse::<IpAddr>().ok();
        if !self.forwarded_for {
            return parse(value);
        }
        let mut addrs = value.rsplit(',');
        if !self.recursive {
            return parse(addrs.next()?);
        }
        let mut last = None;
        for a in addrs {
            let ip = parse(a)?;
            last = Some(ip);
            if !self.trusted(ip) {
                return Some(ip);
            }
        }
        last
    }
}

/// `1.2.3.4:80` and `[::1]:80` without their port.
fn strip_port(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match s.split_once(':') {
        Some((ip, port)) if !port.contains(':') => ip,
        _ => s,
    }
}

impl Phases for RealIp {
    fn name(&self) -> &'static str {
        "real-ip"
    }

    fn priority(&self) -> i32 {
        23000
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        if !self.trusted.is_empty() {
            let peer = ctx
                .vars
                .var(&Var::RemoteAddr)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|a| a.parse::<IpAddr>().ok());
            if !peer.is_some_and(|p| self.trusted(p)) {
                return Flow::Continue;
            }
        }
        let found = ctx
            .vars
            .var(&self.source)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| self.pick(v));
        if let Some(ip) = found {
            let _ = ctx.remote_addr.set(ip.to_string());
        }
        Flow::Continue
    }
}
