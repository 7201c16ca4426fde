//! Compiling a [`Config`] into an immutable [`Snapshot`]: every reference resolved, every rule
//! checked, the router built. The control plane does this once per (re)load and hands the
//! same `Arc<Snapshot>` to every core; nothing in it is mutated afterwards.
//!
//! All semantic validation lives here, so `shardgate check` and a live reload refuse exactly
//! the same configs, with errors that name the offending field. One file per kind: the
//! `[gateway]` section (`gateway.rs`), upstreams with their nodes (`upstreams.rs`), routes and
//! what they take from services (`routes.rs`), plugins (`plugins.rs`); this file puts them
//! together in dependency order.

mod consumers;
mod gateway;
mod plugins;
mod routes;
mod upstreams;

use gateway::compile_gateway;
pub use gateway::ProcessSettings;
use plugins::build_plugins;
use routes::{compile_route, PluginConfigs, Referenced, ServiceInfo, Services};
use upstreams::compile_upstream;

use crate::config::{ConfigError, GatewayConfig};
use crate::dns::Names;
use crate::health::Registry as HealthRegistry;
use crate::http::request::Limits;
use crate::plugin::{Chain, Registry};
use crate::resources::Resources;
use crate::route::Router;
use crate::upstream::{PassHost, UpstreamSpec};
use std::collections::{HashMap, HashSet};
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
    /// The settings read at start only (a running gateway keeps its first snapshot's).
    pub process: ProcessSettings,
}

pub(super) type Result<T> = std::result::Result<T, ConfigError>;

/// `upstreams[0] (id "demo")`: how errors point at an object.
/// An object's name in messages (`routes[3] (id "r3")`), written only when a message needs
/// it: a large table compiles without formatting a name per object.
pub(super) struct ObjectName<'a> {
    pub(super) kind: &'static str,
    pub(super) index: usize,
    pub(super) id: Option<&'a str>,
}

impl std::fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "{}[{}] (id \"{id}\")", self.kind, self.index),
            None => write!(f, "{}[{}]", self.kind, self.index),
        }
    }
}

pub(super) fn object_name(kind: &str, index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{kind}[{index}] (id \"{id}\")"),
        None => format!("{kind}[{index}]"),
    }
}

impl Snapshot {
    /// Validates and compiles the `[gateway]` settings and the resources. `version` is
    /// stamped on the result; health-checked nodes get their targets from `health` (which
    /// keeps targets across reloads); node host names are looked up in `names`, and when
    /// some are missing the result is [`ConfigError::Unresolved`] (see `dns.rs`). Does no
    /// I/O.
    pub fn compile(
        gateway: &GatewayConfig,
        config: &Resources,
        names: &Names,
        version: u64,
        health: &mut HealthRegistry,
    ) -> Result<Snapshot> {
        let (settings, process) = compile_gateway(gateway)?;
        names.take_missing();

        let mut upstreams: Vec<UpstreamSpec> = Vec::new();
        let mut upstream_ids: HashMap<&str, usize> = HashMap::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let name = object_name("upstreams", i, u.id.as_deref());
            let id =
                u.id.as_deref()
                    .ok_or_else(|| ConfigError::invalid(&name, "missing id"))?;
            check_id(&name, id)?;
            if upstream_ids.insert(id, upstreams.len()).is_some() {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate upstream id",
                ));
            }
            upstreams.push(compile_upstream(&name, id, u, names)?);
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
                names,
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
                    names,
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
                    names,
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
                names,
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

        consumers::check_consumers(
            &config.consumers,
            &config.credentials,
            &upstream_ids,
            names,
            &mut upstreams,
            &mut registry,
        )?;

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut uris = Vec::with_capacity(config.routes.len());
        let mut route_ids: HashSet<String> = HashSet::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let name = ObjectName {
                kind: "routes",
                index: i,
                id: r.id.as_deref(),
            };
            let id = r.id.clone().unwrap_or_else(|| format!("arr_{}", i + 1));
            if !crate::config::valid_id(&id) {
                check_id(&name.to_string(), &id)?;
            }
            if !route_ids.insert(id.clone()) {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate route id",
                ));
            }
            let (route, paths) = compile_route(
                &name,
                &id,
                r,
                &Referenced {
                    upstream_ids: &upstream_ids,
                    services: &services,
                    plugin_configs: &plugin_configs,
                    names,
                },
                &mut upstreams,
                &mut registry,
            )?;
            if r.status == 1 {
                routes.push(route);
                uris.push(paths);
            }
        }

        let missing = names.take_missing();
        if !missing.is_empty() {
            return Err(ConfigError::Unresolved(missing));
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
            process,
        })
    }
}

/// Checks the `id` of the object called `name` (the field path is made only on error).
pub(super) fn check_id(name: &str, id: &str) -> Result<()> {
    if crate::config::valid_id(id) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            format!("{name}.id"),
            format!("'{id}' must be 1-64 characters of [a-zA-Z0-9-_.]"),
        ))
    }
}

/// The index of upstream `id`, named in `{name}.upstream_id` (the path is made only on error).
pub(super) fn lookup_upstream(ids: &HashMap<&str, usize>, name: &str, id: &str) -> Result<usize> {
    ids.get(id).copied().ok_or_else(|| {
        ConfigError::invalid(
            format!("{name}.upstream_id"),
            format!("upstream \"{id}\" does not exist"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Snapshot> {
        let file = crate::config::Config::parse(text)?.split();
        let mut names = Names::default();
        let health = &mut HealthRegistry::default();
        match Snapshot::compile(&file.gateway, &file.resources, &names, 1, health) {
            Err(ConfigError::Unresolved(missing)) => {
                names.resolve(&missing)?;
                Snapshot::compile(&file.gateway, &file.resources, &names, 1, health)
            }
            r => r,
        }
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
