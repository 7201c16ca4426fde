//! A worker's life: start the accept loops, then the 25 ms housekeeping tick (control
//! messages, health batches, log flushing, pool sweeping) until told to stop, then the
//! graceful drain.

use super::accept::Listeners;
use super::state::{Local, Worker};
use super::{ControlMsg, Mailbox};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How often a worker looks at its mailbox, flushes its access log and sweeps its pool.
const TICK: Duration = Duration::from_millis(25);

/// Runs a worker until shutdown completes.
pub async fn run(worker: Rc<Worker>, listeners: Arc<Listeners>, mailbox: Arc<Mailbox>) {
    super::accept::start(&worker, &listeners, worker.index);

    // Housekeeping until told to stop: control messages, log flushing, pool sweeping.
    let mut ticks = 0u32;
    let grace = 'serve: loop {
        monoio::time::sleep(TICK).await;
        worker.watchdog.tick();
        worker.flush_health();
        while let Some(msg) = mailbox.take() {
            match msg {
                ControlMsg::Snapshot(s) => {
                    let version = s.version;
                    let next = Local::new(s, Some(&worker.current()));
                    *worker.current.borrow_mut() = Rc::new(next);
                    mailbox.set_applied(version);
                }
                ControlMsg::Shutdown { grace } => break 'serve grace,
            }
        }
        worker.log.flush();
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(40) {
            worker.pool.sweep();
        }
    };

    // Shutdown: the listeners are shut, accept loops stop, in-flight requests finish, idle
    // keep-alive connections are dropped with the runtime.
    worker.stopping.set(true);
    listeners.stop_listening(worker.index);
    worker.wake_all();
    monoio::spawn(flush_while_draining(worker.clone()));
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

/// Keeps the access log flowing while in-flight requests finish.
async fn flush_while_draining(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(TICK).await;
        worker.watchdog.tick();
        worker.log.flush();
    }
}
