//! Real Redis servers for the rate-limit tests.
//!
//! `tests/run.sh` installs Redis (Debian's `redis-server` and `redis-tools`) and starts, for
//! the whole run, one standalone server (`SHARDGATE_TEST_REDIS`, `host:port`) and a 3-master
//! cluster (`SHARDGATE_TEST_REDIS_CLUSTER`, its nodes comma-separated). Tests sharing them
//! use their own route ids, so their counters never meet. Tests that kill or pause a server
//! start a private one here (killed on drop).

use super::{free_port, temp_dir};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The run's standalone Redis, or a private one when the variable is unset.
pub fn shared_redis() -> (String, Option<Redis>) {
    match std::env::var("SHARDGATE_TEST_REDIS") {
        Ok(addr) if !addr.is_empty() => (addr, None),
        _ => {
            let r = Redis::start();
            (r.addr(), Some(r))
        }
    }
}

/// The run's Redis Cluster nodes, when the run has one.
pub fn shared_cluster() -> Option<Vec<String>> {
    std::env::var("SHARDGATE_TEST_REDIS_CLUSTER")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(str::to_string).collect())
}

/// A private redis-server on a free loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: temp_dir("redis"),
        };
        r.restart();
        r
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the server (again, on the same port, empty) and waits until it answers.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/run.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs redis-cli against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.addr(), args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs redis-cli against `addr` (`host:port`); its output.
pub fn cli(addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
