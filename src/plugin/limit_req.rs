//! `limit-req` (APISIX priority 1001, access phase): nginx's leaky bucket per key. Requests
//! drain at `rate` per second; up to `burst` more may wait their turn (delayed until what is
//! ahead of them has drained, or let through at once with `nodelay`); beyond that,
//! `rejected_code` (503) with `{"error_msg": rejected_msg}` when set.
//!
//! With `policy = "local"` the buckets are shared by every core (`limit/bucket.rs`): one
//! bucket per key for the whole gateway. A bucket belongs to the route (service, global
//! rule) and its configuration, as limit-count's counters do.

use super::limiting::Common;
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::limit::bucket::{Bucket, Rate, Verdict};
use crate::limit::key::LimitKey;
use crate::limit::table::{self, Table};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
struct Config {
    rate: f64,
    burst: f64,
    #[serde(default)]
    nodelay: bool,
    #[serde(flatten)]
    common: Common,
}

pub struct LimitReq {
    key: LimitKey,
    rejection: Answer,
    nodelay: bool,
    buckets: Arc<Table<Bucket>>,
}

impl LimitReq {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        c.common.local_only()?;
        let rate = Rate {
            rate_milli: ((c.rate * 1000.0) as u64).max(1),
            burst_milli: (c.burst * 1000.0) as u64,
        };
        let id = format!("limit-req/{}:{conf}", ctx.owner);
        Ok(LimitReq {
            key: c.common.limit_key()?,
            rejection: c.common.rejection(),
            nodelay: c.nodelay,
            buckets: table::shared(&id, || Table::new(rate)),
        })
    }

    /// Admits or refuses the request; the delay it must wait, if admitted.
    fn admit(&self, ctx: &mut RequestCtx<'_>) -> Result<Duration, Flow> {
        let key = self.key.digest(ctx.vars, self.buckets.hasher());
        let now = crate::limit::now_ms();
        let rate = &self.buckets.params;
        match self.buckets.update(key, |b| b.take(now, rate)) {
            Ok(Verdict::Pass { delay_ms, .. }) => Ok(Duration::from_millis(delay_ms)),
            Ok(Verdict::Reject) | Err(table::Full) => Err(Flow::Respond(self.rejection.clone())),
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
        match self.nodelay {
            true => PhaseSet::ACCESS,
            // Delaying waits on a timer.
            false => PhaseSet::ACCESS.with(PhaseSet::AWAITS),
        }
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        match self.admit(ctx) {
            Ok(_) => Flow::Continue,
            Err(refused) => refused,
        }
    }

    async fn request_phase(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx<'_>,
        _state: &RefCell<CoreState>,
    ) -> Flow {
        if phase != Phase::Access {
            return Flow::Continue;
        }
        super::limiting::after_delay(self.admit(ctx)).await
    }
}
