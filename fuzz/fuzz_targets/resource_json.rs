//! One APISIX JSON resource in a small store: schema check and compile, the compile cache changes
//! no outcome.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::fuzzing::config::resource_json(data));
