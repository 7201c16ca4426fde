//! The JSON Schemas objects are checked against (APISIX's `schema_def`, for what Shardgate
//! implements: `schemas/KIND.json`), compiled once, and the Admin API endpoints that show
//! them and the plugins' (`/apisix/admin/plugins/...`, `/apisix/admin/schema/...`).

use super::{AdminRequest, AdminResponse};
use crate::store::Kind;
use serde_json::{json, Value};

/// `GET /apisix/admin/plugins/list` and `/apisix/admin/plugins/{name}` (its schema).
pub(super) fn plugins(req: &AdminRequest, rest: &[&str]) -> AdminResponse {
    if req.method != "GET" {
        return AdminResponse::error(404, "not found");
    }
    match rest {
        ["list"] => AdminResponse::json(200, json!(crate::plugin::NAMES)),
        [name] => match crate::plugin::schema_text(name)
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
        {
            Some(schema) => AdminResponse::json(200, schema),
            None => AdminResponse::error(404, &format!("plugin not found: {name}")),
        },
        _ => AdminResponse::error(404, "not found"),
    }
}

/// The schema text of a resource by APISIX's singular name (`route`, `global_rule`).
pub(super) fn schema_text(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "route" => include_str!("schemas/route.json"),
        "service" => include_str!("schemas/service.json"),
        "upstream" => include_str!("schemas/upstream.json"),
        "global_rule" => include_str!("schemas/global_rule.json"),
        "plugin_config" => include_str!("schemas/plugin_config.json"),
        "consumer" => include_str!("schemas/consumer.json"),
        "consumer_group" => include_str!("schemas/consumer_group.json"),
        "credential" => include_str!("schemas/credential.json"),
        "plugin_metadata" => include_str!("schemas/plugin_metadata.json"),
        "ssl" => include_str!("schemas/ssl.json"),
        _ => return None,
    })
}

/// The JSON Schema of each kind (`schemas/KIND.json`: APISIX's `schema_def`, for what
/// Shardgate implements), compiled once.
fn schema(kind: Kind) -> Option<&'static crate::schema::Schema> {
    static SCHEMAS: std::sync::OnceLock<Vec<(Kind, crate::schema::Schema)>> =
        std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            let names = [
                (Kind::Routes, "route"),
                (Kind::Services, "service"),
                (Kind::Upstreams, "upstream"),
                (Kind::GlobalRules, "global_rule"),
                (Kind::PluginConfigs, "plugin_config"),
                (Kind::Consumers, "consumer"),
                (Kind::ConsumerGroups, "consumer_group"),
                (Kind::Credentials, "credential"),
                (Kind::PluginMetadata, "plugin_metadata"),
                (Kind::Ssls, "ssl"),
            ];
            names
                .into_iter()
                .filter_map(|(k, name)| {
                    let v = serde_json::from_str(schema_text(name)?).ok()?;
                    // Every schema compiles (a unit test checks).
                    Some((k, crate::schema::Schema::compile(&v).ok()?))
                })
                .collect()
        })
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, s)| s)
}

/// Checks an object that arrived other than through the API (from etcd) against its kind's
/// schema; the message names the field.
pub fn check_object(kind: Kind, value: &Value) -> Result<(), String> {
    if let Some(s) = schema(kind) {
        s.check(value).map_err(|e| e.to_string())?;
    }
    if kind == Kind::Ssls {
        super::ssls::check(value)?;
    }
    Ok(())
}

/// Checks an object against its kind's schema: APISIX's `invalid configuration: ...`.
pub(super) fn check(kind: Kind, value: &Value) -> Result<(), AdminResponse> {
    if let Some(s) = schema(kind) {
        s.check(value)
            .map_err(|e| AdminResponse::error(400, &format!("invalid configuration: {e}")))?;
    }
    if kind == Kind::Ssls {
        super::ssls::check_new(value).map_err(|e| AdminResponse::error(400, &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_resource_schema_compiles() {
        for kind in crate::store::Kind::ALL {
            assert!(super::schema(kind).is_some(), "{kind:?}");
        }
    }
}
