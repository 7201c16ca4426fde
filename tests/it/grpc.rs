//! gRPC through the gateway (issue #14): a real gRPC server and client (Python `grpcio`),
//! unary and the three streaming kinds, error statuses, deadlines and trailers, over h2c
//! and TLS to the gateway and to `grpc` and `grpcs` upstreams; the gateway's own errors on
//! gRPC routes arrive as gRPC statuses.

use crate::harness::py::{self, PyServer};
use crate::harness::*;

/// grpcpeer.py's report for `args`.
fn grpc(args: &[&str]) -> serde_json::Value {
    py::report("grpcpeer.py", args)
}

fn assert_all_kinds(r: &serde_json::Value, server: &str) {
    assert_eq!(r["unary"]["reply"], "echo:hi", "{r}");
    assert_eq!(r["client_stream"]["reply"], "a+b+c", "{r}");
    assert_eq!(
        r["server_stream"]["reply"],
        serde_json::json!(["part-0", "part-1", "part-2", "part-3"]),
        "{r}"
    );
    assert_eq!(
        r["bidi"]["reply"],
        serde_json::json!(["re:m0", "re:m1", "re:m2", "re:m3", "re:m4"]),
        "{r}"
    );
    assert_eq!(r["fail"]["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["fail"]["details"], "nothing here: x", "{r}");
    assert_eq!(r["deadline"]["code"], "DEADLINE_EXCEEDED", "{r}");
    assert_eq!(r["trailer"], server, "response trailers pass: {r}");
    assert_eq!(r["big"]["reply"], 5_000_000, "{r}");
    assert_eq!(r["big_up"]["reply"], "echo:", "{r}");
}

#[test]
fn every_kind_of_call_over_h2c_and_tls_to_grpc_and_grpcs_upstreams() {
    let dir = temp_dir("grpc");
    certificates(&dir);
    let cert_path = dir.join("server.pem").display().to_string();
    let key_path = dir.join("server.key").display().to_string();
    let ca = dir.join("ca.pem").display().to_string();
    let plain = PyServer::start("grpcpeer.py", &["serve", "plain"]);
    let secure = PyServer::start("grpcpeer.py", &["serve", "secure", &cert_path, &key_path]);
    let cert = std::fs::read_to_string(&cert_path).unwrap();
    let key = std::fs::read_to_string(&key_path).unwrap();
    let tls_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "[[ssls]]\nid = \"s\"\nsnis = [\"localhost\"]\ncert = '''{cert}'''\nkey = '''{key}'''\n\
             [[routes]]\nuri = \"/test.Echo/*\"\nhosts = [\"localhost\"]\n\
             upstream = {{ scheme = \"grpcs\", pass_host = \"rewrite\", upstream_host = \"localhost\", nodes = {{ \"{}\" = 1 }}, tls = {{ verify = false }} }}\n\
             [[routes]]\nuri = \"/test.Echo/*\"\nupstream = {{ scheme = \"grpc\", nodes = {{ \"{}\" = 1 }} }}\n",
            secure.addr(),
            plain.addr()
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\n[gateway.http2]\nh2c = true"),
    );
    // h2c to the gateway, grpc (h2c) to the server.
    assert_all_kinds(&grpc(&["call", &format!("127.0.0.1:{}", gw.port)]), "plain");
    // TLS (h2 by ALPN) to the gateway as "localhost", grpcs to the server.
    assert_all_kinds(
        &grpc(&["call", &format!("127.0.0.1:{tls_port}"), &ca]),
        "secure",
    );
    assert!(
        gw.wait_for_event(|_| gw
            .access_log()
            .contains("\"POST /test.Echo/Unary HTTP/2.0\" 200")),
        "{}",
        gw.access_log()
    );
}

#[test]
fn gateway_errors_on_grpc_routes_are_grpc_statuses() {
    let server = PyServer::start("grpcpeer.py", &["serve", "g"]);
    let dead = free_port();
    let gw = Gateway::start_with(
        &format!(
            "[[consumers]]\nusername = \"app\"\nplugins.key-auth = {{ key = \"k1\" }}\n\
             [[routes]]\nuri = \"/test.Echo/Unary\"\nplugins.key-auth = {{}}\n\
             upstream = {{ scheme = \"grpc\", nodes = {{ \"{0}\" = 1 }} }}\n\
             [[routes]]\nuri = \"/test.Echo/Slow\"\ntimeout = {{ connect = 2, send = 2, read = 1 }}\n\
             upstream = {{ scheme = \"grpc\", nodes = {{ \"{0}\" = 1 }} }}\n\
             [[routes]]\nuri = \"/test.Echo/Name\"\nupstream = {{ scheme = \"grpc\", retries = 0, nodes = {{ \"127.0.0.1:{dead}\" = 1 }} }}\n",
            server.addr()
        ),
        "[gateway.http2]\nh2c = true",
    );
    let target = format!("127.0.0.1:{}", gw.port);
    // key-auth's 401: UNAUTHENTICATED with its message.
    let r = grpc(&["one", &target, "Unary"]);
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    assert_eq!(r["details"], "Missing API key in request", "{r}");
    // No route: 404 is UNIMPLEMENTED.
    let r = grpc(&["one", &target, "Fail"]);
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");
    // A node that refuses connections: 502 is UNAVAILABLE.
    let r = grpc(&["one", &target, "Name"]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    // The route's read timeout (1 s) before the server's answer (3 s): DEADLINE_EXCEEDED
    // from the gateway (the client's own deadline is 10 s).
    let r = grpc(&["one", &target, "Slow", "3"]);
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert!(r["details"].as_str().unwrap().contains("upstream"), "{r}");
    // A gRPC route over HTTP/1.1: refused (gRPC upstreams are reached over HTTP/2).
    let resp = gw.client().request(
        "POST",
        "/test.Echo/Slow",
        &[("Content-Type", "application/grpc")],
        b"",
    );
    assert_eq!(resp.status, 400);
}

#[test]
fn the_gateway_enforces_grpc_timeout_itself() {
    // A server that takes calls and never answers, behind a route whose read timeout is
    // long: the call's own grpc-timeout (1 s) is what ends it, from the gateway.
    let silent = PyServer::start("h2peer.py", &["serve_silent", "0"]);
    let gw = Gateway::start_with(
        &format!(
            "[[routes]]\nuri = \"/test.Echo/*\"\ntimeout = {{ connect = 2, send = 30, read = 60 }}\n\
             upstream = {{ scheme = \"grpc\", nodes = {{ \"{}\" = 1 }} }}\n",
            silent.addr()
        ),
        "[gateway.http2]\nh2c = true",
    );
    let r = py::report(
        "h2peer.py",
        &["grpc_call", &gw.port.to_string(), "/test.Echo/Unary", "1S"],
    );
    // Trailers-only: the status is in the one HEADERS frame.
    assert_eq!(r["headers"][":status"], "200", "{r}");
    assert_eq!(r["headers"]["grpc-status"], "4", "DEADLINE_EXCEEDED: {r}");
    assert!(
        r["seconds"].as_f64().unwrap() < 10.0,
        "ended by the 1 s deadline: {r}"
    );
}
