//! Load-balancing algorithms behind one trait.
//!
//! A balancer instance lives on one core (its state is never shared), is built from an
//! upstream's node list when a config snapshot arrives, and is asked once per attempt. Retries
//! ask again with the nodes already tried, which the balancer must skip. Algorithms that track
//! requests in flight or latency hear about every attempt's start and end.
//!
//! Eligibility is the same for every algorithm, on every attempt ([`PickContext::excluded`]
//! and [`PickContext::weight`]): a node already tried, or found unhealthy, is never picked; a
//! node of weight 0 is never picked while a node of weight > 0 may be. Weight-0 nodes are
//! standbys: they serve only when every weighted node is unhealthy ([`PickContext::standby`]),
//! as APISIX's balancer does when health checks leave it only weight-0 nodes.

pub mod chash;
pub mod ewma;
pub mod least_conn;
pub mod priority;
pub mod roundrobin;

use super::{BalancerKind, Node};
use std::time::Duration;

/// Per-request facts an algorithm may use.
#[derive(Clone, Copy)]
pub struct PickContext<'a> {
    /// Indices of nodes already tried for this request.
    pub tried: &'a [usize],
    /// The request's hash key (consistent hashing only).
    pub hash_key: Option<&'a [u8]>,
    /// When picking within a subset (a priority group): subset index -> node index.
    members: Option<&'a [usize]>,
    /// The upstream's nodes, when unhealthy ones must be skipped.
    health: Option<&'a [Node]>,
    /// Every node of weight > 0 is unhealthy: the weight-0 nodes serve, as if of weight 1.
    standby: bool,
}

impl<'a> PickContext<'a> {
    pub fn new(tried: &'a [usize]) -> Self {
        PickContext {
            tried,
            hash_key: None,
            members: None,
            health: None,
            standby: false,
        }
    }

    /// Serve from the weight-0 nodes: every weighted node is unhealthy.
    pub fn standby(mut self) -> Self {
        self.standby = true;
        self
    }

    /// The weight node weight `w` counts with for this pick: its own, or in standby mode 1
    /// for weight-0 nodes and 0 for the others.
    #[inline]
    pub fn weight(&self, w: u32) -> u32 {
        if self.standby {
            u32::from(w == 0)
        } else {
            w
        }
    }

    pub fn in_standby(&self) -> bool {
        self.standby
    }

    /// Whether any node is excluded by something other than its weight (so a fast path that
    /// assumes every weighted node is eligible does not apply).
    pub fn filters(&self) -> bool {
        !self.tried.is_empty() || self.health.is_some() || self.standby
    }

    /// Skip the nodes of `nodes` (the upstream's full list) that health checks found
    /// unhealthy.
    pub fn skipping_unhealthy(mut self, nodes: &'a [Node]) -> Self {
        self.health = Some(nodes);
        self
    }

    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// The same request, seen from a subset of the nodes.
    pub fn within(&self, members: &'a [usize]) -> PickContext<'a> {
        PickContext {
            members: Some(members),
            ..*self
        }
    }

    /// Whether node `i` (of the list this balancer was given) must not be picked.
    pub fn excluded(&self, i: usize) -> bool {
        let global = match self.members {
            Some(m) => m[i],
            None => i,
        };
        self.tried.contains(&global) || self.health.is_some_and(|n| !n[global].usable())
    }
}

/// One load-balancing algorithm.
pub trait Balancer {
    /// Index into `nodes` for the next attempt, or `None` when no eligible node is left.
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize>;

    /// Whether this algorithm uses the latency samples given to [`Balancer::finished`] (the
    /// caller reads the clock only for those that do).
    fn measures_latency(&self) -> bool {
        false
    }

    /// An attempt at `node` starts.
    fn started(&mut self, _node: usize) {}

    /// An attempt at `node` ended; `rtt` is its time to the response head when it succeeded.
    fn finished(&mut self, _node: usize, _rtt: Option<Duration>) {}

    /// An attempt at `node` failed (connect, send, read or timeout): ended, and evidence
    /// against the node for algorithms that score nodes.
    fn failed(&mut self, node: usize) {
        self.finished(node, None);
    }
}

/// Builds the balancer for an upstream's `type`, with priority groups when its nodes have
/// more than one priority.
pub fn build(kind: BalancerKind, nodes: &[Node]) -> Box<dyn Balancer> {
    let first = nodes.first().map(|n| n.priority);
    if nodes.iter().any(|n| Some(n.priority) != first) {
        Box::new(priority::Prioritized::new(kind, nodes))
    } else {
        build_flat(kind, nodes)
    }
}

fn build_flat(kind: BalancerKind, nodes: &[Node]) -> Box<dyn Balancer> {
    match kind {
        BalancerKind::RoundRobin => Box::new(roundrobin::SmoothRoundRobin::new(nodes)),
        BalancerKind::LeastConn => Box::new(least_conn::LeastConn::new(nodes)),
        BalancerKind::ConsistentHash => Box::new(chash::ConsistentHash::new(nodes)),
        BalancerKind::Ewma => Box::new(ewma::PeakEwma::new(nodes)),
    }
}
