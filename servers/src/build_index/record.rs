//! A tag record and its file format.
//!
//! One file per tag, small UTF-8 text, every line `key value`, keys in this fixed order:
//!
//! ```text
//! shoal-tag 1
//! repository library/ubuntu
//! tag latest
//! digest sha256:<64 hex>
//! media-type application/vnd.oci.image.manifest.v1+json
//! version 42
//! updated-at 1700000000.123456789
//! source upstream                 (only for a tag learned from a read-only upstream)
//! xxh3 <16 lowercase hex>
//! ```
//!
//! A record without the `source` line (every record written before it existed) is a tag
//! pushed here.
//!
//! The last line is the xxh3-64 of every byte before it, so a truncated, torn or bit-flipped
//! file is detected (xxh3 is fine here: disk corruption is not an adversary, and nobody but
//! the store writes under its root). The record names its own repository and tag, so a file
//! copied or renamed to another tag's path is refused too. Decoding reads at most
//! [`RECORD_LEN_MAX`] bytes and never panics.

use std::time::{Duration, SystemTime};

use shoal_proto::Digest;
use xxhash_rust::xxh3::xxh3_64;

use super::names::{self, quote};

/// Longest media type accepted (RFC 6838: type and subtype of at most 127 characters each).
pub const MEDIA_TYPE_LEN_MAX: usize = 255;

/// Longest record file: the fixed keys, the longest repository, tag, digest and media type,
/// the largest numbers, with room to spare. A longer file is corrupt without being read.
pub const RECORD_LEN_MAX: usize = 1024;

const _: () = assert!(
    RECORD_LEN_MAX
        > 16 + names::REPOSITORY_LEN_MAX
            + names::TAG_LEN_MAX
            + shoal_proto::types::DIGEST_STRING_LEN_MAX
            + MEDIA_TYPE_LEN_MAX
            + 200
);

/// The format's version, the first line's value.
const FORMAT_VERSION: &str = "1";

/// What the store knows about one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The manifest the tag points to.
    pub digest: Digest,
    /// The manifest's media type, as it was pushed (validated by [`validate_media_type`]).
    pub media_type: String,
    /// Store-wide sequence number of the put that wrote this record: every put gets a larger
    /// one than any put before it in this store, so a tag's version only grows, even across a
    /// delete and a re-create (no ABA for compare-and-set). Never 0 (0 means "absent" in
    /// [`super::TagStore::put`]'s `expected_version`).
    pub version: u64,
    /// Wall-clock time of the put (ordering comes from `version`; for a tag learned from
    /// an upstream, when it was learned).
    pub updated_at: SystemTime,
    /// Learned from a read-only upstream (a registry the repository is pulled through) rather
    /// than pushed here: such a tag is re-resolved upstream once it is older than the
    /// build-index's `upstream_tag_ttl`, since upstream tags move.
    pub from_upstream: bool,
}

/// Why a media type is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "media type {media_type:?} is not type/subtype of at most {MEDIA_TYPE_LEN_MAX} bytes \
     with RFC 6838 characters"
)]
pub struct MediaTypeError {
    pub media_type: String,
}

/// Checks that `media_type` is an RFC 6838 `type/subtype` without parameters, at most
/// [`MEDIA_TYPE_LEN_MAX`] bytes: each part 1–127 characters, starting alphanumeric, then
/// `[A-Za-z0-9!#$&^_.+-]`.
pub fn validate_media_type(media_type: &str) -> Result<(), MediaTypeError> {
    let part_ok = |part: &str| {
        let bytes = part.as_bytes();
        (1..=127).contains(&bytes.len())
            && bytes[0].is_ascii_alphanumeric()
            && bytes.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-'
                    )
            })
    };
    let ok = media_type.len() <= MEDIA_TYPE_LEN_MAX
        && media_type
            .split_once('/')
            .is_some_and(|(kind, subtype)| part_ok(kind) && part_ok(subtype));
    if ok {
        Ok(())
    } else {
        Err(MediaTypeError {
            media_type: quote(media_type),
        })
    }
}

/// Encodes the record of `repository:tag` (all inputs already validated).
pub(crate) fn encode(repository: &str, tag: &str, record: &TagRecord) -> Vec<u8> {
    let since_epoch = record
        .updated_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let body = format!(
        "shoal-tag {FORMAT_VERSION}\nrepository {repository}\ntag {tag}\ndigest {}\n\
         media-type {}\nversion {}\nupdated-at {}.{:09}\n{}",
        record.digest,
        record.media_type,
        record.version,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        if record.from_upstream {
            "source upstream\n"
        } else {
            ""
        },
    );
    let bytes = seal(body);
    debug_assert!(bytes.len() <= RECORD_LEN_MAX);
    bytes
}

/// `body` followed by its checksum line, `xxh3 <16 lowercase hex>`: the file format every
/// record of the store shares.
pub(crate) fn seal(body: String) -> Vec<u8> {
    let checksum = xxh3_64(body.as_bytes());
    let mut bytes = body.into_bytes();
    bytes.extend_from_slice(format!("xxh3 {checksum:016x}\n").as_bytes());
    bytes
}

/// The body of a sealed record of at most `len_max` bytes, once its checksum line checks.
pub(crate) fn unseal(bytes: &[u8], len_max: usize) -> Result<&str, String> {
    if bytes.len() > len_max {
        return Err(format!("{} bytes, more than {len_max}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_len = text
        .strip_suffix('\n')
        .and_then(|t| t.rfind('\n'))
        .map(|i| i + 1)
        .ok_or_else(|| "truncated (no checksum line)".to_string())?;
    let (body, checksum_line) = text.split_at(body_len);
    let stored = checksum_line
        .strip_prefix("xxh3 ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(parse_checksum)
        .ok_or_else(|| "truncated or malformed checksum line".to_string())?;
    let computed = xxh3_64(body.as_bytes());
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:016x}, computed {computed:016x})"
        ));
    }
    Ok(body)
}

/// Decodes a record file that should hold `repository:tag`. The error says what is wrong,
/// for the recovery report and [`super::IndexError::Corrupt`].
pub(crate) fn decode(bytes: &[u8], repository: &str, tag: &str) -> Result<TagRecord, String> {
    let body = unseal(bytes, RECORD_LEN_MAX)?;
    let mut lines = body.lines();
    let mut field = |key: &'static str| -> Result<&str, String> {
        lines
            .next()
            .and_then(|line| line.strip_prefix(key))
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| format!("missing or misplaced {key:?} line"))
    };
    let format_version = field("shoal-tag")?;
    if format_version != FORMAT_VERSION {
        return Err(format!(
            "unknown format version {:?}",
            quote(format_version)
        ));
    }
    let stored_repository = field("repository")?;
    let stored_tag = field("tag")?;
    if stored_repository != repository || stored_tag != tag {
        return Err(format!(
            "holds {}:{}, not {repository}:{tag}",
            quote(stored_repository),
            quote(stored_tag)
        ));
    }
    let digest = Digest::parse(field("digest")?).map_err(|e| format!("digest: {e}"))?;
    let media_type = field("media-type")?;
    validate_media_type(media_type).map_err(|e| e.to_string())?;
    let version = field("version")?
        .parse::<u64>()
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| "version is not a positive integer".to_string())?;
    let updated_at = parse_time(field("updated-at")?)
        .ok_or_else(|| "updated-at is not <seconds>.<9 digits>".to_string())?;
    let from_upstream = match lines.next() {
        None => false,
        Some("source upstream") => true,
        Some(_) => return Err("unexpected lines after updated-at".to_string()),
    };
    if lines.next().is_some() {
        return Err("unexpected lines after source".to_string());
    }
    Ok(TagRecord {
        digest,
        media_type: media_type.to_string(),
        version,
        updated_at,
        from_upstream,
    })
}

/// Encodes the version floor file: the largest version the store ever handed out when it was
/// written (see [`super::TagStore::delete`]), `version-floor <n>` then the same checksum line.
pub(crate) fn encode_version_floor(floor: u64) -> Vec<u8> {
    let body = format!("version-floor {floor}\n");
    let checksum = xxh3_64(body.as_bytes());
    format!("{body}xxh3 {checksum:016x}\n").into_bytes()
}

/// Decodes the version floor file.
pub(crate) fn decode_version_floor(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (body, checksum_line) = text
        .split_once('\n')
        .map(|(first, rest)| (&text[..first.len() + 1], rest))
        .ok_or_else(|| "truncated".to_string())?;
    let stored = checksum_line
        .strip_prefix("xxh3 ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(parse_checksum)
        .ok_or_else(|| "truncated or malformed checksum line".to_string())?;
    if stored != xxh3_64(body.as_bytes()) {
        return Err("checksum mismatch".to_string());
    }
    body.strip_prefix("version-floor ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| "malformed version-floor line".to_string())
}

/// 16 lowercase hex digits (`from_str_radix` alone would also take uppercase, so a flipped
/// case bit would go unnoticed).
fn parse_checksum(hex: &str) -> Option<u64> {
    let well_formed =
        hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    let (secs, nanos) = text.split_once('.')?;
    if nanos.len() != 9 {
        return None;
    }
    let secs = secs.parse::<u64>().ok()?;
    let nanos = nanos.parse::<u32>().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TagRecord {
        TagRecord {
            digest: Digest::sha256_of(b"manifest"),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            version: 42,
            updated_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            from_upstream: false,
        }
    }

    #[test]
    fn round_trip() {
        let record = sample();
        let bytes = encode("library/ubuntu", "latest", &record);
        assert_eq!(decode(&bytes, "library/ubuntu", "latest"), Ok(record));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("shoal-tag 1\nrepository library/ubuntu\ntag latest\n"));
        assert!(text.contains("\nupdated-at 1700000000.123456789\n"));
    }

    #[test]
    fn longest_record_fits() {
        let record = TagRecord {
            digest: Digest::sha512_of(b"x"),
            media_type: format!("{}/{}", "a".repeat(127), "b".repeat(127)),
            version: u64::MAX,
            updated_at: SystemTime::UNIX_EPOCH + Duration::new(u64::MAX / 4, 999_999_999),
            from_upstream: true,
        };
        let repository = "a".repeat(names::REPOSITORY_LEN_MAX);
        let tag = "t".repeat(names::TAG_LEN_MAX);
        let bytes = encode(&repository, &tag, &record);
        assert!(bytes.len() <= RECORD_LEN_MAX);
        assert_eq!(decode(&bytes, &repository, &tag), Ok(record));
    }

    #[test]
    fn a_tag_learned_from_an_upstream_says_so() {
        let record = TagRecord {
            from_upstream: true,
            ..sample()
        };
        let bytes = encode("a/b", "v1", &record);
        assert!(String::from_utf8_lossy(&bytes).contains("\nsource upstream\nxxh3 "));
        assert_eq!(decode(&bytes, "a/b", "v1"), Ok(record));
        // Anything else after updated-at is refused.
        let body = "shoal-tag 1\nrepository a\ntag t\ndigest sha256:\
                    0000000000000000000000000000000000000000000000000000000000000000\n\
                    media-type a/b\nversion 1\nupdated-at 0.000000000\nsource elsewhere\n";
        let mut bytes = body.as_bytes().to_vec();
        bytes.extend_from_slice(format!("xxh3 {:016x}\n", xxh3_64(body.as_bytes())).as_bytes());
        assert!(decode(&bytes, "a", "t").is_err());
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_detected() {
        let bytes = encode("a/b", "v1", &sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], "a/b", "v1").is_err(),
                "truncated to {len}"
            );
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                assert!(decode(&flipped, "a/b", "v1").is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn record_of_another_tag_is_refused() {
        let bytes = encode("a/b", "v1", &sample());
        let error = decode(&bytes, "a/b", "v2").unwrap_err();
        assert!(error.contains("holds a/b:v1"), "{error}");
        assert!(decode(&bytes, "a/c", "v1").is_err());
    }

    #[test]
    fn oversized_and_garbage_files_are_refused() {
        assert!(decode(&vec![b'x'; RECORD_LEN_MAX + 1], "a", "t").is_err());
        assert!(decode(b"", "a", "t").is_err());
        assert!(decode(b"\n", "a", "t").is_err());
        assert!(decode(&[0xff, 0xfe, b'\n'], "a", "t").is_err());
        // A well-formed checksum over a body with a bad field.
        let body = "shoal-tag 1\nrepository a\ntag t\ndigest sha256:00\nmedia-type a/b\n\
                    version 1\nupdated-at 0.000000000\n";
        let mut bytes = body.as_bytes().to_vec();
        bytes.extend_from_slice(format!("xxh3 {:016x}\n", xxh3_64(body.as_bytes())).as_bytes());
        let error = decode(&bytes, "a", "t").unwrap_err();
        assert!(error.starts_with("digest:"), "{error}");
    }

    #[test]
    fn version_floor_round_trip_and_corruption() {
        let bytes = encode_version_floor(77);
        assert_eq!(decode_version_floor(&bytes), Ok(77));
        for len in 0..bytes.len() {
            assert!(
                decode_version_floor(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[14] ^= 1;
        assert!(decode_version_floor(&flipped).is_err());
    }

    #[test]
    fn media_types() {
        for ok in [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "a/b",
            "text/x-c++",
        ] {
            assert!(validate_media_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "application",
            "application/",
            "/json",
            "application/json; charset=utf-8",
            "application/json\nversion 9",
            "a/b/c",
            "a /b",
            ".a/b",
            "a/.b",
        ] {
            assert!(validate_media_type(bad).is_err(), "{bad:?}");
        }
        assert!(validate_media_type(&format!("{}/b", "a".repeat(128))).is_err());
    }
}
