//! Chunked bodies: the same verdict whole or in pieces, payload within the input, encode/scan round
//! trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::chunked::chunked(data));
