//! Accepting connections: each worker's own SO_REUSEPORT queue, and taking over what waits in
//! a sibling's.
//!
//! The kernel hashes every new connection onto one worker's listener by its addresses and
//! ports, without looking at how busy that worker is. A worker whose core is taken (a
//! neighbour process, interrupts, a long request) drains its queue late, and the connections
//! hashed to it wait, however idle the other workers are.
//!
//! So after every accept from its own queue, a worker looks at one sibling's queue for the
//! same address (a different sibling each time) and, when more than one connection waits
//! there, accepts all but one of them, a few at most, or fewer when its own queue is not
//! empty: it takes only what puts the sibling's backlog above its own by more than one. The
//! one left is what a sibling that was merely asleep finds when the kernel's wake-up reaches
//! it: taking that too would let a busy worker that happens to be awake pull every new
//! connection onto itself. A backlog of two or more means the sibling is not keeping up; a
//! smaller one of its own means the thief is doing better. This is the effect of HAProxy's
//! load-aware accept queues (which compare queue lengths and connection counts), with no
//! shared queue, no lock and no wake-up of anyone. When the sibling keeps up, the cost is one
//! `getsockopt(2)` per accept. `steal_accepts = false` turns it off.
//!
//! Limits: a sibling is only relieved when another worker accepts a connection of its own,
//! so at the end of a burst what hashed to a stuck worker after the others' last accept
//! waits for it. With more than two workers, two thieves may act on the same reading of a
//! backlog and leave the sibling nothing; it then wakes up to an empty queue. Connections are
//! never moved once accepted.
//!
//! Every listening socket stays open, shared by all workers, until the last worker is gone,
//! so the descriptor a worker steals from is never closed and reused under it. A stopping
//! worker shuts its listeners down instead (`shutdown(SHUT_RD)` on a listening socket stops
//! it listening and takes it out of the SO_REUSEPORT group; connections still queued on it
//! are reset, as a close would), so new connections go to the other listeners or, once all
//! are shut, are refused. A shut socket no longer reports a backlog, so siblings leave it
//! alone. A worker stopping for a binary upgrade does not shut them: they are the new
//! process's too (`net/inherit.rs`); it only stops accepting, and its descriptors close when
//! its last worker is gone.

use super::state::Worker;
use crate::net::{inherit, sockopt};
use monoio::net::{TcpListener, TcpStream};
use socket2::SockRef;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most connections taken from a sibling's queue per attempt.
const STEAL_BATCH: usize = 8;

/// Every worker's listening sockets, shared by all workers: `by_worker[w][a]` is worker `w`'s
/// socket for listen address `a`.
pub struct Listeners {
    by_worker: Vec<Vec<std::net::TcpListener>>,
    /// Whether address `a` terminates TLS.
    tls: Vec<bool>,
    /// Inherited sockets beyond this process's workers (the old one had more): `extra[w]`
    /// holds (address index, socket) pairs worker `w` accepts on too. Left alone, the
    /// kernel would keep queueing connections on them that nobody takes.
    extra: Vec<Vec<(usize, std::net::TcpListener)>>,
}

impl Listeners {
    /// Binds one SO_REUSEPORT listener per worker and address, plain and TLS (or takes the
    /// one a previous process handed over, `net/inherit.rs`); on failure, the address that
    /// could not be bound.
    pub fn bind(
        workers: usize,
        plain: &[SocketAddr],
        tls: &[SocketAddr],
    ) -> Result<Listeners, (SocketAddr, std::io::Error)> {
        let mut by_worker = Vec::with_capacity(workers);
        for w in 0..workers {
            let mut own = Vec::with_capacity(plain.len() + tls.len());
            for &addr in plain.iter().chain(tls) {
                let key = inherit::data_key(w, addr);
                let socket =
                    inherit::listener(&key, addr, || crate::net::listen::reuseport_listener(addr))
                        .map_err(|e| (addr, e))?;
                // Stealing relies on it: between reading a sibling's backlog and accepting,
                // the sibling may take the connection, and a blocking accept4(2) would then
                // stall the thief's whole worker.
                socket.set_nonblocking(true).map_err(|e| (addr, e))?;
                own.push(socket);
            }
            by_worker.push(own);
        }
        let addrs: Vec<SocketAddr> = plain.iter().chain(tls).copied().collect();
        let mut extra: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for (old_w, addr, socket) in inherit::leftover_data() {
            if let Some(a) = addrs.iter().position(|&x| x == addr) {
                inherit::hold(&inherit::data_key(old_w, addr), &socket);
                extra[old_w % workers].push((a, socket));
            }
        }
        inherit::close_leftovers();
        let tls = plain.iter().map(|_| false).chain(tls.iter().map(|_| true));
        Ok(Listeners {
            by_worker,
            tls: tls.collect(),
            extra,
        })
    }

    fn workers(&self) -> usize {
        self.by_worker.len()
    }

    /// Stops the kernel queueing connections on worker `w`'s sockets: they go to the other
    /// listeners on the address, or are refused once all are shut. The descriptors stay open
    /// for siblings that may be reading them. Called by the stopping worker itself, before it
    /// drains: not from its accept loops, which may never run again once the worker's last
    /// request is done and its runtime ends.
    pub fn stop_listening(&self, w: usize) {
        let extra = self.extra[w].iter().map(|(_, s)| s);
        for socket in self.by_worker[w].iter().chain(extra) {
            let _ = SockRef::from(socket).shutdown(std::net::Shutdown::Read);
        }
    }
}

/// Starts worker `me`'s accept loops, one per listen address (and inherited extra socket).
/// Returns how many are still running: a stop for an upgrade waits until they have ended.
pub fn start(worker: &Rc<Worker>, listeners: &Arc<Listeners>, me: usize) -> Rc<Cell<usize>> {
    let running = Rc::new(Cell::new(0));
    let own = listeners.by_worker[me].iter().enumerate();
    let extra = listeners.extra[me].iter().map(|(a, s)| (*a, s));
    for (addr_index, socket) in own.chain(extra) {
        // monoio closes what it owns when the loop ends; the shared socket stays open.
        let owned = socket.try_clone().and_then(TcpListener::from_std);
        match owned {
            Ok(l) => {
                let stealer = Stealer {
                    listeners: listeners.clone(),
                    me,
                    addr_index,
                    next: me,
                };
                let tls = listeners.tls[addr_index];
                running.set(running.get() + 1);
                let (running, worker) = (running.clone(), worker.clone());
                monoio::spawn(async move {
                    accept_loop(worker, l, tls, stealer).await;
                    running.set(running.get() - 1);
                });
            }
            Err(e) => {
                crate::error!("worker {}: cannot register listener: {e}", worker.index);
                std::process::exit(1);
            }
        }
    }
    running
}

/// Takes connections waiting in siblings' queues for one listen address.
struct Stealer {
    listeners: Arc<Listeners>,
    me: usize,
    addr_index: usize,
    /// The sibling tried last; the next attempt tries the one after it.
    next: usize,
}

impl Stealer {
    fn own_socket(&self) -> &std::net::TcpListener {
        &self.listeners.by_worker[self.me][self.addr_index]
    }

    /// Accepts connections waiting in the next sibling's queue while it holds at least two
    /// more than this worker's own: all but one when this worker's queue is empty, at most
    /// `STEAL_BATCH`, and at most `room` (what `max_connections` leaves).
    fn steal(&mut self, epoll: bool, room: usize, mut take: impl FnMut(TcpStream, SocketAddr)) {
        let n = self.listeners.workers();
        if n < 2 {
            return;
        }
        self.next = (self.next + 1) % n;
        if self.next == self.me {
            self.next = (self.next + 1) % n;
        }
        let sibling = &self.listeners.by_worker[self.next][self.addr_index];
        let waiting = sockopt::accept_backlog(sibling).unwrap_or(0) as usize;
        if waiting < 2 {
            return;
        }
        // Only a thief less behind than the sibling takes anything (the second look is taken
        // only when there is something to take).
        let own = sockopt::accept_backlog(self.own_socket()).unwrap_or(0) as usize;
        let take_n = waiting.saturating_sub(own + 1).min(STEAL_BATCH).min(room);
        for _ in 0..take_n {
            // Non-blocking: the listener is (see `Listeners::bind`). The accepted socket is
            // blocking like the ones io_uring accepts (but close-on-exec, which those are
            // not; nothing here execs); the epoll driver needs it non-blocking.
            let Ok((socket, peer)) = SockRef::from(sibling).accept() else {
                return;
            };
            if epoll {
                if let Err(e) = socket.set_nonblocking(true) {
                    crate::warn!("worker {}: dropping a connection: {e}", self.me);
                    continue;
                }
            }
            let Some(peer) = peer.as_socket() else {
                crate::warn!("worker {}: dropping a connection with no IP peer", self.me);
                continue;
            };
            match TcpStream::from_std(socket.into()) {
                Ok(stream) => take(stream, peer),
                Err(e) => crate::warn!("worker {}: cannot register connection: {e}", self.me),
            }
        }
    }
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, tls: bool, mut stealer: Stealer) {
    let port: Rc<str> = listener
        .local_addr()
        .map(|a| a.port().to_string())
        .unwrap_or_default()
        .into();
    let port = Rc::new(crate::proxy::Entrance { port, tls });
    let mut stop = std::pin::pin!(worker.stop_signal());
    let canceller = monoio::io::Canceller::new();
    let serve = |stream: TcpStream, peer: SocketAddr| {
        monoio::spawn(crate::proxy::serve(
            worker.clone(),
            stream,
            peer,
            port.clone(),
        ));
    };
    loop {
        let room = room_to_accept(&worker).await;
        if room == 0 {
            break; // stopping, with no accept in flight
        }
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let accepted = monoio::select! {
            _ = &mut stop => None,
            accepted = &mut accept => Some(accepted),
        };
        let Some(accepted) = accepted else {
            // Stopping. An io_uring accept dropped in flight would lose a connection the
            // kernel handed it meanwhile (open until exit, then reset): cancel it and wait
            // for its outcome instead, serving what it brings.
            drop(canceller.cancel());
            if let Ok((stream, peer)) = accept.await {
                serve(stream, peer);
            }
            break;
        };
        match accepted {
            Ok((stream, peer)) => {
                serve(stream, peer);
                if worker.current().shared.settings.steal_accepts && room > 1 {
                    stealer.steal(worker.epoll, room - 1, serve);
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                crate::warn!("worker {}: accept failed: {e}", worker.index);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
}

/// How long a worker at `max_connections` waits before it looks again.
const FULL_RECHECK: Duration = Duration::from_millis(5);

/// How many more connections this worker may accept now (`usize::MAX` without a limit).
/// At `max_connections` it stops accepting, as nginx does at `worker_connections`: new
/// connections wait in the kernel's accept queue (or a sibling takes them) until one of its
/// own closes. That is logged once per episode and counted (`shardgate_accept_paused_total`).
/// Returns 0 when the worker starts stopping meanwhile.
async fn room_to_accept(worker: &Worker) -> usize {
    let open = || worker.metrics.shard().active.load(Ordering::Relaxed).max(0) as usize;
    let limit = |w: &Worker| match w.current().shared.settings.max_connections {
        0 => usize::MAX,
        n => n as usize,
    };
    let (now, max) = (open(), limit(worker));
    if now < max {
        return max - now;
    }
    crate::metrics::bump(&worker.metrics.shard().accept_paused, 1);
    crate::warn!(
        "worker {}: {} connections open (max_connections): not accepting until one closes",
        worker.index,
        open()
    );
    while open() >= limit(worker) {
        if worker.stopping() {
            return 0;
        }
        monoio::time::sleep(FULL_RECHECK).await;
    }
    crate::info!("worker {}: accepting again", worker.index);
    limit(worker) - open()
}
