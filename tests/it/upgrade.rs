//! Binary upgrade (`shardgate upgrade` / SIGUSR2): under continuous load, three upgrades in a
//! row lose no request and refuse no connection, and each new process serves; an upgrade to
//! a config that does not load leaves the old process serving.
//!
//! Every generation after the first is started by the one before it and outlives it, so this
//! test process makes itself a child subreaper: orphaned generations become its children,
//! and `Generations` kills and reaps every one at the end.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway run with a pid file, its backend, and the generations upgrades start.
struct Upgradable {
    gw: Gateway,
    backend: Backend,
    dir: std::path::PathBuf,
    pid_file: std::path::PathBuf,
    generations: Generations,
}

impl Upgradable {
    fn start(workers: usize) -> Upgradable {
        become_subreaper();
        let backend = Backend::start(|_| Reply::ok("hello"));
        let dir = temp_dir("upgrade");
        let pid_file = dir.join("shardgate.pid");
        let gw = Gateway::start_with_args(
            &config(backend.addr()),
            &format!("workers = {workers}"),
            &["--pid-file", pid_file.to_str().unwrap()],
        );
        assert!(wait_until(WAIT, || pid_file.exists()), "no pid file");
        assert_eq!(read_pid(&pid_file), gw.child.id());
        let generations = Generations(Vec::new());
        Upgradable {
            gw,
            backend,
            dir,
            pid_file,
            generations,
        }
    }
}

impl Drop for Upgradable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The route adds the serving process's pid to every response.
fn config(backend: String) -> String {
    format!(
        "[[upstreams]]\nid = \"u\"\nnodes = {{ \"{backend}\" = 1 }}\n[[routes]]\nuri = \"/*\"\nupstream_id = \"u\"\nplugins = {{ response-rewrite = {{ headers = {{ set = {{ \"X-Pid\" = \"$pid\" }} }} }} }}\n"
    )
}

/// The gateway's processes started by upgrades: killed and reaped when dropped.
struct Generations(Vec<u32>);

impl Drop for Generations {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill and waitpid on pids this test started (through the gateway).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Orphaned gateway generations are re-parented to this process, which can reap them.
fn become_subreaper() {
    // SAFETY: prctl with an integer option.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Runs `shardgate upgrade`: the new pid, or the command's complaint.
fn upgrade(pid_file: &Path) -> Result<u32, String> {
    let (ok, out, err) = cli(&["upgrade", "--pid-file", pid_file.to_str().unwrap()]);
    if !ok {
        return Err(err);
    }
    // "shardgate: upgraded: pid NEW serves, pid OLD drains"
    let new = out.split_whitespace().nth(3).and_then(|p| p.parse().ok());
    new.ok_or(out)
}

fn read_pid(pid_file: &Path) -> u32 {
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `pid` (a child of this process, possibly by re-parenting) has exited.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // SAFETY: waitpid/kill on a pid this test started.
        let reaped = unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped == pid as i32 || unsafe { libc::kill(pid as i32, 0) } != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One response: whether the server closes after it, and its X-Pid.
struct Answer {
    close: bool,
    pid: Option<u32>,
}

/// Why a request got no complete response, and whether any of it had arrived.
struct Failure {
    what: String,
    got_bytes: bool,
}

/// Sends one GET on `stream` and reads the whole response (Content-Length framed).
fn exchange(stream: &mut TcpStream, close: bool) -> Result<Answer, Failure> {
    let fail = |what: String, got_bytes: bool| Failure { what, got_bytes };
    let req = format!(
        "GET /load HTTP/1.1\r\nHost: t\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| fail(format!("write: {e}"), false))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(fail("closed before a whole head".into(), !buf.is_empty())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(fail(format!("read: {e}"), !buf.is_empty())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(fail(
            format!("status: {}", head.lines().next().unwrap_or("")),
            true,
        ));
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail("no content-length".into(), true))?;
    while buf.len() < head_end + len {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(fail("closed in the body".into(), true)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(fail(format!("body read: {e}"), true)),
        }
    }
    Ok(Answer {
        close: header("connection:").as_deref() == Some("close"),
        pid: header("x-pid:").and_then(|v| v.parse().ok()),
    })
}

/// What the load threads saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Requests repeated on a new connection after a reused keep-alive connection was closed
    /// before any byte of the answer (what HTTP clients do for idempotent requests).
    retried: AtomicUsize,
    failures: Mutex<Vec<String>>,
    pids: Mutex<std::collections::BTreeMap<u32, usize>>,
}

impl Tally {
    fn record(&self, a: &Answer) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = a.pid {
            *self.pids.lock().unwrap().entry(pid).or_default() += 1;
        }
    }
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
    fn seen(&self, pid: u32) -> bool {
        self.pids.lock().unwrap().contains_key(&pid)
    }
}

/// A client on one keep-alive connection, reconnecting when the server closes it.
fn keepalive_client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    tally.fail(format!("keep-alive connect: {e}"));
                    continue;
                }
            },
        };
        let mut result = exchange(&mut stream, false);
        if let Err(f) = &result {
            if reused && !f.got_bytes {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                result = TcpStream::connect(addr)
                    .map_err(|e| Failure {
                        what: format!("retry connect: {e}"),
                        got_bytes: false,
                    })
                    .and_then(|mut s| {
                        let r = exchange(&mut s, false);
                        stream = s;
                        r
                    });
            }
        }
        match result {
            Ok(a) => {
                tally.record(&a);
                if !a.close {
                    conn = Some(stream);
                }
            }
            Err(f) => tally.fail(format!("keep-alive request: {}", f.what)),
        }
    }
}

/// A client opening a new connection per request: any error is a refused or lost one.
fn new_connection_client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Ordering::Relaxed) {
        match TcpStream::connect(addr) {
            Ok(mut s) => match exchange(&mut s, true) {
                Ok(a) => tally.record(&a),
                Err(f) => tally.fail(format!("new-connection request: {}", f.what)),
            },
            Err(e) => tally.fail(format!("connect: {e}")),
        }
    }
}

#[test]
fn three_upgrades_under_load_lose_no_request() {
    let mut u = Upgradable::start(2);
    let (gw, pid_file) = (&mut u.gw, u.pid_file.clone());
    let first = gw.child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let addr = gw.addr();
    let mut threads = Vec::new();
    for i in 0..4 {
        let (stop, tally) = (stop.clone(), tally.clone());
        threads.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                keepalive_client(addr, &stop, &tally)
            } else {
                new_connection_client(addr, &stop, &tally)
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut pids = vec![first];
    for round in 1..=3 {
        let old = *pids.last().unwrap();
        let new = upgrade(&pid_file).unwrap_or_else(|e| panic!("upgrade {round}: {e}"));
        u.generations.0.push(new);
        pids.push(new);
        assert_eq!(read_pid(&pid_file), new);
        assert!(
            wait_until(WAIT, || tally.seen(new)),
            "upgrade {round}: the new process {new} served nothing: {}",
            gw.events()
        );
        let gone = if old == first {
            gw.wait_exit(Duration::from_secs(15)).is_some()
        } else {
            wait_gone(old, Duration::from_secs(15))
        };
        assert!(gone, "upgrade {round}: the old process {old} did not exit");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failures = tally.failures.lock().unwrap();
    let served = tally.pids.lock().unwrap();
    eprintln!(
        "3 upgrades: {} requests answered, {} failed, {} retried after a keep-alive close; by pid {:?}",
        tally.ok.load(Ordering::Relaxed),
        failures.len(),
        tally.retried.load(Ordering::Relaxed),
        served
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", gw.events());
    for pid in &pids {
        assert!(served.contains_key(pid), "generation {pid} served nothing");
    }
    assert!(!gw.events().contains("[error]"), "{}", gw.events());
}

#[test]
fn an_upgrade_to_a_config_that_fails_leaves_the_old_process_serving() {
    let mut u = Upgradable::start(1);
    let (gw, pid_file) = (&u.gw, u.pid_file.clone());
    let old = gw.child.id();

    gw.write_config("[[routes]]\nuri = \"/*\"\nupstream_id = \"missing\"\n");
    let err = upgrade(&pid_file).expect_err("an upgrade to a broken config must fail");
    assert!(err.contains("keeps serving"), "{err}");
    assert!(gw.events().contains("upgrade failed"), "{}", gw.events());
    assert_eq!(read_pid(&pid_file), old);
    let r = gw.get("/after");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Pid"), Some(old.to_string().as_str()));

    // Fixed, the next upgrade goes through.
    gw.write_config(&config(u.backend.addr()));
    let new = upgrade(&pid_file).expect("upgrade with the config fixed");
    u.generations.0.push(new);
    // The old process stops accepting moments after the new one reports ready.
    let new_text = new.to_string();
    assert!(wait_until(WAIT, || gw.get("/after").header("X-Pid")
        == Some(new_text.as_str())));
}
