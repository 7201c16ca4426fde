//! `limit-conn` (APISIX priority 1003, access phase): at most `conn` requests in progress per
//! key; up to `burst` more are admitted but delayed (`default_conn_delay` seconds per `conn`
//! ahead of them, as lua-resty-limit-traffic computes it); beyond that, `rejected_code` (503)
//! with `{"error_msg": rejected_msg}` when set.
//!
//! A request is released when it ends however it ends (answered, failed upstream, client
//! gone): the count is held by a guard in the request's plugin slot, whose drop releases it.
//! Unless `only_use_default_delay`, the delay per excess request follows the requests'
//! observed latency (the average of the last one and the previous estimate, as APISIX).
//!
//! With `policy = "local"` the counts are shared by every core (`limit/conn.rs`). With
//! `redis` / `redis-cluster` a key's requests in progress are a Redis sorted set of request
//! ids (APISIX's script), each expiring after `key_ttl` seconds should its gateway never
//! release it (killed, or Redis unreachable at the release).

use super::limiting::{Common, RedisConfig, Store};
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::limit::amount::Amount;
use crate::limit::conn::Conns;
use crate::limit::key::LimitKey;
use crate::limit::table::{self, Table};
use crate::redis::{Reply, Script, Target};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hour() -> u64 {
    3600
}

#[derive(Deserialize)]
struct Config {
    conn: serde_json::Value,
    burst: serde_json::Value,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    /// How long a request id stays in Redis if never released (Redis policies).
    #[serde(default = "hour")]
    key_ttl: u64,
    #[serde(flatten)]
    common: Common,
    #[serde(flatten)]
    redis: RedisConfig,
}

/// APISIX's script: drops `KEYS[1]`'s expired request ids, refuses at `ARGV[1]` in
/// progress, else adds request `ARGV[4]` until `ARGV[3]` + `ARGV[2]` (seconds); returns
/// `{admitted, count}`.
static SCRIPT: Script = Script::new(
    "local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
    return {0, count}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
return {1, count + 1}",
);

pub struct LimitConn {
    conn: Amount,
    burst: Amount,
    key: LimitKey,
    rejection: Answer,
    allow_degradation: bool,
    key_ttl: u64,
    /// The delay per excess request, in seconds (f64 bits): `default_conn_delay`, moved
    /// towards observed latencies unless `only_use_default_delay`.
    unit_delay: Arc<AtomicU64>,
    learn_delay: bool,
    counts: Store<Conns>,
}

/// How an admitted request is released.
enum Release {
    Local {
        counts: Arc<Table<Conns>>,
        key: u64,
    },
    /// `ZREM key id`, sent without waiting for the reply.
    Redis {
        target: Target,
        key: Vec<u8>,
        id: String,
    },
}

/// One admitted request's hold on its key's count; dropping it releases the request.
struct Held {
    release: Release,
    since: Instant,
    delay: Duration,
    /// Where to record this request's latency, unless only the default delay is used.
    unit_delay: Option<Arc<AtomicU64>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        match &self.release {
            Release::Local { counts, key } => {
                counts.read(*key, Conns::leave);
            }
            Release::Redis { target, key, id } => {
                target.send_detached(key, &[b"ZREM", key, id.as_bytes()]);
            }
        }
        if let Some(unit) = &self.unit_delay {
            let latency = self
                .since
                .elapsed()
                .saturating_sub(self.delay)
                .as_secs_f64();
            let before = f64::from_bits(unit.load(Ordering::Relaxed));
            unit.store(((latency + before) / 2.0).to_bits(), Ordering::Relaxed);
        }
    }
}

impl LimitConn {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let id = super::limiting::counter_id(&ctx.owner, conf, None);
        let counts = Store::build(
            "limit-conn",
            "limit_conn",
            &id,
            conf,
            &c.common.policy,
            &c.redis,
            (),
        )?;
        Ok(LimitConn {
            conn: Amount::parse(&c.conn, "conn", false)?,
            burst: Amount::parse(&c.burst, "burst", true)?,
            key: c.common.limit_key()?,
            rejection: c.common.rejection(),
            allow_degradation: c.common.allow_degradation,
            key_ttl: c.key_ttl.max(1),
            unit_delay: Arc::new(AtomicU64::new(c.default_conn_delay.to_bits())),
            learn_delay: !c.only_use_default_delay,
            counts,
        })
    }

    /// A limit that cannot be consulted: let through with `allow_degradation`, else 500.
    fn degrade(&self) -> Result<Duration, Flow> {
        match self.allow_degradation {
            true => Ok(Duration::ZERO),
            false => Err(Flow::Respond(Answer::error(500, "failed to limit conn"))),
        }
    }

    /// Holds the admitted `n`th request in the plugin's slot until it ends; its delay.
    fn hold(&self, ctx: &mut RequestCtx<'_>, release: Release, n: u64, conn: u64) -> Duration {
        let delay = match n > conn {
            true => {
                let unit = f64::from_bits(self.unit_delay.load(Ordering::Relaxed));
                Duration::from_secs_f64(unit * ((n - 1) / conn) as f64)
            }
            false => Duration::ZERO,
        };
        ctx.slots.put(Held {
            release,
            since: Instant::now(),
            delay,
            unit_delay: self.learn_delay.then(|| self.unit_delay.clone()),
        });
        delay
    }

    /// Counts the request in against the gateway's own counts, or refuses it.
    fn admit_local(
        &self,
        ctx: &mut RequestCtx<'_>,
        counts: &Arc<Table<Conns>>,
    ) -> Result<Duration, Flow> {
        let (Some(conn), Some(burst)) = (self.conn.resolve(ctx.vars), self.burst.resolve(ctx.vars))
        else {
            return self.degrade();
        };
        let key = self.key.digest(ctx.vars, counts.hasher());
        let most = conn.saturating_add(burst).min(i64::MAX as u64 - 1) as i64;
        let n = match counts.update(key, |c| c.enter(most)) {
            Ok(Some(n)) => n as u64,
            Ok(None) | Err(table::Full) => return Err(Flow::Respond(self.rejection.clone())),
        };
        let release = Release::Local {
            counts: counts.clone(),
            key,
        };
        Ok(self.hold(ctx, release, n, conn))
    }

    /// Counts the request in against the set in Redis, or refuses it.
    async fn admit_redis(
        &self,
        ctx: &mut RequestCtx<'_>,
        target: Target,
        prefix: &str,
    ) -> Result<Duration, Flow> {
        let (Some(conn), Some(burst)) = (self.conn.resolve(ctx.vars), self.burst.resolve(ctx.vars))
        else {
            return self.degrade();
        };
        let mut key = prefix.as_bytes().to_vec();
        self.key
            .write(ctx.vars, |piece| key.extend_from_slice(piece));
        let id = uuid::Uuid::new_v4().to_string();
        let now = crate::log::now_secs();
        let args = [
            conn.saturating_add(burst).to_string(),
            self.key_ttl.to_string(),
            now.to_string(),
        ];
        let args: [&[u8]; 4] = [
            args[0].as_bytes(),
            args[1].as_bytes(),
            args[2].as_bytes(),
            id.as_bytes(),
        ];
        let reply = Box::pin(target.eval(&SCRIPT, &key, &args)).await;
        let counted = match &reply {
            Ok(Reply::Array(Some(items))) => items
                .first()
                .and_then(Reply::int)
                .zip(items.get(1).and_then(Reply::int)),
            _ => None,
        };
        match counted {
            Some((1, n)) => {
                let release = Release::Redis { target, key, id };
                Ok(self.hold(ctx, release, n.max(1) as u64, conn))
            }
            Some(_) => Err(Flow::Respond(self.rejection.clone())),
            None => self.degrade(),
        }
    }
}

impl Phases for LimitConn {
    fn name(&self) -> &'static str {
        "limit-conn"
    }

    fn priority(&self) -> i32 {
        1003
    }

    fn uses(&self) -> PhaseSet {
        match (&self.counts, &self.burst) {
            // Nothing is ever admitted over `conn`: nothing waits.
            (Store::Local(_), Amount::Fixed(0)) => PhaseSet::ACCESS,
            _ => PhaseSet::ACCESS.with(PhaseSet::AWAITS),
        }
    }

    fn core_state(&self) -> CoreState {
        self.counts.core_state()
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Store::Local(counts) = &self.counts else {
            return Flow::Continue; // not called: Redis counts wait (request_phase)
        };
        match self.admit_local(ctx, counts) {
            Ok(_) => Flow::Continue,
            Err(refused) => refused,
        }
    }

    async fn request_phase(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx<'_>,
        state: &RefCell<CoreState>,
    ) -> Flow {
        if phase != Phase::Access {
            return Flow::Continue;
        }
        let admitted = match &self.counts {
            Store::Local(counts) => self.admit_local(ctx, counts),
            Store::Redis { prefix, .. } => match super::limiting::target(state) {
                Some(target) => self.admit_redis(ctx, target, prefix).await,
                None => self.degrade(),
            },
        };
        super::limiting::after_delay(admitted).await
    }
}
