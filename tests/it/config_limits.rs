//! Config values that once aborted the gateway: each is refused by `check` and by a reload
//! with the field named (the old config keeps serving), or accepted and served correctly.

use crate::harness::*;

const UPSTREAM: &str = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n";

/// Configs that must be refused, and the field each error must name.
fn refused() -> Vec<(String, &'static str)> {
    let route = "[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n";
    vec![
        (
            format!("[gateway]\nkeepalive_timeout = 1e20\n{UPSTREAM}{route}"),
            "gateway.keepalive_timeout",
        ),
        (
            format!("[gateway]\nclient_header_timeout = 1e19\n{UPSTREAM}{route}"),
            "gateway.client_header_timeout",
        ),
        (
            format!("[gateway]\ngraceful_shutdown_timeout = 1e300\n{UPSTREAM}{route}"),
            "gateway.graceful_shutdown_timeout",
        ),
        (
            format!("{UPSTREAM}retry_timeout = 9.3e18\n{route}"),
            "upstreams[0] (id \"u\").retry_timeout",
        ),
        (
            format!("{UPSTREAM}keepalive_pool = {{ size = 1, idle_timeout = 1.5e19, requests = 1 }}\n{route}"),
            "upstreams[0] (id \"u\").keepalive_pool.idle_timeout",
        ),
        (
            format!("{UPSTREAM}timeout = {{ connect = 1, send = 1, read = 1e10 }}\n{route}"),
            "upstreams[0] (id \"u\").timeout.read",
        ),
        (
            format!("{UPSTREAM}[upstreams.checks.active]\ntimeout = 1e20\n{route}"),
            "upstreams[0] (id \"u\").checks.active.timeout",
        ),
        (
            format!(
                "[[upstreams]]\nid = \"u\"\ntype = \"chash\"\nkey = \"uri\"\nnodes = {{ \"127.0.0.1:1\" = 1, \"127.0.0.1:2\" = 1000000 }}\n{route}"
            ),
            "upstreams[0] (id \"u\").nodes",
        ),
        (
            format!("{UPSTREAM}[upstreams.checks.active]\nhost = \"a\\r\\nX-Injected: 1\"\n{route}"),
            "checks.active.host",
        ),
        (
            format!("{UPSTREAM}[upstreams.checks.active]\nhttp_path = \"/h HTTP/1.1\\r\\nX: y\"\n{route}"),
            "checks.active.http_path",
        ),
    ]
}

#[test]
fn out_of_range_values_are_refused_by_check() {
    for (config, field) in refused() {
        let (ok, err) = check_config(&config);
        assert!(!ok, "accepted:\n{config}");
        assert!(!err.contains("CRASHED"), "{err}\n{config}");
        assert!(err.contains(field), "{err} should name {field}");
    }
}

#[test]
fn out_of_range_values_are_refused_by_a_reload() {
    let be = Backend::named("be");
    let good = upstream_config(&nodes_map(&[(&be.addr(), 1)]), "");
    let gw = Gateway::start(&good);
    let mut refusals = 0;
    for (config, field) in refused() {
        // Gateway settings live in the harness's own [gateway] section: `check` covers those.
        if config.starts_with("[gateway]") {
            continue;
        }
        gw.write_config(&config);
        gw.signal(libc::SIGHUP);
        refusals += 1;
        assert!(
            gw.wait_for_event(|e| e.matches("reload refused").count() == refusals),
            "{field}: {}",
            gw.events()
        );
        assert!(gw.events().contains(field), "{field}: {}", gw.events());
        assert_eq!(gw.get("/still").text(), "be", "{field}");
    }
}

#[test]
fn a_route_uri_ending_in_a_multibyte_character_is_served() {
    let be = Backend::start(|s| Reply::ok(&format!("served {}", s.target)));
    let config = format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\n[[routes]]\nuri = \"/café\"\nupstream_id = \"u\"\n[[routes]]\nuri = \"/menü*\"\nupstream_id = \"u\"\n",
        nodes_map(&[(&be.addr(), 1)])
    );
    let (ok, err) = check_config(&config);
    assert!(ok, "{err}");
    let gw = Gateway::start(&config);
    assert_eq!(gw.get("/caf%C3%A9").text(), "served /caf%C3%A9");
    assert_eq!(gw.get("/men%C3%BC/x").text(), "served /men%C3%BC/x");
    assert_eq!(gw.get("/cafe").status, 404);
    // And a reload to such a config is taken, not fatal.
    gw.write_config(&config.replace("/café", "/thé"));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("config reloaded")),
        "{}",
        gw.events()
    );
    assert_eq!(gw.get("/th%C3%A9").text(), "served /th%C3%A9");
}
