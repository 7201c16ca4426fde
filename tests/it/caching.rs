//! The response cache (issue #15): the `proxy-cache` plugin on memory and disk zones, through
//! real sockets: MISS then HIT, TTL expiry, Cache-Control, bypass and no_cache, PURGE, Vary,
//! disk entries surviving a restart, no partial entry ever served, eviction, request
//! collapsing, stale answers while the upstream is down, and how the cache meets gzip.

use crate::harness::backend::fill_pattern;
use crate::harness::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The zones every test here uses (`memory_cache`, and a disk zone under `dir`).
fn zones(dir: &std::path::Path, disk_size: &str) -> String {
    format!(
        "[gateway.proxy_cache]\ncache_ttl = \"10s\"\n\
         [[gateway.proxy_cache.zones]]\nname = \"disk_cache_one\"\nmemory_size = \"1m\"\n\
         disk_size = \"{disk_size}\"\ndisk_path = \"{}\"\ncache_levels = \"1:2\"\n\
         [[gateway.proxy_cache.zones]]\nname = \"memory_cache\"\nmemory_size = \"8m\"\n",
        dir.display()
    )
}

fn request(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    gw.client().request(method, path, headers, b"")
}

fn status(r: &Response) -> &str {
    r.header("apisix-cache-status").unwrap_or("-")
}

/// Files (complete entries and temporaries) under a disk zone.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Whether `path` is answered from the cache within 5 s (a disk entry is indexed once its
/// file is complete, a moment after the response).
fn becomes_hit(gw: &Gateway, path: &str) -> bool {
    wait_until(Duration::from_secs(5), || {
        status(&request(gw, "GET", path, &[])) == "HIT"
    })
}

#[test]
fn memory_cache_hits_expires_purges_and_honours_the_rules() {
    let be = Backend::start(|s| {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        let lang = s.header("accept-language").unwrap_or("none").to_string();
        match s.target.as_str() {
            "/a" | "/short/a" | "/cc/a" | "/hide/a" => Reply::Full(
                200,
                vec![
                    h("ETag", "\"v1\""),
                    h("Cache-Control", "public, max-age=1"),
                    h("Content-Type", "text/plain"),
                ],
                format!("body of {} #{}", s.target, s.method).into_bytes(),
            ),
            "/vary" => Reply::Full(200, vec![h("Vary", "Accept-Language")], lang.into_bytes()),
            "/vary-star" => Reply::Full(200, vec![h("Vary", "*")], b"x".to_vec()),
            "/private" => Reply::Full(200, vec![h("Cache-Control", "private")], b"p".to_vec()),
            "/no-store" => Reply::Full(200, vec![h("Cache-Control", "no-store")], b"n".to_vec()),
            "/cookie" => Reply::Full(200, vec![h("Set-Cookie", "a=b")], b"c".to_vec()),
            "/nc" => Reply::Full(200, vec![h("X-No-Cache", "1")], b"nc".to_vec()),
            "/error" => Reply::Full(500, vec![], b"e".to_vec()),
            "/missing" => Reply::Full(404, vec![], b"not here".to_vec()),
            "/empty" => Reply::Full(301, vec![h("Location", "/a")], vec![]),
            "/limit/big" => Reply::Pattern(2000),
            p if p.starts_with("/ev/") => Reply::Pattern(200 * 1024),
            _ => Reply::Full(200, vec![], b"other".to_vec()),
        }
    });
    let dir = temp_dir("cache-mem");
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let gw = Gateway::start_with(
        &format!(
            "{zones}\n\
             [[routes]]\nuri = \"/short/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", cache_ttl = 1 }}\n{up}\n\
             [[routes]]\nuri = \"/cc/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", cache_control = true }}\n{up}\n\
             [[routes]]\nuri = \"/limit/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", max_resp_body_size = 1000 }}\n{up}\n\
             [[routes]]\nuri = \"/hide/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", hide_cache_headers = true }}\n{up}\n\
             [[routes]]\nuri = \"/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", \
             cache_bypass = [\"$http_x_bypass\"], no_cache = [\"$upstream_http_x_no_cache\"] }}\n{up}\n",
            zones = zones(&dir, "10m")
        ),
        "workers = 2\n",
    );

    // MISS, then HIT with the upstream's fields (ETag, Content-Length) and an Age.
    let r = request(&gw, "GET", "/a", &[]);
    assert_eq!((r.status, status(&r)), (200, "MISS"), "{}", r.raw_head);
    assert_eq!(r.text(), "body of /a #GET");
    for _ in 0..4 {
        let r = request(&gw, "GET", "/a", &[]);
        assert_eq!((r.status, status(&r)), (200, "HIT"), "{}", r.raw_head);
        assert_eq!(r.text(), "body of /a #GET");
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("content-length"), Some("15"));
        assert!(r.header("age").is_some(), "{}", r.raw_head);
    }
    assert_eq!(be.requests_for("/a"), 1);
    // HEAD is answered from the GET's entry; a POST is not cached (MISS, as APISIX's
    // memory strategy says).
    let r = request(&gw, "HEAD", "/a", &[]);
    assert_eq!(
        (status(&r), r.header("content-length")),
        ("HIT", Some("15"))
    );
    assert!(r.body.is_empty());
    let r = request(&gw, "POST", "/a", &[]);
    assert_eq!(
        (status(&r), r.text().as_str()),
        ("MISS", "body of /a #POST")
    );
    assert_eq!(be.requests_for("/a"), 2);

    // cache_bypass: fetched from the upstream; no_cache (a response var): never stored.
    let r = request(&gw, "GET", "/a", &[("X-Bypass", "1")]);
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(be.requests_for("/a"), 3);
    let r = request(&gw, "GET", "/a", &[("X-Bypass", "0")]);
    assert_eq!(status(&r), "HIT", "\"0\" does not bypass");
    for _ in 0..2 {
        assert_eq!(status(&request(&gw, "GET", "/nc", &[])), "MISS");
    }
    assert_eq!(be.requests_for("/nc"), 2);

    // PURGE removes the entry (200), then there is nothing to purge (404).
    let r = request(&gw, "PURGE", "/a", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(request(&gw, "PURGE", "/a", &[]).status, 404);
    assert_eq!(status(&request(&gw, "GET", "/a", &[])), "MISS");

    // Vary: one entry per value of the listed request header; Vary: * is never stored.
    for (lang, expect) in [("en", "MISS"), ("en", "HIT"), ("fr", "MISS"), ("fr", "HIT")] {
        let r = request(&gw, "GET", "/vary", &[("Accept-Language", lang)]);
        assert_eq!((status(&r), r.text().as_str()), (expect, lang));
    }
    assert_eq!(be.requests_for("/vary"), 2);
    // PURGE takes every variant.
    assert_eq!(request(&gw, "PURGE", "/vary", &[]).status, 200);
    let r = request(&gw, "GET", "/vary", &[("Accept-Language", "fr")]);
    assert_eq!(status(&r), "MISS");
    // Never stored: Vary *, private, no-store, Set-Cookie, a status not listed.
    for path in ["/vary-star", "/private", "/no-store", "/cookie", "/error"] {
        for _ in 0..2 {
            let r = request(&gw, "GET", path, &[]);
            assert_eq!(status(&r), "MISS", "{path}");
        }
        assert_eq!(be.requests_for(path), 2, "{path}");
    }
    // Listed statuses are, body or not: 404, and a 301 without a body.
    for path in ["/missing", "/empty"] {
        assert_eq!(status(&request(&gw, "GET", path, &[])), "MISS");
        let r = request(&gw, "GET", path, &[]);
        assert_eq!(status(&r), "HIT", "{path}: {}", r.raw_head);
    }
    assert_eq!(request(&gw, "GET", "/missing", &[]).text(), "not here");
    assert_eq!(
        request(&gw, "GET", "/empty", &[]).header("location"),
        Some("/a")
    );

    // cache_ttl = 1: EXPIRED after it, then fresh again.
    assert_eq!(status(&request(&gw, "GET", "/short/a", &[])), "MISS");
    assert_eq!(status(&request(&gw, "GET", "/short/a", &[])), "HIT");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(status(&request(&gw, "GET", "/short/a", &[])), "EXPIRED");
    assert_eq!(status(&request(&gw, "GET", "/short/a", &[])), "HIT");
    assert_eq!(be.requests_for("/short/a"), 2);

    // cache_control: the upstream's max-age=1 is the TTL, and the request's directives count.
    assert_eq!(status(&request(&gw, "GET", "/cc/a", &[])), "MISS");
    assert_eq!(status(&request(&gw, "GET", "/cc/a", &[])), "HIT");
    let r = request(&gw, "GET", "/cc/a", &[("Cache-Control", "no-cache")]);
    assert_eq!(status(&r), "BYPASS");
    let r = request(&gw, "GET", "/cc/b", &[("Cache-Control", "only-if-cached")]);
    assert_eq!(r.status, 504);
    std::thread::sleep(Duration::from_millis(2100));
    let r = request(&gw, "GET", "/cc/a", &[("Cache-Control", "max-stale=60")]);
    assert_eq!(status(&r), "HIT", "max-stale accepts the expired entry");
    assert_eq!(status(&request(&gw, "GET", "/cc/a", &[])), "EXPIRED");

    // Larger than max_resp_body_size: passed through whole, never stored.
    for _ in 0..2 {
        let r = request(&gw, "GET", "/limit/big", &[]);
        assert_eq!((status(&r), r.body.len()), ("MISS", 2000));
    }
    assert_eq!(be.requests_for("/limit/big"), 2);

    // The memory zone (8 MiB) keeps within its size: 100 bodies of 200 KiB later, the first
    // (least recently used) is gone and the last is still there.
    for i in 0..100 {
        let r = request(&gw, "GET", &format!("/ev/{i}"), &[]);
        assert_eq!(r.body.len(), 200 * 1024);
    }
    assert_eq!(status(&request(&gw, "GET", "/ev/99", &[])), "HIT");
    assert_eq!(status(&request(&gw, "GET", "/ev/0", &[])), "MISS");

    // hide_cache_headers: Cache-Control and Expires never reach the client.
    for expect in ["MISS", "HIT"] {
        let r = request(&gw, "GET", "/hide/a", &[]);
        assert_eq!(status(&r), expect);
        assert!(r.header("cache-control").is_none(), "{}", r.raw_head);
    }
}

#[test]
fn config_errors_name_the_zone_and_the_field() {
    let dir = temp_dir("cache-cfg");
    let z = zones(&dir, "10m");
    let route = |plugin: &str| {
        format!(
            "{z}\n[[routes]]\nuri = \"/*\"\nplugins.proxy-cache = {plugin}\n\
             upstream = {{ nodes = {{ \"127.0.0.1:1\" = 1 }} }}\n"
        )
    };
    let (ok, msg) = check_config(&route("{ cache_zone = \"nope\" }"));
    assert!(!ok && msg.contains("cache_zone nope not found"), "{msg}");
    let (ok, msg) = check_config(&route(
        "{ cache_zone = \"memory_cache\", cache_strategy = \"disk\" }",
    ));
    assert!(
        !ok && msg.contains("invalid or empty cache_zone for cache_strategy: disk"),
        "{msg}"
    );
    let (ok, msg) = check_config(&route("{ cache_key = [\"$request_method\"] }"));
    assert!(
        !ok && msg.contains("cache_key variable $request_method unsupported"),
        "{msg}"
    );
    let (ok, msg) = check_config(&route("{ cache_ttl = 0 }"));
    assert!(!ok && msg.contains("cache_ttl"), "{msg}");
    let (ok, _) = check_config(&route("{}"));
    assert!(ok);
    let (ok, msg) = check_config(
        "[gateway.proxy_cache]\n[[gateway.proxy_cache.zones]]\nname = \"z\"\nmemory_size = \"lots\"\n",
    );
    assert!(
        !ok && msg.contains("gateway.proxy_cache.zones[0].memory_size"),
        "{msg}"
    );
}

#[test]
fn disk_cache_streams_survives_restarts_and_never_serves_a_partial_entry() {
    // A 3 MiB body, first half, a pause, second half: the client has the first half while
    // the upstream pauses (streamed while stored), and the entry exists only afterwards.
    let big: u64 = 3 << 20;
    let half = (big / 2) as usize;
    let mut body = vec![0u8; big as usize];
    fill_pattern(&mut body, 0);
    let body = Arc::new(body);
    let cut = Arc::new(AtomicUsize::new(0));
    let (b2, c2) = (body.clone(), cut.clone());
    let be = Backend::start(move |s| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
        match s.target.as_str() {
            "/big" | "/slow" | "/stream" => {
                let mut first = head.clone();
                first.extend_from_slice(&b2[..half]);
                let pause = match s.target.as_str() {
                    "/big" => 100,
                    _ => 4000,
                };
                Reply::RawThen(first, Duration::from_millis(pause), b2[half..].to_vec())
            }
            // Cut short the first time: the upstream resets halfway.
            "/reset" if c2.fetch_add(1, Ordering::SeqCst) == 0 => {
                let mut r = head.clone();
                r.extend_from_slice(&b2[..half]);
                Reply::RawClose(r)
            }
            "/reset" => Reply::Pattern(big),
            p if p.starts_with("/fill/") => Reply::Pattern(100 * 1024),
            _ => Reply::Full(200, vec![], b"small".to_vec()),
        }
    });
    let dir = temp_dir("cache-disk");
    let cache_dir = dir.join("zone");
    let config = format!(
        "{}\n[[routes]]\nuri = \"/*\"\nplugins.proxy-cache = {{}}\n\
         upstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
        zones(&cache_dir, "16m"),
        be.addr()
    );
    let mut gw = Gateway::start_with(&config, "workers = 2\n");

    // Streamed: the first half arrives while the upstream pauses.
    let mut c = gw.client();
    c.send("GET", "/stream", &[], b"");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 65536];
    while got.len() < half {
        use std::io::Read;
        let n = c.stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "the first half waited for the whole body"
    );
    drop(c);
    // A complete fetch, then a HIT, byte-identical.
    let r = request(&gw, "GET", "/big", &[]);
    assert!(matches!(status(&r), "MISS" | "HIT"), "{}", r.raw_head);
    assert!(becomes_hit(&gw, "/big"));
    let r = request(&gw, "GET", "/big", &[]);
    assert_eq!(r.body.len() as u64, big);
    assert!(r.body == *body, "cached body differs");

    // An upstream reset halfway: the client sees a cut body, nothing is stored.
    let mut c = gw.client();
    c.send("GET", "/reset", &[], b"");
    assert!(
        c.read_response(false).is_err(),
        "a cut body must not look complete"
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = request(&gw, "GET", "/reset", &[]);
    assert_eq!(status(&r), "MISS", "the cut response was stored");
    assert_eq!(r.body.len() as u64, big);

    // Restart: what is on disk is served without asking the upstream.
    let before = be.requests_for("/big");
    drop(gw);
    gw = Gateway::start_with(&config, "workers = 2\n");
    assert!(becomes_hit(&gw, "/big"));
    let r = request(&gw, "GET", "/big", &[]);
    assert!(r.body == *body);
    assert_eq!(
        be.requests_for("/big"),
        before,
        "the restart lost the entry"
    );

    // A crash mid-write: the gateway is killed while the upstream pauses; after the restart
    // the half-written file is gone and the key is a MISS.
    let mut c = gw.client();
    c.send("GET", "/slow", &[], b"");
    assert!(wait_until(Duration::from_secs(3), || files(&cache_dir)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".tmp"))));
    gw.signal(libc::SIGKILL);
    let _ = gw.wait_exit(Duration::from_secs(5));
    drop(c);
    drop(gw);
    gw = Gateway::start_with(&config, "workers = 2\n");
    assert!(wait_until(Duration::from_secs(5), || !files(&cache_dir)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".tmp"))));
    let r = request(&gw, "GET", "/slow", &[]);
    assert_eq!(status(&r), "MISS");
    assert!(r.body == *body);

    // Eviction: 200 entries of 100 KiB into a 16 MiB zone stay within the zone's size.
    for i in 0..200 {
        let r = request(&gw, "GET", &format!("/fill/{i}"), &[]);
        assert_eq!(r.body.len(), 100 * 1024);
    }
    std::thread::sleep(Duration::from_millis(500));
    let on_disk: u64 = files(&cache_dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        on_disk <= 16 << 20,
        "{on_disk} bytes on disk for a 16 MiB zone"
    );
    assert_eq!(
        status(&request(&gw, "GET", "/fill/0", &[])),
        "MISS",
        "evicted first"
    );
}

#[test]
fn concurrent_misses_go_upstream_once_and_stale_entries_outlive_the_backend() {
    let be = Backend::start(|s| {
        let body = format!("v{}", s.target);
        match s.target.as_str() {
            "/slow" => Reply::After(
                Duration::from_millis(600),
                Box::new(Reply::Full(200, vec![], body.into_bytes())),
            ),
            "/fails" => Reply::Full(503, vec![], b"down".to_vec()),
            _ => Reply::Full(200, vec![], body.into_bytes()),
        }
    });
    let dir = temp_dir("cache-lock");
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    let metrics_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "{zones}\n[plugin_attr.prometheus]\nexport_addr = \"127.0.0.1:{metrics_port}\"\n\
             [[routes]]\nuri = \"/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", cache_ttl = 1, stale_if_error = 60 }}\n\
             plugins.proxy-rewrite = {{ uri = \"/slow\" }}\n{up}\n",
            zones = zones(&dir, "10m")
        ),
        "workers = 2\n",
    );

    // 20 clients ask at once: one request reaches the upstream, every client gets the body.
    let statuses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    let r = request(&gw, "GET", "/x", &[]);
                    assert_eq!((r.status, r.text().as_str()), (200, "v/slow"));
                    status(&r).to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(be.requests_for("/slow"), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );

    // Expired while another request refreshes it: answered at once with the old entry.
    std::thread::sleep(Duration::from_millis(1100));
    let statuses: Vec<String> = std::thread::scope(|s| {
        let first = s.spawn(|| status(&request(&gw, "GET", "/x", &[])).to_string());
        std::thread::sleep(Duration::from_millis(200));
        let second = s.spawn(|| status(&request(&gw, "GET", "/x", &[])).to_string());
        vec![first.join().unwrap(), second.join().unwrap()]
    });
    assert_eq!(statuses, ["EXPIRED", "UPDATING"]);

    // The backend goes down: the expired entry is served (STALE) within stale_if_error.
    std::thread::sleep(Duration::from_millis(1100));
    be.kill();
    let r = request(&gw, "GET", "/x", &[]);
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "STALE", "v/slow"),
        "{}",
        r.raw_head
    );
    assert!(
        r.header("content-type").is_none(),
        "the 502's fields stayed: {}",
        r.raw_head
    );
    // A key never cached still fails as the upstream does.
    assert_eq!(request(&gw, "GET", "/never", &[]).status, 502);
}

#[test]
fn an_upstream_error_is_answered_from_the_stale_entry_and_gzip_applies_to_hits() {
    let fail = Arc::new(AtomicUsize::new(0));
    let f2 = fail.clone();
    let json = "{\"items\":[".to_string() + &"{\"id\":1,\"name\":\"x\"},".repeat(200) + "{}]}";
    let j2 = json.clone();
    let be = Backend::start(move |s| {
        if s.target == "/api" && f2.load(Ordering::SeqCst) == 1 {
            return Reply::Full(
                503,
                vec![("Retry-After".into(), "5".into())],
                b"down".to_vec(),
            );
        }
        Reply::Full(
            200,
            vec![("Content-Type".into(), "application/json".into())],
            j2.clone().into_bytes(),
        )
    });
    let dir = temp_dir("cache-gzip");
    let gw = Gateway::start_with(
        &format!(
            "{zones}\n\
             [[routes]]\nuri = \"/*\"\n\
             plugins.proxy-cache = {{ cache_strategy = \"memory\", cache_zone = \"memory_cache\", cache_ttl = 1, stale_if_error = 60 }}\n\
             plugins.gzip = {{ types = [\"application/json\"] }}\n\
             upstream = {{ nodes = {{ \"{}\" = 1 }} }}\n",
            be.addr(),
            zones = zones(&dir, "10m")
        ),
        "workers = 1\n",
    );
    let url = format!("http://127.0.0.1:{}/api", gw.port);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/stderr"])
            .args(args)
            .arg(&url)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).to_lowercase(),
            out.stderr,
        )
    };
    // Stored as the upstream sent it; gzip applies per client, on a MISS and on a HIT.
    let (head, body) = curl(&["--compressed"]);
    assert!(
        head.contains("apisix-cache-status: miss") && head.contains("content-encoding: gzip"),
        "{head}"
    );
    assert_eq!(body, json.as_bytes());
    let (head, body) = curl(&[]);
    assert!(
        head.contains("apisix-cache-status: hit") && !head.contains("content-encoding"),
        "{head}"
    );
    assert_eq!(body, json.as_bytes());
    let (head, body) = curl(&["--compressed"]);
    assert!(
        head.contains("apisix-cache-status: hit") && head.contains("content-encoding: gzip"),
        "{head}"
    );
    assert_eq!(body, json.as_bytes());
    // The upstream answers 503 after expiry: the stale entry answers instead.
    std::thread::sleep(Duration::from_millis(1100));
    fail.store(1, Ordering::SeqCst);
    let (head, body) = curl(&[]);
    assert!(
        head.starts_with("http/1.1 200") && head.contains("apisix-cache-status: stale"),
        "{head}"
    );
    assert!(!head.contains("retry-after"), "{head}");
    assert_eq!(body, json.as_bytes());
}
