//! `proxy-cache` (APISIX priority 1085): answers repeated requests from a cache zone
//! (`[gateway.proxy_cache]`, `crate::cache`) instead of the upstream.
//!
//! - access: `PURGE` removes the key (200, or 404 when there was nothing). A request whose
//!   method is cacheable looks its key up: a fresh entry is the answer (`HIT`, with `Age`).
//!   Otherwise it goes upstream (`MISS`, `EXPIRED`, `BYPASS`) and becomes the key's fill:
//!   concurrent requests for the key wait for it (`cache_lock`, at most
//!   `cache_lock_timeout` seconds) and are then answered from the cache, or are answered
//!   at once with the expired entry while it is refreshed (`UPDATING`).
//! - header_filter: a cacheable response (status in `cache_http_status`, no `no_cache`
//!   var set, not `private` / `no-store` / `no-cache`, no `Set-Cookie` unless
//!   `cache_set_cookie`, not `Vary: *`, not larger than `max_resp_body_size`) starts its
//!   entry and asks to observe the body; the body still streams to the client as it comes.
//!   An upstream failure (a gateway 5xx, or 500/502/503/504 from the upstream) is answered
//!   with the expired entry while it is within `stale_if_error` seconds (`STALE`).
//! - body_filter: the body goes into the entry; the entry is published once the body is
//!   complete (never a partial one).
//!
//! Freshness: the memory strategy keeps an entry `cache_ttl` seconds; the disk strategy
//! follows the upstream's `Cache-Control` / `Expires`, else `[gateway.proxy_cache]
//! cache_ttl` (nginx's `proxy_cache_valid`). With `cache_control`, both follow the upstream,
//! and the request's `Cache-Control` (`no-cache`, `no-store`, `max-age`, `min-fresh`,
//! `max-stale`, `only-if-cached`) is honoured.
//!
//! Here: the configuration, keys and the plugin's per-request state; `lookup.rs`: the access
//! phase; `store.rs`: the response phases.

mod lookup;
mod store;

use super::{BodyCtx, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases};
use super::{RequestCtx, ResponseCtx};
use crate::cache::disk::Writing;
use crate::cache::entry::{Entry, Meta};
use crate::cache::zone::{Digest, Fill, Zone};
use crate::vars::{Var, VarSource};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    max_resp_body_size: Option<u64>,
    cache_zone: Option<String>,
    cache_strategy: Option<String>,
    cache_key: Option<Vec<String>>,
    cache_http_status: Option<Vec<u16>>,
    cache_method: Option<Vec<String>>,
    hide_cache_headers: Option<bool>,
    cache_control: Option<bool>,
    cache_bypass: Option<Vec<String>>,
    no_cache: Option<Vec<String>>,
    cache_ttl: Option<u64>,
    consumer_isolation: Option<bool>,
    cache_set_cookie: Option<bool>,
    cache_lock: Option<bool>,
    cache_lock_timeout: Option<f64>,
    stale_if_error: Option<u64>,
}

/// One element of `cache_key`, `cache_bypass` or `no_cache`: a variable or literal text.
enum Part {
    Text(String),
    Var(Var),
}

fn parts(items: &[String]) -> Result<Vec<Part>, String> {
    items
        .iter()
        .map(|s| match s.strip_prefix('$') {
            Some(name) => Var::parse(name).map(Part::Var),
            None => Ok(Part::Text(s.clone())),
        })
        .collect()
}

fn render(parts: &[Part], vars: &dyn VarSource, out: &mut Vec<u8>) {
    for p in parts {
        match p {
            Part::Text(t) => out.extend_from_slice(t.as_bytes()),
            Part::Var(v) => out.extend_from_slice(vars.var(v).unwrap_or_default()),
        }
    }
}

/// APISIX's test for `cache_bypass` and `no_cache`: the values joined are not empty nor "0".
fn set(parts: &Option<Vec<Part>>, vars: &dyn VarSource) -> bool {
    let Some(parts) = parts else { return false };
    let mut v = Vec::new();
    render(parts, vars, &mut v);
    !v.is_empty() && v != b"0"
}

pub struct ProxyCache {
    zone: String,
    disk: bool,
    key: Vec<Part>,
    /// The key names the client's identity itself: no consumer prefix needed.
    key_has_identity: bool,
    bypass: Option<Vec<Part>>,
    no_cache: Option<Vec<Part>>,
    methods: Vec<String>,
    statuses: Vec<u16>,
    hide_cache_headers: bool,
    cache_control: bool,
    ttl: u64,
    consumer_isolation: bool,
    cache_set_cookie: bool,
    max_body: u64,
    lock: bool,
    lock_timeout: Duration,
    stale_if_error: u64,
}

impl ProxyCache {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let key_text = c
            .cache_key
            .unwrap_or_else(|| vec!["$host".into(), "$request_uri".into()]);
        if let Some(k) = key_text.iter().find(|k| *k == "$request_method") {
            return Err(format!("cache_key variable {k} unsupported"));
        }
        let zone = c.cache_zone.unwrap_or_else(|| "disk_cache_one".into());
        let strategy = c.cache_strategy.unwrap_or_else(|| "disk".into());
        let disk = strategy == "disk";
        match crate::cache::kind(&zone) {
            None => return Err(format!("cache_zone {zone} not found")),
            Some(is_disk) if is_disk != disk => {
                return Err(format!(
                    "invalid or empty cache_zone for cache_strategy: {strategy}"
                ))
            }
            Some(_) => {}
        }
        let key_has_identity = key_text.iter().any(|k| {
            matches!(
                k.as_str(),
                "$consumer_name" | "$consumer_group_id" | "$remote_user" | "$http_authorization"
            )
        });
        Ok(ProxyCache {
            zone,
            disk,
            key: parts(&key_text)?,
            key_has_identity,
            bypass: c.cache_bypass.as_deref().map(parts).transpose()?,
            no_cache: c.no_cache.as_deref().map(parts).transpose()?,
            methods: c
                .cache_method
                .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]),
            statuses: c.cache_http_status.unwrap_or_else(|| vec![200, 301, 404]),
            hide_cache_headers: c.hide_cache_headers.unwrap_or(false),
            cache_control: c.cache_control.unwrap_or(false),
            ttl: c.cache_ttl.unwrap_or(300),
            consumer_isolation: c.consumer_isolation.unwrap_or(true),
            cache_set_cookie: c.cache_set_cookie.unwrap_or(false),
            max_body: c.max_resp_body_size.unwrap_or(64 << 20),
            lock: c.cache_lock.unwrap_or(true),
            lock_timeout: Duration::from_secs_f64(c.cache_lock_timeout.unwrap_or(5.0)),
            stale_if_error: c.stale_if_error.unwrap_or(0),
        })
    }

    /// The request's cache key text.
    fn key(&self, vars: &dyn VarSource) -> Vec<u8> {
        let mut key = Vec::with_capacity(64);
        if self.consumer_isolation && !self.key_has_identity {
            if let Some(name) = vars.var(&Var::ConsumerName).filter(|n| !n.is_empty()) {
                key.extend_from_slice(name);
                key.push(1);
            }
        }
        render(&self.key, vars, &mut key);
        key
    }
}

/// What the plugin holds for a request.
enum Cached {
    /// Answered by the plugin (a hit, a PURGE): the response phases leave it be.
    Answered,
    Miss(Box<Miss>),
}

/// A request that went upstream, and the entry its response may become.
struct Miss {
    zone: &'static Zone,
    key: Vec<u8>,
    base: Digest,
    fill: Option<Fill>,
    /// The expired entry and its body, to answer with if the upstream fails.
    stale: Option<(Arc<Entry>, Vec<u8>)>,
    store: bool,
    writer: Option<Writer>,
}

/// The entry being written.
enum Writer {
    Memory {
        meta: Box<Meta>,
        digest: Digest,
        body: Vec<u8>,
    },
    Disk(Writing, u64),
}

impl Phases for ProxyCache {
    fn name(&self) -> &'static str {
        "proxy-cache"
    }

    fn priority(&self) -> i32 {
        1085
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::ACCESS
            .with(PhaseSet::AWAITS)
            .with(PhaseSet::HEADER_FILTER)
            .with(PhaseSet::BODY_FILTER)
    }

    fn core_state(&self) -> CoreState {
        Box::new(crate::cache::zone(&self.zone))
    }

    async fn request_phase(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx<'_>,
        state: &RefCell<CoreState>,
    ) -> Flow {
        if phase != Phase::Access {
            return Flow::Continue;
        }
        let zone = state
            .borrow()
            .downcast_ref::<Option<&'static Zone>>()
            .copied()
            .flatten();
        match zone {
            Some(zone) => self.access(ctx, zone).await,
            None => Flow::Continue,
        }
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        self.start_entry(ctx);
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        self.store_piece(ctx);
    }
}
