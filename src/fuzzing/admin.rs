//! The Admin API's handling of a write (`admin::api::decide`: PUT, POST and PATCH bodies, on
//! every resource path), then what the control plane does with an accepted change (compile
//! the store as it would be). Properties: every answer is a defined status with a JSON body
//! (an `error_msg` or `message` on refusals); an accepted write changes the store and
//! nothing is removed by it; and a PUT or PATCH applied twice leaves the object as the first
//! left it (RFC 7396 merge patches are idempotent).

use super::config::{base_store, compile, use_like_a_worker};
use crate::admin::api::{decide, Decision};
use crate::admin::{AdminRequest, AdminResponse};
use crate::config::GatewayConfig;
use crate::snapshot::CompileCache;
use crate::store::{Kind, Objects};
use serde_json::Value;

const METHODS: [&str; 3] = ["PUT", "POST", "PATCH"];

/// Where the body goes, `{}` standing for the kind's path segment.
const PATHS: [&str; 8] = [
    "/apisix/admin/{}",
    "/apisix/admin/{}/1",
    "/apisix/admin/{}/fz",
    "/apisix/admin/{}/1/upstream",
    "/apisix/admin/{}/1/plugins/proxy-rewrite",
    "/apisix/admin/{}/bad id",
    "/apisix/admin/consumers/jack/credentials/c1",
    "/apisix/admin/consumers/jack",
];

/// Target `admin_body`: the first byte picks the method and the path, the second the kind,
/// the rest is the request body.
pub fn admin_body(data: &[u8]) {
    let [a, b, body @ ..] = data else {
        return;
    };
    let kind = Kind::ALL[*b as usize % Kind::ALL.len()];
    let req = AdminRequest {
        method: METHODS[*a as usize % 3].to_string(),
        path: PATHS[(*a as usize / 3) % PATHS.len()].replace("{}", kind.name()),
        args: Vec::new(),
        body: body.to_vec(),
        who: "fuzz".into(),
    };
    let objects = base_store();
    match decide(&objects, &req, Ok(()), 0) {
        Decision::Reply(r) => answered(&r),
        Decision::Write {
            objects: next,
            reply,
            what,
        } => {
            assert!(!what.is_empty());
            written(&objects, &next, &reply);
            compiled(&next);
            if req.method != "POST" {
                again(&next, &req);
            }
        }
    }
}

/// A refusal (or a read): a status APISIX answers with, and a JSON object saying why.
fn answered(r: &AdminResponse) {
    assert!(
        matches!(r.status, 200 | 400 | 404 | 405),
        "status {}",
        r.status
    );
    let v: Value = serde_json::from_slice(&r.body).expect("the answer is JSON");
    if r.status >= 400 {
        let why = v.get("error_msg").or_else(|| v.get("message"));
        assert!(
            why.and_then(Value::as_str).is_some_and(|s| !s.is_empty()),
            "a refusal without a reason: {v}"
        );
    }
}

/// An accepted write: 200 or 201 with the stored object, and only additions or
/// replacements in the store.
fn written(before: &Objects, next: &Objects, reply: &AdminResponse) {
    assert!(matches!(reply.status, 200 | 201), "status {}", reply.status);
    let v: Value = serde_json::from_slice(&reply.body).expect("the answer is JSON");
    let key = v.get("key").and_then(Value::as_str).unwrap_or_default();
    assert!(key.starts_with("/apisix/"), "key {key:?}");
    let changes = before.changes_to(next);
    assert!(!changes.is_empty(), "a write that changes nothing");
    for (kind, id, object) in changes {
        let object = object.unwrap_or_else(|| panic!("a write removed {kind:?} {id}"));
        assert!(object.value.is_object());
    }
}

/// What the control plane does next: the store as it would be, compiled.
fn compiled(next: &Objects) {
    let Ok(resources) = next.resources() else {
        return;
    };
    if let Ok(s) = compile(
        &GatewayConfig::default(),
        &resources,
        &mut CompileCache::default(),
    ) {
        use_like_a_worker(&s);
    }
}

/// The same PUT or PATCH on the store it made: accepted again, the objects unchanged.
fn again(next: &Objects, req: &AdminRequest) {
    match decide(next, req, Ok(()), 0) {
        Decision::Write {
            objects: twice,
            reply,
            ..
        } => {
            assert_eq!(reply.status, 200, "the second write created something");
            for (kind, id, object) in next.changes_to(&twice) {
                let now = object.map(|o| o.value.clone());
                let then = next.get(kind, &id).map(|o| o.value.clone());
                assert_eq!(
                    now, then,
                    "{kind:?} {id} changed on a repeated {}",
                    req.method
                );
            }
        }
        Decision::Reply(r) => panic!(
            "a repeated {} {} was refused: {}",
            req.method,
            req.path,
            String::from_utf8_lossy(&r.body)
        ),
    }
}
