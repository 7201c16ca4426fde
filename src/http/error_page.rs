//! Responses the gateway makes itself (no route, bad request, upstream failures): small JSON
//! bodies shaped like APISIX's `{"error_msg": "..."}`.

use super::reason_phrase;
use std::io::Write;

/// Appends a complete error response to `out`.
/// For a HEAD request the body is left out (the Content-Length still describes it).
pub fn write_error(out: &mut Vec<u8>, status: u16, msg: &str, close: bool, head_request: bool) {
    write_error_with(out, status, msg, close, head_request, b"");
}

/// [`write_error`] with `extra` header lines (each ending in CRLF) in the head.
pub fn write_error_with(
    out: &mut Vec<u8>,
    status: u16,
    msg: &str,
    close: bool,
    head_request: bool,
    extra: &[u8],
) {
    let mut body = Vec::with_capacity(msg.len() + 20);
    body.extend_from_slice(b"{\"error_msg\":");
    // serde_json escapes the message properly; messages are short and this is the error path.
    serde_json::to_writer(&mut body, msg).expect("writing to a Vec cannot fail");
    body.extend_from_slice(b"}\n");
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: shardgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        status,
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
}
