//! Zero-downtime binary upgrade: `kill -USR2 <pid>` (or `shardgate upgrade --pid-file ..`)
//! makes the running gateway start a new process of the binary it was started from and hand
//! it its listening sockets; once the new process serves, the old one drains as on SIGTERM.
//!
//! The sockets are inherited across fork+exec, named in an environment variable
//! (`net/inherit.rs`), as nginx's `USR2` does, rather than passed over a Unix socket as
//! HAProxy's `-x` and Envoy's hot restart do: the new process is the old one's child, so
//! nothing listens on a socket file that would need a path, permissions and a protocol, and
//! readiness comes back over an inherited pipe. The price is that the new process is re-
//! parented when the old one exits, which a service manager must be told (`MAINPID=`,
//! sent here; see the README's systemd unit).
//!
//! The binary run is argv[0], the path this process was started with, resolved the way the
//! shell did (a bare name through `PATH`): replacing the file there upgrades. Not
//! `/proc/self/exe`, which would still be the old, deleted inode.
//!
//! The new process says it is ready by writing its pid to the pipe named in
//! `SHARDGATE_UPGRADE_READY` once its workers, Admin API and control listeners run. If it
//! exits first (a bad binary, a config that does not load) or says nothing within
//! `READY_TIMEOUT`, the old process goes on serving and logs why; the new one's own messages
//! are in the same log (it inherits stderr).

use crate::net::inherit;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The environment variable naming the new process's end of the readiness pipe.
const READY_ENV: &str = "SHARDGATE_UPGRADE_READY";

/// How long a new process may take to load its config and start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the successor and waits until it serves: its pid, or why it does not.
pub fn start_successor() -> Result<u32, String> {
    let mut args = std::env::args_os();
    let program = args
        .next()
        .ok_or("cannot tell which binary this process runs (no argv[0])")?;
    let (listeners, fds) = inherit::handover();
    let (read_end, write_end) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let write_fd = write_end.as_raw_fd();
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .env(inherit::ENV, listeners)
        .env(READY_ENV, write_fd.to_string());
    // SAFETY: between fork and exec only close_range(2), getrlimit(2) and fcntl(2) run,
    // which are async-signal-safe; the descriptors are the listeners this process holds
    // open and the pipe's write end.
    unsafe {
        cmd.pre_exec(move || {
            // Nothing but the listeners may leak into the new process: a client connection
            // there (io_uring accepts them without close-on-exec) would stay open after the
            // old process closes it, and its client would wait forever.
            close_on_exec_from(3);
            for &fd in fds.iter().chain(std::iter::once(&write_fd)) {
                if !inherit::set_cloexec(fd, false) {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", Path::new(&program).display()))?;
    // Only the child holds the write end now: its exit ends the pipe.
    drop(write_end);
    match wait_ready(read_end, child.id()) {
        Ok(pid) => Ok(pid),
        Err(why) => {
            // A closed pipe means it is exiting: give it a moment to be reaped.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut exited = child.try_wait().ok().flatten();
            while exited.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                exited = child.try_wait().ok().flatten();
            }
            let status = match exited {
                Some(status) => format!("{why} ({status})"),
                None => {
                    let _ = child.kill();
                    format!("{why}; killed")
                }
            };
            let _ = child.wait();
            Err(format!(
                "the new process ({} pid {}) did not start: {status}; its messages are above",
                Path::new(&program).display(),
                child.id()
            ))
        }
    }
}

/// Reads the new process's pid from the pipe: `Err` when it closes the pipe (exits) first
/// or takes longer than `READY_TIMEOUT`.
fn wait_ready(read_end: OwnedFd, child: u32) -> Result<u32, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pipe = std::fs::File::from(read_end);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready after {READY_TIMEOUT:?}"));
        }
        let mut ready = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for a descriptor `pipe` keeps open.
        let n = unsafe { libc::poll(&mut ready, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 32];
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return Err("it exited before it was ready".into()),
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
        if let Some(line) = got
            .split(|&b| b == b'\n')
            .next()
            .filter(|_| got.contains(&b'\n'))
        {
            let pid = std::str::from_utf8(line).ok().and_then(|s| s.parse().ok());
            return pid.filter(|&p| p == child).ok_or_else(|| {
                format!(
                    "it said {:?} instead of its pid",
                    String::from_utf8_lossy(line)
                )
            });
        }
    }
}

/// Says this process serves: to the process that started it for an upgrade (the pipe), in
/// the pid file, and to systemd when it started this process itself.
pub fn announce_ready(pid_file: Option<&Path>) {
    let pid = std::process::id();
    if let Some(path) = pid_file {
        if let Err(e) = write_pid_file(path, pid) {
            crate::warn!("cannot write the pid file {}: {e}", path.display());
        }
    }
    let ready_fd = std::env::var(READY_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    std::env::remove_var(READY_ENV);
    match ready_fd {
        // SAFETY: the descriptor was left open for this process by its parent, for this.
        Some(fd) if fd > 2 && inherit::set_cloexec(fd, true) => {
            let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let _ = std::io::Write::write_all(&mut pipe, format!("{pid}\n").as_bytes());
        }
        // The upgrading parent tells systemd about us (MAINPID=), which only it may do.
        _ => notify_systemd(&format!("READY=1\nMAINPID={pid}")),
    }
}

/// After a successful upgrade: the service's main process is now `new`.
pub fn hand_over_to(new: u32) {
    notify_systemd(&format!("MAINPID={new}"));
}

/// Removes the pid file when it still names this process (after an upgrade it names the
/// new one).
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes the pid file whole (a reader never sees it half written).
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{pid}"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Sends a datagram to systemd's notification socket (`sd_notify(3)`), when there is one.
fn notify_systemd(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.send_to_addr(msg.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        crate::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// Marks every descriptor from `first` up close-on-exec (async-signal-safe).
fn close_on_exec_from(first: u32) {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing, it only sets flags.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // Before Linux 5.11: one fcntl per possible descriptor.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as i32
    } else {
        1 << 16
    };
    for fd in first as i32..top {
        inherit::set_cloexec(fd, true);
    }
}

/// A pipe, both ends close-on-exec (the child's end is opened up in the child only).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success; they are ours alone.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nothing else.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Where the outcome of the last upgrade is written for `shardgate upgrade`: `ok <pid>` or
/// `failed <why>`, in `<pid file>.upgrade`.
pub fn outcome_path(pid_file: &Path) -> std::path::PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".upgrade");
    name.into()
}

/// `shardgate upgrade`: signals the gateway named in `pid_file` and waits for the outcome it
/// writes. `Ok((old, new))`, or why not.
pub fn request(pid_file: &Path, timeout: Duration) -> Result<(u32, u32), String> {
    let read = || {
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let old = read().ok_or_else(|| {
        format!(
            "cannot read a pid from {} (is the gateway running with --pid-file {}?)",
            pid_file.display(),
            pid_file.display()
        )
    })?;
    let _ = std::fs::remove_file(outcome_path(pid_file));
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(old as i32, libc::SIGUSR2) } != 0 {
        return Err(format!(
            "cannot signal pid {old} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + timeout;
    let outcome = outcome_path(pid_file);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let text = std::fs::read_to_string(&outcome).unwrap_or_default();
        if let Some(why) = text.strip_prefix("failed ") {
            let _ = std::fs::remove_file(&outcome);
            return Err(format!("{}; pid {old} keeps serving", why.trim()));
        }
        if let Some(new) = text.strip_prefix("ok ").and_then(|p| p.trim().parse().ok()) {
            let _ = std::fs::remove_file(&outcome);
            return Ok((old, new));
        }
    }
    Err(format!(
        "no new process serves after {timeout:?}; pid {old} keeps serving, its log says why"
    ))
}

/// SIGUSR2: starts the successor with the Admin API paused meanwhile. `Some(pid)` once the
/// successor serves (this process then drains), `None` if it failed (this one goes on).
/// With a pid file, the outcome is also written beside it (see [`outcome_path`]).
pub(super) fn perform(admin: &crate::admin::server::Gate, pid_file: Option<&Path>) -> Option<u32> {
    crate::info!(
        "SIGUSR2 received: starting a new process for a binary upgrade (the Admin API waits)"
    );
    admin.pause();
    let outcome = start_successor();
    if let Some(path) = pid_file.map(outcome_path) {
        let text = match &outcome {
            Ok(pid) => format!("ok {pid}\n"),
            Err(e) => format!("failed {e}\n"),
        };
        let _ = std::fs::write(path, text);
    }
    match outcome {
        Ok(pid) => {
            admin.close();
            hand_over_to(pid);
            crate::info!(
                "upgrade: the new process (pid {pid}) serves; this one (pid {}) stops accepting and drains",
                std::process::id()
            );
            Some(pid)
        }
        Err(e) => {
            admin.open();
            crate::error!("upgrade failed, this process goes on serving: {e}");
            None
        }
    }
}
