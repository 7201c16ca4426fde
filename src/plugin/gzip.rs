//! `gzip` (APISIX priority 995, header and body filters): gzip-compresses responses for
//! clients that accept it (rules in `compress.rs`), with APISIX's fields: `types` (default
//! `["text/html"]`, `"*"` for any), `min_length` (default 20), `comp_level` (1-9, default 1),
//! `vary` (add `Vary: Accept-Encoding`; default off as in APISIX), and `http_version` /
//! `buffers`, accepted for compatibility (nginx tuning with no counterpart here).

use super::compress::{Encoder, Rules, TypesConf};
use super::{BodyCtx, BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    types: Option<TypesConf>,
    min_length: Option<u64>,
    comp_level: Option<u32>,
    #[allow(dead_code)]
    http_version: Option<f64>,
    #[allow(dead_code)]
    buffers: Option<serde_json::Value>,
    vary: Option<bool>,
}

pub struct Gzip {
    rules: Rules,
    level: u32,
}

impl Gzip {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let level = c.comp_level.unwrap_or(1);
        if !(1..=9).contains(&level) {
            return Err("property \"comp_level\" validation failed: expected 1 to 9".into());
        }
        Ok(Gzip {
            rules: Rules::new(c.types, c.min_length, c.vary)?,
            level,
        })
    }
}

impl Phases for Gzip {
    fn name(&self) -> &'static str {
        "gzip"
    }

    fn priority(&self) -> i32 {
        995
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::HEADER_FILTER.with(PhaseSet::BODY_FILTER)
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        if self.rules.start(ctx, "gzip") {
            let out = Vec::with_capacity(16 * 1024);
            let enc = GzEncoder::new(out, Compression::new(self.level));
            ctx.slots.put(Encoder::Gzip(Box::new(enc)));
        }
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        Encoder::filter(ctx, "gzip");
    }
}
