//! The object store behind the Admin API: APISIX's JSON objects by kind and id, with the
//! fields APISIX adds (`id`, `create_time`, `update_time`) and etcd-style indexes
//! (`createdIndex`, `modifiedIndex`: the store revision at creation and at the last change).
//!
//! With `config_provider = "store"` the objects persist under `data_dir` ([`file`]).

use crate::config::{
    ConfigError, ConsumerConfig, ConsumerGroupConfig, CredentialConfig, GlobalRuleConfig,
    PluginConfigConfig, RouteConfig, ServiceConfig, SslConfig, UpstreamConfig,
};
use crate::resources::Resources;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The kinds of object the store holds, by their Admin API path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Routes,
    Services,
    Upstreams,
    GlobalRules,
    PluginConfigs,
    Consumers,
    /// Plugins shared by the consumers naming the group in `group_id`.
    ConsumerGroups,
    /// Keyed `{username}/credentials/{id}`, under `/apisix/consumers/`.
    Credentials,
    /// Keyed by plugin name: settings a plugin shares across all its instances.
    PluginMetadata,
    /// Certificates and their keys (keys stored encrypted).
    Ssls,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Routes,
        Kind::Services,
        Kind::Upstreams,
        Kind::GlobalRules,
        Kind::PluginConfigs,
        Kind::Consumers,
        Kind::ConsumerGroups,
        Kind::Credentials,
        Kind::PluginMetadata,
        Kind::Ssls,
    ];

    /// The path segment (`routes`), also the key prefix (`/apisix/routes/1`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::GlobalRules => "global_rules",
            Kind::PluginConfigs => "plugin_configs",
            Kind::Consumers => "consumers",
            Kind::ConsumerGroups => "consumer_groups",
            Kind::Credentials => "credentials",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Ssls => "ssls",
        }
    }

    /// The key prefix: credentials live under their consumers
    /// (`/apisix/consumers/jack/credentials/1`).
    pub fn key_prefix(self) -> &'static str {
        match self {
            Kind::Credentials => "consumers",
            other => other.name(),
        }
    }

    /// APISIX's singular in messages (`wrong route id`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Services => "service",
            Kind::Upstreams => "upstream",
            Kind::GlobalRules => "global rule",
            Kind::PluginConfigs => "plugin config",
            Kind::Consumers => "consumer",
            Kind::ConsumerGroups => "consumer group",
            Kind::Credentials => "credential",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Ssls => "ssl",
        }
    }

    pub fn parse(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == segment)
    }
}

/// One stored object. Its JSON is shared (`Arc`): a change copies the store's maps, not the
/// objects in them.
#[derive(Debug, Clone)]
pub struct Object {
    /// APISIX's JSON as given, with its `id` (the times are kept beside it, so the compiler
    /// reads the object as it is, without a copy).
    pub value: Arc<Value>,
    pub create_time: i64,
    pub update_time: i64,
    pub created_index: u64,
    pub modified_index: u64,
    /// The typed form the compiler takes, read once when the object was stored.
    typed: Typed,
    /// The value serialized once, for the store file (written whole on every change).
    json: Arc<Box<serde_json::value::RawValue>>,
}

impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        // The typed form follows from the value; an unchanged object shares its value.
        (self.create_time, self.update_time) == (other.create_time, other.update_time)
            && (self.created_index, self.modified_index)
                == (other.created_index, other.modified_index)
            && (Arc::ptr_eq(&self.value, &other.value) || self.value == other.value)
    }
}

/// An object's typed form, or why its JSON does not fit its kind.
#[derive(Debug, Clone)]
enum Typed {
    Upstream(Arc<UpstreamConfig>),
    Service(Arc<ServiceConfig>),
    Route(Arc<RouteConfig>),
    GlobalRule(Arc<GlobalRuleConfig>),
    PluginConfig(Arc<PluginConfigConfig>),
    Consumer(Arc<ConsumerConfig>),
    ConsumerGroup(Arc<ConsumerGroupConfig>),
    Credential(Arc<CredentialConfig>),
    Ssl(Arc<SslConfig>),
    /// Kept as JSON (plugin metadata: the plugin reads it).
    Json,
    Invalid(Arc<str>),
}

impl Typed {
    fn read(kind: Kind, v: &Value) -> Typed {
        fn de<T: serde::de::DeserializeOwned>(v: &Value, f: fn(Arc<T>) -> Typed) -> Typed {
            match T::deserialize(v) {
                Ok(t) => f(Arc::new(t)),
                Err(e) => Typed::Invalid(e.to_string().into()),
            }
        }
        match kind {
            Kind::Upstreams => de(v, Typed::Upstream),
            Kind::Services => de(v, Typed::Service),
            Kind::Routes => de(v, Typed::Route),
            Kind::GlobalRules => de(v, Typed::GlobalRule),
            Kind::PluginConfigs => de(v, Typed::PluginConfig),
            Kind::Consumers => de(v, Typed::Consumer),
            Kind::ConsumerGroups => de(v, Typed::ConsumerGroup),
            Kind::Credentials => de(v, Typed::Credential),
            Kind::Ssls => de(v, Typed::Ssl),
            Kind::PluginMetadata => Typed::Json,
        }
    }
}

/// Takes one kind's typed form out of a [`Typed`].
trait Pick: Sized {
    fn pick(t: &Typed) -> Option<Arc<Self>>;
}

macro_rules! pick {
    ($($t:ty => $v:ident),*) => {$(
        impl Pick for $t {
            fn pick(t: &Typed) -> Option<Arc<Self>> {
                match t {
                    Typed::$v(x) => Some(x.clone()),
                    _ => None,
                }
            }
        }
    )*};
}

pick!(UpstreamConfig => Upstream, ServiceConfig => Service, RouteConfig => Route,
    GlobalRuleConfig => GlobalRule, PluginConfigConfig => PluginConfig,
    ConsumerConfig => Consumer, ConsumerGroupConfig => ConsumerGroup, CredentialConfig => Credential, SslConfig => Ssl);

impl Object {
    /// An object of `kind` with its JSON (which carries its `id`), times and indexes; its
    /// typed form is read here, once.
    pub fn new(
        kind: Kind,
        value: Arc<Value>,
        (create_time, update_time): (i64, i64),
        (created_index, modified_index): (u64, u64),
    ) -> Object {
        let text = serde_json::to_string(&*value).unwrap_or_else(|_| "null".into());
        let json = serde_json::value::RawValue::from_string(text).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
        });
        Object {
            typed: Typed::read(kind, &value),
            json: Arc::new(json),
            value,
            create_time,
            update_time,
            created_index,
            modified_index,
        }
    }

    /// The object as the Admin API shows it: with `create_time` and `update_time`.
    pub fn shown(&self) -> Value {
        let mut v = (*self.value).clone();
        if let Value::Object(obj) = &mut v {
            obj.insert("create_time".into(), self.create_time.into());
            obj.insert("update_time".into(), self.update_time.into());
        }
        v
    }
}

/// Every object, and the revision of the last change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    kinds: BTreeMap<Kind, BTreeMap<String, Object>>,
    pub revision: u64,
    /// The last id POST generated.
    pub last_generated: u64,
}

impl Objects {
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Object> {
        self.kinds.get(&kind)?.get(id)
    }

    /// The objects of `kind` in creation order.
    pub fn list(&self, kind: Kind) -> Vec<(&str, &Object)> {
        let mut all: Vec<(&str, &Object)> = self
            .kinds
            .get(&kind)
            .map(|m| m.iter().map(|(id, o)| (id.as_str(), o)).collect())
            .unwrap_or_default();
        all.sort_by_key(|(_, o)| o.created_index);
        all
    }

    /// Stores `value` (which carries its `id`) under `id`: a new object or a replacement
    /// that keeps `create_time` and `createdIndex`. Returns whether it was new.
    pub fn put(&mut self, kind: Kind, id: &str, mut value: Value, now: i64) -> bool {
        self.revision += 1;
        let revision = self.revision;
        let map = self.kinds.entry(kind).or_default();
        let previous = map.get(id);
        let create_time = previous.map_or(now, |o| o.create_time);
        let created_index = previous.map_or(revision, |o| o.created_index);
        if let Value::Object(obj) = &mut value {
            obj.insert("id".into(), Value::String(id.into()));
            // The store's to set, whatever a client sends.
            obj.remove("create_time");
            obj.remove("update_time");
        }
        map.insert(
            id.to_string(),
            Object::new(
                kind,
                Arc::new(value),
                (create_time, now),
                (created_index, revision),
            ),
        )
        .is_none()
    }

    pub fn delete(&mut self, kind: Kind, id: &str) -> Option<Object> {
        let removed = self.kinds.get_mut(&kind)?.remove(id)?;
        self.revision += 1;
        Some(removed)
    }

    /// How many objects there are, of every kind.
    pub fn count(&self) -> usize {
        self.kinds.values().map(|m| m.len()).sum()
    }

    /// Sets an object as it was read (from etcd): no index or time is touched.
    pub fn set(&mut self, kind: Kind, id: &str, object: Object) {
        self.kinds
            .entry(kind)
            .or_default()
            .insert(id.to_string(), object);
    }

    /// Removes an object as etcd reports it (the revision is etcd's to say).
    pub fn remove(&mut self, kind: Kind, id: &str) -> Option<Object> {
        self.kinds.get_mut(&kind)?.remove(id)
    }

    /// What `next` (a change decided from `self`) writes: each object it adds or replaces,
    /// and each it removes (`None`).
    pub fn changes_to<'a>(&self, next: &'a Objects) -> Vec<(Kind, String, Option<&'a Object>)> {
        use std::cmp::Ordering;
        let mut out = Vec::new();
        for kind in Kind::ALL {
            // Both maps are sorted by id: one pass over the two, side by side.
            let mut old = self.kinds.get(&kind).into_iter().flatten().peekable();
            let mut new = next.kinds.get(&kind).into_iter().flatten().peekable();
            loop {
                let order = match (old.peek(), new.peek()) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some((a, _)), Some((b, _))) => a.cmp(b),
                };
                match order {
                    Ordering::Less => {
                        let (id, _) = old.next().expect("peeked");
                        out.push((kind, id.clone(), None));
                    }
                    Ordering::Greater => {
                        let (id, o) = new.next().expect("peeked");
                        out.push((kind, id.clone(), Some(o)));
                    }
                    Ordering::Equal => {
                        let ((_, a), (id, b)) =
                            (old.next().expect("peeked"), new.next().expect("peeked"));
                        if a != b {
                            out.push((kind, id.clone(), Some(b)));
                        }
                    }
                }
            }
        }
        out
    }

    /// The next id for POST: 20 digits, zero-padded, increasing (APISIX's form).
    pub fn generate_id(&mut self) -> String {
        self.last_generated = self.last_generated.max(self.revision) + 1;
        format!("{:020}", self.last_generated)
    }

    /// The typed resources the compiler takes, in creation order. An object that does not
    /// fit its kind is an error naming it.
    pub fn resources(&self) -> Result<Resources, ConfigError> {
        Ok(Resources {
            upstreams: self.typed::<UpstreamConfig>(Kind::Upstreams)?,
            services: self.typed::<ServiceConfig>(Kind::Services)?,
            routes: self.typed::<RouteConfig>(Kind::Routes)?,
            global_rules: self.typed::<GlobalRuleConfig>(Kind::GlobalRules)?,
            plugin_configs: self.typed::<PluginConfigConfig>(Kind::PluginConfigs)?,
            consumers: self.typed::<ConsumerConfig>(Kind::Consumers)?,
            consumer_groups: self.typed::<ConsumerGroupConfig>(Kind::ConsumerGroups)?,
            credentials: self.typed::<CredentialConfig>(Kind::Credentials)?,
            ssls: self.typed::<SslConfig>(Kind::Ssls)?,
        })
    }

    fn typed<T: Pick>(&self, kind: Kind) -> Result<Vec<Arc<T>>, ConfigError> {
        self.list(kind)
            .into_iter()
            .map(|(id, o)| {
                T::pick(&o.typed).ok_or_else(|| {
                    let why = match &o.typed {
                        Typed::Invalid(e) => e.to_string(),
                        _ => "not of this kind".into(),
                    };
                    ConfigError::invalid(format!("{} (id \"{id}\")", kind.name()), why)
                })
            })
            .collect()
    }

    /// Objects from resources written as JSON values (the file provider's, or an import),
    /// each kind in its order. Routes and global rules without an id get APISIX's `arr_N`;
    /// other objects need one.
    pub fn from_values(
        values: &BTreeMap<Kind, Vec<Value>>,
        now: i64,
    ) -> Result<Objects, ConfigError> {
        let mut objects = Objects::default();
        for (&kind, list) in values {
            for (i, v) in list.iter().enumerate() {
                let text = |f: &str| v.get(f).and_then(Value::as_str);
                let id = match (kind, v.get("id")) {
                    // Consumers are keyed by username; credentials under their consumer.
                    (Kind::Consumers, _) if text("username").is_some() => {
                        text("username").unwrap_or_default().to_string()
                    }
                    (Kind::Credentials, Some(Value::String(s))) if text("consumer").is_some() => {
                        format!("{}/credentials/{s}", text("consumer").unwrap_or_default())
                    }
                    (_, Some(Value::String(s))) => s.clone(),
                    (_, Some(Value::Number(n))) => n.to_string(),
                    // As APISIX's standalone config (`arr_N`); the compiler takes these two
                    // without an id, so an import must too.
                    (Kind::Routes | Kind::GlobalRules, _) => format!("arr_{}", i + 1),
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("{}[{i}]", kind.name()),
                            "missing id",
                        ))
                    }
                };
                objects.put(kind, &id, v.clone(), now);
            }
        }
        Ok(objects)
    }
}

mod file;
pub use file::StoreFile;
