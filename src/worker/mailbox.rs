//! How the control plane talks to a worker: a lock-free queue the worker drains on its
//! housekeeping tick, and a counter by which the worker reports which config version it has
//! switched to.
//!
//! Control messages are rare (a reload, a shutdown), so polling every few tens of milliseconds
//! costs nothing measurable and needs no cross-thread wake-up machinery: the worker's request
//! path never touches the mailbox, and nothing here takes a lock.

use super::ControlMsg;
use crossbeam_queue::SegQueue;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<ControlMsg>,
    /// Version of the snapshot the worker serves new requests with.
    applied: AtomicU64,
}

impl Mailbox {
    pub fn send(&self, msg: ControlMsg) {
        self.queue.push(msg);
    }

    pub fn take(&self) -> Option<ControlMsg> {
        self.queue.pop()
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, version: u64) {
        self.applied.store(version, Ordering::Release);
    }
}
