//! `sg-backend`: a deliberately tiny, fast HTTP/1.1 backend for benchmarks, so that the proxy
//! under test, not the backend, is the bottleneck.
//!
//! Every request gets `200 OK` with a fixed body of `--size` bytes (Content-Length,
//! keep-alive). The whole response is built once and written with one `write` per request;
//! request heads are located by their CRLFCRLF and bodies (Content-Length only) skipped.
//! One pinned monoio runtime per thread, each with its own SO_REUSEPORT listener.

use clap::Parser;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "sg-backend",
    about = "Fixed-response HTTP/1.1 backend for benchmarks"
)]
struct Args {
    /// Address to listen on (loopback for benchmarks).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Worker threads, each with its own listener.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer a JSON document (`application/json`, records of ids and names, about as
    /// compressible as real API responses) instead of repeated letters.
    #[arg(long)]
    json: bool,
    /// CPUs to pin the threads to (thread i on cpus[i % len]); empty = no pinning.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
}

/// A JSON array of records, `size` bytes long (padded with spaces before the `]`).
fn json_body(size: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0u64;
    loop {
        let rec = format!(
            "{}{{\"id\":{i},\"name\":\"user-{}\",\"active\":{},\"score\":{}}}",
            if i > 0 { "," } else { "" },
            i.wrapping_mul(2654435761) % 100_000,
            i.is_multiple_of(3),
            (i * 7919) % 1000
        );
        if s.len() + rec.len() + 1 > size {
            break;
        }
        s.push_str(&rec);
        i += 1;
    }
    while s.len() + 1 < size {
        s.push(' ');
    }
    s.push(']');
    s.into_bytes()
}

fn main() {
    let args = Args::parse();
    let body: Vec<u8> = match args.json {
        false => (0..args.size).map(|i| b'a' + (i % 26) as u8).collect(),
        true => json_body(args.size),
    };
    let kind = if args.json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nServer: sg-backend\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let response: &'static [u8] = Box::leak(response.into_boxed_slice());

    let mut threads = Vec::new();
    for i in 0..args.threads.max(1) {
        let cpu = (!args.cpus.is_empty()).then(|| args.cpus[i % args.cpus.len()]);
        let listener = shardgate::net::listen::reuseport_listener(args.listen)
            .unwrap_or_else(|e| panic!("listen on {}: {e}", args.listen));
        threads.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            // Same runtime set-up as the gateway's workers (io_uring with COOP_TASKRUN +
            // SINGLE_ISSUER, falling back to epoll), so tool and proxy are on equal footing.
            let mut rt =
                shardgate::worker::build_runtime(&shardgate::worker::RuntimeOptions::default(), 1)
                    .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        monoio::spawn(serve(stream, response));
                    }
                }
            });
        }));
    }
    eprintln!(
        "sg-backend listening on {} ({} bytes per response)",
        args.listen, args.size
    );
    for t in threads {
        let _ = t.join();
    }
}

async fn serve(mut stream: TcpStream, response: &'static [u8]) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    // Bytes of a request body still to skip.
    let mut skip: usize = 0;
    loop {
        let len = buf.len();
        if buf.capacity() - len < 4096 {
            buf.reserve(16 * 1024);
        }
        let (res, slice) = stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..))
            .await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.drain(..n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = &buf[..end];
            skip = content_length(head);
            let close = head
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
            buf.drain(..end + 4);
            let (res, _) = stream.write_all(response).await;
            if res.is_err() || close {
                return;
            }
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(b"content-length")
                .then(|| {
                    std::str::from_utf8(&line[colon + 1..])
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                })
                .flatten()
        })
        .unwrap_or(0)
}
