//! APISIX's key layout in etcd: `{prefix}/routes/{id}`, `{prefix}/upstreams/{id}`, ...,
//! consumers by username, credentials under their consumer
//! (`{prefix}/consumers/{username}/credentials/{id}`); the value is the object's JSON with
//! its `id`, `create_time` and `update_time`. Keys of kinds Shardgate does not serve (yet)
//! are skipped.

use super::client::Kv;
use crate::store::{Kind, Object};
use serde_json::Value;
use std::sync::Arc;

/// The key of an object.
pub fn key(prefix: &str, kind: Kind, id: &str) -> String {
    format!("{prefix}/{}/{id}", kind.key_prefix())
}

/// What a key names: `None` for keys outside the layout (`gen_id`, APISIX's own
/// bookkeeping, kinds not served).
pub fn parse_key(prefix: &str, key: &str) -> Option<(Kind, String)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (kind, id) = rest.split_once('/')?;
    if id.is_empty() {
        return None;
    }
    if kind == "consumers" {
        return match id.split('/').collect::<Vec<_>>()[..] {
            [_] => Some((Kind::Consumers, id.to_string())),
            [user, "credentials", cred] if !user.is_empty() && !cred.is_empty() => {
                Some((Kind::Credentials, id.to_string()))
            }
            _ => None,
        };
    }
    let kind = Kind::parse(kind).filter(|k| *k != Kind::Credentials)?;
    (!id.contains('/')).then(|| (kind, id.to_string()))
}

/// The value written for an object: its JSON with the times, and for a credential its own id
/// (APISIX's form), not the store's `{username}/credentials/{id}`.
pub fn encode(kind: Kind, object: &Object) -> Vec<u8> {
    let mut v = object.shown();
    if kind == Kind::Credentials {
        if let Some(obj) = v.as_object_mut() {
            let short = obj
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| id.rsplit('/').next())
                .map(str::to_string);
            if let Some(short) = short {
                obj.insert("id".into(), Value::String(short));
            }
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// An object read from etcd: the key's id wins over the value's, the times move out of the
/// value, and the indexes are etcd's revisions. The value must be a JSON object.
pub fn decode(kind: Kind, id: &str, kv: &Kv) -> Result<Object, String> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    let time = |t: Option<Value>| t.and_then(|t| t.as_i64()).unwrap_or(0);
    let create_time = time(obj.remove("create_time"));
    let update_time = time(obj.remove("update_time"));
    obj.insert("id".into(), Value::String(id.to_string()));
    if kind == Kind::Consumers {
        obj.entry("username")
            .or_insert_with(|| Value::String(id.to_string()));
    }
    Ok(Object::new(
        kind,
        Arc::new(v),
        (create_time, update_time),
        (
            kv.create_revision.max(0) as u64,
            kv.mod_revision.max(0) as u64,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let p = "/apisix";
        assert_eq!(
            parse_key(p, "/apisix/routes/1"),
            Some((Kind::Routes, "1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/consumers/jack"),
            Some((Kind::Consumers, "jack".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/consumers/jack/credentials/k1"),
            Some((Kind::Credentials, "jack/credentials/k1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/ssls/1"),
            Some((Kind::Ssls, "1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/global_rules/g"),
            Some((Kind::GlobalRules, "g".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/consumer_groups/gold"),
            Some((Kind::ConsumerGroups, "gold".into()))
        );
        for skipped in [
            "/apisix/gen_id",
            "/apisix/routes",
            "/apisix/routes/",
            "/apisix/credentials/1",
            "/apisix/data_plane/server_info/x",
            "/apisixx/routes/1",
            "/apisix/routes/1/x",
        ] {
            assert_eq!(parse_key(p, skipped), None, "{skipped}");
        }
        assert_eq!(
            key(p, Kind::Credentials, "jack/credentials/k1"),
            "/apisix/consumers/jack/credentials/k1"
        );
    }

    #[test]
    fn values_round_trip() {
        let kv = Kv {
            key: "/apisix/consumers/jack/credentials/k1".into(),
            value: br#"{"id":"k1","plugins":{},"create_time":10,"update_time":20}"#.to_vec(),
            create_revision: 5,
            mod_revision: 7,
        };
        let o = decode(Kind::Credentials, "jack/credentials/k1", &kv).unwrap();
        assert_eq!(
            (
                o.create_time,
                o.update_time,
                o.created_index,
                o.modified_index
            ),
            (10, 20, 5, 7)
        );
        assert_eq!(o.value["id"], "jack/credentials/k1");
        let back: Value = serde_json::from_slice(&encode(Kind::Credentials, &o)).unwrap();
        assert_eq!(back["id"], "k1");
        assert_eq!(back["create_time"], 10);
        let bad = Kv {
            value: b"[1]".to_vec(),
            ..kv
        };
        assert!(decode(Kind::Routes, "1", &bad).is_err());
    }
}
