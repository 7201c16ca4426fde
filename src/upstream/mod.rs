//! Upstreams in their compiled, runtime form: resolved nodes, timeouts, retry budget,
//! keepalive policy and Host handling. Built by the control plane, read by every core.

pub mod balancer;
pub mod h2pool;
pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Whether a connect failed for want of a local resource (file descriptors, memory, ports)
/// rather than because of the node: such a failure must not count against the node's
/// health, or a gateway short of descriptors would eject every healthy node.
pub fn local_resource_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Which balancing algorithm an upstream uses (its `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BalancerKind {
    RoundRobin,
    LeastConn,
    ConsistentHash,
    Ewma,
}

/// Where a consistent-hashing upstream takes its key from (`hash_on` + `key`).
#[derive(Debug, Clone)]
pub enum HashOn {
    /// `vars`: one request variable (`remote_addr`, `uri`, `arg_id`, `http_x_user`...).
    Var(crate::vars::Var),
    /// `header`: a request header, by name.
    Header(crate::vars::Var),
    /// `cookie`: a cookie, by name.
    Cookie(crate::vars::Var),
    /// `vars_combinations`: a template such as `$host$uri`.
    Template(crate::vars::Template),
    /// `consumer`: the authenticated consumer (the client address when none was).
    Consumer,
}

/// One backend address.
#[derive(Debug, Clone)]
pub struct Node {
    /// `host:port` as configured (a domain stays a domain); used for `pass_host = "node"`.
    pub host_port: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: i64,
    /// The health-check target (checked upstreams only), shared by every core.
    pub health: Option<Arc<crate::health::Target>>,
}

impl Node {
    /// Not known to be unhealthy.
    #[inline]
    pub fn usable(&self) -> bool {
        self.health.as_ref().is_none_or(|t| t.usable())
    }

    #[cfg(test)]
    pub fn for_test(port: u16, weight: u32) -> Node {
        Node {
            host_port: format!("127.0.0.1:{port}").into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            priority: 0,
            health: None,
        }
    }
}

/// Per-phase timeouts. Each maps to 504 when it fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest wait for one write to the upstream to make progress.
    pub send: Duration,
    /// Longest wait between two reads from the upstream (the response head included).
    pub read: Duration,
}

impl Default for Timeouts {
    /// nginx's defaults, which APISIX inherits when no timeout is configured.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(60),
            send: Duration::from_secs(60),
            read: Duration::from_secs(60),
        }
    }
}

/// Keepalive pool policy for connections to this upstream's nodes.
#[derive(Debug, Clone, Copy)]
pub struct KeepalivePolicy {
    /// Most idle connections kept per node, per core.
    pub size: usize,
    pub idle_timeout: Duration,
    /// Requests served on one connection before it is closed.
    pub requests: u32,
}

/// What Host header the upstream sees.
#[derive(Debug, Clone)]
pub enum PassHost {
    /// The client's Host.
    Pass,
    /// The picked node's `host[:port]` (port left out when it is 80).
    Node,
    /// A fixed value (`upstream_host`).
    Rewrite(Arc<str>),
}

/// A compiled upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// `upstreams[i].id`, or `route:<id>` / `service:<id>` for inline upstreams.
    pub key: Arc<str>,
    pub kind: BalancerKind,
    /// Key source for `chash`; `None` for other types.
    pub hash_on: Option<HashOn>,
    /// Health checks (`checks`), when configured.
    pub checks: Option<Arc<crate::health::Checks>>,
    pub nodes: Vec<Node>,
    /// No node can ever be picked: there are none, or every one has weight 0 (503).
    pub drained: bool,
    pub retries: u32,
    pub retry_timeout: Option<Duration>,
    pub timeouts: Timeouts,
    pub keepalive: KeepalivePolicy,
    pub pass_host: PassHost,
    /// TLS towards the nodes (`scheme = "https"` or `"grpcs"`).
    pub tls: Option<Arc<tls::UpstreamTls>>,
    /// `scheme = "grpc"` / `"grpcs"`: HTTP/2 to the nodes (`proxy::grpc`).
    pub grpc: bool,
}
