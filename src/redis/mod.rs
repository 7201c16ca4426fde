//! A Redis client for the data plane, on each core's own runtime: RESP2 ([`resp`]), one
//! pipelined connection per server per core ([`client`]), Redis Cluster slot routing
//! ([`cluster`]), and scripts run by digest ([`Script`]).
//!
//! Cores never share a connection: what a core's requests ask Redis stays on that core.
//! Clients live in a per-core registry ([`single`], [`cluster`]), so every plugin instance on
//! a core that names the same server shares one connection, across config reloads too.

pub mod client;
pub mod cluster;
pub mod resp;

pub use client::{Client, Endpoint, Error};
pub use resp::Reply;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

/// A cluster as configured: its seed nodes, and how to log in.
type ClusterKey = (Vec<SocketAddr>, Endpoint);

thread_local! {
    static SINGLES: RefCell<HashMap<Endpoint, Client>> = RefCell::new(HashMap::new());
    static CLUSTERS: RefCell<HashMap<ClusterKey, Rc<cluster::Cluster>>> = RefCell::new(HashMap::new());
}

/// This core's client for `endpoint`.
pub fn single(endpoint: &Endpoint) -> Client {
    SINGLES.with(|m| {
        m.borrow_mut()
            .entry(endpoint.clone())
            .or_insert_with(|| Client::new(endpoint.clone()))
            .clone()
    })
}

/// This core's view of the cluster reached through `seeds` (`template`: login and timeout).
pub fn cluster(seeds: &[SocketAddr], template: &Endpoint) -> Rc<cluster::Cluster> {
    CLUSTERS.with(|m| {
        m.borrow_mut()
            .entry((seeds.to_vec(), template.clone()))
            .or_insert_with(|| Rc::new(cluster::Cluster::new(seeds.to_vec(), template.clone())))
            .clone()
    })
}

/// A Lua script, run by its SHA-1 digest (`EVALSHA`), sent whole (`EVAL`) only when the
/// server does not know it yet (after a restart or `SCRIPT FLUSH`). Made in a `static`; the
/// digest is computed on first use.
pub struct Script {
    pub text: &'static str,
    sha1: std::sync::OnceLock<String>,
}

impl Script {
    pub const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha1: std::sync::OnceLock::new(),
        }
    }

    pub fn sha1(&self) -> &str {
        self.sha1.get_or_init(|| {
            let digest = ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                self.text.as_bytes(),
            );
            hex(digest.as_ref())
        })
    }
}

/// Lower-case hex of `bytes` (script digests, counter names).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a script runs: one server, or the master of the key's slot in a cluster.
#[derive(Clone)]
pub enum Target {
    Single(Client),
    Cluster(Rc<cluster::Cluster>),
}

impl Target {
    async fn call(&self, key: &[u8], args: &[&[u8]]) -> Result<Reply, Error> {
        match self {
            Target::Single(c) => c.call(args).await,
            Target::Cluster(c) => c.call(key, args).await,
        }
    }

    /// Sends a command about `key` without waiting for (or reading) its reply, when a
    /// connection is up; otherwise drops it (a release that can wait for its key's expiry).
    pub fn send_detached(&self, key: &[u8], args: &[&[u8]]) {
        match self {
            Target::Single(c) => c.send_detached(args),
            Target::Cluster(c) => c.send_detached(key, args),
        }
    }

    /// Runs `script` with one key and `args`.
    pub async fn eval(&self, script: &Script, key: &[u8], args: &[&[u8]]) -> Result<Reply, Error> {
        let mut command: Vec<&[u8]> = Vec::with_capacity(4 + args.len());
        command.extend([b"EVALSHA".as_slice(), script.sha1().as_bytes(), b"1", key]);
        command.extend_from_slice(args);
        match self.call(key, &command).await {
            Err(Error::Server(e)) if e.starts_with("NOSCRIPT") => {
                command[0] = b"EVAL";
                command[1] = script.text.as_bytes();
                self.call(key, &command).await
            }
            other => other,
        }
    }
}
