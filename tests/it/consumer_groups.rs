//! Consumer groups (APISIX `consumer_groups`): plugins shared by the consumers that name the
//! group, merged under each consumer's own, from the file and through the Admin API.

use crate::harness::*;
use serde_json::json;

/// A backend answering with the headers the group and consumer plugins set.
fn echo() -> Backend {
    Backend::start(|s| {
        Reply::ok(&format!(
            "user={} tier={} who={}",
            s.header("x-consumer-username").unwrap_or("-"),
            s.header("x-tier").unwrap_or("-"),
            s.header("x-who").unwrap_or("-"),
        ))
    })
}

fn route(be: &Backend) -> String {
    format!(
        "[[routes]]\nid = \"r1\"\nuri = \"/g\"\nplugins.key-auth = {{}}\nupstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        be.addr()
    )
}

#[test]
fn a_groups_plugins_apply_to_its_members_under_their_own_and_its_limit_is_shared() {
    let be = echo();
    let gw = Gateway::start(&format!(
        r#"{}
[[consumer_groups]]
id = "gold"
plugins.proxy-rewrite = {{ headers = {{ set = {{ "X-Tier" = "gold", "X-Who" = "group" }} }} }}
plugins.limit-count = {{ count = 3, time_window = 60, key_type = "constant", key = "gold", rejected_code = 429 }}
[[consumers]]
username = "jack"
group_id = "gold"
plugins.key-auth = {{ key = "jack-key" }}
[[consumers]]
username = "jill"
group_id = "gold"
plugins.key-auth = {{ key = "jill-key" }}
plugins.proxy-rewrite = {{ headers = {{ set = {{ "X-Who" = "jill" }} }} }}
[[consumers]]
username = "joe"
plugins.key-auth = {{ key = "joe-key" }}
"#,
        route(&be)
    ));
    let call = |key: &str| {
        let r = gw.client().request("GET", "/g", &[("apikey", key)], b"");
        (r.status, r.text())
    };
    // jack runs the group's proxy-rewrite; jill's own proxy-rewrite replaces the group's
    // (APISIX merges group, then consumer: the consumer's configuration wins).
    assert_eq!(
        call("jack-key"),
        (200, "user=jack tier=gold who=group".into())
    );
    assert_eq!(call("jill-key"), (200, "user=jill tier=- who=jill".into()));
    // The group's limit-count is one instance: its 3 requests are the members' together.
    assert_eq!(call("jill-key").0, 200);
    assert_eq!(call("jack-key").0, 429);
    assert_eq!(call("jill-key").0, 429);
    // A consumer outside the group has none of it.
    for _ in 0..4 {
        assert_eq!(call("joe-key"), (200, "user=joe tier=- who=-".into()));
    }
}

#[test]
fn consumer_restriction_by_consumer_group_id() {
    let be = Backend::named("ok");
    let gw = Gateway::start(&format!(
        r#"[[routes]]
uri = "/gold"
plugins.key-auth = {{}}
plugins.consumer-restriction = {{ type = "consumer_group_id", whitelist = ["gold"] }}
upstream = {{ nodes = {{ "{0}" = 1 }} }}
[[routes]]
uri = "/by-var"
plugins.key-auth = {{}}
vars = [["consumer_group_id", "==", "gold"]]
upstream = {{ nodes = {{ "{0}" = 1 }} }}
[[consumer_groups]]
id = "gold"
plugins = {{}}
[[consumer_groups]]
id = "free"
plugins = {{}}
[[consumers]]
username = "jack"
group_id = "gold"
plugins.key-auth = {{ key = "jack-key" }}
[[consumers]]
username = "jill"
group_id = "free"
plugins.key-auth = {{ key = "jill-key" }}
[[consumers]]
username = "joe"
plugins.key-auth = {{ key = "joe-key" }}
"#,
        be.addr()
    ));
    let call = |path: &str, key: &str| {
        gw.client()
            .request("GET", path, &[("apikey", key)], b"")
            .refusal()
    };
    assert_eq!(call("/gold", "jack-key").0, 200);
    assert_eq!(
        call("/gold", "jill-key"),
        (403, "The consumer_group_id is forbidden.".into())
    );
    // No group: nothing to check, which APISIX refuses as unidentified.
    assert_eq!(
        call("/gold", "joe-key"),
        (
            401,
            "The request is rejected, please check the consumer_group_id for this request".into()
        )
    );
    // Route `vars` are matched before authentication, so a route cannot select on the
    // group (as in APISIX): the variable is empty then and the route does not match.
    assert_eq!(call("/by-var", "jack-key").0, 404);
}

#[test]
fn a_consumer_naming_a_group_that_does_not_exist_is_refused_with_the_field_named() {
    let (ok, err) = check_config(
        "[[consumers]]\nusername = \"jack\"\ngroup_id = \"nope\"\nplugins.key-auth = { key = \"k\" }\n",
    );
    assert!(!ok);
    assert!(
        err.contains("consumers[0] (id \"jack\").group_id")
            && err.contains("consumer group id [nope]"),
        "{err}"
    );
    let (ok, err) = check_config(
        "[[consumer_groups]]\nid = \"g\"\nplugins.limit-count = { count = 0, time_window = 60 }\n",
    );
    assert!(!ok);
    assert!(
        err.contains("consumer_groups[0] (id \"g\").plugins.limit-count"),
        "{err}"
    );
    let (ok, err) =
        check_config("[[consumer_groups]]\nid = \"g\"\nplugins.key-auth = { key = \"k\" }\n");
    assert!(!ok);
    assert!(
        err.contains("consumer_groups[0] (id \"g\").plugins.key-auth"),
        "{err}"
    );
}

#[test]
fn consumer_groups_through_the_admin_api_change_members_live_and_guard_deletion() {
    let be = echo();
    let admin = AdminGateway::start(&route(&be));
    let call = |key: &str| {
        let r = admin
            .gw
            .client()
            .request("GET", "/g", &[("apikey", key)], b"");
        (r.status, r.text())
    };
    // A consumer naming a group that does not exist: refused, nothing changes.
    let r = admin.call(
        "PUT",
        "/apisix/admin/consumers",
        json!({"username": "ann", "group_id": "silver", "plugins": {"key-auth": {"key": "ann-key"}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("consumer group id [silver]"),
        "{}",
        r.text()
    );
    assert_eq!(call("ann-key").0, 401);

    // POST is not how a group is made (APISIX: PUT with its id).
    let r = admin.call(
        "POST",
        "/apisix/admin/consumer_groups",
        json!({"plugins": {}}),
    );
    assert_eq!(r.status, 405);
    assert_eq!(
        r.json()["error_msg"],
        "not supported `POST` method for consumer group"
    );
    // Schema: plugins are required.
    let r = admin.call(
        "PUT",
        "/apisix/admin/consumer_groups/silver",
        json!({"desc": "x"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    admin.put(
        "/apisix/admin/consumer_groups/silver",
        json!({"plugins": {"proxy-rewrite": {"headers": {"set": {"X-Tier": "silver"}}}}}),
    );
    let got = admin.call("GET", "/apisix/admin/consumer_groups/silver", json!(null));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["key"], "/apisix/consumer_groups/silver");
    admin.put(
        "/apisix/admin/consumers",
        json!({"username": "ann", "group_id": "silver", "plugins": {"key-auth": {"key": "ann-key"}}}),
    );
    assert_eq!(call("ann-key"), (200, "user=ann tier=silver who=-".into()));

    // Changing the group changes its members' requests, live.
    admin.put(
        "/apisix/admin/consumer_groups/silver",
        json!({"plugins": {"proxy-rewrite": {"headers": {"set": {"X-Tier": "silver-2"}}}}}),
    );
    assert_eq!(
        call("ann-key"),
        (200, "user=ann tier=silver-2 who=-".into())
    );

    // A group in use cannot be deleted (APISIX's message); once free, it can.
    let r = admin.call(
        "DELETE",
        "/apisix/admin/consumer_groups/silver",
        json!(null),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this consumer group, consumer [ann] is still using it now"
    );
    admin.put(
        "/apisix/admin/consumers",
        json!({"username": "ann", "plugins": {"key-auth": {"key": "ann-key"}}}),
    );
    assert_eq!(call("ann-key"), (200, "user=ann tier=- who=-".into()));
    let r = admin.call(
        "DELETE",
        "/apisix/admin/consumer_groups/silver",
        json!(null),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
