//! `response-rewrite` (APISIX priority 899, header_filter and body_filter): change the
//! response the client gets, the upstream's or one the gateway made: `status_code`, `headers`
//! (`set`, `add` as `"Name: value"` strings, `remove`, or the older flat form), `body` (plain,
//! or base64 with `body_base64`) or `filters` (regex substitutions on the body), when the
//! response matches `vars` (request variables, `status`, `upstream_http_*`), or always.
//!
//! `filters` hold the body back (decoded when the upstream sent it gzip or br; the client
//! gets it decoded) and substitute at its end. Past `max_resp_body_size` bytes held, the
//! filters run on what is held and the rest of the body streams on unfiltered; nothing is
//! dropped (APISIX cuts the piece that crosses the limit). A body in a coding the gateway
//! cannot decode passes untouched, as does one that turns out corrupt (what was decoded
//! before the error is sent, then the body ends; logged).

use super::conf::{AnyOf, HeaderOps};
use super::{BodyCtx, BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use crate::http::coding::{Coding, Decoder};
use base64::Engine;
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    status_code: Option<i64>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    headers: Option<serde_json::Value>,
    vars: Option<serde_json::Value>,
    filters: Option<Vec<FilterConfig>>,
    max_resp_body_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    regex: String,
    replace: String,
    #[serde(default = "once")]
    scope: String,
    #[serde(default = "jo")]
    options: String,
}

fn once() -> String {
    "once".into()
}

fn jo() -> String {
    "jo".into()
}

/// APISIX's default `max_resp_body_size`: 64 MiB.
const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

pub struct ResponseRewrite {
    status: Option<u16>,
    body: Option<Vec<u8>>,
    headers: HeaderOps,
    when: AnyOf,
    filters: Vec<Filter>,
    max_body: usize,
}

/// One body substitution.
struct Filter {
    regex: Regex,
    /// The replacement in the regex crate's syntax (`${1}`).
    replace: String,
    /// `scope = "global"`: every match, not only the first.
    global: bool,
}

/// A response whose body the filters are holding back.
struct Held {
    decoder: Decoder,
    /// The limit was passed: the rest of the body streams on unfiltered.
    streaming: bool,
    /// The body could not be decoded: nothing more is sent.
    failed: bool,
}

impl ResponseRewrite {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let status = match c.status_code {
            Some(s) if (200..=598).contains(&s) => Some(s as u16),
            Some(s) => {
                return Err(format!(
                    "property \"status_code\" validation failed: expected {s} to be between 200 and 598"
                ))
            }
            None => None,
        };
        if c.body.is_some() && c.filters.is_some() {
            return Err("\"body\" and \"filters\" cannot both be set".into());
        }
        let filters =
            match &c.filters {
                Some(list) if list.is_empty() => return Err(
                    "property \"filters\" validation failed: expect array to have at least 1 items"
                        .into(),
                ),
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, f)| Filter::build(i, f))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
        let max_body = match c.max_resp_body_size {
            None => DEFAULT_MAX_BODY,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(format!(
                "property \"max_resp_body_size\" validation failed: expected {n} to be at least 1"
            ))
            }
        };
        let body = match (c.body, c.body_base64) {
            (Some(b), true) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("property \"body\": invalid base64: {e}"))?,
            ),
            (Some(b), false) => Some(b.into_bytes()),
            (None, true) => {
                return Err("property \"body_base64\" needs \"body\"".into());
            }
            (None, false) => None,
        };
        let headers = match &c.headers {
            Some(h) => HeaderOps::parse("headers", h, true)?,
            None => HeaderOps::default(),
        };
        Ok(ResponseRewrite {
            status,
            body,
            headers,
            when: AnyOf::parse("vars", c.vars.as_ref(), false)?,
            filters,
            max_body,
        })
    }

    /// Substitutes every filter in turn over the whole of `body`.
    fn substitute(&self, body: &mut Vec<u8>) {
        for f in &self.filters {
            let replaced = if f.global {
                f.regex.replace_all(body, f.replace.as_bytes())
            } else {
                f.regex.replace(body, f.replace.as_bytes())
            };
            if let std::borrow::Cow::Owned(new) = replaced {
                *body = new;
            }
        }
    }
}

impl Filter {
    fn build(i: usize, f: &FilterConfig) -> Result<Filter, String> {
        let field = format!("filters[{i}]");
        if f.regex.is_empty() {
            return Err(format!(
                "property \"{field}.regex\" validation failed: string too short, expected at least 1, got 0"
            ));
        }
        let global = match f.scope.as_str() {
            "once" => false,
            "global" => true,
            _ => {
                return Err(format!(
                    "property \"{field}.scope\" validation failed: matches none of the enum values (\"once\", \"global\")"
                ))
            }
        };
        let mut b = RegexBuilder::new(&f.regex);
        b.size_limit(1 << 20);
        for o in f.options.chars() {
            match o {
                'i' => b.case_insensitive(true),
                'm' => b.multi_line(true),
                's' => b.dot_matches_new_line(true),
                'x' => b.ignore_whitespace(true),
                'u' => b.unicode(true),
                // PCRE's JIT and compile-once: always so here.
                'j' | 'o' => &mut b,
                other => {
                    return Err(format!(
                        "property \"{field}.options\": unsupported regex option '{other}' (supported: i, m, s, x, u, j, o)"
                    ))
                }
            };
        }
        let regex = b
            .build()
            .map_err(|e| format!("regex \"{}\" validation failed: {e}", f.regex))?;
        Ok(Filter {
            regex,
            replace: super::conf::ngx_replacement(&f.replace),
            global,
        })
    }
}

impl Phases for ResponseRewrite {
    fn name(&self) -> &'static str {
        "response-rewrite"
    }

    fn priority(&self) -> i32 {
        899
    }

    fn uses(&self) -> PhaseSet {
        if self.filters.is_empty() {
            PhaseSet::HEADER_FILTER
        } else {
            PhaseSet::HEADER_FILTER.with(PhaseSet::BODY_FILTER)
        }
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        if !self.when.holds(ctx.vars) {
            return;
        }
        if let Some(s) = self.status {
            ctx.response.status = Some(s);
        }
        if let Some(body) = &self.body {
            ctx.response.body = Some(body.clone());
            // The new body is not the upstream's representation (nor compressed).
            for name in ["Content-Encoding", "ETag", "Last-Modified"] {
                ctx.response.headers.remove(name);
            }
        }
        if !self.filters.is_empty() {
            match Coding::from_header(ctx.headers.get("content-encoding")) {
                Some(coding) => {
                    ctx.response.change_body();
                    if coding != Coding::Identity {
                        ctx.response.headers.remove("Content-Encoding");
                    }
                    ctx.slots.put(Held {
                        decoder: Decoder::new(coding),
                        streaming: false,
                        failed: false,
                    });
                }
                None => crate::warn!(
                    "response-rewrite: filters not applied: the body's Content-Encoding cannot be decoded"
                ),
            }
        }
        self.headers.apply(ctx.vars, &mut ctx.response.headers);
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        let Some(held) = ctx.slots.get::<Held>() else {
            return;
        };
        if held.failed {
            ctx.data.clear();
            return;
        }
        let mut result = held.decoder.write(ctx.data);
        ctx.data.clear();
        if ctx.last && result.is_ok() {
            result = held.decoder.finish();
        }
        let decoded = held.decoder.output();
        if let Err(e) = result {
            crate::warn!("response-rewrite: the response body could not be decoded: {e}");
            held.failed = true;
            std::mem::swap(decoded, ctx.data);
            return;
        }
        if held.streaming {
            std::mem::swap(decoded, ctx.data);
        } else if ctx.last || decoded.len() >= self.max_body {
            held.streaming = true;
            std::mem::swap(decoded, ctx.data);
            self.substitute(ctx.data);
        }
    }
}
