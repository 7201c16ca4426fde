//! Test harness: starts the real `shardgate` binary on a generated config, real backends on
//! 127.0.0.1 ephemeral ports, and speaks HTTP to them over real sockets.

pub mod backend;
pub mod client;
pub mod etcd;
pub mod py;
pub mod redis;
pub mod tls;

pub use backend::{Backend, Reply};
pub use client::{Client, Response};

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh private directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("shardgate-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on right now, chosen below the kernel's ephemeral range
/// (32768+) so that no backend bound to port 0, and no outgoing connection, can take it
/// between this call and its use by a gateway (or as a port that must stay dead). Never the
/// same port twice in one test run: two gateways started at the same moment on one port
/// would share it through SO_REUSEPORT, each getting some of the other's connections.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(COUNTER.fetch_add(1, Ordering::SeqCst));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

/// The gateway binary under test: this build's, or `SHARDGATE_BIN` when set (to run a test
/// against an older build, e.g. to show a regression test fails there).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SHARDGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_shardgate").into())
    })
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    gateway_section: String,
}

impl Gateway {
    /// Starts a gateway with `body` (upstreams, services, routes) and one worker.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with(body, "workers = 1")
    }

    /// Starts a gateway; `gateway_extra` is added to the `[gateway]` section.
    pub fn start_with(body: &str, gateway_extra: &str) -> Gateway {
        Gateway::start_inner(body, gateway_extra, None, &[])
    }

    /// Starts a gateway that may open at most `nofile` file descriptors (RLIMIT_NOFILE).
    pub fn start_with_fd_limit(body: &str, gateway_extra: &str, nofile: u64) -> Gateway {
        Gateway::start_inner(body, gateway_extra, Some(nofile), &[])
    }

    /// Starts a gateway with more `shardgate run` arguments (`--pid-file ..`).
    pub fn start_with_args(body: &str, gateway_extra: &str, args: &[&str]) -> Gateway {
        Gateway::start_inner(body, gateway_extra, None, args)
    }

    fn start_inner(body: &str, gateway_extra: &str, nofile: Option<u64>, args: &[&str]) -> Gateway {
        let dir = temp_dir("gw");
        let port = free_port();
        let mut watch = String::new();
        if !gateway_extra.contains("watch_config") {
            watch.push_str("watch_config = false\n");
        }
        if !gateway_extra.contains("control_listen") {
            watch.push_str("control_listen = \"off\"\n");
        }
        if !gateway_extra.contains("pin_cores") {
            watch.push_str("pin_cores = false\n");
        }
        // Resources from the file (reloadable), unless the test chooses a provider: the
        // default provider, the store, would keep the first version of the file's resources.
        let provider = if body.contains("[deployment") {
            ""
        } else {
            "[deployment]\nconfig_provider = \"file\"\n"
        };
        // No Prometheus exporter on the default port (tests run side by side), unless the
        // test configures one.
        let exporter = if body.contains("plugin_attr.prometheus") {
            ""
        } else {
            "[plugin_attr.prometheus]\nenable_export_server = false\n"
        };
        let gateway_section = format!(
            "[gateway]\nlisten = [\"127.0.0.1:{port}\"]\naccess_log = \"{}\"\n{watch}{gateway_extra}\n{provider}{exporter}",
            dir.join("access.log").display()
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, format!("{gateway_section}\n{body}")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("events.log")).unwrap());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start shardgate");
        let mut gw = Gateway {
            child,
            port,
            dir,
            config_path,
            gateway_section,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited early ({status}): {}", self.events());
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start listening: {}", self.events());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().get(path)
    }

    /// The gateway's event log (stderr) so far.
    pub fn events(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("events.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The access log so far (flushed every 100 ms by the workers).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Rewrites the config body (the `[gateway]` section is kept).
    pub fn write_config(&self, body: &str) {
        let tmp = self.dir.join("config.toml.tmp");
        std::fs::write(&tmp, format!("{}\n{body}", self.gateway_section)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Rewrites the whole config file, `[gateway]` section included.
    pub fn write_whole_config(&self, text: &str) {
        let tmp = self.dir.join("config.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// The `[gateway]` section the gateway was started with.
    pub fn gateway_section(&self) -> &str {
        &self.gateway_section
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until `pred(events)` holds (reloads are asynchronous).
    pub fn wait_for_event(&self, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if pred(&self.events()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config with one upstream `u` (`nodes` as TOML, then `extra` upstream fields) and a
/// catch-all route to it: what most tests need.
pub fn upstream_config(nodes: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {nodes}\n{extra}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\n"
    )
}

/// Upstream TOML for `nodes` given as (address, weight).
pub fn nodes_map(nodes: &[(&str, u32)]) -> String {
    let inner: Vec<String> = nodes
        .iter()
        .map(|(a, w)| format!("\"{a}\" = {w}"))
        .collect();
    format!("{{ {} }}", inner.join(", "))
}

/// Polls `f` every 20 ms until it holds (true) or `limit` has passed (false).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs `shardgate check` on a config file holding `text`: whether it was accepted, and what
/// the command printed on stderr. Also reports a crash (a panic aborts) as a refusal whose
/// message says so.
pub fn check_config(text: &str) -> (bool, String) {
    let dir = temp_dir("check");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run shardgate check");
    let _ = std::fs::remove_dir_all(&dir);
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code().is_none() {
        err.push_str(&format!("\nCRASHED: {}", out.status));
    }
    (out.status.success(), err)
}

/// Polls the status API until `node_port`'s status is `want`; returns the time it took.
pub fn wait_status(
    control: u16,
    upstream: &str,
    node_port: u16,
    want: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = Client::connect(([127, 0, 0, 1], control).into())
            .get(&format!("/v1/healthcheck/upstreams/{upstream}"));
        if r.status == 200 {
            let v = r.json();
            let status = v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["port"] == node_port)
                .map(|n| n["status"].as_str().unwrap().to_string());
            if status.as_deref() == Some(want) {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < limit,
            "node {node_port} not {want} after {limit:?}: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the `shardgate` command with `args`: (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run shardgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Test certificates in `dir`, made with the openssl command: a CA (`ca.pem`, `ca.key`), a
/// server certificate it signed for 127.0.0.1 and localhost (`server.pem`, `server.key`),
/// a second CA that signed nothing (`other.pem`), for verification that must fail, and a
/// certificate the CA signed that expired in 2020 (`expired.pem`, `expired.key`).
pub fn certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    // `openssl ca` is what sets a validity period in the past.
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    for cmd in [
        format!("req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"),
        format!("req {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf".to_string(),
        format!("req -x509 {key} -keyout other.key -out other.pem -days 2 -subj /CN=other-ca"),
        format!("req {key} -keyout expired.key -out expired.csr -subj /CN=expired"),
        "ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem -extfile ext.cnf -startdate 20200101000000Z -enddate 20200102000000Z".to_string(),
    ] {
        openssl(dir, &cmd);
    }
}

/// Runs `openssl` with the words of `cmd` in `dir`; panics with its message on failure.
pub fn openssl(dir: &std::path::Path, cmd: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(cmd.split_whitespace())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl enc` with APISIX's default keyring's first key (key = IV = "qeddd145sfvddff3").
pub fn apisix_encrypt(plain: &str, decrypt: bool) -> String {
    let key: String = "qeddd145sfvddff3"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut args = vec!["enc", "-aes-128-cbc", "-K", &key, "-iv", &key, "-a", "-A"];
    if decrypt {
        args.push("-d");
    }
    let mut child = std::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plain.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A gateway serving from the store, with its Admin API on a loopback port: for tests that
/// change objects live.
pub struct AdminGateway {
    pub gw: Gateway,
    pub port: u16,
    key: &'static str,
    _dir: PathBuf,
}

impl AdminGateway {
    /// Starts a gateway on `body` (the store imports its objects) with the Admin API up.
    pub fn start(body: &str) -> AdminGateway {
        let dir = temp_dir("admin-gw");
        let port = free_port();
        let key = "admin-test-key";
        let gw = Gateway::start(&format!(
            "{body}\n[deployment]\nconfig_provider = \"store\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\nadmin_key = \"{key}\"\n",
            dir.display()
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "admin API not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        AdminGateway {
            gw,
            port,
            key,
            _dir: dir,
        }
    }

    /// One Admin API request (`body` JSON; `null` sends none worth reading).
    pub fn call(&self, method: &str, path: &str, body: serde_json::Value) -> Response {
        Client::connect(([127, 0, 0, 1], self.port).into()).request(
            method,
            path,
            &[
                ("X-API-KEY", self.key),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// A PUT that must succeed (200 or 201).
    pub fn put(&self, path: &str, body: serde_json::Value) {
        let r = self.call("PUT", path, body);
        assert!(r.status == 200 || r.status == 201, "{path}: {}", r.text());
    }
}
