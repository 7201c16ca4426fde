//! Head editing (Sōzu's "editor"): the request head sent upstream (Host per `pass_host`,
//! hop-by-hop headers dropped, `X-Forwarded-*`, `Forwarded` rebuilt, framing re-written) and
//! the response head sent to the client (hop-by-hop dropped, framing re-written,
//! `X-APISIX-Upstream-Status`).

use crate::http::request::{BodyFraming, RequestHead};
use crate::http::response::ResponseFraming;
use crate::http::{eq_ignore_case, is_hop_by_hop, push_decimal};
use crate::plugin::RequestEdits;
use crate::upstream::{Node, PassHost, UpstreamSpec};
use std::io::Write;

use super::session::Conn;

/// Appends `X-APISIX-Upstream-Status: 502, 502, 500` when the last attempt's status is a 5xx
/// (APISIX's header, with nginx's `$upstream_status` as its value).
pub(super) fn put_upstream_status(out: &mut Vec<u8>, statuses: &[u16]) {
    if !statuses.last().is_some_and(|s| (500..600).contains(s)) {
        return;
    }
    out.extend_from_slice(b"X-APISIX-Upstream-Status: ");
    for (i, s) in statuses.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{s}");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk in canonical form.
pub(super) fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// The Host sent to `node`: a plugin's rewrite, else per `pass_host` (the client's Host,
/// the node's `host[:port]`, or `upstream_host`). Upstream TLS sends it as SNI too.
pub(super) fn upstream_host<'a>(
    buf: &'a [u8],
    head: &RequestHead,
    edits: &'a RequestEdits,
    up: &'a UpstreamSpec,
    node: &'a Node,
) -> &'a [u8] {
    let client_host = &buf[head.host.clone()];
    match (&edits.host, &up.pass_host) {
        (Some(h), _) => h.as_bytes(),
        (None, PassHost::Pass) if !client_host.is_empty() => client_host,
        (None, PassHost::Pass | PassHost::Node) => node.host_port.as_bytes(),
        (None, PassHost::Rewrite(h)) => h.as_bytes(),
    }
}

impl Conn {
    /// Writes the request head for `node` into `self.out`.
    pub(super) fn build_upstream_head(&mut self, up: &UpstreamSpec, node: &Node) {
        let buf = &self.buf;
        let head = &self.req.head;
        let edits = &self.req.edits.request;
        let out = &mut self.out;
        out.clear();
        match &edits.method {
            Some(m) => out.extend_from_slice(m.as_bytes()),
            None => out.extend_from_slice(&buf[head.method.clone()]),
        }
        out.push(b' ');
        match &edits.uri {
            Some(uri) => out.extend_from_slice(uri.as_bytes()),
            None => out.extend_from_slice(head.target(buf)),
        }
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        let client_host = &buf[head.host.clone()];
        out.extend_from_slice(upstream_host(buf, head, edits, up, node));
        out.extend_from_slice(b"\r\n");
        let edited = !edits.headers.is_empty();
        let mut xff: Option<usize> = None;
        let mut forwarded = false;
        for (i, h) in head.headers.iter().enumerate() {
            let name = &buf[h.name.clone()];
            if is_hop_by_hop(name)
                || eq_ignore_case(name, b"host")
                || eq_ignore_case(name, b"content-length")
                || eq_ignore_case(name, b"expect")
                || eq_ignore_case(name, b"x-real-ip")
                || eq_ignore_case(name, b"x-forwarded-proto")
                || eq_ignore_case(name, b"x-forwarded-host")
                || eq_ignore_case(name, b"x-forwarded-port")
                || head.listed_in_connection(buf, name)
            {
                continue;
            }
            if eq_ignore_case(name, b"x-forwarded-for") {
                xff.get_or_insert(i);
                continue;
            }
            if eq_ignore_case(name, b"forwarded") {
                forwarded = true;
                continue;
            }
            if edited && edits.headers.drops(name) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        match (&edits.body, head.body) {
            (Some(body), _) => {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, body.len() as u64);
                out.extend_from_slice(b"\r\n");
            }
            (None, BodyFraming::None) => {}
            (None, BodyFraming::Length(n)) => {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            (None, BodyFraming::Chunked) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
        }
        if self.req.upgrade {
            if let Some(protocol) = head.upgrade(buf) {
                out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
                out.extend_from_slice(protocol);
                out.extend_from_slice(b"\r\n");
            }
        }
        if edited {
            for (name, value) in edits.headers.written() {
                if !gateway_owned(name.as_bytes()) {
                    put_header(out, name, value);
                }
            }
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        if xff.is_some() {
            for h in &head.headers {
                if eq_ignore_case(&buf[h.name.clone()], b"x-forwarded-for") {
                    out.extend_from_slice(crate::http::trim(&buf[h.value.clone()]));
                    out.extend_from_slice(b", ");
                }
            }
        }
        let remote = self.req.real_ip.get().map_or(&self.peer_ip, |s| s);
        out.extend_from_slice(remote.as_bytes());
        out.extend_from_slice(b"\r\nX-Real-IP: ");
        out.extend_from_slice(remote.as_bytes());
        out.extend_from_slice(match self.stream.tls_facts() {
            Some(_) => b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ",
            None => b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
        });
        out.extend_from_slice(client_host);
        out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
        out.extend_from_slice(self.local_port.as_bytes());
        out.extend_from_slice(b"\r\n");
        if forwarded {
            // A client's `Forwarded` (RFC 7239) is rebuilt as X-Forwarded-For is: its
            // elements, then ours, so the last element is always the one this hop vouches for.
            out.extend_from_slice(b"Forwarded: ");
            for h in &head.headers {
                if eq_ignore_case(&buf[h.name.clone()], b"forwarded") {
                    out.extend_from_slice(crate::http::trim(&buf[h.value.clone()]));
                    out.extend_from_slice(b", ");
                }
            }
            if remote.contains(':') {
                let _ = write!(out, "for=\"[{remote}]\"");
            } else {
                let _ = write!(out, "for={remote}");
            }
            out.extend_from_slice(match self.stream.tls_facts() {
                Some(_) => b";proto=https\r\n",
                None => b";proto=http\r\n",
            });
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the client-facing response head into `self.out`.
    pub(super) fn build_client_head(
        &mut self,
        src: &[u8],
        framing: ResponseFraming,
        dechunk: bool,
        keep: bool,
        http10: bool,
    ) {
        let out = &mut self.out;
        let resp = &self.req.resp;
        let edits = &self.req.edits.response;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        let status = edits.status.unwrap_or(resp.status);
        push_decimal(out, u64::from(status));
        out.push(b' ');
        let reason = &src[resp.reason.clone()];
        if reason.is_empty() || status != resp.status {
            out.extend_from_slice(crate::http::reason_phrase(status).as_bytes());
        } else {
            out.extend_from_slice(reason);
        }
        out.extend_from_slice(b"\r\n");
        let edited = !edits.headers.is_empty();
        for h in &resp.headers {
            let name = &src[h.name.clone()];
            if is_hop_by_hop(name)
                || resp.listed_in_connection(src, name)
                || (edited && edits.headers.drops(name))
            {
                continue;
            }
            // Content-Length is re-written for framed bodies; a 204 (or 1xx) must not carry one
            // at all (HEAD and 304 keep theirs: they describe the representation, unless a
            // plugin changes it).
            if eq_ignore_case(name, b"content-length")
                && (framing != ResponseFraming::None
                    || resp.status == 204
                    || resp.status < 200
                    || edits.body_changes())
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&src[h.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if edited {
            for (name, value) in edits.headers.written() {
                if !gateway_owned(name.as_bytes()) {
                    put_header(out, name, value);
                }
            }
        }
        put_upstream_status(out, &self.req.up_statuses);
        match framing {
            ResponseFraming::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            ResponseFraming::Chunked if !dechunk => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            ResponseFraming::UntilClose if !http10 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            _ => {}
        }
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends one header field.
pub(super) fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Header fields plugins may not set: the gateway writes them itself (framing, Host,
/// connection management), and a second value could split the message differently.
pub(super) fn gateway_owned(name: &[u8]) -> bool {
    eq_ignore_case(name, b"content-length")
        || eq_ignore_case(name, b"transfer-encoding")
        || eq_ignore_case(name, b"host")
        || is_hop_by_hop(name)
}
