//! Plugins: one trait, the phases of a request, and how route, service and global plugins
//! combine.
//!
//! Phases, in the order a request meets them (APISIX's names):
//! 1. `rewrite`: change the request before anything is decided on it (auth plugins live here);
//! 2. `access`: decide: let through, answer directly, or pick another upstream
//!    (traffic-split, rate limiting);
//! 3. `before_proxy`: last look before the request leaves for the chosen node;
//! 4. `header_filter`: the upstream's response head arrived;
//! 5. `body_filter`: a piece of the response body passes (and may be changed);
//! 6. `log`: the request is over (metrics, logging).
//!
//! Which plugins run: global rules (`[[global_rules]]`) first in every phase, then the route's
//! plugins merged with its service's (a plugin configured on both takes the route's
//! configuration, as APISIX merges them), each list in descending plugin priority.
//!
//! Plugin instances are built once per config snapshot and shared by every core. A plugin
//! that needs mutable state (a round-robin position, counters) asks for a per-core state
//! object, which each core creates for itself when the snapshot arrives: no locks, no
//! cross-core traffic. An instance whose owner (route, service or global rule id), name
//! and configuration are unchanged keeps its state through a reload: the core hands the
//! same state object to the new snapshot.

mod api;
mod auth;
pub mod basic_auth;
pub mod brotli;
mod compress;
mod conf;
pub mod consumer_restriction;
pub mod cors;
pub mod fault_injection;
pub mod gzip;
pub mod ip_restriction;
pub mod jwt_auth;
pub mod key_auth;
pub mod limit_conn;
pub mod limit_count;
pub mod limit_req;
mod limiting;
pub mod loggers;
pub mod mocking;
pub mod opentelemetry;
pub mod prometheus;
pub mod proxy_cache;
pub mod proxy_rewrite;
pub mod real_ip;
pub mod redirect;
pub mod request_id;
pub mod request_validation;
pub mod response_rewrite;
pub mod traffic_split;
pub mod zstd;

pub use api::*;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Declares every plugin once: the [`Plugin`] enum (static dispatch: no boxing per call, an
/// async phase of one plugin costs nothing to the others), the dispatch of each phase, and
/// building by name.
macro_rules! plugins {
    ($($variant:ident($ty:ty) = $name:literal,)*) => {
        /// Every plugin the gateway has, by its APISIX name.
        pub enum Plugin {
            $($variant($ty),)*
        }

        /// The plugin names [`build`] knows.
        pub const NAMES: &[&str] = &[$($name),*];

        impl Plugin {
            pub fn name(&self) -> &'static str {
                match self { $(Plugin::$variant(p) => p.name(),)* }
            }

            pub fn priority(&self) -> i32 {
                match self { $(Plugin::$variant(p) => p.priority(),)* }
            }

            pub fn uses(&self) -> PhaseSet {
                match self { $(Plugin::$variant(p) => p.uses(),)* }
            }

            fn core_state(&self) -> CoreState {
                match self { $(Plugin::$variant(p) => p.core_state(),)* }
            }

            pub fn reads_body(&self) -> Option<usize> {
                match self { $(Plugin::$variant(p) => p.reads_body(),)* }
            }

            fn run_now(
                &self,
                phase: Phase,
                ctx: &mut RequestCtx<'_>,
                state: &RefCell<CoreState>,
            ) -> Flow {
                match (self, phase) {
                    $(
                        (Plugin::$variant(p), Phase::Rewrite) => p.rewrite(ctx, state),
                        (Plugin::$variant(p), Phase::Access) => p.access(ctx, state),
                        (Plugin::$variant(p), Phase::BeforeProxy) => p.before_proxy(ctx, state),
                    )*
                }
            }

            async fn run_waiting(
                &self,
                phase: Phase,
                ctx: &mut RequestCtx<'_>,
                state: &RefCell<CoreState>,
            ) -> Flow {
                match self {
                    $(Plugin::$variant(p) => p.request_phase(phase, ctx, state).await,)*
                }
            }

            fn header_filter(&self, ctx: &mut ResponseCtx<'_>, state: &RefCell<CoreState>) {
                match self { $(Plugin::$variant(p) => p.header_filter(ctx, state),)* }
            }

            fn body_filter(&self, ctx: &mut BodyCtx<'_>, state: &RefCell<CoreState>) {
                match self { $(Plugin::$variant(p) => p.body_filter(ctx, state),)* }
            }

            fn log(&self, ctx: &mut LogCtx<'_>, state: &RefCell<CoreState>) {
                match self { $(Plugin::$variant(p) => p.log(ctx, state),)* }
            }
        }

        /// The config schema a plugin declares (JSON Schema text, `schemas/NAME.json`: APISIX's
        /// schema for that plugin, with unknown fields refused), or `None` for an unknown name.
        pub fn schema_text(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("schemas/", $name, ".json"))),)*
                _ => None,
            }
        }

        /// Builds the plugin `name` from its config, after checking the config against the
        /// plugin's declared schema; the error names what is wrong, in APISIX's words.
        pub fn build(
            name: &str,
            conf: &serde_json::Value,
            ctx: &mut BuildCtx<'_>,
        ) -> Result<Plugin, String> {
            if let Some(schema) = schema(name) {
                schema.check(conf)?;
            }
            match name {
                $($name => Ok(Plugin::$variant(<$ty>::build(conf, ctx)?)),)*
                other => Err(format!(
                    "unknown plugin \"{other}\" (available: {})",
                    NAMES.join(", ")
                )),
            }
        }
    };
}

plugins! {
    BasicAuth(basic_auth::BasicAuth) = "basic-auth",
    Brotli(brotli::Brotli) = "brotli",
    ConsumerRestriction(consumer_restriction::ConsumerRestriction) = "consumer-restriction",
    Cors(cors::Cors) = "cors",
    FaultInjection(fault_injection::FaultInjection) = "fault-injection",
    FileLogger(loggers::FileLogger) = "file-logger",
    Gzip(gzip::Gzip) = "gzip",
    HttpLogger(loggers::HttpLogger) = "http-logger",
    IpRestriction(ip_restriction::IpRestriction) = "ip-restriction",
    JwtAuth(jwt_auth::JwtAuth) = "jwt-auth",
    KeyAuth(key_auth::KeyAuth) = "key-auth",
    LimitConn(limit_conn::LimitConn) = "limit-conn",
    LimitCount(limit_count::LimitCount) = "limit-count",
    LimitReq(limit_req::LimitReq) = "limit-req",
    Mocking(mocking::Mocking) = "mocking",
    OpenTelemetry(opentelemetry::OpenTelemetry) = "opentelemetry",
    TcpLogger(loggers::TcpLogger) = "tcp-logger",
    UdpLogger(loggers::UdpLogger) = "udp-logger",
    Prometheus(prometheus::Prometheus) = "prometheus",
    ProxyCache(proxy_cache::ProxyCache) = "proxy-cache",
    ProxyRewrite(proxy_rewrite::ProxyRewrite) = "proxy-rewrite",
    RealIp(real_ip::RealIp) = "real-ip",
    Redirect(redirect::Redirect) = "redirect",
    RequestId(request_id::RequestId) = "request-id",
    RequestValidation(request_validation::RequestValidation) = "request-validation",
    ResponseRewrite(response_rewrite::ResponseRewrite) = "response-rewrite",
    TrafficSplit(traffic_split::TrafficSplit) = "traffic-split",
    Zstd(zstd::Zstd) = "zstd",
}

/// The compiled schema of plugin `name` (compiled once per process, on first use).
pub fn schema(name: &str) -> Option<&'static crate::schema::Schema> {
    static SCHEMAS: std::sync::OnceLock<std::collections::HashMap<&str, crate::schema::Schema>> =
        std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            NAMES
                .iter()
                .filter_map(|&n| {
                    let text = schema_text(n)?;
                    let value = serde_json::from_str(text).ok()?;
                    // Every declared schema compiles (a unit test checks).
                    Some((n, crate::schema::Schema::compile(&value).ok()?))
                })
                .collect()
        })
        .get(name)
}

/// A plugin instance in a chain, with the slot of its per-core state.
#[derive(Clone)]
pub struct Instance {
    pub plugin: Arc<Plugin>,
    /// Index into the core's plugin states (see [`PluginStates`]).
    pub slot: usize,
    /// The phases it implements, kept here so skipping the others reads no plugin memory.
    pub uses: PhaseSet,
}

/// No plugins: the route chain of a request no route matched (global rules still run).
pub static EMPTY_CHAIN: Chain = Chain {
    plugins: Vec::new(),
    uses: PhaseSet::NONE,
    awaits: false,
    reads_body: None,
};

/// The plugins that run for one route (global rules excluded), in execution order.
#[derive(Clone, Default)]
pub struct Chain {
    pub plugins: Vec<Instance>,
    /// The phases some plugin of the chain implements (set by [`Chain::sort`]): a request
    /// skips the others whole (a chain of log-only plugins leaves the request and response
    /// paths as they are without plugins).
    pub uses: PhaseSet,
    /// Some plugin of the chain waits in its request phases (set by [`Chain::sort`]).
    pub awaits: bool,
    /// Some plugin reads request bodies, up to this size (the largest asked for).
    pub reads_body: Option<usize>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|i| i.plugin.name()))
            .finish()
    }
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Sorts by descending priority (stable: equal priorities keep config order).
    /// Also notes whether any plugin waits.
    pub fn sort(&mut self) {
        self.plugins
            .sort_by_key(|i| std::cmp::Reverse(i.plugin.priority()));
        self.awaits = self.plugins.iter().any(|i| i.uses.has(PhaseSet::AWAITS));
        self.uses = self
            .plugins
            .iter()
            .fold(PhaseSet::NONE, |all, i| all.with(i.uses));
        self.reads_body = self
            .plugins
            .iter()
            .filter_map(|i| i.plugin.reads_body())
            .max();
    }
}

impl Chain {
    /// The chain a request runs once its consumer is known (APISIX's merge of consumer and
    /// route): the consumer's plugins join the route's, and where both configure a plugin,
    /// the consumer's configuration wins.
    pub fn merged(route: &Chain, consumer: &Chain) -> Chain {
        let mut merged = Chain {
            plugins: route
                .plugins
                .iter()
                .filter(|r| {
                    let name = r.plugin.name();
                    !consumer.plugins.iter().any(|c| c.plugin.name() == name)
                })
                .chain(&consumer.plugins)
                .cloned()
                .collect(),
            ..Chain::default()
        };
        merged.sort();
        merged
    }
}

/// Every plugin instance of a snapshot, by slot, so each core can make their states.
#[derive(Default, Clone)]
pub struct Registry {
    pub instances: Vec<Arc<Plugin>>,
    /// Per slot: owner, name and configuration; equal keys across snapshots share state.
    keys: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.instances.iter().map(|p| p.name()))
            .finish()
    }
}

impl Registry {
    /// Adds an instance; `key` says what it is (owner, name, configuration): an instance
    /// with the same key in the next snapshot inherits its per-core state.
    pub fn add(&mut self, plugin: Arc<Plugin>, key: String) -> Instance {
        self.instances.push(plugin.clone());
        self.keys.push(key);
        Instance {
            uses: plugin.uses(),
            plugin,
            slot: self.instances.len() - 1,
        }
    }

    /// One core's states for every instance: carried over from `previous` (this core's
    /// states for the snapshot before, with its registry) where the key is unchanged, fresh
    /// otherwise.
    pub fn core_states(&self, previous: Option<(&Registry, &PluginStates)>) -> PluginStates {
        let mut carried: std::collections::HashMap<&str, &Rc<RefCell<CoreState>>> =
            std::collections::HashMap::new();
        if let Some((registry, states)) = previous {
            for (key, state) in registry.keys.iter().zip(&states.states) {
                carried.insert(key, state);
            }
        }
        PluginStates {
            states: self
                .instances
                .iter()
                .zip(&self.keys)
                .map(|(p, key)| match carried.get(key.as_str()) {
                    Some(state) => Rc::clone(state),
                    None => Rc::new(RefCell::new(p.core_state())),
                })
                .collect(),
        }
    }
}

/// One core's plugin states for one snapshot (shared with the next snapshot's where the
/// instance is unchanged, so in-flight requests of either see the same state).
pub struct PluginStates {
    states: Vec<Rc<RefCell<CoreState>>>,
}

impl PluginStates {
    /// Runs a request phase for the global chain then the route chain; stops at the first
    /// answer.
    pub async fn run(&self, chains: [&Chain; 2], phase: Phase, ctx: &mut RequestCtx<'_>) -> Flow {
        let wanted = phase.set();
        for i in in_order(chains, wanted) {
            ctx.slots.point_at(i.slot);
            let state = &self.states[i.slot];
            let flow = if i.uses.has(PhaseSet::AWAITS) {
                i.plugin.run_waiting(phase, ctx, state).await
            } else {
                i.plugin.run_now(phase, ctx, state)
            };
            if let Flow::Respond(_) = flow {
                return flow;
            }
        }
        Flow::Continue
    }

    /// [`PluginStates::run`] for chains where no plugin waits ([`Chain::awaits`]): no
    /// future at all.
    pub fn run_now(&self, chains: [&Chain; 2], phase: Phase, ctx: &mut RequestCtx<'_>) -> Flow {
        for i in in_order(chains, phase.set()) {
            ctx.slots.point_at(i.slot);
            let flow = i.plugin.run_now(phase, ctx, &self.states[i.slot]);
            if let Flow::Respond(_) = flow {
                return flow;
            }
        }
        Flow::Continue
    }

    /// Runs `header_filter` for both chains.
    pub fn header_filter(&self, chains: [&Chain; 2], ctx: &mut ResponseCtx<'_>) {
        for i in in_order(chains, PhaseSet::HEADER_FILTER) {
            ctx.slots.point_at(i.slot);
            i.plugin.header_filter(ctx, &self.states[i.slot]);
            if let Some(s) = ctx.response.status {
                ctx.status = s;
            }
        }
    }

    /// Runs `body_filter` for both chains, each plugin on what the one before handed on.
    pub fn body_filter(&self, chains: [&Chain; 2], ctx: &mut BodyCtx<'_>) {
        for i in in_order(chains, PhaseSet::BODY_FILTER) {
            ctx.slots.point_at(i.slot);
            i.plugin.body_filter(ctx, &self.states[i.slot]);
        }
    }

    /// Runs `log` for both chains.
    pub fn log(&self, chains: [&Chain; 2], ctx: &mut LogCtx<'_>) {
        for i in in_order(chains, PhaseSet::LOG) {
            ctx.slots.point_at(i.slot);
            i.plugin.log(ctx, &self.states[i.slot]);
        }
    }
}

/// The plugins of both chains that implement `phase`, global rules first.
fn in_order(chains: [&Chain; 2], phase: PhaseSet) -> impl Iterator<Item = &Instance> {
    let [global, route] = chains;
    global
        .plugins
        .iter()
        .chain(&route.plugins)
        .filter(move |i| i.uses.has(phase))
}

/// What building a plugin may need from the snapshot being compiled.
pub struct BuildCtx<'a> {
    /// The snapshot's consumers, by credential (authentication plugins).
    pub consumers: &'a std::sync::Arc<crate::consumer::Consumers>,
    /// Upstream ids to indices.
    pub upstream_ids: &'a std::collections::HashMap<String, usize>,
    /// Compiles an inline upstream (added to the snapshot's table) and returns its index.
    pub add_upstream:
        &'a mut dyn FnMut(&str, &crate::config::UpstreamConfig) -> Result<usize, String>,
    /// The object the plugin is configured on (`routes/ID`, `services/ID`,
    /// `global_rules/ID`): names state shared across snapshots and cores (rate limits).
    pub owner: String,
    /// Where the plugin's config sits, for error messages (`routes[0] (id "r").plugins`).
    pub field: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_plugin_declares_a_schema_that_compiles() {
        for name in super::NAMES {
            let text = super::schema_text(name).unwrap();
            let value: serde_json::Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::schema::Schema::compile(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(super::schema(name).is_some(), "{name}");
        }
    }
}
