//! The config loader: the TOML file (`config::Config` parsed, then `snapshot` compiled, as
//! `shardgate check` and a reload do) and single JSON resources (the APISIX objects the
//! Admin API, the store and etcd hand the compiler). Anything may be refused, with a message;
//! nothing may panic; and whatever compiles is used the way a worker uses a new snapshot.
//!
//! Two agreements: a file whose resources compile and pass the schemas compiles the same way
//! once held by the store (a first start with `config_provider = "store"` imports them), and
//! the compiler's cache (which reuses the previous compilation's objects) changes nothing
//! about the outcome.
//!
//! Nothing here reads a file or resolves a name: `ssl_trusted_certificate` (a path) is
//! dropped, and a node host name that would need DNS is an `Unresolved` refusal.

use crate::config::{ConfigError, GatewayConfig};
use crate::dns::Names;
use crate::health::Registry;
use crate::resources::Resources;
use crate::route::MatchInput;
use crate::snapshot::{CompileCache, Snapshot};
use crate::store::{Kind, Objects};
use crate::upstream::balancer::{self, PickContext};
use crate::vars::{Var, VarSource};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Target `config_toml`: the input is a config file.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut file = match crate::resources::parse_file(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    file.gateway.ssl_trusted_certificate = None;
    let compiled = compile(&file.gateway, &file.resources, &mut CompileCache::default());
    if let Ok(s) = &compiled {
        use_like_a_worker(s);
    }
    let schemas = file.check_schemas();
    if let Err(e) = &schemas {
        assert!(!e.to_string().is_empty());
    }
    let stored = Objects::from_values(&file.values, 0).and_then(|o| o.resources());
    if compiled.is_ok() && schemas.is_ok() {
        let from_store = stored
            .and_then(|r| compile(&file.gateway, &r, &mut CompileCache::default()).map(|_| ()));
        assert!(
            from_store.is_ok(),
            "the file compiles, its resources from the store do not: {from_store:?}"
        );
    }
}

/// Target `resource_json`: the first byte picks the kind (and whether the object replaces
/// one of a small valid store's, or is new), the rest is the object's JSON.
pub fn resource_json(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    let kind = Kind::ALL[pick as usize % Kind::ALL.len()];
    if let Err(e) = crate::admin::schemas::check_object(kind, &value) {
        assert!(!e.is_empty());
    }
    let id = if pick & 0x80 == 0 { "1" } else { "fz" };
    let base = base_store();
    let mut next = base.clone();
    next.put(kind, id, value, 0);
    let gateway = GatewayConfig::default();
    let resources = match next.resources() {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let fresh = compile(&gateway, &resources, &mut CompileCache::default());
    // The same change compiled after the store it changes, as the control plane does.
    let mut cache = CompileCache::default();
    let before = base.resources().expect("the base store is valid");
    compile(&gateway, &before, &mut cache).expect("the base store compiles");
    let cached = compile(&gateway, &resources, &mut cache);
    match (&fresh, &cached) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.router.len(), b.router.len());
            assert_eq!(a.upstreams.len(), b.upstreams.len());
            use_like_a_worker(a);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!(
            "the compile cache changes the outcome: {:?} fresh, {:?} cached",
            fresh.as_ref().err(),
            cached.as_ref().err()
        ),
    }
}

/// A small store that compiles: an upstream, a service, a route, a consumer with a key, a
/// plugin config and a global rule, each with id "1" (the consumer "jack").
pub(crate) fn base_store() -> Objects {
    let mut o = Objects::default();
    let objects = [
        (
            Kind::Upstreams,
            "1",
            json!({"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}),
        ),
        (Kind::Services, "1", json!({"upstream_id": "1"})),
        (
            Kind::Routes,
            "1",
            json!({"uri": "/hello", "service_id": "1", "vars": [["arg_a", "==", "1"]]}),
        ),
        (
            Kind::PluginConfigs,
            "1",
            json!({"plugins": {"request-id": {}}}),
        ),
        (
            Kind::GlobalRules,
            "1",
            json!({"plugins": {"prometheus": {}}}),
        ),
        (
            Kind::Consumers,
            "jack",
            json!({"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}),
        ),
    ];
    for (kind, id, v) in objects {
        o.put(kind, id, v, 0);
    }
    o
}

/// Compiles as the control plane does, without DNS (a name to resolve is a refusal here).
pub(crate) fn compile(
    gateway: &GatewayConfig,
    resources: &Resources,
    cache: &mut CompileCache,
) -> Result<Snapshot, ConfigError> {
    let result = Snapshot::compile(
        gateway,
        resources,
        &Names::default(),
        1,
        &mut Registry::default(),
        cache,
    );
    if let Err(e) = &result {
        assert!(!e.to_string().is_empty(), "an error without a message");
    }
    result
}

struct NoVars;

impl VarSource for NoVars {
    fn var(&self, _: &Var) -> Option<&[u8]> {
        None
    }
}

/// What a worker does with a new snapshot: its per-core plugin states and balancers made, a
/// pick from each upstream, a few requests routed, deadlines computed from every duration.
pub fn use_like_a_worker(s: &Snapshot) {
    let now = Instant::now();
    let _states = s.plugins.core_states(None);
    let mut durations = vec![
        s.settings.client_header_timeout,
        s.settings.client_body_timeout,
        s.settings.keepalive_timeout,
        s.settings.send_timeout,
        s.settings.graceful_shutdown_timeout,
    ];
    for u in &s.upstreams {
        let mut b = balancer::build(u.kind, &u.nodes);
        let ctx = PickContext::new(&[]).with_key(b"/key");
        if let Some(i) = b.pick(&u.nodes, &ctx) {
            assert!(i < u.nodes.len());
            b.started(i);
            b.failed(i);
        }
        durations.extend([
            u.timeouts.connect,
            u.timeouts.send,
            u.timeouts.read,
            u.keepalive.idle_timeout,
            u.retry_timeout.unwrap_or_default(),
        ]);
        if let Some(c) = &u.checks {
            durations.extend([
                c.active.timeout,
                c.active.healthy_interval,
                c.active.unhealthy_interval,
            ]);
        }
    }
    for d in durations {
        assert!(
            d <= Duration::from_secs(366 * 24 * 3600) && now.checked_add(d).is_some(),
            "a duration of {d:?} got through"
        );
    }
    for path in ["/", "/hello", "/api/hello", "/a/b/c"] {
        for host in [&b""[..], b"example.com"] {
            let input = MatchInput {
                path: path.as_bytes(),
                host,
                method: b"GET",
                remote: std::net::Ipv4Addr::LOCALHOST.into(),
                vars: &NoVars,
            };
            let _ = s.router.find(&input);
        }
    }
}
