//! Consistent hashing, built exactly as nginx's `hash ... consistent` and APISIX's
//! `resty.chash` build their ring, so a user moving from either keeps every key on the same
//! node (and their caches warm).
//!
//! The ring: weights are divided by their greatest common divisor; each node then gets 160
//! points per unit of weight. A node's points are a CRC-32 chain over its `host:port` name
//! (with every `:` written as a NUL byte): point *i* is `crc32(name ++ le32(point i-1))`,
//! starting from 0. A key hashes to `crc32(key)` and belongs to the first point at or after
//! it, wrapping around. Removing one of N nodes moves only the keys on its points (about 1/N).
//!
//! The ring depends only on the node set, never on which core or instance builds it, so the
//! same key lands on the same node on every core, after a restart and on every gateway.
//! Retries (and skipping nodes) walk the ring clockwise from the key's point to the next point
//! of a node not yet tried, as APISIX does.

use super::{Balancer, Node, PickContext};

/// Points per unit of (gcd-reduced) weight, as nginx and APISIX.
const POINTS_PER_WEIGHT: u64 = 160;
/// Most gcd-reduced weight units a ring may hold (checked when the config is validated):
/// 655,360 points, 5 MiB per core. Weights 1 and 1,000,000 would make 160 million.
pub const MAX_RING_WEIGHT: u64 = 4096;

/// The gcd-reduced total weight of `weights`: the ring has 160 points per unit.
pub fn ring_weight(weights: impl Iterator<Item = u32> + Clone) -> u64 {
    let divisor = weights.clone().map(u64::from).fold(0, gcd).max(1);
    weights.map(|w| u64::from(w) / divisor).sum()
}

pub struct ConsistentHash {
    /// (hash, node index), sorted by hash.
    ring: Vec<(u32, u32)>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The name a node is hashed under: `host:port` with `:` replaced by NUL.
fn ring_name(node: &Node) -> Vec<u8> {
    let name = format!("{}:{}", ip_or_host(node), node.addr.port());
    name.bytes()
        .map(|b| if b == b':' { 0 } else { b })
        .collect()
}

/// APISIX balances on the resolved address: the IP for IP nodes and resolved domains alike.
fn ip_or_host(node: &Node) -> String {
    match node.addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

impl ConsistentHash {
    pub fn new(nodes: &[Node]) -> Self {
        let divisor = nodes.iter().map(|n| n.weight as u64).fold(0, gcd).max(1);
        let mut ring = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let points = node.weight as u64 / divisor * POINTS_PER_WEIGHT;
            let name = ring_name(node);
            let base = {
                let mut h = crc32fast::Hasher::new();
                h.update(&name);
                h
            };
            let mut prev: u32 = 0;
            for _ in 0..points {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                ring.push((prev, i as u32));
            }
        }
        ring.sort_unstable();
        ConsistentHash { ring }
    }

    /// The ring position a key starts from.
    fn start(&self, key: &[u8]) -> usize {
        let h = crc32fast::hash(key);
        let i = self.ring.partition_point(|&(p, _)| p < h);
        if i == self.ring.len() {
            0
        } else {
            i
        }
    }

    /// The node a key maps to when nothing is excluded.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        (!self.ring.is_empty()).then(|| self.ring[self.start(key)].1 as usize)
    }
}

impl Balancer for ConsistentHash {
    fn pick(&mut self, nodes: &[Node], ctx: &PickContext<'_>) -> Option<usize> {
        if self.ring.is_empty() && !ctx.in_standby() {
            return None;
        }
        let key = ctx.hash_key.unwrap_or(b"");
        if ctx.in_standby() {
            // Weight-0 nodes have no points on the ring: spread keys over the eligible ones.
            let eligible: Vec<usize> = (0..nodes.len())
                .filter(|&i| ctx.weight(nodes[i].weight) > 0 && !ctx.excluded(i))
                .collect();
            if eligible.is_empty() {
                return None;
            }
            return Some(eligible[crc32fast::hash(key) as usize % eligible.len()]);
        }
        let start = self.start(key);
        // Walk clockwise to the first point whose node is still eligible.
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1 as usize)
            .find(|&n| !ctx.excluded(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, u16, u32)]) -> Vec<Node> {
        spec.iter()
            .map(|&(ip, port, weight)| Node {
                host_port: format!("{ip}:{port}").into(),
                addr: format!("{ip}:{port}").parse().unwrap(),
                weight,
                priority: 0,
                health: None,
            })
            .collect()
    }

    fn port_for(ring: &ConsistentHash, ns: &[Node], key: &str) -> u16 {
        ns[ring.find(key.as_bytes()).unwrap()].addr.port()
    }

    #[test]
    fn apisix_vectors_two_nodes() {
        let ns = nodes(&[("127.0.0.1", 1980, 1), ("127.0.0.1", 1981, 1)]);
        let ring = ConsistentHash::new(&ns);
        for (key, port) in [
            ("127.0.0.1", 1980),
            ("jack", 1981),
            ("tom", 1980),
            ("custom-one", 1980),
            ("cuscookie", 1981),
            ("chash_val_1", 1981),
            ("chash_val_2", 1980),
            ("chash_val_3", 1980),
            ("chash_val_4", 1981),
            ("chash_val_5", 1980),
            ("chash_val_6", 1981),
        ] {
            assert_eq!(port_for(&ring, &ns, key), port, "key {key}");
        }
    }

    #[test]
    fn apisix_vectors_three_nodes_and_weights() {
        let ns = nodes(&[
            ("127.0.0.1", 1980, 1),
            ("127.0.0.1", 1981, 1),
            ("127.0.0.1", 1982, 1),
        ]);
        assert_eq!(port_for(&ConsistentHash::new(&ns), &ns, "127.0.0.1"), 1982);

        let ns = nodes(&[("127.0.0.1", 1979, 2), ("127.0.0.2", 1979, 1)]);
        let ring = ConsistentHash::new(&ns);
        assert_eq!(
            ns[ring.find(b"127.0.0.1").unwrap()].addr.ip().to_string(),
            "127.0.0.1"
        );
        let ns = nodes(&[("127.0.0.3", 1979, 2), ("127.0.0.4", 1979, 1)]);
        let ring = ConsistentHash::new(&ns);
        assert_eq!(
            ns[ring.find(b"127.0.0.1").unwrap()].addr.ip().to_string(),
            "127.0.0.4"
        );
    }

    #[test]
    fn apisix_distributions() {
        let ns = nodes(&[
            ("127.0.0.1", 1980, 1),
            ("127.0.0.1", 1981, 1),
            ("127.0.0.1", 1982, 1),
        ]);
        let ring = ConsistentHash::new(&ns);
        let mut counts = [0; 3];
        for i in 1..=180 {
            counts[ring.find(format!("var=2&var2={i}").as_bytes()).unwrap()] += 1;
        }
        let mut sorted = counts;
        sorted.sort();
        assert_eq!(sorted, [58, 59, 63], "{counts:?}");

        let ns = nodes(&[("127.0.0.1", 1980, 2), ("127.0.0.1", 1981, 1)]);
        let ring = ConsistentHash::new(&ns);
        let mut counts = [0; 2];
        for i in 1..=3000 {
            counts[ring.find(format!("user-{i}").as_bytes()).unwrap()] += 1;
        }
        assert_eq!(counts, [1955, 1045]);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = nodes(&[
            ("127.0.0.1", 1980, 1),
            ("127.0.0.1", 1981, 1),
            ("127.0.0.1", 1982, 1),
        ]);
        let fewer = nodes(&[("127.0.0.1", 1980, 1), ("127.0.0.1", 1981, 1)]);
        let (a, b) = (ConsistentHash::new(&all), ConsistentHash::new(&fewer));
        let mut moved = 0;
        for i in 1..=1000 {
            let key = format!("user-{i}");
            let before = port_for(&a, &all, &key);
            let after = port_for(&b, &fewer, &key);
            if before != after {
                assert_eq!(before, 1982, "only keys of the removed node move");
                moved += 1;
            }
        }
        assert_eq!(moved, 337);
    }

    #[test]
    fn retries_walk_to_an_untried_node() {
        let ns = nodes(&[
            ("127.0.0.1", 1980, 1),
            ("127.0.0.1", 1981, 1),
            ("127.0.0.1", 1982, 1),
        ]);
        let mut ring = ConsistentHash::new(&ns);
        let first = ring
            .pick(&ns, &PickContext::new(&[]).with_key(b"jack"))
            .unwrap();
        let second = ring
            .pick(&ns, &PickContext::new(&[first]).with_key(b"jack"))
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(
            ring.pick(&ns, &PickContext::new(&[0, 1, 2]).with_key(b"jack")),
            None
        );
    }
}
