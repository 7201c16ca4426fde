//! One pipelined connection to one Redis server, owned by one core.
//!
//! Every request on the core that needs this server queues its command here; one I/O task
//! writes whatever is queued in one write and hands replies back in order. While a batch is
//! out, the next one gathers, so under load each round trip carries many commands, and a
//! lone command costs one round trip.
//!
//! Failure is bounded by the endpoint's `timeout` (APISIX's `redis_timeout`):
//! - a call that gets no reply within it fails with [`Error::Timeout`] (its reply, if it
//!   comes later, is read and dropped, so the order of the others holds);
//! - a connection that cannot be made within it, or that breaks, fails every waiting call
//!   and marks the server down for a second: calls then fail at once ([`Error::Down`]),
//!   without waiting, and the first call after that second connects again. So a dead
//!   Redis costs a request nothing, and a restarted one is used again within a second.
//! - a connection that stays silent for twice the timeout while replies are due is taken as
//!   dead (a hung server, a lost network) and replaced.

use super::resp::{self, Parsed, Reply};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Where a Redis server is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
    pub timeout: Duration,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("redis is unavailable: {0}")]
    Down(String),
    #[error("redis did not reply in time")]
    Timeout,
    #[error("redis replied with an error: {0}")]
    Server(String),
}

/// How long a server stays marked down after a failed connection.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// A core's connection to one server (cheap to clone: one shared state).
#[derive(Clone)]
pub struct Client {
    shared: Rc<Shared>,
}

struct Shared {
    endpoint: Endpoint,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Encoded commands not written yet.
    out: Vec<u8>,
    /// Calls whose replies are due, in order (written or queued in `out`).
    waiting: VecDeque<Rc<Waiter>>,
    /// The I/O task exists.
    running: bool,
    /// The I/O task sleeps until a command is queued.
    wake_io: Option<Waker>,
    /// Marked down until then, with why.
    down: Option<(Instant, String)>,
}

#[derive(Default)]
struct Waiter {
    reply: RefCell<Option<Result<Reply, Error>>>,
    waker: RefCell<Option<Waker>>,
    /// Whose command it is.
    kind: Kind,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A caller's.
    #[default]
    Call,
    /// AUTH or SELECT, sent by the connection itself: an error reply breaks the connection.
    Login,
    /// Sent just before a caller's to prepare it (`ASKING`), or sent detached; the reply
    /// is dropped.
    Prefix,
}

impl Waiter {
    fn complete(&self, reply: Result<Reply, Error>) {
        *self.reply.borrow_mut() = Some(reply);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves when the waiter has its reply.
struct Wait(Rc<Waiter>);

impl Future for Wait {
    type Output = Result<Reply, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.reply.borrow_mut().take() {
            Some(r) => Poll::Ready(r),
            None => {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Resolves when a command is queued (the I/O task's idle wait).
struct Queued<'a>(&'a Shared);

impl Future for Queued<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.state.borrow_mut();
        match st.out.is_empty() {
            false => Poll::Ready(()),
            true => {
                st.wake_io = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            shared: Rc::new(Shared {
                endpoint,
                state: RefCell::new(State::default()),
            }),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Sends one command (`args[0]` is its name) and waits for its reply, at most the
    /// endpoint's timeout. An error reply is [`Error::Server`].
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, Error> {
        self.call_after(None, args).await
    }

    /// Queues a command whose reply nobody waits for, if the connection is up (a command
    /// from a destructor: nothing may wait there); dropped otherwise.
    pub fn send_detached(&self, args: &[&[u8]]) {
        let mut st = self.shared.state.borrow_mut();
        if !st.running || st.down.is_some() {
            return;
        }
        resp::encode(&mut st.out, args);
        st.waiting.push_back(Rc::new(Waiter {
            kind: Kind::Prefix,
            ..Waiter::default()
        }));
        if let Some(w) = st.wake_io.take() {
            w.wake();
        }
    }

    /// [`Client::call`], with `prefix` sent right before `args` on the same connection,
    /// nothing between them (`ASKING`, which applies to the next command only).
    pub async fn call_after(
        &self,
        prefix: Option<&[&[u8]]>,
        args: &[&[u8]],
    ) -> Result<Reply, Error> {
        let waiter = Rc::new(Waiter::default());
        {
            let mut st = self.shared.state.borrow_mut();
            if let Some((until, why)) = &st.down {
                if Instant::now() < *until {
                    return Err(Error::Down(why.clone()));
                }
                st.down = None;
            }
            if let Some(prefix) = prefix {
                resp::encode(&mut st.out, prefix);
                st.waiting.push_back(Rc::new(Waiter {
                    kind: Kind::Prefix,
                    ..Waiter::default()
                }));
            }
            resp::encode(&mut st.out, args);
            st.waiting.push_back(waiter.clone());
            if !st.running {
                st.running = true;
                monoio::spawn(run(self.shared.clone()));
            } else if let Some(w) = st.wake_io.take() {
                w.wake();
            }
        }
        match monoio::time::timeout(self.shared.endpoint.timeout, Wait(waiter)).await {
            Ok(Ok(Reply::Error(e))) => Err(Error::Server(e)),
            Ok(reply) => reply,
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl Shared {
    /// The connection is gone: every waiting call fails, the server is down for a while.
    fn fail(&self, why: String) {
        let waiting = {
            let mut st = self.state.borrow_mut();
            st.out.clear();
            st.running = false;
            st.wake_io = None;
            st.down = Some((Instant::now() + DOWN_FOR, why.clone()));
            std::mem::take(&mut st.waiting)
        };
        crate::error!(
            "redis {}: {why}; marked down for {}s",
            self.endpoint.addr,
            DOWN_FOR.as_secs()
        );
        for w in waiting {
            w.complete(Err(Error::Down(why.clone())));
        }
    }

    /// Puts AUTH and SELECT ahead of whatever is queued (nothing queued is written yet).
    fn queue_login(&self) {
        let ep = &self.endpoint;
        let mut login = Vec::new();
        let mut waiters = 0;
        if let Some(password) = ep.password.as_deref().filter(|p| !p.is_empty()) {
            match &ep.username {
                Some(user) => {
                    resp::encode(&mut login, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                }
                None => resp::encode(&mut login, &[b"AUTH", password.as_bytes()]),
            }
            waiters += 1;
        }
        if ep.database != 0 {
            resp::encode(&mut login, &[b"SELECT", ep.database.to_string().as_bytes()]);
            waiters += 1;
        }
        let mut st = self.state.borrow_mut();
        for _ in 0..waiters {
            st.waiting.push_front(Rc::new(Waiter {
                kind: Kind::Login,
                ..Waiter::default()
            }));
        }
        login.extend_from_slice(&st.out);
        st.out = login;
    }

    /// Hands a reply to the oldest waiting call; a login refused is the connection's end.
    fn deliver(&self, reply: Reply) -> Result<(), String> {
        let waiter = self.state.borrow_mut().waiting.pop_front();
        match (waiter.as_ref().map(|w| w.kind), reply) {
            (Some(Kind::Login), Reply::Error(e)) => Err(format!("login refused: {e}")),
            (Some(Kind::Login | Kind::Prefix), _) => Ok(()),
            (Some(Kind::Call), reply) => {
                waiter.expect("matched Some").complete(Ok(reply));
                Ok(())
            }
            (None, _) => Err("a reply nobody asked for".into()),
        }
    }
}

/// The I/O task: connects, then writes queued commands and reads replies until the
/// connection fails.
async fn run(shared: Rc<Shared>) {
    let ep = shared.endpoint.clone();
    let stream = match monoio::time::timeout(ep.timeout, TcpStream::connect_addr(ep.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return shared.fail(format!("cannot connect: {e}")),
        Err(_) => return shared.fail("connecting timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    shared.queue_login();
    if let Err(why) = serve(&shared, stream, ep.timeout * 2).await {
        shared.fail(why);
    }
}

async fn serve(shared: &Shared, mut stream: TcpStream, silence: Duration) -> Result<(), String> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        std::mem::swap(&mut shared.state.borrow_mut().out, &mut out);
        if !out.is_empty() {
            let (res, written) = stream.write_all(out).await;
            out = written;
            out.clear();
            res.map_err(|e| format!("write failed: {e}"))?;
        }
        if shared.state.borrow().waiting.is_empty() {
            Queued(shared).await;
            continue;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let len = buf.len();
        let read = monoio::time::timeout(
            silence,
            stream.read(monoio::buf::IoBufMut::slice_mut(
                std::mem::take(&mut buf),
                len..,
            )),
        )
        .await;
        let (res, slice) = read.map_err(|_| format!("no reply for {}s", silence.as_secs_f64()))?;
        buf = slice.into_inner();
        match res {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
        let mut at = 0;
        while let Parsed::Reply(reply, used) = resp::parse(&buf[at..])? {
            at += used;
            shared.deliver(reply)?;
        }
        buf.drain(..at);
    }
}
