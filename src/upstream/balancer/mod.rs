//! Load-balancing algorithms behind one trait.
//!
//! A balancer instance lives on one core (its state is never shared), is built from an
//! upstream's node list when a config snapshot arrives, and is asked once per attempt. Retries
//! ask again with the nodes already tried, which the balancer must skip.

pub mod roundrobin;

use super::Node;

/// Per-request facts an algorithm may use. Grows as algorithms need more (hash keys, health).
pub struct PickContext<'a> {
    /// Indices of nodes already tried for this request.
    pub tried: &'a [usize],
}

/// One load-balancing algorithm.
pub trait Balancer {
    /// Index into `nodes` for the next attempt, or `None` when no eligible node is left.
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the balancer named by an upstream's `type`.
pub fn build(kind: super::BalancerKind, nodes: &[Node]) -> Box<dyn Balancer> {
    match kind {
        super::BalancerKind::RoundRobin => Box::new(roundrobin::SmoothRoundRobin::new(nodes)),
    }
}
