//! `limit-req` (APISIX priority 1001, access phase): nginx's leaky bucket per key. Requests
//! drain at `rate` per second; up to `burst` more may wait their turn (delayed until what is
//! ahead of them has drained, or let through at once with `nodelay`); beyond that,
//! `rejected_code` (503) with `{"error_msg": rejected_msg}` when set.
//!
//! With `policy = "local"` the buckets are shared by every core (`limit/bucket.rs`): one
//! bucket per key for the whole gateway. With `redis` / `redis-cluster` a bucket is a Redis
//! hash updated by APISIX's script, one per key for every gateway sharing the Redis (their
//! clocks should agree: the script is given the gateway's time). A bucket belongs to the
//! route (service, global rule) and its configuration, as limit-count's counters do.

use super::limiting::{Common, RedisConfig, Store};
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::limit::bucket::{Bucket, Rate, Verdict};
use crate::limit::key::LimitKey;
use crate::limit::table::{self, Table};
use crate::redis::{Reply, Script, Target};
use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;

#[derive(Deserialize)]
struct Config {
    rate: f64,
    burst: f64,
    #[serde(default)]
    nodelay: bool,
    #[serde(flatten)]
    common: Common,
    #[serde(flatten)]
    redis: RedisConfig,
}

/// APISIX's leaky-bucket script: decays and stores `KEYS[1]`'s excess at `ARGV[3]` (ms) for
/// a rate `ARGV[1]` and burst `ARGV[2]` (both x1000); `{1, excess}` admitted, `{0, excess}`
/// refused.
static SCRIPT: Script = Script::new(
    "local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('hmget', KEYS[1], 'excess', 'last')
local excess
if state[1] and state[2] then
    excess = math.max(tonumber(state[1]) - rate * math.abs(now - tonumber(state[2])) / 1000 + 1000, 0)
    if excess > burst then
        return {0, tostring(excess)}
    end
else
    excess = 0
end
redis.call('hset', KEYS[1], 'excess', excess, 'last', now)
redis.call('expire', KEYS[1], tonumber(ARGV[4]))
return {1, tostring(excess)}",
);

pub struct LimitReq {
    key: LimitKey,
    rejection: Answer,
    nodelay: bool,
    allow_degradation: bool,
    rate: Rate,
    buckets: Store<Bucket>,
}

impl LimitReq {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let rate = Rate {
            rate_milli: ((c.rate * 1000.0) as u64).max(1),
            burst_milli: (c.burst * 1000.0) as u64,
        };
        let id = super::limiting::counter_id(&ctx.owner, conf, None);
        let buckets = Store::build(
            "limit-req",
            "limit_req",
            &id,
            conf,
            &c.common.policy,
            &c.redis,
            rate,
        )?;
        Ok(LimitReq {
            key: c.common.limit_key()?,
            rejection: c.common.rejection(),
            nodelay: c.nodelay,
            allow_degradation: c.common.allow_degradation,
            rate,
            buckets,
        })
    }

    /// The delay of an admitted request, or the refusal.
    fn verdict(&self, verdict: Verdict) -> Result<Duration, Flow> {
        match verdict {
            Verdict::Pass { delay_ms, .. } if !self.nodelay => Ok(Duration::from_millis(delay_ms)),
            Verdict::Pass { .. } => Ok(Duration::ZERO),
            Verdict::Reject => Err(Flow::Respond(self.rejection.clone())),
        }
    }

    /// Admits or refuses the request against the gateway's own buckets.
    fn admit_local(
        &self,
        ctx: &mut RequestCtx<'_>,
        table: &Table<Bucket>,
    ) -> Result<Duration, Flow> {
        let key = self.key.digest(ctx.vars, table.hasher());
        let now = crate::limit::now_ms();
        match table.update(key, |b| b.take(now, &self.rate)) {
            Ok(verdict) => self.verdict(verdict),
            Err(table::Full) => Err(Flow::Respond(self.rejection.clone())),
        }
    }

    /// Admits or refuses the request against the bucket in Redis.
    async fn admit_redis(
        &self,
        ctx: &mut RequestCtx<'_>,
        target: Target,
        prefix: &str,
    ) -> Result<Duration, Flow> {
        let mut key = prefix.as_bytes().to_vec();
        self.key
            .write(ctx.vars, |piece| key.extend_from_slice(piece));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let ttl = self.rate.burst_milli.div_ceil(self.rate.rate_milli) + 1;
        let args = [
            self.rate.rate_milli.to_string(),
            self.rate.burst_milli.to_string(),
            now.to_string(),
            ttl.to_string(),
        ];
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = Box::pin(target.eval(&SCRIPT, &key, &args)).await;
        let decided = match &reply {
            Ok(Reply::Array(Some(items))) => {
                match (items.first().and_then(Reply::int), items.get(1)) {
                    (Some(admitted), Some(Reply::Bulk(Some(excess)))) => {
                        std::str::from_utf8(excess)
                            .ok()
                            .and_then(|e| e.parse::<f64>().ok())
                            .map(|e| (admitted == 1, e.max(0.0) as u64))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match decided {
            Some((true, excess)) => self.verdict(Verdict::Pass {
                delay_ms: excess * 1000 / self.rate.rate_milli,
                excess,
            }),
            Some((false, _)) => self.verdict(Verdict::Reject),
            None if self.allow_degradation => Ok(Duration::ZERO),
            None => Err(Flow::Respond(Answer::error(500, "failed to limit req"))),
        }
    }
}

impl Phases for LimitReq {
    fn name(&self) -> &'static str {
        "limit-req"
    }

    fn priority(&self) -> i32 {
        1001
    }

    fn uses(&self) -> PhaseSet {
        match (&self.buckets, self.nodelay) {
            (Store::Local(_), true) => PhaseSet::ACCESS,
            // Delaying waits on a timer; Redis on a reply.
            _ => PhaseSet::ACCESS.with(PhaseSet::AWAITS),
        }
    }

    fn core_state(&self) -> CoreState {
        self.buckets.core_state()
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Store::Local(table) = &self.buckets else {
            return Flow::Continue; // not called: Redis buckets wait (request_phase)
        };
        match self.admit_local(ctx, table) {
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
        let admitted = match &self.buckets {
            Store::Local(table) => self.admit_local(ctx, table),
            Store::Redis { prefix, .. } => match super::limiting::target(state) {
                Some(target) => self.admit_redis(ctx, target, prefix).await,
                None => Ok(Duration::ZERO),
            },
        };
        super::limiting::after_delay(admitted).await
    }
}
