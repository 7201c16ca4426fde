//! `sg-load`: Shardgate's HTTP/1.1 load generator.
//!
//! One pinned monoio runtime per `--threads`, connections spread across them. Two load models:
//! - closed loop (default): every connection sends its next request as soon as the previous
//!   answer arrived: measures maximum throughput;
//! - open loop (`--rate`): requests are due on a fixed schedule; latency is measured from when
//!   a request was *due*, not when it was sent, so a stalled server is charged for the requests
//!   it delayed (coordinated-omission correction, as wrk2 does).
//!
//! Every latency goes into an HdrHistogram (1 µs .. 60 s, 3 significant digits). The run is
//! bounded by `--duration` and `--max-requests`, whichever comes first.

mod conn;
mod pacer;
mod report;

use clap::Parser;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sg-load",
    about = "HTTP/1.1 load generator with latency histograms"
)]
pub struct Args {
    /// Target URL, e.g. http://127.0.0.1:9080/api or https://... (loopback addresses only).
    #[arg(long)]
    url: String,
    /// https: resume TLS sessions on new connections (default: a full handshake each time).
    #[arg(long)]
    tls_resume: bool,
    /// https: the server name sent (SNI); certificates are not verified.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Run time in seconds (fractions allowed).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Worker threads (one monoio runtime each).
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to (thread i on cpus[i % len]).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Open loop at this many requests per second in total (coordinated-omission corrected).
    #[arg(long)]
    rate: Option<f64>,
    /// A new connection for every request (`Connection: close`).
    #[arg(long)]
    new_conn: bool,
    /// Stop after this many requests in total (default: only the duration bounds the run).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Per-request timeout in seconds (counted as a `timeout` error).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Send POST requests with a body of this many bytes (Content-Length) instead of GETs.
    #[arg(long)]
    body_size: Option<usize>,
    /// Write the latency distribution in HdrHistogram's `.hgrm` percentile format.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile chart as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write the results as one JSON object.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
}

/// The target, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Speak TLS (an https:// URL).
    pub tls: bool,
    /// The request bytes, identical for every request.
    pub request: &'static [u8],
}

fn parse_target(args: &Args) -> Result<Target, String> {
    let (tls, rest) = match (
        args.url.strip_prefix("http://"),
        args.url.strip_prefix("https://"),
    ) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err("only http:// and https:// URLs are supported".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("'{authority}' must be an ip:port address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; sg-load only loads loopback targets"
        ));
    }
    let method = if args.body_size.is_some() {
        "POST"
    } else {
        "GET"
    };
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sg-load\r\n");
    if let Some(n) = args.body_size {
        req.push_str(&format!("Content-Length: {n}\r\n"));
    }
    if args.new_conn {
        req.push_str("Connection: close\r\n");
    }
    for h in &args.headers {
        if !h.contains(':') {
            return Err(format!("header '{h}' must look like 'Name: value'"));
        }
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut request = req.into_bytes();
    // The body goes out with the head in one write per request.
    request.resize(request.len() + args.body_size.unwrap_or(0), b'x');
    Ok(Target {
        addr,
        tls,
        request: Box::leak(request.into_boxed_slice()),
    })
}

/// Counters shared by all threads (read by the progress line; updated once per request).
#[derive(Default)]
pub struct Shared {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Requests that may still be started (the `--max-requests` budget), if one was given.
    pub budget: Option<AtomicU64>,
}

impl Shared {
    /// Takes one request from the budget; false when it is used up.
    pub fn admit(&self) -> bool {
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok(),
        }
    }
}

/// What one thread measured.
pub struct ThreadResult {
    pub hist: Histogram<u64>,
    pub errors: conn::Errors,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn main() {
    let args = Args::parse();
    let target = match parse_target(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sg-load: {e}");
            std::process::exit(2);
        }
    };
    if args.connections == 0 || args.threads == 0 || args.duration <= 0.0 {
        eprintln!("sg-load: --connections, --threads and --duration must be positive");
        std::process::exit(2);
    }
    let shared = Arc::new(Shared {
        budget: args.max_requests.map(AtomicU64::new),
        ..Default::default()
    });
    let duration = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let deadline = start + duration;

    let threads = args.threads.min(args.connections);
    let mut handles = Vec::new();
    for t in 0..threads {
        // Spread connections evenly: thread t gets connections t, t+threads, ...
        let conns: Vec<usize> = (t..args.connections).step_by(threads).collect();
        let cpu = (!args.cpus.is_empty()).then(|| args.cpus[t % args.cpus.len()]);
        let (shared, target, args) = (shared.clone(), target.clone(), args.clone());
        handles.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            // Same runtime set-up as the gateway's workers (io_uring with COOP_TASKRUN +
            // SINGLE_ISSUER, falling back to epoll), so tool and proxy are on equal footing.
            let mut rt =
                shardgate::worker::build_runtime(&shardgate::worker::RuntimeOptions::default(), 1)
                    .expect("runtime");
            rt.block_on(conn::run_thread(
                conns, args, target, shared, start, deadline,
            ))
        }));
    }

    // Progress line once a second until the run ends.
    let mut last = 0u64;
    let mut tick = 1u64;
    while handles.iter().any(|h| !h.is_finished()) {
        let next = start + Duration::from_secs(tick);
        while Instant::now() < next && handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Instant::now() >= next {
            let now = shared.requests.load(Ordering::Relaxed);
            if !args.quiet {
                eprintln!(
                    "  {:>4}s  {:>9} req/s  total {:>10}  errors {}",
                    tick,
                    now - last,
                    now,
                    shared.errors.load(Ordering::Relaxed)
                );
            }
            last = now;
            tick += 1;
        }
    }
    let elapsed = start
        .elapsed()
        .min(duration + Duration::from_secs_f64(args.timeout));

    let mut hist = new_histogram();
    let mut errors = conn::Errors::default();
    for h in handles {
        let r = h.join().expect("load thread panicked");
        hist.add(&r.hist).expect("same histogram bounds");
        errors.merge(&r.errors);
    }
    let summary = report::Summary::new(&args, &hist, &errors, elapsed);
    print!("{}", summary.text());
    if let Some(p) = &args.json {
        std::fs::write(p, summary.json())
            .unwrap_or_else(|e| eprintln!("sg-load: {}: {e}", p.display()));
    }
    if let Some(p) = &args.hgrm {
        std::fs::write(p, report::hgrm(&hist))
            .unwrap_or_else(|e| eprintln!("sg-load: {}: {e}", p.display()));
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, report::svg(&hist, &args.url))
            .unwrap_or_else(|e| eprintln!("sg-load: {}: {e}", p.display()));
    }
    if hist.is_empty() {
        std::process::exit(1);
    }
}
