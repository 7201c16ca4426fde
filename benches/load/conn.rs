//! The per-connection request loop of the load generator.
//!
//! Responses are framed with the gateway's own strict parser (`shardgate::http`), so a
//! malformed response is counted as an error instead of being silently mis-read.

use crate::{new_histogram, Args, Shared, Target, ThreadResult};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use shardgate::http::chunked::ChunkedScanner;
use shardgate::http::response::{Parsed, ResponseFraming, ResponseHead};
use shardgate::net::io::read_more_timeout;
use shardgate::net::stream::Stream;
use shardgate::net::watchdog::{Watch, Watchdog};
use shardgate::tls::stream::TlsConn;
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
    let tls = target.tls.then(|| Tls::new(&args));
    // The TLS layer bounds its I/O with watches; requests are bounded by `timeout` already,
    // so the watchdog only prunes (it is ticked on each new connection).
    let watchdog = Rc::new(Watchdog::default());
    let mut tasks = Vec::new();
    for i in conns {
        // Stagger open-loop schedules so connections do not fire in lockstep.
        let first_due = interval.map(|iv| start + iv.mul_f64(i as f64 / args.connections as f64));
        tasks.push(monoio::spawn(connection(
            target.clone(),
            tls.clone(),
            watchdog.clone(),
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

/// This thread's TLS client: certificates not verified (the proxies' cost is measured, not
/// the client's), sessions resumed only with `--tls-resume` (one cache per thread, so
/// threads do not share its lock).
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    fn new(args: &Args) -> Tls {
        let mut config = shardgate::tls::client::builder(None)
            .expect("the provider supports the default protocol versions")
            .with_no_client_auth();
        if !args.tls_resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(args.sni.clone()).expect("--sni must be a DNS name");
        Tls {
            config: Arc::new(config),
            name,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    target: Target,
    tls: Option<Tls>,
    watchdog: Rc<Watchdog>,
    mut due: Option<Instant>,
    interval: Option<Duration>,
    new_conn: bool,
    timeout: Duration,
    shared: Arc<Shared>,
    result: Rc<RefCell<ThreadResult>>,
    deadline: Instant,
) {
    let mut stream: Option<Stream> = None;
    let watch = watchdog.watch();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut head = ResponseHead::default();
    // Completed requests not yet added to the shared progress counter (batched: one atomic
    // add per 64 requests instead of one per request).
    let mut unreported = 0u64;
    // Open loop: a precise timer per connection (millisecond sleeps when none can be had).
    let pacer = due.and_then(|_| crate::pacer::Pacer::new().ok());
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
                match &pacer {
                    Some(p) if p.until(d).await.is_ok() => {}
                    _ => monoio::time::sleep(d - now).await,
                }
            }
        }
        if !shared.admit() {
            break;
        }
        // Open loop: latency counts from when the request was due (coordinated omission).
        let began = due.unwrap_or_else(Instant::now);
        if stream.is_none() {
            watchdog.tick();
        }
        let exchange = exchange(&mut stream, &mut buf, &mut head, &target, &tls, &watch);
        let outcome = monoio::time::timeout(timeout, exchange).await;
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

async fn fill(stream: &mut Stream, buf: &mut Vec<u8>, watch: &Watch) -> Result<usize, Fail> {
    let len = buf.len();
    if buf.capacity() - len < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    let Stream::Plain(stream) = stream else {
        return read_more_timeout(stream, buf, 16 * 1024, Duration::from_secs(3600), watch)
            .await
            .map_err(|_| Fail::Read);
    };
    let (res, slice) = stream
        .read(monoio::buf::IoBufMut::slice_mut(std::mem::take(buf), len..))
        .await;
    *buf = slice.into_inner();
    res.map_err(|_| Fail::Read)
}

/// One request/response exchange. Returns (connection reusable, status).
async fn exchange(
    stream: &mut Option<Stream>,
    buf: &mut Vec<u8>,
    head: &mut ResponseHead,
    target: &Target,
    tls: &Option<Tls>,
    watch: &Watch,
) -> Result<(bool, u16), Fail> {
    let forever = Duration::from_secs(3600);
    if stream.is_none() {
        let s = TcpStream::connect_addr(target.addr)
            .await
            .map_err(|_| Fail::Connect)?;
        let _ = s.set_nodelay(true);
        buf.clear();
        *stream = Some(match tls {
            None => Stream::Plain(s),
            Some(t) => {
                let c = TlsConn::connect(s, t.config.clone(), t.name.clone(), forever, watch)
                    .await
                    .map_err(|_| Fail::Connect)?;
                Stream::Tls(Box::new(c))
            }
        });
    }
    let s = stream.as_mut().expect("connected above");
    match s {
        Stream::Plain(p) => {
            let (res, _) = p.write_all(target.request).await;
            res.map_err(|_| Fail::Write)?;
        }
        Stream::Tls(t) => t
            .write(target.request, forever, watch)
            .await
            .map_err(|_| Fail::Write)?,
        // Never made here: the load generator speaks HTTP/1.1 (h2load measures HTTP/2).
        Stream::H2(_) => return Err(Fail::Write),
    }

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
        if fill(s, buf, watch).await? == 0 {
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
            if fill(s, buf, watch).await? == 0 {
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
                if fill(s, buf, watch).await? == 0 {
                    return Err(Fail::Protocol);
                }
            }
        }
        ResponseFraming::UntilClose => {
            buf.clear();
            while fill(s, buf, watch).await? > 0 {
                buf.clear();
            }
            return Ok((false, status));
        }
    }
    Ok((keep, status))
}
