//! The router: picks the route for a request the way APISIX's `radixtree_host_uri` does.
//!
//! Order of preference:
//! 1. routes that name hosts are tried before routes that do not (a host-bound route wins
//!    whatever its priority);
//! 2. within each group, exact-path routes before prefix routes (`/api/*`), longer prefixes
//!    before shorter ones;
//! 3. within one path, higher `priority` first, then config order.
//!
//! A candidate must also pass its host, method and `vars` checks; the first that passes wins.
//!
//! Lookup is a hash probe per distinct prefix length in use rather than a scan of all routes,
//! so the cost grows with how many different prefix lengths the config has, not with how many
//! routes it has.

use crate::fold_hash::FoldHash;
use crate::vars::{Condition, VarSource};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Methods APISIX accepts in `methods`, each a bit in [`Route::methods`].
pub const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// Bit for a request method; unknown methods get no bit and match only method-less routes.
pub fn method_bit(method: &[u8]) -> u32 {
    METHODS
        .iter()
        .position(|m| m.as_bytes() == method)
        .map_or(0, |i| 1 << i)
}

/// A host pattern: exact (`api.example.com`) or wildcard (`*.example.org`).
#[derive(Debug, Clone)]
pub enum HostPattern {
    Exact(String),
    /// Stored as the suffix including the dot: `.example.org`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(p: &str) -> HostPattern {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(p),
        }
    }

    /// `host` must already be lower-case and without port.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(h) => h.as_bytes() == host,
            HostPattern::Suffix(s) => host.len() >= s.len() && host.ends_with(s.as_bytes()),
        }
    }
}

/// A client address or network (`remote_addrs` entries: `192.168.1.0/24`, `10.0.0.1`,
/// `2001:db8::/32`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ip` or `ip/prefix` (prefix at most 32 for IPv4, 128 for IPv6).
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("'{s}': prefix length must be 0-{max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 client counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a route is called where it is reported (metrics labels, logs): shared, so a report
/// clones a pointer, not the strings.
#[derive(Debug, Default)]
pub struct RouteLabels {
    pub name: Option<Arc<str>>,
    /// Its service's name.
    pub service_name: Option<Arc<str>>,
    /// Its paths and host patterns as written (`matched_uri`, `matched_host`).
    pub uris: Vec<Arc<str>>,
    pub hosts: Vec<Arc<str>>,
}

/// A compiled route. `upstream` indexes the snapshot's upstream table.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: Arc<str>,
    pub labels: Arc<RouteLabels>,
    /// The service it belongs to (`service_id`, the variable of that name).
    pub service_id: Option<Arc<str>>,
    pub hosts: Vec<HostPattern>,
    /// Bit set of allowed methods; 0 = any.
    pub methods: u32,
    pub vars: Vec<Condition>,
    /// `remote_addrs` / `remote_addr`: the client must be in one of these (empty = any).
    pub remote_addrs: Vec<IpNet>,
    pub priority: i64,
    /// Index into the snapshot's upstreams; `None` = the route has no upstream (503).
    pub upstream: Option<usize>,
    /// Route-level timeout override (APISIX: route `timeout` beats the upstream's).
    pub timeout: Option<crate::upstream::Timeouts>,
    /// `enable_websocket` (the route's, else its service's): Upgrade requests are forwarded.
    pub websocket: bool,
    /// The route's plugins merged with its service's, in execution order.
    pub plugins: crate::plugin::Chain,
    /// Position in the router (set by [`Router::new`]).
    pub index: usize,
}

/// What the router needs to know about a request.
pub struct MatchInput<'a> {
    pub path: &'a [u8],
    /// Lower-case, without port.
    pub host: &'a [u8],
    pub method: &'a [u8],
    /// The client's address.
    pub remote: IpAddr,
    pub vars: &'a dyn VarSource,
}

impl Route {
    /// The path pattern that matched `path` (APISIX's `matched_uri`).
    pub fn matched_uri(&self, path: &[u8]) -> &str {
        match self.labels.uris.as_slice() {
            [one] => one,
            many => many
                .iter()
                .find(|u| match u.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix.as_bytes()),
                    None => path == u.as_bytes(),
                })
                .map_or("", |u| u),
        }
    }

    /// The host pattern that matched `host` (lower-case, no port), or "" for a route
    /// without hosts (APISIX's `matched_host`).
    pub fn matched_host(&self, host: &[u8]) -> &str {
        let i = self.hosts.iter().position(|h| h.matches(host));
        i.and_then(|i| self.labels.hosts.get(i)).map_or("", |h| h)
    }

    fn accepts(&self, input: &MatchInput<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(input.host)))
            && (self.methods == 0 || self.methods & method_bit(input.method) != 0)
            && (self.remote_addrs.is_empty()
                || self.remote_addrs.iter().any(|n| n.contains(input.remote)))
            && self.vars.iter().all(|c| c.matches(input.vars))
    }
}

/// Route indices by path, for one host group.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<[u8]>, Vec<u32>, FoldHash>,
    prefix: HashMap<Box<[u8]>, Vec<u32>, FoldHash>,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
}

impl PathIndex {
    fn insert(&mut self, uri: &str, route: u32) {
        match uri.strip_suffix('*') {
            Some(prefix) => self
                .prefix
                .entry(prefix.as_bytes().into())
                .or_default()
                .push(route),
            None => self
                .exact
                .entry(uri.as_bytes().into())
                .or_default()
                .push(route),
        }
    }

    fn finish(&mut self, routes: &[Route]) {
        let by_priority = |ids: &mut Vec<u32>| {
            // Stable: equal priorities keep config order.
            ids.sort_by_key(|&i| std::cmp::Reverse(routes[i as usize].priority));
            ids.dedup();
        };
        self.exact.values_mut().for_each(by_priority);
        self.prefix.values_mut().for_each(by_priority);
        let mut lens: Vec<usize> = self.prefix.keys().map(|k| k.len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        self.prefix_lens = lens;
    }

    fn find(&self, routes: &[Route], input: &MatchInput<'_>) -> Option<u32> {
        let pick = |ids: &Vec<u32>| {
            ids.iter()
                .copied()
                .find(|&i| routes[i as usize].accepts(input))
        };
        if let Some(found) = self.exact.get(input.path).and_then(pick) {
            return Some(found);
        }
        for &len in &self.prefix_lens {
            if len > input.path.len() {
                continue;
            }
            if let Some(found) = self.prefix.get(&input.path[..len]).and_then(pick) {
                return Some(found);
            }
        }
        None
    }
}

/// All routes of one config snapshot, indexed for matching: routes for exact hosts by host
/// (a request only looks at its own host's routes, however many hosts there are), then
/// routes for wildcard hosts, then routes for any host, as APISIX's `radixtree_host_uri`
/// tries the host first.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    by_host: HashMap<Box<[u8]>, PathIndex, FoldHash>,
    wildcard_hosts: PathIndex,
    without_hosts: PathIndex,
}

impl Router {
    /// Builds the index; `uris[i]` are the paths of `routes[i]`.
    pub fn new<P: AsRef<[String]>>(routes: Vec<Route>, uris: Vec<P>) -> Router {
        let mut router = Router {
            routes,
            ..Default::default()
        };
        for (i, r) in router.routes.iter_mut().enumerate() {
            r.index = i;
        }
        // Sized once: most routes of a large table have no host.
        let plain: usize = (router.routes.iter().zip(&uris))
            .filter(|(r, _)| r.hosts.is_empty())
            .map(|(_, p)| p.as_ref().len())
            .sum();
        router.without_hosts.exact.reserve(plain);
        router.without_hosts.prefix.reserve(plain);
        for (i, paths) in uris.iter().enumerate() {
            let paths = paths.as_ref();
            let route = &router.routes[i];
            if route.hosts.is_empty() {
                for p in paths {
                    router.without_hosts.insert(p, i as u32);
                }
                continue;
            }
            for h in &route.hosts {
                let index = match h {
                    HostPattern::Exact(host) => {
                        router.by_host.entry(host.as_bytes().into()).or_default()
                    }
                    HostPattern::Suffix(_) => &mut router.wildcard_hosts,
                };
                for p in paths {
                    index.insert(p, i as u32);
                }
            }
        }
        for index in router.by_host.values_mut() {
            index.finish(&router.routes);
        }
        router.wildcard_hosts.finish(&router.routes);
        router.without_hosts.finish(&router.routes);
        router
    }

    pub fn find(&self, input: &MatchInput<'_>) -> Option<&Route> {
        self.by_host
            .get(input.host)
            .and_then(|index| index.find(&self.routes, input))
            .or_else(|| self.wildcard_hosts.find(&self.routes, input))
            .or_else(|| self.without_hosts.find(&self.routes, input))
            .map(|i| &self.routes[i as usize])
    }

    /// The route at `index` (see [`Route::index`]).
    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::Var;

    struct NoVars;
    impl VarSource for NoVars {
        fn var(&self, _: &Var) -> Option<&[u8]> {
            None
        }
    }

    fn route(id: &str, hosts: &[&str], methods: &[&str], priority: i64) -> Route {
        Route {
            service_id: None,
            labels: Default::default(),
            id: id.into(),
            hosts: hosts.iter().map(|h| HostPattern::parse(h)).collect(),
            methods: methods
                .iter()
                .map(|m| method_bit(m.as_bytes()))
                .fold(0, |a, b| a | b),
            vars: vec![],
            remote_addrs: vec![],
            priority,
            upstream: None,
            timeout: None,
            websocket: false,
            plugins: Default::default(),
            index: 0,
        }
    }

    fn find<'a>(r: &'a Router, path: &str, host: &str, method: &str) -> Option<&'a str> {
        r.find(&MatchInput {
            path: path.as_bytes(),
            host: host.as_bytes(),
            method: method.as_bytes(),
            remote: std::net::Ipv4Addr::LOCALHOST.into(),
            vars: &NoVars,
        })
        .map(|r| &*r.id)
    }

    #[test]
    fn precedence() {
        let r = Router::new(
            vec![
                route("prefix", &[], &[], 0),
                route("longer", &[], &[], 0),
                route("exact", &[], &[], 0),
                route("hosted", &["*.example.org"], &[], -5),
                route("post", &[], &["POST"], 10),
                route("prio", &[], &[], 5),
            ],
            vec![
                vec!["/api/*".into()],
                vec!["/api/v2/*".into()],
                vec!["/api/v2/x".into()],
                vec!["/*".into()],
                vec!["/api/v2/*".into()],
                vec!["/api/*".into()],
            ],
        );
        assert_eq!(find(&r, "/api/v2/x", "a.com", "GET"), Some("exact"));
        assert_eq!(find(&r, "/api/v2/y", "a.com", "GET"), Some("longer"));
        assert_eq!(find(&r, "/api/v2/y", "a.com", "POST"), Some("post"));
        assert_eq!(find(&r, "/api/v1", "a.com", "GET"), Some("prio"));
        assert_eq!(find(&r, "/api/v1", "x.example.org", "GET"), Some("hosted"));
        assert_eq!(find(&r, "/api", "a.com", "GET"), None);
        assert_eq!(find(&r, "/other", "example.org", "GET"), None);
    }

    #[test]
    fn hosts_first_exact_then_wildcard_then_any() {
        let mut routes = vec![
            route("any", &[], &[], 0),
            route("wild", &["*.example.org"], &[], 0),
            route("exact", &["api.example.org", "API2.example.org"], &[], 0),
        ];
        let mut uris: Vec<Vec<String>> = vec![
            vec!["/a/b/*".into()],
            vec!["/a/*".into()],
            vec!["/*".into()],
        ];
        // Many other hosts: a request only looks at its own host's routes.
        for i in 0..1000 {
            routes.push(route(&format!("h{i}"), &[&format!("h{i}.test")], &[], 0));
            uris.push(vec!["/*".into()]);
        }
        let r = Router::new(routes, uris);
        assert_eq!(find(&r, "/a/b/c", "api.example.org", "GET"), Some("exact"));
        assert_eq!(find(&r, "/a/b/c", "api2.example.org", "GET"), Some("exact"));
        assert_eq!(find(&r, "/a/b/c", "www.example.org", "GET"), Some("wild"));
        assert_eq!(find(&r, "/a/b/c", "other.test", "GET"), Some("any"));
        assert_eq!(find(&r, "/x", "h999.test", "GET"), Some("h999"));
        assert_eq!(find(&r, "/x", "other.test", "GET"), None);
    }

    #[test]
    fn remote_addrs_match_addresses_and_networks() {
        let net = |s: &str| IpNet::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.9")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(!net("::1").contains(ip("127.0.0.1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "x",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "1.2.3",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }
}
