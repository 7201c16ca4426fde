//! `gzip` (APISIX priority 995, header and body filters): compresses responses for clients
//! that accept gzip, with APISIX's fields: `types` (default `["text/html"]`, `"*"` for any),
//! `min_length` (default 20: a response announcing fewer bytes is left alone),
//! `comp_level` (1-9, default 1), `vary` (add `Vary: Accept-Encoding`; default off as in
//! APISIX), and `http_version` / `buffers`, accepted for compatibility (nginx tuning that has
//! no counterpart here).
//!
//! Never compressed: a response already encoded (any `Content-Encoding` but identity), a
//! range response (206, or one with `Content-Range`), 1xx/204/304, answers to HEAD, types not
//! listed, and requests whose `Accept-Encoding` does not accept gzip (q-values honoured:
//! `gzip;q=0` refuses, `*` accepts unless gzip is refused by name). Content-Length is
//! dropped and the body re-framed; a strong ETag is weakened (`W/`), as nginx does.
//!
//! Streaming: each piece of the body is compressed and flushed (a deflate sync flush) as it
//! passes, so the client gets compressed bytes while the upstream still sends; memory per
//! response is the compressor's state (about 256 KiB at level 1 with zlib-rs) and one piece.

use super::{BodyCtx, BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use crate::vars::Var;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;
use std::cell::RefCell;
use std::io::Write;

#[derive(Deserialize)]
#[serde(untagged)]
enum Types {
    Any(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[allow(dead_code)] // http_version and buffers are accepted for APISIX compatibility.
struct Buffers {
    number: Option<u32>,
    size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Config {
    types: Option<Types>,
    min_length: Option<u64>,
    comp_level: Option<u32>,
    http_version: Option<f64>,
    buffers: Option<Buffers>,
    vary: Option<bool>,
}

pub struct Gzip {
    /// Lower-case media types; empty = any (`"*"`).
    types: Vec<String>,
    min_length: u64,
    level: u32,
    vary: bool,
}

/// The response's compressor, from header_filter to the last piece.
struct Held(GzEncoder<Vec<u8>>);

impl Gzip {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let types = match c.types {
            None => vec!["text/html".to_string()],
            Some(Types::Any(s)) if s == "*" => Vec::new(),
            Some(Types::Any(s)) => {
                return Err(format!(
                    "property \"types\" validation failed: \"{s}\" is not \"*\" nor a list"
                ))
            }
            Some(Types::List(l)) => l.iter().map(|t| t.trim().to_ascii_lowercase()).collect(),
        };
        let level = c.comp_level.unwrap_or(1);
        if !(1..=9).contains(&level) {
            return Err("property \"comp_level\" validation failed: expected 1 to 9".into());
        }
        Ok(Gzip {
            types,
            min_length: c.min_length.unwrap_or(20),
            level,
            vary: c.vary.unwrap_or(false),
        })
    }

    fn type_listed(&self, content_type: Option<&[u8]>) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let Some(ct) = content_type else {
            return false;
        };
        let media = ct.split(|&b| b == b';').next().unwrap_or(ct);
        let media = crate::http::trim(media);
        self.types
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(media))
    }
}

/// Whether an `Accept-Encoding` value accepts `coding` (RFC 9110 §12.5.3: a q of 0 refuses;
/// `*` stands for codings not named).
pub fn accepts(accept_encoding: &[u8], coding: &str) -> bool {
    let mut named: Option<bool> = None;
    let mut star: Option<bool> = None;
    for item in accept_encoding.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let name = crate::http::trim(parts.next().unwrap_or(b""));
        let mut q_ok = true;
        for p in parts {
            let p = crate::http::trim(p);
            if p.len() > 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                let q: f32 = std::str::from_utf8(&p[2..])
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0.0);
                q_ok = q > 0.0;
            }
        }
        if name.eq_ignore_ascii_case(coding.as_bytes()) {
            named = Some(q_ok);
        } else if name == b"*" {
            star = Some(q_ok);
        }
    }
    named.or(star).unwrap_or(false)
}

impl Phases for Gzip {
    fn name(&self) -> &'static str {
        "gzip"
    }

    fn priority(&self) -> i32 {
        995
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::HEADER_FILTER.with(PhaseSet::BODY_FILTER)
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        let status = ctx.status;
        if status < 200 || status == 204 || status == 206 || status == 304 {
            return;
        }
        if ctx.vars.var(&Var::RequestMethod) == Some(b"HEAD") {
            return;
        }
        let accept = ctx.vars.var(&Var::Http("accept_encoding".into()));
        if !accept.is_some_and(|a| accepts(a, "gzip")) {
            return;
        }
        let h = &ctx.headers;
        if h.get("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"))
            || h.get("content-range").is_some()
            || !self.type_listed(h.get("content-type"))
        {
            return;
        }
        let length = h
            .get("content-length")
            .and_then(crate::http::parse_content_length);
        if length.is_some_and(|n| n < self.min_length) {
            return;
        }
        let etag = h.get("etag").map(|e| e.to_vec());
        ctx.response.change_body();
        ctx.response.headers.set("Content-Encoding", "gzip");
        if let Some(e) = etag {
            let weak = if e.starts_with(b"W/") {
                e
            } else {
                [b"W/", &e[..]].concat()
            };
            ctx.response
                .headers
                .set("ETag", &String::from_utf8_lossy(&weak));
        }
        if self.vary {
            ctx.response.headers.add("Vary", "Accept-Encoding");
        }
        let out = Vec::with_capacity(16 * 1024);
        ctx.slots
            .put(Held(GzEncoder::new(out, Compression::new(self.level))));
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        let Some(Held(enc)) = ctx.slots.get::<Held>() else {
            return;
        };
        let mut ok = enc.write_all(ctx.data).is_ok();
        ok &= match ctx.last {
            true => enc.try_finish().is_ok(),
            false => enc.flush().is_ok(),
        };
        ctx.data.clear();
        if ok {
            std::mem::swap(enc.get_mut(), ctx.data);
        } else {
            crate::warn!("gzip: compressing a response body failed");
        }
    }
}
