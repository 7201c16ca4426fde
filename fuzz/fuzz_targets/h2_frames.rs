//! HTTP/2 frames after the preface: each accepted stream's HTTP/1.1 head parses and carries exactly
//! its fields.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::h2::h2_frames(data));
