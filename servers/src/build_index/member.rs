//! A manifest record: that a manifest belongs to a repository, and the descriptor the
//! referrers API lists for it when it has a `subject`.
//!
//! The same record is stored twice for a manifest with a subject: once as the repository's
//! membership record (`_manifests/<digest>`), once as a referrer of its subject
//! (`_referrers/<subject>/<digest>`). The file format is the tag record's (`record.rs`):
//! small UTF-8 text, `key value` lines in a fixed order, then the xxh3 checksum line.
//!
//! ```text
//! shoal-manifest 1
//! repository library/ubuntu
//! digest sha256:<64 hex>
//! media-type application/vnd.oci.image.manifest.v1+json
//! size 1234                       (or -: a membership recorded from a tag, size unknown)
//! subject sha256:<64 hex>         (or -)
//! artifact-type application/x.sig (or -)
//! annotations {"k":"v"}           (compact JSON object of strings, or -)
//! xxh3 <16 lowercase hex>
//! ```
//!
//! A record names its repository and digest (and subject), so a file copied to another
//! path is refused. Decoding reads at most [`MANIFEST_RECORD_LEN_MAX`] bytes, never panics.

use std::collections::BTreeMap;

use shoal_proto::Digest;

use super::names::{self, quote};
use super::record::{MEDIA_TYPE_LEN_MAX, seal, unseal, validate_media_type};

/// Largest `annotations` of a referrer, as compact JSON. A referrer's annotations are listed
/// by the referrers API, so they are stored with it; a manifest with a subject and larger
/// annotations is refused.
pub const ANNOTATIONS_BYTES_MAX: usize = 8 * 1024;

/// Most referrers recorded for one subject in one repository; the referrers API returns
/// them all in one response (no pagination), so this bounds its size. A push past it is
/// refused (`DENIED`).
pub const REFERRERS_PER_SUBJECT_MAX: usize = 256;

/// Longest manifest record file.
pub const MANIFEST_RECORD_LEN_MAX: usize = ANNOTATIONS_BYTES_MAX + 2048;

const _: () = assert!(
    MANIFEST_RECORD_LEN_MAX
        > 100
            + names::REPOSITORY_LEN_MAX
            + 2 * shoal_proto::types::DIGEST_STRING_LEN_MAX
            + 2 * MEDIA_TYPE_LEN_MAX
            + 20
            + ANNOTATIONS_BYTES_MAX
            + 16
);

/// Largest body of a referrers listing: every referrer's descriptor (at most a record's
/// length as JSON) plus the envelope.
pub const REFERRERS_RESPONSE_BYTES_MAX: usize =
    REFERRERS_PER_SUBJECT_MAX * MANIFEST_RECORD_LEN_MAX + 1024;

const FORMAT_VERSION: &str = "1";

/// What the store knows about a manifest of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    /// The manifest's media type (validated by [`validate_media_type`]).
    pub media_type: String,
    /// Its length in bytes; `None` for a membership recorded from a tag (data written before
    /// memberships were recorded), never for a referrer.
    pub size: Option<u64>,
    /// The `subject` descriptor's digest: the manifest is then a referrer of it.
    pub subject: Option<Digest>,
    /// The referrers API's `artifactType`: the manifest's `artifactType`, else its config's
    /// media type for an image manifest.
    pub artifact_type: Option<String>,
    /// The manifest's annotations (referrers only), at most [`ANNOTATIONS_BYTES_MAX`] as JSON.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ManifestRecord {
    /// A bare membership: a manifest known by a tag only.
    pub fn member(digest: Digest, media_type: &str) -> ManifestRecord {
        ManifestRecord {
            digest,
            media_type: media_type.to_string(),
            size: None,
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }

    /// What the build-index records for a manifest of `len` bytes: its type and size and,
    /// for a referrer (a manifest with a `subject`), the descriptor fields the referrers API
    /// lists (artifact type: the manifest's `artifactType`, else its config's media type).
    pub fn of_manifest(
        digest: Digest,
        len: usize,
        references: &super::References,
    ) -> ManifestRecord {
        let referrer = references.subject.is_some();
        ManifestRecord {
            digest,
            media_type: references.kind.media_type().to_owned(),
            size: Some(len as u64),
            subject: references.subject,
            artifact_type: references
                .referrer_artifact_type()
                .filter(|_| referrer)
                .map(str::to_owned),
            annotations: references.annotations.clone().filter(|_| referrer),
        }
    }

    /// Checks what a put must satisfy: media types, the annotations' bound, a size for a
    /// referrer. The error names the offending value.
    pub fn validate(&self) -> Result<(), String> {
        validate_media_type(&self.media_type).map_err(|e| e.to_string())?;
        if let Some(artifact_type) = &self.artifact_type {
            validate_media_type(artifact_type).map_err(|e| format!("artifactType: {e}"))?;
        }
        let annotations_len = self.annotations_json().map_or(0, |json| json.len());
        if annotations_len > ANNOTATIONS_BYTES_MAX {
            return Err(format!(
                "annotations of {} are {annotations_len} bytes as JSON, more than \
                 {ANNOTATIONS_BYTES_MAX}",
                self.digest
            ));
        }
        if self.subject.is_some() && self.size.is_none() {
            return Err(format!("referrer {} has no size", self.digest));
        }
        Ok(())
    }

    fn annotations_json(&self) -> Option<String> {
        self.annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default())
    }

    /// The OCI descriptor the referrers API lists: `mediaType`, `digest`, `size`, and
    /// `artifactType` and `annotations` when present.
    pub fn descriptor_json(&self) -> serde_json::Value {
        let mut descriptor = serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size.unwrap_or(0),
        });
        if let Some(artifact_type) = &self.artifact_type {
            descriptor["artifactType"] = artifact_type.as_str().into();
        }
        if let Some(annotations) = &self.annotations {
            descriptor["annotations"] = serde_json::json!(annotations);
        }
        descriptor
    }

    /// The internal API's JSON: `{"digest","media_type","size"?,"subject"?,
    /// "artifact_type"?,"annotations"?}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "digest": self.digest.to_string(),
            "media_type": self.media_type,
        });
        if let Some(size) = self.size {
            json["size"] = size.into();
        }
        if let Some(subject) = &self.subject {
            json["subject"] = subject.to_string().into();
        }
        if let Some(artifact_type) = &self.artifact_type {
            json["artifact_type"] = artifact_type.as_str().into();
        }
        if let Some(annotations) = &self.annotations {
            json["annotations"] = serde_json::json!(annotations);
        }
        json
    }

    /// Parses [`ManifestRecord::to_json`]'s form (unknown keys refused); the error names
    /// what is wrong. Does not [`validate`](ManifestRecord::validate).
    pub fn from_json(bytes: &[u8]) -> Result<ManifestRecord, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            digest: String,
            media_type: String,
            #[serde(default)]
            size: Option<u64>,
            #[serde(default)]
            subject: Option<String>,
            #[serde(default)]
            artifact_type: Option<String>,
            #[serde(default)]
            annotations: Option<BTreeMap<String, String>>,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let parse =
            |field: &str, text: &str| Digest::parse(text).map_err(|e| format!("{field}: {e}"));
        Ok(ManifestRecord {
            digest: parse("digest", &raw.digest)?,
            media_type: raw.media_type,
            size: raw.size,
            subject: raw
                .subject
                .as_deref()
                .map(|s| parse("subject", s))
                .transpose()?,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }
}

/// The file name of a digest in `_manifests/` and `_referrers/`: `<algorithm>-<hex>` (a
/// `:` in a file name is legal on Linux but awkward everywhere else).
pub(crate) fn digest_file_name(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.encoded())
}

/// The digest a file name of [`digest_file_name`]'s form names, if it is one.
pub(crate) fn parse_digest_file_name(name: &str) -> Option<Digest> {
    let (algorithm, hex) = name.split_once('-')?;
    let digest = Digest::parse(&format!("{algorithm}:{hex}")).ok()?;
    (digest_file_name(&digest) == name).then_some(digest)
}

/// Encodes the record of a manifest of `repository` (validated).
pub(crate) fn encode(repository: &str, record: &ManifestRecord) -> Vec<u8> {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    let body = format!(
        "shoal-manifest {FORMAT_VERSION}\nrepository {repository}\ndigest {}\nmedia-type {}\n\
         size {}\nsubject {}\nartifact-type {}\nannotations {}\n",
        record.digest,
        record.media_type,
        or_dash(record.size.map(|s| s.to_string())),
        or_dash(record.subject.map(|s| s.to_string())),
        or_dash(record.artifact_type.clone()),
        or_dash(record.annotations_json()),
    );
    let bytes = seal(body);
    debug_assert!(bytes.len() <= MANIFEST_RECORD_LEN_MAX);
    bytes
}

/// Decodes a record file that should hold `digest` of `repository` (and, for a referrer
/// file, have `subject`). The error says what is wrong.
pub(crate) fn decode(
    bytes: &[u8],
    repository: &str,
    digest: &Digest,
    subject: Option<&Digest>,
) -> Result<ManifestRecord, String> {
    let body = unseal(bytes, MANIFEST_RECORD_LEN_MAX)?;
    let mut lines = body.lines();
    let mut field = |key: &'static str| -> Result<Option<&str>, String> {
        let value = lines
            .next()
            .and_then(|line| line.strip_prefix(key))
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| format!("missing or misplaced {key:?} line"))?;
        Ok((value != "-").then_some(value))
    };
    fn required<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, String> {
        value.ok_or_else(|| format!("{key} is missing"))
    }
    let format_version = required("shoal-manifest", field("shoal-manifest")?)?;
    if format_version != FORMAT_VERSION {
        return Err(format!(
            "unknown format version {:?}",
            quote(format_version)
        ));
    }
    let stored_repository = required("repository", field("repository")?)?;
    let stored_digest = required("digest", field("digest")?)?;
    if stored_repository != repository || stored_digest != digest.to_string() {
        return Err(format!(
            "holds {}@{}, not {repository}@{digest}",
            quote(stored_repository),
            quote(stored_digest)
        ));
    }
    let media_type = required("media-type", field("media-type")?)?.to_string();
    let size = field("size")?
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| "size is not an integer".to_string())
        })
        .transpose()?;
    let stored_subject = field("subject")?
        .map(|s| Digest::parse(s).map_err(|e| format!("subject: {e}")))
        .transpose()?;
    if let Some(expected) = subject
        && stored_subject.as_ref() != Some(expected)
    {
        return Err(format!("is not a referrer of {expected}"));
    }
    let artifact_type = field("artifact-type")?.map(str::to_string);
    let annotations = field("annotations")?
        .map(|json| {
            serde_json::from_str::<BTreeMap<String, String>>(json)
                .map_err(|e| format!("annotations: {e}"))
        })
        .transpose()?;
    if lines.next().is_some() {
        return Err("unexpected lines after annotations".to_string());
    }
    let record = ManifestRecord {
        digest: *digest,
        media_type,
        size,
        subject: stored_subject,
        artifact_type,
        annotations,
    };
    record.validate()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn referrer() -> ManifestRecord {
        ManifestRecord {
            digest: Digest::sha256_of(b"sig"),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            size: Some(321),
            subject: Some(Digest::sha256_of(b"image")),
            artifact_type: Some("application/vnd.example.sig".to_string()),
            annotations: Some(BTreeMap::from([(
                "org.example.note".to_string(),
                "line 1\nline 2 \"quoted\"".to_string(),
            )])),
        }
    }

    #[test]
    fn round_trip() {
        let record = referrer();
        let bytes = encode("a/b", &record);
        let subject = record.subject.unwrap();
        assert_eq!(
            decode(&bytes, "a/b", &record.digest, Some(&subject)),
            Ok(record.clone())
        );
        assert_eq!(
            decode(&bytes, "a/b", &record.digest, None),
            Ok(record.clone())
        );
        let member = ManifestRecord::member(Digest::sha256_of(b"m"), "a/b");
        let bytes = encode("x", &member);
        assert_eq!(
            decode(&bytes, "x", &member.digest, None),
            Ok(member.clone())
        );
        assert_eq!(
            ManifestRecord::from_json(record.to_json().to_string().as_bytes()),
            Ok(record.clone())
        );
        assert_eq!(
            ManifestRecord::from_json(member.to_json().to_string().as_bytes()),
            Ok(member)
        );
        let descriptor = record.descriptor_json();
        assert_eq!(descriptor["artifactType"], "application/vnd.example.sig");
        assert_eq!(descriptor["size"], 321);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected_and_misplaced_files_refused() {
        let record = referrer();
        let bytes = encode("a", &record);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], "a", &record.digest, None).is_err());
        }
        for i in (0..bytes.len()).step_by(3) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(decode(&flipped, "a", &record.digest, None).is_err(), "{i}");
        }
        assert!(decode(&bytes, "b", &record.digest, None).is_err());
        assert!(decode(&bytes, "a", &Digest::sha256_of(b"other"), None).is_err());
        let other_subject = Digest::sha256_of(b"other");
        let error = decode(&bytes, "a", &record.digest, Some(&other_subject)).unwrap_err();
        assert!(error.contains("not a referrer"), "{error}");
        assert!(
            decode(
                &vec![b'x'; MANIFEST_RECORD_LEN_MAX + 1],
                "a",
                &record.digest,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn validation() {
        assert!(referrer().validate().is_ok());
        let mut bad = referrer();
        bad.artifact_type = Some("no slash".to_string());
        assert!(bad.validate().unwrap_err().contains("artifactType"));
        let mut big = referrer();
        big.annotations = Some(BTreeMap::from([(
            "k".to_string(),
            "v".repeat(ANNOTATIONS_BYTES_MAX),
        )]));
        assert!(big.validate().unwrap_err().contains("annotations"));
        let mut sizeless = referrer();
        sizeless.size = None;
        assert!(sizeless.validate().is_err());
        // The largest valid record fits its file bound.
        let mut largest = referrer();
        largest.media_type = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        largest.artifact_type = Some(largest.media_type.clone());
        largest.size = Some(u64::MAX);
        largest.digest = Digest::sha512_of(b"x");
        largest.subject = Some(Digest::sha512_of(b"y"));
        largest.annotations = Some(BTreeMap::from([(
            "k".to_string(),
            "v".repeat(ANNOTATIONS_BYTES_MAX - 10),
        )]));
        assert!(largest.validate().is_ok());
        let repository = "r".repeat(names::REPOSITORY_LEN_MAX);
        let bytes = encode(&repository, &largest);
        assert!(bytes.len() <= MANIFEST_RECORD_LEN_MAX);
        assert!(decode(&bytes, &repository, &largest.digest, None).is_ok());
    }

    #[test]
    fn digest_file_names() {
        let digest = Digest::sha256_of(b"x");
        let name = digest_file_name(&digest);
        assert!(name.starts_with("sha256-"));
        assert_eq!(parse_digest_file_name(&name), Some(digest));
        for bad in [
            "",
            "sha256",
            "sha256-",
            "sha256:ab",
            "md5-00",
            &name.to_uppercase(),
        ] {
            assert_eq!(parse_digest_file_name(bad), None, "{bad}");
        }
    }
}
