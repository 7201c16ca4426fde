//! An upstream's response head: agreement with httparse, RFC 9112 framing, defined refusals.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::response::response_head(data));
