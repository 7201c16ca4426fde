//! A worker's own state: the per-core view of the current snapshot, the keepalive and buffer
//! pools, the access log, the watchdog, the in-flight count and the stop signals. What the
//! worker does with it over time is in `lifecycle.rs`.

use crate::net::splice::PipePool;
use crate::net::watchdog::Watchdog;
use crate::proxy::scratch::{Scratch, MAX_KEPT};
use crate::spares::Spares;

use crate::health::{state::Report, PassiveQueue};
use crate::log::access::AccessLog;
use crate::plugin::PluginStates;
use crate::snapshot::Snapshot;
use crate::upstream::balancer::{self, Balancer};
use crate::upstream::pool::Pool;
use crate::upstream::Node;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A snapshot as one core sees it: the shared immutable config plus this core's balancer
/// state for each of its upstreams. Built on the core when the snapshot arrives.
pub struct Local {
    pub shared: Arc<Snapshot>,
    /// One balancer per upstream of the snapshot; shared with the previous snapshot's where
    /// the upstream is unchanged (see [`BalancerKey`]).
    pub balancers: Vec<Rc<RefCell<Box<dyn Balancer>>>>,
    /// This core's state for every plugin instance of the snapshot.
    pub plugin_states: PluginStates,
}

/// What makes two upstreams' balancers interchangeable: the same upstream (its id, or the
/// route, service or plugin it is inline in), the same algorithm, and the same nodes with the
/// same weights and priorities. A reload that leaves these alone leaves the balancer's state
/// alone too: round-robin positions, least-conn counts and EWMA scores survive it.
#[derive(PartialEq, Eq, Hash)]
struct BalancerKey {
    upstream: Arc<str>,
    kind: crate::upstream::BalancerKind,
    nodes: Vec<(std::net::SocketAddr, u32, i64)>,
}

impl BalancerKey {
    fn of(u: &crate::upstream::UpstreamSpec) -> BalancerKey {
        BalancerKey {
            upstream: u.key.clone(),
            kind: u.kind,
            nodes: u
                .nodes
                .iter()
                .map(|n| (n.addr, n.weight, n.priority))
                .collect(),
        }
    }
}

impl Local {
    /// This core's view of `shared`, carrying over the state of `previous` (this core's view
    /// of the snapshot before) wherever an upstream or plugin instance is unchanged.
    pub(super) fn new(shared: Arc<Snapshot>, previous: Option<&Local>) -> Local {
        let mut carried: HashMap<BalancerKey, &Rc<RefCell<Box<dyn Balancer>>>> = HashMap::new();
        if let Some(p) = previous {
            for (u, b) in p.shared.upstreams.iter().zip(&p.balancers) {
                carried.insert(BalancerKey::of(u), b);
            }
        }
        let balancers = shared
            .upstreams
            .iter()
            .map(|u| match carried.get(&BalancerKey::of(u)) {
                Some(b) => Rc::clone(b),
                None => Rc::new(RefCell::new(balancer::build(u.kind, &u.nodes))),
            })
            .collect();
        let plugin_states = shared
            .plugins
            .core_states(previous.map(|p| (&p.shared.plugins, &p.plugin_states)));
        Local {
            shared,
            balancers,
            plugin_states,
        }
    }
}

/// One core's worker.
pub struct Worker {
    pub index: usize,
    /// The runtime runs on the epoll driver (sockets must be non-blocking), not io_uring.
    pub epoll: bool,
    pub(super) current: RefCell<Rc<Local>>,
    pub pool: Pool,
    /// HTTP/2 connections to gRPC nodes.
    pub h2: crate::upstream::h2pool::H2Pool,
    /// Empty pipes for splicing long bodies.
    pub pipes: PipePool,
    pub log: AccessLog,
    /// This core's metrics (`crate::metrics`).
    pub metrics: crate::metrics::Recorder,
    /// Requests being served right now (from first head byte to last response byte).
    pub(super) busy: Cell<usize>,
    pub(super) stopping: Cell<bool>,
    /// Wakes the accept loops and the shutdown waiter: one slot per live [`Signal`], so a
    /// signal polled once per accepted connection keeps one waker, not one per poll.
    wakers: RefCell<Vec<Weak<RefCell<Option<Waker>>>>>,
    /// Memory of finished connections, for the next ones.
    /// Scratch sets of connections that closed or parked.
    pub(super) scratch: Spares<Scratch>,
    /// Per-operation deadlines of every connection, swept on the tick.
    pub watchdog: Watchdog,
    pub(super) passive: Arc<PassiveQueue>,
    /// Passive health outcomes since the last tick.
    passive_batch: RefCell<Vec<(u32, Report)>>,
    all_down_logged: Cell<Option<std::time::Instant>>,
}

impl Worker {
    pub fn new(
        index: usize,
        epoll: bool,
        snapshot: Arc<Snapshot>,
        log: AccessLog,
        passive: Arc<PassiveQueue>,
        metrics: crate::metrics::Recorder,
    ) -> Worker {
        metrics
            .shard()
            .config_version
            .store(snapshot.version, std::sync::atomic::Ordering::Relaxed);
        Worker {
            metrics,
            index,
            epoll,
            current: RefCell::new(Rc::new(Local::new(snapshot, None))),
            pool: Pool::default(),
            h2: Default::default(),
            pipes: PipePool::default(),
            log,
            busy: Cell::new(0),
            stopping: Cell::new(false),
            wakers: RefCell::new(Vec::new()),
            scratch: Spares::new(MAX_KEPT),
            watchdog: Watchdog::default(),
            passive,
            passive_batch: RefCell::new(Vec::new()),
            all_down_logged: Cell::new(None),
        }
    }

    /// Notes a passive health outcome for `node`; sent to the prober on the next tick.
    pub fn report_health(&self, node: &Node, report: Report) {
        if let Some(t) = &node.health {
            self.passive_batch.borrow_mut().push((t.id, report));
        }
    }

    /// Logs (at most once a second per core) that an upstream's nodes are all unhealthy and
    /// are used anyway.
    pub fn warn_all_unhealthy(&self, upstream: &str) {
        let now = self.watchdog.now();
        let last = self.all_down_logged.get();
        if last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            self.all_down_logged.set(Some(now));
            crate::warn!(
                "health: every node of upstream {upstream} is unhealthy; using all of them (healthcheck_fail_open)"
            );
        }
    }

    pub(super) fn flush_health(&self) {
        let mut batch = self.passive_batch.borrow_mut();
        if !batch.is_empty() {
            self.passive.push(std::mem::take(&mut *batch));
        }
    }

    pub fn take_scratch(&self) -> Scratch {
        self.scratch.take().unwrap_or_default()
    }

    pub fn give_scratch(&self, s: Scratch) {
        if s.reusable() {
            self.scratch.give(s)
        }
    }

    /// The snapshot new requests use.
    pub fn current(&self) -> Rc<Local> {
        self.current.borrow().clone()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn request_started(&self) {
        self.busy.set(self.busy.get() + 1);
        crate::metrics::shift(&self.metrics.shard().writing, 1);
    }

    pub fn request_finished(&self) {
        self.busy.set(self.busy.get() - 1);
        let shard = self.metrics.shard();
        crate::metrics::shift(&shard.writing, -1);
        crate::metrics::bump(&shard.requests, 1);
        if self.stopping.get() && self.busy.get() == 0 {
            self.wake_all();
        }
    }

    pub(super) fn wake_all(&self) {
        // Wake every live signal; keep the slots (a signal may be polled again).
        self.wakers
            .borrow_mut()
            .retain(|slot| match slot.upgrade() {
                Some(slot) => {
                    if let Some(w) = slot.borrow_mut().take() {
                        w.wake();
                    }
                    true
                }
                None => false,
            });
    }

    /// Resolves once shutdown has begun.
    pub(super) fn stop_signal(self: &Rc<Self>) -> Signal {
        self.signal(false)
    }

    /// Resolves once shutdown has begun and no request is in flight.
    pub(super) fn idle_signal(self: &Rc<Self>) -> Signal {
        self.signal(true)
    }

    fn signal(self: &Rc<Self>, until_idle: bool) -> Signal {
        let slot = Rc::new(RefCell::new(None));
        let mut wakers = self.wakers.borrow_mut();
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(Rc::downgrade(&slot));
        Signal {
            worker: self.clone(),
            until_idle,
            slot,
        }
    }
}

/// A future over the worker's stop state. A handful exist per worker (one per accept loop,
/// one for the drain), each with one waker slot that a new poll overwrites: the accept loop
/// polls its signal once per accepted connection, and a list that grew on every poll would
/// keep memory for every connection ever accepted.
pub(super) struct Signal {
    worker: Rc<Worker>,
    until_idle: bool,
    slot: Rc<RefCell<Option<Waker>>>,
}

impl Future for Signal {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let w = &self.worker;
        if w.stopping.get() && (!self.until_idle || w.busy.get() == 0) {
            Poll::Ready(())
        } else {
            let mut slot = self.slot.borrow_mut();
            match &*slot {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        }
    }
}
