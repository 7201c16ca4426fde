//! What routes refer to, compiled before them: upstreams (with the inline ones of services,
//! plugins and consumers), global rules, services, plugin configs and consumers. A route
//! change leaves all of it as it was, and the next compilation takes it again
//! (`cache.rs`).

use super::consumers;
use super::plugins::build_plugins;
use super::routes::{PluginConfigs, ServiceInfo, Services};
use super::upstreams::{compile_upstream, CompileEnv};
use super::{check_id, lookup_upstream, object_name, Result, TlsSettings};
use crate::config::ConfigError;
use crate::dns::Names;
use crate::plugin::{Chain, Registry};
use crate::resources::Resources;
use crate::upstream::UpstreamSpec;
use std::collections::HashMap;

/// The compiled objects routes refer to.
pub(super) struct Base {
    pub(super) upstreams: Vec<UpstreamSpec>,
    pub(super) upstream_ids: HashMap<String, usize>,
    pub(super) registry: Registry,
    pub(super) global: Chain,
    pub(super) services: Services,
    pub(super) plugin_configs: PluginConfigs,
    /// How TLS handshakes are answered: certificates by SNI (none without certificates).
    pub(super) tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// The CAs trusted for upstream certificates (routes' inline upstreams use them too).
    pub(super) roots: std::sync::Arc<rustls::RootCertStore>,
    /// The consumers by credential (routes' authentication plugins use them too).
    pub(super) consumers: std::sync::Arc<crate::consumer::Consumers>,
    /// Consumers' own plugins, by username.
    pub(super) consumer_chains: std::sync::Arc<consumers::ConsumerChains>,
}

impl Base {
    pub(super) fn compile(config: &Resources, names: &Names, tls: &TlsSettings) -> Result<Base> {
        let roots = crate::upstream::tls::roots(tls.trusted.as_deref())
            .map_err(|e| ConfigError::invalid("gateway.ssl_trusted_certificate", e))?;
        let consumers = std::sync::Arc::new(crate::consumer::Consumers::build(
            &config.consumers,
            &config.credentials,
        )?);
        let env = CompileEnv {
            names,
            ssls: &config.ssls,
            roots: &roots,
            consumers: &consumers,
        };
        let mut upstreams: Vec<UpstreamSpec> = Vec::new();
        let mut upstream_ids: HashMap<String, usize> = HashMap::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let name = object_name("upstreams", i, u.id.as_deref());
            let id =
                u.id.as_deref()
                    .ok_or_else(|| ConfigError::invalid(&name, "missing id"))?;
            check_id(&name, id)?;
            if upstream_ids
                .insert(id.to_string(), upstreams.len())
                .is_some()
            {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate upstream id",
                ));
            }
            upstreams.push(compile_upstream(&name, id, u, &env)?);
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
                &env,
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
            check_id(&name, id)?;
            let upstream = if let Some(uid) = s.upstream_id.as_deref() {
                Some(lookup_upstream(&upstream_ids, &name, uid)?)
            } else if let Some(u) = &s.upstream {
                let key = format!("service:{id}");
                upstreams.push(compile_upstream(
                    &format!("{name}.upstream"),
                    &key,
                    u,
                    &env,
                )?);
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
                    &env,
                    &mut upstreams,
                    &mut registry,
                )?,
                None => Vec::new(),
            };
            let info = ServiceInfo {
                upstream,
                hosts: s.hosts.clone(),
                plugins,
                name: s.name.as_deref().map(Into::into),
                enable_websocket: s.enable_websocket,
            };
            if services.insert(id.to_string(), info).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate service id",
                ));
            }
        }

        let mut plugin_configs = PluginConfigs::new();
        for (i, pc) in config.plugin_configs.iter().enumerate() {
            let name = object_name("plugin_configs", i, pc.id.as_deref());
            let id = pc
                .id
                .as_deref()
                .ok_or_else(|| ConfigError::invalid(&name, "missing id"))?;
            check_id(&name, id)?;
            let plugins = build_plugins(
                &name,
                &format!("plugin_configs/{id}"),
                &pc.plugins,
                &upstream_ids,
                &env,
                &mut upstreams,
                &mut registry,
            )?;
            if plugin_configs.insert(id.to_string(), plugins).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate plugin config id",
                ));
            }
        }

        let consumer_chains = consumers::check_consumers(
            &config.consumers,
            &config.consumer_groups,
            &config.credentials,
            &upstream_ids,
            &env,
            &mut upstreams,
            &mut registry,
        )?;

        let tls = crate::tls::ServerTls::build(&config.ssls, tls.fallback_sni.as_deref(), tls.h2)?
            .map(std::sync::Arc::new);
        Ok(Base {
            tls,
            roots,
            consumers,
            consumer_chains: std::sync::Arc::new(consumer_chains),
            upstreams,
            upstream_ids,
            registry,
            global,
            services,
            plugin_configs,
        })
    }
}
