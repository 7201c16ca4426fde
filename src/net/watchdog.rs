//! Per-operation timeouts without a timer per operation.
//!
//! Every read and write on the request path has a limit (client header/body/send timeouts,
//! upstream send/read timeouts). Wrapping each operation in a runtime timer cost about 9% of
//! the gateway's CPU per small request (timer-wheel insert and remove, an extra future layer,
//! clock reads). Instead, each connection has one [`Watch`]: before an operation it records the
//! socket, the direction and a deadline (two cell writes against a clock the worker refreshes
//! on its tick), and clears it after. The worker's tick sweeps the watches; when an armed
//! deadline has passed it shuts the socket down in that direction (`shutdown(2)`), which ends
//! the pending operation at once (a read sees end-of-stream, a write a broken pipe) and marks
//! the watch as fired, so the connection code reports a timeout rather than a close.
//!
//! Shutting down only the timed-out direction leaves the other usable: after a client header
//! timeout the gateway can still write its 408. Deadlines are honoured to within one tick
//! (25 ms) late or one clock refresh early, plenty for limits measured in seconds.
//!
//! The same sweep lets an idle connection give its memory back. A read armed with
//! [`Watch::arm_parkable`] (a client's next request head, an upstream's response head) that
//! is still pending at the second tick after it was armed, so 25 to 50 ms without a byte, is
//! parked: cancelled in the kernel (io_uring `ASYNC_CANCEL`), it ends with `ECANCELED` and
//! its buffer comes back untouched, and the connection waits for readability without a
//! buffer (`proxy::session`, `proxy::upstream`). Cancelling rather than dropping the read
//! matters: a read that completed in the kernel just before would lose its bytes with a
//! dropped buffer; a failed cancel leaves its result intact. Reads that complete sooner,
//! which is every read of a busy keep-alive connection, never see the sweep: the hot path
//! keeps one read per request.

use monoio::io::{CancelHandle, Canceller};
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// Which direction to shut down when the deadline passes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// One connection's timeout slot.
pub struct Watch {
    clock: Rc<Cell<Instant>>,
    /// The socket being watched; -1 when disarmed.
    fd: Cell<RawFd>,
    dir: Cell<Dir>,
    deadline: Cell<Instant>,
    fired: Cell<bool>,
    /// While set (>= 0), the client socket to look at on each tick: when the client has gone
    /// (end of stream or reset), the armed operation is ended as if timed out and
    /// [`Watch::client_gone`] says why.
    client: Cell<RawFd>,
    gone: Cell<bool>,
    /// The armed read may be parked (cancelled) once it has waited a whole tick.
    parkable: Cell<bool>,
    /// A tick has seen the parkable read pending: the next one parks it.
    seen: Cell<bool>,
    /// A tick cancelled the armed read to park the connection.
    parked: Cell<bool>,
    /// Cancels the parkable read (the handle given to the read ties it to its operation).
    /// Made by the first parkable read of a busy period and let go when the read is
    /// parked: a parked connection does not keep its two small allocations.
    canceller: RefCell<Option<Canceller>>,
}

impl Watch {
    /// Watches `fd` for `limit` from now (coarse clock).
    pub fn arm(&self, fd: RawFd, dir: Dir, limit: Duration) {
        self.arm_until(fd, dir, self.deadline_in(limit));
    }

    /// Watches `fd` until `deadline` (from [`Watch::deadline_in`]): for a wait that must not
    /// restart the clock when it wakes without progress.
    pub fn arm_until(&self, fd: RawFd, dir: Dir, deadline: Instant) {
        self.deadline.set(deadline);
        self.dir.set(dir);
        self.fired.set(false);
        self.parkable.set(false);
        self.fd.set(fd);
    }

    /// Arms a read of `fd` until `deadline` that the tick may park when no byte comes for a
    /// tick or two; the read is to be made with the returned handle (`cancelable_read`).
    pub fn arm_parkable(&self, fd: RawFd, deadline: Instant) -> CancelHandle {
        self.arm_until(fd, Dir::Read, deadline);
        self.parkable.set(true);
        self.seen.set(false);
        self.parked.set(false);
        self.canceller
            .borrow_mut()
            .get_or_insert_with(Canceller::new)
            .handle()
    }

    /// Whether the tick cancelled the read armed last (cleared by this call).
    pub fn take_parked(&self) -> bool {
        self.parked.replace(false)
    }

    /// Whether `deadline` has passed (coarse clock).
    pub fn passed(&self, deadline: Instant) -> bool {
        self.clock.get() >= deadline
    }

    /// The worker's coarse clock.
    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// The deadline `limit` from now (coarse clock).
    pub fn deadline_in(&self, limit: Duration) -> Instant {
        later(self.clock.get(), limit)
    }

    /// Also watch client socket `fd` (-1: stop) while operations are armed.
    pub fn watch_client(&self, fd: RawFd) {
        self.client.set(fd);
        self.gone.set(false);
    }

    /// The last fired operation was ended because the client went away.
    pub fn client_gone(&self) -> bool {
        self.gone.get()
    }

    /// Stops watching; returns whether the deadline fired during the operation.
    pub fn disarm(&self) -> bool {
        self.fd.set(-1);
        self.fired.replace(false)
    }
}

/// `now + limit`, without overflow: a limit too long to add (configs bound every duration
/// to a year, so this is only a guard) is a year.
pub fn later(now: Instant, limit: Duration) -> Instant {
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Whether the client behind `fd` has closed its side or reset the connection, by a
/// non-blocking one-byte peek: end of stream or an error other than "nothing yet". Bytes
/// waiting (a pipelined request) mean it is still there, as nginx reads it.
fn client_departed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local on a socket the watch's owner keeps open while
    // it is being watched.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let e = std::io::Error::last_os_error();
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            )
        }
    }
}

/// All watches of one worker, swept on its tick.
pub struct Watchdog {
    clock: Rc<Cell<Instant>>,
    watches: RefCell<Vec<Weak<Watch>>>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            clock: Rc::new(Cell::new(Instant::now())),
            watches: RefCell::new(Vec::new()),
        }
    }
}

impl Watchdog {
    /// A new watch, swept until it is dropped.
    pub fn watch(&self) -> Rc<Watch> {
        let w = Rc::new(Watch {
            clock: self.clock.clone(),
            fd: Cell::new(-1),
            dir: Cell::new(Dir::Read),
            deadline: Cell::new(self.clock.get()),
            fired: Cell::new(false),
            client: Cell::new(-1),
            gone: Cell::new(false),
            parkable: Cell::new(false),
            seen: Cell::new(false),
            parked: Cell::new(false),
            canceller: RefCell::new(None),
        });
        self.watches.borrow_mut().push(Rc::downgrade(&w));
        w
    }

    /// The worker's coarse clock (refreshed every tick): for deadlines that tolerate 25 ms.
    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Refreshes the clock and fires every armed watch whose deadline has passed.
    pub fn tick(&self) {
        let now = Instant::now();
        self.clock.set(now);
        self.watches.borrow_mut().retain(|weak| {
            let Some(w) = weak.upgrade() else {
                return false;
            };
            let fd = w.fd.get();
            if fd < 0 || w.fired.get() {
                return true;
            }
            let client = w.client.get();
            if client >= 0 && client_departed(client) {
                // Ends the upstream read at once; the connection reports 499.
                w.gone.set(true);
                w.fired.set(true);
                // SAFETY: as below: an armed watch's socket is open.
                unsafe {
                    libc::shutdown(fd, libc::SHUT_RD);
                }
                return true;
            }
            if w.deadline.get() <= now {
                w.fired.set(true);
                let how = match w.dir.get() {
                    Dir::Read => libc::SHUT_RD,
                    Dir::Write => libc::SHUT_WR,
                };
                // SAFETY: `fd` is the open socket of an operation in flight: the watch is
                // disarmed (fd = -1) before its socket can be closed.
                unsafe {
                    libc::shutdown(fd, how);
                }
            } else if w.parkable.get() && w.seen.replace(true) {
                w.parkable.set(false);
                w.parked.set(true);
                if let Some(canceller) = w.canceller.borrow_mut().take() {
                    // Returns a fresh canceller, not needed until the connection is busy again.
                    drop(canceller.cancel());
                }
            }
            true
        });
    }
}
