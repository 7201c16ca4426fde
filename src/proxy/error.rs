//! The request path's errors and the policy for each, in one place.
//!
//! The policy:
//! - Before any byte of a response went to the client, every failure becomes an answer of
//!   the gateway's own ([`ProxyError::status`]), unless the client itself is gone (499 in the
//!   access log, nothing sent).
//! - An upstream failure may be retried on another node (`upstream.rs` decides with
//!   [`ProxyError::nothing_sent`], [`ProxyError::stale_connection`] and the request's
//!   replayability); a client-side failure, or a local resource shortage, never is
//!   ([`ProxyError::final_for_request`]).
//! - Passive health checks count only what says something about the node
//!   ([`ProxyError::health_report`]).
//! - After the response head went to the client, a failure can only end the connection:
//!   that is [`Abort`], which carries no reason because none changes what happens.

use crate::health::state::Report;
use crate::net::io::IoFail;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Upstream,
}

/// Why a request could not be served before its response began.
#[derive(Debug)]
pub(super) enum ProxyError {
    /// Upstream side.
    ConnectTimeout,
    Connect(std::io::Error),
    SendTimeout,
    Send(std::io::Error),
    /// Sending failed after part of the request had gone out: the upstream may have started
    /// on it, so only an idempotent request may be sent again.
    SendPartial(std::io::Error),
    ReadTimeout,
    Read(std::io::Error),
    /// The upstream closed the connection before a complete response head.
    Closed,
    Invalid(&'static str),
    /// The TLS handshake with the node failed (its certificate did not verify, no common
    /// protocol, the node refused ours): nothing of the request was sent.
    Tls(Box<str>),
    /// Client side: the client closed or reset its connection (nginx's 499): nothing is
    /// answered, the upstream attempt is abandoned, the node is not blamed.
    ClientGone,
    /// The client went silent for `client_body_timeout` while sending its body.
    ClientBodyTimeout,
    /// The client's chunked body is malformed.
    BadChunkedBody,
}

impl ProxyError {
    pub(super) fn side(&self) -> Side {
        match self {
            ProxyError::ClientGone | ProxyError::ClientBodyTimeout | ProxyError::BadChunkedBody => {
                Side::Client
            }
            _ => Side::Upstream,
        }
    }

    /// The status the client gets (499 only for the access log: nothing is sent).
    pub(super) fn status(&self) -> u16 {
        match self {
            ProxyError::ConnectTimeout | ProxyError::SendTimeout | ProxyError::ReadTimeout => 504,
            ProxyError::ClientGone => 499,
            ProxyError::ClientBodyTimeout => 408,
            ProxyError::BadChunkedBody => 400,
            _ => 502,
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            ProxyError::ConnectTimeout => "upstream connect timed out".into(),
            ProxyError::Connect(e) => format!("upstream connect failed: {e}"),
            ProxyError::SendTimeout => "upstream send timed out".into(),
            ProxyError::Send(e) | ProxyError::SendPartial(e) => {
                format!("upstream send failed: {e}")
            }
            ProxyError::ReadTimeout => "upstream read timed out".into(),
            ProxyError::Read(e) => format!("upstream read failed: {e}"),
            ProxyError::Closed => "upstream closed the connection prematurely".into(),
            ProxyError::Invalid(why) => format!("invalid upstream response: {why}"),
            ProxyError::Tls(why) => format!("upstream TLS handshake failed: {why}"),
            ProxyError::ClientGone => "client closed the connection".into(),
            ProxyError::ClientBodyTimeout => "timed out reading the request body".into(),
            ProxyError::BadChunkedBody => "invalid chunked request body".into(),
        }
    }

    /// How this failure counts for passive health checks (`None`: it says nothing about the
    /// node: the client's fault, or this host ran out of descriptors or memory).
    pub(super) fn health_report(&self) -> Option<Report> {
        Some(match self {
            _ if self.side() == Side::Client => return None,
            ProxyError::Connect(e) if crate::upstream::local_resource_error(e) => return None,
            ProxyError::ConnectTimeout | ProxyError::SendTimeout | ProxyError::ReadTimeout => {
                Report::Timeout
            }
            ProxyError::Invalid(_) => Report::HttpFailure,
            _ => Report::TcpFailure,
        })
    }

    /// Failures where nothing reached the upstream, so any request may be retried.
    pub(super) fn nothing_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectTimeout | ProxyError::Connect(_) | ProxyError::Tls(_)
        )
    }

    /// A reused pooled connection that turned out dead: worth one fresh connection.
    pub(super) fn stale_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Send(_)
                | ProxyError::SendPartial(_)
                | ProxyError::Read(_)
                | ProxyError::Closed
        )
    }

    /// Failures no other attempt can do better on: the client's, or this host out of a local
    /// resource (another connect would fail the same way).
    pub(super) fn final_for_request(&self) -> bool {
        match self {
            _ if self.side() == Side::Client => true,
            ProxyError::Connect(e) => crate::upstream::local_resource_error(e),
            _ => false,
        }
    }

    /// A failed write to the upstream.
    pub(super) fn upstream_send(e: IoFail) -> ProxyError {
        match e {
            IoFail::Timeout => ProxyError::SendTimeout,
            IoFail::Io(e) => ProxyError::Send(e),
        }
    }

    /// A failed read of the request body from the client.
    pub(super) fn client_read(e: IoFail) -> ProxyError {
        match e {
            IoFail::Timeout => ProxyError::ClientBodyTimeout,
            IoFail::Io(_) => ProxyError::ClientGone,
        }
    }
}

/// The response had begun (or the exchange is otherwise past answering): the connection
/// must close.
pub(super) struct Abort;
