//! `brotli` (APISIX priority 996, header and body filters; it runs before `gzip`, so a
//! client accepting both gets brotli): brotli-compresses responses for clients that accept
//! `br` (rules in `compress.rs`), with APISIX's fields: `types`, `min_length`, `comp_level`
//! (0-11, default 6), `mode` (0 generic, 1 text, 2 font), `lgwin` (0 or 10-24, default 19),
//! `lgblock` (0 or 16-24, default 0 = automatic), `vary`, `http_version` (accepted).

use super::compress::{Encoder, Rules, TypesConf};
use super::{BodyCtx, BuildCtx, CoreState, PhaseSet, Phases, ResponseCtx};
use brotli::enc::backward_references::BrotliEncoderMode;
use brotli::enc::BrotliEncoderParams;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    types: Option<TypesConf>,
    min_length: Option<u64>,
    comp_level: Option<i32>,
    mode: Option<u8>,
    lgwin: Option<i32>,
    lgblock: Option<i32>,
    #[allow(dead_code)]
    http_version: Option<f64>,
    vary: Option<bool>,
}

pub struct Brotli {
    rules: Rules,
    quality: i32,
    mode: u8,
    lgwin: i32,
    lgblock: i32,
}

impl Brotli {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let bad = |f: &str, want: &str| {
            Err(format!(
                "property \"{f}\" validation failed: expected {want}"
            ))
        };
        let quality = c.comp_level.unwrap_or(6);
        if !(0..=11).contains(&quality) {
            return bad("comp_level", "0 to 11");
        }
        let mode = c.mode.unwrap_or(0);
        if mode > 2 {
            return bad("mode", "0, 1 or 2");
        }
        let lgwin = c.lgwin.unwrap_or(19);
        if lgwin != 0 && !(10..=24).contains(&lgwin) {
            return bad("lgwin", "0 or 10 to 24");
        }
        let lgblock = c.lgblock.unwrap_or(0);
        if lgblock != 0 && !(16..=24).contains(&lgblock) {
            return bad("lgblock", "0 or 16 to 24");
        }
        Ok(Brotli {
            rules: Rules::new(c.types, c.min_length, c.vary)?,
            quality,
            mode,
            lgwin,
            lgblock,
        })
    }
}

impl Phases for Brotli {
    fn name(&self) -> &'static str {
        "brotli"
    }

    fn priority(&self) -> i32 {
        996
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::HEADER_FILTER.with(PhaseSet::BODY_FILTER)
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {
        if !self.rules.start(ctx, "br") {
            return;
        }
        let mut lgwin = if self.lgwin == 0 { 22 } else { self.lgwin };
        let length = super::compress::known_length(ctx);
        if let Some(n) = length {
            // A window larger than the body buys nothing and costs its set-up.
            let bits = 64 - n.max(1).saturating_sub(1).leading_zeros() as i32;
            lgwin = lgwin.min(bits.max(10));
        }
        let params = BrotliEncoderParams {
            quality: self.quality,
            lgwin,
            lgblock: self.lgblock,
            size_hint: length.map_or(0, |n| n as usize),
            mode: match self.mode {
                1 => BrotliEncoderMode::BROTLI_MODE_TEXT,
                2 => BrotliEncoderMode::BROTLI_MODE_FONT,
                _ => BrotliEncoderMode::BROTLI_MODE_GENERIC,
            },
            ..Default::default()
        };
        let out = Vec::with_capacity(16 * 1024);
        let enc = brotli::CompressorWriter::with_params(out, 4096, &params);
        ctx.slots.put(Encoder::Brotli(Some(Box::new(enc))));
    }

    fn body_filter(&self, ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {
        Encoder::filter(ctx, "brotli");
    }
}
