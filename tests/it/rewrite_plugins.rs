//! The request- and response-changing plugins through the real gateway: proxy-rewrite,
//! response-rewrite, request-id and fault-injection, their bad configs, and their effect on
//! the gateway's own answers.

use crate::harness::*;
use std::time::Duration;

/// A backend that answers with what it received: method, target, Host, and selected headers.
fn echo() -> Backend {
    Backend::start(|s| {
        let h = |n: &str| s.header(n).unwrap_or("-").to_string();
        Reply::Full(
            200,
            vec![("X-Upstream".into(), "yes".into())],
            format!(
                "{} {} host={} a={} b={} c={}",
                s.method,
                s.target,
                h("Host"),
                h("X-A"),
                h("X-B"),
                h("X-C")
            )
            .into_bytes(),
        )
    })
}

fn route_with(be: &Backend, uri: &str, plugins: &str) -> String {
    format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\n[[routes]]\nuri = \"{uri}\"\nupstream_id = \"u\"\n{plugins}\n",
        nodes_map(&[(&be.addr(), 1)])
    )
}

#[test]
fn proxy_rewrite_changes_what_goes_upstream() {
    let be = echo();
    let gw = Gateway::start(&format!(
        "{}{}",
        route_with(
            &be,
            "/old/*",
            "[routes.plugins.proxy-rewrite]\nuri = \"/new/$arg_v\"\nmethod = \"POST\"\nhost = \"api.internal\"\nheaders = { set = { X-A = \"from-$remote_addr\" }, add = { X-B = \"added\" }, remove = [\"X-C\"] }\n"
        ),
        "[[routes]]\nid = \"re\"\nuri = \"/re/*\"\nupstream_id = \"u\"\n[routes.plugins.proxy-rewrite]\nregex_uri = [\"^/re/(.*)/(.*)\", \"/rewritten/$2/$1\"]\nheaders = { X-A = \"flat\" }\n"
    ));
    let r = gw.client().request(
        "GET",
        "/old/x?v=7&w=1",
        &[("X-A", "client"), ("X-C", "gone")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "POST /new/7?v=7&w=1 host=api.internal a=from-127.0.0.1 b=added c=-"
    );
    let r = gw.get("/re/a/b");
    assert_eq!(
        r.text(),
        "GET /rewritten/b/a host=test.local a=flat b=- c=-"
    );
    // Not matching the regex: unchanged.
    let r = gw.get("/re/plain");
    assert_eq!(r.text(), "GET /re/plain host=test.local a=flat b=- c=-");
}

#[test]
fn response_rewrite_applies_to_upstream_and_gateway_answers() {
    let be = echo();
    let dead = format!("127.0.0.1:{}", free_port());
    let plugin = "[routes.plugins.response-rewrite]\nstatus_code = 203\nbody = \"replaced\"\nheaders = { set = { X-Upstream = \"no\" }, add = [\"X-Added: $host\"] }\n";
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nid = \"dead\"\nnodes = {{ \"{dead}\" = 1 }}\n[[routes]]\nid = \"d\"\nuri = \"/dead\"\nupstream_id = \"dead\"\n{}",
        route_with(&be, "/live", plugin),
        plugin
    ));
    let mut c = gw.client();
    let r = c.get("/live");
    assert_eq!(r.status, 203);
    assert_eq!(r.text(), "replaced");
    assert_eq!(r.header("X-Upstream"), Some("no"));
    assert_eq!(r.header("X-Added"), Some("test.local"));
    // The connection goes on after a replaced body.
    assert_eq!(c.get("/live").status, 203);
    // The gateway's own 502 passes through the plugin too, and is logged as such.
    let r = gw.get("/dead");
    assert_eq!(r.status, 203, "{}", r.text());
    assert_eq!(r.text(), "replaced");
    assert!(
        gw.wait_for_event(|_| gw.access_log().contains("\"GET /dead HTTP/1.1\" 203")),
        "{}",
        gw.access_log()
    );
    assert!(
        gw.access_log().contains("route=\"d\""),
        "{}",
        gw.access_log()
    );
}

#[test]
fn response_rewrite_only_when_vars_match() {
    let be = echo();
    let gw = Gateway::start(&route_with(
        &be,
        "/*",
        "[routes.plugins.response-rewrite]\nbody = \"for beta\"\nvars = [[\"arg_beta\", \"==\", \"1\"]]\n",
    ));
    assert_eq!(gw.get("/x?beta=1").text(), "for beta");
    assert!(gw.get("/x").text().starts_with("GET /x"));
}

#[test]
fn request_id_is_generated_kept_and_returned() {
    let be = Backend::start(|s| Reply::ok(s.header("X-Request-Id").unwrap_or("none")));
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nid = \"dead\"\nnodes = {{ \"{dead}\" = 1 }}\n[[routes]]\nuri = \"/dead\"\nupstream_id = \"dead\"\n[[global_rules]]\nid = \"1\"\n[global_rules.plugins.request-id]\n",
        route_with(&be, "/live", "")
    ));
    let r = gw.get("/live");
    let id = r
        .header("X-Request-Id")
        .expect("id in the response")
        .to_string();
    assert_eq!(r.text(), id, "the upstream saw the same id");
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "a version 4 uuid: {id}");
    assert_ne!(gw.get("/live").header("X-Request-Id"), Some(id.as_str()));
    // A client's id is kept.
    let r = gw
        .client()
        .request("GET", "/live", &[("X-Request-Id", "mine-1")], b"");
    assert_eq!(r.text(), "mine-1");
    assert_eq!(r.header("X-Request-Id"), Some("mine-1"));
    // The gateway's own answers carry one too, also a 404 (global rules run without a route).
    assert!(gw.get("/dead").header("X-Request-Id").is_some());
    let r = gw.get("/nowhere");
    assert_eq!(r.status, 404);
    assert!(r.header("X-Request-Id").is_some());
}

#[test]
fn fault_injection_aborts_and_delays_without_blocking_the_core() {
    let be = echo();
    let gw = Gateway::start(&format!(
        "{}[[routes]]\nid = \"slow\"\nuri = \"/slow\"\nupstream_id = \"u\"\n[routes.plugins.fault-injection]\ndelay = {{ duration = 1.5 }}\n",
        route_with(
            &be,
            "/x",
            "[routes.plugins.fault-injection]\nabort = { http_status = 418, body = \"no $arg_name\", headers = { X-Fault = \"yes\" }, vars = [[[\"arg_name\", \"==\", \"jack\"]]] }\n"
        )
    ));
    let r = gw.get("/x?name=jack");
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "no jack");
    assert_eq!(r.header("X-Fault"), Some("yes"));
    assert_eq!(gw.get("/x?name=jill").status, 200);
    // One worker: while a request sleeps in the delay, another is served.
    let mut slow = gw.client();
    slow.send("GET", "/slow", &[], b"");
    std::thread::sleep(Duration::from_millis(100));
    let fast = gw.get("/x");
    assert_eq!(fast.status, 200);
    slow.stream
        .set_nonblocking(true)
        .expect("nonblocking client");
    let mut byte = [0u8; 1];
    let pending = matches!(
        std::io::Read::read(&mut slow.stream, &mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(pending, "the delayed request answered before the fast one");
    slow.stream.set_nonblocking(false).unwrap();
    assert_eq!(slow.read_response(false).unwrap().status, 200);
}

#[test]
fn bad_plugin_configs_name_the_plugin_and_field() {
    for (plugin, want) in [
        (
            "[routes.plugins.proxy-rewrite]\nuri = \"no-slash\"",
            "proxy-rewrite",
        ),
        (
            "[routes.plugins.proxy-rewrite]\nregex_uri = [\"(\", \"/x\"]",
            "regex_uri",
        ),
        (
            "[routes.plugins.proxy-rewrite]\nmethod = \"FETCH\"",
            "method",
        ),
        (
            "[routes.plugins.proxy-rewrite]\nheaders = { set = { X-A = \"a\\r\\nX-B: b\" } }",
            "headers.set.X-A",
        ),
        (
            "[routes.plugins.proxy-rewrite]\nurl = \"/x\"",
            "additional properties forbidden, found url",
        ),
        (
            "[routes.plugins.response-rewrite]\nstatus_code = 99",
            "status_code",
        ),
        (
            "[routes.plugins.response-rewrite]\nbody = \"%%%\"\nbody_base64 = true",
            "base64",
        ),
        (
            "[routes.plugins.response-rewrite]\nheaders = { add = [\"no colon\"] }",
            "property \"headers\" validation failed",
        ),
        (
            "[routes.plugins.fault-injection]\n",
            "expect object to have at least 1 properties",
        ),
        (
            "[routes.plugins.fault-injection]\ndelay = { duration = -1 }",
            "property \"delay\" validation failed: property \"duration\" validation failed: expected -1 to be at least 0",
        ),
        (
            "[routes.plugins.fault-injection]\nabort = { http_status = 418, percentage = 101 }",
            "property \"abort\" validation failed: property \"percentage\" validation failed: expected 101 to be at most 100",
        ),
        (
            "[routes.plugins.request-id]\nalgorithm = \"snowflake\"",
            "algorithm",
        ),
    ] {
        let (ok, err) = check_config(&format!(
            "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n{plugin}\n"
        ));
        assert!(!ok, "accepted: {plugin}");
        assert!(err.contains("routes[0] (id \"r\").plugins."), "{err}");
        assert!(err.contains(want), "{plugin}: {err} should name {want}");
    }
}
