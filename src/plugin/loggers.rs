//! The loggers: `http-logger` (APISIX priority 410), `tcp-logger` (405), `udp-logger` (400)
//! and `file-logger` (399), log phase. Each makes the request's entry (`crate::logger::entry`:
//! APISIX's full entry, or `log_format`) on its core and hands it to the log shipper
//! (`crate::logger`), which batches and sends it off the request path.

use super::conf::AnyOf;
use super::{BuildCtx, CoreState, LogCtx, PhaseSet, Phases};
use crate::logger::entry::Format;
use crate::logger::sink::{Concat, LogTls, Sink};
use crate::logger::{Batching, Channel};
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

/// What every logger shares: which requests it logs, how it writes entries, and where they
/// go.
pub struct Logger {
    /// `match` (file-logger's): log only requests for which one of these condition lists
    /// holds, as APISIX's lua-resty-expr list; empty: every request.
    only: AnyOf,
    format: Format,
    channel: Arc<Channel>,
}

/// The fields every logger takes besides its target's (APISIX's, with the batch
/// processor's); the body fields are refused until they are built.
#[derive(Deserialize)]
struct Common {
    log_format: Option<serde_json::Value>,
    #[serde(default)]
    include_req_body: bool,
    #[serde(default)]
    include_resp_body: bool,
    #[serde(flatten)]
    batching: Batching,
}

impl Logger {
    fn build(name: &str, conf: &serde_json::Value, sink: Sink) -> Result<Logger, String> {
        let c: Common = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        if c.include_req_body || c.include_resp_body {
            return Err("include_req_body and include_resp_body are not supported yet".into());
        }
        if c.batching.batch_max_size == 0 {
            return Err(
                "property \"batch_max_size\" validation failed: expected 0 to be at least 1".into(),
            );
        }
        let format = Format::parse(c.log_format.as_ref(), "log_format")?;
        Ok(Logger {
            only: AnyOf::parse("match", conf.get("match"), true)?,
            format,
            channel: crate::logger::channel(name, sink, c.batching),
        })
    }

    fn log(&self, ctx: &LogCtx<'_>) {
        if self.only.holds(ctx.vars) {
            self.channel.push(self.format.render(ctx));
        }
    }
}

fn field<'a>(conf: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    conf.get(name)
}

fn host_port(conf: &serde_json::Value) -> Result<(String, u16), String> {
    let host = field(conf, "host")
        .and_then(|h| h.as_str())
        .ok_or("property \"host\" is required")?;
    let port = field(conf, "port")
        .and_then(|p| p.as_u64())
        .filter(|p| (1..=65535).contains(p))
        .ok_or("property \"port\" is required: an integer 1-65535")?;
    Ok((host.to_string(), port as u16))
}

macro_rules! logger {
    ($ty:ident, $name:literal, $priority:literal, $sink:expr) => {
        pub struct $ty(Logger);

        impl $ty {
            pub fn build(
                conf: &serde_json::Value,
                _ctx: &mut BuildCtx<'_>,
            ) -> Result<Self, String> {
                let sink: Result<Sink, String> = $sink(conf);
                Ok($ty(Logger::build($name, conf, sink?)?))
            }
        }

        impl Phases for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn priority(&self) -> i32 {
                $priority
            }

            fn uses(&self) -> PhaseSet {
                PhaseSet::LOG.with(PhaseSet::TIMED)
            }

            fn log(&self, ctx: &mut LogCtx<'_>, _state: &RefCell<CoreState>) {
                self.0.log(ctx);
            }
        }
    };
}

logger!(
    HttpLogger,
    "http-logger",
    410,
    |conf: &serde_json::Value| {
        let uri = field(conf, "uri")
            .and_then(|u| u.as_str())
            .ok_or("property \"uri\" is required")?;
        let (rest, https) = match (uri.strip_prefix("http://"), uri.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(format!("uri: {uri} is not an http:// or https:// URI")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("uri: bad port in {uri}"))?,
            ),
            None => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_matches(|c| c == '[' || c == ']');
        if host.is_empty() {
            return Err(format!("uri: no host in {uri}"));
        }
        let concat = match field(conf, "concat_method").and_then(|c| c.as_str()) {
            None | Some("json") => Concat::Json,
            Some("new_line") => Concat::NewLine,
            Some(other) => {
                return Err(format!(
                    "concat_method: \"{other}\" is not json or new_line"
                ))
            }
        };
        let timeout = field(conf, "timeout").and_then(|t| t.as_u64()).unwrap_or(3);
        // As APISIX: the host is the SNI, verified only with `ssl_verify`.
        let tls = https.then(|| LogTls {
            verify: field(conf, "ssl_verify").and_then(|v| v.as_bool()) == Some(true),
            sni: Some(host.to_string()),
        });
        Ok(Sink::Http {
            uri: uri.to_string(),
            host: host.to_string(),
            port,
            path: path.to_string(),
            auth_header: field(conf, "auth_header")
                .and_then(|a| a.as_str())
                .map(|a| crate::consumer::secret(a, "auth_header"))
                .transpose()
                .map_err(|e| e.to_string())?,
            timeout: Duration::from_secs(timeout.max(1)),
            concat,
            tls,
        })
    }
);

logger!(TcpLogger, "tcp-logger", 405, |conf: &serde_json::Value| {
    let (host, port) = host_port(conf)?;
    // As APISIX: `tls_options` is the SNI (none without it), the certificate not verified.
    let tls = (field(conf, "tls").and_then(|t| t.as_bool()) == Some(true)).then(|| LogTls {
        verify: false,
        sni: field(conf, "tls_options")
            .and_then(|o| o.as_str())
            .map(str::to_string),
    });
    // APISIX's tcp-logger timeout is in milliseconds.
    let timeout = field(conf, "timeout")
        .and_then(|t| t.as_u64())
        .unwrap_or(1000);
    Ok(Sink::Tcp {
        host,
        port,
        timeout: Duration::from_millis(timeout.max(1)),
        tls,
    })
});

logger!(UdpLogger, "udp-logger", 400, |conf: &serde_json::Value| {
    let (host, port) = host_port(conf)?;
    Ok(Sink::Udp { host, port })
});

logger!(
    FileLogger,
    "file-logger",
    399,
    |conf: &serde_json::Value| {
        let path = field(conf, "path")
            .and_then(|p| p.as_str())
            .ok_or("property \"path\" is required")?;
        Ok(Sink::File {
            path: path.to_string(),
        })
    }
);
