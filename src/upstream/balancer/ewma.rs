//! Peak-EWMA latency balancing with the power of two choices (linkerd2-proxy's balancer,
//! APISIX's `ewma` type).
//!
//! Each node keeps an exponentially weighted moving average of its response latency that
//! jumps straight up to any slower observation ("peak") and decays back with time. The load
//! of a node is that cost times its requests in flight plus one. A pick draws two distinct
//! random eligible nodes and takes the less loaded: cheap, and it avoids the herd behaviour of
//! always choosing the single best node.
//!
//! The average decays with the time since the node's last observation, also when nothing is
//! observed: a node that turned slow loses its traffic at its first slow answer, and once it
//! gets none its cost fades until it is tried again, so it wins traffic back after it
//! recovers. The decay time is 2 s (APISIX uses 10 s): long enough to smooth ordinary jitter,
//! short enough that a recovered node is back within seconds. Weights are ignored (as in
//! APISIX) except weight 0, which means what it means for every balancer (see the module
//! above). State is per core, like every balancer's.

use super::{Balancer, Node, PickContext};
use std::time::{Duration, Instant};

const DECAY_SECS: f64 = 2.0;
/// Floor added to every cost so in-flight counts still matter between nodes never observed.
const BASE_COST_NS: f64 = 1_000.0;
/// A failed attempt counts as an answer this slow: without it a node that refuses
/// connections at once would look like the fastest of all. Peak-EWMA takes it at once and
/// lets it decay (to 1 ms in about 14 s), so the node is tried again now and then.
const FAILURE_COST: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Stats {
    cost_ns: f64,
    stamp: Instant,
    pending: u32,
}

pub struct PeakEwma {
    stats: Vec<Stats>,
    rng: u64,
    /// Some node has weight 0 (never picked next to weighted ones), so the O(1) fast path
    /// does not apply.
    zero_weights: bool,
}

impl PeakEwma {
    pub fn new(nodes: &[Node]) -> Self {
        let now = Instant::now();
        // Seeded per instance: different cores draw different pairs.
        let seed = (now.elapsed().as_nanos() as u64)
            ^ (nodes.as_ptr() as u64).rotate_left(17)
            ^ 0x9e37_79b9_7f4a_7c15;
        PeakEwma {
            stats: vec![
                Stats {
                    cost_ns: 0.0,
                    stamp: now,
                    pending: 0,
                };
                nodes.len()
            ],
            rng: seed | 1,
            zero_weights: nodes.iter().any(|n| n.weight == 0),
        }
    }

    fn random(&mut self, n: usize) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn decayed_cost(&self, i: usize, now: Instant) -> f64 {
        let s = &self.stats[i];
        let dt = now.saturating_duration_since(s.stamp).as_secs_f64();
        s.cost_ns * (-dt / DECAY_SECS).exp()
    }

    fn load(&self, i: usize, now: Instant) -> f64 {
        (self.decayed_cost(i, now) + BASE_COST_NS) * (self.stats[i].pending as f64 + 1.0)
    }
}

impl Balancer for PeakEwma {
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize> {
        // The common first attempt, with nothing to skip: eligible node k is node k, O(1).
        let all = !ctx.filters() && !self.zero_weights;
        let eligible = |i: usize| ctx.weight(nodes[i].weight) > 0 && !ctx.excluded(i);
        let count = if all {
            nodes.len()
        } else {
            (0..nodes.len()).filter(|&i| eligible(i)).count()
        };
        let nth_eligible = |k: usize| {
            if all {
                Some(k)
            } else {
                (0..nodes.len()).filter(|&i| eligible(i)).nth(k)
            }
        };
        match count {
            0 => None,
            1 => nth_eligible(0),
            n => {
                let a = self.random(n);
                let mut b = self.random(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth_eligible(a)?, nth_eligible(b)?);
                let now = Instant::now();
                Some(if self.load(b, now) < self.load(a, now) {
                    b
                } else {
                    a
                })
            }
        }
    }

    fn started(&mut self, node: usize) {
        if let Some(s) = self.stats.get_mut(node) {
            s.pending += 1;
        }
    }

    fn measures_latency(&self) -> bool {
        true
    }

    fn failed(&mut self, node: usize) {
        self.finished(node, Some(FAILURE_COST));
    }

    fn finished(&mut self, node: usize, rtt: Option<Duration>) {
        let now = Instant::now();
        let decayed = match self.stats.get(node) {
            Some(_) => self.decayed_cost(node, now),
            None => return,
        };
        let s = &mut self.stats[node];
        s.pending = s.pending.saturating_sub(1);
        if let Some(rtt) = rtt {
            let rtt_ns = rtt.as_nanos() as f64;
            s.cost_ns = if rtt_ns > decayed {
                rtt_ns
            } else {
                let w =
                    (-(now.saturating_duration_since(s.stamp).as_secs_f64()) / DECAY_SECS).exp();
                // Linkerd's update: the old cost weighted by w (which is exactly the decayed
                // cost) plus the new observation weighted by 1 - w.
                decayed + rtt_ns * (1.0 - w)
            };
            s.stamp = now;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failures_make_a_node_expensive() {
        let ns = vec![Node::for_test(1, 1), Node::for_test(2, 1)];
        let mut b = PeakEwma::new(&ns);
        for _ in 0..5 {
            b.started(0);
            b.finished(0, Some(Duration::from_millis(1)));
            b.started(1);
            b.failed(1);
        }
        let good = (0..100)
            .filter(|_| b.pick(&ns, &PickContext::new(&[])) == Some(0))
            .count();
        assert_eq!(good, 100, "the failing node must not look cheapest");
    }

    use super::*;

    #[test]
    fn slow_node_loses_traffic() {
        let ns = vec![Node::for_test(1, 1), Node::for_test(2, 1)];
        let mut b = PeakEwma::new(&ns);
        // Teach it: node 0 answers in 1 ms, node 1 in 50 ms.
        for _ in 0..10 {
            for (i, ms) in [(0, 1), (1, 50)] {
                b.started(i);
                b.finished(i, Some(Duration::from_millis(ms)));
            }
        }
        let fast = (0..100)
            .filter(|_| b.pick(&ns, &PickContext::new(&[])) == Some(0))
            .count();
        assert!(fast >= 95, "fast node got {fast}/100");
        assert_eq!(b.pick(&ns, &PickContext::new(&[0])), Some(1));
        assert_eq!(b.pick(&ns, &PickContext::new(&[0, 1])), None);
    }
}
