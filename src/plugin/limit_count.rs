//! `limit-count` (APISIX priority 1002, access phase): at most `count` requests per
//! `time_window` seconds for each key (`key_type` + `key`, default the client address). The
//! window starts at a key's first request. Over the limit: `rejected_code` (503) with
//! `{"error_msg": rejected_msg}` when set. `show_limit_quota_header` (default on) adds
//! `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds to the window's end) to passed
//! and refused responses.
//!
//! Counters: `policy = "local"` keeps them in memory shared by every core (`limit/`): exact
//! for the whole gateway. `redis` and `redis-cluster` keep them in Redis (`limit/redis/`):
//! exact for every gateway sharing it. Counters belong to the route (or service, global
//! rule) and its configuration: changing the plugin's configuration starts them afresh, as in
//! APISIX; routes with the same `group` share them.

use super::limiting::Common;
use super::limiting::{RedisConfig, Store};
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::http::Decimal;
use crate::limit::amount::Amount;
use crate::limit::key::LimitKey;
use crate::limit::table;
use crate::limit::window::{Verdict, Window};
use crate::redis::{Reply, Script};
use serde::Deserialize;
use std::cell::RefCell;

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Config {
    count: serde_json::Value,
    time_window: serde_json::Value,
    #[serde(default)]
    group: Option<String>,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    #[serde(flatten)]
    common: Common,
    #[serde(flatten)]
    redis: RedisConfig,
}

/// APISIX's fixed-window script: count `ARGV[3]` for `KEYS[1]`, opening a window of
/// `ARGV[2]` seconds on its first request; returns the count and the ms left.
static SCRIPT: Script = Script::new(
    "local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 then
    redis.call('set', KEYS[1], ARGV[3], 'EX', ARGV[2])
    return {ARGV[3], ARGV[2] * 1000}
end
return {redis.call('incrby', KEYS[1], ARGV[3]), ttl}",
);

pub struct LimitCount {
    count: Amount,
    time_window: Amount,
    key: LimitKey,
    rejection: Answer,
    show_headers: bool,
    allow_degradation: bool,
    counters: Store<Window>,
}

impl LimitCount {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        // The counters' identity: the group's, or this owner's with this configuration.
        let id = super::limiting::counter_id(&ctx.owner, conf, c.group.as_deref());
        let counters = Store::build(
            "limit-count",
            "plugin-limit-count",
            &id,
            conf,
            &c.common.policy,
            &c.redis,
            (),
        )?;
        Ok(LimitCount {
            count: Amount::parse(&c.count, "count", false)?,
            time_window: Amount::parse(&c.time_window, "time_window", false)?,
            key: c.common.limit_key()?,
            rejection: c.common.rejection(),
            show_headers: c.show_limit_quota_header,
            allow_degradation: c.common.allow_degradation,
            counters,
        })
    }

    /// The refusal: `rejected_code`, the quota headers, `rejected_msg` if set.
    fn refuse(&self, limit: u64, reset: Option<u64>) -> Flow {
        let mut headers = Vec::new();
        if self.show_headers {
            headers.push(("X-RateLimit-Limit".to_string(), limit.to_string()));
            headers.push(("X-RateLimit-Remaining".to_string(), "0".to_string()));
            let mut value = String::new();
            write_reset(&mut value, reset.unwrap_or(0), None);
            headers.push(("X-RateLimit-Reset".to_string(), value));
        }
        let mut answer = self.rejection.clone();
        answer.headers.extend(headers);
        Flow::Respond(answer)
    }

    /// A counter that cannot be consulted: let through with `allow_degradation`, else 500.
    fn degrade(&self) -> Flow {
        match self.allow_degradation {
            true => Flow::Continue,
            false => Flow::Respond(Answer::error(500, "failed to limit count")),
        }
    }
}

/// Writes `X-RateLimit-Reset`: the whole window when this request opened it, else the time
/// left floored to hundredths of a second, printed as APISIX (Lua) prints numbers.
fn write_reset(out: &mut String, reset_ms: u64, opened: Option<u64>) {
    if let Some(window) = opened {
        Decimal::new(window).push_to(out);
        return;
    }
    let centis = reset_ms / 10;
    let (whole, frac) = (centis / 100, centis % 100);
    Decimal::new(whole).push_to(out);
    if frac != 0 {
        out.push('.');
        out.push(char::from(b'0' + (frac / 10) as u8));
        if frac % 10 != 0 {
            out.push(char::from(b'0' + (frac % 10) as u8));
        }
    }
}

impl Phases for LimitCount {
    fn name(&self) -> &'static str {
        "limit-count"
    }

    fn priority(&self) -> i32 {
        1002
    }

    fn uses(&self) -> PhaseSet {
        match self.counters {
            Store::Local(_) => PhaseSet::ACCESS,
            Store::Redis { .. } => PhaseSet::ACCESS.with(PhaseSet::AWAITS),
        }
    }

    fn core_state(&self) -> CoreState {
        self.counters.core_state()
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Store::Local(table) = &self.counters else {
            return Flow::Continue; // not called: Redis counters wait (request_phase)
        };
        let Some((limit, window)) = self.amounts(ctx) else {
            return self.degrade();
        };
        let key = self.key.digest(ctx.vars, table.hasher());
        let now = crate::limit::now_ms();
        let window_ms = window.saturating_mul(1000);
        match table.update(key, |w| w.take(now, window_ms, limit, 1)) {
            Ok(verdict) => self.apply(ctx, verdict, limit, window),
            // A table at its key bound: a new key is refused as over its limit.
            Err(table::Full) => self.refuse(limit, None),
        }
    }

    async fn request_phase(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx<'_>,
        state: &RefCell<CoreState>,
    ) -> Flow {
        let (Phase::Access, Store::Redis { prefix, .. }) = (phase, &self.counters) else {
            return Flow::Continue;
        };
        let Some((limit, window)) = self.amounts(ctx) else {
            return self.degrade();
        };
        let Some(target) = super::limiting::target(state) else {
            return self.degrade();
        };
        let mut key = prefix.as_bytes().to_vec();
        self.key
            .write(ctx.vars, |piece| key.extend_from_slice(piece));
        let (limit_text, window_text) = (limit.to_string(), window.to_string());
        let args: [&[u8]; 3] = [limit_text.as_bytes(), window_text.as_bytes(), b"1"];
        let reply = Box::pin(target.eval(&SCRIPT, &key, &args)).await;
        let counted = match &reply {
            Ok(Reply::Array(Some(items))) => match (items.first(), items.get(1)) {
                (Some(used), Some(ttl)) => used.int().zip(ttl.int()),
                _ => None,
            },
            _ => None,
        };
        let Some((used, ttl_ms)) = counted else {
            return self.degrade();
        };
        let reset_ms = ttl_ms.max(0) as u64;
        let verdict = match used.max(0) as u64 {
            used if used > limit => Verdict::Reject { reset_ms },
            used => Verdict::Pass {
                remaining: limit - used,
                reset_ms,
                first: false,
            },
        };
        self.apply(ctx, verdict, limit, window)
    }
}

impl LimitCount {
    /// This request's `count` and `time_window`.
    fn amounts(&self, ctx: &RequestCtx<'_>) -> Option<(u64, u64)> {
        Some((
            self.count.resolve(ctx.vars)?,
            self.time_window.resolve(ctx.vars)?,
        ))
    }

    /// Lets the request through with the quota headers, or refuses it.
    fn apply(&self, ctx: &mut RequestCtx<'_>, verdict: Verdict, limit: u64, window: u64) -> Flow {
        match verdict {
            Verdict::Pass {
                remaining,
                reset_ms,
                first,
            } => {
                if self.show_headers {
                    let headers = &mut ctx.response.headers;
                    // Without `core::fmt`: these run on every request the plugin passes.
                    let limit = Decimal::new(limit);
                    headers.set_with("X-RateLimit-Limit", |o| limit.push_to(o));
                    let remaining = Decimal::new(remaining);
                    headers.set_with("X-RateLimit-Remaining", |o| remaining.push_to(o));
                    headers.set_with("X-RateLimit-Reset", |o| {
                        write_reset(o, reset_ms, first.then_some(window))
                    });
                }
                Flow::Continue
            }
            Verdict::Reject { reset_ms } => self.refuse(limit, Some(reset_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reset_prints_as_apisix() {
        let show = |ms, opened| {
            let mut s = String::new();
            super::write_reset(&mut s, ms, opened);
            s
        };
        assert_eq!(show(60_000, Some(60)), "60");
        assert_eq!(show(59_994, None), "59.99");
        assert_eq!(show(1_500, None), "1.5");
        assert_eq!(show(2_000, None), "2");
        assert_eq!(show(5, None), "0");
        assert_eq!(show(59_050, None), "59.05");
        assert_eq!(show(100, None), "0.1");
    }
}
