//! What the rate-limiting plugins (limit-count, limit-req, limit-conn) share: the fields that
//! say what a request counts as and how a refusal looks, and waiting out a delay.

use super::CoreState;
use super::{Answer, Flow};
use crate::limit::key::LimitKey;
use crate::limit::table::{self, Cell, Table};
use crate::redis::cluster::resolve;
use crate::redis::{Endpoint, Target};
use serde::Deserialize;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn remote_addr() -> String {
    "remote_addr".into()
}
fn var() -> String {
    "var".into()
}
fn local() -> String {
    "local".into()
}
fn code_503() -> u16 {
    503
}

/// The fields every limit plugin has, with APISIX's defaults.
#[derive(Deserialize)]
pub(super) struct Common {
    #[serde(default = "remote_addr")]
    pub key: String,
    #[serde(default = "var")]
    pub key_type: String,
    #[serde(default = "code_503")]
    pub rejected_code: u16,
    #[serde(default)]
    pub rejected_msg: Option<String>,
    #[serde(default = "local")]
    pub policy: String,
    #[serde(default)]
    pub allow_degradation: bool,
}

impl Common {
    pub fn limit_key(&self) -> Result<LimitKey, String> {
        LimitKey::parse(&self.key_type, &self.key)
    }

    /// The refusal, as APISIX makes it: `rejected_code` with `{"error_msg": rejected_msg}`,
    /// or with the status's reason phrase when no message is configured.
    pub fn rejection(&self) -> Answer {
        let code = self.rejected_code;
        let msg = self.rejected_msg.as_deref();
        Answer::error(code, msg.unwrap_or(crate::http::reason_phrase(code)))
    }
}

fn port_6379() -> u16 {
    6379
}
fn ms_1000() -> u64 {
    1000
}

/// Where a `redis` or `redis-cluster` policy keeps its counters (APISIX's field names).
#[derive(Deserialize)]
pub(super) struct RedisConfig {
    #[serde(default)]
    redis_host: Option<String>,
    #[serde(default = "port_6379")]
    redis_port: u16,
    #[serde(default)]
    redis_username: Option<String>,
    #[serde(default)]
    redis_password: Option<String>,
    #[serde(default)]
    redis_database: u32,
    #[serde(default = "ms_1000")]
    redis_timeout: u64,
    #[serde(default)]
    redis_cluster_nodes: Vec<String>,
}

/// A Redis policy, resolved: what each core connects to.
pub(super) enum RedisSpec {
    Single(Endpoint),
    Cluster(Vec<SocketAddr>, Endpoint),
}

impl RedisSpec {
    /// The Redis a `policy` names (`None` for `local`); errors name the field.
    pub fn build(policy: &str, c: &RedisConfig) -> Result<Option<RedisSpec>, String> {
        let password = match &c.redis_password {
            Some(p) => {
                Some(crate::consumer::secret(p, "redis_password").map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let endpoint = |addr| Endpoint {
            addr,
            username: c.redis_username.clone(),
            password: password.clone(),
            database: c.redis_database,
            timeout: Duration::from_millis(c.redis_timeout),
        };
        match policy {
            "local" => Ok(None),
            "redis" => {
                let host = c.redis_host.as_deref().ok_or("redis_host: required")?;
                let hostport = match host.contains(':') && !host.starts_with('[') {
                    true => format!("[{host}]:{}", c.redis_port),
                    false => format!("{host}:{}", c.redis_port),
                };
                let addr = resolve(&hostport).map_err(|e| format!("redis_host: {e}"))?;
                Ok(Some(RedisSpec::Single(endpoint(addr))))
            }
            "redis-cluster" => {
                let seeds = c
                    .redis_cluster_nodes
                    .iter()
                    .map(|n| resolve(n).map_err(|e| format!("redis_cluster_nodes: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = *seeds.first().ok_or("redis_cluster_nodes: required")?;
                let mut template = endpoint(first);
                template.database = 0;
                Ok(Some(RedisSpec::Cluster(seeds, template)))
            }
            other => Err(format!("policy \"{other}\" is not supported")),
        }
    }

    /// This core's way to it (one connection per server per core, shared by every plugin
    /// instance naming it).
    pub fn target(&self) -> Target {
        match self {
            RedisSpec::Single(e) => Target::Single(crate::redis::single(e)),
            RedisSpec::Cluster(seeds, e) => Target::Cluster(crate::redis::cluster(seeds, e)),
        }
    }
}

/// Where a limit's state lives.
pub(super) enum Store<C: Cell> {
    /// In this gateway's memory, shared by its cores.
    Local(Arc<Table<C>>),
    /// In Redis, under `prefix` + the key's text.
    Redis { spec: RedisSpec, prefix: String },
}

impl<C: Cell> Store<C> {
    /// The store for a limit of plugin `plugin` (its table's id: `plugin/ID:conf`) or, in
    /// Redis, under `redis_prefix:ID:` (APISIX's key prefixes).
    pub fn build(
        plugin: &str,
        redis_prefix: &str,
        id: &str,
        conf: &serde_json::Value,
        policy: &str,
        redis: &RedisConfig,
        params: C::Params,
    ) -> Result<Store<C>, String> {
        Ok(match RedisSpec::build(policy, redis)? {
            None => Store::Local(table::shared(&format!("{plugin}/{id}:{conf}"), || {
                Table::new(params)
            })),
            Some(spec) => Store::Redis {
                spec,
                prefix: format!("{redis_prefix}:{id}:"),
            },
        })
    }

    /// Each core's way to Redis, for a Redis store.
    pub fn core_state(&self) -> CoreState {
        match self {
            Store::Local(_) => Box::new(()),
            Store::Redis { spec, .. } => Box::new(spec.target()),
        }
    }
}

/// This core's way to Redis, from a Redis store's core state.
pub(super) fn target(state: &RefCell<CoreState>) -> Option<Target> {
    state.borrow().downcast_ref::<Target>().cloned()
}

/// What a limit's counters are called: the group's (`group/NAME`), or the owner's with a
/// digest of the plugin's configuration, so that a changed configuration starts afresh and
/// every gateway with the same configuration names the same counters in Redis.
pub(super) fn counter_id(owner: &str, conf: &serde_json::Value, group: Option<&str>) -> String {
    match group {
        Some(group) => format!("group/{group}"),
        None => {
            let d = ring::digest::digest(&ring::digest::SHA256, conf.to_string().as_bytes());
            format!("{owner}/{}", crate::redis::hex(&d.as_ref()[..8]))
        }
    }
}

/// Waits out an admitted request's delay (as APISIX: not under a millisecond), or gives the
/// refusal.
pub(super) async fn after_delay(admitted: Result<Duration, Flow>) -> Flow {
    match admitted {
        Ok(delay) if delay >= Duration::from_millis(1) => {
            // Boxed: the timer lives only while a request waits.
            Box::pin(monoio::time::sleep(delay)).await;
            Flow::Continue
        }
        Ok(_) => Flow::Continue,
        Err(refused) => refused,
    }
}
