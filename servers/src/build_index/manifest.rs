//! What a manifest references: the blobs that must exist before a tag may point at it, the
//! child manifests of an index, and the `subject` / `artifactType` the referrers API needs.
//!
//! Four media types are understood: Docker image manifest v2 (schema 2), Docker manifest list,
//! OCI image manifest and OCI image index. Docker schema 1 and anything else are refused.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use shoal_proto::{Digest, DigestError};

use super::names::quote;
use super::record::{MediaTypeError, validate_media_type};

/// Largest manifest accepted (the bound distribution and most registries use: 4 MiB). A
/// larger one is refused before it is parsed.
pub const MANIFEST_LEN_MAX: usize = 4 * 1024 * 1024;

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Layer media types whose blobs are not distributable (Windows base layers and the like):
/// they are fetched from their `urls`, so they need not exist in the registry.
const NON_DISTRIBUTABLE_LAYER_TYPES: [&str; 4] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// The four manifest types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
}

impl ManifestKind {
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::DockerManifest => DOCKER_MANIFEST_V2,
            ManifestKind::DockerManifestList => DOCKER_MANIFEST_LIST,
            ManifestKind::OciManifest => OCI_MANIFEST,
            ManifestKind::OciIndex => OCI_INDEX,
        }
    }

    /// The kind named by a media type (ASCII case-insensitive), if it is one of the four.
    pub fn from_media_type(media_type: &str) -> Option<ManifestKind> {
        [
            ManifestKind::DockerManifest,
            ManifestKind::DockerManifestList,
            ManifestKind::OciManifest,
            ManifestKind::OciIndex,
        ]
        .into_iter()
        .find(|kind| kind.media_type().eq_ignore_ascii_case(media_type))
    }

    /// A list of manifests (Docker manifest list, OCI index) rather than an image.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            ManifestKind::DockerManifestList | ManifestKind::OciIndex
        )
    }
}

/// What [`referenced_digests`] found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct References {
    pub kind: ManifestKind,
    /// Blobs that must exist before a tag may point at the manifest: the config, then the
    /// layers, in document order, each once.
    pub blobs: Vec<Digest>,
    /// Non-distributable (foreign) layers: fetched by clients from their URLs, so they need
    /// not exist. In document order, each once.
    pub external_blobs: Vec<Digest>,
    /// Child manifests of an index or manifest list, in document order, each once (they
    /// must exist as manifests).
    pub manifests: Vec<Digest>,
    /// The `subject` descriptor's digest (OCI 1.1 referrers), if any.
    pub subject: Option<Digest>,
    /// The manifest's `artifactType`, if any (validated as a media type).
    pub artifact_type: Option<String>,
    /// The config descriptor's `mediaType`, if any: the referrers API reports it as the
    /// artifact type of an image manifest without `artifactType`.
    pub config_media_type: Option<String>,
    /// The manifest's `annotations`, if any (the referrers API lists them).
    pub annotations: Option<BTreeMap<String, String>>,
}

impl References {
    /// The artifact type the referrers API reports: `artifactType`, else the config's media
    /// type for an image manifest (never for an index).
    pub fn referrer_artifact_type(&self) -> Option<&str> {
        // A config type that is no plain `type/subtype` is not reported (never refused:
        // image manifests predate the referrers API).
        let config_type = self
            .config_media_type
            .as_deref()
            .filter(|t| !self.kind.is_index() && validate_media_type(t).is_ok());
        self.artifact_type.as_deref().or(config_type)
    }
}

/// Why a manifest is refused. Messages name the offending field or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {len} bytes, more than {MANIFEST_LEN_MAX}")]
    TooLarge { len: usize },
    #[error("manifest is not a JSON object of the expected shape: {0}")]
    Malformed(String),
    #[error(
        "schemaVersion is {}, must be 2",
        match .0 { Some(v) => v.to_string(), None => "missing".to_string() }
    )]
    SchemaVersion(Option<u64>),
    #[error(
        "media type {0:?} is not a supported manifest type (Docker schema 2 manifest or \
         manifest list, OCI image manifest or index)"
    )]
    UnsupportedMediaType(String),
    #[error("the Content-Type is {content_type} but the manifest's mediaType is {in_body:?}")]
    MediaTypeMismatch {
        content_type: &'static str,
        in_body: String,
    },
    #[error(
        "cannot tell the manifest's type: no Content-Type, no mediaType, and neither \
         \"manifests\" nor \"config\""
    )]
    UnknownKind,
    #[error("{media_type} manifest {problem}")]
    Shape {
        media_type: &'static str,
        problem: &'static str,
    },
    #[error("{0} is missing")]
    MissingField(String),
    #[error("{field}: {source}")]
    BadDigest {
        field: String,
        #[source]
        source: DigestError,
    },
    #[error("artifactType: {0}")]
    BadArtifactType(MediaTypeError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<u64>,
}

/// Parses a manifest and lists what it references. `media_type` is the request's
/// Content-Type (parameters after `;` are ignored); when it is empty or `application/json`,
/// the type is taken from the manifest's `mediaType`, or else from its shape (`manifests`:
/// OCI index, `config`: OCI image manifest; Docker types always carry `mediaType`). When both
/// are present they must agree.
///
/// Refused: more than [`MANIFEST_LEN_MAX`] bytes, anything but a JSON object, schemaVersion
/// other than 2, an unsupported type, a missing `config`/`layers` (images) or `manifests`
/// (indexes) or both kinds of fields at once, a descriptor without a valid `digest` or a
/// `size`, an invalid `artifactType`.
pub fn referenced_digests(
    manifest_bytes: &[u8],
    media_type: &str,
) -> Result<References, ManifestError> {
    if manifest_bytes.len() > MANIFEST_LEN_MAX {
        return Err(ManifestError::TooLarge {
            len: manifest_bytes.len(),
        });
    }
    let raw: RawManifest = serde_json::from_slice(manifest_bytes)
        .map_err(|error| ManifestError::Malformed(error.to_string()))?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion(raw.schema_version));
    }
    let kind = manifest_kind(media_type, &raw)?;
    let shape = |problem| ManifestError::Shape {
        media_type: kind.media_type(),
        problem,
    };

    let mut references = References {
        kind,
        blobs: Vec::new(),
        external_blobs: Vec::new(),
        manifests: Vec::new(),
        subject: None,
        artifact_type: None,
        config_media_type: None,
        annotations: raw.annotations,
    };
    let mut seen = HashSet::new();
    if kind.is_index() {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(shape("must not have \"config\" or \"layers\""));
        }
        let manifests = raw.manifests.ok_or_else(|| shape("has no \"manifests\""))?;
        for (i, descriptor) in manifests.iter().enumerate() {
            let digest = descriptor_digest(descriptor, || format!("manifests[{i}]"))?;
            push_once(&mut references.manifests, &mut seen, digest);
        }
    } else {
        if raw.manifests.is_some() {
            return Err(shape("must not have \"manifests\""));
        }
        let config = raw.config.ok_or_else(|| shape("has no \"config\""))?;
        let layers = raw.layers.ok_or_else(|| shape("has no \"layers\""))?;
        push_once(
            &mut references.blobs,
            &mut seen,
            descriptor_digest(&config, || "config".to_string())?,
        );
        references.config_media_type = config.media_type;
        for (i, layer) in layers.iter().enumerate() {
            let digest = descriptor_digest(layer, || format!("layers[{i}]"))?;
            let external = layer.media_type.as_deref().is_some_and(|media_type| {
                NON_DISTRIBUTABLE_LAYER_TYPES
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(media_type))
            });
            let list = if external {
                &mut references.external_blobs
            } else {
                &mut references.blobs
            };
            push_once(list, &mut seen, digest);
        }
    }
    if let Some(subject) = &raw.subject {
        references.subject = Some(descriptor_digest(subject, || "subject".to_string())?);
    }
    if let Some(artifact_type) = raw.artifact_type {
        validate_media_type(&artifact_type).map_err(ManifestError::BadArtifactType)?;
        references.artifact_type = Some(artifact_type);
    }
    Ok(references)
}

/// The manifest's kind from the Content-Type, the body's `mediaType`, or its shape.
fn manifest_kind(content_type: &str, raw: &RawManifest) -> Result<ManifestKind, ManifestError> {
    let content_type = content_type.split(';').next().unwrap_or_default().trim();
    let in_body = raw.media_type.as_deref();
    let declared =
        if content_type.is_empty() || content_type.eq_ignore_ascii_case("application/json") {
            None
        } else {
            Some(
                ManifestKind::from_media_type(content_type)
                    .ok_or_else(|| ManifestError::UnsupportedMediaType(quote(content_type)))?,
            )
        };
    match (declared, in_body) {
        (Some(kind), Some(body)) if !kind.media_type().eq_ignore_ascii_case(body) => {
            Err(ManifestError::MediaTypeMismatch {
                content_type: kind.media_type(),
                in_body: quote(body),
            })
        }
        (Some(kind), _) => Ok(kind),
        (None, Some(body)) => ManifestKind::from_media_type(body)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(quote(body))),
        (None, None) if raw.manifests.is_some() => Ok(ManifestKind::OciIndex),
        (None, None) if raw.config.is_some() => Ok(ManifestKind::OciManifest),
        (None, None) => Err(ManifestError::UnknownKind),
    }
}

/// A descriptor's digest, parsed; its `size` must be present. `field` names the descriptor
/// for the error (built only on failure).
fn descriptor_digest(
    descriptor: &RawDescriptor,
    field: impl Fn() -> String,
) -> Result<Digest, ManifestError> {
    let text = descriptor
        .digest
        .as_deref()
        .ok_or_else(|| ManifestError::MissingField(format!("{}.digest", field())))?;
    let digest = Digest::parse(text).map_err(|source| ManifestError::BadDigest {
        field: format!("{}.digest", field()),
        source,
    })?;
    if descriptor.size.is_none() {
        return Err(ManifestError::MissingField(format!("{}.size", field())));
    }
    Ok(digest)
}

/// Appends `digest` unless `seen` has it (a set, not a scan: a 4 MiB manifest can hold tens
/// of thousands of descriptors).
fn push_once(list: &mut Vec<Digest>, seen: &mut HashSet<Digest>, digest: Digest) {
    if seen.insert(digest) {
        list.push(digest);
    }
}

#[cfg(test)]
mod tests;
