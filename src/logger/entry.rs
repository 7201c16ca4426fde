//! A request's log entry, as APISIX's loggers write it: the full entry (request, response,
//! upstream, latencies, consumer, route, service), or `log_format`, a JSON object whose
//! `$var` strings are the request's variables.

use crate::plugin::LogCtx;
use crate::vars::Var;
use serde_json::{json, Map, Value};

/// Nesting of `log_format` objects at most (APISIX's limit).
const MAX_DEPTH: usize = 5;

/// What an entry holds.
pub enum Format {
    Full,
    Custom(Vec<(String, Field)>),
}

pub enum Field {
    Var(LogVar),
    Literal(Value),
    Nested(Vec<(String, Field)>),
}

/// A variable of a log entry: a request variable, or one known only once the request is
/// over.
pub enum LogVar {
    Request(Var),
    /// `time_iso8601`: the time the request ended, ISO 8601 in UTC.
    TimeIso8601,
    /// `request_time`: seconds, with milliseconds.
    RequestTime,
    UpstreamAddr,
    UpstreamStatus,
    /// `upstream_response_time`: seconds, with milliseconds.
    UpstreamResponseTime,
    BytesSent,
    RequestLength,
}

impl Format {
    /// `log_format` as configured (`None`: the full entry); `field` names it in errors.
    pub fn parse(conf: Option<&Value>, field: &str) -> Result<Format, String> {
        match conf {
            None => Ok(Format::Full),
            Some(Value::Object(m)) => Ok(Format::Custom(fields(m, field, 1)?)),
            Some(_) => Err(format!("{field}: wrong type: expected object")),
        }
    }

    /// The entry of the request `ctx` describes, as JSON text.
    pub fn render(&self, ctx: &LogCtx<'_>) -> String {
        let v = match self {
            Format::Full => full(ctx),
            Format::Custom(f) => {
                let mut m = object(f, ctx);
                if let Some(r) = ctx.served.route {
                    let service = r.service_id.as_deref().map_or(Value::Null, |s| json!(s));
                    m.insert("service_id".into(), service);
                    m.insert("route_id".into(), json!(&*r.id));
                }
                Value::Object(m)
            }
        };
        v.to_string()
    }
}

fn fields(
    m: &Map<String, Value>,
    field: &str,
    depth: usize,
) -> Result<Vec<(String, Field)>, String> {
    m.iter()
        .map(|(k, v)| {
            let f = match v {
                Value::String(s) if s.starts_with('$') => {
                    Field::Var(LogVar::parse(&s[1..]).map_err(|e| format!("{field}.{k}: {e}"))?)
                }
                Value::Object(inner) if depth < MAX_DEPTH => {
                    Field::Nested(fields(inner, &format!("{field}.{k}"), depth + 1)?)
                }
                Value::Object(_) => {
                    return Err(format!(
                        "{field}.{k}: nested deeper than {MAX_DEPTH} levels"
                    ))
                }
                other => Field::Literal(other.clone()),
            };
            Ok((k.clone(), f))
        })
        .collect()
}

impl LogVar {
    fn parse(name: &str) -> Result<LogVar, String> {
        Ok(match name {
            "time_iso8601" => LogVar::TimeIso8601,
            "request_time" => LogVar::RequestTime,
            "upstream_addr" => LogVar::UpstreamAddr,
            "upstream_status" => LogVar::UpstreamStatus,
            "upstream_response_time" => LogVar::UpstreamResponseTime,
            "bytes_sent" | "body_bytes_sent" => LogVar::BytesSent,
            "request_length" => LogVar::RequestLength,
            other => LogVar::Request(Var::parse(other)?),
        })
    }

    fn value(&self, ctx: &LogCtx<'_>) -> Value {
        let s = ctx.served;
        let secs = |d: std::time::Duration| json!((d.as_secs_f64() * 1000.0).round() / 1000.0);
        match self {
            LogVar::Request(v) => ctx
                .vars
                .var(v)
                .map_or(Value::Null, |b| json!(String::from_utf8_lossy(b))),
            LogVar::TimeIso8601 => {
                let mut out = [0u8; 20];
                json!(crate::log::access::iso8601_utc(
                    crate::log::now_secs(),
                    &mut out
                ))
            }
            LogVar::RequestTime => secs(s.latency),
            LogVar::UpstreamAddr => s.node.map_or(Value::Null, |n| json!(n.to_string())),
            LogVar::UpstreamStatus => s.upstream_status.map_or(Value::Null, |c| json!(c)),
            LogVar::UpstreamResponseTime => s.upstream_latency.map_or(Value::Null, secs),
            LogVar::BytesSent => json!(s.bytes_sent),
            LogVar::RequestLength => json!(s.request_bytes),
        }
    }
}

fn object(fields: &[(String, Field)], ctx: &LogCtx<'_>) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, f)| {
            let v = match f {
                Field::Var(v) => v.value(ctx),
                Field::Literal(l) => l.clone(),
                Field::Nested(inner) => Value::Object(object(inner, ctx)),
            };
            (k.clone(), v)
        })
        .collect()
}

fn text(ctx: &LogCtx<'_>, v: Var) -> String {
    ctx.vars
        .var(&v)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// APISIX's full entry (`log-util.get_full_log`). Response headers are not in it (the
/// gateway does not keep them past sending).
fn full(ctx: &LogCtx<'_>) -> Value {
    let s = ctx.served;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let latency = ms(s.latency);
    let upstream = s.upstream_latency.map(ms);
    let apisix = (latency - upstream.unwrap_or(0.0)).max(0.0);
    let host = text(ctx, Var::Host);
    let request_uri = text(ctx, Var::RequestUri);
    let mut headers = Map::new();
    for (name, value) in ctx.headers.iter() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = json!(String::from_utf8_lossy(crate::http::trim(value)));
        match headers.get_mut(&name) {
            Some(Value::Array(a)) => a.push(value),
            Some(first) => *first = json!([first.clone(), value]),
            None => {
                headers.insert(name, value);
            }
        }
    }
    let mut query = Map::new();
    let q = text(ctx, Var::QueryString);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, json!(v)),
            None => (pair, json!(true)),
        };
        query.insert(k.to_string(), v);
    }
    let (route_id, service_id) = match s.route {
        Some(r) => (json!(&*r.id), json!(r.service_id.as_deref().unwrap_or(""))),
        None => (Value::Null, json!(host)),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let mut entry = json!({
        "request": {
            "url": format!("{}://{}:{}{}", text(ctx, Var::Scheme), host, text(ctx, Var::ServerPort), request_uri),
            "uri": request_uri,
            "method": text(ctx, Var::RequestMethod),
            "headers": headers,
            "querystring": query,
            "size": s.request_bytes,
        },
        "response": { "status": s.status, "size": s.bytes_sent },
        "server": { "hostname": crate::metrics::exposition::hostname(), "version": env!("CARGO_PKG_VERSION") },
        "service_id": service_id,
        "route_id": route_id,
        "client_ip": text(ctx, Var::RemoteAddr),
        "start_time": (now_ms - latency).floor(),
        "latency": latency,
        "apisix_latency": apisix,
    });
    if let Some(m) = entry.as_object_mut() {
        if let Some(n) = s.node {
            m.insert("upstream".into(), json!(n.to_string()));
        }
        if let Some(u) = upstream {
            m.insert("upstream_latency".into(), json!(u));
        }
        if let Some(c) = s.consumer {
            m.insert("consumer".into(), json!({ "username": &*c.username }));
        }
    }
    entry
}
