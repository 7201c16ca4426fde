//! `proxy-rewrite` (APISIX priority 1008, rewrite phase): change the request that goes
//! upstream: its `uri` (a template with `$var`s) or a `regex_uri` rewrite of the path, its
//! `method`, its `host`, and its `headers` (`set`, `add`, `remove`, or the older flat form,
//! which sets). The query string is kept and appended to a new uri, as APISIX does, unless
//! `use_real_request_uri_unsafe` sends the client's target exactly as received.

use super::conf::HeaderOps;
use super::{BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::http::request::valid_target;
use crate::vars::{Template, Var, VarSource};
use regex::Regex;
use serde::Deserialize;
use std::cell::RefCell;
use std::fmt::Write as _;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    uri: Option<String>,
    method: Option<String>,
    regex_uri: Option<Vec<String>>,
    host: Option<String>,
    headers: Option<serde_json::Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
}

/// Methods APISIX's schema lists for `method`.
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
    "UNLOCK", "PATCH", "TRACE",
];

pub struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<(Regex, String)>,
    method: Option<String>,
    host: Option<String>,
    headers: HeaderOps,
    real_uri: bool,
}

impl ProxyRewrite {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let uri = match &c.uri {
            Some(u) if !u.starts_with('/') || u.len() > 4096 => {
                return Err(format!(
                    "property \"uri\" validation failed: '{u}' must start with '/' (at most 4096 characters)"
                ))
            }
            Some(u) => Some(Template::parse(u).map_err(|e| format!("uri: {e}"))?),
            None => None,
        };
        let mut regex_uri = Vec::new();
        if let Some(list) = &c.regex_uri {
            if list.len() < 2 || list.len() % 2 != 0 {
                return Err(
                    "property \"regex_uri\" validation failed: expected pairs of [regex, replacement]"
                        .into(),
                );
            }
            for (i, pair) in list.chunks(2).enumerate() {
                let re = Regex::new(&pair[0])
                    .map_err(|e| format!("regex_uri[{}]: invalid regex: {e}", i * 2))?;
                regex_uri.push((re, super::conf::ngx_replacement(&pair[1])));
            }
        }
        if let Some(m) = &c.method {
            if !METHODS.contains(&m.as_str()) {
                return Err(format!(
                    "property \"method\" validation failed: \"{m}\" matches none of the enum values"
                ));
            }
        }
        if let Some(h) = &c.host {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !ok {
                return Err(format!("property \"host\" validation failed: '{h}'"));
            }
        }
        let headers = match &c.headers {
            Some(h) => HeaderOps::parse("headers", h, false)?,
            None => HeaderOps::default(),
        };
        Ok(ProxyRewrite {
            uri,
            regex_uri,
            method: c.method,
            host: c.host,
            headers,
            real_uri: c.use_real_request_uri_unsafe,
        })
    }

    /// The new upstream path, when this plugin changes it.
    fn new_path(&self, vars: &dyn VarSource) -> Option<Vec<u8>> {
        if let Some(t) = &self.uri {
            let mut out = Vec::new();
            t.render(vars, &mut out);
            return Some(out);
        }
        let uri = std::str::from_utf8(vars.var(&Var::Uri)?).ok()?;
        self.regex_uri.iter().find_map(|(re, replacement)| {
            re.is_match(uri).then(|| {
                re.replace(uri, replacement.as_str())
                    .into_owned()
                    .into_bytes()
            })
        })
    }
}

/// Percent-encodes what may not stand in a request target (the rendered uri may hold
/// decoded variables), leaving `?`, `%` and what is already valid alone.
fn encode_target(raw: &[u8], out: &mut String) {
    for &b in raw {
        if b == b'?' || valid_target(&[b]) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

impl Phases for ProxyRewrite {
    fn name(&self) -> &'static str {
        "proxy-rewrite"
    }

    fn priority(&self) -> i32 {
        1008
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        if self.real_uri {
            // The client's target as received (already validated when it was parsed).
            if let Some(raw) = ctx.vars.var(&Var::RequestUri) {
                ctx.request.uri = Some(String::from_utf8_lossy(raw).into_owned());
            }
        } else if let Some(path) = self.new_path(ctx.vars) {
            let mut uri = String::with_capacity(path.len() + 16);
            encode_target(&path, &mut uri);
            if let Some(args) = ctx.vars.var(&Var::QueryString).filter(|a| !a.is_empty()) {
                uri.push(if uri.contains('?') { '&' } else { '?' });
                uri.push_str(&String::from_utf8_lossy(args));
            }
            ctx.request.uri = Some(uri);
        }
        if let Some(m) = &self.method {
            ctx.request.method = Some(m.clone());
        }
        if let Some(h) = &self.host {
            ctx.request.host = Some(h.clone());
        }
        self.headers.apply(ctx.vars, &mut ctx.request.headers);
        Flow::Continue
    }
}
