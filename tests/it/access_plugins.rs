//! Plugins that answer for the upstream or gate it, through the real gateway: cors,
//! ip-restriction, redirect and mocking, and their bad configs.

use crate::harness::*;

fn route_with(be: &Backend, uri: &str, plugins: &str) -> String {
    format!(
        "[[upstreams]]\nid = \"u{0}\"\nnodes = {1}\n[[routes]]\nid = \"r{0}\"\nuri = \"{uri}\"\nupstream_id = \"u{0}\"\n{plugins}\n",
        uri.len(),
        nodes_map(&[(&be.addr(), 1)])
    )
}

#[test]
fn cors_answers_preflights_and_marks_responses() {
    let be = Backend::named("be");
    let gw = Gateway::start(&format!(
        "{}{}",
        route_with(
            &be,
            "/open",
            "[routes.plugins.cors]\n"
        ),
        route_with(
            &be,
            "/strict/*",
            "[routes.plugins.cors]\nallow_origins = \"https://a.example,https://b.example\"\nallow_methods = \"GET,POST\"\nallow_headers = \"**\"\nexpose_headers = \"X-Total\"\nmax_age = 60\nallow_credential = true\n"
        )
    ));
    let r = gw.get("/open");
    assert_eq!(r.text(), "be");
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(r.header("Access-Control-Max-Age"), Some("5"));
    // A preflight is answered by the gateway, listed origin echoed.
    let before = be.requests();
    let r = gw.client().request(
        "OPTIONS",
        "/strict/x",
        &[
            ("Origin", "https://b.example"),
            ("Access-Control-Request-Headers", "X-Token"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        be.requests(),
        before,
        "a preflight does not reach the upstream"
    );
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://b.example")
    );
    assert_eq!(r.header("Access-Control-Allow-Methods"), Some("GET,POST"));
    assert_eq!(r.header("Access-Control-Allow-Headers"), Some("X-Token"));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(r.header("Vary"), Some("Origin"));
    // An origin not listed gets no CORS headers, but is served.
    let r = gw.client().request(
        "GET",
        "/strict/x",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(r.text(), "be");
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn ip_restriction_lets_listed_clients_through_or_keeps_them_out() {
    let be = Backend::named("be");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        route_with(
            &be,
            "/in",
            "[routes.plugins.ip-restriction]\nwhitelist = [\"127.0.0.0/8\", \"::1\"]\n"
        ),
        route_with(
            &be,
            "/out",
            "[routes.plugins.ip-restriction]\nblacklist = [\"127.0.0.1\"]\nmessage = \"go away\"\n"
        ),
        route_with(
            &be,
            "/other",
            "[routes.plugins.ip-restriction]\nwhitelist = [\"10.0.0.0/8\"]\nresponse_code = 404\n"
        )
    ));
    assert_eq!(gw.get("/in").text(), "be");
    let r = gw.get("/out");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error_msg"], "go away");
    let r = gw.get("/other");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error_msg"], "Your IP address is not allowed");
}

#[test]
fn redirect_answers_with_a_location() {
    let be = Backend::named("be");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        route_with(&be, "/old/*", "[routes.plugins.redirect]\nregex_uri = [\"^/old/(.*)\", \"/new/$1\"]\nret_code = 301\nappend_query_string = true\n"),
        route_with(&be, "/home", "[routes.plugins.redirect]\nuri = \"/welcome?from=$host\"\n"),
        route_with(&be, "/secure", "[routes.plugins.redirect]\nhttp_to_https = true\n"),
        route_with(&be, "/encode/*", "[routes.plugins.redirect]\nregex_uri = [\"^/encode/(.*)\", \"/to/$1x\"]\nencode_uri = true\n")
    ));
    let r = gw.get("/old/a/b?x=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/new/a/b?x=1"));
    let r = gw.get("/home");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("Location"), Some("/welcome?from=test.local"));
    let r = gw.get("/secure?q=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("https://test.local/secure?q=1"));
    // Other methods get 308 (the method and body are kept); over https already: no redirect.
    let r = gw.client().request("POST", "/secure", &[], b"x");
    assert_eq!(r.status, 308);
    let r = gw
        .client()
        .request("GET", "/secure", &[("X-Forwarded-Proto", "https")], b"");
    assert_eq!(r.status, 200);
    // `$1x` is capture 1 then "x" (ngx.re.sub's reading); encode_uri escapes the path only.
    let r = gw.get("/encode/a%20b%23c?k=%20v");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("Location"), Some("/to/a%20b%23cx"));
    assert_eq!(be.requests(), 1);
}

#[test]
fn mocking_answers_with_a_canned_response() {
    let be = Backend::named("be");
    let gw = Gateway::start(&route_with(
        &be,
        "/api/*",
        "[routes.plugins.mocking]\nresponse_status = 201\nresponse_example = '{\"id\": 7}'\nresponse_headers = { X-Env = \"$http_x_env\" }\n",
    ));
    let r = gw
        .client()
        .request("GET", "/api/users", &[("X-Env", "test")], b"");
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["id"], 7);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json;charset=utf8")
    );
    assert!(r.header("x-mock-by").is_some());
    assert_eq!(r.header("X-Env"), Some("test"));
    assert_eq!(be.requests(), 0);
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    for (plugin, want) in [
        (
            "[routes.plugins.cors]\nallow_credential = true",
            "allow_credential",
        ),
        (
            "[routes.plugins.cors]\nallow_origins_by_regex = [\"(\"]",
            "allow_origins_by_regex[0]",
        ),
        (
            "[routes.plugins.ip-restriction]\nwhitelist = [\"10.0.0.0/40\"]",
            "whitelist[0]",
        ),
        (
            "[routes.plugins.ip-restriction]\nwhitelist = [\"1.2.3.4\"]\nblacklist = [\"1.2.3.4\"]",
            "only one",
        ),
        (
            "[routes.plugins.redirect]\nuri = \"/a\"\nhttp_to_https = true",
            "only one",
        ),
        (
            "[routes.plugins.redirect]\nhttp_to_https = true\nappend_query_string = true",
            "append_query_string",
        ),
        (
            "[routes.plugins.mocking]\nresponse_status = 200",
            "response_example",
        ),
    ] {
        let (ok, err) = check_config(&format!(
            "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n{plugin}\n"
        ));
        assert!(!ok, "accepted: {plugin}");
        assert!(err.contains("plugins."), "{err}");
        assert!(err.contains(want), "{plugin}: {err} should name {want}");
    }
}

#[test]
fn real_ip_takes_the_client_address_from_a_trusted_proxy() {
    let be = Backend::start(|s| Reply::ok(s.header("X-Real-IP").unwrap_or("-")));
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        route_with(&be, "/last", "[routes.plugins.real-ip]\nsource = \"http_x_forwarded_for\"\ntrusted_addresses = [\"127.0.0.0/8\"]\n"),
        route_with(&be, "/deeper", "[routes.plugins.real-ip]\nsource = \"http_x_forwarded_for\"\ntrusted_addresses = [\"127.0.0.0/8\"]\nrecursive = true\n"),
        route_with(&be, "/untrusted", "[routes.plugins.real-ip]\nsource = \"http_x_real_ip\"\ntrusted_addresses = [\"10.0.0.0/8\"]\n"),
        route_with(&be, "/blocked", "[routes.plugins.real-ip]\nsource = \"http_x_real_ip\"\n[routes.plugins.ip-restriction]\nblacklist = [\"6.6.6.0/24\"]\n")
    ));
    let get = |path: &str, headers: &[(&str, &str)]| gw.client().request("GET", path, headers, b"");
    let xff = [("X-Forwarded-For", "9.9.9.9, 127.0.0.5")];
    assert_eq!(get("/last", &xff).text(), "127.0.0.5");
    assert_eq!(get("/deeper", &xff).text(), "9.9.9.9");
    // The peer is not trusted: the header is not believed.
    assert_eq!(
        get("/untrusted", &[("X-Real-IP", "1.2.3.4")]).text(),
        "127.0.0.1"
    );
    // Not an address: ignored.
    assert_eq!(
        get("/last", &[("X-Forwarded-For", "not-an-ip")]).text(),
        "127.0.0.1"
    );
    // Later plugins and the access log see the real address.
    assert_eq!(get("/blocked", &[("X-Real-IP", "6.6.6.6")]).status, 403);
    assert_eq!(
        get("/blocked", &[("X-Real-IP", "7.7.7.7")]).text(),
        "7.7.7.7"
    );
    assert!(
        gw.wait_for_event(|_| gw.access_log().contains("7.7.7.7 - ")),
        "{}",
        gw.access_log()
    );
}
