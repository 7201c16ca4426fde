//! What each Admin API request means, as APISIX v3 answers it: list and fetch, PUT (201 when
//! created, 200 when replaced, `create_time` kept), POST (a generated id), PATCH (a merge
//! patch, or a replacement of the sub-tree a longer path names), DELETE (refused while
//! another object refers to it, unless `?force=true`); the plugin list and the schemas are
//! served from `schemas.rs`.
//!
//! A request that changes something yields the objects as they would be ([`Decision::Write`]);
//! the control plane compiles them, and only if they compile stores, publishes and answers.

use super::schemas::{check, plugins, schema_text};
use super::{AdminRequest, AdminResponse};
pub(super) use crate::config::valid_id;
use crate::http::decode_form_component;
use crate::store::{Kind, Object, Objects};
use serde_json::{json, Value};

/// What a request leads to.
pub enum Decision {
    /// Answer now; nothing changes.
    Reply(AdminResponse),
    /// Try these objects; if they compile, answer with the reply.
    Write {
        objects: Box<Objects>,
        reply: AdminResponse,
        /// The audit line's summary (`PUT /apisix/routes/1`).
        what: String,
    },
}

const PREFIX: &str = "/apisix/admin/";

/// Decides `req` against the current `objects`. `writable` is `Err(why)` when the provider
/// takes no writes.
pub fn decide(
    objects: &Objects,
    req: &AdminRequest,
    writable: Result<(), &str>,
    now: i64,
) -> Decision {
    let Some(rest) = req.path.strip_prefix(PREFIX) else {
        return Decision::Reply(AdminResponse::error(404, "not found"));
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segments[0] == "plugins" {
        return Decision::Reply(plugins(req, &segments[1..]));
    }
    // `/apisix/admin/schema/plugins/NAME`: the same schema as `/plugins/NAME`;
    // `/apisix/admin/schema/route` (service, upstream, ...): a resource's schema.
    if segments[0] == "schema" {
        return Decision::Reply(match &segments[1..] {
            ["plugins", name] => plugins(req, &[name]),
            [resource] if req.method == "GET" => match schema_text(resource) {
                Some(t) => AdminResponse::json(200, serde_json::from_str(t).unwrap_or_default()),
                None => AdminResponse::error(404, &format!("schema not found: {resource}")),
            },
            _ => AdminResponse::error(404, "not found"),
        });
    }
    let Some(kind) = Kind::parse(segments[0]) else {
        return Decision::Reply(AdminResponse::error(
            404,
            &format!("Unsupported resource type: {}", segments[0]),
        ));
    };
    if kind == Kind::Credentials {
        return Decision::Reply(AdminResponse::error(
            404,
            "Unsupported resource type: credentials",
        ));
    }
    if kind == Kind::Consumers {
        if let Some(decision) = super::consumers::decide(objects, req, &segments, writable, now) {
            return decision;
        }
    }
    let id = segments.get(1).copied().filter(|s| !s.is_empty());
    let sub = &segments[2.min(segments.len())..];
    if kind == Kind::PluginMetadata {
        if let Some(refused) = plugin_metadata(req, id) {
            return Decision::Reply(refused);
        }
    }
    if kind == Kind::ConsumerGroups && req.method == "POST" {
        // APISIX: a group is created by PUT with its id.
        return Decision::Reply(AdminResponse::error(
            405,
            "not supported `POST` method for consumer group",
        ));
    }
    if let Some(id) = id {
        if !valid_id(id) {
            return Decision::Reply(AdminResponse::error(
                400,
                "invalid configuration: property \"id\" validation failed: object matches none of the required",
            ));
        }
    }
    match req.method.as_str() {
        "GET" => Decision::Reply(match id {
            None => list(objects, kind, req),
            Some(id) => match objects.get(kind, id) {
                Some(o) => AdminResponse::json(200, item(kind, id, o)),
                None => AdminResponse::json(404, json!({"message": "Key not found"})),
            },
        }),
        "PUT" | "POST" | "PATCH" | "DELETE" => {
            if let Err(why) = writable {
                return Decision::Reply(AdminResponse::error(400, why));
            }
            let result = match req.method.as_str() {
                "PUT" => put(objects, kind, id, req, now),
                "POST" => post(objects, kind, id, req, now),
                "PATCH" => patch(objects, kind, id, sub, req, now),
                _ => delete(objects, kind, id, req),
            };
            match result {
                Ok((next, reply)) => Decision::Write {
                    objects: Box::new(next),
                    reply,
                    what: format!(
                        "{} /apisix/{}/{}",
                        req.method,
                        kind.name(),
                        id.unwrap_or("")
                    ),
                },
                Err(reply) => Decision::Reply(reply),
            }
        }
        _ => Decision::Reply(AdminResponse::error(404, "not found")),
    }
}

type Changed = Result<(Objects, AdminResponse), AdminResponse>;

/// What APISIX refuses for `/plugin_metadata/{plugin_name}` before the common handling:
/// POST and PATCH, a missing name, a plugin it does not have.
fn plugin_metadata(req: &AdminRequest, name: Option<&str>) -> Option<AdminResponse> {
    let method = req.method.as_str();
    match (method, name) {
        ("POST" | "PATCH", _) => Some(AdminResponse::error(
            405,
            &format!("not supported `{method}` method for plugin_metadata"),
        )),
        ("PUT" | "DELETE", None) => Some(AdminResponse::error(400, "missing plugin name")),
        ("PUT", Some(n)) if !crate::plugin::NAMES.contains(&n) => {
            Some(AdminResponse::error(400, "invalid plugin name"))
        }
        _ => None,
    }
}

pub(super) fn key(kind: Kind, id: &str) -> String {
    format!("/apisix/{}/{id}", kind.key_prefix())
}

pub(super) fn item(kind: Kind, id: &str, o: &Object) -> Value {
    json!({
        "key": key(kind, id),
        "value": o.shown(),
        "createdIndex": o.created_index,
        "modifiedIndex": o.modified_index,
    })
}

/// A list, filtered (`name` and `uri` as regexes, `label` as `key` or `key:value`,
/// `filter=service_id=1`) and paged (`page` from 1, `page_size` 10 to 500) as APISIX does;
/// `total` counts what the filters kept.
fn list(objects: &Objects, kind: Kind, req: &AdminRequest) -> AdminResponse {
    let regex = |name: &str| -> Result<Option<regex::Regex>, AdminResponse> {
        match req.arg(name) {
            None => Ok(None),
            Some(p) => regex::Regex::new(&decode_form_component(p.as_bytes()))
                .map(Some)
                .map_err(|e| AdminResponse::error(400, &format!("invalid {name} filter: {e}"))),
        }
    };
    let name = match regex("name") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let uri = match regex("uri") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let label = req
        .arg("label")
        .map(|l| decode_form_component(l.as_bytes()));
    let filter = req
        .arg("filter")
        .map(|f| decode_form_component(f.as_bytes()));
    let keep = |v: &Value| -> bool {
        let text = |f: &str| v.get(f).and_then(Value::as_str);
        if let Some(re) = &name {
            if !text("name").is_some_and(|n| re.is_match(n)) {
                return false;
            }
        }
        if let Some(re) = &uri {
            let uris = v.get("uris").and_then(Value::as_array);
            let any = text("uri").is_some_and(|u| re.is_match(u))
                || uris.is_some_and(|l| l.iter().filter_map(Value::as_str).any(|u| re.is_match(u)));
            if !any {
                return false;
            }
        }
        if let Some(l) = &label {
            let labels = v.get("labels");
            let ok = match l.split_once(':') {
                Some((k, want)) => {
                    labels.and_then(|m| m.get(k)).and_then(Value::as_str) == Some(want)
                }
                None => labels.and_then(|m| m.get(l.as_str())).is_some(),
            };
            if !ok {
                return false;
            }
        }
        if let Some((field, want)) = filter.as_deref().and_then(|f| f.split_once('=')) {
            let have = match v.get(field) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return false,
            };
            if have != want {
                return false;
            }
        }
        true
    };
    let all: Vec<Value> = objects
        .list(kind)
        .into_iter()
        .filter(|(_, o)| keep(&o.value))
        .map(|(id, o)| item(kind, id, o))
        .collect();
    let total = all.len();
    let paged = req.arg("page").is_some() || req.arg("page_size").is_some();
    let list = if paged {
        let page_size = match req.arg("page_size").map(str::parse::<usize>) {
            None => 10,
            Some(Ok(n)) if (10..=500).contains(&n) => n,
            Some(_) => return AdminResponse::error(400, "page_size must be between 10 and 500"),
        };
        let page = match req.arg("page").map(str::parse::<usize>) {
            None => 1,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => return AdminResponse::error(400, "page must be at least 1"),
        };
        all.into_iter()
            .skip((page - 1).saturating_mul(page_size))
            .take(page_size)
            .collect()
    } else {
        all
    };
    AdminResponse::json(200, json!({"total": total, "list": list}))
}

/// The request body as a JSON object.
pub(super) fn body(req: &AdminRequest) -> Result<Value, AdminResponse> {
    if req.body.is_empty() {
        return Err(AdminResponse::error(400, "missing configurations"));
    }
    let v: Value = serde_json::from_slice(&req.body).map_err(|e| {
        AdminResponse::json(
            400,
            json!({
                "error_msg": format!("invalid request body: {e}"),
                "req_body": String::from_utf8_lossy(&req.body),
            }),
        )
    })?;
    if !v.is_object() {
        return Err(AdminResponse::error(
            400,
            "invalid configuration: wrong type: expected object",
        ));
    }
    Ok(v)
}

/// The body's `id` as a string (APISIX accepts strings and integers).
fn body_id(v: &Value) -> Option<String> {
    match v.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn stored(kind: Kind, id: &str, objects: &Objects, status: u16) -> AdminResponse {
    let value = objects.get(kind, id).map_or(Value::Null, Object::shown);
    AdminResponse::json(status, json!({"key": key(kind, id), "value": value}))
}

fn put(objects: &Objects, kind: Kind, id: Option<&str>, req: &AdminRequest, now: i64) -> Changed {
    let v = body(req)?;
    let id = match (id, body_id(&v)) {
        (Some(url), Some(b)) if url != b => {
            return Err(AdminResponse::error(
                400,
                &format!("wrong {} id", kind.singular()),
            ))
        }
        (Some(url), _) => url.to_string(),
        (None, Some(b)) => b,
        (None, None) => {
            return Err(AdminResponse::error(
                400,
                &format!("missing {} id", kind.singular()),
            ))
        }
    };
    if !valid_id(&id) {
        return Err(AdminResponse::error(
            400,
            "invalid configuration: property \"id\" validation failed: object matches none of the required",
        ));
    }
    check(kind, &v)?;
    let mut next = objects.clone();
    let created = next.put(kind, &id, at_rest(kind, v), now);
    let reply = stored(kind, &id, &next, if created { 201 } else { 200 });
    Ok((next, reply))
}

fn post(objects: &Objects, kind: Kind, id: Option<&str>, req: &AdminRequest, now: i64) -> Changed {
    let v = body(req)?;
    if id.is_some() || v.get("id").is_some() {
        return Err(AdminResponse::error(
            400,
            &format!("wrong {} id, do not need it", kind.singular()),
        ));
    }
    check(kind, &v)?;
    let mut next = objects.clone();
    let id = next.generate_id();
    next.put(kind, &id, at_rest(kind, v), now);
    let reply = stored(kind, &id, &next, 201);
    Ok((next, reply))
}

fn patch(
    objects: &Objects,
    kind: Kind,
    id: Option<&str>,
    sub: &[&str],
    req: &AdminRequest,
    now: i64,
) -> Changed {
    let Some(id) = id else {
        return Err(AdminResponse::error(
            400,
            &format!("missing {} id", kind.singular()),
        ));
    };
    let Some(current) = objects.get(kind, id) else {
        return Err(AdminResponse::json(
            404,
            json!({"message": "Key not found"}),
        ));
    };
    if req.body.is_empty() {
        return Err(AdminResponse::error(400, "missing configurations"));
    }
    let patch: Value = serde_json::from_slice(&req.body)
        .map_err(|e| AdminResponse::error(400, &format!("invalid request body: {e}")))?;
    let mut value = (*current.value).clone();
    if sub.is_empty() {
        if !patch.is_object() {
            return Err(AdminResponse::error(
                400,
                "invalid configuration: wrong type: expected object",
            ));
        }
        merge(&mut value, patch);
    } else {
        // `/routes/1/upstream/nodes`: the sub-tree there is replaced by the body.
        let mut at = &mut value;
        for s in sub {
            if !at.is_object() {
                *at = json!({});
            }
            at = at
                .as_object_mut()
                .expect("made an object above")
                .entry(s.to_string())
                .or_insert(Value::Null);
        }
        *at = patch;
    }
    if body_id(&value).as_deref().is_some_and(|b| b != id) {
        return Err(AdminResponse::error(
            400,
            &format!("wrong {} id", kind.singular()),
        ));
    }
    check(kind, &value)?;
    let mut next = objects.clone();
    next.put(kind, id, at_rest(kind, value), now);
    let reply = stored(kind, id, &next, 200);
    Ok((next, reply))
}

/// RFC 7396 merge patch: objects merged recursively, anything else replaced, `null` removes.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

fn delete(objects: &Objects, kind: Kind, id: Option<&str>, req: &AdminRequest) -> Changed {
    let Some(id) = id else {
        return Err(AdminResponse::error(
            400,
            &format!("missing {} id", kind.singular()),
        ));
    };
    if objects.get(kind, id).is_none() {
        return Err(AdminResponse::json(
            404,
            json!({"message": "Key not found"}),
        ));
    }
    if req.arg("force") != Some("true") {
        if let Some(user) = used_by(objects, kind, id) {
            return Err(AdminResponse::error(
                400,
                &format!(
                    "can not delete this {}, {user} is still using it now",
                    kind.singular()
                ),
            ));
        }
    }
    let mut next = objects.clone();
    next.delete(kind, id);
    Ok((
        next,
        AdminResponse::json(200, json!({"deleted": id, "key": key(kind, id)})),
    ))
}

/// The first object that refers to `kind`/`id` (`route [1]`), as APISIX names it.
fn used_by(objects: &Objects, kind: Kind, id: &str) -> Option<String> {
    if kind == Kind::ConsumerGroups {
        let member = objects.list(Kind::Consumers).into_iter().find(|(_, o)| {
            match o.value.get("group_id") {
                Some(Value::String(s)) => s == id,
                Some(Value::Number(n)) => n.to_string() == id,
                _ => false,
            }
        });
        return member.map(|(user, _)| format!("consumer [{user}]"));
    }
    let field = match kind {
        Kind::Upstreams => "upstream_id",
        Kind::Services => "service_id",
        Kind::PluginConfigs => "plugin_config_id",
        _ => return None,
    };
    let refers = |v: &Value| match v.get(field) {
        Some(Value::String(s)) => s == id,
        Some(Value::Number(n)) => n.to_string() == id,
        _ => false,
    };
    for (user_kind, label) in [(Kind::Routes, "route"), (Kind::Services, "service")] {
        for (uid, o) in objects.list(user_kind) {
            if refers(&o.value) {
                return Some(format!("{label} [{uid}]"));
            }
        }
    }
    if kind == Kind::Upstreams {
        // traffic-split's weighted upstreams name upstreams too.
        for (user_kind, label) in [
            (Kind::Routes, "plugin in route"),
            (Kind::Services, "plugin in service"),
            (Kind::PluginConfigs, "plugin in plugin_config"),
            (Kind::GlobalRules, "plugin in global_rules"),
        ] {
            for (uid, o) in objects.list(user_kind) {
                let rules = o.value.pointer("/plugins/traffic-split/rules");
                let named = rules.and_then(Value::as_array).is_some_and(|rules| {
                    rules.iter().any(|r| {
                        r.get("weighted_upstreams")
                            .and_then(Value::as_array)
                            .is_some_and(|ws| ws.iter().any(&refers))
                    })
                });
                if named {
                    return Some(format!("{label} [{uid}]"));
                }
            }
        }
    }
    None
}

/// What a kind changes in an object before it is stored: an SSL object's keys are
/// encrypted, and so are plugins' secrets (APISIX's `encrypt_fields`).
pub(super) fn at_rest(kind: Kind, mut value: Value) -> Value {
    if kind == Kind::Ssls {
        super::ssls::encrypt_keys(&mut value);
    }
    super::consumers::encrypt_plugin_secrets(&mut value);
    value
}
