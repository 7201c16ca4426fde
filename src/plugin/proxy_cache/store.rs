//! The response phases of `proxy-cache`: whether a response is stored (and for how long),
//! its entry begun in header_filter and filled by the body filter, published only once
//! complete; a failed fetch answered from the stale entry.

use super::{set, Cached, Miss, ProxyCache, Writer};
use crate::cache::control::Directives;
use crate::cache::entry::{now, Body, Entry, Meta};
use crate::cache::zone::{variant_digest, Zone};
use crate::plugin::{BodyCtx, ResponseCtx, ResponseHeaders};
use crate::vars::Var;

impl ProxyCache {
    /// Answers a failed fetch with the expired entry, when it is within its stale window.
    pub(super) fn serve_stale(&self, ctx: &mut ResponseCtx<'_>, miss: &mut Miss) -> bool {
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
            ResponseHeaders::Gateway(f) => f.iter().map(|(n, _)| n.clone()).collect(),
            ResponseHeaders::Upstream { buf, head } => head
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
    pub(super) fn storable(&self, ctx: &ResponseCtx<'_>, zone: &Zone) -> Option<(u64, u64)> {
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

    /// header_filter: a failed fetch answered from the stale entry, or the response's entry
    /// begun when it may be stored.
    pub(super) fn start_entry(&self, ctx: &mut ResponseCtx<'_>) {
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
        // A HEAD's answer has no body to store (a GET's entry answers HEADs).
        let head = ctx.vars.var(&Var::RequestMethod) == Some(b"HEAD");
        let storable = if ctx.by_gateway || !miss.store || head {
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
            ResponseHeaders::Upstream { buf, head } => head
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
            ResponseHeaders::Gateway(_) => return,
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

    /// body_filter: the piece into the entry; the entry published after the last piece.
    pub(super) fn store_piece(&self, ctx: &mut BodyCtx<'_>) {
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

/// Whether a response header field is stored with the entry: not hop-by-hop fields, not
/// the framing, not what the gateway writes itself.
fn kept(name: &[u8]) -> bool {
    const OWN: &[&str] = &["content-length", "server", "apisix-cache-status", "age"];
    !crate::http::is_hop_by_hop(name)
        && !OWN.iter().any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
}
