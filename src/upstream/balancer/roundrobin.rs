//! Smooth weighted round robin, nginx's algorithm (`ngx_http_upstream_get_peer`).
//!
//! Every pick adds each eligible node's weight to its running score, takes the node with the
//! highest score and subtracts the total weight from it. Weights 3:1 give `A A B A`, not
//! `A A A B`: the heavy node's turns are spread through the cycle, so a burst of requests never
//! lands on one node back to back. Nodes already tried in this request take no part in the
//! round, as in nginx.

use super::{Balancer, Node, PickContext};

pub struct SmoothRoundRobin {
    current: Vec<i64>,
}

impl SmoothRoundRobin {
    pub fn new(nodes: &[Node]) -> Self {
        SmoothRoundRobin {
            current: vec![0; nodes.len()],
        }
    }
}

/// One step of smooth weighted round robin over `current.len()` items: `weight(i)` gives
/// item i's weight, `eligible(i)` whether it may be chosen now. Items of weight 0 are never
/// chosen. Shared by the balancer and by plugins that split by weight (traffic-split).
pub fn smooth_pick(
    current: &mut [i64],
    weight: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in 0..current.len() {
        let w = weight(i) as i64;
        if w == 0 || !eligible(i) {
            continue;
        }
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

impl Balancer for SmoothRoundRobin {
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize> {
        smooth_pick(
            &mut self.current,
            |i| ctx.weight(nodes[i].weight),
            |i| !ctx.excluded(i),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(weights: &[u32]) -> Vec<Node> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Node::for_test(9000 + i as u16, w))
            .collect()
    }

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let ns = nodes(weights);
        let mut b = SmoothRoundRobin::new(&ns);
        (0..n)
            .map(|_| b.pick(&ns, &PickContext::new(&[])).unwrap())
            .collect()
    }

    #[test]
    fn interleaves_three_to_one() {
        assert_eq!(sequence(&[3, 1], 8), vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn nginx_five_one_one() {
        // The example from nginx's commit introducing smooth WRR: a a b a c a a.
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_tried_and_zero_weight() {
        let ns = nodes(&[1, 0, 1]);
        let mut b = SmoothRoundRobin::new(&ns);
        for _ in 0..10 {
            let first = b.pick(&ns, &PickContext::new(&[])).unwrap();
            assert_ne!(first, 1);
            let second = b.pick(&ns, &PickContext::new(&[first])).unwrap();
            assert_ne!(second, first);
            assert_eq!(b.pick(&ns, &PickContext::new(&[0, 2])), None);
        }
    }
}
