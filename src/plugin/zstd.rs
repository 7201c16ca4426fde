//! `zstd` (Shardgate's; APISIX has none; priority 997, before `brotli` and `gzip`, so a
//! client that accepts zstd gets it): zstd-compresses responses for clients that accept
//! `zstd` (RFC 8878; rules in `compress.rs`), with the fields of its siblings: `types`,
//! `min_length`, `comp_level` (1-19, default 3, zstd's own default), `vary`. The window is
//! zstd's default for the level (at most 8 MiB up to level 19, what browsers accept).

use super::compress::{Encoder, Rules, TypesConf};
use super::{BodyCtx, BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    types: Option<TypesConf>,
    min_length: Option<u64>,
    comp_level: Option<i32>,
    vary: Option<bool>,
}

pub struct Zstd {
    rules: Rules,
    level: i32,
}

impl Zstd {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let level = c.comp_level.unwrap_or(3);
        if !(1..=19).contains(&level) {
            return Err("property \"comp_level\" validation failed: expected 1 to 19".into());
        }
        Ok(Zstd {
            rules: Rules::new(c.types, c.min_length, c.vary)?,
            level,
        })
    }
}

impl Phases for Zstd {
    fn name(&self) -> &'static str {
        "zstd"
    }

    fn priority(&self) -> i32 {
        997
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::HEADER_FILTER.with(PhaseSet::BODY_FILTER)
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        if !self.rules.start(ctx, "zstd") {
            return;
        }
        let out = Vec::with_capacity(16 * 1024);
        let length = super::compress::known_length(ctx);
        let enc = zstd::stream::write::Encoder::new(out, self.level).and_then(|mut e| {
            e.set_pledged_src_size(length)?;
            Ok(e)
        });
        match enc {
            Ok(enc) => ctx.slots.put(Encoder::Zstd(Some(Box::new(enc)))),
            Err(e) => crate::warn!("zstd: cannot start an encoder: {e}"),
        }
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        Encoder::filter(ctx, "zstd");
    }
}
