//! `cors` (APISIX priority 4000): Cross-Origin Resource Sharing headers on every answer of
//! the route, and preflight requests (`OPTIONS`) answered 200 by the gateway. Fields and
//! defaults as APISIX: `allow_origins` (`*`; a comma-separated list; `**` echoes any
//! origin), `allow_origins_by_regex`, `allow_methods` (`*`; `**` lists them all),
//! `allow_headers` (`*`; `**` echoes the requested ones), `expose_headers`, `max_age` (5),
//! `allow_credential` (false; with it, `*` is refused since browsers ignore it).

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::vars::Var;
use regex::bytes::Regex;
use serde::Deserialize;
use std::cell::RefCell;

fn star() -> String {
    "*".into()
}

fn five() -> i64 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    expose_headers: Option<String>,
    #[serde(default = "five")]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    allow_origins_by_regex: Option<Vec<String>>,
}

pub struct Cors {
    origins: String,
    origin_list: Vec<String>,
    origin_regexes: Vec<Regex>,
    methods: String,
    headers: String,
    expose: Option<String>,
    max_age: String,
    credential: bool,
    /// `http_origin` and `http_access_control_request_headers`, made once.
    origin_var: Var,
    request_headers_var: Var,
}

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

impl Cors {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.allow_credential {
            for (field, v) in [
                ("allow_origins", Some(&c.allow_origins)),
                ("allow_methods", Some(&c.allow_methods)),
                ("allow_headers", Some(&c.allow_headers)),
                ("expose_headers", c.expose_headers.as_ref()),
            ] {
                if v.is_some_and(|v| v == "*") {
                    return Err(format!(
                        "you can not set '*' for other option when 'allow_credential' is true ({field})"
                    ));
                }
            }
        }
        for (field, v) in [
            ("allow_origins", &c.allow_origins),
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
        ] {
            if v.is_empty() || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(format!("property \"{field}\" validation failed"));
            }
        }
        let origin_regexes = c
            .allow_origins_by_regex
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                Regex::new(r)
                    .map_err(|e| format!("allow_origins_by_regex[{i}]: invalid regex: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cors {
            origin_list: c
                .allow_origins
                .split(',')
                .map(|o| o.trim().to_string())
                .collect(),
            origins: c.allow_origins,
            origin_regexes,
            methods: if c.allow_methods == "**" {
                ALL_METHODS.into()
            } else {
                c.allow_methods
            },
            headers: c.allow_headers,
            expose: c.expose_headers,
            max_age: c.max_age.to_string(),
            credential: c.allow_credential,
            origin_var: Var::Http("origin".into()),
            request_headers_var: Var::Http("access_control_request_headers".into()),
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed
    /// (borrowed: nothing is allocated per request).
    fn allowed_origin<'o>(&self, origin: Option<&'o [u8]>) -> Option<&'o [u8]> {
        match self.origins.as_str() {
            "*" if self.origin_regexes.is_empty() => return Some(b"*"),
            "**" => return origin,
            _ => {}
        }
        let origin = origin?;
        let listed = self.origin_list.iter().any(|o| o.as_bytes() == origin)
            || self.origin_regexes.iter().any(|r| r.is_match(origin));
        listed.then_some(origin)
    }

    fn put_headers(&self, ctx: &mut RequestCtx<'_>, origin: &[u8]) {
        let h = &mut ctx.response.headers;
        if origin != b"*" {
            h.add("Vary", "Origin");
        }
        h.set_with("Access-Control-Allow-Origin", |out| {
            out.push_str(&String::from_utf8_lossy(origin))
        });
        h.set("Access-Control-Allow-Methods", &self.methods);
        if self.headers == "**" {
            if let Some(v) = ctx.vars.var(&self.request_headers_var) {
                if !v.is_empty() {
                    h.set_with("Access-Control-Allow-Headers", |out| {
                        out.push_str(&String::from_utf8_lossy(v))
                    });
                }
            }
        } else if !self.headers.is_empty() {
            h.set("Access-Control-Allow-Headers", &self.headers);
        }
        if let Some(e) = &self.expose {
            h.set("Access-Control-Expose-Headers", e);
        }
        h.set("Access-Control-Max-Age", &self.max_age);
        if self.credential {
            h.set("Access-Control-Allow-Credentials", "true");
        }
    }
}

impl Phases for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn priority(&self) -> i32 {
        4000
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let origin = ctx.vars.var(&self.origin_var);
        if let Some(allowed) = self.allowed_origin(origin) {
            self.put_headers(ctx, allowed);
        }
        if ctx.vars.var(&Var::RequestMethod) == Some(b"OPTIONS") {
            return Flow::Respond(Answer::new(200, Vec::new(), Vec::new()));
        }
        Flow::Continue
    }
}
