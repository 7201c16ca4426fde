//! `response-rewrite` (APISIX priority 899, header_filter): change the response the client
//! gets, the upstream's or one the gateway made: `status_code`, `headers` (`set`, `add` as
//! `"Name: value"` strings, `remove`, or the older flat form), and `body` (plain, or base64
//! with `body_base64`), when the request matches `vars` (or always).

use super::conf::{AnyOf, HeaderOps};
use super::{BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use base64::Engine;
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
    filters: Option<serde_json::Value>,
}

pub struct ResponseRewrite {
    status: Option<u16>,
    body: Option<Vec<u8>>,
    headers: HeaderOps,
    when: AnyOf,
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
        if c.filters.is_some() {
            return Err("property \"filters\": body filters are not supported yet".into());
        }
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
        PhaseSet::HEADER_FILTER
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
        }
        self.headers.apply(ctx.vars, &mut ctx.response.headers);
    }
}
