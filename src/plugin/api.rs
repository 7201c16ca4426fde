//! What a plugin sees and may change, phase by phase.
//!
//! - `rewrite`, `access`, `before_proxy` ([`RequestCtx`]): read request variables, change the
//!   request that goes upstream ([`RequestEdits`]: method, uri, Host, headers), choose another
//!   upstream, prepare response changes ([`ResponseEdits`]), or answer the request themselves
//!   ([`Flow::Respond`] with any status, headers and body). These phases are `async`: a plugin
//!   may await a timer or a backend without blocking the core (dispatch is static, so a plugin
//!   that does not await costs no allocation).
//! - `header_filter` ([`ResponseCtx`]): the response head is about to go to the client, the
//!   upstream's or one the gateway made (404, 502, 503, 504, a plugin's answer): change its
//!   status, headers, or replace its body.
//! - `body_filter`: each piece of the response body, to look at.
//! - `log` ([`LogCtx`]): the request is over.
//!
//! Per-core state: every plugin instance has one state object per core
//! ([`Phases::core_state`]), handed to each phase as a `RefCell`. Borrow it briefly and
//! never across an `.await`: another request on the same core may run the same plugin
//! meanwhile.

use crate::vars::VarSource;
use std::any::Any;
use std::cell::RefCell;

/// What a request phase decides.
pub enum Flow {
    Continue,
    /// Answer the client with this, instead of proxying.
    Respond(Answer),
}

/// A response a plugin (or the gateway) makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// APISIX's error shape: `{"error_msg": message}`.
    pub fn error(status: u16, message: &str) -> Answer {
        let body = serde_json::json!({ "error_msg": message }).to_string() + "\n";
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into_bytes(),
        }
    }

    /// An answer with a plain body (no Content-Type unless given in `headers`).
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Answer {
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// Header changes, applied in this order: remove, set (replaces every field of that name),
/// add (appends a field).
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn clear(&mut self) {
        self.remove.clear();
        self.set.clear();
        self.add.clear();
    }

    /// Sets `name` to `value`, replacing the original fields and earlier sets of that name.
    pub fn set(&mut self, name: &str, value: &str) {
        self.set.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.set.push((name.to_string(), value.to_string()));
    }

    pub fn add(&mut self, name: &str, value: &str) {
        self.add.push((name.to_string(), value.to_string()));
    }

    pub fn remove(&mut self, name: &str) {
        self.set.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.add.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.remove.push(name.to_string());
    }

    /// Whether an original field called `name` is dropped (removed or replaced by a set).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .chain(self.set.iter().map(|(n, _)| n))
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields to write after the original ones: sets, then adds.
    pub fn written(&self) -> impl Iterator<Item = &(String, String)> {
        self.set.iter().chain(self.add.iter())
    }
}

/// Changes to the request that goes upstream.
#[derive(Debug, Default)]
pub struct RequestEdits {
    pub method: Option<String>,
    /// The upstream request target (path and query), as sent.
    pub uri: Option<String>,
    /// The Host header (overrides `pass_host`).
    pub host: Option<String>,
    pub headers: HeaderEdits,
}

impl RequestEdits {
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.uri.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
    }

    pub fn clear(&mut self) {
        self.method = None;
        self.uri = None;
        self.host = None;
        self.headers.clear();
    }
}

/// Changes to the response that goes to the client.
#[derive(Debug, Default)]
pub struct ResponseEdits {
    pub status: Option<u16>,
    pub headers: HeaderEdits,
    /// A body that replaces the response's own.
    pub body: Option<Vec<u8>>,
}

impl ResponseEdits {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.headers.is_empty() && self.body.is_none()
    }

    pub fn clear(&mut self) {
        self.status = None;
        self.headers.clear();
        self.body = None;
    }
}

/// The request as `rewrite`, `access` and `before_proxy` see it.
pub struct RequestCtx<'a> {
    pub vars: &'a dyn VarSource,
    /// Index of the upstream the request will go to (the route's, unless a plugin changes
    /// it); `None` when the route has none.
    pub upstream: Option<usize>,
    pub request: &'a mut RequestEdits,
    /// Changes to apply to the response, whoever makes it.
    pub response: &'a mut ResponseEdits,
}

/// The response as `header_filter` sees it.
pub struct ResponseCtx<'a> {
    pub vars: &'a dyn VarSource,
    /// The status as it stands (after earlier plugins' changes).
    pub status: u16,
    /// The gateway made this response (no route, an upstream failure, a plugin's answer).
    pub by_gateway: bool,
    pub response: &'a mut ResponseEdits,
}

/// The finished request as `log` sees it.
pub struct LogCtx {
    pub status: u16,
}

/// Per-core mutable state of one plugin instance.
pub type CoreState = Box<dyn Any>;

/// One plugin's behaviour. Every phase has a default that does nothing.
#[allow(async_fn_in_trait)] // dispatched statically, on one core: no Send bound wanted
pub trait Phases {
    fn name(&self) -> &'static str;

    /// Higher runs first within a phase (APISIX's plugin priorities).
    fn priority(&self) -> i32;

    /// A fresh per-core state object.
    fn core_state(&self) -> CoreState {
        Box::new(())
    }

    async fn rewrite(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    async fn access(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    async fn before_proxy(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    fn header_filter(&self, _ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {}

    fn body_filter(&self, _chunk: &[u8], _state: &RefCell<CoreState>) {}

    fn log(&self, _ctx: &LogCtx, _state: &RefCell<CoreState>) {}
}
