//! Micro-benchmarks of the request hot path: route matching, balancer picks, request-head
//! parsing. Run with `cargo bench --bench hot_path`; results are recorded in BENCHMARKS.md.

use shardgate::http::request::{Limits, RequestHead};
use shardgate::route::{HostPattern, MatchInput, Route, Router};
use shardgate::upstream::balancer::{self, PickContext};
use shardgate::upstream::{BalancerKind, Node};
use shardgate::vars::{Var, VarSource};
use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    divan::main();
}

struct NoVars;
impl VarSource for NoVars {
    fn var(&self, _: &Var) -> Option<&[u8]> {
        None
    }
}

/// `n` routes: a third exact paths, a third prefixes, a third prefixes bound to a host,
/// spread over a few prefix lengths as a real API config would be.
fn router(n: usize) -> Router {
    let mut routes = Vec::with_capacity(n);
    let mut uris = Vec::with_capacity(n);
    for i in 0..n {
        let (uri, hosts) = match i % 3 {
            0 => (format!("/api/v1/service{i}/items"), vec![]),
            1 => (format!("/api/v2/service{i}/*"), vec![]),
            _ => (
                format!("/s{i}/*"),
                vec![HostPattern::parse(&format!("h{i}.example.com"))],
            ),
        };
        routes.push(Route {
            service_id: None,
            labels: Default::default(),
            id: format!("r{i}").into(),
            hosts,
            methods: 0,
            vars: vec![],
            remote_addrs: vec![],
            priority: 0,
            upstream: Some(0),
            timeout: None,
            websocket: false,
            plugins: Default::default(),
            index: 0,
        });
        uris.push(vec![uri]);
    }
    Router::new(routes, uris)
}

#[divan::bench(args = [10, 1_000, 10_000])]
fn route_match(bencher: divan::Bencher, n: usize) {
    let router = router(n);
    // A prefix route in the middle of the table, looked up with a longer path.
    let path = format!("/api/v2/service{}/items/42", (n / 2) / 3 * 3 + 1);
    bencher.bench_local(|| {
        router
            .find(&MatchInput {
                path: divan::black_box(path.as_bytes()),
                host: b"api.example.com",
                method: b"GET",
                remote: std::net::Ipv4Addr::LOCALHOST.into(),
                vars: &NoVars,
            })
            .map(|r| r.upstream)
    });
}

#[divan::bench(args = [10, 1_000, 10_000])]
fn route_miss(bencher: divan::Bencher, n: usize) {
    let router = router(n);
    bencher.bench_local(|| {
        router
            .find(&MatchInput {
                path: divan::black_box(b"/nothing/here/at/all"),
                host: b"api.example.com",
                method: b"GET",
                remote: std::net::Ipv4Addr::LOCALHOST.into(),
                vars: &NoVars,
            })
            .is_some()
    });
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            host_port: format!("10.0.{}.{}:80", i / 250, i % 250).into(),
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 80)),
            weight: 1 + (i % 5) as u32,
            priority: 0,
            health: None,
        })
        .collect()
}

fn bench_balancer(bencher: divan::Bencher, kind: BalancerKind, n: usize) {
    let nodes = nodes(n);
    let mut b = balancer::build(kind, &nodes);
    let mut i = 0u64;
    let mut key = Vec::with_capacity(32);
    bencher.bench_local(|| {
        // A different key per pick (chash), and every attempt started and finished
        // (least_conn and ewma book-keeping included).
        i += 1;
        key.clear();
        key.extend_from_slice(&i.to_le_bytes());
        let ctx = PickContext::new(&[]).with_key(&key);
        let picked = b.pick(divan::black_box(&nodes), &ctx);
        if let Some(p) = picked {
            b.started(p);
            b.finished(p, Some(Duration::from_micros(200)));
        }
        picked
    });
}

#[divan::bench(args = [3, 100, 1_000])]
fn roundrobin_pick(bencher: divan::Bencher, n: usize) {
    bench_balancer(bencher, BalancerKind::RoundRobin, n);
}

#[divan::bench(args = [3, 100, 1_000])]
fn least_conn_pick(bencher: divan::Bencher, n: usize) {
    bench_balancer(bencher, BalancerKind::LeastConn, n);
}

#[divan::bench(args = [3, 100, 1_000])]
fn chash_pick(bencher: divan::Bencher, n: usize) {
    bench_balancer(bencher, BalancerKind::ConsistentHash, n);
}

#[divan::bench(args = [3, 100, 1_000])]
fn ewma_pick(bencher: divan::Bencher, n: usize) {
    bench_balancer(bencher, BalancerKind::Ewma, n);
}

const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.abc\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
X-Request-Id: 7f9c2b1e-4c1d-4e2a-9a53-2f0b1c8d9e10\r\n\
Connection: keep-alive\r\n\r\n";

#[divan::bench]
fn parse_request_head(bencher: divan::Bencher) {
    let limits = Limits {
        max_request_line: 8192,
        max_header_size: 32 * 1024,
        max_headers: 100,
        underscores_in_headers: false,
    };
    let mut head = RequestHead::default();
    bencher.bench_local(|| head.parse(divan::black_box(REQUEST), &limits).is_ok());
}
