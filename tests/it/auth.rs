//! Consumers and authentication through real sockets (issue #12, first slice: key-auth).

use crate::harness::*;
use std::net::SocketAddr;

/// A request (path, headers) and what the upstream should see.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// A backend answering with what identifies the consumer, as the upstream saw it.
fn echo_identity() -> Backend {
    Backend::start(|s| {
        Reply::ok(&format!(
            "user={} cred={} custom={} apikey={} target={}",
            s.header("x-consumer-username").unwrap_or("-"),
            s.header("x-credential-identifier").unwrap_or("-"),
            s.header("x-consumer-custom-id").unwrap_or("-"),
            s.header("apikey").unwrap_or("-"),
            s.target
        ))
    })
}

fn routes(be: &Backend) -> String {
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    format!(
        "[[routes]]\nuri = \"/a\"\nplugins.key-auth = {{}}\n{up}\n\
         [[routes]]\nuri = \"/hidden\"\nplugins.key-auth = {{ hide_credentials = true }}\n{up}\n\
         [[routes]]\nuri = \"/q\"\nplugins.key-auth = {{ header = \"X-Key\", query = \"k\", hide_credentials = true }}\n{up}\n\
         [[routes]]\nuri = \"/open\"\n{up}\n"
    )
}

#[test]
fn key_auth_identifies_consumers_and_refuses_the_rest_as_apisix_does() {
    let be = echo_identity();
    // A key from the environment ($env://), never written in the file.
    std::env::set_var("SG_TEST_KEY_AUTH_JILL", "jill-secret");
    let body = format!(
        "{}
[[consumers]]
username = \"jack\"
labels = {{ custom_id = \"c-77\" }}
plugins.key-auth = {{ key = \"jack-key\" }}
[[consumers]]
username = \"jill\"
[[credentials]]
id = \"laptop\"
consumer = \"jill\"
plugins.key-auth = {{ key = \"$env://SG_TEST_KEY_AUTH_JILL\" }}
",
        routes(&be)
    );
    let gw = Gateway::start(&body);
    let get = |path: &str, headers: &[(&str, &str)]| gw.client().request("GET", path, headers, b"");
    let seen = |path: &str, headers: &[(&str, &str)]| get(path, headers).text();

    // No key, a wrong key: 401 with APISIX's messages and challenge.
    let r = get("/a", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Missing API key in request");
    assert_eq!(r.header("www-authenticate"), Some("apikey realm=\"key\""));
    let r = get("/a", &[("apikey", "nope")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Invalid API key in request");
    // A key one character short of a real one gets the same answer.
    let r = get("/a", &[("apikey", "jack-ke")]);
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (401, Some("Invalid API key in request"))
    );

    // The consumer's own key: identified; what the client claimed is replaced.
    let r = get(
        "/a",
        &[
            ("apikey", "jack-key"),
            ("X-Consumer-Username", "admin"),
            ("X-Credential-Identifier", "x"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "user=jack cred=- custom=c-77 apikey=jack-key target=/a"
    );
    // A credential's key (from the environment), by query argument; hide_credentials keeps
    // the header or the query argument from the upstream; a route without key-auth passes
    // the client's headers as they are.
    let cases: [Case; 5] = [
        (
            "/a?apikey=jill-secret&x=1",
            &[],
            "user=jill cred=laptop custom=- apikey=- target=/a?apikey=jill-secret&x=1",
        ),
        (
            "/hidden",
            &[("apikey", "jack-key")],
            "user=jack cred=- custom=c-77 apikey=- target=/hidden",
        ),
        (
            "/q?a=1&k=jack-key&b=2",
            &[],
            "user=jack cred=- custom=c-77 apikey=- target=/q?a=1&b=2",
        ),
        (
            "/q",
            &[("X-Key", "jill-secret")],
            "user=jill cred=laptop custom=- apikey=- target=/q",
        ),
        (
            "/open",
            &[("X-Consumer-Username", "anyone")],
            "user=anyone cred=- custom=- apikey=- target=/open",
        ),
    ];
    for (path, headers, want) in cases {
        assert_eq!(seen(path, headers), want, "{path}");
    }
    // The secret from the environment is never logged.
    assert!(!gw.events().contains("jill-secret"));
}

#[test]
fn key_auth_credentials_are_checked_and_change_live_through_the_admin_api() {
    let be = echo_identity();
    let dir = temp_dir("auth-admin");
    let port = free_port();
    let gw = Gateway::start(&format!(
        "{}\n[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\nadmin_key = \"auth-test\"\n",
        routes(&be),
        dir.display()
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let admin = |method: &str, path: &str, body: serde_json::Value| {
        Client::connect(addr).request(
            method,
            path,
            &[
                ("X-API-KEY", "auth-test"),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    };
    let get = |key: &str| gw.client().request("GET", "/a", &[("apikey", key)], b"");
    assert_eq!(get("k1").status, 401);
    let put = |path: &str, body: serde_json::Value| {
        let r = admin("PUT", path, body);
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    };
    put(
        "/apisix/admin/consumers",
        serde_json::json!({"username": "ann", "plugins": {"key-auth": {"key": "k1"}}}),
    );
    // The key at rest is APISIX's encryption of it (default keyring), and stays so through a
    // PUT that sends the stored value back (consumers have no PATCH, as in APISIX).
    let stored = admin(
        "GET",
        "/apisix/admin/consumers/ann",
        serde_json::json!(null),
    )
    .json();
    let stored = stored["value"]["plugins"]["key-auth"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(stored, "k1");
    assert_eq!(apisix_encrypt(&stored, true).trim(), "k1");
    put(
        "/apisix/admin/consumers",
        serde_json::json!({"username": "ann", "desc": "x", "plugins": {"key-auth": {"key": stored}}}),
    );
    let again = admin(
        "GET",
        "/apisix/admin/consumers/ann",
        serde_json::json!(null),
    )
    .json();
    assert_eq!(
        again["value"]["plugins"]["key-auth"]["key"],
        stored.as_str()
    );
    assert_eq!(
        get("k1").text(),
        "user=ann cred=- custom=- apikey=k1 target=/a"
    );
    // A credential of ann's.
    put(
        "/apisix/admin/consumers/ann/credentials/phone",
        serde_json::json!({"plugins": {"key-auth": {"key": "k2"}}}),
    );
    assert_eq!(
        get("k2").text(),
        "user=ann cred=phone custom=- apikey=k2 target=/a"
    );
    // Another consumer with a key already taken: refused, naming the owner; nothing changes.
    let r = admin(
        "PUT",
        "/apisix/admin/consumers",
        serde_json::json!({"username": "bob", "plugins": {"key-auth": {"key": "k2"}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // (The message names the other holder of the key and the field where it was met again.)
    assert!(
        r.text().contains("duplicate key found with consumer"),
        "{}",
        r.text()
    );
    assert_eq!(
        get("k2").text(),
        "user=ann cred=phone custom=- apikey=k2 target=/a"
    );
    // A key-auth without its key, a non-auth plugin on a credential: refused.
    let r = admin(
        "PUT",
        "/apisix/admin/consumers",
        serde_json::json!({"username": "carl", "plugins": {"key-auth": {}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key"), "{}", r.text());
    let r = admin(
        "PUT",
        "/apisix/admin/consumers/ann/credentials/bad",
        serde_json::json!({"plugins": {"cors": {}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("only supports auth type plugins"),
        "{}",
        r.text()
    );
    // Deleted: the key stops working at once.
    let r = admin(
        "DELETE",
        "/apisix/admin/consumers/ann/credentials/phone",
        serde_json::json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("k2").status, 401);
    assert_eq!(get("k1").status, 200);
    // A route's key-auth config is checked by its schema.
    let r = admin(
        "PUT",
        "/apisix/admin/routes/x",
        serde_json::json!({"uri": "/x", "plugins": {"key-auth": {"header": ""}},
                           "upstream": {"nodes": {be.addr(): 1}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn basic_auth_checks_user_and_password_and_answers_alike_for_unknown_users() {
    use base64::Engine;
    let be = Backend::start(|s| {
        Reply::ok(&format!(
            "user={} auth={}",
            s.header("x-consumer-username").unwrap_or("-"),
            s.header("authorization").unwrap_or("-"),
        ))
    });
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/b\"\nplugins.basic-auth = {{}}\n{up}\n\
         [[routes]]\nuri = \"/hidden\"\nplugins.basic-auth = {{ hide_credentials = true }}\n{up}\n\
         [[consumers]]\nusername = \"jack\"\nplugins.basic-auth = {{ username = \"jack\", password = \"p:w x\" }}\n"
    ));
    let basic = |pair: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        gw.client().request("GET", path, &headers, b"")
    };
    let refused = |auth: Option<&str>| {
        let r = get("/b", auth);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"basic\""));
        r.json()["message"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(refused(None), "Missing authorization in request");
    assert_eq!(
        refused(Some("Bearer abc")),
        "Invalid authorization in request"
    );
    assert_eq!(
        refused(Some("Basic !!!")),
        "Invalid authorization in request"
    );
    // An unknown user and a known user's wrong password get the same answer.
    assert_eq!(
        refused(Some(&basic("nobody:p:w x"))),
        "Invalid user authorization"
    );
    assert_eq!(
        refused(Some(&basic("jack:p:w"))),
        "Invalid user authorization"
    );
    // The password is everything after the first colon, spaces and colons included.
    let good = basic("jack:p:w x");
    let r = get("/b", Some(&good));
    assert_eq!(r.text(), format!("user=jack auth={good}"));
    let r = get("/hidden", Some(&good.replace("Basic", "basic")));
    assert_eq!(r.text(), "user=jack auth=-");
    // Two credentials for one user name: refused, naming the holder.
    let (ok, err) = check_config(
        "[[consumers]]\nusername = \"a\"\nplugins.basic-auth = { username = \"u\", password = \"1\" }\n\
         [[consumers]]\nusername = \"b\"\nplugins.basic-auth = { username = \"u\", password = \"2\" }\n",
    );
    assert!(
        !ok && err.contains("duplicate username found with consumer: a"),
        "{err}"
    );
    let (ok, err) = check_config(
        "[[consumers]]\nusername = \"a\"\nplugins.basic-auth = { username = \"u\" }\n",
    );
    assert!(
        !ok && err.contains("plugins.basic-auth") && err.contains("password"),
        "{err}"
    );
}

#[test]
fn consumer_restriction_lets_listed_consumers_and_methods_through() {
    let be = Backend::named("ok");
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let route = |uri: &str, restriction: &str, auth: bool| {
        let auth = if auth { "plugins.key-auth = {}\n" } else { "" };
        format!("[[routes]]\nuri = \"{uri}\"\n{auth}plugins.consumer-restriction = {restriction}\n{up}\n")
    };
    let mut body = [
        route("/wl", "{ whitelist = [\"jack\"] }", true),
        route(
            "/bl",
            "{ blacklist = [\"jill\"], rejected_code = 401, rejected_msg = \"go away\" }",
            true,
        ),
        route(
            "/m",
            "{ allowed_by_methods = [{ user = \"jill\", methods = [\"GET\"] }] }",
            true,
        ),
        route("/anon", "{ whitelist = [\"jack\"] }", false),
    ]
    .concat();
    for user in ["jack", "jill", "joe"] {
        body.push_str(&format!(
            "[[consumers]]\nusername = \"{user}\"\nplugins.key-auth = {{ key = \"{user}-key\" }}\n"
        ));
    }
    let gw = Gateway::start(&body);
    let call = |method: &str, path: &str, user: &str| {
        let key = format!("{user}-key");
        gw.client()
            .request(method, path, &[("apikey", &key)], b"")
            .refusal()
    };
    let forbidden = (403, "The consumer_name is forbidden.".to_string());
    assert_eq!(call("GET", "/wl", "jack").0, 200);
    assert_eq!(call("GET", "/wl", "jill"), forbidden);
    assert_eq!(call("GET", "/bl", "jill"), (401, "go away".into()));
    assert_eq!(call("GET", "/bl", "joe").0, 200);
    assert_eq!(call("GET", "/m", "jill").0, 200);
    assert_eq!(call("POST", "/m", "jill"), forbidden);
    assert_eq!(call("POST", "/m", "joe").0, 200);
    // No authentication plugin named anyone.
    let r = gw.client().request("GET", "/anon", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["message"],
        "The request is rejected, please check the consumer_name for this request"
    );
    let (ok, err) = check_config(&route(
        "/x",
        "{ type = \"consumer_label\", whitelist = [\"1\"] }",
        false,
    ));
    assert!(
        !ok && err.contains("consumer-restriction") && err.contains("type"),
        "{err}"
    );
}

#[test]
fn a_consumers_own_plugins_join_the_request_and_win_over_the_routes() {
    let be = Backend::start(|s| {
        Reply::ok(&format!(
            "user={} who={}",
            s.header("x-consumer-username").unwrap_or("-"),
            s.header("x-who").unwrap_or("-")
        ))
    });
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start(&format!(
        r#"[[routes]]
uri = "/m"
plugins.key-auth = {{}}
plugins.proxy-rewrite = {{ headers = {{ set = {{ "X-Who" = "route" }} }} }}
{up}
[[consumers]]
username = "jack"
plugins.key-auth = {{ key = "jack-key" }}
plugins.proxy-rewrite = {{ headers = {{ set = {{ "X-Who" = "jack" }} }} }}
plugins.limit-count = {{ count = 2, time_window = 60, rejected_code = 429 }}
[[consumers]]
username = "jill"
plugins.key-auth = {{ key = "jill-key" }}
"#
    ));
    let call = |key: &str| {
        let r = gw.client().request("GET", "/m", &[("apikey", key)], b"");
        (r.status, r.text())
    };
    // jack's proxy-rewrite replaces the route's, and his limit-count applies to him alone.
    assert_eq!(call("jack-key"), (200, "user=jack who=jack".into()));
    assert_eq!(call("jack-key"), (200, "user=jack who=jack".into()));
    // No rejected_msg: the status's reason phrase, in the status line and the body.
    let r = gw
        .client()
        .request("GET", "/m", &[("apikey", "jack-key")], b"");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error_msg"], "Too Many Requests");
    for _ in 0..3 {
        assert_eq!(call("jill-key"), (200, "user=jill who=route".into()));
    }
}

#[test]
fn a_request_that_fails_authentication_passes_as_the_anonymous_consumer_when_one_is_named() {
    let be = Backend::start(|s| Reply::ok(s.header("x-consumer-username").unwrap_or("-")));
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start(&format!(
        r#"[[routes]]
uri = "/key"
plugins.key-auth = {{ anonymous_consumer = "guest" }}
{up}
[[routes]]
uri = "/basic"
plugins.basic-auth = {{ anonymous_consumer = "guest" }}
{up}
[[routes]]
uri = "/jwt"
plugins.jwt-auth = {{ anonymous_consumer = "guest" }}
{up}
[[routes]]
uri = "/ghost"
plugins.key-auth = {{ anonymous_consumer = "ghost" }}
{up}
[[consumers]]
username = "guest"
plugins.limit-count = {{ count = 3, time_window = 60, key_type = "constant", key = "guests", rejected_code = 429 }}
[[consumers]]
username = "jack"
plugins.key-auth = {{ key = "jack-key" }}
"#
    ));
    let call = |path: &str, headers: &[(&str, &str)]| {
        let r = gw.client().request("GET", path, headers, b"");
        (r.status, r.text())
    };
    // The guest's own limit (3, shared by the three routes) applies to anonymous requests
    // only; a real consumer passes as itself.
    assert_eq!(call("/key", &[]), (200, "guest".into()));
    assert_eq!(call("/key", &[("apikey", "wrong")]), (200, "guest".into()));
    assert_eq!(call("/basic", &[]), (200, "guest".into()));
    assert_eq!(call("/jwt", &[("Authorization", "Bearer nonsense")]).0, 429);
    for _ in 0..5 {
        assert_eq!(
            call("/key", &[("apikey", "jack-key")]),
            (200, "jack".into())
        );
    }
    // Naming a consumer that does not exist refuses, as APISIX does.
    let r = gw.client().request("GET", "/ghost", &[], b"");
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (401, Some("Invalid user authorization"))
    );
}

#[test]
fn consumer_restriction_on_a_consumer_limits_the_routes_and_services_it_may_use() {
    let be = Backend::start(|_| Reply::ok("ok"));
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start(&format!(
        r#"[[services]]
id = "billing"
{up}
[[routes]]
id = "r1"
uri = "/r1"
plugins.key-auth = {{}}
{up}
[[routes]]
id = "r2"
uri = "/r2"
plugins.key-auth = {{}}
{up}
[[routes]]
id = "r3"
uri = "/r3"
service_id = "billing"
plugins.key-auth = {{}}
[[services]]
id = "shop"
{up}
[[routes]]
id = "r4"
uri = "/r4"
service_id = "shop"
plugins.key-auth = {{}}
[[consumers]]
username = "jack"
plugins.key-auth = {{ key = "jack-key" }}
plugins.consumer-restriction = {{ type = "route_id", whitelist = ["r1"] }}
[[consumers]]
username = "jill"
plugins.key-auth = {{ key = "jill-key" }}
plugins.consumer-restriction = {{ type = "service_id", blacklist = ["billing"], rejected_code = 401, rejected_msg = "no billing" }}
"#
    ));
    let call = |path: &str, key: &str| {
        gw.client()
            .request("GET", path, &[("apikey", key)], b"")
            .refusal()
    };
    assert_eq!(call("/r1", "jack-key").0, 200);
    assert_eq!(
        call("/r2", "jack-key"),
        (403, "The route_id is forbidden.".into())
    );
    // By service: a route without a service has no service_id to check, which APISIX
    // refuses as unidentified.
    let unidentified = "The request is rejected, please check the service_id for this request";
    assert_eq!(call("/r1", "jill-key"), (401, unidentified.into()));
    assert_eq!(call("/r3", "jill-key"), (401, "no billing".into()));
    assert_eq!(call("/r4", "jill-key").0, 200);
    assert_eq!(call("/r3", "jack-key").0, 403);
}
