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

use super::{Answer, BodyCtx, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases};
use super::{RequestCtx, ResponseCtx};
use crate::cache::control::Directives;
use crate::cache::disk::Writing;
use crate::cache::entry::{now, Body, Entry, Meta};
use crate::cache::zone::{digest, variant_digest, Digest, Fill, Zone};
use crate::vars::{Var, VarSource};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Whether `entry` answers a request with directives `cc` at `t`.
    fn fresh_for(&self, entry: &Entry, cc: &Directives, t: u64) -> bool {
        let m = &entry.meta;
        let age = m.age(t);
        if !self.cache_control {
            return m.fresh(t);
        }
        if cc.max_age.is_some_and(|max| age > max) {
            return false;
        }
        if cc
            .min_fresh
            .is_some_and(|min| m.ttl.saturating_sub(age) < min)
        {
            return false;
        }
        m.fresh(t) || cc.max_stale.is_some_and(|s| age - m.ttl <= s)
    }

    /// The answer made of `entry` and its body.
    fn answer(&self, entry: &Entry, body: Vec<u8>, status: &str, t: u64) -> Answer {
        let mut headers = Vec::with_capacity(entry.meta.headers.len() + 2);
        for (n, v) in &entry.meta.headers {
            if self.hide_cache_headers
                && (n.eq_ignore_ascii_case("cache-control") || n.eq_ignore_ascii_case("expires"))
            {
                continue;
            }
            headers.push((n.clone(), v.clone()));
        }
        headers.push(("Age".into(), entry.meta.age(t).to_string()));
        headers.push(("Apisix-Cache-Status".into(), status.into()));
        Answer::new(entry.meta.status, headers, body)
    }

    /// The body of `entry` (read from its file for a disk zone); `None` when the file is
    /// gone or no longer the entry's.
    async fn body(zone: &Zone, digest: Digest, entry: &Entry) -> Option<Vec<u8>> {
        match &entry.body {
            Body::Memory(b) => Some(b.to_vec()),
            Body::Disk { hot: Some(b), .. } => Some(b.to_vec()),
            Body::Disk { len, hot: None } => {
                let disk = zone.disk.as_ref()?;
                let mut bytes = monoio::fs::read(disk.path(digest)).await.ok()?;
                let (meta, offset, body) = crate::cache::disk::parse(&bytes)?;
                if meta.key != entry.meta.key
                    || body != *len
                    || bytes.len() as u64 != offset as u64 + body
                {
                    return None;
                }
                bytes.drain(..offset);
                // Read from its file (an entry found on disk at start): kept in memory from
                // now on if it is small and the zone's memory allows.
                if bytes.len() <= crate::cache::entry::HOT_MAX && zone.reserve_hot(bytes.len()) {
                    let hot = Body::Disk {
                        len: *len,
                        hot: Some(bytes.as_slice().into()),
                    };
                    zone.replace(digest, entry, Entry::new(entry.meta.clone(), hot));
                }
                Some(bytes)
            }
        }
    }

    /// Serves a hit; `None` when the entry's body could not be had (the entry is dropped).
    async fn hit(
        &self,
        zone: &'static Zone,
        digest: Digest,
        entry: &Arc<Entry>,
        status: &str,
        t: u64,
    ) -> Option<Flow> {
        match Self::body(zone, digest, entry).await {
            Some(body) => {
                zone.stats.hit();
                Some(Flow::Respond(self.answer(entry, body, status, t)))
            }
            None => {
                zone.remove_entry(digest, entry);
                None
            }
        }
    }

    async fn access(&self, ctx: &mut RequestCtx<'_>, zone: &'static Zone) -> Flow {
        let method = ctx.vars.var(&Var::RequestMethod).unwrap_or_default();
        if method == b"PURGE" {
            let key = self.key(ctx.vars);
            let status = if zone.purge(&key) { 200 } else { 404 };
            ctx.slots.put(Cached::Answered);
            return Flow::Respond(Answer::new(status, Vec::new(), Vec::new()));
        }
        if !self.methods.iter().any(|m| m.as_bytes() == method) {
            // APISIX: BYPASS for the disk strategy (nginx's), MISS for the memory one.
            let status = if self.disk { "BYPASS" } else { "MISS" };
            ctx.response.headers.set("Apisix-Cache-Status", status);
            return Flow::Continue;
        }
        let cc = if self.cache_control {
            Directives::parse(ctx.vars.var(&Var::Http("cache_control".into())).into_iter())
        } else {
            Directives::default()
        };
        let key = self.key(ctx.vars);
        let base = digest(&[&key]);
        let vars = ctx.vars;
        let header = |name: &str| vars.var(&Var::Http(name.replace('-', "_")));
        if set(&self.bypass, ctx.vars) || cc.no_cache || cc.no_store {
            // Fetched fresh; stored unless the request said no-store (nginx's
            // proxy_cache_bypass refreshes the entry).
            ctx.response.headers.set("Apisix-Cache-Status", "BYPASS");
            let store = !cc.no_store;
            ctx.slots.put(Cached::Miss(Box::new(Miss {
                zone,
                key,
                base,
                fill: None,
                stale: None,
                store,
                writer: None,
            })));
            return Flow::Continue;
        }
        let started = Instant::now();
        let mut waited = false;
        loop {
            let t = now();
            // A fresh entry with its body in memory is answered inside the lookup.
            let found = zone.lookup(&key, header, |digest, entry| match entry {
                Some(e) if self.fresh_for(e, &cc, t) => match in_memory(&e.body) {
                    Some(body) => Err(self.answer(e, body.to_vec(), "HIT", t)),
                    None => Ok((digest, Some((e.clone(), true)))),
                },
                Some(e) => Ok((digest, Some((e.clone(), false)))),
                None => Ok((digest, None)),
            });
            let (digest, entry) = match found {
                Err(answer) => {
                    zone.stats.hit();
                    ctx.slots.put(Cached::Answered);
                    return Flow::Respond(answer);
                }
                Ok(found) => found,
            };
            let mut stale = None;
            let status = match entry {
                Some((e, true)) => {
                    if let Some(flow) = Box::pin(self.hit(zone, digest, &e, "HIT", t)).await {
                        ctx.slots.put(Cached::Answered);
                        return flow;
                    }
                    "MISS"
                }
                Some((e, false)) => {
                    stale = Some(e);
                    "EXPIRED"
                }
                None if cc.only_if_cached => {
                    ctx.slots.put(Cached::Answered);
                    return Flow::Respond(Answer::new(504, Vec::new(), Vec::new()));
                }
                None => "MISS",
            };
            let fill = if self.lock && !waited {
                match zone.try_fill(base) {
                    Some(f) => Some(f),
                    None => {
                        // Another request is fetching the key: answer with the expired
                        // entry meanwhile, or wait for the fetch.
                        if let Some(e) = &stale {
                            if let Some(flow) =
                                Box::pin(self.hit(zone, digest, e, "UPDATING", t)).await
                            {
                                ctx.slots.put(Cached::Answered);
                                return flow;
                            }
                        }
                        while zone.filling(base) && started.elapsed() < self.lock_timeout {
                            monoio::time::sleep(Duration::from_millis(2)).await;
                        }
                        // Looked up once more; after one wait, no more waiting (a fetch that
                        // turned out uncacheable must not line its waiters up one by one).
                        waited = true;
                        continue;
                    }
                }
            } else {
                None
            };
            zone.stats.miss();
            ctx.response.headers.set("Apisix-Cache-Status", status);
            // The expired entry's body, ready to answer with if the upstream fails.
            let stale = match stale {
                Some(e) if e.meta.stale_if_error.max(self.stale_if_error) > 0 => {
                    Box::pin(Self::body(zone, digest, &e)).await.map(|b| (e, b))
                }
                _ => None,
            };
            ctx.slots.put(Cached::Miss(Box::new(Miss {
                zone,
                key,
                base,
                fill,
                stale,
                // A request that waited out the lock goes upstream without storing.
                store: !(waited && started.elapsed() >= self.lock_timeout),
                writer: None,
            })));
            return Flow::Continue;
        }
    }

    /// Answers a failed fetch with the expired entry, when it is within its stale window.
    fn serve_stale(&self, ctx: &mut ResponseCtx<'_>, miss: &mut Miss) -> bool {
        let failed =
            (ctx.by_gateway && ctx.status >= 500) || matches!(ctx.status, 500 | 502 | 503 | 504);
        if !failed {
            return false;
        }
        let Some((entry, body)) = miss.stale.take() else {
            return false;
        };
        let t = now();
        let window = entry.meta.stale_if_error.max(self.stale_if_error);
        if entry.meta.age(t) >= entry.meta.ttl.saturating_add(window) {
            return false;
        }
        let answer = self.answer(&entry, body, "STALE", t);
        let edits = &mut *ctx.response;
        // Whatever the failed response said goes; the entry's fields replace it.
        let names: Vec<String> = match ctx.headers {
            super::ResponseHeaders::Gateway(f) => f.iter().map(|(n, _)| n.clone()).collect(),
            super::ResponseHeaders::Upstream { buf, head } => head
                .headers
                .iter()
                .map(|h| String::from_utf8_lossy(&buf[h.name.clone()]).into_owned())
                .collect(),
        };
        for n in names {
            edits.headers.remove(&n);
        }
        for (n, v) in &answer.headers {
            edits.headers.add(n, v);
        }
        edits.headers.set("Apisix-Cache-Status", "STALE");
        edits.status = Some(answer.status);
        edits.body = Some(answer.body);
        true
    }

    /// Whether the upstream's response may be stored, and for how long.
    fn storable(&self, ctx: &ResponseCtx<'_>, zone: &Zone) -> Option<(u64, u64)> {
        if !self.statuses.contains(&ctx.status) || set(&self.no_cache, ctx.vars) {
            return None;
        }
        let h = ctx.headers;
        let cc = Directives::parse(h.get("cache-control").into_iter());
        if cc.private || cc.no_store || cc.no_cache {
            return None;
        }
        if !self.cache_set_cookie && h.get("set-cookie").is_some() {
            return None;
        }
        if let Some(len) = h.get("content-length") {
            let len = std::str::from_utf8(len).ok()?.parse::<u64>().ok()?;
            if len > self.max_body.min(zone.capacity() / 2) {
                return None;
            }
        }
        let said = cc.freshness(h.get("expires"), now());
        let ttl = match (self.cache_control, self.disk, said) {
            (true, _, Some(t)) | (false, true, Some(t)) => t,
            (true, _, None) => return None,
            (false, true, None) => crate::cache::default_ttl(),
            (false, false, _) => self.ttl,
        };
        if ttl == 0 {
            return None;
        }
        let stale = if self.cache_control {
            cc.stale_if_error.unwrap_or(0).max(self.stale_if_error)
        } else {
            self.stale_if_error
        };
        Some((ttl, stale))
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
        let Some(Cached::Miss(mut miss)) = ctx.slots.take::<Cached>() else {
            return;
        };
        if self.serve_stale(ctx, &mut miss) {
            ctx.slots.put(Cached::Answered);
            return;
        }
        if self.hide_cache_headers {
            ctx.response.headers.remove("Cache-Control");
            ctx.response.headers.remove("Expires");
        }
        let storable = if ctx.by_gateway || !miss.store {
            None
        } else {
            self.storable(ctx, miss.zone)
        };
        let Some((ttl, stale_if_error)) = storable else {
            return; // the slot (and the fill with it) is dropped: waiters look again
        };
        // Vary: `*` is never reusable; otherwise the variant is named by the request's
        // values of the listed headers.
        let mut vary: Vec<String> = Vec::new();
        if let Some(v) = ctx.headers.get("vary") {
            for name in v.split(|&b| b == b',') {
                let name = String::from_utf8_lossy(crate::http::trim(name)).to_ascii_lowercase();
                if name == "*" {
                    return;
                }
                if !name.is_empty() && !vary.contains(&name) {
                    vary.push(name);
                }
            }
            vary.sort();
        }
        let digest = if vary.is_empty() {
            miss.base
        } else {
            let vars = ctx.vars;
            let values: Vec<Vec<u8>> = vary
                .iter()
                .map(|n| {
                    vars.var(&Var::Http(n.replace('-', "_")))
                        .unwrap_or_default()
                        .to_vec()
                })
                .collect();
            variant_digest(&miss.key, values.iter().map(|v| v.as_slice()))
        };
        let headers = match ctx.headers {
            super::ResponseHeaders::Upstream { buf, head } => head
                .headers
                .iter()
                .map(|h| {
                    (
                        &buf[h.name.clone()],
                        crate::http::trim(&buf[h.value.clone()]),
                    )
                })
                .filter(|(n, _)| kept(n))
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            super::ResponseHeaders::Gateway(_) => return,
        };
        let meta = Meta {
            key: String::from_utf8_lossy(&miss.key).into_owned(),
            status: ctx.status,
            headers,
            stored: now(),
            ttl,
            stale_if_error,
            vary,
        };
        miss.writer = Some(match &miss.zone.disk {
            Some(disk) => Writer::Disk(disk.begin(miss.base, digest, meta), 0),
            None => Writer::Memory {
                meta: Box::new(meta),
                digest,
                body: Vec::new(),
            },
        });
        ctx.response.observe_body();
        ctx.slots.put(Cached::Miss(miss));
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        let Some(Cached::Miss(miss)) = ctx.slots.get::<Cached>() else {
            return;
        };
        let Some(writer) = &mut miss.writer else {
            return;
        };
        let data: &[u8] = ctx.data;
        // Larger than allowed, or than half the zone: passed through uncached.
        let limit = self.max_body.min(miss.zone.capacity() / 2);
        let too_big = match writer {
            Writer::Memory { body, .. } => {
                let over = (body.len() + data.len()) as u64 > limit;
                if !over {
                    body.extend_from_slice(data);
                }
                over
            }
            Writer::Disk(w, written) => {
                *written += data.len() as u64;
                let over = *written > limit;
                if !over && !data.is_empty() {
                    w.piece(data);
                }
                over
            }
        };
        if too_big {
            miss.writer = None; // passed through uncached; the file (if any) is dropped
            miss.fill = None;
            return;
        }
        if !ctx.last {
            return;
        }
        let fill = miss.fill.take();
        match miss.writer.take() {
            Some(Writer::Memory { meta, digest, body }) => {
                let entry = Entry::new(*meta, Body::Memory(body.into()));
                miss.zone.insert(miss.base, digest, entry);
                drop(fill);
            }
            Some(Writer::Disk(w, _)) => w.commit(fill),
            None => {}
        }
    }
}

/// An entry's body when it is in memory (no file to read).
fn in_memory(body: &Body) -> Option<&[u8]> {
    match body {
        Body::Memory(b) | Body::Disk { hot: Some(b), .. } => Some(b),
        Body::Disk { hot: None, .. } => None,
    }
}

/// Whether a response header field is stored with the entry: not the framing, not
/// hop-by-hop fields, not what the gateway writes itself.
fn kept(name: &[u8]) -> bool {
    const DROPPED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "server",
        "apisix-cache-status",
        "age",
    ];
    !DROPPED
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
}
