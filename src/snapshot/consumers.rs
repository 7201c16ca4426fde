//! Consumers and their credentials: checked and their plugins built, so an invalid one never
//! reaches the data plane. Their authentication plugins' configs (the credentials) are
//! checked and indexed by `consumer::Consumers`; the other plugins are built here.

use super::plugins::build_plugins;
use super::upstreams::CompileEnv;
use super::{object_name, Result};
use crate::config::{ConfigError, ConsumerConfig, CredentialConfig};
use crate::consumer::AUTH_PLUGINS;
use crate::plugin::{Chain, Registry};

/// Consumers' own plugins (besides their credentials), by username: merged into a request's
/// chain once the request is authenticated as that consumer.
pub type ConsumerChains = HashMap<String, Chain>;
use crate::upstream::UpstreamSpec;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Checks every consumer and credential; builds consumers' plugins into `registry`.
/// Returns the plugin chain of each consumer that has plugins besides its credentials.
pub(super) fn check_consumers(
    consumers: &[Arc<ConsumerConfig>],
    credentials: &[Arc<CredentialConfig>],
    upstream_ids: &HashMap<String, usize>,
    env: &CompileEnv<'_>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<ConsumerChains> {
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
        if let Some(plugins) = &c.plugins {
            // Credentials (key-auth's `key`, ...) are the consumer index's; the rest are
            // plugins the consumer's requests run.
            let plugins: crate::config::Plugins = plugins
                .iter()
                .filter(|(p, _)| !AUTH_PLUGINS.contains(&p.as_str()))
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect();
            let built = build_plugins(
                &name,
                &format!("consumers/{}", c.username),
                &plugins,
                upstream_ids,
                env,
                upstreams,
                registry,
            )?;
            if !built.is_empty() {
                let mut chain = Chain {
                    plugins: built.into_iter().map(|(_, i)| i).collect(),
                    ..Chain::default()
                };
                chain.sort();
                chains.insert(c.username.clone(), chain);
            }
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
