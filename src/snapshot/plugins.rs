//! Plugins on routes, services and global rules, built once per snapshot.

use super::upstreams::{compile_upstream, CompileEnv};
use super::Result;
use crate::config::Plugins;
use crate::config::{ConfigError, UpstreamConfig};
use crate::plugin::{self, BuildCtx, Instance, Registry};
use crate::upstream::UpstreamSpec;
use std::collections::HashMap;

/// Builds the plugins configured on one object (`{name}.plugins`).
/// `owner` identifies the object across reloads (`routes/ID`, `services/ID`,
/// `global_rules/ID`): an unchanged plugin on the same owner keeps its per-core state.
pub(super) fn build_plugins(
    name: &str,
    owner: &str,
    plugins: &Plugins,
    upstream_ids: &HashMap<String, usize>,
    env: &CompileEnv<'_>,
    upstreams: &mut Vec<UpstreamSpec>,
    registry: &mut Registry,
) -> Result<Vec<(String, Instance)>> {
    let mut out = Vec::new();
    for (plugin, conf) in plugins {
        let field = format!("{name}.plugins.{plugin}");
        let mut add_upstream =
            |f: &str, u: &UpstreamConfig| -> std::result::Result<usize, String> {
                let spec = compile_upstream(f, f, u, env).map_err(|e| e.to_string())?;
                upstreams.push(spec);
                Ok(upstreams.len() - 1)
            };
        let mut ctx = BuildCtx {
            consumers: env.consumers,
            upstream_ids,
            add_upstream: &mut add_upstream,
            owner: owner.to_string(),
            field: field.clone(),
        };
        let built = plugin::build(plugin, conf, &mut ctx).map_err(|e| {
            ConfigError::invalid(
                &field,
                format!("failed to check the configuration of plugin {plugin} err: {e}"),
            )
        })?;
        let key = format!("{owner}/{plugin}:{conf}");
        out.push((
            plugin.clone(),
            registry.add(std::sync::Arc::new(built), key),
        ));
    }
    Ok(out)
}
