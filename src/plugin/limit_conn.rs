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
//! With `policy = "local"` the counts are shared by every core (`limit/conn.rs`).

use super::limiting::Common;
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::limit::amount::Amount;
use crate::limit::conn::Conns;
use crate::limit::key::LimitKey;
use crate::limit::table::{self, Table};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Config {
    conn: serde_json::Value,
    burst: serde_json::Value,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(flatten)]
    common: Common,
}

pub struct LimitConn {
    conn: Amount,
    burst: Amount,
    key: LimitKey,
    rejection: Answer,
    allow_degradation: bool,
    /// The delay per excess request, in seconds (f64 bits): `default_conn_delay`, moved
    /// towards observed latencies unless `only_use_default_delay`.
    unit_delay: Arc<AtomicU64>,
    learn_delay: bool,
    counts: Arc<Table<Conns>>,
}

/// One admitted request's hold on its key's count; dropping it releases the request.
struct Held {
    counts: Arc<Table<Conns>>,
    key: u64,
    since: Instant,
    delay: Duration,
    /// Where to record this request's latency, unless only the default delay is used.
    unit_delay: Option<Arc<AtomicU64>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counts.read(self.key, Conns::leave);
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
        c.common.local_only()?;
        let id = format!("limit-conn/{}:{conf}", ctx.owner);
        Ok(LimitConn {
            conn: Amount::parse(&c.conn, "conn", false)?,
            burst: Amount::parse(&c.burst, "burst", true)?,
            key: c.common.limit_key()?,
            rejection: c.common.rejection(),
            allow_degradation: c.common.allow_degradation,
            unit_delay: Arc::new(AtomicU64::new(c.default_conn_delay.to_bits())),
            learn_delay: !c.only_use_default_delay,
            counts: table::shared(&id, || Table::new(())),
        })
    }

    /// Counts the request in (holding it in the plugin's slot until the request ends), or
    /// refuses it; the delay it must wait, if admitted.
    fn admit(&self, ctx: &mut RequestCtx<'_>) -> Result<Duration, Flow> {
        let (Some(conn), Some(burst)) = (self.conn.resolve(ctx.vars), self.burst.resolve(ctx.vars))
        else {
            return match self.allow_degradation {
                true => Ok(Duration::ZERO),
                false => Err(Flow::Respond(super::Answer::error(
                    500,
                    "failed to limit conn",
                ))),
            };
        };
        let key = self.key.digest(ctx.vars, self.counts.hasher());
        let most = conn.saturating_add(burst).min(i64::MAX as u64 - 1) as i64;
        let n = match self.counts.update(key, |c| c.enter(most)) {
            Ok(Some(n)) => n as u64,
            Ok(None) | Err(table::Full) => return Err(Flow::Respond(self.rejection.clone())),
        };
        let delay = match n > conn {
            true => {
                let unit = f64::from_bits(self.unit_delay.load(Ordering::Relaxed));
                Duration::from_secs_f64(unit * ((n - 1) / conn) as f64)
            }
            false => Duration::ZERO,
        };
        ctx.slots.put(Held {
            counts: self.counts.clone(),
            key,
            since: Instant::now(),
            delay,
            unit_delay: self.learn_delay.then(|| self.unit_delay.clone()),
        });
        Ok(delay)
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
        match self.burst {
            // Nothing is ever admitted over `conn`: nothing waits.
            Amount::Fixed(0) => PhaseSet::ACCESS,
            _ => PhaseSet::ACCESS.with(PhaseSet::AWAITS),
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
