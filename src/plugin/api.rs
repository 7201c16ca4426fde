//! What a plugin sees and may change, phase by phase.
//!
//! - `rewrite`, `access`, `before_proxy` ([`RequestCtx`]): read request variables, change the
//!   request that goes upstream ([`RequestEdits`]: method, uri, Host, headers), choose another
//!   upstream, prepare response changes ([`ResponseEdits`]), or answer the request themselves
//!   ([`Flow::Respond`] with any status, headers and body). A plugin that must wait (a
//!   timer, a backend) implements them as one `async` [`Phases::request_phase`] and says so
//!   ([`PhaseSet::AWAITS`]): it waits without blocking the core. Dispatch is static, and a
//!   plugin that never waits is called synchronously: no future, no allocation.
//! - `header_filter` ([`ResponseCtx`]): the response head is about to go to the client, the
//!   upstream's or one the gateway made (404, 502, 503, 504, a plugin's answer): change its
//!   status, headers, or replace its body.
//! - `body_filter` ([`BodyCtx`]): each piece of the response body, to change. Only when a
//!   header_filter asked for it ([`ResponseEdits::change_body`]): the body is then decoded
//!   from its framing, passed through every body filter of the request, and sent re-framed
//!   (chunked, or until close to an HTTP/1.0 client). Otherwise the body is copied (or
//!   spliced) untouched and no body filter runs.
//! - `log` ([`LogCtx`]): the request is over.
//!
//! Per-request state: [`Slots`] hold one value per plugin of the request (a body a filter
//! holds back, a compressor, a span), from its first phase to its log phase.
//!
//! Per-core state: every plugin instance has one state object per core
//! ([`Phases::core_state`]), handed to each phase as a `RefCell`. Borrow it briefly and
//! never across an `.await`: another request on the same core may run the same plugin
//! meanwhile.

use crate::http::response::ResponseHead;
use crate::vars::VarSource;
use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;

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
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: crate::http::error_page::error_body(message),
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
/// add (appends a field). Names and values are kept in one text buffer that keeps its
/// capacity from request to request, so editing headers allocates nothing once warm.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    text: String,
    remove: Vec<Range<usize>>,
    set: Vec<(Range<usize>, Range<usize>)>,
    add: Vec<(Range<usize>, Range<usize>)>,
    /// The lengths (mod 64, one bit each) of the names in `set` and `add`, and of those in
    /// `remove` and `set`: a name whose bit is clear is in none of them, which is the answer
    /// for nearly every header of a request (each original field asks [`HeaderEdits::drops`]).
    written_lens: u64,
    dropped_lens: u64,
}

/// A name's bit in [`HeaderEdits`]'s length masks.
fn len_bit(name: &[u8]) -> u64 {
    1 << (name.len() % 64)
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.remove.clear();
        self.set.clear();
        self.add.clear();
        self.written_lens = 0;
        self.dropped_lens = 0;
    }

    fn push(&mut self, s: &str) -> Range<usize> {
        let start = self.text.len();
        self.text.push_str(s);
        start..self.text.len()
    }

    /// Drops earlier sets and adds of `name` (most calls find none: nothing is moved then).
    fn forget(&mut self, name: &str) {
        if self.written_lens & len_bit(name.as_bytes()) == 0 {
            return;
        }
        let text = &self.text;
        let named =
            |(n, _): &(Range<usize>, Range<usize>)| text[n.clone()].eq_ignore_ascii_case(name);
        if self.set.iter().any(named) {
            self.set.retain(|e| !named(e));
        }
        if self.add.iter().any(named) {
            self.add.retain(|e| !named(e));
        }
    }

    /// Sets `name` to `value`, replacing the original fields and earlier changes of that name.
    pub fn set(&mut self, name: &str, value: &str) {
        self.set_with(name, |out| out.push_str(value));
    }

    /// [`HeaderEdits::set`] with the value written by `value` (no intermediate string).
    pub fn set_with(&mut self, name: &str, value: impl FnOnce(&mut String)) {
        self.forget(name);
        let n = self.push(name);
        let start = self.text.len();
        value(&mut self.text);
        self.set.push((n, start..self.text.len()));
        self.written_lens |= len_bit(name.as_bytes());
        self.dropped_lens |= len_bit(name.as_bytes());
    }

    pub fn add(&mut self, name: &str, value: &str) {
        self.add_with(name, |out| out.push_str(value));
    }

    /// [`HeaderEdits::add`] with the value written by `value`.
    pub fn add_with(&mut self, name: &str, value: impl FnOnce(&mut String)) {
        let n = self.push(name);
        let start = self.text.len();
        value(&mut self.text);
        self.add.push((n, start..self.text.len()));
        self.written_lens |= len_bit(name.as_bytes());
    }

    pub fn remove(&mut self, name: &str) {
        self.forget(name);
        let n = self.push(name);
        self.remove.push(n);
        self.dropped_lens |= len_bit(name.as_bytes());
    }

    /// Whether an original field called `name` is dropped (removed or replaced by a set).
    pub fn drops(&self, name: &[u8]) -> bool {
        if self.dropped_lens & len_bit(name) == 0 {
            return false;
        }
        self.remove
            .iter()
            .chain(self.set.iter().map(|(n, _)| n))
            .any(|n| self.text[n.clone()].as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields to write after the original ones: sets, then adds.
    pub fn written(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set
            .iter()
            .chain(self.add.iter())
            .map(|(n, v)| (&self.text[n.clone()], &self.text[v.clone()]))
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
    /// A body that replaces the request's own (sent with its Content-Length). Honoured
    /// only when the whole body was read before the plugins ran ([`RequestCtx::body`] was
    /// given): a body still streaming in cannot be swapped.
    pub body: Option<Vec<u8>>,
}

impl RequestEdits {
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.uri.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
            && self.body.is_none()
    }

    pub fn clear(&mut self) {
        self.method = None;
        self.uri = None;
        self.host = None;
        self.headers.clear();
        self.body = None;
    }
}

/// Changes to the response that goes to the client.
#[derive(Debug, Default)]
pub struct ResponseEdits {
    pub status: Option<u16>,
    pub headers: HeaderEdits,
    /// A body that replaces the response's own (the body filters still see it).
    pub body: Option<Vec<u8>>,
    /// Some body filter will change the body (see [`ResponseEdits::change_body`]).
    body_changes: bool,
    /// Some body filter reads the body as it passes (see [`ResponseEdits::observe_body`]).
    body_observed: bool,
}

impl ResponseEdits {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.headers.is_empty()
            && self.body.is_none()
            && !self.body_changes
            && !self.body_observed
    }

    pub fn clear(&mut self) {
        self.status = None;
        self.headers.clear();
        self.body = None;
        self.body_changes = false;
        self.body_observed = false;
    }

    /// Called in header_filter by a plugin whose body_filter reads the body without changing
    /// it (proxy-cache storing it): the body filters then see every piece, while the body
    /// keeps its length and validators (a Content-Length body goes out with it; a chunked
    /// or close-delimited one is re-chunked). No splice for such a body.
    pub fn observe_body(&mut self) {
        self.body_observed = true;
    }

    /// Whether the body filters see the body (to change or to read it).
    pub fn body_filtered(&self) -> bool {
        self.body_changes || self.body_observed
    }

    /// Called in header_filter by a plugin whose body_filter will change the body: the body
    /// then passes through the body filters and goes out re-framed, since its length is no
    /// longer known (Content-Length is dropped; ETag and Last-Modified described the old
    /// body and are dropped too, as APISIX does). A body filter changes nothing unless
    /// some plugin asked for this.
    pub fn change_body(&mut self) {
        if !self.body_changes {
            self.body_changes = true;
            self.headers.remove("ETag");
            self.headers.remove("Last-Modified");
        }
    }

    /// Whether the body goes through the body filters.
    pub fn body_changes(&self) -> bool {
        self.body_changes
    }
}

/// One value per plugin of a request, kept from its first phase to its log phase (a plugin
/// finds its own: the dispatcher points the slots at the plugin it calls, by its instance's
/// slot in the snapshot, so a value stays the plugin's even when a consumer's plugins join
/// the request's chain). Empty slots cost nothing; a plugin that stores a value pays one
/// allocation for that request.
#[derive(Default)]
pub struct Slots {
    /// (instance slot, value); a request has few.
    items: Vec<(usize, Box<dyn Any>)>,
    current: usize,
}

impl Slots {
    fn position(&self) -> Option<usize> {
        self.items
            .iter()
            .position(|(slot, _)| *slot == self.current)
    }

    /// The calling plugin's value, if it stored one of type `T`.
    pub fn get<T: Any>(&mut self) -> Option<&mut T> {
        let at = self.position()?;
        self.items[at].1.downcast_mut::<T>()
    }

    /// Stores the calling plugin's value (replacing what it had).
    pub fn put<T: Any>(&mut self, value: T) {
        match self.position() {
            Some(at) => self.items[at].1 = Box::new(value),
            None => self.items.push((self.current, Box::new(value))),
        }
    }

    /// Takes the calling plugin's value out.
    pub fn take<T: Any>(&mut self) -> Option<T> {
        let at = self.position()?;
        if !self.items[at].1.is::<T>() {
            return None;
        }
        let (_, value) = self.items.swap_remove(at);
        value.downcast::<T>().ok().map(|v| *v)
    }

    /// Points the slots at the plugin instance with registry slot `slot`.
    pub(crate) fn point_at(&mut self, slot: usize) {
        self.current = slot;
    }

    /// Drops every value (the request is over).
    pub fn clear(&mut self) {
        if !self.items.is_empty() {
            self.items.clear();
        }
    }
}

/// The response head as it came (from the upstream, or as the gateway made it), before the
/// plugins' changes.
#[derive(Clone, Copy)]
pub enum ResponseHeaders<'a> {
    Upstream {
        buf: &'a [u8],
        head: &'a ResponseHead,
    },
    Gateway(&'a [(String, String)]),
}

impl<'a> ResponseHeaders<'a> {
    /// The first field called `name` (any case), its value trimmed.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.find(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The field a variable names (`upstream_http_content_type`: lower case, `_` for `-`).
    pub fn get_var(&self, var_name: &str) -> Option<&'a [u8]> {
        self.find(|n| crate::http::names_header(n, var_name))
    }

    fn find(&self, mut is: impl FnMut(&[u8]) -> bool) -> Option<&'a [u8]> {
        match *self {
            ResponseHeaders::Upstream { buf, head } => head
                .headers
                .iter()
                .find(|h| is(&buf[h.name.clone()]))
                .map(|h| crate::http::trim(&buf[h.value.clone()])),
            ResponseHeaders::Gateway(fields) => fields
                .iter()
                .find(|(n, _)| is(n.as_bytes()))
                .map(|(_, v)| crate::http::trim(v.as_bytes())),
        }
    }
}

/// The request's header fields as received (names as sent; values untrimmed).
#[derive(Clone, Copy)]
pub struct RequestHeaders<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) fields: &'a [crate::http::HeaderRange],
}

impl<'a> RequestHeaders<'a> {
    /// Every field, in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.fields
            .iter()
            .map(move |h| (&buf[h.name.clone()], &buf[h.value.clone()]))
    }
}

/// The request as `rewrite`, `access` and `before_proxy` see it.
pub struct RequestCtx<'a> {
    pub vars: &'a dyn VarSource,
    pub headers: RequestHeaders<'a>,
    /// The whole request body (payload, chunked framing removed), when a plugin of the
    /// request reads bodies ([`Phases::reads_body`]) and the body was no larger than its
    /// limit; empty when the request has none. `None` otherwise.
    pub body: Option<&'a [u8]>,
    /// Index of the upstream the request will go to (the route's, unless a plugin changes
    /// it); `None` when the route has none.
    pub upstream: Option<usize>,
    pub request: &'a mut RequestEdits,
    /// Changes to apply to the response, whoever makes it.
    pub response: &'a mut ResponseEdits,
    /// Where a plugin that establishes the client's real address (real-ip) records it, once:
    /// `remote_addr` for the plugins after it, the log and the upstream's X-Real-IP.
    pub remote_addr: &'a std::cell::OnceCell<String>,
    /// Where an authentication plugin records the consumer it identified, once: the
    /// `consumer_name` variable for the plugins after it, chash `hash_on = "consumer"`.
    pub consumer: &'a std::cell::OnceCell<std::sync::Arc<crate::consumer::Identity>>,
    /// The peer's address (the client's, unless real-ip established another).
    pub peer: std::net::IpAddr,
    pub slots: &'a mut Slots,
}

impl RequestCtx<'_> {
    /// The client's address: what real-ip established, else the peer's (no text parsed
    /// unless real-ip set one).
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        match self.remote_addr.get() {
            Some(a) => a.parse().ok(),
            None => Some(self.peer),
        }
    }
}

/// The response as `header_filter` sees it.
pub struct ResponseCtx<'a> {
    /// The request's variables, and `status` and `upstream_http_*` of the response.
    pub vars: &'a dyn VarSource,
    /// The status as it stands (after earlier plugins' changes).
    pub status: u16,
    /// The gateway made this response (no route, an upstream failure, a plugin's answer).
    pub by_gateway: bool,
    /// Its header fields as they came.
    pub headers: ResponseHeaders<'a>,
    pub response: &'a mut ResponseEdits,
    pub slots: &'a mut Slots,
}

/// A piece of the response body as `body_filter` sees it.
pub struct BodyCtx<'a> {
    /// The piece's bytes (payload only, whatever the framing): a filter may change them,
    /// or take them all to hand on later (an empty piece sends nothing).
    pub data: &'a mut Vec<u8>,
    /// The body ends after this piece: whatever a filter held back must go out now.
    pub last: bool,
    pub slots: &'a mut Slots,
}

/// The request phases, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Rewrite,
    Access,
    BeforeProxy,
}

impl Phase {
    pub fn set(self) -> PhaseSet {
        match self {
            Phase::Rewrite => PhaseSet::REWRITE,
            Phase::Access => PhaseSet::ACCESS,
            Phase::BeforeProxy => PhaseSet::BEFORE_PROXY,
        }
    }
}

/// The finished request as `log` sees it.
pub struct LogCtx<'a> {
    pub status: u16,
    pub slots: &'a mut Slots,
    /// What the request was and how it went.
    pub served: &'a crate::metrics::Served<'a>,
    /// The request's variables, and `status`.
    pub vars: &'a dyn VarSource,
    /// The request's header fields as received.
    pub headers: RequestHeaders<'a>,
    /// The core's metrics.
    pub metrics: &'a crate::metrics::Recorder,
    /// Set once the request's metrics are recorded (a global rule and a route may both
    /// have `prometheus`).
    pub metrics_recorded: bool,
}

/// Per-core mutable state of one plugin instance.
pub type CoreState = Box<dyn Any>;

/// The phases a plugin implements, so the others are not even called (a call to an async
/// phase builds and moves a future, which costs even when it does nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub const NONE: PhaseSet = PhaseSet(0);
    pub const REWRITE: PhaseSet = PhaseSet(1);
    pub const ACCESS: PhaseSet = PhaseSet(2);
    pub const BEFORE_PROXY: PhaseSet = PhaseSet(4);
    pub const HEADER_FILTER: PhaseSet = PhaseSet(8);
    pub const BODY_FILTER: PhaseSet = PhaseSet(16);
    pub const LOG: PhaseSet = PhaseSet(32);
    /// The request phases wait (a timer, a backend): [`Phases::request_phase`] is called
    /// instead of the synchronous `rewrite` / `access` / `before_proxy`.
    pub const AWAITS: PhaseSet = PhaseSet(64);
    /// The log phase wants the request's latency: the clock is read when it starts.
    pub const TIMED: PhaseSet = PhaseSet(128);
    /// The phases that see or change the request or the response (all but `log`).
    pub const REQUEST_AND_RESPONSE: PhaseSet = PhaseSet(1 | 2 | 4 | 8 | 16);

    pub const fn with(self, other: PhaseSet) -> PhaseSet {
        PhaseSet(self.0 | other.0)
    }

    pub const fn has(self, other: PhaseSet) -> bool {
        self.0 & other.0 != 0
    }
}

/// One plugin's behaviour. Every phase has a default that does nothing; [`Phases::uses`]
/// lists the ones a plugin implements.
#[allow(async_fn_in_trait)] // dispatched statically, on one core: no Send bound wanted
pub trait Phases {
    fn name(&self) -> &'static str;

    /// Higher runs first within a phase (APISIX's plugin priorities).
    fn priority(&self) -> i32;

    /// The phases this plugin implements (only these are called).
    fn uses(&self) -> PhaseSet;

    /// The plugin reads request bodies of up to this many bytes: the gateway reads the whole
    /// body (when no larger) before the request phases run, and hands it over as
    /// [`RequestCtx::body`].
    fn reads_body(&self) -> Option<usize> {
        None
    }

    /// A fresh per-core state object.
    fn core_state(&self) -> CoreState {
        Box::new(())
    }

    fn rewrite(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    fn access(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    fn before_proxy(&self, _ctx: &mut RequestCtx<'_>, _state: &RefCell<CoreState>) -> Flow {
        Flow::Continue
    }

    /// The request phases of a plugin that waits ([`PhaseSet::AWAITS`]). Kept apart from
    /// the synchronous ones so that a plugin that never waits costs no future at all.
    async fn request_phase(
        &self,
        _phase: Phase,
        _ctx: &mut RequestCtx<'_>,
        _state: &RefCell<CoreState>,
    ) -> Flow {
        Flow::Continue
    }

    fn header_filter(&self, _ctx: &mut ResponseCtx<'_>, _state: &RefCell<CoreState>) {}

    fn body_filter(&self, _ctx: &mut BodyCtx<'_>, _state: &RefCell<CoreState>) {}

    fn log(&self, _ctx: &mut LogCtx<'_>, _state: &RefCell<CoreState>) {}
}
