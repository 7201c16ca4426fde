//! `basic-auth` (APISIX priority 2520, rewrite phase): the request names its consumer with
//! `Authorization: Basic base64(user:password)` (RFC 7617), checked against the consumers'
//! `basic-auth = { username, password }` credentials (`consumer.rs`: the password by digest,
//! an unknown user timed like a wrong password). No header: 401 `Missing authorization in
//! request`; a malformed one: `Invalid authorization in request`; an unknown user or a wrong
//! password, the same answer: `Invalid user authorization`; all with `WWW-Authenticate: Basic
//! realm="basic"`. A match records the consumer and sends the consumer headers upstream as
//! key-auth does; `hide_credentials` removes `Authorization`.
//!
//! Unlike APISIX, the password is everything after the first `:` as sent (APISIX drops
//! whitespace and cuts at a second `:`, so such passwords never match there).

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::consumer::Consumers;
use crate::vars::Var;
use base64::Engine;
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;

fn realm() -> String {
    "basic".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

pub struct BasicAuth {
    consumers: Arc<Consumers>,
    /// `http_authorization`, made once.
    authorization: Var,
    hide_credentials: bool,
    missing: Answer,
    malformed: Answer,
    refused: Answer,
    anonymous: super::auth::Anonymous,
}

/// Longest decoded `user:password` looked at (on the stack; longer is malformed).
const MAX_DECODED: usize = 1024;

impl BasicAuth {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let challenge = format!("Basic realm=\"{}\"", c.realm);
        let answer = |message: &str| super::auth::unauthorized(&challenge, message);
        Ok(BasicAuth {
            consumers: ctx.consumers.clone(),
            authorization: Var::Http("authorization".into()),
            hide_credentials: c.hide_credentials,
            missing: answer("Missing authorization in request"),
            malformed: answer("Invalid authorization in request"),
            refused: answer("Invalid user authorization"),
            anonymous: super::auth::Anonymous::new(c.anonymous_consumer, &challenge),
        })
    }
}

/// The `user:password` of a `Basic` credential, decoded into `out`.
fn decode<'a>(header: &[u8], out: &'a mut [u8; MAX_DECODED]) -> Option<(&'a [u8], &'a [u8])> {
    let scheme = header.get(..6)?;
    if !scheme[..5].eq_ignore_ascii_case(b"basic") || !scheme[5].is_ascii_whitespace() {
        return None;
    }
    let encoded = crate::http::trim(&header[6..]);
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(encoded, out)
        .ok()?;
    let decoded = &out[..n];
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((&decoded[..colon], &decoded[colon + 1..]))
}

impl Phases for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }

    fn priority(&self) -> i32 {
        2520
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Some(header) = ctx.vars.var(&self.authorization) else {
            return self
                .anonymous
                .or_refuse(ctx, &self.consumers, &self.missing);
        };
        let mut buf = [0u8; MAX_DECODED];
        let Some((user, password)) = decode(header, &mut buf) else {
            return self
                .anonymous
                .or_refuse(ctx, &self.consumers, &self.malformed);
        };
        let Some(who) = self.consumers.by_user(user, password) else {
            return self
                .anonymous
                .or_refuse(ctx, &self.consumers, &self.refused);
        };
        super::auth::identify(ctx, who);
        if self.hide_credentials {
            ctx.request.headers.remove("Authorization");
        }
        Flow::Continue
    }
}
