//! Health checks: one prober for all cores, targets shared by every core, passive outcomes
//! reported back without blocking a request.
//!
//! - A [`Target`] is one probed endpoint: a node address (or `checks.active.port`), a probe
//!   host and a check configuration. Every node, in every upstream, with the same three shares
//!   one target, so it is probed once per interval however many upstreams and cores use it.
//! - Its usability is one atomic flag that every core reads on every pick (read-mostly: it is
//!   written only on transitions) and its state machine ([`state`]) is driven by the prober
//!   thread alone.
//! - Targets survive reloads: the [`Registry`] hands the same target to the new snapshot when
//!   a node keeps its address and check configuration, so its state is kept; a changed `checks`
//!   block makes a new target (with the new intervals and thresholds) that starts from the
//!   state the node had, so changing a check does not forget which nodes are down (APISIX
//!   resets them to healthy); a target no snapshot uses any more stops being probed.
//! - Workers report passive outcomes (the statuses they proxied, the connection failures and
//!   timeouts of attempts) into a per-core batch, flushed on their tick into a lock-free queue
//!   that the prober drains.

pub mod prober;
pub mod state;

use crate::config::{ChecksConfig, ConfigError};
use crossbeam_queue::SegQueue;
use state::{Machine, Report, Thresholds};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Validated active check settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActiveCheck {
    pub tcp_only: bool,
    /// `type = "https"`: the probe speaks TLS.
    pub https: bool,
    /// `https_verify_certificate`: the node's certificate must verify.
    pub verify: bool,
    pub timeout: Duration,
    pub concurrency: u32,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub http_path: String,
    pub req_headers: Vec<String>,
    pub healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub healthy_statuses: Vec<u16>,
    pub unhealthy_statuses: Vec<u16>,
    pub thresholds: Thresholds,
}

/// Validated passive check settings (defaults when `passive` is absent: lua-resty-healthcheck's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PassiveCheck {
    /// `passive` was configured: final statuses are reported, not only attempt failures.
    pub enabled: bool,
    pub healthy_statuses: Vec<u16>,
    pub unhealthy_statuses: Vec<u16>,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checks {
    pub active: ActiveCheck,
    pub passive: PassiveCheck,
}

impl PassiveCheck {
    /// What a final response status says about the node that answered.
    pub fn classify(&self, status: u16) -> Option<Report> {
        if !self.enabled {
            None
        } else if self.healthy_statuses.contains(&status) {
            Some(Report::Success)
        } else if self.unhealthy_statuses.contains(&status) {
            Some(Report::HttpFailure)
        } else {
            None
        }
    }
}

fn range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if v < lo {
        Err(ConfigError::invalid(
            field,
            format!("expected {v} to be at least {lo}"),
        ))
    } else if v > hi {
        Err(ConfigError::invalid(
            field,
            format!("expected {v} to be at most {hi}"),
        ))
    } else {
        Ok(v)
    }
}

fn statuses(field: &str, list: &[i64]) -> Result<Vec<u16>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, &s) in list.iter().enumerate() {
        let item = format!("{field}[{i}]");
        out.push(range(&item, s, 200, 599)? as u16);
        if out[..out.len() - 1].contains(&(s as u16)) {
            return Err(ConfigError::invalid(
                field,
                format!("item {s} appears twice"),
            ));
        }
    }
    Ok(out)
}

/// Validates an upstream's `checks` block; errors name the field.
pub fn compile_checks(name: &str, c: &ChecksConfig) -> Result<Checks, ConfigError> {
    let f = |s: &str| format!("{name}.checks.{s}");
    let a = c.active.as_ref().ok_or_else(|| {
        ConfigError::invalid(
            format!("{name}.checks"),
            "needs \"active\" (passive checks alone cannot bring a node back)",
        )
    })?;
    let tcp_only = match a.check_type.as_str() {
        "http" | "https" => false,
        "tcp" => true,
        other => {
            return Err(ConfigError::invalid(
                f("active.type"),
                format!("\"{other}\" matches none of the enum values (http, https, tcp)"),
            ))
        }
    };
    let timeout = crate::config::seconds(&f("active.timeout"), a.timeout, false)?;
    if let Some(h) = &a.host {
        // It becomes the probes' Host header: a host name or address, nothing that could
        // end the header line.
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        {
            return Err(ConfigError::invalid(
                f("active.host"),
                format!("invalid host '{}'", h.escape_debug()),
            ));
        }
    }
    for (i, h) in a.req_headers.iter().enumerate() {
        if !h.contains(':') || h.contains('\r') || h.contains('\n') {
            return Err(ConfigError::invalid(
                f(&format!("active.req_headers[{i}]")),
                "must look like \"Name: value\"",
            ));
        }
    }
    if !a.http_path.starts_with('/') || !crate::http::request::valid_target(a.http_path.as_bytes())
    {
        return Err(ConfigError::invalid(
            f("active.http_path"),
            "must start with '/' and hold only characters allowed in a URI (no spaces, CR or LF)",
        ));
    }
    let active = ActiveCheck {
        tcp_only,
        https: a.check_type == "https",
        verify: a.https_verify_certificate,
        timeout,
        concurrency: range(&f("active.concurrency"), a.concurrency, 1, 10_000)? as u32,
        host: a.host.clone(),
        port: match a.port {
            Some(p) => Some(range(&f("active.port"), p, 1, 65535)? as u16),
            None => None,
        },
        http_path: a.http_path.clone(),
        req_headers: a.req_headers.clone(),
        healthy_interval: Duration::from_secs(range(
            &f("active.healthy.interval"),
            a.healthy.interval,
            1,
            86_400,
        )? as u64),
        unhealthy_interval: Duration::from_secs(range(
            &f("active.unhealthy.interval"),
            a.unhealthy.interval,
            1,
            86_400,
        )? as u64),
        healthy_statuses: statuses(&f("active.healthy.http_statuses"), &a.healthy.http_statuses)?,
        unhealthy_statuses: statuses(
            &f("active.unhealthy.http_statuses"),
            &a.unhealthy.http_statuses,
        )?,
        thresholds: Thresholds {
            successes: range(&f("active.healthy.successes"), a.healthy.successes, 1, 254)? as u8,
            http_failures: range(
                &f("active.unhealthy.http_failures"),
                a.unhealthy.http_failures,
                1,
                254,
            )? as u8,
            tcp_failures: range(
                &f("active.unhealthy.tcp_failures"),
                a.unhealthy.tcp_failures,
                1,
                254,
            )? as u8,
            timeouts: range(
                &f("active.unhealthy.timeouts"),
                a.unhealthy.timeouts,
                1,
                254,
            )? as u8,
        },
    };
    let p = c.passive.clone().unwrap_or_default();
    if let Some(t) = &p.check_type {
        if !matches!(t.as_str(), "http" | "https" | "tcp") {
            return Err(ConfigError::invalid(
                f("passive.type"),
                format!("\"{t}\" matches none of the enum values (http, https, tcp)"),
            ));
        }
    }
    let passive = PassiveCheck {
        enabled: c.passive.is_some(),
        healthy_statuses: statuses(
            &f("passive.healthy.http_statuses"),
            &p.healthy.http_statuses,
        )?,
        unhealthy_statuses: statuses(
            &f("passive.unhealthy.http_statuses"),
            &p.unhealthy.http_statuses,
        )?,
        thresholds: Thresholds {
            successes: range(&f("passive.healthy.successes"), p.healthy.successes, 0, 254)? as u8,
            http_failures: range(
                &f("passive.unhealthy.http_failures"),
                p.unhealthy.http_failures,
                0,
                254,
            )? as u8,
            tcp_failures: range(
                &f("passive.unhealthy.tcp_failures"),
                p.unhealthy.tcp_failures,
                0,
                254,
            )? as u8,
            timeouts: range(
                &f("passive.unhealthy.timeouts"),
                p.unhealthy.timeouts,
                0,
                254,
            )? as u8,
        },
    };
    Ok(Checks { active, passive })
}

/// One probed endpoint, shared by every node with the same address and checks.
pub struct Target {
    pub id: u32,
    /// Where probes connect (the node's address, or `checks.active.port`).
    pub probe_addr: SocketAddr,
    /// The target's host name (`checks.active.host`, else the node's host), as the status
    /// API shows it.
    pub hostname: String,
    /// Host header of HTTP probes: `upstream_host` with `pass_host = "rewrite"` (the Host the
    /// proxied requests carry), else the node's domain, else `hostname` (APISIX's order).
    pub host_header: String,
    pub checks: Arc<Checks>,
    /// Read by every core on every pick.
    usable: AtomicBool,
    /// Driven by the prober; read by the status API.
    pub machine: Mutex<Machine>,
    /// No snapshot uses this target any more: its probe loop ends.
    pub retired: AtomicBool,
}

/// (kind, id) of an upstream's checker name: `upstreams/<id>`, `routes/<id>`, `services/<id>`.
pub fn resource(key: &str) -> (&'static str, &str) {
    if let Some(id) = key.strip_prefix("route:") {
        ("routes", id)
    } else if let Some(id) = key.strip_prefix("service:") {
        ("services", id)
    } else {
        ("upstreams", key)
    }
}

/// The checker's name APISIX reports (`/upstreams/1`, `/routes/2`).
pub fn checker_name(key: &str) -> String {
    let (kind, id) = resource(key);
    format!("/{kind}/{id}")
}

impl Target {
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_usable(&self, v: bool) {
        self.usable.store(v, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({} {})", self.id, self.probe_addr)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TargetKey {
    probe_addr: SocketAddr,
    hostname: String,
    host_header: String,
    checks: Checks,
}

/// Hands out targets while a snapshot compiles, reusing live ones (the control plane keeps it
/// across reloads).
#[derive(Default)]
pub struct Registry {
    live: HashMap<TargetKey, Arc<Target>>,
    /// Targets handed out for the snapshot being compiled.
    pending: HashMap<TargetKey, Arc<Target>>,
    next_id: AtomicU32,
}

impl Registry {
    /// The target for a node at `addr` (configured host `host`) checked with `checks`;
    /// `rewrite_host` is the upstream's `upstream_host` when `pass_host = "rewrite"`.
    pub fn target(
        &mut self,
        addr: SocketAddr,
        host: &str,
        rewrite_host: Option<&str>,
        checks: &Arc<Checks>,
    ) -> Arc<Target> {
        let probe_addr = SocketAddr::new(addr.ip(), checks.active.port.unwrap_or(addr.port()));
        let hostname = checks
            .active
            .host
            .clone()
            .unwrap_or_else(|| host.to_string());
        let is_domain = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_err();
        let host_header = match rewrite_host {
            Some(h) => h.to_string(),
            None if is_domain => host.to_string(),
            None => hostname.clone(),
        };
        let key = TargetKey {
            probe_addr,
            hostname: hostname.clone(),
            host_header: host_header.clone(),
            checks: (**checks).clone(),
        };
        if let Some(t) = self.pending.get(&key).or_else(|| self.live.get(&key)) {
            let t = t.clone();
            self.pending.insert(key, t.clone());
            return t;
        }
        // A node whose checks changed keeps the state it had: the new checker starts where the
        // old one was (targets of the same address and host, any check configuration). State
        // and usability are read under the machine's lock, which the prober holds while it
        // changes both, so the copy is never half of one transition.
        let previous = self
            .live
            .iter()
            .find(|(k, _)| k.probe_addr == probe_addr && k.hostname == hostname)
            .map(|(_, t)| t.clone());
        let (machine, usable) = match &previous {
            Some(p) => {
                let m = p.machine.lock().unwrap_or_else(|e| e.into_inner());
                (m.clone(), p.usable())
            }
            None => (Machine::default(), true),
        };
        let t = Arc::new(Target {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            probe_addr,
            hostname,
            host_header,
            checks: checks.clone(),
            usable: AtomicBool::new(usable),
            machine: Mutex::new(machine),
            retired: AtomicBool::new(false),
        });
        self.pending.insert(key, t.clone());
        t
    }

    /// The snapshot compiled: its targets become the live set; the others retire.
    /// Returns the live targets.
    pub fn commit(&mut self) -> Vec<Arc<Target>> {
        let next = std::mem::take(&mut self.pending);
        for (key, t) in &self.live {
            if !next.contains_key(key) {
                t.retired.store(true, Ordering::Relaxed);
            }
        }
        self.live = next;
        self.live.values().cloned().collect()
    }

    /// The snapshot was refused: forget what it asked for.
    pub fn abort(&mut self) {
        self.pending.clear();
    }
}

/// Passive outcomes from the workers to the prober: batches of (target id, report).
pub type PassiveQueue = SegQueue<Vec<(u32, Report)>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> Arc<Checks> {
        let cfg: ChecksConfig = toml::from_str("[active]\nhttp_path = \"/health\"").unwrap();
        Arc::new(compile_checks("u", &cfg).unwrap())
    }

    #[test]
    fn targets_are_shared_and_survive_reloads() {
        let mut r = Registry::default();
        let c = checks();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t1 = r.target(a, "127.0.0.1", None, &c);
        let t2 = r.target(a, "127.0.0.1", None, &c);
        assert!(Arc::ptr_eq(&t1, &t2), "same node, same checks: one target");
        assert_eq!(r.commit().len(), 1);
        let again = r.target(a, "127.0.0.1", None, &c);
        assert!(Arc::ptr_eq(&t1, &again), "kept across a reload");
        r.commit();
        assert!(!t1.retired.load(Ordering::Relaxed));
        // Mark it down, then change its checks: a new target that remembers the state.
        t1.set_usable(false);
        t1.machine.lock().unwrap().status = state::Status::Unhealthy;
        let cfg: ChecksConfig = toml::from_str("[active]\nhttp_path = \"/other\"").unwrap();
        let changed = Arc::new(compile_checks("u", &cfg).unwrap());
        let t3 = r.target(a, "127.0.0.1", None, &changed);
        assert!(!Arc::ptr_eq(&t1, &t3), "changed checks: a new target");
        assert!(!t3.usable());
        assert_eq!(t3.machine.lock().unwrap().status, state::Status::Unhealthy);
        r.commit();
        assert!(t1.retired.load(Ordering::Relaxed));
    }

    #[test]
    fn validation_names_fields() {
        for (text, want) in [
            ("[passive]\n", "u.checks"),
            ("[active]\ntype = \"udp\"", "u.checks.active.type"),
            (
                "[active.healthy]\nsuccesses = 255",
                "u.checks.active.healthy.successes",
            ),
            ("[active]\nport = 0", "u.checks.active.port"),
            (
                "[active]\n[passive.unhealthy]\nhttp_statuses = [500, 600]",
                "passive.unhealthy.http_statuses[1]",
            ),
        ] {
            let cfg: ChecksConfig = toml::from_str(text).unwrap();
            let err = compile_checks("u", &cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
    }
}
