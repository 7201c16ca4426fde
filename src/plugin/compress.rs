//! What the compression plugins (`gzip`, `brotli`) share: `Accept-Encoding` negotiation,
//! the rules for which responses are compressed, the header changes, and the streaming
//! body filter over either encoder.
//!
//! Never compressed: a response already encoded (any `Content-Encoding` but identity), a
//! range response (206, or one with `Content-Range`), 1xx/204/304, answers to HEAD, types not
//! listed, a response announcing fewer than `min_length` bytes, and requests whose
//! `Accept-Encoding` does not accept the coding (q-values honoured: `gzip;q=0` refuses, `*`
//! accepts unless the coding is refused by name). Content-Length is dropped and the body
//! re-framed; a strong ETag is weakened (`W/`), as nginx does.
//!
//! Streaming: each piece of the body is compressed and flushed as it passes, so the client
//! gets compressed bytes while the upstream still sends; memory per response is the
//! encoder's state and one piece.

use super::{BodyCtx, ResponseCtx};
use crate::vars::Var;
use flate2::write::GzEncoder;
use serde::Deserialize;
use std::io::Write;

/// `types` as APISIX takes it: `"*"` or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum TypesConf {
    Any(String),
    List(Vec<String>),
}

/// The fields both plugins have.
pub(super) struct Rules {
    /// Lower-case media types; empty = any (`"*"`).
    types: Vec<String>,
    min_length: u64,
    vary: bool,
    /// `http_accept_encoding`, made once here rather than per response.
    accept_encoding: Var,
}

impl Rules {
    pub(super) fn new(
        types: Option<TypesConf>,
        min_length: Option<u64>,
        vary: Option<bool>,
    ) -> Result<Rules, String> {
        let types = match types {
            None => vec!["text/html".to_string()],
            Some(TypesConf::Any(s)) if s == "*" => Vec::new(),
            Some(TypesConf::Any(s)) => {
                return Err(format!(
                    "property \"types\" validation failed: \"{s}\" is not \"*\" nor a list"
                ))
            }
            Some(TypesConf::List(l)) => l.iter().map(|t| t.trim().to_ascii_lowercase()).collect(),
        };
        Ok(Rules {
            types,
            min_length: min_length.unwrap_or(20),
            vary: vary.unwrap_or(false),
            accept_encoding: Var::Http("accept_encoding".into()),
        })
    }

    fn type_listed(&self, content_type: Option<&[u8]>) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let Some(ct) = content_type else {
            return false;
        };
        let media = crate::http::trim(ct.split(|&b| b == b';').next().unwrap_or(ct));
        self.types
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(media))
    }

    /// In header_filter: whether this response is to be compressed with `coding`; if so the
    /// headers are changed and the body will pass through the body filters.
    pub(super) fn start(&self, ctx: &mut ResponseCtx<'_>, coding: &str) -> bool {
        let status = ctx.status;
        if status < 200 || status == 204 || status == 206 || status == 304 {
            return false;
        }
        if ctx.vars.var(&Var::RequestMethod) == Some(b"HEAD") {
            return false;
        }
        let accept = ctx.vars.var(&self.accept_encoding);
        if !accept.is_some_and(|a| accepts(a, coding)) {
            return false;
        }
        // An earlier plugin (the other coding) took the response already.
        if ctx.response.headers.drops(b"content-encoding") {
            return false;
        }
        let h = &ctx.headers;
        if h.get("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"))
            || h.get("content-range").is_some()
            || !self.type_listed(h.get("content-type"))
        {
            return false;
        }
        let length = h
            .get("content-length")
            .and_then(crate::http::parse_content_length);
        if length.is_some_and(|n| n < self.min_length) {
            return false;
        }
        let etag = h.get("etag").map(|e| e.to_vec());
        ctx.response.change_body();
        ctx.response.headers.set("Content-Encoding", coding);
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
        true
    }
}

/// The body's length when known ahead and unchanged by an earlier plugin: the upstream's
/// Content-Length. Encoders size their windows and tables to it (zstd also records it in
/// its frame), which for small responses saves most of their set-up cost.
pub(super) fn known_length(ctx: &ResponseCtx<'_>) -> Option<u64> {
    if ctx.by_gateway || ctx.response.body.is_some() {
        return None;
    }
    ctx.headers
        .get("content-length")
        .and_then(crate::http::parse_content_length)
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

/// A response's encoder, kept in the plugin's slot from header_filter to the last piece.
pub(super) enum Encoder {
    Gzip(Box<GzEncoder<Vec<u8>>>),
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    Zstd(Option<Box<zstd::stream::write::Encoder<'static, Vec<u8>>>>),
}

impl Encoder {
    /// The body filter: compresses the piece in place (flushed, or finished on the last).
    pub(super) fn filter(ctx: &mut BodyCtx<'_>, name: &str) {
        let Some(enc) = ctx.slots.get::<Encoder>() else {
            return;
        };
        let data = std::mem::take(ctx.data);
        let ok = match enc {
            Encoder::Gzip(g) => {
                let done = g.write_all(&data).and_then(|()| match ctx.last {
                    true => g.try_finish(),
                    false => g.flush(),
                });
                std::mem::swap(g.get_mut(), ctx.data);
                done.is_ok()
            }
            Encoder::Brotli(slot) => match slot.as_mut() {
                None => true,
                Some(b) => {
                    let done = b.write_all(&data).and_then(|()| b.flush());
                    std::mem::swap(b.get_mut(), ctx.data);
                    if ctx.last {
                        // Finishing is consuming: the stream's last bytes come out of it.
                        let rest = slot.take().map(|b| b.into_inner()).unwrap_or_default();
                        ctx.data.extend_from_slice(&rest);
                    }
                    done.is_ok()
                }
            },
            Encoder::Zstd(slot) => match slot.as_mut() {
                None => true,
                Some(z) => {
                    let mut done = z.write_all(&data).and_then(|()| z.flush());
                    std::mem::swap(z.get_mut(), ctx.data);
                    if ctx.last {
                        match slot.take().map(|z| z.finish()) {
                            Some(Ok(rest)) => ctx.data.extend_from_slice(&rest),
                            Some(Err(e)) => done = Err(e),
                            None => {}
                        }
                    }
                    done.is_ok()
                }
            },
        };
        if !ok {
            crate::warn!("{name}: compressing a response body failed");
        }
        // The input piece's memory becomes the encoder's next output buffer.
        let mut data = data;
        data.clear();
        match enc {
            Encoder::Gzip(g) => *g.get_mut() = data,
            Encoder::Brotli(Some(b)) => *b.get_mut() = data,
            Encoder::Zstd(Some(z)) => *z.get_mut() = data,
            Encoder::Brotli(None) | Encoder::Zstd(None) => {}
        }
    }
}
