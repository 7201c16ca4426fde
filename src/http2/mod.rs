//! HTTP/2 from clients: h2 chosen by ALPN on TLS listeners, and h2c with prior knowledge on
//! plain ones (`[gateway.http2]`). The `h2` crate speaks the protocol (framing, HPACK, flow
//! control, and its defences: rapid reset, CONTINUATION floods, header list size); this
//! module drives one connection per task and gives each stream a task of its own that runs
//! the ordinary request path (`stream.rs` makes the stream look like an HTTP/1.1 exchange).
//! Upstreams stay HTTP/1.1.
//!
//! A connection ends when the client closes it, on a protocol error (the `h2` crate sends
//! the GOAWAY or RST_STREAM RFC 9113 asks for), after `keepalive_timeout` without a stream,
//! after `max_requests` streams, or at shutdown: the last three with a graceful GOAWAY that
//! lets open streams finish.
//!
//! The `h2` crate keeps each connection's state behind a mutex shared by its streams'
//! handles. All of them live on one core, so it is never contended: an uncontended lock
//! and unlock per frame.

pub mod io;
pub mod stream;

use crate::proxy::Entrance;
use crate::tls::stream::Facts;
use crate::worker::state::Worker;
use bytes::Bytes;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use io::H2Io;

/// The first bytes of the client connection preface (RFC 9113 §3.4): an h2c client with
/// prior knowledge starts with them.
pub const PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// How often a connection with open streams looks at whether the worker is stopping.
const STOP_CHECK: Duration = Duration::from_secs(1);
/// How long a connection told to go away (GOAWAY) with no stream left waits for the client
/// to close before closing itself.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Open streams and when the last one ended, shared by a connection's stream tasks.
#[derive(Default)]
struct Activity {
    open: Cell<usize>,
    idle_since: Cell<Option<Instant>>,
}

/// One open stream; counted out when its task ends.
struct Open(Rc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let n = self.0.open.get() - 1;
        self.0.open.set(n);
        if n == 0 {
            self.0.idle_since.set(Some(Instant::now()));
        }
    }
}

/// The `h2` server configuration for `[gateway.http2]` (shared with the fuzzing harness, so
/// what is fuzzed is what is served).
pub fn server_builder(h: &crate::config::Http2Config) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(h.max_concurrent_streams)
        .max_header_list_size(h.max_header_list_size)
        .header_table_size(h.header_table_size)
        .initial_window_size(h.initial_window_size)
        .initial_connection_window_size(h.connection_window_size)
        .max_frame_size(h.max_frame_size)
        .max_pending_accept_reset_streams(h.max_pending_accept_reset_streams as usize)
        .max_local_error_reset_streams(Some(h.max_local_error_reset_streams as usize))
        // What a stream may queue beyond the window it has (we send only what the window
        // allows, so this bounds headers and trailers).
        .max_send_buffer_size(64 * 1024);
    builder
}

/// Serves an HTTP/2 connection until it ends.
pub async fn serve(
    worker: Rc<Worker>,
    io: H2Io,
    facts: Option<Rc<Facts>>,
    peer: SocketAddr,
    entrance: Rc<Entrance>,
) {
    let settings = worker.current().shared.settings;
    let h = settings.http2;
    let handshake = server_builder(&h).handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(settings.client_header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            crate::info!("HTTP/2 handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let activity = Rc::new(Activity {
        open: Cell::new(0),
        idle_since: Cell::new(Some(Instant::now())),
    });
    let mut served = 0u32;
    let mut closing: Option<Instant> = None;
    loop {
        let wait = match activity.idle_since.get() {
            Some(since) => settings
                .keepalive_timeout
                .saturating_sub(since.elapsed())
                .min(STOP_CHECK),
            None => STOP_CHECK,
        };
        let next = monoio::select! {
            n = conn.accept() => Some(n),
            _ = monoio::time::sleep(wait) => None,
        };
        match next {
            Some(Some(Ok((req, respond)))) => {
                served += 1;
                activity.open.set(activity.open.get() + 1);
                activity.idle_since.set(None);
                let open = Open(activity.clone());
                let stream = stream::H2Stream::new(req, respond, facts.clone());
                let (worker, entrance) = (worker.clone(), entrance.clone());
                monoio::spawn(async move {
                    let _open = open;
                    crate::proxy::serve_stream(worker, stream, peer, entrance).await;
                });
                if served >= h.max_requests && closing.is_none() {
                    conn.graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
            Some(Some(Err(e))) => {
                // The h2 crate has sent its GOAWAY (or the peer went away).
                if !e.is_io() {
                    crate::info!("HTTP/2 connection from {peer} ended: {e}");
                }
                return;
            }
            Some(None) => return,
            None => {
                let idle = activity
                    .idle_since
                    .get()
                    .is_some_and(|t| t.elapsed() >= settings.keepalive_timeout);
                match closing {
                    None if idle || worker.stopping() => {
                        conn.graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    Some(t) if activity.open.get() == 0 && t.elapsed() >= CLOSE_WAIT => return,
                    _ => {}
                }
            }
        }
    }
}
