//! Plugins through the real gateway: traffic-split (canary by header, weighted splits,
//! inline upstreams), the route/service/global merge order, and config errors.

use crate::harness::*;
use std::collections::HashMap;
use std::process::Command;

fn upstream(id: &str, b: &Backend) -> String {
    format!(
        "[[upstreams]]\nid = \"{id}\"\nnodes = {{ \"{}\" = 1 }}\n",
        b.addr()
    )
}

fn counts(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut c = gw.client();
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c.request("GET", "/x", headers, b"");
        assert_eq!(r.status, 200);
        *out.entry(r.text()).or_default() += 1;
    }
    out
}

#[test]
fn traffic_split_sends_matching_requests_to_the_canary() {
    let stable = Backend::named("stable");
    let canary = Backend::named("canary");
    let gw = Gateway::start(&format!(
        r#"{}{}
[[routes]]
id = "r"
uri = "/*"
upstream_id = "stable"
[routes.plugins.traffic-split]
rules = [{{ match = [{{ vars = [["http_x_canary", "==", "yes"]] }}, {{ vars = [["arg_beta", "==", "1"]] }}], weighted_upstreams = [{{ upstream_id = "canary", weight = 1 }}] }}]
"#,
        upstream("stable", &stable),
        upstream("canary", &canary)
    ));
    assert_eq!(
        counts(&gw, 20, &[("X-Canary", "yes")]),
        HashMap::from([("canary".into(), 20)])
    );
    assert_eq!(counts(&gw, 20, &[]), HashMap::from([("stable".into(), 20)]));
    assert_eq!(gw.get("/x?beta=1").text(), "canary");
    assert_eq!(gw.get("/x?beta=2").text(), "stable");
}

#[test]
fn traffic_split_weights_are_exact_and_smooth() {
    let stable = Backend::named("stable");
    let canary = Backend::named("canary");
    let inline = Backend::named("inline");
    let gw = Gateway::start(&format!(
        r#"{}{}
[[routes]]
id = "r"
uri = "/*"
upstream_id = "stable"
[routes.plugins.traffic-split]
rules = [
  {{ match = [{{ vars = [["http_x_three", "==", "1"]] }}], weighted_upstreams = [{{ upstream = {{ nodes = {{ "{}" = 1 }} }}, weight = 2 }}, {{ upstream_id = "canary", weight = 2 }}, {{ weight = 1 }}] }},
  {{ weighted_upstreams = [{{ upstream_id = "canary", weight = 20 }}, {{ weight = 80 }}] }},
]
"#,
        upstream("stable", &stable),
        upstream("canary", &canary),
        inline.addr()
    ));
    // 80/20 over 1,000 requests: within ±3% (smooth WRR on one core makes it exact).
    let split = counts(&gw, 1000, &[]);
    let canary_share = split["canary"] as f64 / 1000.0;
    assert!((canary_share - 0.2).abs() <= 0.03, "{split:?}");
    // Interleaved: never two canary answers in a row at 20%.
    let mut c = gw.client();
    let seq: Vec<String> = (0..50).map(|_| c.get("/x").text()).collect();
    assert!(
        !seq.windows(2).any(|w| w[0] == "canary" && w[1] == "canary"),
        "{seq:?}"
    );
    // 2:2:1 with an inline upstream and the route's own.
    let three = counts(&gw, 500, &[("X-Three", "1")]);
    assert_eq!(three["inline"], 200, "{three:?}");
    assert_eq!(three["canary"], 200, "{three:?}");
    assert_eq!(three["stable"], 100, "{three:?}");
}

#[test]
fn route_plugins_override_service_plugins_and_global_rules_apply() {
    let own = Backend::named("own");
    let svc = Backend::named("svc");
    let global = Backend::named("global");
    let body = format!(
        r#"{}{}{}
[[services]]
id = "s"
upstream_id = "own"
[services.plugins.traffic-split]
rules = [{{ weighted_upstreams = [{{ upstream_id = "svc", weight = 1 }}] }}]

[[routes]]
id = "inherits"
uri = "/inherits"
service_id = "s"

[[routes]]
id = "overrides"
uri = "/overrides"
service_id = "s"
[routes.plugins.traffic-split]
rules = [{{ match = [{{ vars = [["http_x_never", "==", "1"]] }}], weighted_upstreams = [{{ upstream_id = "svc", weight = 1 }}] }}]

[[routes]]
id = "plain"
uri = "/plain"
upstream_id = "own"
"#,
        upstream("own", &own),
        upstream("svc", &svc),
        upstream("global", &global)
    );
    let gw = Gateway::start(&body);
    assert_eq!(gw.get("/inherits").text(), "svc");
    assert_eq!(gw.get("/overrides").text(), "own");
    assert_eq!(gw.get("/plain").text(), "own");

    // A global rule runs before route plugins: with the header, everything goes to "global".
    let with_global = format!(
        "{body}\n[[global_rules]]\nid = \"g\"\n[global_rules.plugins.traffic-split]\nrules = [{{ match = [{{ vars = [[\"http_x_global\", \"==\", \"1\"]] }}], weighted_upstreams = [{{ upstream_id = \"global\", weight = 1 }}] }}]\n"
    );
    gw.write_config(&with_global);
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_event(|e| e.contains("config reloaded")),
        "{}",
        gw.events()
    );
    let mut c = gw.client();
    assert_eq!(
        c.request("GET", "/plain", &[("X-Global", "1")], b"").text(),
        "global"
    );
    assert_eq!(c.request("GET", "/plain", &[], b"").text(), "own");
    // The service's traffic-split still runs after the global rule left it alone.
    assert_eq!(c.request("GET", "/inherits", &[], b"").text(), "svc");
}

#[test]
fn plugin_config_errors_name_the_field() {
    let dir = temp_dir("plugincheck");
    let base = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n";
    for (extra, want) in [
        ("[routes.plugins.no-such-plugin]\nx = 1\n", "routes[0] (id \"r\").plugins.no-such-plugin"),
        (
            "[routes.plugins.traffic-split]\nrules = [{ weighted_upstreams = [{ upstream_id = \"missing\" }] }]\n",
            "upstream \"missing\" does not exist",
        ),
        (
            "[routes.plugins.traffic-split]\nrules = [{ match = [{ vars = [[\"arg_a\", \"=\", \"1\"]] }] }]\n",
            "invalid operator '='",
        ),
    ] {
        let path = dir.join("c.toml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = Command::new(bin()).args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plugin_configs_merge_between_route_and_service_as_apisix() {
    let be = Backend::start(|s| Reply::ok(s.header("X-A").unwrap_or("-")));
    let config = format!(
        r#"
[[upstreams]]
id = "u"
nodes = {{ "{}" = 1 }}
[[global_rules]]
id = "g"
[global_rules.plugins.cors]
[[services]]
id = "s"
upstream_id = "u"
[services.plugins.proxy-rewrite]
headers = {{ set = {{ X-A = "service" }} }}
[services.plugins.response-rewrite]
headers = {{ set = {{ X-Level = "service" }} }}
[[plugin_configs]]
id = "pc"
desc = "shared"
[plugin_configs.plugins.proxy-rewrite]
headers = {{ set = {{ X-A = "plugin_config" }} }}
[plugin_configs.plugins.request-id]
[[routes]]
id = "r1"
uri = "/r1"
service_id = "s"
plugin_config_id = "pc"
[routes.plugins.proxy-rewrite]
headers = {{ set = {{ X-A = "route" }} }}
[[routes]]
id = "r2"
uri = "/r2"
service_id = "s"
plugin_config_id = "pc"
[[routes]]
id = "r3"
uri = "/r3"
service_id = "s"
"#,
        be.addr()
    );
    let gw = Gateway::start(&config);
    let r = gw.get("/r1");
    assert_eq!(r.text(), "route", "the route's own proxy-rewrite wins");
    assert_eq!(r.header("X-Level"), Some("service"));
    assert!(
        r.header("X-Request-Id").is_some(),
        "the plugin config's request-id runs"
    );
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("*"),
        "global rule"
    );
    let r = gw.get("/r2");
    assert_eq!(
        r.text(),
        "plugin_config",
        "the plugin config beats the service"
    );
    assert!(r.header("X-Request-Id").is_some());
    let r = gw.get("/r3");
    assert_eq!(r.text(), "service");
    assert_eq!(r.header("X-Request-Id"), None);
    // A plugin config that does not exist is refused at load, naming the field.
    let (ok, err) =
        check_config(&config.replace("plugin_config_id = \"pc\"", "plugin_config_id = \"nope\""));
    assert!(!ok);
    assert!(
        err.contains("routes[0] (id \"r1\").plugin_config_id"),
        "{err}"
    );
}
