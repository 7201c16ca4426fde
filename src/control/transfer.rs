//! `shardgate export` and `shardgate import`: resources between the store (or the config
//! file) and a file in APISIX's JSON shape (`{"routes": [...], "upstreams": [...]}`, as its
//! standalone `apisix.json`), in APISIX's standalone `apisix.yaml` (the same shape, ending in
//! `#END`), or in TOML (`[[routes]]`, as `config.toml` writes them).
//!
//! Import replaces every resource in the store, after the new set compiled; run it with the
//! gateway stopped (a running gateway keeps the objects it has, and writes them back on its
//! next Admin API change). With the etcd provider it replaces every object under the prefix,
//! and running gateways apply it through their watch.

use super::compile;
use crate::dns::Names;
use crate::health::Registry as HealthRegistry;
use crate::resources::load_file;
use crate::store::{Kind, Objects, StoreFile};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// How exported resources are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

/// The store's objects (or, with the file provider, the file's) as text in `format`.
pub fn export(config: &Path, format: Format) -> Result<String, String> {
    let file = load_file(config).map_err(|e| e.to_string())?;
    let objects = match file.deployment.config_provider.as_str() {
        "store" => StoreFile::new(Path::new(&file.deployment.data_dir))
            .load()?
            .ok_or("the store is empty: start the gateway once, or import")?,
        "etcd" => super::etcd::EtcdSide::open(&file.deployment.etcd)?.1,
        _ => Objects::from_values(&file.values, 0).map_err(|e| e.to_string())?,
    };
    let mut out = Map::new();
    for kind in Kind::ALL {
        let list: Vec<Value> = objects
            .list(kind)
            .into_iter()
            .map(|(id, o)| {
                let mut v = (*o.value).clone();
                if let (Kind::Credentials, Value::Object(obj)) = (kind, &mut v) {
                    // `jack/credentials/c1` as config.toml writes it.
                    if let Some((consumer, cid)) = id.split_once("/credentials/") {
                        obj.insert("id".into(), cid.into());
                        obj.insert("consumer".into(), consumer.into());
                    }
                }
                without_nulls(v)
            })
            .collect();
        if !list.is_empty() {
            out.insert(kind.name().into(), Value::Array(list));
        }
    }
    let out = Value::Object(out);
    match format {
        Format::Toml => toml::to_string(&out).map_err(|e| format!("cannot write TOML: {e}")),
        Format::Yaml => serde_yaml_ng::to_string(&out)
            .map(|y| format!("{y}#END"))
            .map_err(|e| format!("cannot write YAML: {e}")),
        Format::Json => serde_json::to_string_pretty(&out).map_err(|e| e.to_string()),
    }
}

/// Replaces the store's resources with those of `source` (JSON; TOML or APISIX YAML by a
/// `.toml` or `.yaml` extension), once they compile with the config's `[gateway]`
/// settings. Returns how many objects were imported.
pub fn import(config: &Path, source: &Path) -> Result<usize, String> {
    let file = load_file(config).map_err(|e| e.to_string())?;
    if !matches!(file.deployment.config_provider.as_str(), "store" | "etcd") {
        return Err(format!(
            "{}: deployment.config_provider is \"{}\": import writes the store (\"store\") or etcd (\"etcd\")",
            config.display(),
            file.deployment.config_provider
        ));
    }
    let text = std::fs::read_to_string(source)
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let value: Value = match source.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
            serde_json::to_value(table).map_err(|e| e.to_string())?
        }
        Some("yaml" | "yml") => {
            // APISIX's standalone file ends with `#END` (a comment to YAML).
            serde_yaml_ng::from_str(&text).map_err(|e| format!("not YAML: {e}"))?
        }
        _ => serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?,
    };
    let mut values: BTreeMap<Kind, Vec<Value>> = BTreeMap::new();
    for kind in Kind::ALL {
        if let Some(list) = value.get(kind.name()).and_then(Value::as_array) {
            values.insert(kind, list.clone());
        }
    }
    let objects =
        Objects::from_values(&values, crate::log::now_secs()).map_err(|e| e.to_string())?;
    let resources = objects.resources().map_err(|e| e.to_string())?;
    compile(
        &file.gateway,
        &resources,
        &mut Names::default(),
        1,
        &mut HealthRegistry::default(),
        &mut crate::snapshot::CompileCache::default(),
    )
    .map_err(|e| e.to_string())?;
    let count = objects.count();
    if file.deployment.config_provider == "etcd" {
        // Every key under the prefix that the import does not have is deleted; gateways
        // watching the cluster apply the result as it is written.
        let (mut etcd, old) = super::etcd::EtcdSide::open(&file.deployment.etcd)?;
        etcd.write(&old, &objects).map_err(|e| e.to_string())?;
        return Ok(count);
    }
    StoreFile::new(Path::new(&file.deployment.data_dir)).save(&objects)?;
    Ok(count)
}

/// TOML has no null: fields set to null are left out (they mean "absent" anyway).
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}
