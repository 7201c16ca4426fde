//! The access phase of `proxy-cache`: PURGE, the lookup, hits (from memory or a file), the
//! fill lock and its waiters, and what a miss takes along to the response phases.

use super::{set, Cached, Miss, ProxyCache};
use crate::cache::control::Directives;
use crate::cache::entry::{now, Body, Entry};
use crate::cache::zone::{digest, Digest, Zone};
use crate::plugin::{Answer, Flow, RequestCtx};
use crate::vars::Var;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl ProxyCache {
    /// Whether `entry` answers a request with directives `cc` at `t`.
    pub(super) fn fresh_for(&self, entry: &Entry, cc: &Directives, t: u64) -> bool {
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
    pub(super) fn answer(&self, entry: &Entry, body: Vec<u8>, status: &str, t: u64) -> Answer {
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
    pub(super) async fn body(zone: &Zone, digest: Digest, entry: &Entry) -> Option<Vec<u8>> {
        if let Some(b) = in_memory(&entry.body) {
            return Some(b.to_vec());
        }
        match &entry.body {
            Body::Memory(_) | Body::Disk { hot: Some(_), .. } => None,
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
    pub(super) async fn hit(
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

    pub(super) async fn access(&self, ctx: &mut RequestCtx<'_>, zone: &'static Zone) -> Flow {
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
            let found = zone.lookup(&key, t, header, |digest, entry| match entry {
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
}

/// An entry's body when it is in memory (no file to read).
fn in_memory(body: &Body) -> Option<&[u8]> {
    match body {
        Body::Memory(b) | Body::Disk { hot: Some(b), .. } => Some(b),
        Body::Disk { hot: None, .. } => None,
    }
}
