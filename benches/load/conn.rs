//! The per-connection request loop of the load generator.
//!
//! Responses are framed with the gateway's own strict parser (`shardgate::http`), so a
//! malformed response is counted as an error instead of being silently mis-read.

use crate::{new_histogram, Args, Shared, Target, ThreadResult};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate::http::chunked::ChunkedScanner;
use shardgate::http::response::{Parsed, ResponseFraming, ResponseHead};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors by kind.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub connect: u64,
    pub write: u64,
    pub read: u64,
    pub timeout: u64,
    /// Responses that did not parse or ended early.
    pub protocol: u64,
    /// Responses with status >= 400 (their latency is still recorded).
    pub status: u64,
}

impl Errors {
    pub fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
        self.status += o.status;
    }

    pub fn total(&self) -> u64 {
        self.connect + self.write + self.read + self.timeout + self.protocol + self.status
    }
}

enum Fail {
    Connect,
    Write,
    Read,
    Protocol,
}

/// Runs this thread's connections to the end and returns what they measured.
pub async fn run_thread(
    conns: Vec<usize>,
    args: Args,
    target: Target,
    shared: Arc<Shared>,
    start: Instant,
    deadline: Instant,
) -> ThreadResult {
    let result = Rc::new(RefCell::new(ThreadResult {
        hist: new_histogram(),
        errors: Errors::default(),
    }));
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(0.001)));
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut tasks = Vec::new();
    for i in conns {
        // Stagger open-loop schedules so connections do not fire in lockstep.
        let first_due = interval.map(|iv| start + iv.mul_f64(i as f64 / args.connections as f64));
        tasks.push(monoio::spawn(connection(
            target.clone(),
            first_due,
            interval,
            args.new_conn,
            timeout,
            shared.clone(),
            result.clone(),
            deadline,
        )));
    }
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(result)
        .ok()
        .expect("all connection tasks finished")
        .into_inner()
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    target: Target,
    mut due: Option<Instant>,
    interval: Option<Duration>,
    new_conn: bool,
    timeout: Duration,
    shared: Arc<Shared>,
    result: Rc<RefCell<ThreadResult>>,
    deadline: Instant,
) {
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut head = ResponseHead::default();
    // Completed requests not yet added to the shared progress counter (batched: one atomic
    // add per 64 requests instead of one per request).
    let mut unreported = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(d) = due {
            if d >= deadline {
                break;
            }
            if d > now {
                monoio::time::sleep(d - now).await;
            }
        }
        if !shared.admit() {
            break;
        }
        // Open loop: latency counts from when the request was due (coordinated omission).
        let began = due.unwrap_or_else(Instant::now);
        let outcome =
            monoio::time::timeout(timeout, exchange(&mut stream, &mut buf, &mut head, &target))
                .await;
        let mut r = result.borrow_mut();
        match outcome {
            Ok(Ok((keep, status))) => {
                let us = began.elapsed().as_micros() as u64;
                r.hist.saturating_record(us.max(1));
                if status >= 400 {
                    r.errors.status += 1;
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                if !keep || new_conn {
                    stream = None;
                }
            }
            Ok(Err(kind)) => {
                match kind {
                    Fail::Connect => r.errors.connect += 1,
                    Fail::Write => r.errors.write += 1,
                    Fail::Read => r.errors.read += 1,
                    Fail::Protocol => r.errors.protocol += 1,
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
            Err(_) => {
                r.errors.timeout += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
        drop(r);
        unreported += 1;
        if unreported == 64 {
            shared.requests.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
        if let (Some(d), Some(iv)) = (&mut due, interval) {
            *d += iv;
        }
    }
    shared.requests.fetch_add(unreported, Ordering::Relaxed);
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Fail> {
    let len = buf.len();
    if buf.capacity() - len < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    let (res, slice) = stream
        .read(monoio::buf::IoBufMut::slice_mut(std::mem::take(buf), len..))
        .await;
    *buf = slice.into_inner();
    res.map_err(|_| Fail::Read)
}

/// One request/response exchange. Returns (connection reusable, status).
async fn exchange(
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    head: &mut ResponseHead,
    target: &Target,
) -> Result<(bool, u16), Fail> {
    if stream.is_none() {
        let s = TcpStream::connect_addr(target.addr)
            .await
            .map_err(|_| Fail::Connect)?;
        let _ = s.set_nodelay(true);
        buf.clear();
        *stream = Some(s);
    }
    let s = stream.as_mut().expect("connected above");
    let (res, _) = s.write_all(target.request).await;
    res.map_err(|_| Fail::Write)?;

    loop {
        if !buf.is_empty() {
            match head.parse(buf, false, 64 * 1024) {
                Ok(Parsed::Complete) if head.status >= 200 => break,
                Ok(Parsed::Complete) => {
                    let n = head.len;
                    buf.drain(..n);
                    continue;
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(Fail::Protocol),
            }
        }
        if fill(s, buf).await? == 0 {
            return Err(Fail::Protocol);
        }
    }
    let status = head.status;
    let keep = !head.close;
    let n = head.len;
    buf.drain(..n);
    match head.framing() {
        ResponseFraming::None => {}
        ResponseFraming::Length(mut left) => loop {
            let take = (buf.len() as u64).min(left) as usize;
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                break;
            }
            if fill(s, buf).await? == 0 {
                return Err(Fail::Protocol);
            }
        },
        ResponseFraming::Chunked => {
            let mut scanner = ChunkedScanner::new();
            loop {
                let used = scanner.advance(buf, |_| {}).map_err(|_| Fail::Protocol)?;
                buf.drain(..used);
                if scanner.is_done() {
                    break;
                }
                if fill(s, buf).await? == 0 {
                    return Err(Fail::Protocol);
                }
            }
        }
        ResponseFraming::UntilClose => {
            buf.clear();
            while fill(s, buf).await? > 0 {
                buf.clear();
            }
            return Ok((false, status));
        }
    }
    Ok((keep, status))
}
