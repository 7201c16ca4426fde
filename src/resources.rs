//! Resources: the objects requests are served with (upstreams, services, routes, global
//! rules, plugin configs, consumers and their groups), kept apart from the process settings of `[gateway]`. Resources are
//! reloadable: a change is compiled into a new snapshot and swapped in without a restart.
//! Process settings (listeners, workers, io_uring, the control listener, the access log
//! target) are read once at start; a changed one is reported and waits for a restart.
//!
//! The objects being served are held by the control plane in the store (`store/`, APISIX's
//! JSON by kind and id). Providers feed it: the file provider (`config.toml`, at start, on
//! SIGHUP or when the file changes) replaces them all at once; the Admin API changes one
//! object at a time (with `config_provider = "store"`); with etcd, the watch brings what
//! changed in the cluster. A change reaches the store only after it compiled: the store
//! always holds what the workers serve (with etcd, what the cluster holds; the workers serve
//! the newest revision that compiled).

use crate::config::{
    AdminConfig, Config, ConfigError, ConsumerConfig, ConsumerGroupConfig, CredentialConfig,
    DemoConfig, DeploymentConfig, GatewayConfig, GlobalRuleConfig, ObjectName, PluginConfigConfig,
    RouteConfig, ServiceConfig, SslConfig, UpstreamConfig,
};
use crate::store::Kind;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Every reloadable object.
#[derive(Debug, Clone, Default)]
/// Each object is shared (`Arc`): the store keeps every object's typed form beside its JSON,
/// so a change hands the compiler the unchanged objects without reading them again.
pub struct Resources {
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    pub services: Vec<Arc<ServiceConfig>>,
    pub routes: Vec<Arc<RouteConfig>>,
    pub global_rules: Vec<Arc<GlobalRuleConfig>>,
    pub plugin_configs: Vec<Arc<PluginConfigConfig>>,
    pub consumers: Vec<Arc<ConsumerConfig>>,
    pub consumer_groups: Vec<Arc<ConsumerGroupConfig>>,
    pub credentials: Vec<Arc<CredentialConfig>>,
    pub ssls: Vec<Arc<SslConfig>>,
}

/// What the file provider reads from `config.toml`.
pub struct FileContents {
    pub gateway: GatewayConfig,
    pub resources: Arc<Resources>,
    /// The same resources as written, as JSON objects (what the Admin API shows, and what a
    /// first start with the store imports).
    pub values: BTreeMap<Kind, Vec<serde_json::Value>>,
    pub demo: Option<DemoConfig>,
    pub deployment: DeploymentConfig,
    pub admin: AdminConfig,
    pub plugin_attr: crate::config::PluginAttr,
}

/// Reads and parses `path` (semantic checks are the compiler's).
pub fn load_file(path: &Path) -> Result<FileContents, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let contents = parse_file(&text)?;
    let enc = &contents.deployment.data_encryption;
    crate::data_encryption::init(enc.enable_encrypt_fields, &enc.keyring)
        .map_err(|e| ConfigError::invalid("deployment.data_encryption", e))?;
    Ok(contents)
}

/// Parses the text of a config file: its typed form and its resources as JSON objects. Sets
/// nothing global (the data encryption keyring is [`load_file`]'s to install).
pub fn parse_file(text: &str) -> Result<FileContents, ConfigError> {
    let mut contents = Config::parse(text)?.split();
    let table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    for kind in Kind::ALL {
        let list = table
            .get(kind.name())
            .and_then(toml::Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|i| serde_json::to_value(i).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        contents.values.insert(kind, list);
    }
    Ok(contents)
}

impl FileContents {
    /// Checks every resource of the file against its kind's JSON Schema, the one the Admin
    /// API serves and checks writes with (after the compiler, whose messages name the field
    /// in the file's terms: this catches what APISIX's schemas refuse beyond that).
    pub fn check_schemas(&self) -> Result<(), ConfigError> {
        for (&kind, list) in &self.values {
            for (i, v) in list.iter().enumerate() {
                let mut v = std::borrow::Cow::Borrowed(v);
                if kind == Kind::Credentials {
                    // The file names a credential's consumer; the API has it in the path.
                    if let Some(obj) = v.to_mut().as_object_mut() {
                        obj.remove("consumer");
                    }
                }
                let unknown = kind == Kind::PluginMetadata
                    && !v
                        .get("id")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|n| crate::plugin::NAMES.contains(&n));
                let checked = if unknown {
                    Err("invalid plugin name".to_string())
                } else {
                    crate::admin::schemas::check_object(kind, &v)
                };
                if let Err(e) = checked {
                    let id = match v.get("id").or_else(|| v.get("username")) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(other) => Some(other.to_string()),
                        None => None,
                    };
                    let name = ObjectName {
                        kind: kind.name(),
                        index: i,
                        id: id.as_deref(),
                    };
                    return Err(ConfigError::invalid(name.to_string(), e));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// The file's process settings, its resources, and its demo backends.
    pub fn split(self) -> FileContents {
        FileContents {
            gateway: self.gateway,
            resources: Arc::new(Resources {
                upstreams: shared(self.upstreams),
                services: shared(self.services),
                routes: shared(self.routes),
                global_rules: shared(self.global_rules),
                plugin_configs: shared(self.plugin_configs),
                consumers: shared(self.consumers),
                consumer_groups: shared(self.consumer_groups),
                credentials: shared(self.credentials),
                ssls: shared(self.ssls),
            }),
            values: BTreeMap::new(),
            demo: self.demo,
            deployment: self.deployment,
            admin: self.admin,
            plugin_attr: self.plugin_attr,
        }
    }
}

fn shared<T>(list: Vec<T>) -> Vec<Arc<T>> {
    list.into_iter().map(Arc::new).collect()
}
