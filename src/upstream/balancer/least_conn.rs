//! Least connections, weighted: the node with the fewest requests in flight per unit of
//! weight (`(1 + active) / weight`, as APISIX scores it), ties broken round robin.
//!
//! The counts are this core's: each core balances the requests it serves and does not see the
//! others'. Since the kernel spreads connections evenly over the cores' SO_REUSEPORT
//! listeners, every core sees a statistically similar share of traffic, and each core keeping
//! its own nodes evenly loaded keeps them evenly loaded overall; what a core cannot see is a
//! burst on another core, which costs accuracy only while that burst lasts. Sharing the
//! counts would put an atomic read-modify-write on a contended cache line into every
//! request, which is what the thread-per-core design exists to avoid.

use super::{Balancer, Node, PickContext};
use std::time::Duration;

pub struct LeastConn {
    active: Vec<u32>,
    /// Where the next tie-break scan starts.
    next: usize,
}

impl LeastConn {
    pub fn new(nodes: &[Node]) -> Self {
        LeastConn {
            active: vec![0; nodes.len()],
            next: 0,
        }
    }

    pub fn active(&self, node: usize) -> u32 {
        self.active[node]
    }
}

impl Balancer for LeastConn {
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize> {
        let n = nodes.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if ctx.weight(nodes[i].weight) == 0 || ctx.excluded(i) {
                continue;
            }
            // (1 + a_i) / w_i < (1 + a_b) / w_b, compared without division.
            let better = match best {
                None => true,
                Some(b) => {
                    let (wi, wb) = (ctx.weight(nodes[i].weight), ctx.weight(nodes[b].weight));
                    let mine = (1 + u64::from(self.active[i])) * u64::from(wb);
                    let theirs = (1 + u64::from(self.active[b])) * u64::from(wi);
                    mine < theirs
                }
            };
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        self.next = (b + 1) % n;
        Some(b)
    }

    fn started(&mut self, node: usize) {
        if let Some(a) = self.active.get_mut(node) {
            *a += 1;
        }
    }

    fn finished(&mut self, node: usize, _rtt: Option<Duration>) {
        if let Some(a) = self.active.get_mut(node) {
            *a = a.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_idle_and_heavier_nodes() {
        let ns = vec![Node::for_test(1, 2), Node::for_test(2, 1)];
        let mut b = LeastConn::new(&ns);
        // Idle: the weight-2 node.
        assert_eq!(b.pick(&ns, &PickContext::new(&[])), Some(0));
        // APISIX's example: weights 3 (A) and 2 (B), three concurrent slow requests: A, B, A.
        let ns = vec![Node::for_test(1, 3), Node::for_test(2, 2)];
        let mut b = LeastConn::new(&ns);
        let mut picks = vec![];
        for _ in 0..3 {
            let p = b.pick(&ns, &PickContext::new(&[])).unwrap();
            b.started(p);
            picks.push(p);
        }
        assert_eq!(picks, vec![0, 1, 0]);
        b.finished(0, None);
        b.finished(0, None);
        assert_eq!(b.pick(&ns, &PickContext::new(&[])), Some(0));
    }

    #[test]
    fn ties_rotate_and_tried_nodes_are_skipped() {
        let ns = vec![
            Node::for_test(1, 1),
            Node::for_test(2, 1),
            Node::for_test(3, 1),
        ];
        let mut b = LeastConn::new(&ns);
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&ns, &PickContext::new(&[])).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(b.pick(&ns, &PickContext::new(&[0, 1])), Some(2));
        assert_eq!(b.pick(&ns, &PickContext::new(&[0, 1, 2])), None);
    }
}
