//! `key-auth` (APISIX priority 2500, rewrite phase): the request names its consumer with a
//! key, in header `header` (default `apikey`) or else query argument `query` (default
//! `apikey`). The key is looked up in the snapshot's consumer index (`consumer.rs`: by its
//! digest, one hash lookup, no comparison of secret bytes). No key: 401 `Missing API key in
//! request`; an unknown one: 401 `Invalid API key in request`; both with
//! `WWW-Authenticate: apikey realm="key"`, the same answer whatever consumers exist. A
//! match records the consumer (`consumer_name`, chash `hash_on = "consumer"`) and sets
//! `X-Consumer-Username`, `X-Credential-Identifier` and `X-Consumer-Custom-ID` towards the
//! upstream, replacing whatever the client sent under those names. `hide_credentials`
//! removes the key from what the upstream sees.

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::consumer::Consumers;
use crate::vars::Var;
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;

fn apikey() -> String {
    "apikey".into()
}

fn realm() -> String {
    "key".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "apikey")]
    header: String,
    #[serde(default = "apikey")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

pub struct KeyAuth {
    consumers: Arc<Consumers>,
    header: String,
    /// The header as a request variable (`http_apikey`).
    header_var: Var,
    query: String,
    query_var: Var,
    hide_credentials: bool,
    missing: Answer,
    invalid: Answer,
    anonymous: super::auth::Anonymous,
}

impl KeyAuth {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let challenge = format!("apikey realm=\"{}\"", c.realm);
        let answer = |message: &str| super::auth::unauthorized(&challenge, message);
        Ok(KeyAuth {
            consumers: ctx.consumers.clone(),
            header_var: Var::Http(c.header.to_ascii_lowercase().replace('-', "_")),
            query_var: Var::Arg(c.query.clone()),
            missing: answer("Missing API key in request"),
            invalid: answer("Invalid API key in request"),
            anonymous: super::auth::Anonymous::new(c.anonymous_consumer, &challenge),
            header: c.header,
            query: c.query,
            hide_credentials: c.hide_credentials,
        })
    }
}

impl Phases for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn priority(&self) -> i32 {
        2500
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let (key, from_header) = match ctx.vars.var(&self.header_var) {
            Some(k) => (k, true),
            None => match ctx.vars.var(&self.query_var) {
                Some(k) => (k, false),
                None => {
                    return self
                        .anonymous
                        .or_refuse(ctx, &self.consumers, &self.missing)
                }
            },
        };
        let Some(who) = self.consumers.by_key(key) else {
            return self
                .anonymous
                .or_refuse(ctx, &self.consumers, &self.invalid);
        };
        super::auth::identify(ctx, who);
        if self.hide_credentials {
            if from_header {
                ctx.request.headers.remove(&self.header);
            } else {
                super::auth::hide_query_arg(ctx, &self.query);
            }
        }
        Flow::Continue
    }
}
