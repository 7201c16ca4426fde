//! The request path: everything between an accepted client connection and its close.
//!
//! A request's life, file by file:
//! 1. `session.rs`: the TLS handshake on a TLS listener, then the connection's keep-alive
//!    loop reads a head (strict RFC 9112 rules in `http/request.rs`); a malformed one is
//!    refused here and the connection closes.
//! 2. `phases.rs`: THE order of a request's phases, in one function: host and path, routing,
//!    plugins (rewrite, access, before_proxy), proxying or an answer of the gateway's own, the
//!    response phases, the access log.
//! 3. `request_body.rs`: a small body is read whole before any upstream is involved.
//! 4. `upstream.rs`: the attempt loop: pick a node, pooled connection or connect, send
//!    (`request_body.rs`), read the response head; retry on failure (`error.rs` says what
//!    each failure means).
//! 5. `response.rs`: relay the response head (`editor.rs` rewrites both heads) and body;
//!    `body_filter.rs` when a plugin changes the body (decoded, filtered, re-chunked).
//!    `grpc.rs` instead for gRPC upstreams: the client's HTTP/2 stream relayed to a stream
//!    on a pooled HTTP/2 connection.
//!    `tunnel.rs` instead when the upstream switched protocols (WebSocket): bytes both ways.
//! 6. `answers.rs`: what the gateway answers itself (404, 502, 503, 504, refusals).
//!
//! Bodies are streamed in both directions through the two connections' buffers (bounded:
//! at most one buffer's worth of a body is in memory at a time). The request is sent
//! completely before the response is read, as nginx does with its default buffering.
//!
//! Framing is never guessed: a request whose framing is in doubt gets a 4xx and the
//! connection closes; an upstream response whose framing is in doubt is a 502 (before any
//! byte reached the client) or a closed client connection (after), so no byte of it can be
//! read as part of the next response.

mod answers;
mod body_filter;
mod ctx;
mod editor;
mod error;
mod grpc;
mod phases;
mod request_body;
mod response;
pub(crate) mod scratch;
mod session;
mod tunnel;
mod upstream;
mod vars;

pub use session::{serve, serve_stream, Entrance};

use std::time::Duration;

/// Read chunk while streaming a request body.
const BODY_CHUNK: usize = 64 * 1024;
/// Request bodies up to this size are read completely before the upstream is contacted.
const BUFFERED_BODY_MAX: usize = 64 * 1024;
/// A response head and body are sent in one write when together they fit in this.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Lingering close: the longest quiet gap, and the longest drain in all (nginx's defaults).
const LINGER_IDLE: Duration = Duration::from_secs(5);
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// How long to look for the answer of an upstream that stopped taking a streamed body. An
/// answer sent before that happened is already in our socket: this only bounds the read.
const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(100);
