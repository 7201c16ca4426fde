//! Route `vars` conditions and `$var` templates: compile never panics, operators and "!" mean what
//! they say.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::vars::vars(data));
