//! The Admin API's listener: a plain HTTP/1.1 server on its own threads, never on a worker.
//! It checks who may ask (`allow_admin`, `X-API-KEY` / `api_key` / the `X-API-KEY` cookie,
//! the viewer key reads only) and hands each request to the control plane, which owns the
//! objects, and writes its answer. Admin traffic is a few requests a second at most: a thread
//! per connection (at most 64 at once) keeps this simple.

use super::{AdminRequest, AdminResponse};
use crate::route::IpNet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (APISIX's limit: 1.5 MiB).
pub const MAX_BODY: usize = 1_572_864;
const MAX_HEAD: usize = 16 * 1024;
const MAX_CONNECTIONS: usize = 64;

/// Who may use the API.
pub struct Access {
    pub admin_key: String,
    pub viewer_key: Option<String>,
    pub allow: Vec<IpNet>,
}

/// Hands a request to the control plane and waits for its answer (`None`: it is gone).
pub type Dispatch = dyn Fn(AdminRequest) -> Option<AdminResponse> + Send + Sync;

/// Whether the listener thread takes connections. During a binary upgrade the old process
/// pauses it (a change it accepted now would be missing from the new process, which has
/// already read the store), and closes it once the new process serves: the listening
/// socket is the new process's too, so connections wait in its queue for whichever process
/// accepts. A thread blocked in accept(2) could not be stopped; this one polls.
#[derive(Default)]
pub struct Gate(AtomicU8);

const OPEN: u8 = 0;
const PAUSED: u8 = 1;
const CLOSED: u8 = 2;

impl Gate {
    pub fn open(&self) {
        self.0.store(OPEN, Ordering::Relaxed);
    }
    pub fn pause(&self) {
        self.0.store(PAUSED, Ordering::Relaxed);
    }
    /// Ends the listener thread for good (within 100 ms).
    pub fn close(&self) {
        self.0.store(CLOSED, Ordering::Relaxed);
    }
}

/// Starts the listener thread.
pub fn spawn(
    listener: TcpListener,
    access: Access,
    dispatch: Arc<Dispatch>,
    gate: Arc<Gate>,
) -> std::io::Result<()> {
    let access = Arc::new(access);
    let open = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("shardgate-admin".into())
        .spawn(move || loop {
            match gate.0.load(Ordering::Relaxed) {
                CLOSED => return,
                PAUSED => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                _ => {}
            }
            let mut ready = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd for a descriptor `listener` keeps open.
            unsafe { libc::poll(&mut ready, 1, 100) };
            let stream = match listener.accept() {
                Ok((s, _)) if s.set_nonblocking(false).is_ok() => s,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                continue; // dropped: closes the connection
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (access, dispatch, open) = (access.clone(), dispatch.clone(), open.clone());
            let spawned = std::thread::Builder::new()
                .name("shardgate-admin-conn".into())
                .spawn(move || {
                    serve(stream, &access, &*dispatch);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                crate::warn!("admin: cannot start a connection thread");
            }
        })?;
    Ok(())
}

fn serve(mut stream: TcpStream, access: &Access, dispatch: &Dispatch) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(peer) = stream.peer_addr() else { return };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (resp, keep) = match read_request(&mut stream, &mut buf) {
            Ok(Some(req)) => {
                let keep = !req.close;
                (answer(req, peer, access, dispatch), keep)
            }
            Ok(None) => return,
            Err(resp) => (resp, false),
        };
        if write_response(&mut stream, &resp, keep).is_err() || !keep {
            return;
        }
    }
}

fn answer(req: Parsed, peer: SocketAddr, access: &Access, dispatch: &Dispatch) -> AdminResponse {
    if !access.allow.iter().any(|n| n.contains(peer.ip())) {
        return AdminResponse::error(403, "Access Denied: the address is not in allow_admin");
    }
    let key = req.key.as_deref().unwrap_or("");
    let role = if key.is_empty() {
        return AdminResponse::json(
            401,
            serde_json::json!({"error_msg": "failed to check token", "description": "missing apikey"}),
        );
    } else if same(key, &access.admin_key) {
        Role::Admin
    } else if access.viewer_key.as_deref().is_some_and(|v| same(key, v)) {
        Role::Viewer
    } else {
        return AdminResponse::json(
            401,
            serde_json::json!({"error_msg": "failed to check token", "description": "wrong apikey"}),
        );
    };
    if role == Role::Viewer && req.request.method != "GET" {
        return AdminResponse::json(
            401,
            serde_json::json!({"error_msg": "failed to check token", "description": "invalid method for role viewer"}),
        );
    }
    let mut request = req.request;
    request.who = format!("{} from {}", role.name(), peer.ip());
    dispatch(request).unwrap_or_else(|| AdminResponse::error(503, "the gateway is shutting down"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Viewer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// Compares keys in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Parsed {
    request: AdminRequest,
    key: Option<String>,
    close: bool,
}

/// Reads one request. `Ok(None)`: the client closed between requests.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Parsed>, AdminResponse> {
    let bad = |msg: &str| AdminResponse::error(400, msg);
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(AdminResponse::error(431, "request head too large"))
            }
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(bad(&format!("malformed request: {e}"))),
        }
        if buf.len() > MAX_HEAD {
            return Err(AdminResponse::error(431, "request head too large"));
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut headers);
    let _ = r.parse(buf);
    let method = r.method.unwrap_or("").to_string();
    let target = r.path.unwrap_or("").to_string();
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if header("transfer-encoding").is_some() {
        return Err(AdminResponse::error(
            411,
            "send the body with a Content-Length",
        ));
    }
    let length = match header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad("invalid Content-Length"))?,
    };
    if length > MAX_BODY {
        return Err(bad(&format!(
            "invalid request body: request size {length} is greater than the maximum size {MAX_BODY} allowed"
        )));
    }
    let close = header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
        || r.version == Some(0);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let args: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let cookie_key = header("cookie").and_then(|c| {
        c.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            k.eq_ignore_ascii_case("x-api-key").then(|| v.to_string())
        })
    });
    let key = header("x-api-key")
        .or_else(|| {
            args.iter()
                .find(|(k, _)| k == "api_key")
                .map(|(_, v)| v.clone())
        })
        .or(cookie_key);
    buf.drain(..head_len);
    while buf.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(bad("the request body ended early")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    Ok(Some(Parsed {
        request: AdminRequest {
            method,
            path,
            args,
            body,
            who: String::new(),
        },
        key,
        close,
    }))
}

fn write_response(stream: &mut TcpStream, resp: &AdminResponse, keep: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: shardgate\r\nContent-Type: application/json\r\nX-API-VERSION: v3\r\nContent-Length: {}\r\n",
        resp.status,
        crate::http::reason_phrase(resp.status),
        resp.body.len()
    )
    .into_bytes();
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)
}
