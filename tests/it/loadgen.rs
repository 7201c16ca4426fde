//! The benchmark tools work: sg-backend serves, sg-load drives the gateway briefly in both
//! load models and writes its JSON, .hgrm and SVG outputs. (No timing is asserted: numbers
//! belong in BENCHMARKS.md, not in tests.)

use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_backend(size: usize) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sg-backend"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--size",
            &size.to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sg-backend did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), port)
}

fn sg_load(args: &[&str]) -> (String, serde_json::Value) {
    let dir = temp_dir("load");
    let json = dir.join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sg-load"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (String::from_utf8_lossy(&out.stdout).to_string(), v)
}

#[test]
fn load_generator_drives_the_gateway_closed_and_open_loop() {
    let (_backend, port) = start_backend(1024);
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {{ \"127.0.0.1:{port}\" = 1 }}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n"
    ));
    let url = format!("http://127.0.0.1:{}/bench", gw.port);

    // Closed loop with every output.
    let dir = temp_dir("loadout");
    let hgrm = dir.join("lat.hgrm");
    let svg = dir.join("lat.svg");
    let (text, v) = sg_load(&[
        "--url",
        &url,
        "-c",
        "4",
        "-d",
        "1",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(text.contains("req/s") && text.contains("p99.9"), "{text}");
    assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    for key in [
        "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let hgrm = std::fs::read_to_string(&hgrm).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));

    // Open loop at a fixed rate, bounded by count as well as time.
    let (_, v) = sg_load(&[
        "--url",
        &url,
        "-c",
        "2",
        "-d",
        "2",
        "--rate",
        "200",
        "--max-requests",
        "150",
    ]);
    assert_eq!(v["requests"], 150, "{v}");
    assert_eq!(v["errors"], 0);

    // A new connection per request.
    let (_, v) = sg_load(&["--url", &url, "-c", "2", "-d", "1", "--new-conn"]);
    assert!(v["requests"].as_u64().unwrap() > 10);
    assert_eq!(v["errors"], 0, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn load_generator_refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_sg-load"))
        .args(["--url", "http://192.0.2.1:80/", "-d", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn comparison_script_selftest_passes() {
    // benches/compare.sh's own checks (interleaving, pinning, bounds, rendered configs,
    // summary arithmetic); they need neither a build nor nginx/HAProxy.
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/selftest.sh"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn load_generator_posts_bodies_of_the_given_size() {
    let be = Backend::start(|s| Reply::ok(&format!("{} {}", s.method, s.body_len)));
    let gw = Gateway::start(&upstream_config(&nodes_map(&[(&be.addr(), 1)]), ""));
    let url = format!("http://{}/up", gw.addr());
    let (_, v) = sg_load(&[
        "--url",
        &url,
        "-c",
        "2",
        "-d",
        "1",
        "--max-requests",
        "20",
        "--body-size",
        "200000",
    ]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["requests"].as_u64().unwrap() >= 1, "{v}");
    let seen = be.seen();
    assert!(!seen.is_empty());
    for s in seen {
        assert_eq!((s.method.as_str(), s.body_len), ("POST", 200000));
    }
}
