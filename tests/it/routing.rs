//! Route matching through the real gateway: exact vs prefix, longest prefix, priority, hosts
//! (exact and wildcard), methods, vars, services, and the 404 body.

use crate::harness::*;

type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn routing_matrix() {
    let a = Backend::named("exact");
    let b = Backend::named("prefix");
    let c = Backend::named("longer");
    let d = Backend::named("host");
    let e = Backend::named("wild");
    let f = Backend::named("post");
    let g = Backend::named("canary");
    let h = Backend::named("service");
    let i = Backend::named("prio");
    let config = format!(
        r#"
[[upstreams]]
id = "exact"
nodes = {{ "{a}" = 1 }}
[[upstreams]]
id = "prefix"
nodes = {{ "{b}" = 1 }}
[[upstreams]]
id = "longer"
nodes = [{{ host = "127.0.0.1", port = {cport}, weight = 1 }}]
[[upstreams]]
id = "host"
nodes = {{ "{d}" = 1 }}
[[upstreams]]
id = "wild"
nodes = {{ "{e}" = 1 }}
[[upstreams]]
id = "post"
nodes = {{ "{f}" = 1 }}
[[upstreams]]
id = "canary"
nodes = {{ "{g}" = 1 }}
[[upstreams]]
id = "prio"
nodes = {{ "{i}" = 1 }}

[[services]]
id = "svc"
upstream = {{ nodes = {{ "{h}" = 1 }} }}

[[routes]]
id = "exact"
uri = "/api/v1/exact"
upstream_id = "exact"
[[routes]]
id = "prefix"
uri = "/api/*"
upstream_id = "prefix"
[[routes]]
id = "longer"
uri = "/api/v1/*"
upstream_id = "longer"
[[routes]]
id = "host"
uri = "/api/*"
host = "api.example.com"
upstream_id = "host"
[[routes]]
id = "wild"
uri = "/api/*"
hosts = ["*.example.org"]
upstream_id = "wild"
[[routes]]
id = "post"
uri = "/api/v1/*"
methods = ["POST"]
priority = 5
upstream_id = "post"
[[routes]]
id = "canary"
uris = ["/api/v1/*"]
vars = [["http_x_env", "==", "canary"], ["arg_user", "~~", "^[a-z]+$"]]
priority = 10
upstream_id = "canary"
[[routes]]
id = "svc"
uri = "/svc"
service_id = "svc"
[[routes]]
id = "low"
uri = "/p/*"
priority = 1
upstream_id = "exact"
[[routes]]
id = "high"
uri = "/p/*"
priority = 2
upstream_id = "prio"
[[routes]]
id = "disabled"
uri = "/off"
status = 0
upstream_id = "exact"
"#,
        a = a.addr(),
        b = b.addr(),
        cport = c.port,
        d = d.addr(),
        e = e.addr(),
        f = f.addr(),
        g = g.addr(),
        h = h.addr(),
        i = i.addr(),
    );
    let gw = Gateway::start(&config);
    // (method, path, headers, backend that must answer)
    let cases: &[Case] = &[
        ("GET", "/api/v1/exact", &[], "exact"),
        ("GET", "/api/v1/exact?q=1", &[], "exact"),
        ("GET", "/api/v1/other", &[], "longer"),
        ("GET", "/api/v2", &[], "prefix"),
        ("GET", "/api/", &[], "prefix"),
        ("GET", "/api/v2", &[("Host", "api.example.com")], "host"),
        (
            "GET",
            "/api/v2",
            &[("Host", "API.Example.com:8080")],
            "host",
        ),
        (
            "GET",
            "/api/v1/exact",
            &[("Host", "api.example.com")],
            "host",
        ),
        ("GET", "/api/x", &[("Host", "a.b.example.org")], "wild"),
        ("GET", "/api/x", &[("Host", "example.org")], "prefix"),
        ("POST", "/api/v1/x", &[], "post"),
        (
            "GET",
            "/api/v1/x?user=jack",
            &[("X-Env", "canary")],
            "canary",
        ),
        (
            "GET",
            "/api/v1/x?user=Jack1",
            &[("X-Env", "canary")],
            "longer",
        ),
        ("GET", "/api/v1/x?user=jack", &[("X-Env", "prod")], "longer"),
        (
            "GET",
            "/api/v1/x?user=jack",
            &[("X_Env", "canary")],
            "longer",
        ),
        ("GET", "/svc", &[], "service"),
        ("GET", "/p/x", &[], "prio"),
    ];
    for (method, path, headers, want) in cases {
        let r = gw.client().request(method, path, headers, b"");
        assert_eq!(r.status, 200, "{method} {path} {headers:?}");
        assert_eq!(r.text(), *want, "{method} {path} {headers:?}");
    }
    for path in ["/nothing", "/api", "/off", "/svc/x"] {
        let r = gw.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error_msg"], "404 Route Not Found");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[test]
fn route_without_upstream_is_503_and_empty_nodes_503() {
    let config = r#"
[[services]]
id = "empty"
[[upstreams]]
id = "none"
nodes = {}
[[routes]]
uri = "/a"
service_id = "empty"
[[routes]]
uri = "/b"
upstream_id = "none"
"#;
    let gw = Gateway::start(config);
    let r = gw.get("/a");
    assert_eq!(r.status, 503);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("missing upstream"));
    let r = gw.get("/b");
    assert_eq!(r.status, 503);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("no valid upstream node"));
}

#[test]
fn routing_uses_the_normalized_path() {
    let public = Backend::start(|s| Reply::ok(&format!("public {}", s.target)));
    let admin = Backend::start(|s| Reply::ok(&format!("admin {}", s.target)));
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"p\"\nnodes = {}\n[[upstreams]]\nid = \"a\"\nnodes = {}\n[[routes]]\nuri = \"/public/*\"\nupstream_id = \"p\"\n[[routes]]\nuri = \"/admin/*\"\nupstream_id = \"a\"\nvars = [[\"http_x_admin\", \"==\", \"yes\"]]\n",
        nodes_map(&[(&public.addr(), 1)]),
        nodes_map(&[(&admin.addr(), 1)])
    ));
    // A dot-segment cannot smuggle a request for /admin/ through the /public/* route.
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public%2F..%2Fadmin/x",
    ] {
        let r = gw.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // Plain paths and harmless forms still route; the target is forwarded as sent.
    assert_eq!(gw.get("/public//a/./b").text(), "public /public//a/./b");
    let r = gw
        .client()
        .request("GET", "/public/../admin/x", &[("X-Admin", "yes")], b"");
    assert_eq!(r.text(), "admin /public/../admin/x");
    // Paths that cannot be normalized are refused.
    for path in ["/..", "/public/%zz", "/public/%00"] {
        assert_eq!(gw.get(path).status, 400, "{path}");
    }
}

#[test]
fn targets_with_characters_rfc3986_forbids_are_refused() {
    // Only /public/* is routed; the backend would serve anything it is sent.
    let be = Backend::start(|s| Reply::ok(&format!("served {}", s.target)));
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"p\"\nnodes = {}\n[[routes]]\nuri = \"/public/*\"\nupstream_id = \"p\"\n",
        nodes_map(&[(&be.addr(), 1)])
    ));
    assert_eq!(gw.get("/admin").status, 404);
    // A fragment that dot-segments into /public/ (backends cut at '#' and serve /admin), a
    // backslash (WHATWG parsers read it as '/'), raw non-ASCII, quotes and the like.
    for target in [
        &b"/admin#/../public/x"[..],
        b"/public/..\\admin",
        b"/napi/..\\admin",
        b"/public/caf\xc3\xa9",
        b"/public/a\"b",
        b"/public/<x>",
        b"/public/x?q=#frag",
        b"/public/x?q=a\\b",
    ] {
        let mut c = gw.client();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send_raw(&req);
        let r = c.read_response(false).unwrap();
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(target),
            r.text()
        );
        assert!(
            c.is_closed(),
            "the connection closes after a refused target"
        );
    }
    assert_eq!(be.requests(), 0, "nothing reached the backend");
    // What browsers send unencoded in a query still passes, as does every RFC 3986 path
    // character, and percent-encoded UTF-8.
    for target in [
        "/public/x?a[]=1&b={c}|d^e`",
        "/public/a-b_c.d~e!$&'()*+,;=:@",
        "/public/caf%C3%A9",
    ] {
        let r = gw.get(target);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert_eq!(r.text(), format!("served {target}"));
    }
}

#[test]
fn remote_addrs_limit_a_route_to_client_networks() {
    let lan = Backend::named("lan");
    let other = Backend::named("other");
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
id = "lan"
nodes = {}
[[upstreams]]
id = "other"
nodes = {}
[[routes]]
id = "loopback-only"
uri = "/a"
remote_addrs = ["10.0.0.0/8", "127.0.0.0/8"]
upstream_id = "lan"
[[routes]]
id = "elsewhere-only"
uri = "/b"
remote_addr = "192.168.0.0/16"
upstream_id = "other"
[[routes]]
id = "v6-only"
uri = "/c"
remote_addrs = ["::1"]
upstream_id = "other"
"#,
        nodes_map(&[(&lan.addr(), 1)]),
        nodes_map(&[(&other.addr(), 1)])
    ));
    assert_eq!(gw.get("/a").text(), "lan");
    let r = gw.get("/b");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error_msg"], "404 Route Not Found");
    assert_eq!(gw.get("/c").status, 404);
    // Invalid entries are refused with the field named.
    for (entry, field) in [
        (
            "remote_addrs = [\"10.0.0.0/33\"]",
            "routes[0].remote_addrs[0]",
        ),
        ("remote_addr = \"not-an-ip\"", "routes[0].remote_addr"),
        ("remote_addrs = []", "routes[0].remote_addrs"),
    ] {
        let (ok, err) = check_config(&format!(
            "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n[[routes]]\nuri = \"/\"\nupstream_id = \"u\"\n{entry}\n"
        ));
        assert!(!ok, "{entry} must be refused");
        assert!(err.contains(field), "{entry}: {err} should name {field}");
    }
}
