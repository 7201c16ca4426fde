//! Accepting: a worker that cannot run (its core taken, or stopped) does not leave the
//! connections the kernel hashed to its queue waiting; a sibling takes them over
//! (`steal_accepts`).

use crate::harness::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The thread id of worker `index` of the gateway process.
fn worker_tid(gw: &Gateway, index: usize) -> i32 {
    let want = format!("shardgate-w{index}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dir = format!("/proc/{}/task", gw.child.id());
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == want {
                return entry.file_name().to_string_lossy().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no thread {want} in {dir}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Worker thread `tid` held stopped (ptrace-stopped: that one thread, not the process)
/// until dropped. Dropped on the thread that made it, as ptrace requires.
struct Frozen(i32);

impl Frozen {
    /// `None` where ptrace is not permitted (a seccomp profile, Yama scope 3).
    fn thread(tid: i32) -> Option<Frozen> {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace requests on a thread of our own child process; nothing is read or
        // written through the null pointers.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) != 0 {
                eprintln!("skipped: PTRACE_SEIZE: {}", std::io::Error::last_os_error());
                return None;
            }
            let rc = libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null);
            assert_eq!(
                rc,
                0,
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            let rc = libc::waitpid(tid, &mut status, libc::__WALL);
            assert_eq!(rc, tid, "waitpid: {}", std::io::Error::last_os_error());
        }
        Some(Frozen(tid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: detaching the stopped thread seized above; it runs on from where it was.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, null, null) };
    }
}

const CONNECTIONS: usize = 64;

/// Starts two workers, stops worker 1's thread, opens `CONNECTIONS` connections with one
/// request each, and returns how many were answered while it was stopped. It waits until
/// no new answer came for a while: 300 ms without stealing (the answers there come at once or
/// never), 3 s with it unless all but one are in (so that a loaded machine's stall does not
/// end the wait early). Every connection must be answered once worker 1 runs again.
fn answered_while_worker_1_is_stopped(steal: bool, driver: &str) -> Option<usize> {
    let backend = Backend::named("b");
    let gw = Gateway::start_with(
        &upstream_config(&nodes_map(&[(&backend.addr(), 1)]), ""),
        &format!("workers = 2\nsteal_accepts = {steal}\ndriver = \"{driver}\""),
    );
    let frozen = Frozen::thread(worker_tid(&gw, 1))?;

    let mut conns: Vec<(TcpStream, Vec<u8>)> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr()).unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Vec::new())
        })
        .collect();
    let complete = |buf: &[u8]| buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"b");
    let (enough, quiet) = if steal {
        (CONNECTIONS - 1, Duration::from_secs(3))
    } else {
        (CONNECTIONS, Duration::from_millis(300))
    };
    let (mut answered, mut last_progress) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered < enough && last_progress.elapsed() < quiet && Instant::now() < deadline {
        for (s, buf) in conns.iter_mut() {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk) {
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
        let now = conns.iter().filter(|(_, b)| complete(b)).count();
        if now > answered {
            (answered, last_progress) = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Once worker 1 runs again, every connection is answered: nothing is lost either way.
    drop(frozen);
    for (s, buf) in conns.iter_mut() {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut chunk = [0u8; 1024];
        while !complete(buf) {
            let n = s.read(&mut chunk).expect("answer after the starvation");
            assert!(n > 0, "connection closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(buf)
        );
    }
    Some(answered)
}

#[test]
fn a_stopped_workers_connections_are_taken_over_by_its_sibling() {
    // Without stealing, the connections the kernel hashed to the stopped worker wait for it
    // (about half of them).
    let Some(without) = answered_while_worker_1_is_stopped(false, "auto") else {
        return;
    };
    assert!(
        without < CONNECTIONS,
        "every connection was answered without stealing while worker 1 was stopped"
    );
    // With stealing, worker 0 takes them over, all but the last one or two waiting: stealing
    // happens on worker 0's own accepts, so only the worker-1 connections after worker 0's
    // last one can stay (16 or more of them in a row: odds of about 1 in 65,000).
    let with = answered_while_worker_1_is_stopped(true, "auto").unwrap();
    assert!(
        with >= CONNECTIONS * 3 / 4,
        "only {with} of {CONNECTIONS} connections answered while worker 1 was stopped (without stealing: {without})"
    );
    // The same on the epoll driver, which needs the stolen sockets non-blocking.
    let on_epoll = answered_while_worker_1_is_stopped(true, "epoll").unwrap();
    assert!(
        on_epoll >= CONNECTIONS * 3 / 4,
        "only {on_epoll} of {CONNECTIONS} connections answered on epoll"
    );
    eprintln!("answered while worker 1 was stopped: {without} without stealing, {with} with, {on_epoll} with on epoll");
}

#[test]
fn a_worker_at_max_connections_stops_accepting_until_one_closes() {
    let be = Backend::named("b");
    let mport = free_port();
    let gw = Gateway::start_with(
        &format!(
            "{}[plugin_attr.prometheus]\nexport_addr = \"127.0.0.1:{mport}\"\n",
            upstream_config(&nodes_map(&[(&be.addr(), 1)]), "")
        ),
        "workers = 1\nmax_connections = 3",
    );
    let mut open: Vec<Client> = (0..3).map(|_| gw.client()).collect();
    for c in &mut open {
        assert_eq!(c.get("/held").status, 200);
    }
    // The fourth connection is made (the kernel queues it) but not accepted: its request
    // waits.
    let mut fourth = TcpStream::connect(gw.addr()).unwrap();
    fourth
        .write_all(b"GET /fourth HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut buf = [0u8; 1024];
    match fourth.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a connection past max_connections was served: {other:?}"),
    }
    assert!(
        gw.wait_for_event(|e| e.contains("max_connections")),
        "{}",
        gw.events()
    );
    let metrics = Client::connect(([127, 0, 0, 1], mport).into())
        .get("/apisix/prometheus/metrics")
        .text();
    assert!(
        metrics.contains("shardgate_accept_paused_total 1"),
        "{metrics}"
    );
    // One closes: the waiting connection is accepted and answered.
    drop(open.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = fourth.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert!(gw.wait_for_event(|e| e.contains("accepting again")));
    assert_eq!(be.requests_for("/fourth"), 1);
}
