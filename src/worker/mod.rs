//! The data plane: one worker thread per core, each a single-threaded monoio runtime pinned to
//! its core, with its own SO_REUSEPORT listeners, keepalive pool, balancer state and access log.
//!
//! A worker shares nothing mutable with other workers. It learns about new configs and
//! shutdown through its own lock-free mailbox from the control plane, and switches snapshots
//! between requests: a request holds an `Rc` of the snapshot it started on until it ends.

mod accept;
mod lifecycle;
mod mailbox;
mod runtime;
pub(crate) mod state;

pub use accept::Listeners;
pub use mailbox::Mailbox;
pub use runtime::{build as build_runtime, RuntimeOptions, WorkerRuntime};
pub use state::{Local, Worker};

use crate::log::access::{AccessLog, AccessLogConfig};
use crate::snapshot::Snapshot;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Messages from the control plane to a worker.
pub enum ControlMsg {
    /// Switch to this snapshot for every request that starts from now on.
    Snapshot(Arc<Snapshot>),
    /// Stop accepting, finish in-flight requests within `grace`, then exit. `handover`: the
    /// listening sockets live on in another process (a binary upgrade), so they are left
    /// listening rather than shut.
    Shutdown { grace: Duration, handover: bool },
}

/// The control plane's handle on a running worker.
pub struct WorkerHandle {
    pub mailbox: Arc<Mailbox>,
    pub thread: JoinHandle<()>,
}

/// Everything a worker needs to start.
pub struct WorkerSpec {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub runtime: RuntimeOptions,
    pub snapshot: Arc<Snapshot>,
    /// Every worker's listening sockets (this worker's are at `index`).
    pub listeners: Arc<Listeners>,
    pub access_log: AccessLogConfig,
    /// Where passive health outcomes go (drained by the prober).
    pub passive: Arc<crate::health::PassiveQueue>,
    /// Every worker's metrics shard (this worker's is at `index`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Starts a worker thread.
pub fn spawn(spec: WorkerSpec) -> std::io::Result<WorkerHandle> {
    let (mailbox, doorbell) = Mailbox::new()?;
    let mailbox = Arc::new(mailbox);
    mailbox.set_applied(spec.snapshot.version);
    let inbox = mailbox.clone();
    let log = AccessLog::open(&spec.access_log)?;
    let thread = std::thread::Builder::new()
        .name(format!("shardgate-w{}", spec.index))
        .spawn(move || {
            if let Some(core) = spec.core {
                if !core_affinity::set_for_current(core) {
                    crate::warn!("worker {}: could not pin to core {}", spec.index, core.id);
                }
            }
            let mut rt = match runtime::build(&spec.runtime, spec.index) {
                Ok(rt) => rt,
                Err(e) => {
                    crate::error!("worker {}: cannot build runtime: {e}", spec.index);
                    std::process::exit(1);
                }
            };
            let epoll = matches!(rt, monoio::FusionRuntime::Legacy(_));
            rt.block_on(async move {
                let recorder = crate::metrics::Recorder::new(
                    spec.metrics.cores[spec.index].clone(),
                    &spec.metrics.settings,
                );
                let worker = Rc::new(Worker::new(
                    spec.index,
                    epoll,
                    spec.snapshot,
                    log,
                    spec.passive,
                    recorder,
                ));
                lifecycle::run(worker, spec.listeners, inbox, doorbell).await;
            });
        })?;
    Ok(WorkerHandle { mailbox, thread })
}
