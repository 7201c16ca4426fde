//! Compiling a [`Config`] into an immutable [`Snapshot`]: every reference resolved, every rule
//! checked, the router built. The control plane does this once per (re)load and hands the
//! same `Arc<Snapshot>` to every core; nothing in it is mutated afterwards.
//!
//! All semantic validation lives here, so `shardgate check` and a live reload refuse exactly
//! the same configs, with errors that name the offending field. One file per kind: the
//! `[gateway]` section (`gateway.rs`), upstreams with their nodes (`upstreams.rs`), routes and
//! what they take from services (`routes.rs`), plugins (`plugins.rs`), consumers
//! (`consumers.rs`). What routes refer to is compiled first (`base.rs`); this file puts the
//! routes on top, taking from the last compilation what did not change (`cache.rs`).

mod base;
mod cache;
mod consumers;
mod gateway;
mod plugins;
mod routes;
mod upstreams;

use base::Base;
pub use cache::CompileCache;
use gateway::compile_gateway;
pub use gateway::ProcessSettings;
use routes::{compile_route, Referenced};

use crate::config::{ConfigError, GatewayConfig, ObjectName};
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
    /// How long a client's TLS handshake may take.
    pub ssl_handshake_timeout: Duration,
    /// Use every node when all of an upstream's are unhealthy (`healthcheck_fail_open`).
    pub fail_open: bool,
    /// Relay long bodies with splice(2) (`splice`).
    pub splice: bool,
    /// TCP_NOTSENT_LOWAT for client sockets that get spliced bodies; 0 = not set.
    pub splice_lowat: u32,
    /// Take connections waiting in sibling workers' queues (`steal_accepts`).
    pub steal_accepts: bool,
    /// Client connections per worker at most (`max_connections`; 0: no limit).
    pub max_connections: u32,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub graceful_shutdown_timeout: Duration,
    /// HTTP/2 from clients: where, and its limits.
    pub http2: crate::config::Http2Config,
}

/// One immutable, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every successful (re)load.
    pub version: u64,
    /// Every plugin instance (each core makes its per-core states from it).
    pub plugins: Registry,
    /// Some plugin's log phase wants requests' latency: requests read the clock.
    pub timed: bool,
    /// Global rules' plugins, in execution order.
    pub global: Chain,
    /// Consumers' own plugins, by username (merged into an authenticated request's chain).
    pub consumer_chains: Arc<consumers::ConsumerChains>,
    pub settings: Settings,
    pub router: Router,
    pub upstreams: Vec<Arc<UpstreamSpec>>,
    /// How new TLS handshakes are answered: the certificates by SNI (`ssls`), one
    /// configuration per profile; none without certificates.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The settings read at start only (a running gateway keeps its first snapshot's).
    pub process: ProcessSettings,
}

pub(super) type Result<T> = std::result::Result<T, ConfigError>;

/// The `[gateway]` settings the TLS objects are compiled with (part of the base's cache key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TlsSettings {
    /// `gateway.fallback_sni`.
    pub(super) fallback_sni: Option<String>,
    /// `gateway.ssl_trusted_certificate`.
    pub(super) trusted: Option<String>,
    /// `gateway.http2.enable`: `h2` is offered by ALPN.
    pub(super) h2: bool,
}

/// An object's name in messages, as a string (`upstreams[0] (id "demo")`).
pub(super) fn object_name(kind: &'static str, index: usize, id: Option<&str>) -> String {
    ObjectName { kind, index, id }.to_string()
}

impl Snapshot {
    /// Validates and compiles the `[gateway]` settings and the resources. `version` is
    /// stamped on the result; health-checked nodes get their targets from `health` (which
    /// keeps targets across reloads); node host names are looked up in `names`, and when
    /// some are missing the result is [`ConfigError::Unresolved`] (see `dns.rs`). Does no
    /// I/O.
    ///
    /// `cache` holds what the previous compilation made: when every object but routes is
    /// the same (the same shared objects), their compiled form is taken again, and so is
    /// each route whose object is the same and that owns no upstream or plugin of its own.
    /// A route change in a large table compiles that one route.
    pub fn compile(
        gateway: &GatewayConfig,
        config: &Resources,
        names: &Names,
        version: u64,
        health: &mut HealthRegistry,
        cache: &mut CompileCache,
    ) -> Result<Snapshot> {
        let (settings, process) = compile_gateway(gateway)?;
        names.take_missing();

        let tls = TlsSettings {
            fallback_sni: gateway.fallback_sni.clone(),
            trusted: gateway.ssl_trusted_certificate.clone(),
            h2: gateway.http2.enable,
        };
        let key = cache::BaseKey::of(config, &tls);
        let (base, reuse_routes) = match cache.begin(&key) {
            Some(base) => (base, true),
            None => (Arc::new(Base::compile(config, names, &tls)?), false),
        };
        let mut upstreams = base.upstreams.clone();
        let mut registry = base.registry.clone();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut uris: Vec<Arc<[String]>> = Vec::with_capacity(config.routes.len());
        let mut route_ids: HashSet<Arc<str>, crate::fold_hash::FoldHash> =
            HashSet::with_capacity_and_hasher(config.routes.len(), Default::default());
        let mut compiled = 0;
        for (i, r) in config.routes.iter().enumerate() {
            let name = ObjectName {
                kind: "routes",
                index: i,
                id: r.id.as_deref(),
            };
            let reused = if reuse_routes { cache.route(r) } else { None };
            let reused_hit = reused.is_some();
            let (route, paths, standalone) = match reused {
                Some((route, paths)) => (route, paths, true),
                None => {
                    compiled += 1;
                    let id = r.id.clone().unwrap_or_else(|| format!("arr_{}", i + 1));
                    if !crate::config::valid_id(&id) {
                        check_id(&name.to_string(), &id)?;
                    }
                    let owned = (upstreams.len(), registry.instances.len());
                    let (route, paths) = compile_route(
                        &name,
                        &id,
                        r,
                        &Referenced {
                            upstream_ids: &base.upstream_ids,
                            services: &base.services,
                            plugin_configs: &base.plugin_configs,
                            env: &upstreams::CompileEnv {
                                names,
                                ssls: &config.ssls,
                                roots: &base.roots,
                                consumers: &base.consumers,
                            },
                        },
                        &mut upstreams,
                        &mut registry,
                    )?;
                    // Only a route that added nothing to the shared tables can be taken
                    // again as it is.
                    let standalone = owned == (upstreams.len(), registry.instances.len());
                    (route, paths.into(), standalone)
                }
            };
            if standalone && !reused_hit {
                cache.keep(r, &route, &paths);
            }
            if !route_ids.insert(route.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("{name}.id"),
                    "duplicate route id",
                ));
            }
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

        let global = base.global.clone();
        let consumer_chains = base.consumer_chains.clone();
        let tls = base.tls.clone();
        cache.finish(key, base, compiled);
        let timed = registry
            .instances
            .iter()
            .any(|p| p.uses().has(crate::plugin::PhaseSet::TIMED));
        Ok(Snapshot {
            version,
            timed,
            plugins: registry,
            global,
            consumer_chains,
            tls,
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
pub(super) fn lookup_upstream(ids: &HashMap<String, usize>, name: &str, id: &str) -> Result<usize> {
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
        match Snapshot::compile(
            &file.gateway,
            &file.resources,
            &names,
            1,
            health,
            &mut CompileCache::default(),
        ) {
            Err(ConfigError::Unresolved(missing)) => {
                names.resolve(&missing)?;
                Snapshot::compile(
                    &file.gateway,
                    &file.resources,
                    &names,
                    1,
                    health,
                    &mut CompileCache::default(),
                )
            }
            r => r,
        }
    }

    #[test]
    fn a_route_change_compiles_that_route_only() {
        let text = |uri: &str, port: u16| {
            let mut t =
                format!("[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:{port}\" = 1 }}\n");
            for i in 0..50 {
                t += &format!("[[routes]]\nid = \"r{i}\"\nuri = \"/r{i}\"\nupstream_id = \"u\"\n");
            }
            t += &format!("[[routes]]\nid = \"x\"\nuri = \"{uri}\"\nupstream_id = \"u\"\n");
            // A route with plugins of its own is compiled every time.
            t += "[[routes]]\nid = \"p\"\nuri = \"/p\"\nupstream_id = \"u\"\nplugins = { request-id = {} }\n";
            crate::config::Config::parse(&t).unwrap().split()
        };
        let find = |s: &Snapshot, path: &str| {
            struct NoVars;
            impl crate::vars::VarSource for NoVars {
                fn var(&self, _: &crate::vars::Var) -> Option<&[u8]> {
                    None
                }
            }
            s.router
                .find(&crate::route::MatchInput {
                    path: path.as_bytes(),
                    host: b"h",
                    method: b"GET",
                    remote: std::net::Ipv4Addr::LOCALHOST.into(),
                    vars: &NoVars,
                })
                .map(|r| {
                    (
                        r.id.to_string(),
                        r.upstream.map(|u| s.upstreams[u].nodes[0].addr.port()),
                    )
                })
        };
        let health = &mut HealthRegistry::default();
        let names = Names::default();
        let mut cache = CompileCache::default();
        let first = text("/x", 1);
        let g = &first.gateway;
        Snapshot::compile(g, &first.resources, &names, 1, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 52);
        // The same objects again: only the route with plugins is compiled.
        Snapshot::compile(g, &first.resources, &names, 2, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 1);
        // One route replaced (a new object), the others shared.
        let other = text("/y", 1);
        let mut changed = (*first.resources).clone();
        changed.routes[50] = other.resources.routes[50].clone();
        let s = Snapshot::compile(g, &changed, &names, 3, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 2);
        assert_eq!(find(&s, "/y"), Some(("x".into(), Some(1))));
        assert_eq!(find(&s, "/x"), None);
        assert_eq!(find(&s, "/r7"), Some(("r7".into(), Some(1))));
        // A route removed: gone, nothing else compiled.
        changed.routes.remove(3);
        let s = Snapshot::compile(g, &changed, &names, 4, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 1);
        assert_eq!(find(&s, "/r3"), None);
        assert_eq!(find(&s, "/r4"), Some(("r4".into(), Some(1))));
        // The upstream replaced: everything is compiled against the new one.
        let moved = text("/y", 2);
        changed.upstreams[0] = moved.resources.upstreams[0].clone();
        let s = Snapshot::compile(g, &changed, &names, 5, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 51);
        assert_eq!(find(&s, "/r7"), Some(("r7".into(), Some(2))));
        // A refused compilation leaves the cache as it was.
        let mut bad = changed.clone();
        bad.routes[0] = text("y", 2).resources.routes[50].clone();
        assert!(Snapshot::compile(g, &bad, &names, 6, health, &mut cache).is_err());
        Snapshot::compile(g, &changed, &names, 6, health, &mut cache).unwrap();
        assert_eq!(cache.routes_compiled(), 1);
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
