//! A client's request head: agreement with httparse, the strict framing rules, defined refusals,
//! the same answer in pieces.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::request::request_head(data));
