//! Response compression (issue #15): the `gzip` and `brotli` plugins with curl as the client, bodies
//! byte-identical after decoding, the Accept-Encoding negotiation and the cases that are
//! never compressed.

use crate::harness::*;
use std::process::Command;

/// A 16 KiB JSON document.
fn json_body() -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 16 * 1024 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"a\",\"b\"]}}"
        ));
        i += 1;
    }
    s.push(']');
    s
}

/// A chunked JSON response carrying `body` in pieces of `piece` bytes.
fn chunked_json(body: &str, piece: usize) -> Vec<u8> {
    let mut r =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for p in body.as_bytes().chunks(piece) {
        r.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        r.extend_from_slice(p);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// curl with `args`: (response head, body).
fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let dir = temp_dir("gz");
    let head = dir.join("head");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&head)
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(head).unwrap().to_lowercase(),
        out.stdout,
    )
}

#[test]
fn gzip_and_brotli_compress_what_they_should_and_nothing_else() {
    let json = json_body();
    let body = json.clone();
    let be = Backend::start(move |s| {
        let ct = |t: &str| ("Content-Type".to_string(), t.to_string());
        match s.target.as_str() {
            "/json" | "/head" => Reply::Full(
                200,
                vec![ct("application/json"), ("ETag".into(), "\"v1\"".into())],
                body.clone().into_bytes(),
            ),
            "/chunked" => Reply::Raw(chunked_json(&body, 5000)),
            "/encoded" => Reply::Full(
                200,
                vec![
                    ct("application/json"),
                    ("Content-Encoding".into(), "br".into()),
                ],
                b"not really brotli".to_vec(),
            ),
            "/small" => Reply::Full(200, vec![ct("application/json")], b"[1,2]".to_vec()),
            "/png" => Reply::Full(200, vec![ct("image/png")], vec![7u8; 4096]),
            _ => Reply::Full(204, vec![], vec![]),
        }
    });
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/both/*\"\nplugins.gzip = {{ types = \"*\" }}\n\
         plugins.brotli = {{ types = [\"application/json\"], comp_level = 5, mode = 1 }}\n\
         plugins.proxy-rewrite = {{ regex_uri = [\"^/both(/.*)\", \"$1\"] }}\n\
         upstream = {{ nodes = {{ \"{0}\" = 1 }} }}\n\
         [[routes]]\nuri = \"/*\"\nplugins.gzip = {{ types = [\"application/json\"], vary = true }}\n\
         upstream = {{ nodes = {{ \"{0}\" = 1 }} }}\n",
        be.addr()
    ));
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", gw.port);

    // Content-Length and chunked upstreams: gzip, byte-identical after decoding.
    for path in ["/json", "/chunked"] {
        let (head, got) = curl(&["--compressed", &url(path)]);
        assert!(head.contains("content-encoding: gzip"), "{path}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{path}: {head}");
        assert!(!head.contains("content-length"), "{path}: {head}");
        assert_eq!(got, json.as_bytes(), "{path}: decoded body");
    }
    // The compressed size is what went on the wire, and a strong ETag is weakened.
    let (head, raw) = curl(&["-H", "Accept-Encoding: gzip", &url("/json")]);
    assert!(
        raw.len() < json.len() / 3,
        "{} of {}",
        raw.len(),
        json.len()
    );
    assert!(head.contains("etag: w/\"v1\""), "{head}");

    // Negotiation: refused by q=0, not offered, or accepted through `*`.
    let encoding = |ae: &str| {
        let (head, _) = curl(&["-H", &format!("Accept-Encoding: {ae}"), &url("/json")]);
        head.contains("content-encoding: gzip")
    };
    assert!(encoding("gzip"));
    assert!(encoding("br;q=1.0, gzip;q=0.5"));
    assert!(encoding("*"));
    assert!(!encoding("gzip;q=0"));
    assert!(!encoding("br, deflate"));
    assert!(!encoding("*, gzip;q=0"));
    assert!(!encoding("identity"));

    // Never compressed: already encoded, too small, a type not listed, HEAD, 204.
    let (head, got) = curl(&["-H", "Accept-Encoding: gzip", &url("/encoded")]);
    assert!(
        head.contains("content-encoding: br") && got == b"not really brotli",
        "{head}"
    );
    let (head, got) = curl(&["-H", "Accept-Encoding: gzip", &url("/small")]);
    assert!(
        !head.contains("content-encoding") && got == b"[1,2]",
        "{head}"
    );
    let (head, _) = curl(&["-H", "Accept-Encoding: gzip", &url("/png")]);
    assert!(
        !head.contains("content-encoding") && head.contains("content-length: 4096"),
        "{head}"
    );
    let (head, _) = curl(&["-I", "-H", "Accept-Encoding: gzip", &url("/head")]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(
        head.contains("content-length: 16387"),
        "HEAD keeps its length: {head}"
    );
    let (head, _) = curl(&["-H", "Accept-Encoding: gzip", &url("/none")]);
    assert!(
        head.starts_with("http/1.1 204") && !head.contains("content-encoding"),
        "{head}"
    );

    // brotli beside gzip: br where the client takes it (brotli runs first), gzip otherwise.
    for path in ["/both/json", "/both/chunked"] {
        let (head, got) = curl(&["--compressed", &url(path)]);
        assert!(head.contains("content-encoding: br"), "{path}: {head}");
        assert_eq!(got, json.as_bytes(), "{path}: decoded brotli body");
    }
    let (head, _) = curl(&["-H", "Accept-Encoding: gzip", &url("/both/json")]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let (head, raw) = curl(&[
        "-H",
        "Accept-Encoding: br;q=1, gzip;q=0.1",
        &url("/both/json"),
    ]);
    assert!(head.contains("content-encoding: br"), "{head}");
    assert!(
        raw.len() < json.len() / 3,
        "{} of {}",
        raw.len(),
        json.len()
    );
    // brotli's types exclude image/png, and gzip's "*" takes it.
    let (head, _) = curl(&["-H", "Accept-Encoding: br, gzip", &url("/both/png")]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
}

#[test]
fn zstd_goes_first_for_clients_that_take_it() {
    let json = json_body();
    let body = json.clone();
    let be = Backend::start(move |s| {
        if s.target == "/chunked" {
            return Reply::Raw(chunked_json(&body, 7000));
        }
        Reply::Full(
            200,
            vec![("Content-Type".into(), "application/json".into())],
            body.clone().into_bytes(),
        )
    });
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/*\"\nplugins.zstd = {{ types = [\"application/json\"] }}\n\
         plugins.brotli = {{ types = [\"application/json\"] }}\n\
         plugins.gzip = {{ types = [\"application/json\"] }}\n\
         upstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        be.addr()
    ));
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", gw.port);
    // curl offers gzip, br and zstd: zstd, decoded byte-identical by curl's libzstd.
    for path in ["/json", "/chunked"] {
        let (head, got) = curl(&["--compressed", &url(path)]);
        assert!(head.contains("content-encoding: zstd"), "{path}: {head}");
        assert_eq!(got, json.as_bytes(), "{path}: decoded zstd body");
    }
    let (_, raw) = curl(&["-H", "Accept-Encoding: zstd", &url("/json")]);
    assert!(
        raw.len() < json.len() / 3,
        "{} of {}",
        raw.len(),
        json.len()
    );
    let coding = |ae: &str| {
        let (head, _) = curl(&["-H", &format!("Accept-Encoding: {ae}"), &url("/json")]);
        head.lines()
            .find_map(|l| l.strip_prefix("content-encoding: "))
            .unwrap_or("identity")
            .trim()
            .to_string()
    };
    assert_eq!(coding("gzip, br"), "br");
    assert_eq!(coding("zstd;q=0, gzip"), "gzip");
    assert_eq!(coding("identity"), "identity");
}

#[test]
fn compression_config_errors_name_the_field() {
    let (ok, msg) = check_config(
        "[[routes]]\nuri = \"/\"\nplugins.zstd = { comp_level = 25 }\nupstream = { nodes = { \"127.0.0.1:1\" = 1 } }\n",
    );
    assert!(!ok && msg.contains("comp_level"), "{msg}");
    let (ok, msg) = check_config(
        "[[routes]]\nuri = \"/\"\nplugins.gzip = { comp_level = 12 }\nupstream = { nodes = { \"127.0.0.1:1\" = 1 } }\n",
    );
    assert!(!ok && msg.contains("comp_level"), "{msg}");
    let (ok, msg) = check_config(
        "[[routes]]\nuri = \"/\"\nplugins.brotli = { lgwin = 30 }\nupstream = { nodes = { \"127.0.0.1:1\" = 1 } }\n",
    );
    assert!(!ok && msg.contains("lgwin"), "{msg}");
}

#[test]
fn compressed_bytes_flow_before_the_upstream_finishes() {
    // The upstream sends half its body, pauses 3 s, then the rest: the client must see
    // compressed body bytes during the pause, and the whole body decodes at the end.
    let json = json_body();
    let (a, b) = json.as_bytes().split_at(json.len() / 2);
    let chunk = |p: &[u8]| [format!("{:x}\r\n", p.len()).as_bytes(), p, b"\r\n"].concat();
    let first = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .as_slice(),
        &chunk(a),
    ]
    .concat();
    let rest = [chunk(b).as_slice(), b"0\r\n\r\n"].concat();
    let be = Backend::start(move |_| {
        Reply::RawThen(
            first.clone(),
            std::time::Duration::from_secs(3),
            rest.clone(),
        )
    });
    let gw = Gateway::start(&format!(
        "[[routes]]\nuri = \"/*\"\nplugins.gzip = {{ types = [\"application/json\"] }}\n\
         upstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        be.addr()
    ));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.write_all(
        b"GET /s HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
        .unwrap();
    let mut early = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        early.extend_from_slice(&buf[..n]);
    }
    let head_end = early
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head came before the pause")
        + 4;
    assert!(
        String::from_utf8_lossy(&early[..head_end])
            .to_lowercase()
            .contains("content-encoding: gzip"),
        "{}",
        String::from_utf8_lossy(&early[..head_end])
    );
    assert!(
        early.len() > head_end + 100,
        "compressed bytes of the first half arrived during the pause"
    );
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.read_to_end(&mut early).unwrap();
    // De-chunk, then gunzip, and compare.
    let mut body = Vec::new();
    let mut rest = &early[head_end..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, json.as_bytes());
}
