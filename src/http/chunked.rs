//! A streaming scanner for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! The proxy relays chunked bodies verbatim, so it only has to know where the body ends and that
//! the framing is sound; it never buffers a whole chunk. The scanner is fed whatever bytes have
//! arrived and reports how many belong to the body and which of them are payload (needed only to
//! de-chunk for HTTP/1.0 clients). Anything not strictly valid is an error: a proxy that guesses
//! at chunk boundaries is how request smuggling happens.

use std::ops::Range;

/// Most hex digits in a chunk size (leading zeros included).
const MAX_SIZE_DIGITS: u8 = 15;
/// Largest single chunk relayed (1 GiB). Larger chunks are legal, but a size of 2^32 or more
/// reads as something else to a parser that keeps sizes in 32 bits: a smuggling vector for
/// the backend behind us, and of no use to anyone else.
const MAX_CHUNK: u64 = 1 << 30;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` counts them.
    Size {
        digits: u8,
    },
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeWs,
    /// Inside `;ext[=value]`: visible characters and whitespace until CR.
    Ext,
    /// Expecting the LF of a chunk-size line; `last` says the size was zero.
    SizeLf {
        last: bool,
    },
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name (a token), before the colon.
    TrailerName,
    /// Inside a trailer field value.
    Trailer,
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked encoding: {}", self.0)
    }
}

/// Where a chunked body stands. Create one per body.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    remaining: u64,
    /// Total bytes of trailer section seen, bounded.
    trailer_bytes: usize,
    /// The trailer section's bytes, when the reader wants them (HTTP/2 sends trailers as
    /// a frame of their own).
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            trailer_bytes: 0,
            trailers: None,
        }
    }

    /// A scanner that keeps the trailer section ([`ChunkedScanner::take_trailers`]).
    pub fn keeping_trailers() -> Self {
        ChunkedScanner {
            trailers: Some(Vec::new()),
            ..ChunkedScanner::new()
        }
    }

    /// The trailer section seen (`name: value` lines, CRLF-ended), for a scanner
    /// made by [`ChunkedScanner::keeping_trailers`].
    pub fn take_trailers(&mut self) -> Vec<u8> {
        self.trailers.take().unwrap_or_default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input`; returns how many bytes of it belong to the body (all of it unless the body
    /// ends inside). `on_data` receives the ranges of `input` that are payload.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => {
                    if let Some(v) = hex_value(b) {
                        if digits >= MAX_SIZE_DIGITS {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = (self.size << 4) | v as u64;
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError("missing chunk size"));
                    } else if b == b'\r' {
                        self.state = State::SizeLf {
                            last: self.size == 0,
                        };
                    } else if b == b';' {
                        self.state = State::Ext;
                    } else if b == b' ' || b == b'\t' {
                        self.state = State::SizeWs;
                    } else {
                        return Err(ChunkError("bad character in chunk size"));
                    }
                    if self.size > MAX_CHUNK {
                        return Err(ChunkError("chunk size too large"));
                    }
                    i += 1;
                }
                State::SizeWs => {
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext,
                        _ => return Err(ChunkError("only a chunk extension may follow the size")),
                    }
                    i += 1;
                }
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf {
                            last: self.size == 0,
                        };
                    } else if !(b == b'\t' || (0x20..0x7f).contains(&b)) {
                        return Err(ChunkError("bad character in chunk extension"));
                    }
                    i += 1;
                }
                State::SizeLf { last } => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    i += 1;
                    if last {
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let take = (input.len() - i).min(self.remaining as usize);
                    on_data(i..i + take);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.size = 0;
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if is_tchar(b) {
                        self.keep(b);
                        self.state = State::TrailerName;
                    } else {
                        return Err(ChunkError("trailer line is not a header field"));
                    }
                    self.trailer_bytes += 1;
                    i += 1;
                }
                State::TrailerName => {
                    self.keep(b);
                    if b == b':' {
                        self.state = State::Trailer;
                    } else if !is_tchar(b) {
                        return Err(ChunkError("bad character in trailer field name"));
                    }
                    self.trailer_bytes += 1;
                    i += 1;
                }
                State::Trailer => {
                    self.keep(b);
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError("bad character in trailer"));
                    }
                    self.trailer_bytes += 1;
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("trailer line not ended by CRLF"));
                    }
                    self.keep(b);
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("last chunk not ended by CRLF"));
                    }
                    self.state = State::Done;
                    i += 1;
                }
                State::Done => break,
            }
            if self.trailer_bytes > MAX_TRAILERS {
                return Err(ChunkError("trailer section too large"));
            }
            if self.state == State::Done {
                break;
            }
        }
        Ok(i)
    }
}

impl ChunkedScanner {
    /// Keeps a trailer-section byte when asked to (bounded by `MAX_TRAILERS` like the rest).
    #[inline]
    fn keep(&mut self, b: u8) {
        if let Some(t) = self.trailers.as_mut() {
            t.push(b);
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut s = ChunkedScanner::new();
        let mut data = Vec::new();
        let n = s.advance(input, |r| data.extend_from_slice(&input[r]))?;
        Ok((n, data, s.is_done()))
    }

    #[test]
    fn simple_body_and_trailing_bytes() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nNEXT";
        let (n, data, done) = scan_all(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"NEXT");
        assert_eq!(data, b"hello world");
    }

    #[test]
    fn trailers_pass() {
        let body = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let (n, data, done) = scan_all(body).unwrap();
        assert!(done);
        assert_eq!(n, body.len());
        assert_eq!(data, b"abc");
    }

    #[test]
    fn byte_at_a_time_matches() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut s = ChunkedScanner::new();
        let mut data = Vec::new();
        for i in 0..body.len() {
            let n = s
                .advance(&body[i..i + 1], |r| {
                    data.extend_from_slice(&body[i..i + 1][r])
                })
                .unwrap();
            assert_eq!(n, 1);
        }
        assert!(s.is_done());
        assert_eq!(data, b"0123456789");
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"-5\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\n",
            b"\r\n",
            b"5 ignored-garbage\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"100000000\r\n",
            b"0\r\nGET /admin HTTP/1.1\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
        ] {
            assert!(scan_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
