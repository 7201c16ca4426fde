//! HTTP/2 from clients. The `h2` crate does the framing, HPACK and flow control; what is ours
//! is the server's configuration (`http2::server_builder`) and turning each accepted stream
//! into the HTTP/1.1 head the request path parses (`http2::stream::H2Stream::new`). The
//! harness runs an h2 server over an in-memory connection fed with the client preface and
//! the fuzzer's bytes (frames), and checks every request it accepts: the head made from it
//! parses completely with our HTTP/1.1 parser or is refused with a defined status, and when
//! it parses, it carries exactly the stream's method, target and fields (so no field value
//! can add a line, a second Host or framing of its own) with the framing the stream implies.

use crate::config::Http2Config;
use crate::http::request::{BodyFraming, Limits, Parsed, RequestHead};
use crate::http::trim;
use crate::http2::stream::H2Stream;
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits wide enough for any head an h2 request may make (the h2 crate bounds the header
/// list), with underscores kept so that every field can be counted.
const LIMITS: Limits = Limits {
    max_request_line: 64 * 1024,
    max_header_size: 128 * 1024,
    max_headers: 128,
    underscores_in_headers: true,
};

/// Target `h2_frames`: the input is what a client sends after the connection preface.
pub fn h2_frames(data: &[u8]) {
    streams(data);
}

/// Runs the harness; returns how many streams the server accepted (a test checks that the
/// seeds get that far: a harness that stopped at the handshake would fuzz nothing of ours).
pub fn streams(data: &[u8]) -> usize {
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(data);
    let io = MemIo { input, pos: 0 };
    let mut cx = Context::from_waker(Waker::noop());
    let mut handshake = std::pin::pin!(
        crate::http2::server_builder(&Http2Config::default()).handshake::<_, Bytes>(io)
    );
    let mut conn = match poll_ready(&mut cx, |cx| handshake.as_mut().poll(cx)) {
        Some(Ok(c)) => c,
        _ => return 0,
    };
    // The connection reads everything there is (then the end of the input) while accepting.
    let mut accepted = 0;
    while accepted < 256 {
        match poll_ready(&mut cx, |cx| conn.poll_accept(cx)) {
            Some(Some(Ok((req, respond)))) => {
                let expected = Expected::of(&req);
                let stream = H2Stream::new(req, respond, None);
                expected.check(stream.request_head());
                accepted += 1;
            }
            _ => break,
        }
    }
    accepted
}

/// Polls until ready; `None` while it stays pending (the input is used up: the connection
/// waits for more).
fn poll_ready<T>(
    cx: &mut Context<'_>,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Option<T> {
    for _ in 0..4 {
        if let Poll::Ready(v) = f(cx) {
            return Some(v);
        }
    }
    None
}

/// A connection whose client sent `input` and then waits; what the server writes is dropped.
struct MemIo {
    input: Vec<u8>,
    pos: usize,
}

impl AsyncRead for MemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos == self.input.len() {
            // The client waits: at the end of the input h2 would drop the streams it has not
            // handed out yet, and there would be nothing to check.
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.input.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the HTTP/1.1 head must say, read from the h2 request itself.
struct Expected {
    method: String,
    target: Option<String>,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    framing: Option<BodyFraming>,
}

impl Expected {
    fn of(req: &http::Request<h2::RecvStream>) -> Expected {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some(a) = &authority {
            fields.push((b"host".to_vec(), a.as_bytes().to_vec()));
        }
        let mut cookies: Vec<&[u8]> = Vec::new();
        let mut length = None;
        for (name, value) in req.headers() {
            if (authority.is_some() && name == http::header::HOST) || name == http::header::TE {
                continue;
            }
            if name == http::header::COOKIE {
                cookies.push(value.as_bytes());
                continue;
            }
            if name == http::header::CONTENT_LENGTH {
                length = crate::http::parse_content_length(value.as_bytes());
            }
            fields.push((name.as_str().into(), value.as_bytes().to_vec()));
        }
        if !cookies.is_empty() {
            fields.push((b"cookie".to_vec(), cookies.join(&b"; "[..])));
        }
        let has_length = req.headers().contains_key(http::header::CONTENT_LENGTH);
        let ended = req.body().is_end_stream();
        if !ended && !has_length {
            fields.push((b"transfer-encoding".to_vec(), b"chunked".to_vec()));
        }
        let framing = if !ended && !has_length {
            Some(BodyFraming::Chunked)
        } else {
            length.map(BodyFraming::Length)
        };
        Expected {
            method: req.method().as_str().to_string(),
            target: (req.method() != http::Method::CONNECT)
                .then(|| req.uri().path_and_query().map(|p| p.as_str().to_string()))
                .flatten(),
            fields,
            framing,
        }
    }

    fn check(&self, bytes: &[u8]) {
        assert!(bytes.ends_with(b"\r\n\r\n"), "an unfinished head");
        let mut head = RequestHead::default();
        let parsed = head.parse(bytes, &LIMITS);
        let ok = match parsed {
            Ok(Parsed::Complete) => true,
            Ok(Parsed::Partial) => panic!("a whole head parsed as partial: {bytes:?}"),
            Err(e) => {
                assert!(matches!(e.status, 400 | 405 | 414 | 417 | 431 | 501 | 505));
                false
            }
        };
        if !ok {
            return;
        }
        assert_eq!(head.len, bytes.len(), "the head ends early");
        assert_eq!(&bytes[head.method.clone()], self.method.as_bytes());
        if let Some(t) = &self.target {
            assert_eq!(head.target(bytes), t.as_bytes());
        }
        // HTTP/1.1 has no room for whitespace around a value (HPACK has): compared trimmed.
        let fields: Vec<(&[u8], &[u8])> = head
            .headers
            .iter()
            .map(|h| (&bytes[h.name.clone()], trim(&bytes[h.value.clone()])))
            .collect();
        let expected: Vec<(&[u8], &[u8])> =
            self.fields.iter().map(|(n, v)| (&n[..], trim(v))).collect();
        assert_eq!(fields, expected, "the fields of the stream");
        if let Some(f) = self.framing {
            assert_eq!(head.body, f);
        }
    }
}
