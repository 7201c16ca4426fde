//! TLS on both sides through real sockets: the gateway's TLS listener (SNI, key types,
//! client certificates, live certificate changes, resumption, bad handshakes) and TLS
//! towards upstreams (verification, mutual TLS, SNI, pooling, https health checks). Clients
//! are rustls (the harness client), openssl s_client and curl; TLS backends are rustls.

use crate::harness::tls::{client_config, issue, pair, served, server_config};
use crate::harness::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An `[[ssls]]` table for certificate `name` of `dir`, served for `snis`.
fn ssl(dir: &Path, id: &str, snis: &[&str], name: &str, extra: &str) -> String {
    let (cert, key) = pair(dir, name);
    format!("[[ssls]]\nid = \"{id}\"\nsnis = {snis:?}\ncert = '''{cert}'''\nkey = '''{key}'''\n{extra}\n")
}

fn tls_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `openssl s_client` against the TLS port with `args`; its output.
fn s_client(port: u16, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sni_picks_the_certificate_and_routes_see_the_tls_facts() {
    let dir = temp_dir("tls-sni");
    certificates(&dir);
    issue(&dir, "a", "/CN=a.test", Some("DNS:a.test"), "ca", false);
    issue(&dir, "w", "/CN=w.test", Some("DNS:*.w.test"), "ca", false);
    let be = Backend::start(|s| {
        Reply::ok(&format!(
            "{} {}",
            s.header("x-forwarded-proto").unwrap_or("-"),
            s.header("x-forwarded-port").unwrap_or("-"),
        ))
    });
    let tls_port = free_port();
    let body = format!(
        "{}{}{}
[[routes]]
uri = \"/*\"
upstream = {{ nodes = {{ \"{}\" = 1 }} }}
[[routes]]
uri = \"/sni\"
vars = [[\"ssl_server_name\", \"==\", \"x.w.test\"]]
plugins.response-rewrite = {{ body = \"wildcard route\" }}
upstream = {{ nodes = {{ \"{}\" = 1 }} }}
[[routes]]
uri = \"/scheme\"
vars = [[\"scheme\", \"==\", \"https\"]]
plugins.response-rewrite = {{ body = \"https route\" }}
upstream = {{ nodes = {{ \"{}\" = 1 }} }}
",
        ssl(&dir, "a", &["a.test"], "a", ""),
        ssl(&dir, "w", &["*.w.test"], "w", ""),
        ssl(&dir, "ip", &["localhost"], "server", ""),
        be.addr(),
        be.addr(),
        be.addr(),
    );
    let gw = Gateway::start_with(&body, &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"));
    let config = client_config(&dir, None);

    // Exact name.
    let mut c = Client::connect_tls(tls_addr(tls_port), config.clone(), Some("a.test")).unwrap();
    assert!(served(&c).contains("CN = a.test"), "{}", served(&c));
    let r = c.get("/");
    assert_eq!(r.text(), format!("https {tls_port}"));
    assert_eq!(c.get("/scheme").text(), "https route");
    // The route for another name does not match this one.
    assert_eq!(c.get("/sni").text(), format!("https {tls_port}"));

    // Wildcard.
    let mut c = Client::connect_tls(tls_addr(tls_port), config.clone(), Some("x.w.test")).unwrap();
    assert!(served(&c).contains("CN = w.test"), "{}", served(&c));
    assert_eq!(c.get("/sni").text(), "wildcard route");

    // No certificate for the name: the handshake fails with an alert, logged.
    let err = Client::connect_tls(tls_addr(tls_port), config.clone(), Some("nope.test"))
        .err()
        .expect("no certificate for nope.test");
    assert!(err.to_string().contains("InternalError"), "{err}");
    assert!(
        gw.wait_for_event(|e| e.contains("failed to match any SSL certificate by SNI: nope.test"))
    );
    // No SNI at all (an IP address is never sent as SNI) and no fallback_sni: refused.
    assert!(Client::connect_tls(tls_addr(tls_port), config.clone(), None).is_err());

    // curl agrees (its own TLS stack), and the plain port is still plain.
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["--resolve", &format!("a.test:{tls_port}:127.0.0.1")])
        .arg(format!("https://a.test:{tls_port}/scheme"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "https route");
    assert_eq!(gw.get("/").text(), format!("http {}", gw.port));
    assert_eq!(gw.get("/scheme").text(), format!("http {}", gw.port));

    // With fallback_sni, a client that sends no SNI gets that name's certificate.
    drop(gw);
    let tls_port = free_port();
    let _gw = Gateway::start_with(
        &body,
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\nfallback_sni = \"localhost\""),
    );
    let mut c = Client::connect_tls(tls_addr(tls_port), config, None).unwrap();
    assert!(served(&c).contains("CN = 127.0.0.1"), "{}", served(&c));
    assert_eq!(c.get("/scheme").text(), "https route");
}

#[test]
fn rsa_and_ecdsa_are_served_side_by_side_by_the_clients_preference() {
    let dir = temp_dir("tls-keys");
    certificates(&dir);
    issue(&dir, "ec", "/CN=a.test", Some("DNS:a.test"), "ca", false);
    issue(&dir, "rsa", "/CN=a.test", Some("DNS:a.test"), "ca", true);
    let (rsa_cert, rsa_key) = pair(&dir, "rsa");
    let extra = format!("certs = ['''{rsa_cert}''']\nkeys = ['''{rsa_key}''']");
    let be = Backend::named("b");
    let tls_port = free_port();
    let _gw = Gateway::start_with(
        &format!(
            "{}{}",
            ssl(&dir, "a", &["a.test"], "ec", &extra),
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), "")
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"),
    );
    let key_of = |sigalgs: &str, version: &str| {
        let out = s_client(
            tls_port,
            &["-servername", "a.test", "-sigalgs", sigalgs, version],
        );
        let line = out
            .lines()
            .find(|l| l.contains("Server public key is"))
            .unwrap_or_else(|| panic!("no handshake: {out}"))
            .to_string();
        line
    };
    for version in ["-tls1_3", "-tls1_2"] {
        assert!(
            key_of("ECDSA+SHA256", version).contains("256 bit"),
            "{version}"
        );
        assert!(
            key_of("RSA-PSS+SHA256:RSA+SHA256", version).contains("2048 bit"),
            "{version}"
        );
    }
}

/// A request through the Admin API (store provider) at `port`.
fn admin(port: u16, method: &str, path: &str, body: &serde_json::Value) -> Response {
    Client::connect(([127, 0, 0, 1], port).into()).request(
        method,
        path,
        &[
            ("X-API-KEY", "tls-test-key"),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

#[test]
fn certificates_change_live_for_new_handshakes_and_open_connections_keep_theirs() {
    let dir = temp_dir("tls-live");
    certificates(&dir);
    issue(&dir, "a1", "/CN=a-first", Some("DNS:a.test"), "ca", false);
    issue(&dir, "a2", "/CN=a-second", Some("DNS:a.test"), "ca", false);
    issue(&dir, "b", "/CN=b.test", Some("DNS:b.test"), "ca", false);
    let be = Backend::named("b");
    let (tls_port, admin_port) = (free_port(), free_port());
    let gw = Gateway::start_with(
        &format!(
            "{}\n[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\nadmin_key = \"tls-test-key\"\n",
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""),
            dir.join("store").display()
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\nworkers = 2"),
    );
    let wait_admin = Instant::now();
    while TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(wait_admin.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let put = |id: &str, name: &str, sni: &str| {
        let (cert, key) = pair(&dir, name);
        let r = admin(
            admin_port,
            "PUT",
            &format!("/apisix/admin/ssls/{id}"),
            &serde_json::json!({"cert": cert, "key": key, "snis": [sni]}),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    };
    // A fresh client each time: a resumed session would show the certificate of the session
    // it resumes (as it should), not the one configured now.
    let connect =
        |sni: &str| Client::connect_tls(tls_addr(tls_port), client_config(&dir, None), Some(sni));

    // No certificate yet: handshakes fail.
    assert!(connect("a.test").is_err());
    put("a", "a1", "a.test");
    let mut held = connect("a.test").unwrap();
    assert!(served(&held).contains("a-first"));
    assert_eq!(held.get("/").text(), "b");

    // Added: b.test works for new handshakes (on every worker: several connections).
    put("b", "b", "b.test");
    for _ in 0..6 {
        let mut c = connect("b.test").unwrap();
        assert_eq!(c.get("/").text(), "b");
    }
    // Replaced: new handshakes see the new certificate; the open connection keeps serving.
    put("a", "a2", "a.test");
    for _ in 0..6 {
        assert!(served(&connect("a.test").unwrap()).contains("a-second"));
    }
    assert_eq!(held.get("/").text(), "b");
    assert!(served(&held).contains("a-first"));
    // Removed: new handshakes fail; the open connection still serves.
    let r = admin(
        admin_port,
        "DELETE",
        "/apisix/admin/ssls/a",
        &serde_json::json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..6 {
        assert!(connect("a.test").is_err());
    }
    assert_eq!(held.get("/").text(), "b");
    assert!(connect("b.test").is_ok());
    // A certificate whose key is not its own is refused, naming the problem; the old one
    // keeps serving.
    let (cert, _) = pair(&dir, "b");
    let (_, wrong_key) = pair(&dir, "a1");
    let r = admin(
        admin_port,
        "PUT",
        "/apisix/admin/ssls/b",
        &serde_json::json!({"cert": cert, "key": wrong_key, "snis": ["b.test"]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key"), "{}", r.text());
    assert!(connect("b.test").is_ok());
    drop(gw);
}

#[test]
fn client_certificates_are_required_verified_and_routed_on() {
    let dir = temp_dir("tls-mtls");
    certificates(&dir);
    issue(&dir, "m", "/CN=m.test", Some("DNS:m.test"), "ca", false);
    issue(&dir, "client", "/O=Shard/CN=client", None, "ca", false);
    issue(&dir, "stranger", "/CN=stranger", None, "other", false);
    issue(&dir, "d", "/CN=d.test", Some("DNS:d.test"), "ca", false);
    // A client certificate two below the CA: issued by an intermediate, sent with it.
    std::fs::write(
        dir.join("inter.ext"),
        "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(&dir, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout inter.key -out inter.csr -subj /CN=intermediate");
    openssl(&dir, "x509 -req -in inter.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out inter.pem -days 2 -extfile inter.ext");
    issue(&dir, "deep", "/CN=deep", None, "inter", false);
    let (deep, deep_key) = pair(&dir, "deep");
    let (inter, _) = pair(&dir, "inter");
    std::fs::write(dir.join("deepchain.pem"), format!("{deep}{inter}")).unwrap();
    std::fs::write(dir.join("deepchain.key"), deep_key).unwrap();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let be = Backend::start(|s| {
        Reply::ok(&format!(
            "proto {}",
            s.header("x-forwarded-proto").unwrap_or("-")
        ))
    });
    let tls_port = free_port();
    let client_ca = |depth: u32| format!("client = {{ ca = '''{ca}''', depth = {depth} }}");
    let gw = Gateway::start_with(
        &format!(
            "{}{}
[[routes]]
uri = \"/*\"
upstream = {{ nodes = {{ \"{}\" = 1 }} }}
[[routes]]
uri = \"/who\"
vars = [[\"ssl_client_s_dn\", \"==\", \"CN=client,O=Shard\"]]
plugins.response-rewrite = {{ body = \"hello client\" }}
upstream = {{ nodes = {{ \"{}\" = 1 }} }}
",
            ssl(&dir, "m", &["m.test"], "m", &client_ca(1)),
            ssl(&dir, "d", &["d.test"], "d", &client_ca(2)),
            be.addr(),
            be.addr()
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"),
    );
    // Without a certificate: nginx's 400, then the connection closes.
    let mut c = Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, None),
        Some("m.test"),
    )
    .unwrap();
    let r = c.get("/who");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("No required SSL certificate was sent"),
        "{}",
        r.text()
    );
    assert!(c.is_closed());
    // With one from the configured CA: served, and routed on its subject.
    let mut c = Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, Some("client")),
        Some("m.test"),
    )
    .unwrap();
    assert_eq!(c.get("/who").text(), "hello client");
    assert_eq!(c.get("/other").text(), "proto https");
    // One from another CA: refused at the handshake (TLS 1.3 clients learn it on their
    // first read).
    let refused = match Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, Some("stranger")),
        Some("m.test"),
    ) {
        Err(_) => true,
        Ok(mut c) => {
            c.send("GET", "/who", &[], b"");
            c.read_response(false).is_err()
        }
    };
    assert!(refused);
    assert!(gw.wait_for_event(|e| e.contains("TLS handshake with") && e.contains("failed")));
    // client.depth: the default (1) refuses a certificate two below the CA; depth 2 takes it.
    let deep = |sni: &str| match Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, Some("deepchain")),
        Some(sni),
    ) {
        Err(_) => None,
        Ok(mut c) => {
            c.send("GET", "/other", &[], b"");
            c.read_response(false).ok().map(|r| r.text())
        }
    };
    assert_eq!(deep("m.test"), None);
    assert_eq!(deep("d.test").as_deref(), Some("proto https"));
}

#[test]
fn sessions_resume_whichever_worker_the_client_lands_on() {
    let dir = temp_dir("tls-resume");
    certificates(&dir);
    issue(&dir, "a", "/CN=a.test", Some("DNS:a.test"), "ca", false);
    let be = Backend::named("b");
    let tls_port = free_port();
    let _gw = Gateway::start_with(
        &format!(
            "{}{}",
            ssl(&dir, "a", &["a.test"], "a", ""),
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), "")
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\nworkers = 2"),
    );
    // One client configuration: one session cache. The kernel spreads the connections over
    // both workers' listeners by source port; every one after the first resumes.
    let config = client_config(&dir, None);
    let mut kinds = Vec::new();
    for _ in 0..12 {
        let mut c =
            Client::connect_tls(tls_addr(tls_port), config.clone(), Some("a.test")).unwrap();
        // The response read also takes in the tickets sent after the handshake.
        assert_eq!(c.get("/").text(), "b");
        kinds.push(c.session().handshake_kind());
    }
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == Some(rustls::HandshakeKind::Resumed)),
        "{kinds:?}"
    );
    // openssl too, with TLS 1.2 tickets.
    let sess = dir.join("sess.pem");
    let sess = sess.to_str().unwrap();
    let tls12 = |flag: &str| s_client(tls_port, &["-servername", "a.test", "-tls1_2", flag, sess]);
    let first = tls12("-sess_out");
    assert!(first.contains("New, TLSv1.2"), "{first}");
    for _ in 0..4 {
        let again = tls12("-sess_in");
        assert!(again.contains("Reused, TLSv1.2"), "{again}");
    }
}

#[test]
fn protocol_versions_per_certificate_and_bad_handshakes_block_nothing() {
    let dir = temp_dir("tls-bad");
    certificates(&dir);
    issue(&dir, "a", "/CN=a.test", Some("DNS:a.test"), "ca", false);
    issue(&dir, "t", "/CN=t.test", Some("DNS:t.test"), "ca", false);
    let be = Backend::named("b");
    let tls_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "{}{}{}",
            ssl(&dir, "a", &["a.test"], "a", ""),
            ssl(&dir, "t", &["t.test"], "t", "ssl_protocols = [\"TLSv1.3\"]"),
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), "")
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\nworkers = 1\nssl_handshake_timeout = 1"),
    );
    // ssl_protocols: t.test speaks TLS 1.3 only, a.test both.
    assert!(s_client(tls_port, &["-servername", "t.test", "-tls1_3"]).contains("TLSv1.3"));
    let old = s_client(tls_port, &["-servername", "t.test", "-tls1_2"]);
    assert!(old.contains("alert protocol version"), "{old}");
    assert!(s_client(tls_port, &["-servername", "a.test", "-tls1_2"]).contains("TLSv1.2"));

    // Stalled handshakes (silent, or half a ClientHello) hold the only worker's attention
    // not at all, and are closed at ssl_handshake_timeout.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
            .unwrap()
            .count()
    };
    assert_eq!(gw.get("/").text(), "b"); // the pooled upstream connection, there from now on
    let fds_before = fds();
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(tls_addr(tls_port)).unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        }
        stalled.push(s);
    }
    // Garbage instead of a ClientHello: closed.
    let mut junk = TcpStream::connect(tls_addr(tls_port)).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);
    assert!(!String::from_utf8_lossy(&sink).contains("HTTP/1.1 200"));
    let start = Instant::now();
    let mut c = Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, None),
        Some("a.test"),
    )
    .unwrap();
    assert_eq!(c.get("/").text(), "b");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        // Closed by the gateway (end of stream, or an alert and then the end).
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let waited = matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                    assert!(!waited, "a stalled handshake was not closed");
                    break;
                }
            }
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(gw.wait_for_event(|e| e.contains("TLS handshake with") && e.contains("timed out")));
    assert_eq!(gw.get("/").text(), "b");
    // Nothing kept: the gateway's descriptors are back to what they were.
    drop(c);
    let settle = Instant::now();
    while fds() > fds_before && settle.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fds() <= fds_before,
        "{} descriptors, {fds_before} before",
        fds()
    );

    // Refused at validation, naming the field: a key type rustls does not take (ECDSA
    // P-521), TLS 1.1 alone, listen_tls garbage.
    openssl(
        &dir,
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-521 -nodes -keyout p521.key -out p521.pem -days 1 -subj /CN=p521 -addext subjectAltName=DNS:p521.test",
    );
    let (ok, err) = check_config(&ssl(&dir, "p", &["p521.test"], "p521", ""));
    assert!(
        !ok && err.contains("ssls[0]") && err.contains("key"),
        "{err}"
    );
    let (ok, err) = check_config(&ssl(
        &dir,
        "x",
        &["x.test"],
        "a",
        "ssl_protocols = [\"TLSv1.1\"]",
    ));
    assert!(
        !ok && err.contains("ssls[0]") && err.contains("ssl_protocols"),
        "{err}"
    );
    let (ok, err) = check_config("[gateway]\nlisten_tls = [\"nope\"]\n");
    assert!(!ok && err.contains("gateway.listen_tls[0]"), "{err}");
}

/// The test certificates, and `wrong`: one for localhost from the other CA.
fn certificates_and_a_wrong_one(dir: &Path) {
    certificates(dir);
    let san = Some("DNS:localhost,IP:127.0.0.1");
    issue(dir, "wrong", "/CN=wrong", san, "other", false);
}

/// The body a TLS backend answers with: what it was asked and how.
fn tls_backend(dir: &Path, cert: &str, require_client: bool) -> Backend {
    Backend::start_tls(server_config(dir, cert, require_client), |s| {
        Reply::ok(&format!("host {}", s.header("host").unwrap_or("-")))
    })
}

#[test]
fn upstream_tls_verifies_shows_client_certificates_and_sends_sni() {
    let dir = temp_dir("tls-up");
    certificates_and_a_wrong_one(&dir);
    issue(&dir, "client", "/CN=gateway", None, "ca", false);
    let good = tls_backend(&dir, "server", false);
    let wrong = tls_backend(&dir, "wrong", false);
    let mtls = tls_backend(&dir, "server", true);
    let pooled = tls_backend(&dir, "server", false);
    let resumed = tls_backend(&dir, "server", false);
    let (cc, ck) = pair(&dir, "client");
    let route = |uri: &str, node: &Backend, upstream: &str| {
        let sep = if upstream.is_empty() { "" } else { ", " };
        format!(
            "[[routes]]\nuri = \"{uri}\"\nupstream = {{ scheme = \"https\", nodes = {{ \"{}\" = 1 }}{sep}{upstream} }}\n",
            node.addr()
        )
    };
    let body = [
        route(
            "/verified",
            &good,
            "pass_host = \"rewrite\", upstream_host = \"localhost\", tls = { verify = true }",
        ),
        route(
            "/wrong-ca",
            &wrong,
            "pass_host = \"rewrite\", upstream_host = \"localhost\", tls = { verify = true }",
        ),
        route("/unverified", &wrong, "tls = { verify = false }"),
        route(
            "/fixed-sni",
            &good,
            "tls = { verify = true, sni = \"localhost\" }",
        ),
        route(
            "/mtls",
            &mtls,
            &format!("tls = {{ client_cert = '''{cc}''', client_key = '''{ck}''' }}"),
        ),
        route("/mtls-id", &mtls, "tls = { client_cert_id = \"cc\" }"),
        route("/no-cert", &mtls, "retries = 0"),
        route("/pooled", &pooled, ""),
        route("/resumed", &resumed, "keepalive_pool = { requests = 1 }"),
        format!("[[ssls]]\nid = \"cc\"\ntype = \"client\"\ncert = '''{cc}'''\nkey = '''{ck}'''\n"),
    ]
    .concat();
    let gw = Gateway::start_with(
        &body,
        &format!(
            "ssl_trusted_certificate = \"{}\"",
            dir.join("ca.pem").display()
        ),
    );
    // Verified against the trusted CA, SNI = the Host sent upstream (without a port).
    let r = gw.get("/verified");
    assert_eq!((r.status, r.text()), (200, "host localhost".into()));
    let first = &good.handshakes()[0];
    assert_eq!(
        (first.sni.as_deref(), first.client_cert),
        (Some("localhost"), false)
    );
    // A certificate from another CA: 502, and the log says why.
    let r = gw.get("/wrong-ca");
    assert_eq!(r.status, 502);
    assert!(gw.wait_for_event(
        |e| e.contains("TLS handshake with upstream") && e.contains("UnknownIssuer")
    ));
    // verify = false (APISIX's default) takes it.
    assert_eq!(gw.get("/unverified").status, 200);
    // tls.sni: sent and verified whatever the Host.
    let mut c = gw.client();
    let r = c.request("GET", "/fixed-sni", &[("Host", "elsewhere.test")], b"");
    assert_eq!((r.status, r.text()), (200, "host elsewhere.test".into()));
    // Mutual TLS: the backend requires a certificate; inline or from an ssls object.
    assert_eq!(gw.get("/mtls").status, 200);
    assert_eq!(gw.get("/mtls-id").status, 200);
    assert!(mtls.handshakes().iter().all(|h| h.client_cert));
    assert_eq!(gw.get("/no-cert").status, 502);

    // The pool: one connection per SNI, reused for the same name only.
    let mut c = gw.client();
    for host in ["one.test", "one.test", "two.test", "one.test", "two.test"] {
        let r = c.request("GET", "/pooled", &[("Host", host)], b"");
        assert_eq!(r.text(), format!("host {host}"));
    }
    let mut snis: Vec<_> = pooled.handshakes().into_iter().map(|h| h.sni).collect();
    snis.sort();
    assert_eq!(snis, vec![Some("one.test".into()), Some("two.test".into())]);
    assert_eq!(pooled.connections(), 2);
    // A new connection to a node resumes the session of the last one.
    for _ in 0..3 {
        assert_eq!(gw.get("/resumed").status, 200);
    }
    let kinds: Vec<bool> = resumed.handshakes().iter().map(|h| h.resumed).collect();
    assert_eq!(kinds, vec![false, true, true]);

    // A client_cert_id naming nothing, or a server certificate: refused naming the field.
    for (id, why) in [("none", "not found"), ("srv", "wrong ssl type")] {
        let (sc, sk) = pair(&dir, "server");
        let text = format!(
            "[[ssls]]\nid = \"srv\"\nsnis = [\"localhost\"]\ncert = '''{sc}'''\nkey = '''{sk}'''\n[[upstreams]]\nid = \"u\"\nscheme = \"https\"\nnodes = {{ \"127.0.0.1:1\" = 1 }}\ntls = {{ client_cert_id = \"{id}\" }}\n"
        );
        let (ok, err) = check_config(&text);
        assert!(
            !ok && err.contains("tls.client_cert_id") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn https_health_checks_eject_a_node_whose_certificate_fails() {
    let dir = temp_dir("tls-health");
    certificates_and_a_wrong_one(&dir);
    let good = Backend::start_tls(server_config(&dir, "server", false), |_| Reply::ok("good"));
    let bad = Backend::start_tls(server_config(&dir, "wrong", false), |_| Reply::ok("bad"));
    let control = free_port();
    let gw = Gateway::start_with(
        &upstream_config(
            &nodes_map(&[(&good.addr(), 1), (&bad.addr(), 1)]),
            "scheme = \"https\"
[upstreams.checks.active]
type = \"https\"
https_verify_certificate = true
host = \"localhost\"
http_path = \"/health\"
timeout = 1
healthy = { interval = 1, successes = 1 }
unhealthy = { interval = 1, tcp_failures = 1, http_failures = 1 }
",
        ),
        &format!(
            "control_listen = \"127.0.0.1:{control}\"\nssl_trusted_certificate = \"{}\"",
            dir.join("ca.pem").display()
        ),
    );
    let bad_port: u16 = bad.addr().rsplit(':').next().unwrap().parse().unwrap();
    let good_port: u16 = good.addr().rsplit(':').next().unwrap().parse().unwrap();
    wait_status(control, "u", bad_port, "unhealthy", Duration::from_secs(6));
    wait_status(control, "u", good_port, "healthy", Duration::from_secs(6));
    // Traffic (not verified: APISIX's default) now goes to the good node only.
    for _ in 0..10 {
        assert_eq!(gw.get("/x").text(), "good");
    }
    assert!(gw.events().contains("https probe") && gw.events().contains("UnknownIssuer"));
    assert!(good.requests_for("/health") >= 1);
}

#[test]
fn large_https_bodies_both_ways_are_byte_identical_in_bounded_memory() {
    use crate::harness::backend::{fill_pattern, Fnv};
    const SIZE: u64 = 256 << 20;
    let dir = temp_dir("tls-big");
    certificates(&dir);
    issue(&dir, "a", "/CN=a.test", Some("DNS:a.test"), "ca", false);
    let be = Backend::start_tls(server_config(&dir, "server", false), |s| {
        if s.method == "POST" {
            Reply::ok(&format!("{} {:x}", s.body_len, s.body_hash))
        } else {
            Reply::Pattern(SIZE)
        }
    });
    let tls_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "{}{}",
            ssl(&dir, "a", &["a.test"], "a", ""),
            upstream_config(
                &nodes_map(&[(&be.addr(), 1)]),
                "scheme = \"https\"\ntimeout = { connect = 5, send = 60, read = 60 }"
            )
        ),
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"),
    );
    let (stop, peak) = crate::bodies::watch_rss(gw.child.id());
    let mut c = Client::connect_tls(
        tls_addr(tls_port),
        client_config(&dir, None),
        Some("a.test"),
    )
    .unwrap();
    // Upload: the whole body, then the answer (the gateway answers after the body).
    c.send_raw(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let mut hash = Fnv::default();
    let mut piece = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < SIZE {
        fill_pattern(&mut piece, off);
        hash.update(&piece);
        c.send_raw(&piece);
        off += piece.len() as u64;
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), format!("{SIZE} {:x}", hash.0));
    // Download on the same connection.
    let r = c.get("/download");
    assert_eq!(r.body.len() as u64, SIZE);
    let mut expect = vec![0u8; SIZE as usize];
    fill_pattern(&mut expect, 0);
    assert!(r.body == expect, "downloaded bytes differ");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = peak.join().unwrap();
    assert!(
        peak > 0 && peak < 96 * 1024,
        "gateway RSS peaked at {peak} KiB"
    );
}
