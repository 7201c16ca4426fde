//! `fault-injection` (APISIX priority 11000, rewrite phase): for testing resilience, delay a
//! share of requests (`delay.duration` seconds, without blocking the core: the request's task
//! waits on a timer) and/or answer a share directly (`abort.http_status`, `body` with `$var`s,
//! `headers`), each when the request matches its `vars` (a list of condition lists, any of
//! which must hold) and wins its `percentage` draw.

use super::conf::{header_value, AnyOf};
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::vars::Template;
use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    abort: Option<AbortConfig>,
    delay: Option<DelayConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortConfig {
    http_status: i64,
    body: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    percentage: Option<i64>,
    vars: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayConfig {
    duration: f64,
    percentage: Option<i64>,
    vars: Option<serde_json::Value>,
}

struct Abort {
    status: u16,
    body: Option<Template>,
    headers: Vec<(String, Template)>,
    percentage: u32,
    when: AnyOf,
}

struct Delay {
    duration: Duration,
    percentage: u32,
    when: AnyOf,
}

pub struct FaultInjection {
    abort: Option<Abort>,
    delay: Option<Delay>,
}

fn percentage(field: &str, p: Option<i64>) -> Result<u32, String> {
    match p {
        None => Ok(100),
        Some(p) if (0..=100).contains(&p) => Ok(p as u32),
        Some(p) => Err(format!(
            "property \"{field}.percentage\" validation failed: expected {p} to be between 0 and 100"
        )),
    }
}

impl FaultInjection {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.abort.is_none() && c.delay.is_none() {
            return Err("value should match only one schema: needs \"abort\" or \"delay\"".into());
        }
        let abort = match c.abort {
            Some(a) => {
                if !(200..=599).contains(&a.http_status) {
                    return Err(format!(
                        "property \"abort.http_status\" validation failed: expected {} to be between 200 and 599",
                        a.http_status
                    ));
                }
                let mut headers = Vec::new();
                for (name, value) in a.headers.iter().flatten() {
                    let field = format!("abort.headers.{name}");
                    super::conf::check_header_name(&field, name)?;
                    headers.push((name.clone(), header_value(&field, value)?));
                }
                Some(Abort {
                    status: a.http_status as u16,
                    body: match &a.body {
                        Some(b) => {
                            Some(Template::parse(b).map_err(|e| format!("abort.body: {e}"))?)
                        }
                        None => None,
                    },
                    headers,
                    percentage: percentage("abort", a.percentage)?,
                    when: AnyOf::parse("abort.vars", a.vars.as_ref(), true)?,
                })
            }
            None => None,
        };
        let delay = match c.delay {
            Some(d) => Some(Delay {
                duration: crate::config::seconds("delay.duration", d.duration, false)
                    .map_err(|e| e.to_string())?,
                percentage: percentage("delay", d.percentage)?,
                when: AnyOf::parse("delay.vars", d.vars.as_ref(), true)?,
            }),
            None => None,
        };
        Ok(FaultInjection { abort, delay })
    }
}

/// Per core: a xorshift generator for the percentage draws.
struct Draws(u64);

impl Draws {
    /// True in `percent` cases out of 100.
    fn hit(state: &RefCell<CoreState>, percent: u32) -> bool {
        if percent >= 100 {
            return true;
        }
        let mut s = state.borrow_mut();
        let Some(d) = s.downcast_mut::<Draws>() else {
            return false;
        };
        d.0 ^= d.0 << 13;
        d.0 ^= d.0 >> 7;
        d.0 ^= d.0 << 17;
        (d.0 % 100) < u64::from(percent)
    }
}

impl Phases for FaultInjection {
    fn name(&self) -> &'static str {
        "fault-injection"
    }

    fn priority(&self) -> i32 {
        11000
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE.with(PhaseSet::AWAITS)
    }

    fn core_state(&self) -> CoreState {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Box::new(Draws(seed ^ (self as *const Self as u64).rotate_left(29)))
    }

    async fn request_phase(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx<'_>,
        state: &RefCell<CoreState>,
    ) -> Flow {
        if phase != Phase::Rewrite {
            return Flow::Continue;
        }
        if let Some(d) = &self.delay {
            if d.when.holds(ctx.vars) && Draws::hit(state, d.percentage) {
                // Boxed: the timer lives only while a request waits, not in every plugin call's
                // future.
                Box::pin(monoio::time::sleep(d.duration)).await;
            }
        }
        if let Some(a) = &self.abort {
            if a.when.holds(ctx.vars) && Draws::hit(state, a.percentage) {
                let body = a
                    .body
                    .as_ref()
                    .map(|t| {
                        let mut out = Vec::new();
                        t.render(ctx.vars, &mut out);
                        out
                    })
                    .unwrap_or_default();
                let headers = a
                    .headers
                    .iter()
                    .map(|(n, v)| (n.clone(), v.render_string(ctx.vars)))
                    .collect();
                return Flow::Respond(Answer::new(a.status, headers, body));
            }
        }
        Flow::Continue
    }
}
