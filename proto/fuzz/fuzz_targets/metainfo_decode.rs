//! Decoding arbitrary bytes must never panic, and whatever it accepts must be canonical:
//! re-encoding gives back exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(metainfo) = Metainfo::decode(data) {
        assert_eq!(
            metainfo.encode(),
            data,
            "decode accepted a non-canonical encoding"
        );
    }
});
