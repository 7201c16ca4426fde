//! Plugins that change response bodies (response-rewrite `filters`) through the real
//! gateway: every upstream framing (length, chunked, until close), gzip and br bodies, the
//! size limit, the gateway's own answers, HEAD, HTTP/1.0 clients, and bad configs.

use crate::harness::*;
use std::io::Write;
use std::time::Duration;

fn gateway(be: &Backend, plugin: &str) -> Gateway {
    Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {}\n[[routes]]\nid = \"r\"\nuri = \"/*\"\nupstream_id = \"u\"\n[routes.plugins.response-rewrite]\n{plugin}\n[[routes]]\nid = \"dead\"\nuri = \"/dead\"\nupstream = {{ nodes = {{ \"127.0.0.1:{}\" = 1 }} }}\n[routes.plugins.response-rewrite]\n{plugin}\n",
        nodes_map(&[(&be.addr(), 1)]),
        free_port()
    ))
}

const FILTERS: &str = "filters = [ { regex = \"world\", replace = \"there\" }, { regex = \"(a+)b\", replace = \"<$1>\", scope = \"global\" } ]";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn filters_rewrite_bodies_of_every_framing() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/length" => Reply::Full(
            200,
            vec![
                ("ETag".into(), "\"v1\"".into()),
                ("X-Kept".into(), "1".into()),
            ],
            b"hello world, world: ab aab aaab".to_vec(),
        ),
        "/chunked" => {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend(chunked(&[b"hello wo", b"rld a", b"ab"]));
            Reply::Raw(raw)
        }
        "/close" => Reply::RawClose(b"HTTP/1.1 200 OK\r\n\r\nhello world".to_vec()),
        "/slow" => Reply::RawThen(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nhello w\r\n".to_vec(),
            Duration::from_millis(200),
            b"4\r\norld\r\n0\r\n\r\n".to_vec(),
        ),
        _ => Reply::ok("none"),
    });
    let gw = gateway(&be, FILTERS);
    let mut c = gw.client();
    let r = c.get("/length");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello there, world: <a> <aa> <aaa>");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.header("Content-Length"), None);
    assert_eq!(r.header("ETag"), None, "the old body's ETag is dropped");
    assert_eq!(r.header("X-Kept"), Some("1"));
    // The connection goes on, and the upstream connection was reused.
    let r = c.get("/chunked");
    assert_eq!(r.text(), "hello there <aa>");
    assert_eq!(c.get("/slow").text(), "hello there");
    assert_eq!(be.connections(), 1, "the upstream connection is pooled");
    assert_eq!(c.get("/close").text(), "hello there");

    // An HTTP/1.0 client gets the body up to the close.
    let mut c = gw.client();
    c.send_raw(b"GET /length HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "hello there, world: <a> <aa> <aaa>");
    assert_eq!(r.header("Transfer-Encoding"), None);
    assert!(c.is_closed());

    // HEAD: no body, and no Content-Length describing the unfiltered one.
    let mut c = gw.client();
    c.send("HEAD", "/length", &[], b"");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), None);
    assert_eq!(c.get("/length").status, 200, "framing intact after HEAD");
}

#[test]
fn filters_decode_compressed_bodies() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/gzip" => Reply::Full(
            200,
            vec![("Content-Encoding".into(), "gzip".into())],
            gzip(b"hello world"),
        ),
        "/br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 20);
                w.write_all(b"hello world").unwrap();
            }
            Reply::Full(200, vec![("Content-Encoding".into(), "br".into())], out)
        }
        "/zstd" => Reply::Full(
            200,
            vec![("Content-Encoding".into(), "zstd".into())],
            b"opaque world".to_vec(),
        ),
        "/corrupt" => {
            let mut body = gzip(&[b'w'; 100_000]);
            let n = body.len();
            body[n / 2..].fill(0xff);
            Reply::Full(200, vec![("Content-Encoding".into(), "gzip".into())], body)
        }
        _ => Reply::ok("none"),
    });
    let gw = gateway(&be, FILTERS);
    let mut c = gw.client();
    for path in ["/gzip", "/br"] {
        let r = c.get(path);
        assert_eq!(r.text(), "hello there", "{path}");
        assert_eq!(r.header("Content-Encoding"), None, "{path}: sent decoded");
    }
    // A coding the gateway cannot decode passes untouched, header and all.
    let r = c.get("/zstd");
    assert_eq!(r.text(), "opaque world");
    assert_eq!(r.header("Content-Encoding"), Some("zstd"));
    // A corrupt body ends where decoding failed; the gateway goes on serving.
    let mut c2 = gw.client();
    c2.send("GET", "/corrupt", &[], b"");
    let _ = c2.read_response(false);
    assert_eq!(gw.get("/gzip").text(), "hello there");
    assert!(gw.wait_for_event(|e| e.contains("could not be decoded")));
}

#[test]
fn filters_stream_past_the_size_limit_and_lose_nothing() {
    const LEN: usize = 300_000;
    let be = Backend::start(|_| Reply::Full(200, vec![], vec![b'x'; LEN]));
    let gw = gateway(
        &be,
        "max_resp_body_size = 1000\nfilters = [ { regex = \"x\", replace = \"y\", scope = \"global\" } ]",
    );
    let r = gw.get("/big");
    assert_eq!(r.body.len(), LEN);
    assert_eq!(r.body[0], b'y', "what was held is filtered");
    assert_eq!(r.body[LEN - 1], b'x', "the rest streams on unfiltered");
    let ys = r.body.iter().take_while(|&&b| b == b'y').count();
    assert!(ys >= 1000, "{ys}");
    assert!(r.body[ys..].iter().all(|&b| b == b'x'));
}

#[test]
fn filters_follow_vars_and_apply_to_gateway_answers() {
    let be = Backend::start(|s| match s.target.as_str() {
        "/missing" => Reply::Full(404, vec![], b"no world".to_vec()),
        _ => Reply::Full(
            200,
            vec![("X-Kind".into(), "greeting".into())],
            b"hello world".to_vec(),
        ),
    });
    let gw = gateway(
        &be,
        &format!("vars = [[\"status\", \"==\", 200], [\"upstream_http_x_kind\", \"==\", \"greeting\"]]\n{FILTERS}"),
    );
    assert_eq!(gw.get("/ok").text(), "hello there");
    let r = gw.get("/missing");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no world", "vars did not match: untouched");
    assert_eq!(r.header("Content-Length"), Some("8"));

    // The gateway's own 502 body passes through the filters; its length is exact.
    let gw = gateway(
        &be,
        "filters = [ { regex = \"error_msg\", replace = \"message\" } ]",
    );
    let mut c = gw.client();
    let r = c.get("/dead");
    assert_eq!(r.status, 502);
    assert!(r.text().starts_with("{\"message\":"), "{}", r.text());
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(c.get("/ok").status, 200, "the connection goes on");
}

#[test]
fn bad_filter_configs_name_the_field() {
    for (plugin, want) in [
        (
            "filters = [ { regex = \"(\", replace = \"x\" } ]",
            "regex \"(\"",
        ),
        ("filters = []", "filters"),
        (
            "filters = [ { regex = \"a\", replace = \"x\", scope = \"all\" } ]",
            "property \"filters\" validation failed: failed to validate item 1: property \"scope\" validation failed: matches none of the enum values",
        ),
        (
            "filters = [ { regex = \"a\", replace = \"x\", options = \"jz\" } ]",
            "filters[0].options",
        ),
        ("filters = [ { regex = \"a\" } ]", "replace"),
        (
            "body = \"b\"\nfilters = [ { regex = \"a\", replace = \"x\" } ]",
            "failed to validate dependent schema for \"body\": value wasn't supposed to match schema",
        ),
        ("max_resp_body_size = 0", "max_resp_body_size"),
    ] {
        let (ok, err) = check_config(&format!(
            "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n[routes.plugins.response-rewrite]\n{plugin}\n"
        ));
        assert!(!ok, "accepted: {plugin}");
        assert!(
            err.contains("plugins.response-rewrite"),
            "{plugin}: {err} should name the plugin"
        );
        assert!(err.contains(want), "{plugin}: {err} should name {want}");
    }
}
