//! `ip-restriction` (APISIX priority 3000, access phase): let only clients in `whitelist`
//! through, or refuse those in `blacklist` (addresses or CIDRs, IPv4 and IPv6), answering
//! `response_code` (403) with `message`.

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::route::IpNet;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    whitelist: Option<Vec<String>>,
    blacklist: Option<Vec<String>>,
    message: Option<String>,
    response_code: Option<i64>,
}

pub struct IpRestriction {
    nets: Vec<IpNet>,
    /// `true`: `nets` is a whitelist; `false`: a blacklist.
    allow: bool,
    refusal: Answer,
}

impl IpRestriction {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let (list, allow, field) = match (c.whitelist, c.blacklist) {
            (Some(w), None) => (w, true, "whitelist"),
            (None, Some(b)) => (b, false, "blacklist"),
            _ => return Err("value should match only one schema: whitelist or blacklist".into()),
        };
        if list.is_empty() {
            return Err(format!(
                "property \"{field}\": expect array to have at least 1 items"
            ));
        }
        let nets = list
            .iter()
            .enumerate()
            .map(|(i, a)| IpNet::parse(a).map_err(|e| format!("{field}[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let message = c
            .message
            .unwrap_or_else(|| "Your IP address is not allowed".into());
        if message.is_empty() || message.len() > 1024 {
            return Err("property \"message\": 1 to 1024 characters".into());
        }
        let status = match c.response_code {
            None => 403,
            Some(s) if (403..=404).contains(&s) => s as u16,
            Some(s) => {
                return Err(format!(
                    "property \"response_code\" validation failed: expected {s} to be 403 or 404"
                ))
            }
        };
        Ok(IpRestriction {
            nets,
            allow,
            refusal: Answer::error(status, &message),
        })
    }
}

impl Phases for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn priority(&self) -> i32 {
        3000
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::ACCESS
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let ip = ctx.client_ip();
        let listed = ip.is_some_and(|ip| self.nets.iter().any(|n| n.contains(ip)));
        if listed == self.allow {
            Flow::Continue
        } else {
            Flow::Respond(self.refusal.clone())
        }
    }
}
