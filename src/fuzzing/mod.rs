//! Fuzzing harnesses: one function per target, taking the fuzzer's bytes and asserting the
//! properties the target must keep (a panic is a finding).
//!
//! They live in the crate, not in `fuzz/`, so that the coverage-guided `cargo fuzz` targets
//! (nightly, `benches/fuzz.sh`) and the short property run of the test suite
//! (`tests/it/fuzz_properties.rs`, stable, on every CI run) drive the very same code, and a
//! seed that once found a bug is replayed by both. Everything here parses untrusted bytes the
//! way the gateway does: client request heads, chunked bodies, upstream response heads, route
//! `vars` conditions, config files and resources, Admin API bodies and HTTP/2 connections.
//!
//! Each harness asserts more than "no crash": agreement with `httparse` where our parser is a
//! stricter layer over it, round trips for the chunked scanner, the same outcome whether the
//! input arrives whole or in pieces, and that what is accepted is usable the way a worker
//! uses it.

pub mod admin;
pub mod chunked;
pub mod config;
pub mod h2;
pub mod request;
pub mod response;
pub mod vars;

use crate::http::{eq_ignore_case, trim, HeaderRange};

/// A harness: what a target is called and the function it runs on each input.
pub type Harness = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs` and of `fuzz/seeds/*/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("request_head", request::request_head),
    ("chunked", chunked::chunked),
    ("response_head", response::response_head),
    ("vars", vars::vars),
    ("config_toml", config::config_toml),
    ("resource_json", config::resource_json),
    ("admin_body", admin::admin_body),
    ("h2_frames", h2::h2_frames),
];

/// A parsed head's fields as (name, value) byte strings.
pub(crate) fn fields<'a>(buf: &'a [u8], headers: &[HeaderRange]) -> Vec<(&'a [u8], &'a [u8])> {
    headers
        .iter()
        .map(|h| (&buf[h.name.clone()], &buf[h.value.clone()]))
        .collect()
}

/// The values (trimmed) of the fields called `name`, any case.
pub(crate) fn values<'a>(buf: &'a [u8], headers: &[HeaderRange], name: &[u8]) -> Vec<&'a [u8]> {
    fields(buf, headers)
        .into_iter()
        .filter(|(n, _)| eq_ignore_case(n, name))
        .map(|(_, v)| trim(v))
        .collect()
}

/// The transfer codings a list of Transfer-Encoding values names, empty elements left out.
pub(crate) fn codings<'a>(te: &[&'a [u8]]) -> Vec<&'a [u8]> {
    te.iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Asserts that every LF of a head follows a CR.
pub(crate) fn assert_no_bare_lf(head: &[u8]) {
    for (i, &b) in head.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && head[i - 1] == b'\r'), "bare LF");
    }
}

/// The split points used to feed an input in pieces: a few spread over it and the edges
/// (every point for short inputs), so a property about pieces stays cheap on long inputs.
pub(crate) fn split_points(len: usize) -> Vec<usize> {
    if len <= 48 {
        return (1..len).collect();
    }
    let mut points: Vec<usize> = (1..8).map(|i| len * i / 8).collect();
    points.extend([1, 2, len - 2, len - 1]);
    points.sort_unstable();
    points.dedup();
    points
}

/// Reads the fuzzer's bytes as a sequence of small choices (a size, a flag); past the end,
/// every choice is zero. Lets a harness derive structure from raw bytes without a
/// dependency on `arbitrary`.
pub(crate) struct Choices<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Choices<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Choices { data, pos: 0 }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Up to `max` bytes taken whole from the input.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + max).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}
