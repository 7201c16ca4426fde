//! Routes: paths, hosts, methods, `vars`, client addresses, priority, and the upstream and
//! plugins they take from themselves or their service.

use super::plugins::build_plugins;
use super::upstreams::compile_timeouts;
use super::upstreams::{compile_upstream, valid_host_name};
use super::{lookup_upstream, Result};
use crate::config::{ConfigError, ObjectName, RouteConfig};
use crate::plugin::{Chain, Instance, Registry};
use crate::route::{self, HostPattern, Route};
use crate::upstream::UpstreamSpec;
use crate::vars::Condition;
use std::collections::HashMap;

/// What routes may refer to by id, compiled before them.
pub(super) struct Referenced<'a> {
    pub(super) upstream_ids: &'a HashMap<String, usize>,
    pub(super) services: &'a Services,
    pub(super) plugin_configs: &'a PluginConfigs,
    /// What inline upstreams are compiled against.
    pub(super) env: &'a super::upstreams::CompileEnv<'a>,
}

/// Plugin configs by id: their plugins, built once and shared by the routes that name them.
pub(super) type PluginConfigs = HashMap<String, Vec<(String, Instance)>>;

/// What routes take from a service.
#[derive(Clone)]
pub(super) struct ServiceInfo {
    pub(super) upstream: Option<usize>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) plugins: Vec<(String, Instance)>,
    /// Its `name` (metrics with `prefer_name`).
    pub(super) name: Option<std::sync::Arc<str>>,
    pub(super) enable_websocket: Option<bool>,
}

pub(super) type Services = HashMap<String, ServiceInfo>;

pub(super) fn compile_route(
    name: &ObjectName<'_>,
    id: &str,
    r: &RouteConfig,
    refs: &Referenced<'_>,
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
                name.to_string(),
                "only one of uri or uris is allowed",
            ))
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                name.to_string(),
                "missing uri or uris",
            ))
        }
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
        Some(sid) => Some(refs.services.get(sid).ok_or_else(|| {
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
                name.to_string(),
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
        (None, None) => service.and_then(|s| s.hosts.clone()),
    };
    let mut hosts = Vec::new();
    let mut host_names = Vec::new();
    for h in host_list.unwrap_or_default() {
        let plain = h.strip_prefix('*').unwrap_or(&h);
        if h.is_empty() || !valid_host_name(plain) || plain.contains(':') {
            return Err(ConfigError::invalid(
                format!("{name}.hosts"),
                format!("invalid host pattern '{h}'"),
            ));
        }
        hosts.push(HostPattern::parse(&h));
        host_names.push(h.as_str().into());
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
                name.to_string(),
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
        Some(lookup_upstream(refs.upstream_ids, &name.to_string(), uid)?)
    } else if let Some(u) = &r.upstream {
        upstreams.push(compile_upstream(
            &format!("{name}.upstream"),
            &format!("route:{id}"),
            u,
            refs.env,
        )?);
        Some(upstreams.len() - 1)
    } else {
        service.and_then(|s| s.upstream)
    };
    if r.upstream_id.is_none()
        && r.upstream.is_none()
        && r.service_id.is_none()
        && r.plugins.is_none()
        && r.plugin_config_id.is_none()
    {
        return Err(ConfigError::invalid(
            name.to_string(),
            "needs one of upstream_id, upstream, service_id, plugins or plugin_config_id",
        ));
    }
    let plugin_config = match r.plugin_config_id.as_deref() {
        Some(pid) => Some(refs.plugin_configs.get(pid).ok_or_else(|| {
            ConfigError::invalid(
                format!("{name}.plugin_config_id"),
                format!("plugin config \"{pid}\" does not exist"),
            )
        })?),
        None => None,
    };
    // APISIX's merge order: the route's own plugins, then its plugin config's, then its
    // service's; a plugin configured at more than one level takes the first one's config.
    let own = match &r.plugins {
        Some(p) => build_plugins(
            &name.to_string(),
            &format!("routes/{id}"),
            p,
            refs.upstream_ids,
            refs.env,
            upstreams,
            registry,
        )?,
        None => Vec::new(),
    };
    let mut merged: Vec<(String, Instance)> = own;
    for level in [plugin_config, service.map(|s| &s.plugins)]
        .into_iter()
        .flatten()
    {
        for (pname, instance) in level {
            if !merged.iter().any(|(n, _)| n == pname) {
                merged.push((pname.clone(), instance.clone()));
            }
        }
    }
    let mut plugins = Chain::default();
    plugins.plugins.extend(merged.into_iter().map(|(_, i)| i));
    plugins.sort();
    let timeout = match &r.timeout {
        Some(t) => Some(compile_timeouts(&format!("{name}.timeout"), t)?),
        None => None,
    };
    Ok((
        Route {
            labels: std::sync::Arc::new(route::RouteLabels {
                name: r.name.as_deref().map(Into::into),
                service_name: service.and_then(|s| s.name.clone()),
                uris: paths.iter().map(|p| p.as_str().into()).collect(),
                hosts: host_names,
            }),
            id: id.into(),
            service_id: r.service_id.as_deref().map(Into::into),
            hosts,
            methods,
            vars,
            remote_addrs,
            priority: r.priority,
            upstream,
            timeout,
            websocket: r
                .enable_websocket
                .or(service.and_then(|s| s.enable_websocket))
                .unwrap_or(false),
            plugins,
            index: 0,
        },
        paths,
    ))
}
