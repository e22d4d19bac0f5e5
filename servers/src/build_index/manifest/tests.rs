//! Manifest parsing: one hand-written fixture per media type, then every rejection.

use super::*;

fn d(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

fn descriptor(media_type: &str, n: u8) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        d(n),
        100 + n as u32
    )
}

fn docker_manifest() -> String {
    format!(
        r#"{{
  "schemaVersion": 2,
  "mediaType": "{DOCKER_MANIFEST_V2}",
  "config": {},
  "layers": [{}, {}, {}]
}}"#,
        descriptor("application/vnd.docker.container.image.v1+json", 1),
        descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", 2),
        descriptor(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            3
        ),
        descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", 2),
    )
}

fn docker_list() -> String {
    format!(
        r#"{{
  "schemaVersion": 2,
  "mediaType": "{DOCKER_MANIFEST_LIST}",
  "manifests": [
    {{"mediaType": "{DOCKER_MANIFEST_V2}", "digest": "{}", "size": 7,
      "platform": {{"architecture": "amd64", "os": "linux"}}}},
    {{"mediaType": "{DOCKER_MANIFEST_V2}", "digest": "{}", "size": 7,
      "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}}
  ]
}}"#,
        d(10),
        d(11)
    )
}

fn oci_manifest() -> String {
    format!(
        r#"{{
  "schemaVersion": 2,
  "mediaType": "{OCI_MANIFEST}",
  "artifactType": "application/vnd.example.sbom.v1+json",
  "config": {},
  "layers": [{}],
  "subject": {},
  "annotations": {{"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}
}}"#,
        descriptor("application/vnd.oci.empty.v1+json", 20),
        descriptor("application/spdx+json", 21),
        descriptor(OCI_MANIFEST, 22),
    )
}

fn oci_index() -> String {
    format!(
        r#"{{
  "schemaVersion": 2,
  "mediaType": "{OCI_INDEX}",
  "manifests": [{}, {}, {}]
}}"#,
        descriptor(OCI_MANIFEST, 30),
        descriptor(OCI_MANIFEST, 31),
        descriptor(OCI_MANIFEST, 30),
    )
}

fn check_error(bytes: &[u8], media_type: &str, expected: impl Fn(&ManifestError) -> bool) {
    match referenced_digests(bytes, media_type) {
        Err(error) if expected(&error) => {}
        other => panic!(
            "{}: {other:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
    }
}

#[test]
fn docker_manifest_v2() {
    let refs = referenced_digests(docker_manifest().as_bytes(), DOCKER_MANIFEST_V2).unwrap();
    assert_eq!(refs.kind, ManifestKind::DockerManifest);
    // Config first, layers in order, each once; the foreign layer need not exist.
    assert_eq!(refs.blobs, [d(1), d(2)]);
    assert_eq!(refs.external_blobs, [d(3)]);
    assert!(refs.manifests.is_empty());
    assert_eq!(refs.subject, None);
    assert_eq!(refs.artifact_type, None);
    assert_eq!(
        refs.config_media_type.as_deref(),
        Some("application/vnd.docker.container.image.v1+json")
    );
}

#[test]
fn docker_manifest_list() {
    let refs = referenced_digests(docker_list().as_bytes(), DOCKER_MANIFEST_LIST).unwrap();
    assert_eq!(refs.kind, ManifestKind::DockerManifestList);
    assert!(refs.blobs.is_empty());
    assert_eq!(refs.manifests, [d(10), d(11)]);
}

#[test]
fn oci_image_manifest_with_subject_and_artifact_type() {
    let refs = referenced_digests(oci_manifest().as_bytes(), OCI_MANIFEST).unwrap();
    assert_eq!(refs.kind, ManifestKind::OciManifest);
    assert_eq!(refs.blobs, [d(20), d(21)]);
    assert_eq!(refs.subject, Some(d(22)));
    assert_eq!(
        refs.artifact_type.as_deref(),
        Some("application/vnd.example.sbom.v1+json")
    );
    assert_eq!(
        refs.config_media_type.as_deref(),
        Some("application/vnd.oci.empty.v1+json")
    );
}

#[test]
fn oci_image_index() {
    let refs = referenced_digests(oci_index().as_bytes(), OCI_INDEX).unwrap();
    assert_eq!(refs.kind, ManifestKind::OciIndex);
    assert_eq!(refs.manifests, [d(30), d(31)]);
    assert!(refs.blobs.is_empty());
}

#[test]
fn content_type_parameters_and_case_are_ignored() {
    let refs = referenced_digests(
        oci_index().as_bytes(),
        "Application/VND.oci.image.index.v1+json; charset=utf-8",
    )
    .unwrap();
    assert_eq!(refs.kind, ManifestKind::OciIndex);
}

#[test]
fn kind_is_detected_without_content_type() {
    for (bytes, kind) in [
        (docker_manifest(), ManifestKind::DockerManifest),
        (docker_list(), ManifestKind::DockerManifestList),
        (oci_manifest(), ManifestKind::OciManifest),
        (oci_index(), ManifestKind::OciIndex),
    ] {
        for content_type in ["", "application/json"] {
            let refs = referenced_digests(bytes.as_bytes(), content_type).unwrap();
            assert_eq!(refs.kind, kind);
        }
    }
    // OCI documents may omit mediaType: the shape decides.
    let image = format!(
        r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", 1)
    );
    let refs = referenced_digests(image.as_bytes(), "").unwrap();
    assert_eq!(refs.kind, ManifestKind::OciManifest);
    assert_eq!(refs.blobs, [d(1)]);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        descriptor(OCI_MANIFEST, 2)
    );
    let refs = referenced_digests(index.as_bytes(), "").unwrap();
    assert_eq!(refs.kind, ManifestKind::OciIndex);
    // And the Content-Type alone is enough.
    let refs = referenced_digests(index.as_bytes(), OCI_INDEX).unwrap();
    assert_eq!(refs.manifests, [d(2)]);
    check_error(br#"{"schemaVersion":2}"#, "", |e| {
        matches!(e, ManifestError::UnknownKind)
    });
}

#[test]
fn oversize_manifests_are_refused_before_parsing() {
    let mut bytes = vec![b' '; MANIFEST_LEN_MAX + 1];
    bytes[0] = b'{';
    check_error(
        &bytes,
        OCI_MANIFEST,
        |e| matches!(e, ManifestError::TooLarge { len } if *len == MANIFEST_LEN_MAX + 1),
    );
    // Exactly the bound is parsed (and here fails only on its content).
    let mut bytes = oci_index().into_bytes();
    bytes.resize(MANIFEST_LEN_MAX, b' ');
    assert!(referenced_digests(&bytes, OCI_INDEX).is_ok());
}

#[test]
fn malformed_json_is_refused() {
    for bytes in [
        &b""[..],
        b"{",
        b"[]",
        b"null",
        b"\"manifest\"",
        b"{\"schemaVersion\": 2,}",
        b"\xff\xfe",
        br#"{"schemaVersion":"2"}"#,
        br#"{"schemaVersion":2,"layers":{}}"#,
        br#"{"schemaVersion":2,"config":{"digest":7,"size":1},"layers":[]}"#,
        br#"{"schemaVersion":2,"config":{"digest":"x","size":-1},"layers":[]}"#,
        br#"{"schemaVersion":2,"schemaVersion":2}"#,
        // Annotations are a map of strings (image-spec).
        br#"{"schemaVersion":2,"annotations":{"a":1},"config":{"digest":"x","size":1},"layers":[]}"#,
        br#"{"schemaVersion":2,"annotations":[],"config":{"digest":"x","size":1},"layers":[]}"#,
    ] {
        check_error(bytes, OCI_MANIFEST, |e| {
            matches!(e, ManifestError::Malformed(_))
        });
    }
    // Deep nesting neither overflows the stack nor is accepted: in an ignored field it is
    // skipped (then the missing config refuses it), elsewhere it is malformed.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let in_ignored = format!(r#"{{"schemaVersion":2,"x-unknown":{deep}}}"#);
    check_error(in_ignored.as_bytes(), OCI_MANIFEST, |e| {
        matches!(e, ManifestError::Shape { .. })
    });
    let in_config = format!(r#"{{"schemaVersion":2,"config":{deep},"layers":[]}}"#);
    check_error(in_config.as_bytes(), OCI_MANIFEST, |e| {
        matches!(e, ManifestError::Malformed(_))
    });
    let unclosed = format!(
        r#"{{"schemaVersion":2,"annotations":{}"#,
        "{\"a\":".repeat(100_000)
    );
    check_error(unclosed.as_bytes(), OCI_MANIFEST, |e| {
        matches!(e, ManifestError::Malformed(_))
    });
}

#[test]
fn wrong_schema_version_is_refused() {
    for (json, expected) in [
        (
            oci_index().replace("\"schemaVersion\": 2", "\"schemaVersion\": 1"),
            Some(1),
        ),
        (
            oci_index().replace("\"schemaVersion\": 2", "\"schemaVersion\": 3"),
            Some(3),
        ),
        (oci_index().replace("\"schemaVersion\": 2,", ""), None),
    ] {
        check_error(json.as_bytes(), OCI_INDEX, |e| {
            *e == ManifestError::SchemaVersion(expected)
        });
    }
}

#[test]
fn unsupported_and_mismatched_media_types_are_refused() {
    let schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    check_error(
        oci_manifest().as_bytes(),
        schema1,
        |e| matches!(e, ManifestError::UnsupportedMediaType(t) if t == schema1),
    );
    let artifact = oci_manifest().replace(
        OCI_MANIFEST,
        "application/vnd.oci.artifact.manifest.v1+json",
    );
    check_error(artifact.as_bytes(), "", |e| {
        matches!(e, ManifestError::UnsupportedMediaType(_))
    });
    check_error(docker_manifest().as_bytes(), OCI_MANIFEST, |e| {
        matches!(e, ManifestError::MediaTypeMismatch { content_type, in_body }
            if *content_type == OCI_MANIFEST && in_body == DOCKER_MANIFEST_V2)
    });
}

#[test]
fn wrong_shapes_are_refused() {
    let config = descriptor("application/vnd.oci.image.config.v1+json", 1);
    let child = descriptor(OCI_MANIFEST, 2);
    for (json, media_type, problem) in [
        (
            r#"{"schemaVersion":2,"layers":[]}"#.to_string(),
            OCI_MANIFEST,
            "has no \"config\"",
        ),
        (
            format!(r#"{{"schemaVersion":2,"config":{config}}}"#),
            OCI_MANIFEST,
            "has no \"layers\"",
        ),
        (
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[],"manifests":[{child}]}}"#),
            OCI_MANIFEST,
            "must not have \"manifests\"",
        ),
        (
            r#"{"schemaVersion":2}"#.to_string(),
            OCI_INDEX,
            "has no \"manifests\"",
        ),
        (
            r#"{"schemaVersion":2,"manifests":[],"layers":[]}"#.to_string(),
            DOCKER_MANIFEST_LIST,
            "must not have \"config\" or \"layers\"",
        ),
    ] {
        check_error(
            json.as_bytes(),
            media_type,
            |e| matches!(e, ManifestError::Shape { problem: p, .. } if *p == problem),
        );
    }
}

#[test]
fn bad_descriptors_are_refused() {
    let good = "sha256:".to_string() + &"a".repeat(64);
    for (json, field) in [
        (
            r#"{"schemaVersion":2,"config":{"digest":"sha256:abc","size":1},"layers":[]}"#
                .to_string(),
            "config.digest",
        ),
        (
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{good}","size":1}},
                   "layers":[{{"digest":"{good}","size":1}},{{"digest":"md5:00","size":1}}]}}"#
            ),
            "layers[1].digest",
        ),
        (
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"digest":"SHA256:{}","size":1}}]}}"#,
                "a".repeat(64)
            ),
            "manifests[0].digest",
        ),
        (
            format!(
                r#"{{"schemaVersion":2,"manifests":[],"subject":{{"digest":"{}","size":1}}}}"#,
                "A".repeat(71)
            ),
            "subject.digest",
        ),
    ] {
        check_error(
            json.as_bytes(),
            "",
            |e| matches!(e, ManifestError::BadDigest { field: f, .. } if f == field),
        );
    }
    for (json, field) in [
        (
            r#"{"schemaVersion":2,"config":{"size":1},"layers":[]}"#.to_string(),
            "config.digest",
        ),
        (
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{good}"}},"layers":[]}}"#),
            "config.size",
        ),
        (
            format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{good}","size":1}},{{}}]}}"#),
            "manifests[1].digest",
        ),
    ] {
        check_error(
            json.as_bytes(),
            "",
            |e| matches!(e, ManifestError::MissingField(f) if f == field),
        );
    }
}

#[test]
fn bad_artifact_type_is_refused() {
    let json = oci_manifest().replace("application/vnd.example.sbom.v1+json", "not a media type");
    check_error(json.as_bytes(), OCI_MANIFEST, |e| {
        matches!(e, ManifestError::BadArtifactType(_))
    });
}

#[test]
fn many_layers_are_deduplicated_quickly() {
    // Tens of thousands of descriptors (a 4 MiB manifest's worth), half repeats.
    let layers: Vec<String> = (0..30_000u32)
        .map(|i| {
            let digest = Digest::sha256_of(&(i % 15_000).to_le_bytes());
            format!(r#"{{"digest":"{digest}","size":1}}"#)
        })
        .collect();
    let json = format!(
        r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", 1),
        layers.join(",")
    );
    assert!(json.len() <= MANIFEST_LEN_MAX);
    let refs = referenced_digests(json.as_bytes(), OCI_MANIFEST).unwrap();
    assert_eq!(refs.blobs.len(), 15_001);
}
