//! `prometheus` (APISIX priority 500, log phase): records each request it runs for in the
//! core's metrics shard (`crate::metrics`): `apisix_http_status`, `apisix_http_latency`,
//! `apisix_bandwidth`, by route, service, consumer and node. On a global rule it covers every
//! request; on a route, that route's. A request is recorded once even when a global rule and
//! its route both have the plugin. `prefer_name`: label routes and services by their `name`
//! instead of their id.

use super::{BuildCtx, CoreState, LogCtx, PhaseSet, Phases};
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    prefer_name: bool,
}

pub struct Prometheus {
    prefer_name: bool,
}

impl Prometheus {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        Ok(Prometheus {
            prefer_name: c.prefer_name,
        })
    }
}

impl Phases for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        500
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::LOG.with(PhaseSet::TIMED)
    }

    fn log(&self, ctx: &mut LogCtx<'_>, _state: &RefCell<CoreState>) {
        if !std::mem::replace(&mut ctx.metrics_recorded, true) {
            ctx.metrics.record(ctx.served, self.prefer_name);
        }
    }
}
