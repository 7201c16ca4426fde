//! `mocking` (APISIX priority 10900, access phase): answer with a canned response instead of
//! proxying: `response_status` (200), `content_type`, `response_example` (the body),
//! `response_headers`, an optional `delay` (seconds, awaited without blocking the core), and
//! `x-mock-by` unless `with_mock_header` is false.

use super::conf::{check_header_name, header_value};
use super::{Answer, BuildCtx, CoreState, Flow, Phase, PhaseSet, Phases, RequestCtx};
use crate::vars::Template;
use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;

fn ok() -> i64 {
    200
}

fn json() -> String {
    "application/json;charset=utf8".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    delay: f64,
    #[serde(default = "ok")]
    response_status: i64,
    #[serde(default = "json")]
    content_type: String,
    response_example: Option<String>,
    response_schema: Option<serde_json::Value>,
    #[serde(default = "yes")]
    with_mock_header: bool,
    response_headers: Option<serde_json::Map<String, serde_json::Value>>,
}

pub struct Mocking {
    delay: Duration,
    status: u16,
    headers: Vec<(String, Template)>,
    body: Vec<u8>,
}

impl Mocking {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.response_schema.is_some() {
            return Err("property \"response_schema\": generating bodies from a schema is not supported; use \"response_example\"".into());
        }
        let Some(example) = c.response_example else {
            return Err("property \"response_example\" is required".into());
        };
        if !(100..=599).contains(&c.response_status) {
            return Err(format!(
                "property \"response_status\" validation failed: expected {} to be between 100 and 599",
                c.response_status
            ));
        }
        let delay = crate::config::seconds("delay", c.delay, true).map_err(|e| e.to_string())?;
        let mut headers = vec![(
            "Content-Type".to_string(),
            header_value("content_type", &serde_json::Value::String(c.content_type))?,
        )];
        if c.with_mock_header {
            headers.push((
                "x-mock-by".into(),
                Template::parse(concat!("shardgate/", env!("CARGO_PKG_VERSION")))?,
            ));
        }
        for (name, value) in c.response_headers.iter().flatten() {
            let field = format!("response_headers.{name}");
            check_header_name(&field, name)?;
            headers.push((name.clone(), header_value(&field, value)?));
        }
        Ok(Mocking {
            delay,
            status: c.response_status as u16,
            headers,
            body: example.into_bytes(),
        })
    }
}

impl Phases for Mocking {
    fn name(&self) -> &'static str {
        "mocking"
    }

    fn priority(&self) -> i32 {
        10900
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::ACCESS.with(PhaseSet::AWAITS)
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
        if !self.delay.is_zero() {
            Box::pin(monoio::time::sleep(self.delay)).await;
        }
        let headers = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.render_string(ctx.vars)))
            .collect();
        Flow::Respond(Answer::new(self.status, headers, self.body.clone()))
    }
}
