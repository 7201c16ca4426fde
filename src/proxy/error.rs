//! Why an upstream attempt failed, and what follows from each reason: the status the client
//! gets, what passive health checks count, whether another attempt may be made.

use crate::health::state::Report;
use crate::net::io::IoFail;

/// Why an attempt at an upstream node failed before a response head arrived.
#[derive(Debug)]
pub(super) enum Failure {
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
    /// The client closed its connection while the upstream was working (nginx's 499): the
    /// attempt is abandoned, not retried, and says nothing about the node.
    ClientGone,
}

impl Failure {
    pub(super) fn status(&self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => 504,
            Failure::ClientGone => 499,
            _ => 502,
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            Failure::ConnectTimeout => "upstream connect timed out".into(),
            Failure::Connect(e) => format!("upstream connect failed: {e}"),
            Failure::SendTimeout => "upstream send timed out".into(),
            Failure::Send(e) | Failure::SendPartial(e) => format!("upstream send failed: {e}"),
            Failure::ReadTimeout => "upstream read timed out".into(),
            Failure::Read(e) => format!("upstream read failed: {e}"),
            Failure::Closed => "upstream closed the connection prematurely".into(),
            Failure::Invalid(why) => format!("invalid upstream response: {why}"),
            Failure::ClientGone => "client closed the connection".into(),
        }
    }

    /// How this failure counts for passive health checks (`None`: it says nothing about the
    /// node: the client left, or this host ran out of descriptors or memory).
    pub(super) fn health_report(&self) -> Option<Report> {
        Some(match self {
            Failure::ClientGone => return None,
            Failure::Connect(e) if crate::upstream::local_resource_error(e) => return None,
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => {
                Report::Timeout
            }
            Failure::Invalid(_) => Report::HttpFailure,
            _ => Report::TcpFailure,
        })
    }

    /// Failures where nothing reached the upstream, so any request may be retried.
    pub(super) fn nothing_sent(&self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::Connect(_))
    }

    /// A reused pooled connection that turned out dead: worth one fresh connection.
    pub(super) fn stale_connection(&self) -> bool {
        matches!(
            self,
            Failure::Send(_) | Failure::SendPartial(_) | Failure::Read(_) | Failure::Closed
        )
    }

    /// Failures where no other node can do better: the client left, or this host is out of
    /// a local resource (another connect would fail the same way).
    pub(super) fn final_for_request(&self) -> bool {
        match self {
            Failure::ClientGone => true,
            Failure::Connect(e) => crate::upstream::local_resource_error(e),
            _ => false,
        }
    }
}

/// The request is over; the connection must close (client gone, or framing lost).
pub(super) struct Abort;

pub(super) enum SendError {
    Upstream(Failure),
    /// The client side failed: status 0 = it went away, else answer with this status.
    Client(u16, &'static str),
}

pub(super) fn send_failure(e: IoFail) -> Failure {
    match e {
        IoFail::Timeout => Failure::SendTimeout,
        IoFail::Io(e) => Failure::Send(e),
    }
}
