//! Parsing arbitrary bytes as tracker-protocol frames (either direction) must never panic,
//! and anything accepted must re-encode to exactly the bytes it was parsed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::tracker_wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, consumed))) = tracker_wire::parse_request(data) {
        let mut out = Vec::new();
        tracker_wire::encode_request(&request, &mut out);
        assert_eq!(out, data[..consumed]);
    }
    if let Ok(Some((response, consumed))) = tracker_wire::parse_response(data) {
        let mut out = Vec::new();
        tracker_wire::encode_response(&response, &mut out);
        assert_eq!(out, data[..consumed]);
    }
});
