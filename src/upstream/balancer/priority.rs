//! Node priority (APISIX semantics): nodes are grouped by `priority`, higher first; a lower
//! group is used only when every node of the higher groups has been tried (or is excluded)
//! for this request. Each group has its own balancer of the upstream's type, so balancing
//! within a group is unchanged.

use super::{Balancer, BalancerKind, Node, PickContext};
use std::time::Duration;

struct Group {
    /// Global indices of this group's nodes.
    members: Vec<usize>,
    nodes: Vec<Node>,
    inner: Box<dyn Balancer>,
}

pub struct Prioritized {
    groups: Vec<Group>,
    /// Global node index -> (group, index within the group).
    place: Vec<(usize, usize)>,
}

impl Prioritized {
    pub fn new(kind: BalancerKind, nodes: &[Node]) -> Self {
        let mut priorities: Vec<i64> = nodes.iter().map(|n| n.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let mut place = vec![(0, 0); nodes.len()];
        let groups = priorities
            .iter()
            .enumerate()
            .map(|(g, &p)| {
                let members: Vec<usize> = (0..nodes.len())
                    .filter(|&i| nodes[i].priority == p)
                    .collect();
                for (local, &i) in members.iter().enumerate() {
                    place[i] = (g, local);
                }
                let group_nodes: Vec<Node> = members.iter().map(|&i| nodes[i].clone()).collect();
                Group {
                    inner: super::build_flat(kind, &group_nodes),
                    members,
                    nodes: group_nodes,
                }
            })
            .collect();
        Prioritized { groups, place }
    }
}

impl Balancer for Prioritized {
    fn pick(&mut self, _nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize> {
        for g in &mut self.groups {
            let local_ctx = ctx.within(&g.members);
            if let Some(local) = g.inner.pick(&g.nodes, &local_ctx) {
                return Some(g.members[local]);
            }
        }
        None
    }

    fn measures_latency(&self) -> bool {
        self.groups.iter().any(|g| g.inner.measures_latency())
    }

    fn started(&mut self, node: usize) {
        if let Some(&(g, local)) = self.place.get(node) {
            self.groups[g].inner.started(local);
        }
    }

    fn finished(&mut self, node: usize, rtt: Option<Duration>) {
        if let Some(&(g, local)) = self.place.get(node) {
            self.groups[g].inner.finished(local, rtt);
        }
    }

    fn failed(&mut self, node: usize) {
        if let Some(&(g, local)) = self.place.get(node) {
            self.groups[g].inner.failed(local);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_priority_only_after_higher_tried() {
        let mut ns = vec![
            Node::for_test(1, 1),
            Node::for_test(2, 1),
            Node::for_test(3, 1),
        ];
        ns[2].priority = -1;
        let mut b = Prioritized::new(BalancerKind::RoundRobin, &ns);
        for _ in 0..10 {
            let first = b.pick(&ns, &PickContext::new(&[])).unwrap();
            assert_ne!(first, 2);
            let second = b.pick(&ns, &PickContext::new(&[first])).unwrap();
            assert_ne!(second, 2);
            assert_eq!(b.pick(&ns, &PickContext::new(&[0, 1])), Some(2));
            assert_eq!(b.pick(&ns, &PickContext::new(&[0, 1, 2])), None);
        }
    }
}
