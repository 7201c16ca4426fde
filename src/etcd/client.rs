//! An etcd v3 client over etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/watch`, `/v3/auth/authenticate`): keys and values base64,
//! 64-bit numbers as JSON strings, empty fields omitted. It fails over between endpoints and
//! re-authenticates when a token expires.
//!
//! Why not the `etcd-client` crate: its build script needs `protoc`, which a fresh Debian
//! machine with only Rust does not have (measured: `cargo build` fails in etcd-client
//! 0.21.1's build.rs), and it brings tokio, tonic and hyper for what is a few JSON calls here.

use super::conn::{Conn, Endpoint};
use crate::config::EtcdConfig;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// What went wrong talking to etcd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (the last failure is given).
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    /// The revision asked for was compacted away; a full read is needed.
    #[error("etcd revision compacted (now {0})")]
    Compacted(i64),
    /// etcd answered with an error.
    #[error("etcd error: {0}")]
    Server(String),
    /// A watch stayed silent for `watch_timeout`.
    #[error("etcd watch idle")]
    Idle,
}

/// A key and its value, with etcd's revisions.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub delete: bool,
    pub kv: Kv,
}

/// One message of a watch.
#[derive(Debug)]
pub enum WatchMsg {
    /// The events of one or more revisions, up to `revision`.
    Events {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// etcd cancelled the watch: its start revision was compacted.
    Compacted(i64),
}

/// A client of one cluster.
pub struct Client {
    endpoints: Vec<Endpoint>,
    current: usize,
    tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
    timeout: Duration,
    watch_timeout: Duration,
    auth: Option<(String, String)>,
    token: Option<String>,
    conn: Option<Conn>,
    /// `/apisix`
    pub prefix: String,
}

impl Client {
    /// Checks the configuration (errors name the field); connects lazily.
    pub fn new(cfg: &EtcdConfig) -> Result<Client, String> {
        if cfg.host.is_empty() {
            return Err("deployment.etcd.host: at least one endpoint is needed".into());
        }
        let endpoints = cfg
            .host
            .iter()
            .enumerate()
            .map(|(i, h)| Endpoint::parse(h).map_err(|e| format!("deployment.etcd.host[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if endpoints.iter().any(|e| e.tls) {
            Some((super::tls::client_config(&cfg.tls)?, cfg.tls.sni.clone()))
        } else {
            None
        };
        if !cfg.prefix.starts_with('/') || cfg.prefix.len() < 2 || cfg.prefix.ends_with('/') {
            return Err(format!(
                "deployment.etcd.prefix: '{}' must start with / and not end with / (\"/apisix\")",
                cfg.prefix
            ));
        }
        let auth = match (&cfg.user, &cfg.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err("deployment.etcd: user and password go together".into()),
        };
        if cfg.timeout == 0 || cfg.watch_timeout == 0 {
            return Err(
                "deployment.etcd.timeout and watch_timeout must be at least 1 second".into(),
            );
        }
        Ok(Client {
            endpoints,
            current: 0,
            tls,
            timeout: Duration::from_secs(cfg.timeout),
            watch_timeout: Duration::from_secs(cfg.watch_timeout),
            auth,
            token: None,
            conn: None,
            prefix: cfg.prefix.clone(),
        })
    }

    /// The endpoint in use (or to be tried next).
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current].url
    }

    /// A unary call, on the current endpoint and then the others in turn.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        let mut last = String::new();
        let mut tries = self.endpoints.len();
        while tries > 0 {
            let reused = self.conn.is_some();
            match self.call_here(path, &body) {
                Ok(v) => return Ok(v),
                Err(Failure::Io(e)) => {
                    self.conn = None;
                    if reused {
                        // A kept connection the server has closed: once more on a new one.
                        continue;
                    }
                    last = format!("{}: {e}", self.endpoint());
                    self.token = None;
                    self.current = (self.current + 1) % self.endpoints.len();
                    tries -= 1;
                }
                Err(Failure::Etcd(e)) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// One call on the current endpoint, authenticating first when needed, and once more if
    /// the token has expired.
    fn call_here(&mut self, path: &str, body: &[u8]) -> Result<Value, Failure> {
        for attempt in 0..2 {
            if self.auth.is_some() && self.token.is_none() {
                self.authenticate()?;
            }
            let (status, v) = self.exchange(path, body)?;
            if status == 200 {
                return Ok(v);
            }
            let code = v.get("code").and_then(Value::as_i64).unwrap_or(0);
            // 16: invalid auth token (expired); authenticate again.
            if code == 16 && self.auth.is_some() && attempt == 0 {
                self.token = None;
                continue;
            }
            return Err(Failure::Etcd(error_of(status, &v)));
        }
        unreachable!("the loop returns")
    }

    fn authenticate(&mut self) -> Result<(), Failure> {
        let Some((user, password)) = self.auth.clone() else {
            return Ok(());
        };
        let body =
            serde_json::to_vec(&json!({"name": user, "password": password})).unwrap_or_default();
        let (status, v) = self.exchange("/v3/auth/authenticate", &body)?;
        match v.get("token").and_then(Value::as_str) {
            Some(t) if status == 200 => {
                self.token = Some(t.to_string());
                Ok(())
            }
            _ => Err(Failure::Etcd(EtcdError::Server(format!(
                "authentication as '{user}' refused: {}",
                error_of(status, &v)
            )))),
        }
    }

    /// Sends and reads on the kept connection (opened if needed).
    fn exchange(&mut self, path: &str, body: &[u8]) -> Result<(u16, Value), Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.open()?,
        };
        conn.post(path, body, self.token.as_deref())?;
        let head = conn.head()?;
        let bytes = conn.body()?;
        if !head.close {
            self.conn = Some(conn);
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not JSON from etcd ({}): {e}", head.status),
            ))
        })?;
        Ok((head.status, v))
    }

    fn open(&self) -> std::io::Result<Conn> {
        Conn::open(
            &self.endpoints[self.current],
            self.tls.as_ref(),
            self.timeout,
        )
    }

    /// Every key under the prefix, and the revision they were read at.
    pub fn range_prefix(&mut self) -> Result<(i64, Vec<Kv>), EtcdError> {
        let dir = format!("{}/", self.prefix);
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": B64.encode(&dir), "range_end": B64.encode(range_end(&dir))}),
        )?;
        let revision = revision_of(&v);
        let kvs = v
            .get("kvs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(kv_of).collect())
            .unwrap_or_default();
        Ok((revision, kvs))
    }

    /// Sets `key` (under the prefix) to `value`; returns the revision of the change.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let v = self.call(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )?;
        Ok(revision_of(&v))
    }

    /// Deletes `key`; returns the revision of the change.
    pub fn delete(&mut self, key: &str) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/deleterange", &json!({"key": B64.encode(key)}))?;
        Ok(revision_of(&v))
    }

    /// A fresh revision, for POST's generated ids (APISIX sets `{prefix}/gen_id`).
    pub fn new_id(&mut self) -> Result<i64, EtcdError> {
        let key = format!("{}/gen_id", self.prefix);
        self.put(&key, b"1")
    }

    /// Opens a watch of the whole prefix from `start` on its own connection (tried on each
    /// endpoint in turn).
    pub fn watch(&mut self, start: i64) -> Result<Watch, EtcdError> {
        let dir = format!("{}/", self.prefix);
        let body = serde_json::to_vec(&json!({"create_request": {
            "key": B64.encode(&dir),
            "range_end": B64.encode(range_end(&dir)),
            "start_revision": start.to_string(),
        }}))
        .unwrap_or_default();
        let mut last = String::new();
        for _ in 0..self.endpoints.len() {
            match self.open_watch(&body) {
                Ok(w) => return Ok(w),
                Err(Failure::Io(e)) => {
                    last = format!("{}: {e}", self.endpoint());
                    self.conn = None;
                    self.token = None;
                    self.current = (self.current + 1) % self.endpoints.len();
                }
                Err(Failure::Etcd(e)) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    fn open_watch(&mut self, body: &[u8]) -> Result<Watch, Failure> {
        if self.auth.is_some() {
            // A fresh token: the watch lives long, and a stale one is refused only later.
            self.token = None;
            self.authenticate()?;
        }
        let mut conn = self.open()?;
        conn.post("/v3/watch", body, self.token.as_deref())?;
        let head = conn.head()?;
        if head.status != 200 {
            let bytes = conn.body()?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Failure::Etcd(error_of(head.status, &v)));
        }
        conn.set_read_timeout(self.watch_timeout)?;
        Ok(Watch {
            conn,
            pending: Vec::new(),
            endpoint: self.endpoint().to_string(),
        })
    }
}

/// An open watch stream: one JSON object per line, in chunks.
pub struct Watch {
    conn: Conn,
    pending: Vec<u8>,
    pub endpoint: String,
}

impl Watch {
    /// The next message with events (or a cancellation). Blocks up to `watch_timeout`.
    pub fn message(&mut self) -> Result<WatchMsg, EtcdError> {
        loop {
            while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(msg) = parse_watch_line(&line)? {
                    return Ok(msg);
                }
            }
            match self.conn.payload() {
                Ok(Some(data)) => self.pending.extend_from_slice(&data),
                Ok(None) => {
                    return Err(EtcdError::Unreachable(format!(
                        "{}: the watch stream ended",
                        self.endpoint
                    )))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(EtcdError::Idle)
                }
                Err(e) => return Err(EtcdError::Unreachable(format!("{}: {e}", self.endpoint))),
            }
        }
    }
}

/// One line of a watch: events, a cancellation, an error, or nothing of interest (the
/// `created` message, progress notifications).
fn parse_watch_line(line: &[u8]) -> Result<Option<WatchMsg>, EtcdError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| EtcdError::Server(format!("unreadable watch message: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(EtcdError::Unreachable(
            err.get("message")
                .and_then(Value::as_str)
                .unwrap_or("watch error")
                .to_string(),
        ));
    }
    let Some(result) = v.get("result") else {
        return Ok(None);
    };
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        let compact = number(result.get("compact_revision"));
        if compact > 0 {
            return Ok(Some(WatchMsg::Compacted(compact)));
        }
        let reason = result
            .get("cancel_reason")
            .and_then(Value::as_str)
            .unwrap_or("cancelled");
        return Err(EtcdError::Server(format!("watch cancelled: {reason}")));
    }
    let Some(events) = result.get("events").and_then(Value::as_array) else {
        return Ok(None);
    };
    let events = events
        .iter()
        .filter_map(|e| {
            Some(WatchEvent {
                delete: e.get("type").and_then(Value::as_str) == Some("DELETE"),
                kv: kv_of(e.get("kv")?)?,
            })
        })
        .collect();
    Ok(Some(WatchMsg::Events {
        revision: revision_of(result),
        events,
    }))
}

enum Failure {
    /// The connection failed: try the next endpoint.
    Io(std::io::Error),
    /// etcd answered with an error: trying elsewhere would not help.
    Etcd(EtcdError),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn error_of(status: u16, v: &Value) -> EtcdError {
    let msg = v
        .get("error")
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if msg.contains("required revision has been compacted") {
        return EtcdError::Compacted(0);
    }
    EtcdError::Server(format!("{status}: {msg}"))
}

/// The end of a prefix range: the prefix with its last byte incremented.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// etcd writes 64-bit numbers as strings (and leaves zero out).
fn number(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn revision_of(v: &Value) -> i64 {
    number(v.get("header").and_then(|h| h.get("revision")))
}

fn kv_of(v: &Value) -> Option<Kv> {
    let key = B64.decode(v.get("key")?.as_str()?).ok()?;
    let value = match v.get("value").and_then(Value::as_str) {
        Some(s) => B64.decode(s).ok()?,
        None => Vec::new(),
    };
    Some(Kv {
        key: String::from_utf8(key).ok()?,
        value,
        create_revision: number(v.get("create_revision")),
        mod_revision: number(v.get("mod_revision")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines() {
        assert!(
            parse_watch_line(br#"{"result":{"header":{"revision":"3"},"created":true}}"#)
                .unwrap()
                .is_none()
        );
        let put = br#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2FwaXNpeC9yb3V0ZXMvMQ==","create_revision":"4","mod_revision":"4","version":"1","value":"e30="}},{"type":"DELETE","kv":{"key":"L2FwaXNpeC9yb3V0ZXMvMg==","mod_revision":"4"}}]}}"#;
        match parse_watch_line(put).unwrap() {
            Some(WatchMsg::Events { revision, events }) => {
                assert_eq!(revision, 4);
                assert_eq!(events.len(), 2);
                assert_eq!(events[0].kv.key, "/apisix/routes/1");
                assert_eq!(events[0].kv.value, b"{}");
                assert!(!events[0].delete && events[1].delete);
            }
            other => panic!("{other:?}"),
        }
        let cancel =
            br#"{"result":{"header":{"revision":"9"},"canceled":true,"compact_revision":"4"}}"#;
        assert!(matches!(
            parse_watch_line(cancel).unwrap(),
            Some(WatchMsg::Compacted(4))
        ));
        let gone = br#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
        assert!(matches!(
            parse_watch_line(gone),
            Err(EtcdError::Unreachable(_))
        ));
    }

    #[test]
    fn prefix_range_end() {
        assert_eq!(range_end("/apisix/"), b"/apisix0");
    }
}
