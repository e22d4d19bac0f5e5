//! Parsing arbitrary bytes as peer-protocol frames must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shoal_proto::wire::parse(data);
});
