//! request-validation through the real gateway: header and body schemas, JSON and form
//! bodies (length-framed, chunked, with 100-continue), the re-encoded body the upstream gets,
//! APISIX's messages, the size limit, and bad configs.

use crate::harness::*;

fn gateway(be: &Backend, plugin: &str) -> Gateway {
    Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\n[[routes]]\nid = \"r\"\nuri = \"/*\"\nupstream_id = \"u\"\n[routes.plugins.request-validation]\n{plugin}\n",
        nodes_map(&[(&be.addr(), 1)])
    ))
}

fn echo_body() -> Backend {
    Backend::start(|s| {
        Reply::ok(&format!(
            "{} {}",
            s.header("Content-Length").unwrap_or("-"),
            String::from_utf8_lossy(&s.body)
        ))
    })
}

const BODY_SCHEMA: &str = r#"body_schema = { type = "object", required = ["name"], properties = { name = { type = "string", minLength = 2 }, items = { type = "array", items = { type = "integer", minimum = 1 } } } }"#;

fn post(gw: &Gateway, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    gw.client().request("POST", "/p", &all, body)
}

#[test]
fn header_schema_refuses_with_apisix_messages() {
    let be = echo_body();
    let gw = gateway(
        &be,
        r#"header_schema = { type = "object", required = ["x-api-version"], properties = { x-api-version = { type = "string", enum = ["1", "2"] } } }"#,
    );
    let r = gw.get("/a");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "property \"x-api-version\" is required");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    let r = gw
        .client()
        .request("GET", "/a", &[("X-Api-Version", "3")], b"");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "property \"x-api-version\" validation failed: matches none of the enum values"
    );
    let r = gw
        .client()
        .request("GET", "/a", &[("X-Api-Version", "2")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        be.requests(),
        1,
        "refused requests never reached the upstream"
    );
}

#[test]
fn json_bodies_are_checked_and_sent_as_checked() {
    let be = echo_body();
    let gw = gateway(&be, BODY_SCHEMA);
    let r = post(&gw, &[], br#"{"name": "ab",   "items": [1, 2]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"27 {"items":[1,2],"name":"ab"}"#);
    // A duplicated key reaches the upstream as the one value that was checked.
    let r = post(&gw, &[], br#"{"name": 5, "name": "ok"}"#);
    assert_eq!(r.text(), r#"13 {"name":"ok"}"#);

    let r = post(&gw, &[], br#"{"name": "ab", "items": [1, 0]}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "property \"items\" validation failed: failed to validate item 2: expected 0 to be at least 1"
    );
    let r = post(&gw, &[], br#"{"items": []}"#);
    assert_eq!(r.text(), "property \"name\" is required");
    let r = post(&gw, &[], b"{not json");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("failed to decode the req body"),
        "{}",
        r.text()
    );
    // A body is required when there is a body schema.
    assert_eq!(gw.get("/p").status, 400);
    // An ambiguous Content-Type is refused.
    let r = post(&gw, &[("Content-Type", "text/plain")], br#"{"name": "ab"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "duplicated Content-Type header");

    // The connection goes on after a refusal of a body that was read.
    let mut c = gw.client();
    let r = c.request("POST", "/p", &[("Content-Type", "application/json")], b"{}");
    assert_eq!(r.status, 400);
    let r = c.request(
        "POST",
        "/p",
        &[("Content-Type", "application/json")],
        br#"{"name":"xy"}"#,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn chunked_form_and_continue_bodies() {
    let be = echo_body();
    let gw = gateway(&be, BODY_SCHEMA);
    // Chunked: decoded for the check, sent with a Content-Length.
    let mut c = gw.client();
    c.send_raw(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"name\r\n7\r\n\":\"abc\"\r\n1\r\n}\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"14 {"name":"abc"}"#);
    // 100-continue: the gateway asks for the body, then checks it.
    let mut c = gw.client();
    c.send_raw(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read_one(false).unwrap();
    assert_eq!(r.status, 100);
    c.send_raw(br#"{"name":"zz"}"#);
    assert_eq!(c.read_response(false).unwrap().status, 200);

    // Form bodies: decoded as ngx.decode_args does, sent as they came.
    let gw = gateway(
        &be,
        r#"body_schema = { type = "object", required = ["name"], properties = { name = { type = "string", pattern = "^[a-z ]+$" } } }"#,
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = gw
        .client()
        .request("POST", "/f", &form, b"name=a+b%20c&x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "16 name=a+b%20c&x=1");
    let r = gw.client().request("POST", "/f", &form, b"name=ABC");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "property \"name\" validation failed: failed to match pattern \"^[a-z ]+$\" with \"ABC\""
    );
}

#[test]
fn oversized_bodies_and_custom_rejections() {
    let be = echo_body();
    let gw = gateway(
        &be,
        &format!("{BODY_SCHEMA}\nmax_req_body_size = 100\nrejected_code = 422\nrejected_msg = \"bad request body\""),
    );
    let r = post(&gw, &[], br#"{"name": 1}"#);
    assert_eq!(r.status, 422);
    assert_eq!(r.text(), "bad request body");
    // Larger than the limit: refused (the connection goes on when the body had all arrived).
    let mut c = gw.client();
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(200));
    let r = c.request(
        "POST",
        "/p",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    );
    assert_eq!(r.status, 422);
    assert_eq!(c.get("/p").status, 422, "no body: refused too");
    // Refused without waiting for a body still to come, and then the connection closes.
    let mut c = gw.client();
    c.send_raw(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(be.requests(), 0);
    // Within a raised limit, a body larger than the proxy's own buffer is checked whole.
    let gw = gateway(&be, &format!("{BODY_SCHEMA}\nmax_req_body_size = 300000"));
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(200_000));
    let r = post(&gw, &[], big.as_bytes());
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("200011 {\"name\":\"aaa"),
        "{}",
        &r.text()[..40]
    );
}

#[test]
fn bad_validation_configs_name_the_field() {
    for (plugin, want) in [
        ("rejected_code = 400", "header_schema"),
        ("header_schema = { type = \"strin\" }", "header_schema"),
        ("body_schema = \"object\"", "body_schema"),
        (
            "body_schema = { type = \"object\" }\nrejected_code = 600",
            "rejected_code",
        ),
        (
            "body_schema = { type = \"object\" }\nmax_req_body_size = 0",
            "max_req_body_size",
        ),
        (
            "body_schema = { type = \"object\" }\nrejected_msg = \"\"",
            "rejected_msg",
        ),
    ] {
        let (ok, err) = check_config(&format!(
            "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n[routes.plugins.request-validation]\n{plugin}\n"
        ));
        assert!(!ok, "accepted: {plugin}");
        assert!(
            err.contains("plugins.request-validation"),
            "{plugin}: {err} should name the plugin"
        );
        assert!(err.contains(want), "{plugin}: {err} should name {want}");
    }
}
