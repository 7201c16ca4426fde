//! Redis Cluster: a key lives in one of 16384 slots (CRC16 of the key, or of its `{tag}`),
//! each slot on one master. A core learns the slot map with `CLUSTER SLOTS` from any node
//! it knows, keeps one [`Client`] per master, and follows `MOVED` (the slot moved: learn the
//! map again) and `ASK` (the slot is moving: ask that node this once).

use super::client::{Client, Endpoint, Error};
use super::resp::Reply;
use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};

pub const SLOTS: usize = 16384;

/// The slot of `key` (the part between the first `{` and the next `}` when not empty, as
/// Redis hashes tags).
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match memchr::memchr(b'{', key) {
        Some(open) => match memchr::memchr(b'}', &key[open + 1..]) {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM), Redis's key hash.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc
}

/// A core's view of one cluster.
pub struct Cluster {
    /// How to reach and log in to any node (`addr` is replaced per node).
    template: Endpoint,
    /// Nodes to ask for the slot map: the configured ones, then every master learned.
    seeds: RefCell<Vec<SocketAddr>>,
    /// Slot to index in `masters`, once learned.
    slots: RefCell<Vec<u16>>,
    masters: RefCell<Vec<Client>>,
}

/// No master known for a slot.
const UNKNOWN: u16 = u16::MAX;

impl Cluster {
    pub fn new(seeds: Vec<SocketAddr>, template: Endpoint) -> Cluster {
        Cluster {
            template,
            seeds: RefCell::new(seeds),
            slots: RefCell::new(Vec::new()),
            masters: RefCell::new(Vec::new()),
        }
    }

    /// The client for the master at `addr` (made on first use).
    fn master(&self, addr: SocketAddr) -> (u16, Client) {
        let mut masters = self.masters.borrow_mut();
        if let Some(i) = masters.iter().position(|c| c.endpoint().addr == addr) {
            return (i as u16, masters[i].clone());
        }
        let client = Client::new(Endpoint {
            addr,
            ..self.template.clone()
        });
        masters.push(client.clone());
        let mut seeds = self.seeds.borrow_mut();
        if !seeds.contains(&addr) {
            seeds.push(addr);
        }
        ((masters.len() - 1) as u16, client)
    }

    /// Learns the slot map from the first node that gives it.
    async fn learn(&self) -> Result<(), Error> {
        let seeds = self.seeds.borrow().clone();
        let mut last = Error::Down("no cluster node configured".into());
        for seed in seeds {
            let (_, client) = self.master(seed);
            match client.call(&[b"CLUSTER", b"SLOTS"]).await {
                Ok(reply) => match self.apply(&reply) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Error::Server(e),
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Applies a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ...], replicas...], ...]`.
    fn apply(&self, reply: &Reply) -> Result<(), String> {
        let Reply::Array(Some(ranges)) = reply else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut map = vec![UNKNOWN; SLOTS];
        for range in ranges {
            let Reply::Array(Some(parts)) = range else {
                return Err("CLUSTER SLOTS: bad range".into());
            };
            let (Some(start), Some(end), Some(Reply::Array(Some(node)))) = (
                parts.first().and_then(Reply::int),
                parts.get(1).and_then(Reply::int),
                parts.get(2),
            ) else {
                return Err("CLUSTER SLOTS: bad range".into());
            };
            let (Some(Reply::Bulk(Some(host))), Some(port)) =
                (node.first(), node.get(1).and_then(Reply::int))
            else {
                return Err("CLUSTER SLOTS: bad node".into());
            };
            let addr = resolve(&format!("{}:{port}", String::from_utf8_lossy(host)))?;
            let (index, _) = self.master(addr);
            let (first, last) = (start.max(0) as usize, (end.max(0) as usize).min(SLOTS - 1));
            if first <= last {
                map[first..=last].fill(index);
            }
        }
        *self.slots.borrow_mut() = map;
        Ok(())
    }

    /// The master serving `key`'s slot, learning the map if needed.
    async fn for_key(&self, key: &[u8]) -> Result<Client, Error> {
        let slot = slot(key) as usize;
        for attempt in 0..2 {
            let index = self.slots.borrow().get(slot).copied().unwrap_or(UNKNOWN);
            if index != UNKNOWN {
                return Ok(self.masters.borrow()[index as usize].clone());
            }
            if attempt == 0 {
                self.learn().await?;
            }
        }
        Err(Error::Down(format!("no master serves slot {slot}")))
    }

    /// Sends a command about `key` to its slot's master without waiting, when the slot map
    /// is known (see [`Client::send_detached`]).
    pub fn send_detached(&self, key: &[u8], args: &[&[u8]]) {
        let index = self.slots.borrow().get(slot(key) as usize).copied();
        if let Some(i) = index.filter(|&i| i != UNKNOWN) {
            if let Some(client) = self.masters.borrow().get(i as usize) {
                client.send_detached(args);
            }
        }
    }

    /// Sends a command about `key` to the master of its slot, following one redirection.
    pub async fn call(&self, key: &[u8], args: &[&[u8]]) -> Result<Reply, Error> {
        let client = self.for_key(key).await?;
        let reply = client.call(args).await;
        let Err(Error::Server(e)) = &reply else {
            if matches!(reply, Err(Error::Down(_))) {
                // The master may have failed over: learn the map again next time.
                self.slots.borrow_mut().clear();
            }
            return reply;
        };
        let mut words = e.split(' ');
        let (kind, target) = (words.next(), words.nth(1));
        match (kind, target.map(resolve)) {
            (Some("MOVED"), Some(Ok(addr))) => {
                self.slots.borrow_mut().clear();
                let (_, client) = self.master(addr);
                client.call(args).await
            }
            (Some("ASK"), Some(Ok(addr))) => {
                let (_, client) = self.master(addr);
                client.call_after(Some(&[b"ASKING"]), args).await
            }
            _ => reply,
        }
    }
}

/// `host:port` to an address (an IP literal, or a name looked up once, off the request path
/// for configured nodes).
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {text}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_as_redis_computes_them() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(super::crc16(b"123456789"), 0x31C3);
        assert_eq!(super::slot(b"foo"), 12182);
        assert_eq!(
            super::slot(b"{user1000}.following"),
            super::slot(b"user1000")
        );
        assert_eq!(super::slot(b"foo{}{bar}"), super::slot(b"foo{}{bar}"));
        assert_eq!(super::slot(b"{}x"), super::slot(b"{}x"));
    }
}
