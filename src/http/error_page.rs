//! Responses the gateway makes itself (no route, bad request, upstream failures): small JSON
//! bodies shaped like APISIX's `{"error_msg": "..."}`.

use super::reason_phrase;
use std::io::Write;

/// APISIX's error body: `{"error_msg":"..."}` and a newline.
pub fn error_body(msg: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(msg.len() + 20);
    body.extend_from_slice(b"{\"error_msg\":");
    // serde_json escapes the message properly; messages are short and this is the error path.
    serde_json::to_writer(&mut body, msg).expect("writing to a Vec cannot fail");
    body.extend_from_slice(b"}\n");
    body
}

/// Appends a complete error response to `out` (for refusals before any request exists; a
/// request's own errors go through the plugins' response phase, `proxy/answers.rs`).
/// For a HEAD request the body is left out (the Content-Length still describes it).
pub fn write_error(out: &mut Vec<u8>, status: u16, msg: &str, close: bool, head_request: bool) {
    let body = error_body(msg);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: shardgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        status,
        reason_phrase(status),
        body.len()
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
}
