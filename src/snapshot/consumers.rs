//! Consumers, their groups and their credentials: checked and their plugins built, so an
//! invalid one never reaches the data plane. Their authentication plugins' configs (the
//! credentials) are checked and indexed by `consumer::Consumers`; the other plugins are
//! built here. A group's plugins are built once (one instance, so a `limit-count` in a
//! group is one counter for its consumers) and joined to each member's own, the member's
//! winning where both configure a plugin (APISIX's merge order: group, then consumer).

use super::plugins::build_plugins;
use super::upstreams::CompileEnv;
use super::{object_name, Result};
use crate::config::{ConfigError, ConsumerConfig, ConsumerGroupConfig, CredentialConfig};
use crate::consumer::AUTH_PLUGINS;
use crate::plugin::{Chain, Instance, Registry};
use crate::upstream::UpstreamSpec;

/// Consumers' plugins (their own besides their credentials, and their group's), by
/// username: merged into a request's chain once the request is authenticated as that
/// consumer.
pub type ConsumerChains = HashMap<std::sync::Arc<str>, Chain>;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Checks every consumer and credential; builds consumers' plugins into `registry`.
/// Returns the plugin chain of each consumer that has plugins besides its credentials.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_consumers(
    consumers: &[Arc<ConsumerConfig>],
    groups: &[Arc<ConsumerGroupConfig>],
    credentials: &[Arc<CredentialConfig>],
    upstream_ids: &HashMap<String, usize>,
    env: &CompileEnv<'_>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<ConsumerChains> {
    let groups = build_groups(groups, upstream_ids, env, upstreams, registry)?;
    let mut usernames = HashSet::new();
    let mut chains = ConsumerChains::new();
    for (i, c) in consumers.iter().enumerate() {
        let name = object_name("consumers", i, Some(&c.username));
        let valid = !c.username.is_empty()
            && c.username.len() <= 100
            && c.username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ConfigError::invalid(
                format!("{name}.username"),
                format!(
                    "failed to match pattern \"^[a-zA-Z0-9_\\\\-]+$\" with \"{}\"",
                    c.username
                ),
            ));
        }
        if !usernames.insert(c.username.as_str()) {
            return Err(ConfigError::invalid(
                format!("{name}.username"),
                "duplicate consumer username",
            ));
        }
        let group = match &c.group_id {
            Some(id) => groups.get(id.as_str()).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{name}.group_id"),
                    format!(
                        "failed to fetch consumer group info by consumer group id [{id}], not found"
                    ),
                )
            })?,
            None => &Vec::new(),
        };
        let mut own = Vec::new();
        if let Some(plugins) = &c.plugins {
            // Credentials (key-auth's `key`, ...) are the consumer index's; the rest are
            // plugins the consumer's requests run.
            let plugins: crate::config::Plugins = plugins
                .iter()
                .filter(|(p, _)| !AUTH_PLUGINS.contains(&p.as_str()))
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect();
            own = build_plugins(
                &name,
                &format!("consumers/{}", c.username),
                &plugins,
                upstream_ids,
                env,
                upstreams,
                registry,
            )?;
        }
        let mut plugins: Vec<Instance> = group
            .iter()
            .filter(|(p, _)| !own.iter().any(|(o, _)| o == p))
            .map(|(_, i)| i.clone())
            .collect();
        plugins.extend(own.into_iter().map(|(_, i)| i));
        let mut chain = Chain {
            plugins,
            ..Chain::default()
        };
        if !chain.is_empty() {
            chain.sort();
            chains.insert(c.username.as_str().into(), chain);
        }
    }
    for (i, cred) in credentials.iter().enumerate() {
        let name = object_name("credentials", i, Some(&cred.id));
        let consumer = match (&cred.consumer, cred.id.split_once("/credentials/")) {
            (Some(c), _) => c.as_str(),
            (None, Some((c, _))) => c,
            (None, None) => {
                return Err(ConfigError::invalid(
                    format!("{name}.consumer"),
                    "missing: a credential belongs to a consumer",
                ))
            }
        };
        if !usernames.contains(consumer) {
            return Err(ConfigError::invalid(
                format!("{name}.consumer"),
                format!("consumer \"{consumer}\" does not exist"),
            ));
        }
        if let Some(plugins) = &cred.plugins {
            if plugins.len() > 1 {
                return Err(ConfigError::invalid(
                    format!("{name}.plugins"),
                    "expect object to have at most 1 properties",
                ));
            }
            if let Some(plugin) = plugins.keys().find(|p| !AUTH_PLUGINS.contains(&p.as_str())) {
                return Err(ConfigError::invalid(
                    format!("{name}.plugins.{plugin}"),
                    "only supports auth type plugins in consumer credential",
                ));
            }
        }
    }
    Ok(chains)
}

/// Each consumer group's plugins, built once, by group id.
fn build_groups(
    groups: &[Arc<ConsumerGroupConfig>],
    upstream_ids: &HashMap<String, usize>,
    env: &CompileEnv<'_>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<HashMap<String, Vec<(String, Instance)>>> {
    let mut built = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        let name = object_name("consumer_groups", i, Some(&g.id));
        super::check_id(&name, &g.id)?;
        if let Some(p) = g
            .plugins
            .keys()
            .find(|p| AUTH_PLUGINS.contains(&p.as_str()))
        {
            return Err(ConfigError::invalid(
                format!("{name}.plugins.{p}"),
                "an authentication plugin's credentials belong to a consumer, not a group",
            ));
        }
        let plugins = build_plugins(
            &name,
            &format!("consumer_groups/{}", g.id),
            &g.plugins,
            upstream_ids,
            env,
            upstreams,
            registry,
        )?;
        if built.insert(g.id.clone(), plugins).is_some() {
            return Err(ConfigError::invalid(
                format!("{name}.id"),
                "duplicate consumer group id",
            ));
        }
    }
    Ok(built)
}
