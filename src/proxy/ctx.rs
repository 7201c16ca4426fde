//! Per-request state: the snapshot a request runs on, its parsed heads, its route, the
//! nodes it tried, and what it leaves behind ([`Outcome`]). Everything that serves a request
//! reads its settings from here, so a reload in the middle of a request changes nothing
//! about it.

use crate::http::request::RequestHead;
use crate::http::response::ResponseHead;
use crate::plugin::{RequestEdits, ResponseEdits, Slots};
use crate::snapshot::Settings;
use crate::worker::state::Local;
use std::cell::OnceCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// One request's state. Its vectors are recycled from request to request and from
/// connection to connection (see `Scratch`), so starting a request allocates nothing.
pub(super) struct Ctx {
    /// The snapshot (routes, upstreams, plugins) and this core's state for it, as current
    /// when the request's head was complete.
    pub(super) local: Rc<Local>,
    /// Client-side settings of that snapshot.
    pub(super) settings: Settings,
    /// The route that matched (index into the snapshot's router).
    pub(super) route: Option<usize>,
    /// Plugins run for this request (the route's or global rules'): their response phases
    /// see the response, and its body is not spliced past them.
    pub(super) plugins: bool,
    pub(super) head: RequestHead,
    /// The upstream's response head (of the attempt being relayed).
    pub(super) resp: ResponseHead,
    /// Lower-case Host without port.
    pub(super) host_lc: Vec<u8>,
    /// The request path needed normalizing; the result is in `path_buf`.
    pub(super) path_normalized: bool,
    pub(super) path_buf: Vec<u8>,
    /// Nodes tried so far (indices into the upstream's nodes).
    pub(super) tried: Vec<usize>,
    /// The request's consistent-hashing key (chash upstreams).
    pub(super) key_buf: Vec<u8>,
    /// The status of each upstream attempt (nginx's `$upstream_status`; 502/504 for attempts
    /// that got no answer): the `X-APISIX-Upstream-Status` header.
    pub(super) up_statuses: Vec<u16>,
    /// The upstream answered before it had taken the whole request body (and stopped taking
    /// it): the answer is relayed, then the connection closes (lingering).
    pub(super) early_answer: bool,
    /// The request asks to switch protocols (WebSocket) on a route that allows it: its
    /// Upgrade goes upstream, and a 101 turns the connection into a tunnel.
    pub(super) upgrade: bool,
    /// What plugins changed in the request and in the response.
    pub(super) edits: Edits,
    /// The client address a plugin established (real-ip): `remote_addr` for the plugins
    /// after it, the access log and the X-Real-IP / X-Forwarded-For sent upstream. Set once
    /// per request, so readers hold plain references to it.
    pub(super) real_ip: OnceCell<String>,
    /// The consumer an authentication plugin identified (set once per request): the
    /// `consumer_name` variable, chash `hash_on = "consumer"`.
    pub(super) consumer: OnceCell<std::sync::Arc<crate::consumer::Identity>>,
    /// The route's chain merged with the consumer's own plugins, once the request is
    /// authenticated as a consumer that has some: the chain of its later phases.
    pub(super) merged: Option<std::rc::Rc<crate::plugin::Chain>>,
}

/// The plugins' changes to one request and its response.
#[derive(Default)]
pub(super) struct Edits {
    pub(super) request: RequestEdits,
    pub(super) response: ResponseEdits,
    /// The plugins' per-request values.
    pub(super) slots: Slots,
    /// A chunked request body without its framing, for plugins that read bodies.
    pub(super) decoded_body: Vec<u8>,
}

impl Ctx {
    /// Starts a request on the snapshot `local`.
    pub(super) fn begin(&mut self, local: Rc<Local>) {
        self.settings = local.shared.settings;
        self.local = local;
        self.route = None;
        self.early_answer = false;
        self.upgrade = false;
        self.up_statuses.clear();
        // Only plugins write the edits and the values a plugin establishes: after a request
        // without plugins there is nothing to reset.
        if std::mem::take(&mut self.plugins) {
            self.edits.request.clear();
            self.edits.response.clear();
            self.edits.slots.clear();
            self.real_ip.take();
            self.consumer.take();
            self.merged = None;
        }
    }
}

/// What happened to one request, for the access log and the keep-alive decision.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) status: u16,
    pub(super) bytes: u64,
    pub(super) keep_alive: bool,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream_latency: Option<Duration>,
    pub(super) retries: u32,
    /// End of this request's bytes (head and body) in the client buffer.
    pub(super) consumed: usize,
}
