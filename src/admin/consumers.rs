//! Consumers in the Admin API (APISIX 3): keyed by `username`, no POST or PATCH, their
//! credentials under `/consumers/{username}/credentials/{id}`, and deleting a consumer
//! deletes its credentials.

use super::api::{body, item, key, stored, valid_id, Decision};
use super::schemas::check;
use super::{AdminRequest, AdminResponse};
use crate::store::{Kind, Objects};
use serde_json::{json, Value};

/// What consumers do differently (APISIX 3): keyed by `username`, no POST or PATCH, their
/// credentials under `/consumers/{username}/credentials/{id}`, and deleting a consumer
/// deletes its credentials. `None`: the common handling applies (GET).
pub(super) fn decide(
    objects: &Objects,
    req: &AdminRequest,
    segments: &[&str],
    writable: Result<(), &str>,
    now: i64,
) -> Option<Decision> {
    let username = segments.get(1).copied().filter(|s| !s.is_empty());
    if segments.get(2) == Some(&"credentials") {
        let username = username?;
        return Some(credentials(
            objects,
            req,
            username,
            segments.get(3).copied(),
            writable,
            now,
        ));
    }
    let method = req.method.as_str();
    if method == "GET" {
        return None;
    }
    if matches!(method, "POST" | "PATCH") {
        return Some(Decision::Reply(AdminResponse::error(
            405,
            &format!("not supported `{method}` method for consumer"),
        )));
    }
    if let Err(why) = writable {
        return Some(Decision::Reply(AdminResponse::error(400, why)));
    }
    let result = match method {
        "PUT" => body(req).and_then(|v| {
            let name = v
                .get("username")
                .and_then(Value::as_str)
                .map(str::to_string);
            let Some(name) = name else {
                return Err(AdminResponse::error(
                    400,
                    "invalid configuration: property \"username\" is required",
                ));
            };
            if username.is_some_and(|u| u != name) {
                return Err(AdminResponse::error(400, "wrong username"));
            }
            check(Kind::Consumers, &v)?;
            let mut next = objects.clone();
            let created = next.put(
                Kind::Consumers,
                &name,
                super::api::at_rest(Kind::Consumers, v),
                now,
            );
            let reply = stored(
                Kind::Consumers,
                &name,
                &next,
                if created { 201 } else { 200 },
            );
            Ok((next, reply))
        }),
        "DELETE" => match username {
            None => Err(AdminResponse::error(400, "missing consumer username")),
            Some(u) if objects.get(Kind::Consumers, u).is_none() => Err(AdminResponse::json(
                404,
                json!({"message": "Key not found"}),
            )),
            Some(u) => {
                let mut next = objects.clone();
                next.delete(Kind::Consumers, u);
                let prefix = format!("{u}/credentials/");
                let owned: Vec<String> = objects
                    .list(Kind::Credentials)
                    .into_iter()
                    .filter(|(id, _)| id.starts_with(&prefix))
                    .map(|(id, _)| id.to_string())
                    .collect();
                for id in owned {
                    next.delete(Kind::Credentials, &id);
                }
                Ok((
                    next,
                    AdminResponse::json(200, json!({"deleted": u, "key": key(Kind::Consumers, u)})),
                ))
            }
        },
        _ => return Some(Decision::Reply(AdminResponse::error(404, "not found"))),
    };
    Some(match result {
        Ok((objects, reply)) => Decision::Write {
            objects: Box::new(objects),
            reply,
            what: format!("{method} /apisix/consumers/{}", username.unwrap_or("")),
        },
        Err(reply) => Decision::Reply(reply),
    })
}

/// `/consumers/{username}/credentials[/{id}]`.
fn credentials(
    objects: &Objects,
    req: &AdminRequest,
    username: &str,
    id: Option<&str>,
    writable: Result<(), &str>,
    now: i64,
) -> Decision {
    let kind = Kind::Credentials;
    let full = |id: &str| format!("{username}/credentials/{id}");
    if objects.get(Kind::Consumers, username).is_none() {
        return Decision::Reply(AdminResponse::json(
            404,
            json!({"message": "Key not found"}),
        ));
    }
    let method = req.method.as_str();
    match (method, id) {
        ("GET", None) => {
            let prefix = full("");
            let list: Vec<Value> = objects
                .list(kind)
                .into_iter()
                .filter(|(cid, _)| cid.starts_with(&prefix))
                .map(|(cid, o)| item(kind, cid, o))
                .collect();
            Decision::Reply(AdminResponse::json(
                200,
                json!({"total": list.len(), "list": list}),
            ))
        }
        ("GET", Some(cid)) => Decision::Reply(match objects.get(kind, &full(cid)) {
            Some(o) => AdminResponse::json(200, item(kind, &full(cid), o)),
            None => AdminResponse::json(404, json!({"message": "Key not found"})),
        }),
        ("POST" | "PATCH", _) => Decision::Reply(AdminResponse::error(
            405,
            &format!("not supported `{method}` method for credential"),
        )),
        ("PUT" | "DELETE", None) => {
            Decision::Reply(AdminResponse::error(400, "missing credential id"))
        }
        ("PUT" | "DELETE", Some(cid)) => {
            if let Err(why) = writable {
                return Decision::Reply(AdminResponse::error(400, why));
            }
            if !valid_id(cid) {
                return Decision::Reply(AdminResponse::error(
                    400,
                    "invalid configuration: property \"id\" validation failed: object matches none of the required",
                ));
            }
            let id = full(cid);
            let mut next = objects.clone();
            let reply = if method == "PUT" {
                let mut v = match body(req) {
                    Ok(v) => v,
                    Err(r) => return Decision::Reply(r),
                };
                if let Value::Object(obj) = &mut v {
                    obj.remove("id");
                }
                if let Err(r) = check(kind, &v) {
                    return Decision::Reply(r);
                }
                let created = next.put(kind, &id, super::api::at_rest(kind, v), now);
                stored(kind, &id, &next, if created { 201 } else { 200 })
            } else {
                if next.delete(kind, &id).is_none() {
                    return Decision::Reply(AdminResponse::json(
                        404,
                        json!({"message": "Key not found"}),
                    ));
                }
                AdminResponse::json(200, json!({"deleted": cid, "key": key(kind, &id)}))
            };
            Decision::Write {
                objects: Box::new(next),
                reply,
                what: format!("{method} /apisix/consumers/{id}"),
            }
        }
        _ => Decision::Reply(AdminResponse::error(404, "not found")),
    }
}

/// Plugin fields APISIX encrypts at rest when `data_encryption.enable_encrypt_fields` is on
/// (each plugin's `encrypt_fields`): (plugin, field). The data plane decrypts them when it
/// compiles (`consumer::secret`), and takes a value that does not decrypt as written.
const ENCRYPTED_FIELDS: &[(&str, &str)] = &[
    ("key-auth", "key"),
    ("basic-auth", "password"),
    ("jwt-auth", "secret"),
    ("limit-count", "redis_password"),
    ("limit-req", "redis_password"),
    ("limit-conn", "redis_password"),
    ("http-logger", "auth_header"),
];

/// Encrypts the secrets among an object's `plugins` before it is stored.
pub(super) fn encrypt_plugin_secrets(value: &mut Value) {
    let Some(Value::Object(plugins)) = value.get_mut("plugins") else {
        return;
    };
    for (plugin, field) in ENCRYPTED_FIELDS {
        if let Some(Value::String(s)) = plugins.get_mut(*plugin).and_then(|p| p.get_mut(*field)) {
            *s = crate::data_encryption::encrypt_text(s);
        }
    }
}
