//! The etcd provider against a real etcd: gateways sharing one cluster converge, objects
//! written into etcd as APISIX writes them are served, an etcd that dies or is cut off leaves
//! the last good config serving (and says so), a compacted watch resyncs, endpoints fail over,
//! and user/password auth and TLS work.

use crate::harness::etcd::{unique_prefix, Cluster, Etcd, Relay};
use crate::harness::{cli, free_port, temp_dir, Backend, Client, Gateway, Reply, Response};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KEY: &str = "etcd-test-admin-key";

/// A gateway on the etcd provider, with its Admin API and control API.
struct Node {
    gw: Gateway,
    admin: SocketAddr,
    control: u16,
}

fn node(hosts: &[String], prefix: &str, etcd_extra: &str) -> Node {
    let (admin, control) = (free_port(), free_port());
    let gw = Gateway::start_with(
        &format!(
            "[deployment]\nconfig_provider = \"etcd\"\n[deployment.etcd]\nhost = {hosts:?}\nprefix = \"{prefix}\"\nresync_delay = 1\n{etcd_extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\nadmin_key = \"{KEY}\"\n"
        ),
        &format!("workers = 2\ncontrol_listen = \"127.0.0.1:{control}\""),
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "no Admin API: {}", gw.events());
        std::thread::sleep(Duration::from_millis(20));
    }
    Node { gw, admin, control }
}

impl Node {
    fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        Client::connect(self.admin).request(
            method,
            &format!("/apisix/admin/{path}"),
            &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// The control API's `/v1/config`.
    fn config(&self) -> Value {
        Client::connect(([127, 0, 0, 1], self.control).into())
            .get("/v1/config")
            .json()
    }

    /// Waits (up to 10 s) until `path` answers `status`.
    fn serves(&self, path: &str, status: u16) -> bool {
        until(|| self.gw.get(path).status == status)
    }
}

fn until(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn route(uri: &str, backend: &Backend) -> String {
    format!(
        r#"{{"uri":"{uri}","upstream":{{"type":"roundrobin","nodes":{{"{}":1}}}}}}"#,
        backend.addr()
    )
}

#[test]
fn two_gateways_on_one_etcd_converge_after_a_write_on_either() {
    let etcd = Cluster::get();
    let prefix = unique_prefix("converge");
    let backend = Backend::start(|_| Reply::ok("from-backend"));
    let a = node(&[etcd.url()], &prefix, "");
    let b = node(&[etcd.url()], &prefix, "");

    // A write on A: A serves it as soon as it answers (read-your-writes), B soon after.
    let r = a.admin("PUT", "routes/1", &route("/one", &backend));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        a.gw.get("/one").text(),
        "from-backend",
        "A serves its own write at once"
    );
    assert!(
        b.serves("/one", 200),
        "B applies A's write: {}",
        b.gw.events()
    );
    // The value in etcd is APISIX's JSON, under APISIX's key layout.
    let stored: Value =
        serde_json::from_str(&etcd.ctl().get(&format!("{prefix}/routes/1")).unwrap()).unwrap();
    assert_eq!(stored["uri"], "/one");
    assert_eq!(stored["id"], "1");
    assert!(stored["create_time"].is_i64() && stored["update_time"].is_i64());

    // POST on B: the id comes from etcd, both serve it; B's Admin API lists A's route.
    let r = b.admin(
        "POST",
        "upstreams",
        &format!(r#"{{"nodes":{{"{}":1}}}}"#, backend.addr()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20, "APISIX's 20-digit id: {id}");
    let r = b.admin(
        "PUT",
        "routes/2",
        &format!(r#"{{"uri":"/two","upstream_id":"{id}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(b.gw.get("/two").status, 200);
    assert!(a.serves("/two", 200));
    let list = b.admin("GET", "routes", "").json();
    assert_eq!(list["total"], 2, "{list}");

    // Delete protection sees objects written by the other gateway.
    let r = a.admin("DELETE", &format!("upstreams/{id}"), "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("is still using it"), "{}", r.text());

    // An update keeps create_time; PATCH merges; DELETE reaches both.
    let before = a.admin("GET", "routes/1", "").json()["value"]["create_time"].clone();
    let r = b.admin("PATCH", "routes/1", r#"{"uri":"/one-patched"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.gw.get("/one-patched").status, 200);
    assert!(a.serves("/one-patched", 200));
    assert_eq!(
        a.admin("GET", "routes/1", "").json()["value"]["create_time"],
        before
    );
    let r = a.admin("DELETE", "routes/1", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.gw.get("/one-patched").status, 404);
    assert!(b.serves("/one-patched", 404));

    // An invalid object is refused with the field named, and nothing reaches etcd.
    let r = a.admin("PUT", "routes/bad", r#"{"uri":"/x","upstream_id":"nope"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("upstream"), "{}", r.text());
    assert_eq!(etcd.ctl().get(&format!("{prefix}/routes/bad")), None);
    assert!(a.config()["etcd"]["reachable"] == true, "{}", a.config());
    assert_eq!(a.config()["provider"], "etcd");
}

#[test]
fn objects_written_into_etcd_in_apisix_json_are_served() {
    let etcd = Cluster::get();
    let ctl = etcd.ctl();
    let prefix = unique_prefix("apisix-json");
    let backend = Backend::start(|s| Reply::ok(&format!("seen {}", s.target)));
    // What APISIX's Admin API writes: ids in the value, times, a route naming an upstream
    // and a service, a consumer, and APISIX's own bookkeeping keys that are not ours.
    ctl.put(
        &format!("{prefix}/upstreams/u1"),
        &format!(
            r#"{{"id":"u1","type":"roundrobin","nodes":[{{"host":"127.0.0.1","port":{},"weight":1}}],"create_time":1700000000,"update_time":1700000000}}"#,
            backend.addr().rsplit(':').next().unwrap()
        ),
    );
    ctl.put(
        &format!("{prefix}/services/s1"),
        r#"{"id":"s1","upstream_id":"u1","plugins":{"proxy-rewrite":{"headers":{"set":{"X-From":"svc"}}}}}"#,
    );
    ctl.put(
        &format!("{prefix}/routes/r1"),
        r#"{"id":"r1","uris":["/apisix/*"],"methods":["GET"],"service_id":"s1","priority":0,"status":1,"create_time":1700000000,"update_time":1700000001}"#,
    );
    ctl.put(
        &format!("{prefix}/consumers/jack"),
        r#"{"username":"jack"}"#,
    );
    ctl.put(
        &format!("{prefix}/plugin_metadata/cors"),
        r#"{"id":"cors","note":"from APISIX"}"#,
    );
    // An SSL object as APISIX stores it: the key encrypted with its default keyring.
    let certs = temp_dir("etcd-ssl");
    crate::harness::certificates(&certs);
    let pem = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let ssl = serde_json::json!({"id": "s1", "cert": pem("server.pem"),
        "key": crate::harness::apisix_encrypt(&pem("server.key"), false), "snis": ["a.test"]});
    ctl.put(&format!("{prefix}/ssls/s1"), &ssl.to_string());
    // One that expired: kept (APISIX takes it), not served, and said so.
    let old = serde_json::json!({"id": "s2", "cert": pem("expired.pem"),
        "key": pem("expired.key"), "snis": ["old.test"]});
    ctl.put(&format!("{prefix}/ssls/s2"), &old.to_string());
    ctl.put(&format!("{prefix}/gen_id"), "7");
    ctl.put(&format!("{prefix}/data_plane/server_info/x"), "{}");
    // A broken object is left out; the rest is served.
    ctl.put(&format!("{prefix}/routes/broken"), "{not json");
    let n = node(&[etcd.url()], &prefix, "");
    let r = n.gw.get("/apisix/x");
    assert_eq!(r.status, 200, "{}", n.gw.events());
    assert_eq!(r.text(), "seen /apisix/x");
    assert!(
        n.gw.events().contains("routes/broken ignored"),
        "{}",
        n.gw.events()
    );
    let got = n.admin("GET", "routes/r1", "").json();
    assert_eq!(got["value"]["create_time"], 1700000000);
    assert_eq!(got["value"]["update_time"], 1700000001);
    assert_eq!(n.admin("GET", "consumers/jack", "").status, 200);
    assert_eq!(
        n.admin("GET", "plugin_metadata/cors", "").json()["value"]["note"],
        "from APISIX"
    );
    assert_eq!(
        n.admin("GET", "ssls/s1", "").json()["value"]["snis"][0],
        "a.test",
        "an SSL object with a key APISIX encrypted is taken: {}",
        n.gw.events()
    );
    assert!(
        n.gw.events()
            .contains("ssls[1] (id \"s2\") is not served: the certificate expired"),
        "{}",
        n.gw.events()
    );

    // Written while the gateway runs: served through the watch; a delete is too.
    ctl.put(
        &format!("{prefix}/routes/r2"),
        r#"{"id":"r2","uri":"/later","upstream_id":"u1"}"#,
    );
    assert!(n.serves("/later", 200), "{}", n.gw.events());
    ctl.run(&["del", &format!("{prefix}/routes/r2")]);
    assert!(n.serves("/later", 404));
    // A route that fails its schema is not served, and says why.
    ctl.put(
        &format!("{prefix}/routes/r3"),
        r#"{"id":"r3","uri":"/bad-schema","methods":["FETCH"],"upstream_id":"u1"}"#,
    );
    assert!(n.gw.wait_for_event(|e| e.contains("routes/r3 ignored")));
    assert_eq!(n.gw.get("/bad-schema").status, 404);
    // A route naming an upstream that is not there: the whole revision is refused, the last
    // good config keeps serving, and /v1/config says so; fixing it applies everything.
    ctl.put(
        &format!("{prefix}/routes/r4"),
        r#"{"id":"r4","uri":"/dangling","upstream_id":"missing"}"#,
    );
    assert!(until(|| !n.config()["refused"].is_null()), "{}", n.config());
    assert_eq!(n.gw.get("/apisix/y").status, 200);
    ctl.put(
        &format!("{prefix}/upstreams/missing"),
        &format!(r#"{{"id":"missing","nodes":{{"{}":1}}}}"#, backend.addr()),
    );
    assert!(n.serves("/dangling", 200), "{}", n.gw.events());
    assert!(n.config()["refused"].is_null());
}

#[test]
fn etcd_killed_and_restarted_the_gateway_keeps_serving_and_catches_up() {
    let mut etcd = Etcd::start();
    let prefix = "/apisix";
    let backend = Backend::start(|_| Reply::ok("up"));
    let n = node(std::slice::from_ref(&etcd.url), prefix, "");
    assert_eq!(
        n.admin("PUT", "routes/1", &route("/a", &backend)).status,
        201
    );
    etcd.kill();
    assert!(
        until(|| n.config()["etcd"]["reachable"] == false),
        "{}",
        n.config()
    );
    // The last good config keeps serving.
    for _ in 0..20 {
        assert_eq!(n.gw.get("/a").text(), "up");
    }
    let status = n.config();
    assert!(status["etcd"]["unreachable_since"].is_i64(), "{status}");
    assert!(n.gw.events().contains("keeps serving until etcd is back"));
    // A write cannot be stored: 503, APISIX's answer when etcd fails.
    let r = n.admin("PUT", "routes/2", &route("/b", &backend));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("etcd unreachable"));

    etcd.restart();
    etcd.ctl().put(
        &format!("{prefix}/routes/3"),
        &route("/c", &backend).replacen('{', r#"{"id":"3","#, 1),
    );
    assert!(n.serves("/c", 200), "caught up: {}", n.gw.events());
    assert_eq!(n.config()["etcd"]["reachable"], true);
    assert_eq!(n.gw.get("/a").text(), "up");
    assert_eq!(
        n.gw.get("/b").status,
        404,
        "the refused write was never stored"
    );
    // Writes work again.
    assert_eq!(
        n.admin("PUT", "routes/2", &route("/b", &backend)).status,
        201
    );
    assert_eq!(n.gw.get("/b").status, 200);
}

#[test]
fn a_watch_behind_a_compaction_reads_everything_again() {
    let etcd = Etcd::start();
    let relay = Relay::start(&etcd.url);
    let prefix = "/apisix";
    let backend = Backend::start(|_| Reply::ok("x"));
    let ctl = etcd.ctl();
    ctl.put(&format!("{prefix}/routes/old"), &route("/old", &backend));
    let n = node(&[relay.url()], prefix, "");
    assert_eq!(n.gw.get("/old").status, 200);
    // Cut off: changes and a compaction happen while the gateway cannot see them.
    relay.cut();
    assert!(until(|| n.config()["etcd"]["reachable"] == false));
    ctl.put(&format!("{prefix}/routes/new"), &route("/new", &backend));
    ctl.run(&["del", &format!("{prefix}/routes/old")]);
    for i in 0..5 {
        ctl.put(
            &format!("{prefix}/routes/n{i}"),
            &route(&format!("/n{i}"), &backend),
        );
    }
    let rev = ctl.revision();
    ctl.run(&["compaction", &rev.to_string()]);
    relay.restore();
    assert!(n.serves("/new", 200), "{}", n.gw.events());
    assert_eq!(
        n.gw.get("/old").status,
        404,
        "a delete inside the compacted range"
    );
    assert_eq!(n.gw.get("/n4").status, 200);
    let events = n.gw.events();
    assert!(
        events.contains("was compacted") && events.contains("(resync)"),
        "{events}"
    );
    assert_eq!(n.config()["etcd"]["reachable"], true);
}

#[test]
fn endpoints_fail_over() {
    let etcd = Cluster::get();
    let prefix = unique_prefix("failover");
    let (first, second) = (Relay::start(&etcd.url()), Relay::start(&etcd.url()));
    let backend = Backend::start(|_| Reply::ok("x"));
    let n = node(&[first.url(), second.url()], &prefix, "");
    assert_eq!(
        n.admin("PUT", "routes/1", &route("/1", &backend)).status,
        201
    );
    assert_eq!(n.config()["etcd"]["endpoint"], first.url());
    // The first endpoint goes away: the watch and the writes move to the second.
    first.cut();
    assert!(
        until(|| n.config()["etcd"]["endpoint"] == second.url()
            && n.config()["etcd"]["reachable"] == true),
        "{}\n{}",
        n.config(),
        n.gw.events()
    );
    let r = n.admin("PUT", "routes/2", &route("/2", &backend));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.gw.get("/2").status, 200);
    etcd.ctl()
        .put(&format!("{prefix}/routes/3"), &route("/3", &backend));
    assert!(n.serves("/3", 200));
    // A gateway whose first endpoint is dead from the start uses the next one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let m = node(&[dead, etcd.url()], &prefix, "");
    assert_eq!(m.gw.get("/3").status, 200);
}

/// An etcd serving TLS with the test certificates in `dir`, and `extra` flags.
fn tls_etcd(dir: &std::path::Path, extra: &[String]) -> Etcd {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut flags = vec![
        "--cert-file".to_string(),
        p("server.pem"),
        "--key-file".to_string(),
        p("server.key"),
    ];
    flags.extend(extra.iter().cloned());
    Etcd::start_with("https", &flags)
}

/// Starting a gateway on `url` with `extra` in `[deployment.etcd]` fails; its stderr.
fn refused_start(url: &str, extra: &str) -> String {
    let dir = temp_dir("etcd-refused");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_listen = \"off\"\n[deployment]\nconfig_provider = \"etcd\"\n[deployment.etcd]\nhost = [\"{url}\"]\nstartup_retry = 0\n{extra}\n[admin]\nlisten = \"off\"\n",
            free_port(),
        ),
    )
    .unwrap();
    let (ok, _, err) = cli(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(!ok, "started with {extra}");
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[test]
fn tls_and_user_password_auth_to_etcd() {
    let dir = temp_dir("etcd-tls");
    crate::harness::certificates(&dir);
    let p = |f: &str| dir.join(f).display().to_string();
    // Tokens expire after a second idle: the gateway must authenticate again.
    let etcd = tls_etcd(&dir, &["--auth-token-ttl".into(), "1".into()]);
    let mut ctl = etcd.ctl();
    ctl.extra = vec!["--cacert".into(), p("ca.pem")];
    ctl.run(&["user", "add", "root:root-pw"]);
    ctl.run(&["user", "add", "gw:gw-pw"]);
    ctl.run(&["role", "add", "gw"]);
    ctl.run(&[
        "role",
        "grant-permission",
        "gw",
        "readwrite",
        "/apisix",
        "--prefix=true",
    ]);
    ctl.run(&["user", "grant-role", "gw", "gw"]);
    ctl.run(&["auth", "enable"]);
    ctl.extra.extend(["--user".into(), "root:root-pw".into()]);
    let backend = Backend::start(|_| Reply::ok("secure"));

    let tls = format!(
        "user = \"gw\"\npassword = \"gw-pw\"\n[deployment.etcd.tls]\nca = \"{}\"\n",
        p("ca.pem")
    );
    let n = node(std::slice::from_ref(&etcd.url), "/apisix", &tls);
    let r = n.admin("PUT", "routes/1", &route("/s", &backend));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.gw.get("/s").text(), "secure");
    assert!(
        ctl.get("/apisix/routes/1").is_some(),
        "written through TLS with auth"
    );
    ctl.put("/apisix/routes/2", &route("/t", &backend));
    assert!(
        n.serves("/t", 200),
        "watched through TLS with auth: {}",
        n.gw.events()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = n.admin("PUT", "routes/3", &route("/u", &backend));
    assert_eq!(r.status, 201, "after the token expired: {}", r.text());
    assert_eq!(n.gw.get("/u").text(), "secure");

    // A wrong password, a CA that did not sign etcd's certificate: the gateway does not
    // start, and says why.
    let refused = |extra: &str, want: &str| {
        let err = refused_start(&etcd.url, extra);
        assert!(err.contains(want), "{want} not in: {err}");
    };
    refused(
        &format!(
            "user = \"gw\"\npassword = \"wrong\"\n[deployment.etcd.tls]\nca = \"{}\"\n",
            p("ca.pem")
        ),
        "authentication as 'gw' refused",
    );
    refused(
        &format!(
            "user = \"gw\"\npassword = \"gw-pw\"\n[deployment.etcd.tls]\nca = \"{}\"\n",
            p("other.pem")
        ),
        "certificate",
    );
    refused(
        "[deployment.etcd.tls]\nca = \"/nonexistent/ca.pem\"\n",
        "deployment.etcd.tls.ca",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn import_and_export_with_the_etcd_provider() {
    let etcd = Cluster::get();
    let prefix = unique_prefix("import");
    let backend = Backend::start(|_| Reply::ok("imported"));
    let n = node(&[etcd.url()], &prefix, "");
    let dir = temp_dir("etcd-import");
    let source = dir.join("in.json");
    std::fs::write(
        &source,
        format!(
            r#"{{"upstreams":[{{"id":"u","nodes":{{"{}":1}}}}],"routes":[{{"id":"r","uri":"/imp","upstream_id":"u"}}]}}"#,
            backend.addr()
        ),
    )
    .unwrap();
    let config = n.gw.config_path.display().to_string();
    let (ok, _, err) = cli(&["import", "-c", &config, source.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        n.serves("/imp", 200),
        "the running gateway applies an import: {}",
        n.gw.events()
    );
    let (ok, out, err) = cli(&["export", "-c", &config]);
    assert!(ok, "{err}");
    let exported: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported["routes"][0]["uri"], "/imp");
    assert_eq!(exported["upstreams"][0]["id"], "u");
}

#[test]
fn a_client_certificate_for_an_etcd_that_asks_for_one() {
    let dir = temp_dir("etcd-mtls");
    crate::harness::certificates(&dir);
    let p = |f: &str| dir.join(f).display().to_string();
    let etcd = tls_etcd(
        &dir,
        &[
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            p("ca.pem"),
        ],
    );
    let backend = Backend::start(|_| Reply::ok("mtls"));
    // The test certificate is good for client authentication too.
    let tls = format!(
        "[deployment.etcd.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        p("ca.pem"),
        p("server.pem"),
        p("server.key")
    );
    let n = node(std::slice::from_ref(&etcd.url), "/apisix", &tls);
    let r = n.admin("PUT", "routes/1", &route("/m", &backend));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n.gw.get("/m").text(), "mtls");
    // Without the client certificate etcd refuses the connection: the gateway does not start.
    let err = refused_start(
        &etcd.url,
        &format!("[deployment.etcd.tls]\nca = \"{}\"\n", p("ca.pem")),
    );
    assert!(
        err.contains("cannot read the configuration from etcd"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
