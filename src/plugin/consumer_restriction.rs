//! `consumer-restriction` (APISIX priority 2400, access phase): after an authentication
//! plugin named the consumer, let only the consumers in `whitelist` through, or refuse those
//! in `blacklist`, and with `allowed_by_methods` limit a consumer to some methods, in
//! APISIX's order (blacklist, then whitelist, then the methods of consumers the whitelist
//! did not name). A request with no consumer gets 401 `The request is rejected, please check
//! the consumer_name for this request`; a refused one `rejected_code` (403) with
//! `rejected_msg` or `The consumer_name is forbidden.`. `type` is `consumer_name` (APISIX's
//! default), or `route_id` / `service_id`: the lists then name routes or services, and the
//! plugin belongs on a consumer (its own plugins run after authentication), restricting
//! where that consumer may go; or `consumer_group_id`: the lists name consumer groups.

use super::{Answer, BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::vars::Var;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(rename = "type", default = "consumer_name")]
    kind: String,
    blacklist: Option<Vec<String>>,
    whitelist: Option<Vec<String>>,
    allowed_by_methods: Option<Vec<ByMethods>>,
    #[serde(default = "forbidden")]
    rejected_code: u16,
    rejected_msg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByMethods {
    user: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
}

fn consumer_name() -> String {
    "consumer_name".into()
}

fn forbidden() -> u16 {
    403
}

pub struct ConsumerRestriction {
    /// What is checked: the consumer's name, the route's id or the service's id.
    subject: Var,
    blacklist: Vec<String>,
    whitelist: Vec<String>,
    /// (user, methods): a user listed here may use only these methods.
    by_methods: Vec<(String, Vec<String>)>,
    unidentified: Answer,
    refused: Answer,
}

impl ConsumerRestriction {
    pub fn build(conf: &serde_json::Value, _ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let c: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let subject = match c.kind.as_str() {
            "consumer_name" => Var::ConsumerName,
            "route_id" => Var::RouteId,
            "service_id" => Var::ServiceId,
            "consumer_group_id" => Var::ConsumerGroupId,
            other => return Err(format!("property \"type\": unknown type \"{other}\"")),
        };
        let message = |m: &str| serde_json::json!({ "message": m }).to_string().into_bytes();
        let json = || vec![("Content-Type".to_string(), "application/json".to_string())];
        let rejected = c
            .rejected_msg
            .unwrap_or_else(|| format!("The {} is forbidden.", c.kind));
        Ok(ConsumerRestriction {
            subject,
            blacklist: c.blacklist.unwrap_or_default(),
            whitelist: c.whitelist.unwrap_or_default(),
            by_methods: c
                .allowed_by_methods
                .unwrap_or_default()
                .into_iter()
                .filter_map(|b| Some((b.user?, b.methods)))
                .collect(),
            unidentified: Answer::new(
                401,
                json(),
                message(&format!(
                    "The request is rejected, please check the {} for this request",
                    c.kind
                )),
            ),
            refused: Answer::new(c.rejected_code, json(), message(&rejected)),
        })
    }
}

impl Phases for ConsumerRestriction {
    fn name(&self) -> &'static str {
        "consumer-restriction"
    }

    fn priority(&self) -> i32 {
        2400
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::ACCESS
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        let Some(name) = ctx.vars.var(&self.subject) else {
            return Flow::Respond(self.unidentified.clone());
        };
        let name = std::str::from_utf8(name).unwrap_or_default();
        if self.blacklist.iter().any(|b| b == name) {
            return Flow::Respond(self.refused.clone());
        }
        let whitelisted = self.whitelist.iter().any(|w| w == name);
        let mut block = !self.whitelist.is_empty() && !whitelisted;
        if !whitelisted {
            let method = ctx.vars.var(&Var::RequestMethod).unwrap_or_default();
            if let Some((_, methods)) = self.by_methods.iter().find(|(u, _)| u == name) {
                if !methods.iter().any(|m| m.as_bytes() == method) {
                    block = true;
                }
            }
        }
        match block {
            true => Flow::Respond(self.refused.clone()),
            false => Flow::Continue,
        }
    }
}
