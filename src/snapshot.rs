//! Compiling a [`Config`] into an immutable [`Snapshot`]: every reference resolved, every rule
//! checked, the router built. The control plane does this once per (re)load and hands the
//! same `Arc<Snapshot>` to every core; nothing in it is mutated afterwards.
//!
//! All semantic validation lives here, so `shardgate check` and a live reload refuse exactly
//! the same configs, with errors that name the offending field.

use crate::config::{seconds, Plugins};
use crate::config::{
    Config, ConfigError, GatewayConfig, NodesConfig, RouteConfig, TimeoutConfig, UpstreamConfig,
};
use crate::health::{compile_checks, Registry as HealthRegistry};
use crate::http::request::Limits;
use crate::plugin::{self, BuildCtx, Chain, Instance, Registry};
use crate::route::{self, HostPattern, Route, Router};
use crate::upstream::{
    BalancerKind, HashOn, KeepalivePolicy, Node, PassHost, TemplatePart, Timeouts, UpstreamSpec,
};
use crate::vars::Condition;
use crate::vars::Var;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Client-side settings every connection reads.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: Limits,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    /// Use every node when all of an upstream's are unhealthy (`healthcheck_fail_open`).
    pub fail_open: bool,
    /// Relay long bodies with splice(2) (`splice`).
    pub splice: bool,
    /// TCP_NOTSENT_LOWAT for client sockets that get spliced bodies; 0 = not set.
    pub splice_lowat: u32,
    /// Take connections waiting in sibling workers' queues (`steal_accepts`).
    pub steal_accepts: bool,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub graceful_shutdown_timeout: Duration,
}

/// One immutable, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every successful (re)load.
    pub version: u64,
    /// Every plugin instance (each core makes its per-core states from it).
    pub plugins: Registry,
    /// Global rules' plugins, in execution order.
    pub global: Chain,
    pub settings: Settings,
    pub router: Router,
    pub upstreams: Vec<Arc<UpstreamSpec>>,
    pub listen: Vec<SocketAddr>,
    /// Where the control API (health status) listens; `None` = off.
    pub control_listen: Option<SocketAddr>,
}

type Result<T> = std::result::Result<T, ConfigError>;

/// `upstreams[0] (id "demo")`: how errors point at an object.
fn object_name(kind: &str, index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{kind}[{index}] (id \"{id}\")"),
        None => format!("{kind}[{index}]"),
    }
}

impl Snapshot {
    /// Validates and compiles `config`. `version` is stamped on the result; health-checked
    /// nodes get their targets from `health` (which keeps targets across reloads).
    pub fn compile(config: &Config, version: u64, health: &mut HealthRegistry) -> Result<Snapshot> {
        let (settings, listen) = compile_gateway(&config.gateway)?;
        let control_listen = match config.gateway.control_listen.as_str() {
            "off" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "gateway.control_listen",
                    format!("'{a}' is not an ip:port address (or \"off\")"),
                )
            })?),
        };

        let mut upstreams: Vec<UpstreamSpec> = Vec::new();
        let mut upstream_ids: HashMap<&str, usize> = HashMap::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let name = object_name("upstreams", i, u.id.as_deref());
            let id =
                u.id.as_deref()
                    .ok_or_else(|| ConfigError::invalid(&name, "missing id"))?;
            check_id(&format!("{name}.id"), id)?;
            if upstream_ids.insert(id, upstreams.len()).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate upstream id",
                ));
            }
            upstreams.push(compile_upstream(&name, id, u)?);
        }

        let mut registry = Registry::default();
        let mut global = Chain::default();
        for (i, g) in config.global_rules.iter().enumerate() {
            let name = object_name("global_rules", i, g.id.as_deref());
            let owner = format!("global_rules/{}", g.id.as_deref().unwrap_or(&i.to_string()));
            for (_, instance) in build_plugins(
                &name,
                &owner,
                &g.plugins,
                &upstream_ids,
                &mut upstreams,
                &mut registry,
            )? {
                global.plugins.push(instance);
            }
        }
        global.sort();

        // Services: their upstream resolved to an index (possibly a new inline one).
        let mut services: Services = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let name = object_name("services", i, s.id.as_deref());
            let id =
                s.id.as_deref()
                    .ok_or_else(|| ConfigError::invalid(&name, "missing id"))?;
            check_id(&format!("{name}.id"), id)?;
            let upstream = if let Some(uid) = s.upstream_id.as_deref() {
                Some(lookup_upstream(
                    &upstream_ids,
                    &format!("{name}.upstream_id"),
                    uid,
                )?)
            } else if let Some(u) = &s.upstream {
                let key = format!("service:{id}");
                upstreams.push(compile_upstream(&format!("{name}.upstream"), &key, u)?);
                Some(upstreams.len() - 1)
            } else {
                None
            };
            if let Some(hosts) = &s.hosts {
                if hosts.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{name}.hosts"),
                        "expect array to have at least 1 items",
                    ));
                }
            }
            let plugins = match &s.plugins {
                Some(p) => build_plugins(
                    &name,
                    &format!("services/{id}"),
                    p,
                    &upstream_ids,
                    &mut upstreams,
                    &mut registry,
                )?,
                None => Vec::new(),
            };
            let info = ServiceInfo {
                upstream,
                hosts: s.hosts.as_ref(),
                plugins,
            };
            if services.insert(id, info).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate service id",
                ));
            }
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut uris = Vec::with_capacity(config.routes.len());
        let mut route_ids: HashMap<String, ()> = HashMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let name = object_name("routes", i, r.id.as_deref());
            let id = r.id.clone().unwrap_or_else(|| format!("arr_{}", i + 1));
            check_id(&format!("{name}.id"), &id)?;
            if route_ids.insert(id.clone(), ()).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate route id",
                ));
            }
            let (route, paths) = compile_route(
                &name,
                &id,
                r,
                &upstream_ids,
                &services,
                &mut upstreams,
                &mut registry,
            )?;
            if r.status == 1 {
                routes.push(route);
                uris.push(paths);
            }
        }

        // Health targets last: every node of a checked upstream gets its shared target.
        for u in &mut upstreams {
            if let Some(checks) = &u.checks {
                let rewrite = match &u.pass_host {
                    PassHost::Rewrite(h) => Some(&**h),
                    _ => None,
                };
                for n in &mut u.nodes {
                    let host = match n.host_port.rsplit_once(':') {
                        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                        _ => &*n.host_port,
                    };
                    n.health = Some(health.target(n.addr, host, rewrite, checks));
                }
            }
        }

        Ok(Snapshot {
            version,
            plugins: registry,
            global,
            settings,
            router: Router::new(routes, uris),
            upstreams: upstreams.into_iter().map(Arc::new).collect(),
            listen,
            control_listen,
        })
    }
}

fn check_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("'{id}' must be 1-64 characters of [a-zA-Z0-9-_.]"),
        ))
    }
}

fn lookup_upstream(ids: &HashMap<&str, usize>, field: &str, id: &str) -> Result<usize> {
    ids.get(id)
        .copied()
        .ok_or_else(|| ConfigError::invalid(field, format!("upstream \"{id}\" does not exist")))
}

fn compile_gateway(g: &GatewayConfig) -> Result<(Settings, Vec<SocketAddr>)> {
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

fn compile_timeouts(field: &str, t: &TimeoutConfig) -> Result<Timeouts> {
    Ok(Timeouts {
        connect: seconds(&format!("{field}.connect"), t.connect, false)?,
        send: seconds(&format!("{field}.send"), t.send, false)?,
        read: seconds(&format!("{field}.read"), t.read, false)?,
    })
}

/// Splits `host[:port]` / `[v6]:port` into host and port.
fn split_host_port(s: &str) -> std::result::Result<(String, Option<u16>), String> {
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

fn parse_port(p: &str) -> std::result::Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("invalid port {p}")),
    }
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
}

/// Resolves a node host in the control plane (workers never do DNS).
fn resolve(host: &str, port: u16) -> std::result::Result<SocketAddr, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    // One address per node, as APISIX does; IPv4 first, since `localhost` often lists ::1
    // first while backends commonly listen on 127.0.0.1 only.
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{host}' resolved to no address"))
}

fn node(field: &str, host: &str, port: Option<u16>, weight: i64, priority: i64) -> Result<Node> {
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
    let addr = resolve(host, port).map_err(|e| ConfigError::invalid(field, e))?;
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

fn compile_upstream(name: &str, key: &str, u: &UpstreamConfig) -> Result<UpstreamSpec> {
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
    if u.scheme != "http" {
        return Err(ConfigError::invalid(
            format!("{name}.scheme"),
            format!("\"{}\" is not supported yet; use \"http\"", u.scheme),
        ));
    }
    let nodes_field = format!("{name}.nodes");
    let nodes = match &u.nodes {
        NodesConfig::Map(map) => map
            .iter()
            .map(|(k, &w)| {
                let field = format!("{nodes_field}.\"{k}\"");
                let (host, port) =
                    split_host_port(k).map_err(|e| ConfigError::invalid(&field, e))?;
                node(&field, &host, port, w, 0)
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
                node(&field, &n.host, port, n.weight, n.priority)
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
    })
}

/// `hash_on` + `key` of a chash upstream, checked as APISIX checks them.
fn compile_hash_on(name: &str, u: &UpstreamConfig) -> Result<HashOn> {
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
        "vars_combinations" => HashOn::Template(
            parse_template(key()?).map_err(|e| ConfigError::invalid(&key_field, e))?,
        ),
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

/// Parses a `vars_combinations` template: `$var` or `${var}` among literal text.
fn parse_template(t: &str) -> std::result::Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(pos) = rest.find('$') {
        if pos > 0 {
            parts.push(TemplatePart::Literal(rest[..pos].to_string()));
        }
        let after = &rest[pos + 1..];
        let (name, next) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or("unclosed '${' in key")?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err("'$' must be followed by a variable name".into());
        }
        parts.push(TemplatePart::Var(Var::parse(name)?));
        rest = next;
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    if !parts.iter().any(|p| matches!(p, TemplatePart::Var(_))) {
        return Err("the key has no $variable".into());
    }
    Ok(parts)
}

/// What routes take from a service.
struct ServiceInfo<'a> {
    upstream: Option<usize>,
    hosts: Option<&'a Vec<String>>,
    plugins: Vec<(String, Instance)>,
}

type Services<'a> = HashMap<&'a str, ServiceInfo<'a>>;

/// Builds the plugins configured on one object (`{name}.plugins`).
/// `owner` identifies the object across reloads (`routes/ID`, `services/ID`,
/// `global_rules/ID`): an unchanged plugin on the same owner keeps its per-core state.
fn build_plugins(
    name: &str,
    owner: &str,
    plugins: &Plugins,
    upstream_ids: &HashMap<&str, usize>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<Vec<(String, Instance)>> {
    let mut out = Vec::new();
    for (plugin, conf) in plugins {
        let field = format!("{name}.plugins.{plugin}");
        let mut add_upstream =
            |f: &str, u: &UpstreamConfig| -> std::result::Result<usize, String> {
                let spec = compile_upstream(f, f, u).map_err(|e| e.to_string())?;
                upstreams.push(spec);
                Ok(upstreams.len() - 1)
            };
        let mut ctx = BuildCtx {
            upstream_ids,
            add_upstream: &mut add_upstream,
            field: field.clone(),
        };
        let built = plugin::build(plugin, conf, &mut ctx).map_err(|e| {
            ConfigError::invalid(
                &field,
                format!("failed to check the configuration of plugin {plugin} err: {e}"),
            )
        })?;
        let key = format!("{owner}/{plugin}:{conf}");
        out.push((plugin.clone(), registry.add(built, key)));
    }
    Ok(out)
}

fn compile_route(
    name: &str,
    id: &str,
    r: &RouteConfig,
    upstream_ids: &HashMap<&str, usize>,
    services: &Services<'_>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<(Route, Vec<String>)> {
    let paths = match (&r.uri, &r.uris) {
        (Some(u), None) => vec![u.clone()],
        (None, Some(us)) if !us.is_empty() => us.clone(),
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{name}.uris"),
                "expect array to have at least 1 items",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                name,
                "only one of uri or uris is allowed",
            ))
        }
        (None, None) => return Err(ConfigError::invalid(name, "missing uri or uris")),
    };
    for p in &paths {
        if !p.starts_with('/') || p.len() > 4096 {
            return Err(ConfigError::invalid(
                format!("{name}.uri"),
                format!("'{p}' must start with '/' (at most 4096 characters)"),
            ));
        }
        if p.strip_suffix('*').unwrap_or(p).contains('*') {
            return Err(ConfigError::invalid(
                format!("{name}.uri"),
                format!("'{p}': '*' is only allowed at the end (prefix match)"),
            ));
        }
    }
    if let Some(status) = Some(r.status).filter(|s| *s != 0 && *s != 1) {
        return Err(ConfigError::invalid(
            format!("{name}.status"),
            format!("{status} matches none of the enum values (0, 1)"),
        ));
    }

    let service = match r.service_id.as_deref() {
        Some(sid) => Some(services.get(sid).ok_or_else(|| {
            ConfigError::invalid(
                format!("{name}.service_id"),
                format!("service \"{sid}\" does not exist"),
            )
        })?),
        None => None,
    };

    let host_list: Option<Vec<String>> = match (&r.host, &r.hosts) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                name,
                "only one of host or hosts is allowed",
            ))
        }
        (Some(h), None) => Some(vec![h.clone()]),
        (None, Some(hs)) if hs.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{name}.hosts"),
                "expect array to have at least 1 items",
            ))
        }
        (None, Some(hs)) => Some(hs.clone()),
        (None, None) => service.and_then(|s| s.hosts.cloned()),
    };
    let mut hosts = Vec::new();
    for h in host_list.unwrap_or_default() {
        let plain = h.strip_prefix('*').unwrap_or(&h);
        if h.is_empty() || !valid_host_name(plain) || plain.contains(':') {
            return Err(ConfigError::invalid(
                format!("{name}.hosts"),
                format!("invalid host pattern '{h}'"),
            ));
        }
        hosts.push(HostPattern::parse(&h));
    }

    let mut methods = 0u32;
    for (i, m) in r.methods.iter().flatten().enumerate() {
        let bit = route::method_bit(m.as_bytes());
        if bit == 0 {
            return Err(ConfigError::invalid(
                format!("{name}.methods[{i}]"),
                format!(
                    "\"{m}\" matches none of the enum values ({})",
                    route::METHODS.join(", ")
                ),
            ));
        }
        methods |= bit;
    }

    let mut vars = Vec::new();
    for (i, v) in r.vars.iter().flatten().enumerate() {
        vars.push(Condition::compile(v).map_err(|e| {
            ConfigError::invalid(
                format!("{name}.vars[{i}]"),
                format!("failed to validate the 'vars' expression: {e}"),
            )
        })?);
    }

    let remote_list: Vec<(String, &String)> = match (&r.remote_addr, &r.remote_addrs) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                name,
                "only one of remote_addr or remote_addrs is allowed",
            ))
        }
        (Some(a), None) => vec![(format!("{name}.remote_addr"), a)],
        (None, Some(list)) if list.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{name}.remote_addrs"),
                "expect array to have at least 1 items",
            ))
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("{name}.remote_addrs[{i}]"), a))
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut remote_addrs = Vec::with_capacity(remote_list.len());
    for (field, a) in remote_list {
        let net = route::IpNet::parse(a).map_err(|e| ConfigError::invalid(&field, e))?;
        if remote_addrs.contains(&net) {
            return Err(ConfigError::invalid(
                field,
                format!("'{a}' appears twice (expect array items to be unique)"),
            ));
        }
        remote_addrs.push(net);
    }

    // APISIX precedence: route upstream_id > route upstream > service's upstream.
    let upstream = if let Some(uid) = r.upstream_id.as_deref() {
        Some(lookup_upstream(
            upstream_ids,
            &format!("{name}.upstream_id"),
            uid,
        )?)
    } else if let Some(u) = &r.upstream {
        upstreams.push(compile_upstream(
            &format!("{name}.upstream"),
            &format!("route:{id}"),
            u,
        )?);
        Some(upstreams.len() - 1)
    } else {
        service.and_then(|s| s.upstream)
    };
    if r.upstream_id.is_none()
        && r.upstream.is_none()
        && r.service_id.is_none()
        && r.plugins.is_none()
    {
        return Err(ConfigError::invalid(
            name,
            "needs one of upstream_id, upstream, service_id or plugins",
        ));
    }
    // Route plugins, then the service's plugins the route does not configure itself.
    let own = match &r.plugins {
        Some(p) => build_plugins(
            name,
            &format!("routes/{id}"),
            p,
            upstream_ids,
            upstreams,
            registry,
        )?,
        None => Vec::new(),
    };
    let mut plugins = Chain::default();
    if let Some(s) = service {
        for (pname, instance) in &s.plugins {
            if !own.iter().any(|(n, _)| n == pname) {
                plugins.plugins.push(instance.clone());
            }
        }
    }
    plugins.plugins.extend(own.into_iter().map(|(_, i)| i));
    plugins.sort();
    let timeout = match &r.timeout {
        Some(t) => Some(compile_timeouts(&format!("{name}.timeout"), t)?),
        None => None,
    };
    Ok((
        Route {
            id: id.into(),
            hosts,
            methods,
            vars,
            remote_addrs,
            priority: r.priority,
            upstream,
            timeout,
            plugins,
            index: 0,
        },
        paths,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Snapshot> {
        Snapshot::compile(&Config::parse(text)?, 1, &mut HealthRegistry::default())
    }

    #[test]
    fn shipped_config_compiles() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let s = compile(&text).unwrap();
        assert!(!s.router.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let base = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n";
        let cases = [
            ("[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = -1 }\n", "upstreams[0] (id \"u\").nodes.\"127.0.0.1:1\""),
            ("[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:99999\" = 1 }\n", "invalid port 99999"),
            ("[[upstreams]]\nid = \"u\"\nretries = -1\nnodes = { \"127.0.0.1:1\" = 1 }\n", "upstreams[0] (id \"u\").retries"),
            ("[[upstreams]]\nid = \"u\"\npass_host = \"rewrite\"\nnodes = { \"127.0.0.1:1\" = 1 }\n", "upstream_host"),
            ("[[upstreams]]\nid = \"u\"\ntimeout = { connect = 0, send = 1, read = 1 }\nnodes = { \"127.0.0.1:1\" = 1 }\n", "timeout.connect"),
            (&format!("{base}[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"nope\"\n"), "routes[0] (id \"r\").upstream_id"),
            (&format!("{base}[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\nmethods = [\"GIT\"]\n"), "routes[0] (id \"r\").methods[0]"),
            (&format!("{base}[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\nvars = [[\"uri\", \"=\", \"x\"]]\n"), "routes[0] (id \"r\").vars[0]"),
            (&format!("{base}[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\nbogus = 1\n"), "bogus"),
            ("[gateway]\nlisten = [\"nope\"]\n", "gateway.listen[0]"),
            ("[gateway]\nsplice_lowat = 2000000000\n", "gateway.splice_lowat"),
            ("[gateway]\nsplice_lowat = -1\n", "splice_lowat"),
        ];
        for (text, want) in cases {
            let err = compile(text).expect_err(text).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn service_and_route_upstream_precedence() {
        let text = r#"
[[upstreams]]
id = "a"
nodes = { "127.0.0.1:1" = 1 }
[[upstreams]]
id = "b"
nodes = [{ host = "127.0.0.1", port = 2, weight = 1 }]
[[services]]
id = "s"
upstream_id = "a"
hosts = ["svc.test"]
[[routes]]
id = "r1"
uri = "/x"
service_id = "s"
[[routes]]
id = "r2"
uri = "/y"
service_id = "s"
upstream_id = "b"
"#;
        let s = compile(text).unwrap();
        assert_eq!(s.upstreams[1].nodes[0].addr.port(), 2);
        assert_eq!(s.upstreams[0].retries, 0);
    }
}
