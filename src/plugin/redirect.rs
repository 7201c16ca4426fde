//! `redirect` (APISIX priority 900, rewrite phase): answer with a redirect instead of
//! proxying: to `uri` (a template with `$var`s) or a `regex_uri` rewrite of the path, with
//! `ret_code` (302), optionally keeping the query (`append_query_string`) and
//! percent-encoding the path (`encode_uri`, as nginx's `ngx_escape_uri`); or to the same URL
//! over https (`http_to_https`: 301 for GET and HEAD, 308 otherwise, as APISIX; nothing when
//! the request already came over https, by its scheme or `X-Forwarded-Proto`).

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::vars::{Template, Var};
use regex::Regex;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    uri: Option<String>,
    regex_uri: Option<Vec<String>>,
    ret_code: Option<i64>,
    #[serde(default)]
    http_to_https: bool,
    #[serde(default)]
    append_query_string: bool,
    #[serde(default)]
    encode_uri: bool,
}

enum Target {
    Uri(Template),
    Regex(Regex, String),
    Https,
}

pub struct Redirect {
    target: Target,
    status: u16,
    append_query: bool,
    encode_uri: bool,
}

impl Redirect {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let target = match (&c.uri, &c.regex_uri, c.http_to_https) {
            (Some(u), None, false) => {
                if u.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return Err("property \"uri\": may not contain CR or LF".into());
                }
                Target::Uri(Template::parse(u).map_err(|e| format!("uri: {e}"))?)
            }
            (None, Some(r), false) if r.len() == 2 => Target::Regex(
                Regex::new(&r[0]).map_err(|e| format!("regex_uri[0]: invalid regex: {e}"))?,
                super::conf::ngx_replacement(&r[1]),
            ),
            (None, Some(_), false) => {
                return Err("property \"regex_uri\": expected [regex, replacement]".into())
            }
            (None, None, true) => Target::Https,
            _ => {
                return Err(
                    "value should match only one schema: uri, regex_uri or http_to_https".into(),
                )
            }
        };
        let status = match (c.ret_code, &target) {
            (None, Target::Https) => 301,
            (None, _) => 302,
            (Some(s), _) if (200..=599).contains(&s) => s as u16,
            (Some(s), _) => {
                return Err(format!(
                    "property \"ret_code\" validation failed: expected {s} to be at least 200"
                ))
            }
        };
        if c.append_query_string && matches!(target, Target::Https) {
            return Err(
                "only one of `http_to_https` and `append_query_string` can be configured".into(),
            );
        }
        Ok(Redirect {
            target,
            status,
            append_query: c.append_query_string,
            encode_uri: c.encode_uri,
        })
    }
}

impl Phases for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn priority(&self) -> i32 {
        900
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let text = |v: Var| {
            ctx.vars
                .var(&v)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let mut status = self.status;
        let mut location = match &self.target {
            Target::Uri(t) => t.render_string(ctx.vars),
            Target::Regex(re, replacement) => {
                let uri = text(Var::Uri);
                if !re.is_match(&uri) {
                    return Flow::Continue;
                }
                re.replace(&uri, replacement.as_str()).into_owned()
            }
            Target::Https => {
                let proto = ctx.vars.var(&Var::Http("x_forwarded_proto".into()));
                let scheme = proto.or_else(|| ctx.vars.var(&Var::Scheme));
                if scheme.is_some_and(|s| s.eq_ignore_ascii_case(b"https")) {
                    return Flow::Continue;
                }
                let method = ctx.vars.var(&Var::RequestMethod);
                status = if matches!(method, Some(b"GET" | b"HEAD")) {
                    301
                } else {
                    308
                };
                format!("https://{}{}", text(Var::Host), text(Var::RequestUri))
            }
        };
        if self.encode_uri {
            location = escape_uri(&location);
        }
        if self.append_query {
            let args = text(Var::QueryString);
            if !args.is_empty() {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(&args);
            }
        }
        Flow::Respond(Answer::new(
            status,
            vec![("Location".into(), location)],
            Vec::new(),
        ))
    }
}

/// nginx's `ngx_escape_uri` (NGX_ESCAPE_URI) on the part before the query: space, `#`, `%`,
/// `?`, control bytes and bytes from 0x7F are percent-encoded; the query is kept as it is.
fn escape_uri(location: &str) -> String {
    let (path, query) = match location.find('?') {
        Some(i) => location.split_at(i),
        None => (location, ""),
    };
    let mut out = String::with_capacity(location.len() + 8);
    for &b in path.as_bytes() {
        if b <= b' ' || b >= 0x7f || matches!(b, b'#' | b'%' | b'?') {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out.push_str(query);
    out
}
