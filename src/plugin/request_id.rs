//! `request-id` (APISIX priority 12015, rewrite phase): give every request an id in
//! `header_name` (default `X-Request-Id`), keeping one the client sent, and return it in the
//! response (`include_in_response`, default true), error answers of the gateway's included.
//! `algorithm`: `uuid` (v4, drawn from a per-thread generator: no system call per id).

use super::{BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::vars::Var;
use serde::Deserialize;
use std::cell::RefCell;

fn default_header() -> String {
    "X-Request-Id".into()
}

fn default_true() -> bool {
    true
}

fn default_algorithm() -> String {
    "uuid".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header_name: String,
    #[serde(default = "default_true")]
    include_in_response: bool,
    #[serde(default = "default_algorithm")]
    algorithm: String,
}

pub struct RequestId {
    header: String,
    /// The header as a request variable (`http_x_request_id`), to find a client's id.
    var: Var,
    include_in_response: bool,
}

impl RequestId {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        super::conf::check_header_name("header_name", &c.header_name)?;
        if c.algorithm != "uuid" {
            return Err(format!(
                "property \"algorithm\" validation failed: \"{}\" is not supported (uuid)",
                c.algorithm
            ));
        }
        Ok(RequestId {
            var: Var::Http(c.header_name.to_ascii_lowercase().replace('-', "_")),
            header: c.header_name,
            include_in_response: c.include_in_response,
        })
    }
}

impl Phases for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }

    fn priority(&self) -> i32 {
        12015
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let mut generated = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id: &str = match ctx.vars.var(&self.var).filter(|v| !v.is_empty()) {
            // A client's id is kept as sent (header values are checked when parsed).
            Some(sent) => std::str::from_utf8(sent).unwrap_or(""),
            None => {
                let id = uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut generated);
                ctx.request.headers.set(&self.header, id);
                id
            }
        };
        if self.include_in_response {
            ctx.response.headers.set(&self.header, id);
        }
        Flow::Continue
    }
}
