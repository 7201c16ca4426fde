//! Listening sockets handed from one process to the next across a binary upgrade.
//!
//! The upgrading process (see `control/upgrade.rs`) starts its successor with fork+exec and
//! leaves the descriptors of every listening socket it holds open across the exec, named in
//! the environment variable `SHARDGATE_LISTENERS` as `key=fd` pairs separated by `;`. The
//! key says what the socket is for and where it listens: `data/<worker> <addr>` for a
//! worker's SO_REUSEPORT socket, `admin <addr>`, `control <addr>`, `exporter <addr>`,
//! `demo <addr>`. The successor takes the ones its config asks for ([`listener`]) instead of
//! binding: the same socket, so its accept queue (and what waits in it) carries over, and an
//! exclusive address (the Admin API's) needs no second bind while the old process holds it.
//!
//! Every listener this process binds or inherits is also recorded ([`handover`]), so that
//! it can hand them on in turn.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The environment variable naming the inherited listeners.
pub const ENV: &str = "SHARDGATE_LISTENERS";

/// What this process inherited and has not taken yet (read from [`ENV`] on first use).
static INHERITED: Mutex<Option<HashMap<String, OwnedFd>>> = Mutex::new(None);
/// Whether this process was started with inherited listeners.
static WAS_INHERITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The listeners this process holds, by key: what a successor gets.
static HELD: Mutex<Vec<(String, RawFd)>> = Mutex::new(Vec::new());

/// The key of worker `w`'s socket for `addr`.
pub fn data_key(w: usize, addr: SocketAddr) -> String {
    format!("data/{w} {addr}")
}

/// The listener for `key` (`role addr`): the inherited one when there is one that listens on
/// `addr`, else what `bind` makes. Either way it is recorded for a successor.
pub fn listener(
    key: &str,
    addr: SocketAddr,
    bind: impl FnOnce() -> std::io::Result<TcpListener>,
) -> std::io::Result<TcpListener> {
    let socket = match take(key, addr) {
        Some(l) => l,
        None => bind()?,
    };
    hold(key, &socket);
    Ok(socket)
}

/// Records a listener bound elsewhere for a successor (it must stay open as long as this
/// process may upgrade, as every listener here does).
pub fn hold(key: &str, socket: &TcpListener) {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(k, _)| k != key);
    held.push((key.to_string(), socket.as_raw_fd()));
}

/// The listeners to hand to a successor: the value of [`ENV`] and the descriptors in it.
pub fn handover() -> (String, Vec<RawFd>) {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let value = held
        .iter()
        .map(|(k, fd)| format!("{k}={fd}"))
        .collect::<Vec<_>>()
        .join(";");
    (value, held.iter().map(|(_, fd)| *fd).collect())
}

/// Whether this process was started by an upgrade (it shares its listeners with the process
/// that started it until that one is gone).
pub fn inherited() -> bool {
    init();
    WAS_INHERITED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Takes the inherited listener for `key`, if it is a listening TCP socket on `addr`.
fn take(key: &str, addr: SocketAddr) -> Option<TcpListener> {
    init();
    let mut inherited = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    take_from(inherited.as_mut()?, key, addr)
}

/// [`take`] from the inherited set, already locked.
fn take_from(
    map: &mut HashMap<String, OwnedFd>,
    key: &str,
    addr: SocketAddr,
) -> Option<TcpListener> {
    let socket = TcpListener::from(map.remove(key)?);
    let listening = crate::net::sockopt::accept_backlog(&socket).is_some();
    if !listening || socket.local_addr().ok() != Some(addr) {
        crate::warn!("inherited listener {key} is not a socket listening there: binding anew");
        return None;
    }
    // Ours from now on: close-on-exec again, as everything we open (the next upgrade clears
    // it in the child only).
    set_cloexec(socket.as_raw_fd(), true);
    let _ = socket.set_nonblocking(true);
    Some(socket)
}

/// The inherited data listeners no worker took (the new config has fewer workers): their
/// old worker index, address and socket. Taking them empties the set; what remains is
/// closed by [`close_leftovers`].
pub fn leftover_data() -> Vec<(usize, SocketAddr, TcpListener)> {
    init();
    let mut inherited = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(map) = inherited.as_mut() else {
        return Vec::new();
    };
    let keys: Vec<String> = map
        .keys()
        .filter(|k| k.starts_with("data/"))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let parsed = key
            .strip_prefix("data/")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(w, a)| Some((w.parse::<usize>().ok()?, a.parse::<SocketAddr>().ok()?)));
        let Some((w, addr)) = parsed else { continue };
        if let Some(socket) = take_from(map, &key, addr) {
            out.push((w, addr, socket));
        }
    }
    out
}

/// Closes the inherited listeners nothing took (an address the new config dropped): once
/// the old process has closed its copies too, connections still queued on them are reset.
pub fn close_leftovers() {
    let mut inherited = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = inherited.as_mut() {
        for (key, _) in map.drain() {
            crate::info!("inherited listener {key} is not in the config: closed");
        }
    }
}

/// Reads [`ENV`] once and removes it (children this process starts for other reasons must
/// not believe they inherit anything).
fn init() {
    let mut inherited = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    if inherited.is_some() {
        return;
    }
    let mut map = HashMap::new();
    if let Ok(value) = std::env::var(ENV) {
        WAS_INHERITED.store(true, std::sync::atomic::Ordering::Relaxed);
        for pair in value.split(';').filter(|p| !p.is_empty()) {
            let Some((key, fd)) = pair.rsplit_once('=') else {
                continue;
            };
            let Ok(fd) = fd.parse::<RawFd>() else {
                continue;
            };
            // SAFETY: fcntl(F_GETFD) on any number is harmless; a valid result means the
            // descriptor is open, and it was left open for us, so nothing else owns it.
            if fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
                map.insert(key.to_string(), unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // Called from the control thread at start (`control::run`), before other threads.
        std::env::remove_var(ENV);
    }
    *inherited = Some(map);
}

/// Sets or clears FD_CLOEXEC (async-signal-safe: used between fork and exec).
pub fn set_cloexec(fd: RawFd, on: bool) -> bool {
    // SAFETY: fcntl on a descriptor number; a closed one just fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, flags) == 0
    }
}
