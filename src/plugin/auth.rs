//! What the authentication plugins share: their 401 answer, and the consumer headers they
//! send upstream once a request is identified.

use super::{Answer, Flow, HeaderEdits, RequestCtx};
use crate::consumer::{Consumers, Identity};
use crate::vars::Var;

/// `anonymous_consumer`: the consumer a request that fails authentication is taken as, when
/// the route names one (APISIX 3.11): it passes as that consumer, whose own plugins (a
/// stricter limit) then apply. A name no consumer has: 401 `Invalid user authorization`.
pub(super) struct Anonymous {
    name: Option<String>,
    unknown: Answer,
}

impl Anonymous {
    pub fn new(name: Option<String>, challenge: &str) -> Anonymous {
        Anonymous {
            name,
            unknown: unauthorized(challenge, "Invalid user authorization"),
        }
    }

    /// What a request that failed authentication (with `refusal`) gets.
    pub fn or_refuse(
        &self,
        ctx: &mut RequestCtx<'_>,
        consumers: &Consumers,
        refusal: &Answer,
    ) -> Flow {
        let Some(name) = &self.name else {
            return Flow::Respond(refusal.clone());
        };
        match consumers.by_name(name) {
            Some(who) => {
                identify(ctx, who);
                Flow::Continue
            }
            None => Flow::Respond(self.unknown.clone()),
        }
    }
}

/// Records who the request is (`consumer_name`, the consumer's plugins) and tells the upstream.
pub(super) fn identify(ctx: &mut RequestCtx<'_>, who: &std::sync::Arc<Identity>) {
    let _ = ctx.consumer.set(who.clone());
    send_identity(&mut ctx.request.headers, who);
}

/// APISIX's refusal: 401, `{"message": message}`, and the challenge in `WWW-Authenticate`.
pub(super) fn unauthorized(challenge: &str, message: &str) -> Answer {
    let body = serde_json::json!({ "message": message }).to_string();
    Answer::new(
        401,
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("WWW-Authenticate".into(), challenge.to_string()),
        ],
        body.into_bytes(),
    )
}

/// The consumer headers APISIX sends upstream after an authentication, replacing whatever
/// the client sent under those names.
pub(super) fn send_identity(headers: &mut HeaderEdits, who: &Identity) {
    headers.set("X-Consumer-Username", &who.username);
    match &who.credential {
        Some(id) => headers.set("X-Credential-Identifier", id),
        None => headers.remove("X-Credential-Identifier"),
    }
    match &who.custom_id {
        Some(id) => headers.set("X-Consumer-Custom-ID", id),
        None => headers.remove("X-Consumer-Custom-ID"),
    }
}

/// Removes query argument `name` from the request target the upstream sees
/// (`hide_credentials`).
pub(super) fn hide_query_arg(ctx: &mut RequestCtx<'_>, name: &str) {
    let target = match &ctx.request.uri {
        Some(uri) => uri.clone(),
        None => {
            let raw = ctx.vars.var(&Var::RequestUri).unwrap_or(b"/");
            String::from_utf8_lossy(raw).into_owned()
        }
    };
    let Some((path, query)) = target.split_once('?') else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    ctx.request.uri = Some(match kept.is_empty() {
        true => path.to_string(),
        false => format!("{path}?{}", kept.join("&")),
    });
}
