//! The Admin API through real sockets: APISIX v3 paths, bodies and codes, access checks,
//! validation, read-your-writes, the store surviving a kill, and the file provider's
//! read-only API.

use crate::harness::*;
use std::net::SocketAddr;

const KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
const VIEWER: &str = "4054f7cf07e344346cd3f287985e76a2";

struct Admin {
    addr: SocketAddr,
}

impl Admin {
    fn call(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> Response {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(k) = key {
            headers.push(("X-API-KEY", k));
        }
        Client::connect(self.addr).request(method, path, &headers, body.as_bytes())
    }

    fn send(&self, method: &str, path: &str, body: &str) -> Response {
        self.call(method, path, Some(KEY), body)
    }
}

/// A gateway with the store provider in `data_dir` and the Admin API on a free port.
fn gateway(data_dir: &std::path::Path, body: &str) -> (Gateway, Admin) {
    let port = free_port();
    let gw = Gateway::start(&format!(
        "{body}\n[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\nadmin_key = \"{KEY}\"\nviewer_key = \"{VIEWER}\"\n",
        data_dir.display()
    ));
    let admin = Admin::ready(port);
    (gw, admin)
}

impl Admin {
    /// The Admin API on `port`, once it accepts (it starts right after the workers).
    fn ready(port: u16) -> Admin {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the Admin API did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Admin { addr }
    }
}

#[test]
fn routes_and_upstreams_change_live_with_apisix_shapes() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let dir = temp_dir("store");
    let (gw, admin) = gateway(&dir, "");
    assert_eq!(gw.get("/get").status, 404);

    // APISIX's quickstart: a route with an inline upstream, served at once.
    let r = admin.send(
        "PUT",
        "/apisix/admin/routes/1",
        &format!(
            r#"{{"uri":"/get","upstream":{{"nodes":{{"{}":1}}}}}}"#,
            a.addr()
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("X-API-VERSION"), Some("v3"));
    let v = r.json();
    assert_eq!(v["key"], "/apisix/routes/1");
    assert_eq!(v["value"]["id"], "1");
    let created = v["value"]["create_time"].as_i64().unwrap();
    assert_eq!(gw.get("/get").text(), "a", "served right after the 201");

    // PUT again: 200, create_time kept.
    let r = admin.send(
        "PUT",
        "/apisix/admin/routes/1",
        &format!(
            r#"{{"uri":"/get","name":"r1","upstream":{{"nodes":{{"{}":1}}}}}}"#,
            a.addr()
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"]["create_time"].as_i64(), Some(created));

    // POST an upstream: a generated 20-digit id.
    let r = admin.send(
        "POST",
        "/apisix/admin/upstreams",
        &format!(r#"{{"type":"roundrobin","nodes":{{"{}":1}}}}"#, b.addr()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(up.len(), 20);

    // PATCH the route onto it (merge patch: `null` removes the inline upstream).
    let r = admin.send(
        "PATCH",
        "/apisix/admin/routes/1",
        &format!(r#"{{"upstream":null,"upstream_id":"{up}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/get").text(), "b");

    // GET one and the list.
    let r = admin.send("GET", "/apisix/admin/routes/1", "");
    assert_eq!(r.json()["value"]["name"], "r1");
    assert!(r.json()["modifiedIndex"].as_u64() > r.json()["createdIndex"].as_u64());
    let r = admin.send("GET", "/apisix/admin/upstreams", "");
    assert_eq!(r.json()["total"], 1);
    assert_eq!(
        r.json()["list"][0]["key"],
        format!("/apisix/upstreams/{up}")
    );
    let r = admin.send("GET", "/apisix/admin/routes/9", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "Key not found");

    // Sub-path PATCH: the nodes of the upstream.
    let r = admin.send(
        "PATCH",
        &format!("/apisix/admin/upstreams/{up}/nodes"),
        &format!(r#"{{"{}":1}}"#, a.addr()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/get").text(), "a");

    // An upstream in use is not deleted, unless forced; the route is.
    let r = admin.send("DELETE", &format!("/apisix/admin/upstreams/{up}"), "");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this upstream, route [1] is still using it now"
    );
    let r = admin.send("DELETE", "/apisix/admin/routes/1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], "1");
    assert_eq!(r.json()["key"], "/apisix/routes/1");
    assert_eq!(gw.get("/get").status, 404, "gone right after the 200");
    assert!(gw
        .events()
        .contains("admin: DELETE /apisix/routes/1 by admin from 127.0.0.1"));
}

#[test]
fn lists_filter_and_page() {
    let dir = temp_dir("store");
    let (_gw, admin) = gateway(&dir, "");
    for i in 0..25 {
        let labels = if i % 5 == 0 {
            r#","labels":{"team":"edge"}"#
        } else {
            ""
        };
        let r = admin.send(
            "PUT",
            &format!("/apisix/admin/routes/{i}"),
            &format!(r#"{{"uri":"/p{i}","name":"route-{i}","upstream":{{"nodes":{{"127.0.0.1:1":1}}}}{labels}}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let get = |q: &str| admin.send("GET", &format!("/apisix/admin/routes{q}"), "");
    let r = get("?page=3&page_size=10").json();
    assert_eq!(r["total"], 25);
    assert_eq!(r["list"].as_array().unwrap().len(), 5);
    assert_eq!(r["list"][0]["value"]["id"], "20", "paged in creation order");
    assert_eq!(
        get("?name=route-1").json()["total"],
        11,
        "route-1 and route-10..19"
    );
    assert_eq!(get("?uri=%5E/p2").json()["total"], 6, "/p2 and /p20..24");
    assert_eq!(get("?label=team:edge").json()["total"], 5);
    assert_eq!(get("?label=team").json()["total"], 5);
    let r = get("?page_size=5");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "page_size must be between 10 and 500"
    );
}

#[test]
fn consumers_and_their_credentials() {
    let dir = temp_dir("store");
    let (_gw, admin) = gateway(&dir, "");
    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers",
        r#"{"username":"jack","desc":"a user"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/jack");
    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers/jack",
        r#"{"username":"jack","labels":{"team":"a"}}"#,
    );
    assert_eq!(r.status, 200);
    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers/jack",
        r#"{"username":"jill"}"#,
    );
    assert_eq!(r.json()["error_msg"], "wrong username");
    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers",
        r#"{"username":"bad name"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("username"), "{}", r.text());
    let r = admin.send("POST", "/apisix/admin/consumers", r#"{"username":"x"}"#);
    assert_eq!(r.status, 405);
    assert_eq!(
        r.json()["error_msg"],
        "not supported `POST` method for consumer"
    );

    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers/jack/credentials/c1",
        r#"{"desc":"first"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/jack/credentials/c1");
    let r = admin.send("GET", "/apisix/admin/consumers/jack/credentials", "");
    assert_eq!(r.json()["total"], 1);
    // No authentication plugin exists yet (issue #12): a credential can only carry one.
    let r = admin.send(
        "PUT",
        "/apisix/admin/consumers/jack/credentials/c2",
        r#"{"plugins":{"proxy-rewrite":{"uri":"/x"}}}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("only supports auth type plugins"),
        "{}",
        r.text()
    );
    let r = admin.send("PUT", "/apisix/admin/consumers/nobody/credentials/c1", "{}");
    assert_eq!(r.status, 404);
    // Deleting the consumer deletes its credentials.
    let r = admin.send("DELETE", "/apisix/admin/consumers/jack", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["key"], "/apisix/consumers/jack");
    assert_eq!(
        admin.send("GET", "/apisix/admin/consumers", "").json()["total"],
        0
    );
    let r = admin.send("PUT", "/apisix/admin/consumers", r#"{"username":"jack"}"#);
    assert_eq!(r.status, 201);
    let r = admin.send("GET", "/apisix/admin/consumers/jack/credentials", "");
    assert_eq!(r.json()["total"], 0);
}

#[test]
fn access_is_checked_as_apisix_does() {
    let dir = temp_dir("store");
    let (_gw, admin) = gateway(&dir, "");
    let r = admin.call("GET", "/apisix/admin/routes", None, "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["description"], "missing apikey");
    let r = admin.call("GET", "/apisix/admin/routes", Some("nope"), "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["description"], "wrong apikey");
    let r = admin.call("GET", "/apisix/admin/routes", Some(VIEWER), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total"], 0);
    let r = admin.call(
        "PUT",
        "/apisix/admin/routes/1",
        Some(VIEWER),
        r#"{"uri":"/x","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["description"], "invalid method for role viewer");
    // The key as a query argument works too.
    let r = Client::connect(admin.addr).get(&format!("/apisix/admin/routes?api_key={KEY}"));
    assert_eq!(r.status, 200);
}

#[test]
fn bad_requests_change_nothing() {
    let a = Backend::named("a");
    let dir = temp_dir("store");
    let (gw, admin) = gateway(&dir, "");
    let route = format!(
        r#"{{"uri":"/x","upstream":{{"nodes":{{"{}":1}}}}}}"#,
        a.addr()
    );
    assert_eq!(
        admin.send("PUT", "/apisix/admin/routes/1", &route).status,
        201
    );
    let cases = [
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/y","upstream":{"nodes":{"127.0.0.1:1":-1}}}"#,
            400,
            "invalid configuration",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/y","upstream_id":"missing"}"#,
            400,
            "upstream \"missing\" does not exist",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/y","bogus":1,"upstream_id":"x"}"#,
            400,
            "bogus",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            "{not json",
            400,
            "invalid request body",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            "",
            400,
            "missing configurations",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"id":"3","uri":"/y"}"#,
            400,
            "wrong route id",
        ),
        (
            "PUT",
            "/apisix/admin/routes",
            r#"{"uri":"/y"}"#,
            400,
            "missing route id",
        ),
        (
            "POST",
            "/apisix/admin/routes",
            r#"{"id":"3","uri":"/y"}"#,
            400,
            "wrong route id, do not need it",
        ),
        (
            "PUT",
            "/apisix/admin/routes/bad$id",
            r#"{"uri":"/y"}"#,
            400,
            "property \"id\" validation failed",
        ),
        (
            "GET",
            "/apisix/admin/widgets",
            "",
            404,
            "Unsupported resource type: widgets",
        ),
        (
            "PATCH",
            "/apisix/admin/routes/9",
            r#"{"uri":"/z"}"#,
            404,
            "Key not found",
        ),
        (
            "PUT",
            "/apisix/admin/routes/2",
            r#"{"uri":"/y","plugins":{"proxy-rewrite":{"uri":"nope"}}}"#,
            400,
            "failed to check the configuration of plugin proxy-rewrite",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let r = admin.send(method, path, body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
        let v = r.json();
        let msg = v["error_msg"]
            .as_str()
            .or(v["message"].as_str())
            .unwrap_or("");
        assert!(msg.contains(want), "{method} {path} {body}: {msg}");
    }
    // APISIX's schema messages.
    for (body, want) in [
        (r#"{"uri":"/y","bogus":1,"upstream_id":"up"}"#, "invalid configuration: additional properties forbidden, found bogus"),
        (r#"{"uri":"/y","methods":["GET","FETCH"],"upstream_id":"up"}"#, "invalid configuration: property \"methods\" validation failed: failed to validate item 2: matches none of the enum values"),
        (r#"{"uri":"/y","upstream":{"nodes":{"127.0.0.1:1":1},"retries":-1}}"#, "invalid configuration: property \"upstream\" validation failed: property \"retries\" validation failed: expected -1 to be at least 0"),
        (r#"{"uri":"/y","timeout":{"connect":0,"send":1,"read":1},"upstream_id":"up"}"#, "invalid configuration: property \"timeout\" validation failed: property \"connect\" validation failed: expected 0 to be greater than 0"),
        (r#"{"uri":"/y","status":2,"upstream_id":"up"}"#, "invalid configuration: property \"status\" validation failed: matches none of the enum values"),
    ] {
        let r = admin.send("PUT", "/apisix/admin/routes/3", body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error_msg"], want, "{body}");
    }
    let r = admin.send("PATCH", "/apisix/admin/routes/1", r#"{"priority":"high"}"#);
    assert_eq!(r.json()["error_msg"], "invalid configuration: property \"priority\" validation failed: wrong type: expected integer, got string");
    // A body over the limit is refused from its Content-Length, before it is read.
    let mut c = Client::connect(admin.addr);
    c.send_raw(format!("PUT /apisix/admin/routes/2 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nContent-Length: 1600000\r\n\r\n").as_bytes());
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("greater than the maximum size"),
        "{}",
        r.text()
    );
    // Nothing changed.
    let r = admin.send("GET", "/apisix/admin/routes", "");
    assert_eq!(r.json()["total"], 1);
    assert_eq!(gw.get("/x").text(), "a");
    let r = admin.send("GET", "/apisix/admin/plugins/list", "");
    assert!(r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "proxy-rewrite"));
    let r = admin.send("GET", "/apisix/admin/plugins/redirect", "");
    assert_eq!(r.json()["properties"]["ret_code"]["default"], 302);
    let r = admin.send("GET", "/apisix/admin/schema/plugins/cors", "");
    assert_eq!(r.json()["properties"]["max_age"]["default"], 5);
    let r = admin.send("GET", "/apisix/admin/schema/route", "");
    assert_eq!(r.json()["properties"]["status"]["default"], 1);
    assert_eq!(
        admin.send("GET", "/apisix/admin/schema/widget", "").status,
        404
    );
}

#[test]
fn the_store_survives_a_kill_and_imports_the_file_once() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let dir = temp_dir("store");
    // A global rule without an id is imported as APISIX's standalone mode names it (`arr_1`).
    let file_route = format!(
        "[[routes]]\nid = \"from-file\"\nuri = \"/file\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n[[global_rules]]\nplugins.response-rewrite = {{ headers = {{ set = {{ \"X-Global\" = \"on\" }} }} }}\n",
        a.addr()
    );
    {
        let (gw, admin) = gateway(&dir, &file_route);
        let r = gw.get("/file");
        assert_eq!(r.text(), "a", "imported on first start");
        assert_eq!(r.header("x-global"), Some("on"));
        assert!(gw.events().contains("imported the resources"));
        let rules = admin.send("GET", "/apisix/admin/global_rules/arr_1", "");
        assert_eq!(rules.status, 200, "{}", rules.text());
        for i in 0..20 {
            let r = admin.send(
                "PUT",
                &format!("/apisix/admin/routes/r{i}"),
                &format!(
                    r#"{{"uri":"/r{i}","upstream":{{"nodes":{{"{}":1}}}}}}"#,
                    b.addr()
                ),
            );
            assert_eq!(r.status, 201);
        }
        // Dropping the gateway kills it (SIGKILL) right after the last acknowledged write.
    }
    // Restarted on a config with no routes: the store's routes are served, the file's routes
    // are not imported again.
    let (gw, admin) = gateway(&dir, "");
    assert_eq!(gw.get("/file").text(), "a");
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/r{i}")).text(), "b", "route r{i}");
    }
    assert_eq!(
        admin.send("GET", "/apisix/admin/routes", "").json()["total"],
        21
    );
}

#[test]
fn the_file_provider_answers_reads_and_refuses_writes() {
    let a = Backend::named("a");
    let port = free_port();
    let gw = Gateway::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{port}\"\nadmin_key = \"{KEY}\"\n",
        upstream_config(&nodes_map(&[(&a.addr(), 1)]), "")
    ));
    let admin = Admin::ready(port);
    let r = admin.send("GET", "/apisix/admin/upstreams/u", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["id"], "u");
    let r = admin.send("DELETE", "/apisix/admin/upstreams/u", "");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("config_provider"), "{}", r.text());
    assert_eq!(gw.get("/x").text(), "a");
}

#[test]
fn an_admin_listener_beyond_loopback_needs_a_key() {
    let (ok, err) = check_config("[admin]\nlisten = \"127.0.0.1:1\"\n");
    // `check` validates the file; starting is what refuses a listener without a key.
    assert!(ok, "{err}");
    let dir = temp_dir("nokey");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_listen = \"off\"\nworkers = 1\n[deployment]\ndata_dir = \"{}\"\n[admin]\nlisten = \"0.0.0.0:{}\"\n[plugin_attr.prometheus]\nenable_export_server = false\n",
            free_port(),
            dir.join("data").display(),
            free_port()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["run", "-c", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("admin.admin_key"), "{stderr}");
}

#[test]
fn export_and_import_move_resources() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let dir = temp_dir("store");
    {
        let (_gw, admin) = gateway(&dir, "");
        let r = admin.send(
            "PUT",
            "/apisix/admin/upstreams/up",
            &format!(r#"{{"nodes":{{"{}":1}}}}"#, a.addr()),
        );
        assert_eq!(r.status, 201);
        let r = admin.send(
            "PUT",
            "/apisix/admin/routes/1",
            r#"{"uri":"/one","upstream_id":"up"}"#,
        );
        assert_eq!(r.status, 201);
        assert_eq!(
            admin
                .send("PUT", "/apisix/admin/consumers", r#"{"username":"jack"}"#)
                .status,
            201
        );
        assert_eq!(
            admin
                .send(
                    "PUT",
                    "/apisix/admin/consumers/jack/credentials/c1",
                    r#"{"desc":"d"}"#
                )
                .status,
            201
        );
    }
    // The gateway is stopped: export what its store holds.
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let c = config.to_str().unwrap();
    let (ok, json, err) = run(&["export", "-c", c]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["routes"][0]["uri"], "/one");
    assert_eq!(v["credentials"][0]["consumer"], "jack");
    let (ok, toml_text, err) = run(&["export", "-c", c, "--toml"]);
    assert!(ok, "{err}");
    assert!(toml_text.contains("[[routes]]"), "{toml_text}");
    let (ok, yaml_text, err) = run(&["export", "-c", c, "--yaml"]);
    assert!(ok, "{err}");
    assert!(yaml_text.trim_end().ends_with("#END"), "{yaml_text}");
    // apisix.yaml in, the same resources again: accepted.
    let yaml = dir.with_extension("apisix.yaml");
    std::fs::write(&yaml, &yaml_text).unwrap();
    let (ok, out, err) = run(&["import", yaml.to_str().unwrap(), "-c", c]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 4 objects"), "{out}");

    // Import a changed set (TOML, as exported), then the gateway serves it.
    let changed = dir.with_extension("import.toml");
    std::fs::write(
        &changed,
        toml_text
            .replace(&a.addr(), &b.addr())
            .replace("/one", "/two"),
    )
    .unwrap();
    let (ok, out, err) = run(&["import", changed.to_str().unwrap(), "-c", c]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 4 objects"), "{out}");
    // A set that does not compile is refused and the store is left as it was.
    let broken = dir.with_extension("broken.json");
    std::fs::write(
        &broken,
        r#"{"routes":[{"id":"x","uri":"/x","upstream_id":"nope"}]}"#,
    )
    .unwrap();
    let (ok, _, err) = run(&["import", broken.to_str().unwrap(), "-c", c]);
    assert!(!ok);
    assert!(err.contains("upstream \"nope\" does not exist"), "{err}");

    let (gw, _admin) = gateway(&dir, "");
    assert_eq!(gw.get("/two").text(), "b");
    assert_eq!(gw.get("/one").status, 404);
}

#[test]
fn malformed_admin_requests_get_a_4xx_and_change_nothing() {
    let dir = temp_dir("store");
    let (gw, admin) = gateway(&dir, "");
    let mut c = Client::connect(admin.addr);
    c.send_raw(b"PUT /apisix/admin/routes/1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 400);
    let mut c = Client::connect(admin.addr);
    c.send_raw(
        format!(
            "GET /apisix/admin/routes HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response(false).unwrap().status, 431);
    let mut c = Client::connect(admin.addr);
    c.send_raw(format!("PUT /apisix/admin/routes/1 HTTP/1.1\r\nX-API-KEY: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 411);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let r = admin.send(
        "PUT",
        "/apisix/admin/routes/1",
        &format!(r#"{{"uri":"/x","vars":{deep}}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        admin.send("GET", "/apisix/admin/routes", "").json()["total"],
        0
    );
    assert_eq!(gw.get("/x").status, 404, "the gateway serves on");
}

#[test]
fn config_toml_is_checked_with_the_admin_api_schemas() {
    let a = Backend::named("a");
    // Accepted by the compiler, refused by APISIX's route schema (name: at most 256).
    let long = "n".repeat(300);
    let bad = format!(
        "[[routes]]\nid = \"r\"\nname = \"{long}\"\nuri = \"/*\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        a.addr()
    );
    let (ok, err) = check_config(&bad);
    assert!(!ok, "check refuses it");
    assert!(
        err.contains("routes[0] (id \"r\")") && err.contains("name"),
        "names the object and field: {err}"
    );
    // A labels value APISIX refuses (no spaces), on an upstream.
    let (ok, err) = check_config(&format!(
        "[[upstreams]]\nid = \"u\"\nlabels = {{ env = \"a b\" }}\nnodes = {{ \"{}\" = 1 }}\n",
        a.addr()
    ));
    assert!(
        !ok && err.contains("upstreams[0]") && err.contains("labels"),
        "{err}"
    );

    // A reload with the file provider refuses it too; the old config keeps serving.
    let good = format!(
        "[[routes]]\nid = \"r\"\nuri = \"/*\"\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        a.addr()
    );
    let gw = Gateway::start(&good);
    gw.write_config(&bad);
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("reload refused")),
        "{}",
        gw.events()
    );
    assert_eq!(gw.get("/x").text(), "a");

    // The store imports a file only once it passes: a refused first start leaves no store,
    // and the fixed file is imported at the next start.
    let dir = temp_dir("schema-import");
    let config = dir.join("config.toml");
    let text = |body: &str| {
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_listen = \"off\"\nworkers = 1\n[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n{body}",
            free_port(),
            dir.join("data").display()
        )
    };
    std::fs::write(&config, text(&bad)).unwrap();
    let (ok, _, err) = cli(&["run", "-c", config.to_str().unwrap()]);
    assert!(!ok && err.contains("name"), "{err}");
    assert!(
        !dir.join("data/resources.json").exists(),
        "nothing imported"
    );
    std::fs::write(&config, text(&good)).unwrap();
    let (ok, _, err) = cli(&["export", "-c", config.to_str().unwrap()]);
    assert!(!ok && err.contains("the store is empty"), "{err}");
}

#[test]
fn plugin_metadata_is_kept_by_plugin_name() {
    let dir = temp_dir("metadata");
    let (gw, admin) = gateway(&dir, "");
    let path = "/apisix/admin/plugin_metadata/request-id";
    let r = admin.send(
        "PUT",
        path,
        r#"{"note":"shared by every request-id instance"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/plugin_metadata/request-id");
    assert_eq!(r.json()["value"]["id"], "request-id");
    assert_eq!(admin.send("PUT", path, r#"{"note":"again"}"#).status, 200);
    let got = admin.send("GET", path, "").json();
    assert_eq!(got["value"]["note"], "again");
    assert_eq!(
        admin
            .send("GET", "/apisix/admin/plugin_metadata", "")
            .json()["total"],
        1
    );
    // APISIX's refusals.
    let r = admin.send("PUT", "/apisix/admin/plugin_metadata/no-such-plugin", "{}");
    assert_eq!(
        (r.status, r.json()["error_msg"].clone()),
        (400, "invalid plugin name".into())
    );
    let r = admin.send("PUT", "/apisix/admin/plugin_metadata", "{}");
    assert_eq!(
        (r.status, r.json()["error_msg"].clone()),
        (400, "missing plugin name".into())
    );
    let r = admin.send("POST", "/apisix/admin/plugin_metadata", "{}");
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r
        .text()
        .contains("not supported `POST` method for plugin_metadata"));
    let r = admin.send("PATCH", path, "{}");
    assert_eq!(r.status, 405);
    let r = admin.send("PUT", path, "[1]");
    assert_eq!(r.status, 400, "{}", r.text());
    // Kept across a restart (the store), deleted like any object.
    drop(gw);
    let (_gw, admin) = gateway(&dir, "");
    assert_eq!(admin.send("GET", path, "").json()["value"]["note"], "again");
    assert_eq!(admin.send("DELETE", path, "").status, 200);
    assert_eq!(admin.send("GET", path, "").status, 404);
    // config.toml takes [[plugin_metadata]] too, and refuses an unknown plugin's.
    let (ok, err) = check_config("[[plugin_metadata]]\nid = \"cors\"\nx = 1\n");
    assert!(ok, "{err}");
    let (ok, err) = check_config("[[plugin_metadata]]\nid = \"nope\"\n");
    assert!(!ok && err.contains("invalid plugin name"), "{err}");
}

#[test]
fn ssls_are_checked_and_their_keys_stored_encrypted_as_apisix_does() {
    let dir = temp_dir("ssls");
    certificates(&dir);
    let cert = std::fs::read_to_string(dir.join("server.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("server.key")).unwrap();
    // The second CA's key: a valid key that is not this certificate's.
    let other_key = std::fs::read_to_string(dir.join("other.key")).unwrap();
    let expired = (
        std::fs::read_to_string(dir.join("expired.pem")).unwrap(),
        std::fs::read_to_string(dir.join("expired.key")).unwrap(),
    );
    let (_gw, admin) = gateway(&dir.join("store"), "");
    let body = |v: serde_json::Value| v.to_string();
    let r = admin.send(
        "PUT",
        "/apisix/admin/ssls/1",
        &body(serde_json::json!({"cert": cert, "key": key, "snis": ["test.com"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // The key at rest is APISIX's encryption of it, with APISIX's default keyring.
    let stored = r.json()["value"]["key"].as_str().unwrap().to_string();
    assert!(!stored.starts_with("---"), "{stored}");
    assert_eq!(apisix_encrypt(&stored, true).trim(), key.trim());
    let got = admin.send("GET", "/apisix/admin/ssls/1", "").json();
    assert_eq!(got["value"]["snis"][0], "test.com");
    assert_eq!(got["value"]["key"], stored.as_str());
    // A PATCH keeps the encrypted key valid; a key APISIX encrypted is taken.
    let r = admin.send(
        "PATCH",
        "/apisix/admin/ssls/1",
        r#"{"snis":["a.test.com"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin.send(
        "PUT",
        "/apisix/admin/ssls/2",
        &body(serde_json::json!({"cert": cert, "key": apisix_encrypt(&key, false), "sni": "b.test.com"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // APISIX's refusals.
    let bad_cert = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        "!".repeat(200)
    );
    let cases = [
        (
            serde_json::json!({"cert": cert, "key": key}),
            "invalid configuration",
        ),
        (
            serde_json::json!({"cert": bad_cert, "key": key, "sni": "x.com"}),
            "failed to parse cert",
        ),
        (
            serde_json::json!({"cert": cert, "key": "k".repeat(80), "sni": "x.com"}),
            "failed to decrypt previous encrypted key",
        ),
        (
            serde_json::json!({"cert": cert, "key": key, "sni": "x.com", "certs": [cert], "keys": []}),
            "mismatched number of certs and keys",
        ),
        (
            serde_json::json!({"cert": cert, "key": key, "sni": "x.com", "bogus": 1}),
            "additional properties",
        ),
        (
            serde_json::json!({"cert": cert, "key": other_key, "sni": "x.com"}),
            "the private key does not match the certificate",
        ),
        (
            serde_json::json!({"cert": expired.0, "key": expired.1, "sni": "x.com"}),
            "the certificate expired (2020-01-02 00:00:00 UTC)",
        ),
    ];
    for (v, want) in cases {
        let r = admin.send("PUT", "/apisix/admin/ssls/bad", &body(v));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(want), "{want}: {}", r.text());
    }
    assert_eq!(admin.send("GET", "/apisix/admin/ssls/bad", "").status, 404);
    // A client certificate needs no sni.
    let r = admin.send(
        "PUT",
        "/apisix/admin/ssls/c",
        &body(serde_json::json!({"type": "client", "cert": cert, "key": key})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        admin.send("GET", "/apisix/admin/ssls", "").json()["total"],
        3
    );
    assert_eq!(admin.send("DELETE", "/apisix/admin/ssls/c", "").status, 200);
    // config.toml's [[ssls]] get the same checks.
    let file = |c: &str| {
        format!("[[ssls]]\nid = \"f\"\nsni = \"f.test\"\ncert = '''{c}'''\nkey = '''{key}'''\n")
    };
    let (ok, err) = check_config(&file(&cert));
    assert!(ok, "{err}");
    let (ok, err) = check_config(&file(&bad_cert));
    assert!(!ok && err.contains("failed to parse cert"), "{err}");
    let mismatched = file(&cert).replace(key.trim(), other_key.trim());
    let (ok, err) = check_config(&mismatched);
    assert!(
        !ok && err.contains("ssls[0] (id \"f\")") && err.contains("does not match"),
        "{err}"
    );
}
