//! `opentelemetry` (APISIX priority 12009, rewrite and log): one server span per sampled
//! request, child of the client's span when it sent a W3C `traceparent`, and the trace
//! context passed upstream (`traceparent` replaced with this span's; `tracestate` passed on
//! as received). Samplers as APISIX: `always_off` (the default), `always_on`,
//! `trace_id_ratio` (`options.fraction`), `parent_base` (the client's sampled flag, else
//! `options.root`). Spans go to the exporter (`crate::tracing`), off the request path.

use super::{BuildCtx, CoreState, Flow, LogCtx, PhaseSet, Phases, RequestCtx};
use crate::tracing::{Attr, Finished};
use crate::vars::Var;
use serde::Deserialize;
use std::cell::RefCell;
use std::time::SystemTime;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    sampler: SamplerConf,
    #[serde(default)]
    additional_attributes: Vec<String>,
    #[serde(default)]
    additional_header_prefix_attributes: Vec<String>,
}

#[derive(Deserialize)]
struct SamplerConf {
    #[serde(default = "always_off")]
    name: String,
    #[serde(default)]
    options: SamplerOptions,
}

#[derive(Deserialize, Default)]
struct SamplerOptions {
    #[serde(default)]
    fraction: f64,
    root: Option<Box<SamplerConf>>,
}

fn always_off() -> String {
    "always_off".into()
}

impl Default for SamplerConf {
    fn default() -> SamplerConf {
        SamplerConf {
            name: always_off(),
            options: SamplerOptions::default(),
        }
    }
}

/// Whether a new trace (or, for `ParentBased`, one without a parent) is recorded.
enum Sampler {
    On,
    Off,
    /// Sampled when the trace id's low 63 bits fall below this bound (OpenTelemetry's rule).
    Ratio(u64),
    ParentBased(Box<Sampler>),
}

impl Sampler {
    fn parse(c: &SamplerConf) -> Result<Sampler, String> {
        Ok(match c.name.as_str() {
            "always_on" => Sampler::On,
            "always_off" => Sampler::Off,
            "trace_id_ratio" => {
                let f = c.options.fraction;
                if !(0.0..=1.0).contains(&f) {
                    return Err("sampler.options.fraction: expect 0 to 1".into());
                }
                Sampler::Ratio((f * (1u64 << 63) as f64) as u64)
            }
            "parent_base" => {
                let root = match &c.options.root {
                    Some(r) if r.name == "parent_base" => {
                        return Err(
                            "sampler.options.root: parent_base cannot be its own root".into()
                        )
                    }
                    Some(r) => Sampler::parse(r)?,
                    None => Sampler::Off,
                };
                Sampler::ParentBased(Box::new(root))
            }
            other => return Err(format!("sampler.name: unknown sampler \"{other}\"")),
        })
    }

    fn sampled(&self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match self {
            Sampler::On => true,
            Sampler::Off => false,
            Sampler::Ratio(bound) => {
                let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
                (low >> 1) < *bound
            }
            Sampler::ParentBased(root) => match parent {
                Some(flag) => flag,
                None => root.sampled(trace_id, None),
            },
        }
    }
}

pub struct OpenTelemetry {
    sampler: Sampler,
    attributes: Vec<(String, Var)>,
    header_prefixes: Vec<String>,
    x_request_id: bool,
}

/// A request's span while it runs.
struct Open {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: String,
    start: SystemTime,
}

impl OpenTelemetry {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let attributes = c
            .additional_attributes
            .iter()
            .map(|a| {
                Var::parse(a.trim_start_matches('$'))
                    .map(|v| (a.trim_start_matches('$').to_string(), v))
                    .map_err(|e| format!("additional_attributes: {e}"))
            })
            .collect::<Result<_, _>>()?;
        crate::tracing::start();
        Ok(OpenTelemetry {
            sampler: Sampler::parse(&c.sampler)?,
            attributes,
            header_prefixes: c
                .additional_header_prefix_attributes
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            x_request_id: crate::tracing::settings().trace_id_source == "x-request-id",
        })
    }
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    out.iter().any(|&b| b != 0).then_some(out)
}

/// The client's `traceparent` (version 00): trace id, parent span id, sampled flag.
fn parent_of(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = value.split(|&b| b == b'-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version != b"00" || parts.next().is_some() {
        return None;
    }
    let flags = hex::<1>(flags).map_or(0, |f| f[0]);
    Some((hex(trace)?, hex(span)?, flags & 1 == 1))
}

impl Phases for OpenTelemetry {
    fn name(&self) -> &'static str {
        "opentelemetry"
    }

    fn priority(&self) -> i32 {
        12009
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::REWRITE.with(PhaseSet::LOG).with(PhaseSet::TIMED)
    }

    fn rewrite(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let header = |name: &str| {
            ctx.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| crate::http::trim(v))
        };
        let parent = header("traceparent").and_then(parent_of);
        let trace_state = header("tracestate")
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let trace_id = match parent {
            Some((t, _, _)) => t,
            None => {
                let from_request = self
                    .x_request_id
                    .then(|| header("x-request-id").and_then(hex::<16>))
                    .flatten();
                from_request.unwrap_or_else(|| {
                    let mut t = [0u8; 16];
                    t[..8].copy_from_slice(&crate::tracing::random_u64().to_be_bytes());
                    t[8..].copy_from_slice(&crate::tracing::random_u64().to_be_bytes());
                    t
                })
            }
        };
        let sampled = self.sampler.sampled(&trace_id, parent.map(|p| p.2));
        let span_id = crate::tracing::random_u64().to_be_bytes();
        let flags = if sampled { "01" } else { "00" };
        // Written in place: no string per id on a path every request takes.
        ctx.request.headers.set_with("traceparent", |v| {
            use std::fmt::Write;
            v.push_str("00-");
            for b in trace_id {
                let _ = write!(v, "{b:02x}");
            }
            v.push('-');
            for b in span_id {
                let _ = write!(v, "{b:02x}");
            }
            v.push('-');
            v.push_str(flags);
        });
        if sampled {
            ctx.slots.put(Open {
                trace_id,
                span_id,
                parent: parent.map(|p| p.1),
                trace_state,
                start: SystemTime::now(),
            });
        }
        Flow::Continue
    }

    fn log(&self, ctx: &mut LogCtx<'_>, _state: &RefCell<CoreState>) {
        let Some(open) = ctx.slots.take::<Open>() else {
            return;
        };
        let s = ctx.served;
        let text = |v: Var| {
            ctx.vars
                .var(&v)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let method = text(Var::RequestMethod);
        let mut name = method.clone();
        let mut attrs = vec![
            ("net.host.name".to_string(), Attr::Str(text(Var::Host))),
            ("http.method".into(), Attr::Str(method.clone())),
            ("http.scheme".into(), Attr::Str(text(Var::Scheme))),
            ("http.target".into(), Attr::Str(text(Var::RequestUri))),
            (
                "http.user_agent".into(),
                Attr::Str(text(Var::Http("user_agent".into()))),
            ),
            ("http.request.method".into(), Attr::Str(method)),
            ("url.scheme".into(), Attr::Str(text(Var::Scheme))),
            ("url.path".into(), Attr::Str(text(Var::Uri))),
            (
                "user_agent.original".into(),
                Attr::Str(text(Var::Http("user_agent".into()))),
            ),
        ];
        if let Some(r) = s.route {
            let path = r.matched_uri(s.path).to_string();
            name = format!("{name} {path}");
            attrs.push(("apisix.route_id".into(), Attr::Str(r.id.to_string())));
            let route_name = r.labels.name.as_deref().unwrap_or("");
            attrs.push(("apisix.route_name".into(), Attr::Str(route_name.into())));
            attrs.push(("http.route".into(), Attr::Str(path)));
            if let Some(sid) = &r.service_id {
                attrs.push(("apisix.service_id".into(), Attr::Str(sid.to_string())));
                let sname = r.labels.service_name.as_deref().unwrap_or("");
                attrs.push(("apisix.service_name".into(), Attr::Str(sname.into())));
            }
        }
        let source = crate::metrics::series::Source::of(s).as_str();
        attrs.push(("apisix.response_source".into(), Attr::Str(source.into())));
        attrs.push(("http.status_code".into(), Attr::Int(s.status.into())));
        attrs.push((
            "http.response.status_code".into(),
            Attr::Int(s.status.into()),
        ));
        for (key, var) in &self.attributes {
            if let Some(v) = ctx.vars.var(var) {
                attrs.push((
                    key.clone(),
                    Attr::Str(String::from_utf8_lossy(v).into_owned()),
                ));
            }
        }
        if !self.header_prefixes.is_empty() {
            for (n, v) in ctx.headers.iter() {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                if self
                    .header_prefixes
                    .iter()
                    .any(|p| lower.starts_with(p.as_str()))
                {
                    let v = String::from_utf8_lossy(crate::http::trim(v)).into_owned();
                    attrs.push((lower, Attr::Str(v)));
                }
            }
        }
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let end = SystemTime::now();
        crate::tracing::submit(Finished {
            trace_id: open.trace_id,
            span_id: open.span_id,
            parent: open.parent,
            trace_state: open.trace_state,
            name,
            start_unix_nano: nanos(open.start),
            end_unix_nano: nanos(end).max(nanos(open.start)),
            attributes: attrs,
            error: (s.status >= 500).then(|| format!("{source} error: {}", s.status)),
        });
    }
}
