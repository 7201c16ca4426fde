//! What the authentication plugins share: their 401 answer, and the consumer headers they
//! send upstream once a request is identified.

use super::{Answer, HeaderEdits};
use crate::consumer::Identity;

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
