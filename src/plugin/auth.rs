//! What the authentication plugins share: their 401 answer, and the consumer headers they
//! send upstream once a request is identified.

use super::{Answer, HeaderEdits, RequestCtx};
use crate::consumer::Identity;
use crate::vars::Var;

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
