//! What one compilation leaves for the next: the compiled [`Base`] (everything routes refer
//! to) with the objects it was made from, and each route that owns nothing in the shared
//! tables, by the object it was made from. Objects are shared (`Arc`) between the store and
//! the compiler, so "the same object" is the same allocation: a change replaces the objects
//! it touches and leaves the others as they were. A route change with 10,000 routes then
//! compiles one route and takes the other 9,999 as they were.
//!
//! Node host names resolved for the base are kept with it: they are looked up again when an
//! upstream, service, plugin config, global rule or consumer changes, or at a reload.

use super::base::Base;
use crate::config::RouteConfig;
use crate::fold_hash::FoldHash;
use crate::resources::Resources;
use crate::route::Route;
use std::collections::HashMap;
use std::sync::Arc;

/// The cache, held by whoever compiles again and again (the control plane).
#[derive(Default)]
pub struct CompileCache {
    base: Option<(BaseKey, Arc<Base>)>,
    /// Routes by the address of their object; each marked with the last compilation that
    /// used it, so the others are dropped when a compilation succeeds.
    routes: HashMap<*const RouteConfig, Kept, FoldHash>,
    generation: u64,
    /// How many routes the last compilation compiled (the rest it took again).
    compiled: usize,
}

struct Kept {
    /// Held, so the address stays this object's.
    config: Arc<RouteConfig>,
    route: Route,
    paths: Arc<[String]>,
    used: u64,
}

impl CompileCache {
    /// Starts a compilation: the base compiled from exactly these objects, if it is the
    /// last one (then routes may be taken again). Otherwise everything is compiled afresh,
    /// and nothing kept so far is valid.
    pub(super) fn begin(&mut self, key: &BaseKey) -> Option<Arc<Base>> {
        self.generation += 1;
        match &self.base {
            Some((k, base)) if k == key => Some(base.clone()),
            _ => {
                self.base = None;
                self.routes.clear();
                None
            }
        }
    }

    /// The compiled route made from this very object, when there is one.
    pub(super) fn route(&mut self, r: &Arc<RouteConfig>) -> Option<(Route, Arc<[String]>)> {
        let kept = self.routes.get_mut(&Arc::as_ptr(r))?;
        if !Arc::ptr_eq(&kept.config, r) {
            return None;
        }
        kept.used = self.generation;
        Some((kept.route.clone(), kept.paths.clone()))
    }

    /// Keeps a route that owns nothing in the shared tables, for the next compilation.
    pub(super) fn keep(&mut self, r: &Arc<RouteConfig>, route: &Route, paths: &Arc<[String]>) {
        self.routes.insert(
            Arc::as_ptr(r),
            Kept {
                config: r.clone(),
                route: route.clone(),
                paths: paths.clone(),
                used: self.generation,
            },
        );
    }

    /// A compilation succeeded: keep its base, and only the routes it used.
    pub(super) fn finish(&mut self, key: BaseKey, base: Arc<Base>, compiled: usize) {
        let generation = self.generation;
        self.routes.retain(|_, k| k.used == generation);
        self.base = Some((key, base));
        self.compiled = compiled;
    }

    /// How many routes the last successful compilation compiled rather than took again.
    pub fn routes_compiled(&self) -> usize {
        self.compiled
    }
}

/// The objects a base was made from, compared by identity.
pub(super) struct BaseKey {
    ptrs: Vec<*const ()>,
    /// The `[gateway]` TLS settings the base was compiled with.
    tls: super::TlsSettings,
    /// The objects themselves, held so no address is reused while the key lives.
    _held: Resources,
}

impl BaseKey {
    pub(super) fn of(config: &Resources, tls: &super::TlsSettings) -> BaseKey {
        fn ptrs<T>(list: &[Arc<T>]) -> impl Iterator<Item = *const ()> + '_ {
            list.iter().map(|a| Arc::as_ptr(a) as *const ())
        }
        let c = config;
        let mut all: Vec<*const ()> = Vec::new();
        // Lengths first, so objects moving from one kind's list to another's cannot match.
        all.extend(
            [
                c.upstreams.len(),
                c.services.len(),
                c.global_rules.len(),
                c.plugin_configs.len(),
                c.consumers.len(),
                c.consumer_groups.len(),
                c.credentials.len(),
                c.ssls.len(),
            ]
            .map(|n| n as *const ()),
        );
        all.extend(ptrs(&c.upstreams));
        all.extend(ptrs(&c.services));
        all.extend(ptrs(&c.global_rules));
        all.extend(ptrs(&c.plugin_configs));
        all.extend(ptrs(&c.consumers));
        all.extend(ptrs(&c.consumer_groups));
        all.extend(ptrs(&c.credentials));
        all.extend(ptrs(&c.ssls));
        BaseKey {
            ptrs: all,
            tls: tls.clone(),
            _held: Resources {
                routes: Vec::new(),
                ..c.clone()
            },
        }
    }
}

impl PartialEq for BaseKey {
    fn eq(&self, other: &BaseKey) -> bool {
        self.ptrs == other.ptrs && self.tls == other.tls
    }
}
