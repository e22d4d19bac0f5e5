//! The `Range` request header, for blobs: one byte range (`bytes=a-b`, `bytes=a-`,
//! `bytes=-n`) resolved against the blob's length (RFC 9110 §14).
//!
//! Anything else is ignored and the whole blob is sent (a server may ignore `Range`): a
//! header that does not parse, another unit, several ranges. Only a well-formed single range
//! that no byte satisfies is refused (416).

use std::ops::Range;

/// What a `Range` header asks of a blob of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob (200).
    Whole,
    /// Send these bytes (206), never empty, within the blob.
    Part(Range<u64>),
    /// No byte of the blob is in the range (416 with `Content-Range: bytes */len`).
    Unsatisfiable,
}

/// The longest `Range` value examined; longer ones are ignored (two u64s and some spaces
/// fit many times over).
pub const RANGE_HEADER_LEN_MAX: usize = 128;

/// Resolves the `Range` header value `header` (if any) against a blob of `blob_len` bytes.
pub fn resolve(header: Option<&[u8]>, blob_len: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Whole;
    };
    if header.len() > RANGE_HEADER_LEN_MAX {
        return RangeRequest::Whole;
    }
    let Ok(text) = std::str::from_utf8(header) else {
        return RangeRequest::Whole;
    };
    let Some((unit, spec)) = text.trim().split_once('=') else {
        return RangeRequest::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    match (parse_pos(first), parse_pos(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(suffix_len)) if first.is_empty() => {
            if suffix_len == 0 || blob_len == 0 {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Part(blob_len.saturating_sub(suffix_len)..blob_len)
        }
        // bytes=a-: from a to the end.
        (Some(start), None) if last.is_empty() => {
            part_from(start, blob_len.saturating_sub(1), blob_len)
        }
        // bytes=a-b, inclusive; b past the end means the end.
        (Some(start), Some(end)) if start <= end => {
            part_from(start, end.min(blob_len.saturating_sub(1)), blob_len)
        }
        _ => RangeRequest::Whole,
    }
}

/// Bytes `start..=last` of the blob, or unsatisfiable if `start` is past its end.
fn part_from(start: u64, last: u64, blob_len: u64) -> RangeRequest {
    if start >= blob_len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(start..last + 1)
}

/// A decimal position (digits only, no sign, fits a u64).
fn parse_pos(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The `Content-Range` value of a 206 for `range` of a blob of `blob_len` bytes.
pub fn content_range(range: &Range<u64>, blob_len: u64) -> String {
    debug_assert!(range.start < range.end && range.end <= blob_len);
    format!("bytes {}-{}/{}", range.start, range.end - 1, blob_len)
}

/// The `Content-Range` value of a 416.
pub fn content_range_unsatisfied(blob_len: u64) -> String {
    format!("bytes */{blob_len}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, blob_len: u64, expected: RangeRequest) {
        assert_eq!(
            resolve(Some(header.as_bytes()), blob_len),
            expected,
            "{header:?} of {blob_len}"
        );
    }

    fn part(range: Range<u64>) -> RangeRequest {
        RangeRequest::Part(range)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(resolve(None, 10), RangeRequest::Whole);
        check("bytes=0-0", 10, part(0..1));
        check("bytes=0-9", 10, part(0..10));
        check("bytes=2-5", 10, part(2..6));
        check("bytes=2-100", 10, part(2..10));
        check("bytes=9-", 10, part(9..10));
        check("bytes=0-", 10, part(0..10));
        check("bytes=-3", 10, part(7..10));
        check("bytes=-10", 10, part(0..10));
        check("bytes=-11", 10, part(0..10));
        check("Bytes = 2 - 5", 10, part(2..6));
        check(
            "bytes=18446744073709551614-",
            u64::MAX,
            part(u64::MAX - 1..u64::MAX),
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        check("bytes=10-", 10, RangeRequest::Unsatisfiable);
        check("bytes=10-20", 10, RangeRequest::Unsatisfiable);
        check("bytes=-0", 10, RangeRequest::Unsatisfiable);
        check("bytes=0-", 0, RangeRequest::Unsatisfiable);
        check("bytes=-5", 0, RangeRequest::Unsatisfiable);
    }

    #[test]
    fn ignored_ranges_send_the_whole_blob() {
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=99999999999999999999-",
            "bytes=1-2-3",
        ] {
            check(header, 10, RangeRequest::Whole);
        }
        let long = format!("bytes=0-{}", "9".repeat(RANGE_HEADER_LEN_MAX));
        check(&long, 10, RangeRequest::Whole);
        assert_eq!(resolve(Some(&[0xff, 0xfe]), 10), RangeRequest::Whole);
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(&(2..6), 10), "bytes 2-5/10");
        assert_eq!(content_range_unsatisfied(10), "bytes */10");
    }
}
