//! Which nodes a balancer may pick, the same for every algorithm and every attempt: never an
//! unhealthy node, never a weight-0 node while a weighted one is healthy, weight-0 nodes as
//! standbys when every weighted node is down, and a lone node under the same rules.

use crate::harness::*;
use std::time::Duration;

/// Active checks that eject a refusing node after one failed probe.
const FAST_CHECKS: &str = "[upstreams.checks.active]\nhttp_path = \"/health\"\ntimeout = 0.5\nhealthy = { interval = 1, successes = 1 }\nunhealthy = { interval = 1, tcp_failures = 1, http_failures = 1 }\n";

fn upstream(id: &str, kind: &str, nodes: &str) -> String {
    let hash = if kind == "chash" {
        "hash_on = \"vars\"\nkey = \"arg_k\"\n"
    } else {
        ""
    };
    format!(
        "[[upstreams]]\nid = \"{id}\"\ntype = \"{kind}\"\n{hash}nodes = {nodes}\nretries = 0\n{FAST_CHECKS}\n[[routes]]\nuri = \"/{id}/*\"\nupstream_id = \"{id}\"\n"
    )
}

#[test]
fn every_balancer_skips_unhealthy_nodes_on_every_attempt() {
    let good = Backend::named("good");
    let dead = format!("127.0.0.1:{}", free_port());
    let nodes = nodes_map(&[(&good.addr(), 1), (&dead, 1)]);
    let kinds = ["roundrobin", "least_conn", "ewma", "chash"];
    let config: String = kinds.iter().map(|k| upstream(k, k, &nodes)).collect();
    let control = free_port();
    let gw = Gateway::start_with(
        &config,
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    let dead_port: u16 = dead.rsplit(':').next().unwrap().parse().unwrap();
    for k in kinds {
        wait_status(control, k, dead_port, "unhealthy", Duration::from_secs(5));
    }
    // With retries = 0 a pick of the dead node would be a 502: every request must be served.
    for k in kinds {
        for i in 0..20 {
            let r = gw.get(&format!("/{k}/x?k={i}"));
            assert_eq!(r.status, 200, "{k} request {i}: {}", r.text());
            assert_eq!(r.text(), "good");
        }
    }
}

#[test]
fn weight_zero_nodes_are_standbys() {
    let standby = Backend::named("standby");
    let main = Backend::named("main");
    let dead = format!("127.0.0.1:{}", free_port());
    let dead_port: u16 = dead.rsplit(':').next().unwrap().parse().unwrap();
    let kinds = ["roundrobin", "least_conn", "ewma", "chash"];
    let mut config = String::new();
    for k in kinds {
        // Healthy weighted node next to a weight-0 one: the weight-0 node gets nothing.
        config.push_str(&upstream(
            &format!("up-{k}"),
            k,
            &nodes_map(&[(&standby.addr(), 0), (&main.addr(), 1)]),
        ));
        // The only weighted node is down: the weight-0 node serves (APISIX does the same).
        config.push_str(&upstream(
            &format!("down-{k}"),
            k,
            &nodes_map(&[(&standby.addr(), 0), (&dead, 1)]),
        ));
    }
    // A lone node of weight 0, and a lone healthy node.
    config.push_str(&upstream(
        "lone-zero",
        "roundrobin",
        &nodes_map(&[(&standby.addr(), 0)]),
    ));
    let control = free_port();
    let gw = Gateway::start_with(
        &config,
        &format!("workers = 1\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    for k in kinds {
        for i in 0..10 {
            let r = gw.get(&format!("/up-{k}/x?k={i}"));
            assert_eq!(r.text(), "main", "{k}: a weight-0 node got traffic");
        }
    }
    for k in kinds {
        wait_status(
            control,
            &format!("down-{k}"),
            dead_port,
            "unhealthy",
            Duration::from_secs(5),
        );
        for i in 0..10 {
            let r = gw.get(&format!("/down-{k}/x?k={i}"));
            assert_eq!(r.status, 200, "{k}: {}", r.text());
            assert_eq!(r.text(), "standby", "{k}");
        }
    }
    // An upstream whose every node has weight 0 serves nothing.
    let before = standby.requests_except("/health");
    let r = gw.get("/lone-zero/x");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error_msg"], "no valid upstream node");
    assert_eq!(standby.requests_except("/health"), before);
}

#[test]
fn a_lone_node_is_retried_as_apisix_does() {
    // APISIX sends `retries + 1` attempts to a lone node; each attempt here is closed
    // without an answer, so the client gets 502 after three of them.
    let be = Backend::start(|_| Reply::Close);
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&be.addr(), 1)]),
        "retries = 2",
    ));
    let r = gw.get("/");
    assert_eq!(r.status, 502);
    assert_eq!(be.requests(), 3);
    assert_eq!(r.header("X-APISIX-Upstream-Status"), Some("502, 502, 502"));
}
