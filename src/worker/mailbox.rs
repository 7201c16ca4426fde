//! How the control plane talks to a worker: a lock-free queue, a doorbell, and a counter by
//! which the worker reports which config version it has switched to.
//!
//! The worker drains the queue on its housekeeping tick, and also as soon as the doorbell
//! rings: one byte written to a socket pair whose other end a task of the worker reads. An
//! Admin API change is answered only once every worker serves it, so the doorbell takes
//! that wait from up to a tick (25 ms) down to the time a worker needs to switch. The
//! request path never touches the mailbox, and nothing here takes a lock.

use super::ControlMsg;
use crossbeam_queue::SegQueue;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Mailbox {
    queue: SegQueue<ControlMsg>,
    /// Version of the snapshot the worker serves new requests with.
    applied: AtomicU64,
    /// The control plane's end of the doorbell (non-blocking: a full doorbell is already
    /// ringing).
    bell: UnixStream,
}

impl Mailbox {
    /// A mailbox, and the worker's end of its doorbell.
    pub fn new() -> std::io::Result<(Mailbox, UnixStream)> {
        let (bell, worker_end) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        Ok((
            Mailbox {
                queue: SegQueue::new(),
                applied: AtomicU64::new(0),
                bell,
            },
            worker_end,
        ))
    }

    pub fn send(&self, msg: ControlMsg) {
        self.queue.push(msg);
        let _ = (&self.bell).write(&[1]);
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
