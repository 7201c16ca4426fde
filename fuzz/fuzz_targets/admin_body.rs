//! Admin API PUT/POST/PATCH bodies: defined answers, writes that only add or replace, repeated
//! writes idempotent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::admin::admin_body(data));
