//! `request-validation` (APISIX priority 2800, rewrite): checks the request's headers
//! (`header_schema`) and body (`body_schema`: JSON, or `application/x-www-form-urlencoded`)
//! against JSON Schemas, and refuses what fails with `rejected_code` (400) and
//! `rejected_msg` (else the failure, in APISIX's words, as plain text).
//!
//! The body is read whole before the plugins run, up to `max_req_body_size`; a larger body,
//! a missing one, or one that does not parse is refused. A JSON body that passes is sent
//! upstream re-encoded from what was checked (as APISIX does), so a parser that reads
//! duplicate keys or odd numbers differently upstream sees exactly the validated document.
//!
//! Deliberate difference: `max_req_body_size` defaults to 64 KiB here (APISIX: 64 MiB),
//! and may be raised up to 16 MiB: the body sits in the connection's memory while it is
//! checked, and a default that lets every connection hold 64 MiB is an easy way to run a
//! gateway out of memory.

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::schema::Schema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header_schema: Option<Value>,
    body_schema: Option<Value>,
    max_req_body_size: Option<i64>,
    rejected_code: Option<i64>,
    rejected_msg: Option<String>,
}

const DEFAULT_MAX_BODY: usize = 64 * 1024;
const MAX_BODY_CEILING: usize = 16 * 1024 * 1024;

pub struct RequestValidation {
    headers: Option<Schema>,
    body: Option<Schema>,
    max_body: usize,
    rejected_code: u16,
    rejected_msg: Option<String>,
}

impl RequestValidation {
    pub fn build(conf: &Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.header_schema.is_none() && c.body_schema.is_none() {
            return Err(
                "object matches none of the required: [\"header_schema\"] or [\"body_schema\"]"
                    .into(),
            );
        }
        let schema = |field: &str, v: &Option<Value>| -> Result<Option<Schema>, String> {
            match v {
                None => Ok(None),
                Some(v) if !v.is_object() => Err(format!(
                    "property \"{field}\" validation failed: wrong type: expected object"
                )),
                Some(v) => Schema::compile(v)
                    .map(Some)
                    .map_err(|e| format!("property \"{field}\": {e}")),
            }
        };
        let rejected_code = match c.rejected_code {
            None => 400,
            Some(n) if (200..=599).contains(&n) => n as u16,
            Some(n) => {
                return Err(format!(
                    "property \"rejected_code\" validation failed: expected {n} to be between 200 and 599"
                ))
            }
        };
        if let Some(m) = &c.rejected_msg {
            if m.is_empty() || m.chars().count() > 256 {
                return Err(
                    "property \"rejected_msg\" validation failed: expected 1 to 256 characters"
                        .into(),
                );
            }
        }
        let max_body = match c.max_req_body_size {
            None => DEFAULT_MAX_BODY,
            Some(n) if n >= 1 && n as u64 <= MAX_BODY_CEILING as u64 => n as usize,
            Some(n) => {
                return Err(format!(
                    "property \"max_req_body_size\" validation failed: expected {n} to be between 1 and {MAX_BODY_CEILING}"
                ))
            }
        };
        Ok(RequestValidation {
            headers: schema("header_schema", &c.header_schema)?,
            body: schema("body_schema", &c.body_schema)?,
            max_body,
            rejected_code,
            rejected_msg: c.rejected_msg,
        })
    }

    /// The refusal: `rejected_msg`, else `why`.
    fn reject(&self, why: &str) -> Flow {
        let msg = self.rejected_msg.as_deref().unwrap_or(why);
        Flow::Respond(Answer::new(
            self.rejected_code,
            vec![("Content-Type".into(), "text/plain".into())],
            msg.as_bytes().to_vec(),
        ))
    }

    /// Checks the body; a JSON body that passes becomes the body sent upstream, re-encoded.
    fn check_body(&self, schema: &Schema, ctx: &mut RequestCtx<'_>) -> Result<(), String> {
        let Some(body) = ctx.body.filter(|b| !b.is_empty()) else {
            return Err(match ctx.body {
                None => format!(
                    "request body larger than max_req_body_size ({} bytes)",
                    self.max_body
                ),
                Some(_) => "request body is empty".into(),
            });
        };
        let mut content_types = ctx
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-type"));
        let content_type = content_types.next().map(|(_, v)| crate::http::trim(v));
        if content_types.next().is_some() {
            // APISIX and the upstream could read an ambiguous body differently.
            return Err("duplicated Content-Type header".into());
        }
        let form = content_type.is_some_and(|t| {
            t.len() >= 33 && t[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        });
        let value = if form {
            decode_form(body)
        } else {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("failed to decode the req body: {e}"))?
        };
        schema.check(&value)?;
        if !form {
            ctx.request.body = serde_json::to_vec(&value).ok();
        }
        Ok(())
    }
}

/// The request headers as APISIX hands them to the schema: lower-case names, a string
/// value, or an array of them when a header is repeated.
fn header_object(ctx: &RequestCtx<'_>) -> Value {
    let mut map = Map::new();
    for (name, value) in ctx.headers.iter() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = Value::String(String::from_utf8_lossy(crate::http::trim(value)).into_owned());
        push_value(&mut map, name, value);
    }
    Value::Object(map)
}

/// Appends `value` under `key`, turning a repeated key into an array (ngx's tables).
fn push_value(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(first) => {
            let first = first.take();
            map.insert(key, Value::Array(vec![first, value]));
        }
    }
}

/// `a=1&b=x+y&b=%21&flag` as ngx.decode_args reads it: values percent-decoded (`+` is a
/// space), repeated keys as arrays, a key without `=` as `true`.
fn decode_form(body: &[u8]) -> Value {
    let mut map = Map::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        let value = v.map_or(Value::Bool(true), |v| {
            Value::String(crate::http::decode_form_component(v))
        });
        push_value(&mut map, crate::http::decode_form_component(k), value);
    }
    Value::Object(map)
}

impl Phases for RequestValidation {
    fn name(&self) -> &'static str {
        "request-validation"
    }

    fn priority(&self) -> i32 {
        2800
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE
    }

    fn reads_body(&self) -> Option<usize> {
        self.body.is_some().then_some(self.max_body)
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        if let Some(schema) = &self.headers {
            if let Err(why) = schema.check(&header_object(ctx)) {
                return self.reject(&why);
            }
        }
        if let Some(schema) = &self.body {
            if let Err(why) = self.check_body(schema, ctx) {
                return self.reject(&why);
            }
        }
        Flow::Continue
    }
}
