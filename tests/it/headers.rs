//! Request and response headers the gateway adds, drops or rewrites: names with `_`
//! (nginx's `underscores_in_headers`), `Forwarded`, `Content-Length: 0`, and APISIX's
//! `X-APISIX-Upstream-Status`.

use crate::harness::*;

/// Nodes as an array: `first` preferred (priority 1), `then` used after it failed.
fn first_then(first: u16, then: u16) -> String {
    format!(
        "[{{ host = \"127.0.0.1\", port = {first}, weight = 1, priority = 1 }}, {{ host = \"127.0.0.1\", port = {then}, weight = 1 }}]"
    )
}

#[test]
fn header_names_with_underscores_are_dropped_unless_allowed() {
    let be = Backend::named("be");
    let nodes = nodes_map(&[(&be.addr(), 1)]);
    let spoof: &[(&str, &str)] = &[
        ("X_Real_IP", "6.6.6.6"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("Transfer_Encoding", "chunked"),
        ("X-Env", "kept"),
    ];
    let gw = Gateway::start(&upstream_config(&nodes, ""));
    let r = gw.client().request("GET", "/", spoof, b"");
    assert_eq!(r.status, 200);
    let seen = be.last();
    let head = String::from_utf8_lossy(&seen.raw_head).to_string();
    assert!(
        !head.contains('_'),
        "no underscore header forwarded: {head}"
    );
    assert_eq!(seen.header("X-Env"), Some("kept"));
    assert_eq!(seen.header("X-Real-IP"), Some("127.0.0.1"));
    assert_eq!(seen.header("X-Forwarded-For"), Some("127.0.0.1"));
    // Nor can a route condition see them.
    drop(gw);
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {nodes}\n[[routes]]\nuri = \"/\"\nupstream_id = \"u\"\nvars = [[\"http_x_env\", \"==\", \"yes\"]]\n"
    ));
    let r = gw.client().request("GET", "/", &[("X_Env", "yes")], b"");
    assert_eq!(r.status, 404);

    // `underscores_in_headers = true` passes them on, as nginx's directive does.
    let gw = Gateway::start_with(
        &upstream_config(&nodes, ""),
        "workers = 1\nunderscores_in_headers = true",
    );
    let r = gw.client().request("GET", "/", &[("X_Custom", "1")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(be.last().header("X_Custom"), Some("1"));
}

#[test]
fn forwarded_is_rebuilt_with_this_hop_last() {
    let be = Backend::named("be");
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let r = gw
        .client()
        .request("GET", "/", &[("Forwarded", "for=6.6.6.6;proto=https")], b"");
    assert_eq!(r.status, 200);
    let seen = be.last();
    assert_eq!(
        seen.header("Forwarded"),
        Some("for=6.6.6.6;proto=https, for=127.0.0.1;proto=http")
    );
    let forwarded = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("forwarded"))
        .count();
    assert_eq!(forwarded, 1, "one Forwarded header reaches the backend");
    // Without one from the client, none is added (as nginx and APISIX).
    gw.get("/");
    assert_eq!(be.last().header("Forwarded"), None);
}

#[test]
fn an_empty_body_keeps_its_content_length() {
    let be = Backend::named("be");
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let mut c = gw.client();
    let r = c.request("POST", "/", &[("Content-Length", "0")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(be.last().header("Content-Length"), Some("0"));
    // The connection goes on.
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn upstream_status_header_lists_every_attempt_when_the_last_is_5xx() {
    let port_of = |a: &str| a.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    // Three dead nodes, retries = 2: APISIX answers 502 with `502, 502, 502`.
    let dead: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&dead[0], 1), (&dead[1], 1), (&dead[2], 1)]),
        "retries = 2",
    ));
    let r = gw.get("/");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("X-APISIX-Upstream-Status"), Some("502, 502, 502"));

    // A relayed 500 after a dead node: both attempts listed.
    let failing = Backend::start(|_| Reply::Full(500, vec![], b"oops".to_vec()));
    let gw = Gateway::start(&upstream_config(
        &first_then(port_of(&dead[0]), failing.port),
        "",
    ));
    let r = gw.get("/");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "oops");
    assert_eq!(r.header("X-APISIX-Upstream-Status"), Some("502, 500"));

    // A timeout is a 504.
    let slow = Backend::start(|_| {
        Reply::After(
            std::time::Duration::from_secs(3),
            Box::new(Reply::ok("late")),
        )
    });
    let gw = Gateway::start(&upstream_config(
        &nodes_map(&[(&slow.addr(), 1)]),
        "retries = 0\ntimeout = { connect = 1, send = 1, read = 0.3 }",
    ));
    let r = gw.get("/");
    assert_eq!(r.status, 504);
    assert_eq!(r.header("X-APISIX-Upstream-Status"), Some("504"));

    // No header on success, nor on a 4xx.
    let ok = Backend::start(|s| {
        if s.target == "/missing" {
            Reply::Full(404, vec![], b"no".to_vec())
        } else {
            Reply::ok("fine")
        }
    });
    let gw = Gateway::start(&upstream_config(
        &first_then(port_of(&dead[1]), ok.port),
        "",
    ));
    let r = gw.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-APISIX-Upstream-Status"), None);
    assert_eq!(gw.get("/missing").header("X-APISIX-Upstream-Status"), None);
}
