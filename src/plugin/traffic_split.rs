//! `traffic-split` (APISIX priority 966, access phase): canary and blue/green releases.
//!
//! `rules` are tried in order; the first whose `match` holds (any one of its `vars` lists, all
//! conditions of that list; no `match` = always) splits the request among its
//! `weighted_upstreams` by weight: an entry names an `upstream_id`, carries an inline
//! `upstream`, or names neither and means the route's own upstream. A request matching no rule
//! goes to the route's upstream. The split is smooth weighted round robin per rule and per
//! core, so an 80/20 split interleaves (4 to one, then 1 to the other) instead of bursting.

use super::{BuildCtx, CoreState, Flow, PhaseSet, Phases, RequestCtx};
use crate::config::UpstreamConfig;
use crate::upstream::balancer::roundrobin::smooth_pick;
use crate::vars::Condition;
use serde::Deserialize;
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    #[serde(default, rename = "match")]
    matches: Vec<MatchConfig>,
    #[serde(default = "default_targets")]
    weighted_upstreams: Vec<TargetConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    #[serde(default)]
    vars: Vec<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetConfig {
    #[serde(default)]
    upstream_id: Option<serde_json::Value>,
    #[serde(default)]
    upstream: Option<UpstreamConfig>,
    #[serde(default = "default_weight")]
    weight: i64,
}

fn default_weight() -> i64 {
    1
}

fn default_targets() -> Vec<TargetConfig> {
    vec![TargetConfig {
        upstream_id: None,
        upstream: None,
        weight: 1,
    }]
}

struct Rule {
    /// Any of these lists must hold entirely; empty = the rule always matches.
    matches: Vec<Vec<Condition>>,
    /// Upstream index per target; `None` = the route's own upstream.
    targets: Vec<Option<usize>>,
    weights: Vec<u32>,
}

pub struct TrafficSplit {
    rules: Vec<Rule>,
}

impl TrafficSplit {
    pub fn build(conf: &serde_json::Value, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let config: Config = serde_json::from_value(conf.clone()).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for (r, rule) in config.rules.iter().enumerate() {
            let mut matches = Vec::new();
            for (m, mc) in rule.matches.iter().enumerate() {
                let conds = mc
                    .vars
                    .iter()
                    .enumerate()
                    .map(|(v, items)| {
                        Condition::compile(items).map_err(|e| {
                            format!("rules[{r}].match[{m}].vars[{v}]: failed to validate the 'vars' expression: {e}")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                matches.push(conds);
            }
            if rule.weighted_upstreams.is_empty() || rule.weighted_upstreams.len() > 20 {
                return Err(format!(
                    "rules[{r}].weighted_upstreams: expected 1 to 20 items, got {}",
                    rule.weighted_upstreams.len()
                ));
            }
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            for (t, target) in rule.weighted_upstreams.iter().enumerate() {
                let field = format!("rules[{r}].weighted_upstreams[{t}]");
                if !(0..=u32::MAX as i64).contains(&target.weight) {
                    return Err(format!(
                        "{field}.weight: expected {} to be at least 0",
                        target.weight
                    ));
                }
                let upstream = match (&target.upstream_id, &target.upstream) {
                    (Some(id), _) => {
                        let id = match id {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Number(n) => n.to_string(),
                            _ => {
                                return Err(format!(
                                    "{field}.upstream_id: must be a string or an integer"
                                ))
                            }
                        };
                        Some(*ctx.upstream_ids.get(id.as_str()).ok_or_else(|| {
                            format!("{field}.upstream_id: upstream \"{id}\" does not exist")
                        })?)
                    }
                    (None, Some(u)) => Some((ctx.add_upstream)(
                        &format!("{}.{field}.upstream", ctx.field),
                        u,
                    )?),
                    (None, None) => None,
                };
                targets.push(upstream);
                weights.push(target.weight as u32);
            }
            rules.push(Rule {
                matches,
                targets,
                weights,
            });
        }
        Ok(TrafficSplit { rules })
    }
}

/// Per core: the smooth round-robin position of every rule.
struct State {
    current: Vec<Vec<i64>>,
}

impl Phases for TrafficSplit {
    fn name(&self) -> &'static str {
        "traffic-split"
    }

    fn priority(&self) -> i32 {
        966
    }

    fn uses(&self) -> PhaseSet {
        PhaseSet::ACCESS
    }

    fn core_state(&self) -> CoreState {
        Box::new(State {
            current: self
                .rules
                .iter()
                .map(|r| vec![0; r.targets.len()])
                .collect(),
        })
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, state: &RefCell<CoreState>) -> Flow {
        let mut state = state.borrow_mut();
        let Some(state) = state.downcast_mut::<State>() else {
            return Flow::Continue;
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let hit = rule.matches.is_empty()
                || rule
                    .matches
                    .iter()
                    .any(|conds| conds.iter().all(|c| c.matches(ctx.vars)));
            if !hit {
                continue;
            }
            let weights = &rule.weights;
            if let Some(t) = smooth_pick(&mut state.current[i], |k| weights[k], |_| true) {
                if let Some(u) = rule.targets[t] {
                    ctx.upstream = Some(u);
                }
            }
            break;
        }
        Flow::Continue
    }
}
