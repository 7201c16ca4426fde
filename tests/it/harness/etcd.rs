//! A real etcd server for the etcd-provider tests, and `etcdctl` to write into it as APISIX
//! (or an operator) would.
//!
//! `tests/run.sh` installs etcd (Debian's `etcd-server` and `etcd-client`), starts one server
//! for the whole run and names it in `SHARDGATE_TEST_ETCD`; tests that share it each use
//! their own key prefix. Tests that kill, restart, compact or secure a cluster start a private
//! one here (killed on drop).

use super::{free_port, temp_dir};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A prefix no other test uses.
pub fn unique_prefix(tag: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "/sg-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The run's shared etcd (`SHARDGATE_TEST_ETCD`), or a private one when it is unset.
pub enum Cluster {
    Shared(String),
    Private(Etcd),
}

impl Cluster {
    pub fn get() -> Cluster {
        match std::env::var("SHARDGATE_TEST_ETCD") {
            Ok(url) if !url.is_empty() => Cluster::Shared(url),
            _ => Cluster::Private(Etcd::start()),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Cluster::Shared(u) => u.clone(),
            Cluster::Private(e) => e.url.clone(),
        }
    }

    pub fn ctl(&self) -> Ctl {
        Ctl {
            url: self.url(),
            extra: Vec::new(),
        }
    }
}

/// A private etcd server on loopback ports.
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    dir: PathBuf,
    args: Vec<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with("http", &[])
    }

    /// `scheme` is `http` or `https`; `extra` flags follow (certificates, ...).
    pub fn start_with(scheme: &str, extra: &[String]) -> Etcd {
        let dir = temp_dir("etcd");
        let (client, peer) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let mut args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{peer}"),
            "--log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let mut e = Etcd {
            child: None,
            url,
            dir,
            args,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is not installed: tests/run.sh installs it (apt-get install etcd-server etcd-client)");
        self.child = Some(child);
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn ctl(&self) -> Ctl {
        Ctl {
            url: self.url.clone(),
            extra: Vec::new(),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `etcdctl` (v3 API) against one endpoint.
pub struct Ctl {
    pub url: String,
    /// More flags (`--cacert`, `--user`).
    pub extra: Vec<String>,
}

impl Ctl {
    /// Runs etcdctl; returns stdout, panicking with stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        match out {
            Ok(s) => s,
            Err(e) => panic!("etcdctl {args:?}: {e}"),
        }
    }

    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.url)
            .args(&self.extra)
            .args(args)
            .output()
            .expect("etcdctl is not installed: tests/run.sh installs it (etcd-client)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.run(&["put", key, value]);
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.run(&["get", key, "--print-value-only"]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.run(&["get", "/", "-w", "json", "--limit", "1"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }
}

/// A TCP relay in front of an endpoint that a test can cut (every connection closed, new ones
/// refused) and restore: an etcd that goes away and comes back without a restart.
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: &str) -> Relay {
        let target = target
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut o = o.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { port, cut, open }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
