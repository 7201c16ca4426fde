//! A worker's life: start the accept loops, then the 25 ms housekeeping tick (control
//! messages, health batches, log flushing, pool sweeping) until told to stop, then the
//! graceful drain.

use super::accept::Listeners;
use super::state::{Local, Worker};
use super::{ControlMsg, Mailbox};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a worker looks at its mailbox, flushes its access log and sweeps its pool.
const TICK: Duration = Duration::from_millis(25);

/// How long a worker stopping for an upgrade waits after its last accept before it counts
/// in-flight requests: a client's request follows its handshake within a round trip.
const HANDOVER_SETTLE: Duration = Duration::from_millis(200);

/// Runs a worker until shutdown completes.
pub async fn run(
    worker: Rc<Worker>,
    listeners: Arc<Listeners>,
    mailbox: Arc<Mailbox>,
    doorbell: std::os::unix::net::UnixStream,
) {
    let accepting = super::accept::start(&worker, &listeners, worker.index);
    let stop: Rc<Cell<Option<Stop>>> = Rc::new(Cell::new(None));
    // io_uring reads block in the kernel, not the thread; epoll needs non-blocking sockets.
    let bell = doorbell
        .set_nonblocking(worker.epoll)
        .and_then(|()| monoio::net::UnixStream::from_std(doorbell));
    match bell {
        Ok(bell) => {
            monoio::spawn(answer_the_doorbell(
                worker.clone(),
                mailbox.clone(),
                stop.clone(),
                bell,
            ));
        }
        Err(e) => crate::warn!(
            "worker {}: no doorbell ({e}): config changes wait for the next tick",
            worker.index
        ),
    }

    // Housekeeping until told to stop: control messages, log flushing, pool sweeping.
    let mut ticks = 0u32;
    let Stop { grace, handover } = loop {
        monoio::time::sleep(TICK).await;
        worker.watchdog.tick();
        worker.flush_health();
        drain_mailbox(&worker, &mailbox, &stop);
        if let Some(order) = stop.get() {
            break order;
        }
        worker.log.flush();
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(40) {
            worker.pool.sweep();
            worker.scratch.trim();
            give_back_memory();
        }
    };

    // Shutdown: the listeners are shut, accept loops stop, in-flight requests finish, idle
    // keep-alive connections are dropped with the runtime.
    worker.stopping.set(true);
    if !handover {
        listeners.stop_listening(worker.index);
    }
    worker.wake_all();
    monoio::spawn(flush_while_draining(worker.clone()));
    if handover {
        // The sockets stay listening for the new process: wait for the accept loops' last
        // accepts to come back (served, not lost), then give connections accepted at the last
        // moment, and requests just sent on idle keep-alive connections, a moment to arrive
        // before "idle" means what it says.
        while accepting.get() > 0 {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        monoio::time::sleep(HANDOVER_SETTLE).await;
    }
    if monoio::time::timeout(grace, worker.idle_signal())
        .await
        .is_err()
    {
        crate::warn!(
            "worker {}: {} request(s) still in flight after the {:?} grace period",
            worker.index,
            worker.busy.get(),
            grace
        );
    }
    worker.pool.clear();
    worker.log.flush();
}

/// Has the allocator return this thread's freed pages to the OS now rather than at its next
/// allocations: after a burst of connections parks, their buffers are free but a quiet
/// worker would keep the pages resident (measured at 15,000 parked connections: 3.1 -> 1.9
/// KiB per idle keep-alive connection). Called on the pool sweep, once a second: about
/// 0.3 ms with 15,000 connections parked.
fn give_back_memory() {
    // SAFETY: mi_collect only reorganises the calling thread's own heap; no pointer is passed.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Keeps the access log flowing while in-flight requests finish.
async fn flush_while_draining(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(TICK).await;
        worker.watchdog.tick();
        worker.log.flush();
    }
}

/// The order to stop, as noted for the tick loop.
#[derive(Clone, Copy)]
struct Stop {
    grace: Duration,
    handover: bool,
}

/// Applies what the control plane sent: a new snapshot (carried over from the current one),
/// or the order to stop (noted in `stop` for the tick loop).
fn drain_mailbox(worker: &Rc<Worker>, mailbox: &Mailbox, stop: &Cell<Option<Stop>>) {
    while let Some(msg) = mailbox.take() {
        match msg {
            ControlMsg::Snapshot(s) => {
                let version = s.version;
                let next = Local::new(s, Some(&worker.current()));
                *worker.current.borrow_mut() = Rc::new(next);
                mailbox.set_applied(version);
                let shard = worker.metrics.shard();
                shard.config_version.store(version, Ordering::Relaxed);
            }
            ControlMsg::Shutdown { grace, handover } => stop.set(Some(Stop { grace, handover })),
        }
    }
}

/// Drains the mailbox as soon as the control plane rings (see `mailbox.rs`).
async fn answer_the_doorbell(
    worker: Rc<Worker>,
    mailbox: Arc<Mailbox>,
    stop: Rc<Cell<Option<Stop>>>,
    mut bell: monoio::net::UnixStream,
) {
    use monoio::io::AsyncReadRent;
    let mut buf = vec![0u8; 64];
    loop {
        let (read, b) = bell.read(buf).await;
        buf = b;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => drain_mailbox(&worker, &mailbox, &stop),
        }
        if stop.get().is_some() {
            return;
        }
    }
}
