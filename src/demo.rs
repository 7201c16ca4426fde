//! Demo backends: tiny HTTP servers the gateway can start itself (`[[demo.backends]]`), so the
//! shipped `config.toml` answers through the gateway with no other server installed.
//!
//! Each answers every request with a small JSON document naming itself, which makes weighted
//! balancing visible with nothing but curl. They run on one extra thread with their own
//! runtime, unpinned, apart from the workers.

use crate::config::DemoBackendConfig;
use crate::http::chunked::ChunkedScanner;
use crate::http::request::{BodyFraming, Limits, Parsed, RequestHead};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use std::io::Write;
use std::rc::Rc;

/// Binds every demo backend, then serves them on a background thread.
pub fn start(backends: &[DemoBackendConfig]) -> std::io::Result<()> {
    let mut bound = Vec::new();
    for b in backends {
        let bind = || std::net::TcpListener::bind(&b.listen);
        // Handed on across a binary upgrade, like the gateway's own listeners.
        let l = match b.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => crate::net::inherit::listener(&format!("demo {addr}"), addr, bind),
            Err(_) => bind(),
        }
        .map_err(|e| std::io::Error::new(e.kind(), format!("demo backend {}: {e}", b.listen)))?;
        l.set_nonblocking(true)?;
        let name = b.name.clone().unwrap_or_else(|| b.listen.clone());
        bound.push((l, name));
    }
    std::thread::Builder::new()
        .name("shardgate-demo".into())
        .spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("demo runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (l, name) in bound {
                    let listener = TcpListener::from_std(l).expect("demo listener");
                    tasks.push(monoio::spawn(accept(listener, Rc::from(name.as_str()))));
                }
                for t in tasks {
                    t.await;
                }
            });
        })?;
    Ok(())
}

async fn accept(listener: TcpListener, name: Rc<str>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            monoio::spawn(serve(stream, name.clone(), port));
        }
    }
}

async fn serve(mut stream: TcpStream, name: Rc<str>, port: u16) {
    let limits = Limits {
        max_request_line: 8192,
        max_header_size: 32 * 1024,
        max_headers: 100,
        underscores_in_headers: false,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut head = RequestHead::default();
    let mut out = Vec::with_capacity(512);
    loop {
        // Read a head.
        loop {
            match head.parse(&buf, &limits) {
                Ok(Parsed::Complete) => break,
                Ok(Parsed::Partial) => {}
                Err(_) => return,
            }
            if !read(&mut stream, &mut buf).await {
                return;
            }
        }
        // Discard the body.
        let mut pos = head.len;
        match head.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                let mut left = n;
                loop {
                    let take = ((buf.len() - pos) as u64).min(left) as usize;
                    left -= take as u64;
                    buf.drain(pos..pos + take);
                    if left == 0 {
                        break;
                    }
                    if !read(&mut stream, &mut buf).await {
                        return;
                    }
                }
            }
            BodyFraming::Chunked => {
                let mut s = ChunkedScanner::new();
                loop {
                    let Ok(used) = s.advance(&buf[pos..], |_| {}) else {
                        return;
                    };
                    buf.drain(pos..pos + used);
                    if s.is_done() {
                        break;
                    }
                    if !read(&mut stream, &mut buf).await {
                        return;
                    }
                }
            }
        }
        pos = head.len;
        let body = serde_json::json!({
            "backend": &*name,
            "port": port,
            "method": String::from_utf8_lossy(&buf[head.method.clone()]),
            "uri": String::from_utf8_lossy(head.target(&buf)),
            "host": String::from_utf8_lossy(&buf[head.host.clone()]),
        })
        .to_string();
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Backend: {}\r\n\r\n",
            body.len() + 1,
            name
        );
        if !head.is_head {
            out.extend_from_slice(body.as_bytes());
            out.push(b'\n');
        }
        let close = head.close;
        buf.drain(..pos);
        let (res, o) = stream.write_all(std::mem::take(&mut out)).await;
        out = o;
        if res.is_err() || close {
            return;
        }
    }
}

async fn read(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let len = buf.len();
    let (res, slice) = stream
        .read(monoio::buf::IoBufMut::slice_mut(std::mem::take(buf), len..))
        .await;
    *buf = slice.into_inner();
    matches!(res, Ok(n) if n > 0)
}
