//! The chunked body scanner (`http::chunked`). The proxy relays chunked bodies as they come,
//! so what matters is where the body ends and which bytes are payload, whatever the pieces the
//! network hands over. Two properties:
//! - any bytes, scanned whole or in pieces, give the same verdict, the same end and the same
//!   payload, and the payload is never more than the bytes given (ranges inside the input);
//! - any data, encoded in any valid way (chunk sizes, hex case, leading zeros, extensions,
//!   trailers), scans back to the data, with the encoding's exact length.

use super::{split_points, Choices};
use crate::http::chunked::{ChunkError, ChunkedScanner};

/// Target `chunked`: the first byte picks the property, the rest is its input.
pub fn chunked(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        same_in_pieces(rest);
    } else {
        round_trip(rest);
    }
}

/// What a scan saw: bytes of the body consumed, payload, trailers, done.
#[derive(Debug, PartialEq)]
struct Scan {
    consumed: usize,
    payload: Vec<u8>,
    trailers: Vec<u8>,
    done: bool,
    error: Option<ChunkError>,
}

/// Scans `input` cut at `cuts` (increasing offsets), checking each call's contract.
fn scan(input: &[u8], cuts: &[usize]) -> Scan {
    let mut s = ChunkedScanner::keeping_trailers();
    let mut out = Scan {
        consumed: 0,
        payload: Vec::new(),
        trailers: Vec::new(),
        done: false,
        error: None,
    };
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let piece = &input[start..end.max(start)];
        start = end.max(start);
        let mut last_end = 0;
        let result = s.advance(piece, |r| {
            assert!(r.start >= last_end && r.start <= r.end && r.end <= piece.len());
            last_end = r.end;
            out.payload.extend_from_slice(&piece[r]);
        });
        match result {
            Ok(n) => {
                assert!(
                    n <= piece.len() && last_end <= n,
                    "consumed {n} of {}",
                    piece.len()
                );
                out.consumed += n;
                if s.is_done() {
                    out.done = true;
                    break;
                }
                assert_eq!(n, piece.len(), "stopped early without being done");
            }
            Err(e) => {
                // Where the error stood is all that is compared: what came before it
                // depends on the pieces.
                assert!(!e.0.is_empty());
                out.error = Some(e);
                out.consumed = 0;
                out.payload.clear();
                s.take_trailers();
                return out;
            }
        }
    }
    assert!(out.payload.len() <= out.consumed);
    out.trailers = s.take_trailers();
    if out.done {
        // A finished body takes nothing more.
        let mut more = false;
        assert_eq!(s.advance(b"0\r\n\r\n", |_| more = true), Ok(0));
        assert!(!more);
    }
    out
}

fn same_in_pieces(input: &[u8]) {
    let whole = scan(input, &[]);
    let mut every = Vec::new();
    for k in split_points(input.len()) {
        assert_eq!(scan(input, &[k]), whole, "cut at {k}");
        every.push(k);
    }
    if input.len() <= 256 {
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(scan(input, &bytewise), whole, "byte by byte");
    } else {
        assert_eq!(scan(input, &every), whole, "cut at {every:?}");
    }
}

/// Encodes data drawn from the input in a valid but varied way, then scans it in pieces.
fn round_trip(input: &[u8]) {
    let mut c = Choices::new(input);
    let mut data = Vec::new();
    let mut wire = Vec::new();
    let mut trailers = Vec::new();
    while !c.is_empty() {
        let flags = c.byte();
        let len = c.byte() as usize;
        let chunk = c.bytes(len);
        if chunk.is_empty() {
            continue;
        }
        data.extend_from_slice(chunk);
        size_line(&mut wire, chunk.len(), flags);
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.push(b'0');
    if input.first().is_some_and(|b| b & 0x80 != 0) {
        wire.extend_from_slice(b";last");
    }
    wire.extend_from_slice(b"\r\n");
    for i in 0..input.len().min(40) % 3 {
        let field = format!("X-T{i}: v{i}\t x\r\n");
        trailers.extend_from_slice(field.as_bytes());
        wire.extend_from_slice(field.as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let body_len = wire.len();
    // What follows the body (the next request on the connection) is not the body's.
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let cuts: Vec<usize> = input
        .iter()
        .scan(0usize, |at, &b| {
            *at += b as usize % 23 + 1;
            Some(*at)
        })
        .take_while(|&at| at < wire.len())
        .collect();
    for cuts in [&[][..], &cuts[..]] {
        let s = scan(&wire, cuts);
        assert_eq!(s.error, None, "valid encoding refused: {wire:?}");
        assert!(s.done);
        assert_eq!(s.consumed, body_len);
        assert_eq!(s.payload, data);
        assert_eq!(s.trailers, trailers);
    }
}

/// A chunk-size line for `len` bytes: hex in either case, maybe leading zeros, maybe
/// whitespace and an extension (RFC 9112 §7.1.1).
fn size_line(wire: &mut Vec<u8>, len: usize, flags: u8) {
    for _ in 0..(flags >> 5) % 4 {
        wire.push(b'0');
    }
    let hex = if flags & 1 == 0 {
        format!("{len:x}")
    } else {
        format!("{len:X}")
    };
    wire.extend_from_slice(hex.as_bytes());
    match (flags >> 1) % 4 {
        1 => wire.extend_from_slice(b";ext"),
        2 => wire.extend_from_slice(b" \t;name=\"quoted value\""),
        3 => wire.extend_from_slice(b";a=1;b"),
        _ => {}
    }
    wire.extend_from_slice(b"\r\n");
}
