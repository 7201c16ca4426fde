//! Upstreams: nodes (host, port, weight, priority; domains resolved here, in the control
//! plane), balancer type and hash key, retries, timeouts, keepalive pool, Host handling.

use super::Result;
use crate::config::seconds;
use crate::config::{ConfigError, NodesConfig, TimeoutConfig, UpstreamConfig};
use crate::dns::Names;
use crate::health::compile_checks;
use crate::upstream::{
    BalancerKind, HashOn, KeepalivePolicy, Node, PassHost, Timeouts, UpstreamSpec,
};
use crate::vars::{Template, Var};
use std::sync::Arc;

pub(super) fn compile_timeouts(field: &str, t: &TimeoutConfig) -> Result<Timeouts> {
    Ok(Timeouts {
        connect: seconds(&format!("{field}.connect"), t.connect, false)?,
        send: seconds(&format!("{field}.send"), t.send, false)?,
        read: seconds(&format!("{field}.read"), t.read, false)?,
    })
}

/// Splits `host[:port]` / `[v6]:port` into host and port.
pub(super) fn split_host_port(s: &str) -> std::result::Result<(String, Option<u16>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed '[' in IPv6 address")?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err("unexpected characters after ']'".into()),
        };
        return Ok((format!("[{host}]"), port));
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => {
            Err("IPv6 address must be enclosed with '[' and ']'".into())
        }
        Some((h, p)) => Ok((h.to_string(), Some(parse_port(p)?))),
        None => Ok((s.to_string(), None)),
    }
}

pub(super) fn parse_port(p: &str) -> std::result::Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("invalid port {p}")),
    }
}

pub(super) fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
}

pub(super) fn node(
    field: &str,
    host: &str,
    port: Option<u16>,
    weight: i64,
    priority: i64,
    names: &Names,
) -> Result<Node> {
    if !valid_host_name(host) {
        return Err(ConfigError::invalid(
            field,
            format!("invalid host '{host}'"),
        ));
    }
    if !(0..=u32::MAX as i64).contains(&weight) {
        return Err(ConfigError::invalid(
            field,
            format!("weight {weight} must be an integer of at least 0"),
        ));
    }
    let port = port.unwrap_or(80);
    let addr = names.lookup(field, host, port);
    let host_port: Arc<str> = if port == 80 {
        host.into()
    } else {
        format!("{host}:{port}").into()
    };
    Ok(Node {
        host_port,
        addr,
        weight: weight as u32,
        priority,
        health: None,
    })
}

/// What upstreams and plugins are compiled against besides their own objects.
pub(super) struct CompileEnv<'a> {
    /// Resolved node host names.
    pub(super) names: &'a Names,
    /// The `ssls` objects (`tls.client_cert_id`).
    pub(super) ssls: &'a [Arc<crate::config::SslConfig>],
    /// The CAs trusted for upstream certificates (`gateway.ssl_trusted_certificate`).
    pub(super) roots: &'a Arc<rustls::RootCertStore>,
    /// The consumers by credential (authentication plugins).
    pub(super) consumers: &'a Arc<crate::consumer::Consumers>,
}

pub(super) fn compile_upstream(
    name: &str,
    key: &str,
    u: &UpstreamConfig,
    env: &CompileEnv<'_>,
) -> Result<UpstreamSpec> {
    let names = env.names;
    let kind = match u.lb_type.as_str() {
        "roundrobin" => BalancerKind::RoundRobin,
        "least_conn" => BalancerKind::LeastConn,
        "chash" => BalancerKind::ConsistentHash,
        "ewma" => BalancerKind::Ewma,
        other => {
            return Err(ConfigError::invalid(
                format!("{name}.type"),
                format!(
                    "unknown balancer \"{other}\" (expected roundrobin, least_conn, chash or ewma)"
                ),
            ))
        }
    };
    let hash_on = match kind {
        BalancerKind::ConsistentHash => Some(compile_hash_on(name, u)?),
        _ => None,
    };
    let tls_for = |alpn: &[u8]| -> Result<Option<Arc<crate::upstream::tls::UpstreamTls>>> {
        Ok(Some(Arc::new(crate::upstream::tls::UpstreamTls::build(
            name,
            u.tls.as_ref(),
            env.ssls,
            env.roots,
            alpn,
        )?)))
    };
    let (tls, grpc) = match u.scheme.as_str() {
        "http" => (None, false),
        "https" => (tls_for(b"http/1.1")?, false),
        "grpc" => (None, true),
        "grpcs" => (tls_for(b"h2")?, true),
        other => {
            return Err(ConfigError::invalid(
                format!("{name}.scheme"),
                format!(
                "\"{other}\" is not supported yet; use \"http\", \"https\", \"grpc\" or \"grpcs\""
            ),
            ))
        }
    };
    let nodes_field = format!("{name}.nodes");
    let nodes = match &u.nodes {
        NodesConfig::Map(map) => map
            .iter()
            .map(|(k, &w)| {
                let field = format!("{nodes_field}.\"{k}\"");
                let (host, port) =
                    split_host_port(k).map_err(|e| ConfigError::invalid(&field, e))?;
                node(&field, &host, port, w, 0, names)
            })
            .collect::<Result<Vec<_>>>()?,
        NodesConfig::List(list) => list
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let field = format!("{nodes_field}[{i}]");
                if n.host.contains(':') && !n.host.starts_with('[') {
                    return Err(ConfigError::invalid(
                        format!("{field}.host"),
                        "IPv6 address must be enclosed with '[' and ']'",
                    ));
                }
                let port = match n.port {
                    None => None,
                    Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                    Some(p) => {
                        return Err(ConfigError::invalid(
                            format!("{field}.port"),
                            format!("expected {p} to be between 1 and 65535"),
                        ))
                    }
                };
                node(&field, &n.host, port, n.weight, n.priority, names)
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if kind == BalancerKind::ConsistentHash {
        let units = crate::upstream::balancer::chash::ring_weight(nodes.iter().map(|n| n.weight));
        if units > crate::upstream::balancer::chash::MAX_RING_WEIGHT {
            return Err(ConfigError::invalid(
                &nodes_field,
                format!(
                    "chash weights divided by their greatest common divisor add up to {units}; \
                     at most {} (each unit is 160 points on the hash ring of every core)",
                    crate::upstream::balancer::chash::MAX_RING_WEIGHT
                ),
            ));
        }
    }
    let retries = match u.retries {
        None => nodes.len().saturating_sub(1) as u32,
        Some(r) if r >= 0 => r.min(u32::MAX as i64) as u32,
        Some(r) => {
            return Err(ConfigError::invalid(
                format!("{name}.retries"),
                format!("expected {r} to be at least 0"),
            ))
        }
    };
    let retry_timeout = match u.retry_timeout {
        None => None,
        Some(t) => {
            let d = seconds(&format!("{name}.retry_timeout"), t, true)?;
            (!d.is_zero()).then_some(d)
        }
    };
    let timeouts = match &u.timeout {
        Some(t) => compile_timeouts(&format!("{name}.timeout"), t)?,
        None => Timeouts::default(),
    };
    let kp = u.keepalive_pool.unwrap_or_default();
    let kp_field = format!("{name}.keepalive_pool");
    if kp.size < 1 {
        return Err(ConfigError::invalid(
            format!("{kp_field}.size"),
            format!("expected {} to be at least 1", kp.size),
        ));
    }
    if kp.requests < 1 {
        return Err(ConfigError::invalid(
            format!("{kp_field}.requests"),
            format!("expected {} to be at least 1", kp.requests),
        ));
    }
    let keepalive = KeepalivePolicy {
        size: kp.size as usize,
        idle_timeout: seconds(&format!("{kp_field}.idle_timeout"), kp.idle_timeout, true)?,
        requests: kp.requests.min(u32::MAX as i64) as u32,
    };
    let pass_host = match (u.pass_host.as_str(), &u.upstream_host) {
        ("pass", _) => PassHost::Pass,
        ("node", _) => PassHost::Node,
        ("rewrite", Some(h)) if !h.is_empty() => {
            if !valid_host_name(h) {
                return Err(ConfigError::invalid(
                    format!("{name}.upstream_host"),
                    format!("invalid host '{h}'"),
                ));
            }
            PassHost::Rewrite(h.as_str().into())
        }
        ("rewrite", _) => {
            return Err(ConfigError::invalid(
                format!("{name}.upstream_host"),
                "`upstream_host` can't be empty when `pass_host` is `rewrite`",
            ))
        }
        (other, _) => {
            return Err(ConfigError::invalid(
                format!("{name}.pass_host"),
                format!("\"{other}\" matches none of the enum values (pass, node, rewrite)"),
            ))
        }
    };
    let checks = match &u.checks {
        Some(c) => Some(Arc::new(compile_checks(name, c)?)),
        None => None,
    };
    Ok(UpstreamSpec {
        key: key.into(),
        kind,
        hash_on,
        checks,
        drained: nodes.iter().all(|n| n.weight == 0),
        nodes,
        retries,
        retry_timeout,
        timeouts,
        keepalive,
        pass_host,
        tls,
        grpc,
    })
}

/// `hash_on` + `key` of a chash upstream, checked as APISIX checks them.
pub(super) fn compile_hash_on(name: &str, u: &UpstreamConfig) -> Result<HashOn> {
    let on = u.hash_on.as_deref().unwrap_or("vars");
    let key_field = format!("{name}.key");
    let key = || {
        u.key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ConfigError::invalid(&key_field, "missing key"))
    };
    let name_like = |k: &str| {
        k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    Ok(match on {
        "vars" => HashOn::Var(Var::parse(key()?).map_err(|e| ConfigError::invalid(&key_field, e))?),
        "header" => {
            let k = key()?;
            if !name_like(k) {
                return Err(ConfigError::invalid(&key_field, format!("'{k}' is not a header name")));
            }
            HashOn::Header(Var::Http(k.to_ascii_lowercase().replace('-', "_")))
        }
        "cookie" => {
            let k = key()?;
            if !name_like(k) {
                return Err(ConfigError::invalid(&key_field, format!("'{k}' is not a cookie name")));
            }
            HashOn::Cookie(Var::Cookie(k.to_string()))
        }
        "vars_combinations" => {
            let t = Template::parse(key()?).map_err(|e| ConfigError::invalid(&key_field, e))?;
            if !t.has_vars() {
                return Err(ConfigError::invalid(&key_field, "the key has no $variable"));
            }
            HashOn::Template(t)
        }
        "consumer" => HashOn::Consumer,
        other => {
            return Err(ConfigError::invalid(
                format!("{name}.hash_on"),
                format!(
                    "\"{other}\" matches none of the enum values (vars, header, cookie, consumer, vars_combinations)"
                ),
            ))
        }
    })
}
