//! A config file: parse and compile never panic, what compiles is usable, the store reading of it
//! compiles too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::config::config_toml(data));
