//! OCI 1.1 referrers, repository-scoped manifests and DELETE, over real sockets with `curl`:
//! a tracker, an origin, a build-index, a proxy and an agent in this process on loopback.
//! Every case is checked through the agent and through the proxy (they share the read
//! side); the build-index is restarted on its store to see what survives.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::curl;
use common::fixture::{Fixture, assert_manifest};
use shoal_proto::Digest;
use shoal_servers::build_index::{ANNOTATIONS_BYTES_MAX, OCI_INDEX, OCI_MANIFEST};

const SIGNATURE: &str = "application/vnd.example.signature.v1";
const SBOM: &str = "application/vnd.example.sbom.v1";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const CUSTOM_CONFIG: &str = "application/vnd.example.config.v1+json";

/// An artifact manifest whose `subject` is `subject` (of `subject_len` bytes): the empty
/// config, no layers, `artifactType` when given (else a config of `CUSTOM_CONFIG`, which
/// the referrers API reports as the artifact type), annotations when given.
fn artifact(
    fixture: &Fixture,
    name: &str,
    subject: &Digest,
    subject_len: usize,
    artifact_type: Option<&str>,
    annotations: Option<serde_json::Value>,
) -> Vec<u8> {
    let config = fixture.push_blob(name, "", b"{}");
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": EMPTY, "digest": config.to_string(), "size": 2 },
        "layers": [],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject.to_string(),
                     "size": subject_len },
    });
    match artifact_type {
        Some(artifact_type) => manifest["artifactType"] = artifact_type.into(),
        None => manifest["config"]["mediaType"] = CUSTOM_CONFIG.into(),
    }
    if let Some(annotations) = annotations {
        manifest["annotations"] = annotations;
    }
    serde_json::to_vec(&manifest).unwrap()
}

/// Pushes `manifest` by digest; checks the 201 and its `OCI-Subject`.
fn push_referrer(fixture: &Fixture, name: &str, manifest: &[u8], subject: &Digest) -> Digest {
    let digest = Digest::sha256_of(manifest);
    let reply = fixture.put_manifest(name, &digest.to_string(), OCI_MANIFEST, manifest);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("oci-subject"),
        Some(subject.to_string().as_str())
    );
    digest
}

/// Pushes an image (config, layer, manifest) tagged `tag`; returns the manifest.
fn push_image(fixture: &Fixture, name: &str, tag: &str, seed: u8) -> Vec<u8> {
    let (manifest, _, _) = fixture.image(name, "", seed);
    let reply = fixture.put_manifest(name, tag, OCI_MANIFEST, &manifest);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    manifest
}

/// The referrers index at `url`: checks status, type and envelope; returns its descriptors
/// and the `OCI-Filters-Applied` header.
fn referrers(url: &str) -> (Vec<serde_json::Value>, Option<String>) {
    let reply = curl(&[url]);
    assert_eq!(
        reply.status,
        200,
        "{url}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some(OCI_INDEX), "{url}");
    let index: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = index["manifests"].as_array().unwrap().clone();
    let filters = reply.header("oci-filters-applied").map(str::to_owned);
    (manifests, filters)
}

fn digests_of(descriptors: &[serde_json::Value]) -> Vec<String> {
    let mut digests: Vec<String> = descriptors
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    digests.sort();
    digests
}

fn sorted(digests: &[&Digest]) -> Vec<String> {
    let mut digests: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    digests.sort();
    digests
}

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn record_name(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.encoded())
}

#[test]
fn referrers_listed_and_filtered_through_agent_and_proxy() {
    let fixture = Fixture::new("referrers-list");
    let name = "library/app";
    let image = push_image(&fixture, name, "v1", 1);
    let subject = Digest::sha256_of(&image);

    let annotations = serde_json::json!({
        "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
        "org.example.signer": "ci",
    });
    let signature = artifact(
        &fixture,
        name,
        &subject,
        image.len(),
        Some(SIGNATURE),
        Some(annotations.clone()),
    );
    let signature_digest = push_referrer(&fixture, name, &signature, &subject);
    let sbom = artifact(&fixture, name, &subject, image.len(), Some(SBOM), None);
    let sbom_digest = push_referrer(&fixture, name, &sbom, &subject);
    // No artifactType: the config's media type stands for it.
    let custom = artifact(&fixture, name, &subject, image.len(), None, None);
    let custom_digest = push_referrer(&fixture, name, &custom, &subject);

    for url in [
        fixture.url(&format!("/v2/{name}/referrers/{subject}")),
        fixture.proxy_url(&format!("/v2/{name}/referrers/{subject}")),
    ] {
        let (all, filters) = referrers(&url);
        assert_eq!(filters, None, "{url}");
        assert_eq!(
            digests_of(&all),
            sorted(&[&signature_digest, &sbom_digest, &custom_digest]),
            "{url}"
        );
        let find = |digest: &Digest| {
            all.iter()
                .find(|d| d["digest"] == digest.to_string())
                .unwrap()
                .clone()
        };
        assert_eq!(
            find(&signature_digest),
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": signature_digest.to_string(),
                "size": signature.len(),
                "artifactType": SIGNATURE,
                "annotations": annotations,
            })
        );
        let sbom_descriptor = find(&sbom_digest);
        assert_eq!(sbom_descriptor["artifactType"], SBOM);
        assert_eq!(sbom_descriptor["size"], sbom.len());
        assert!(sbom_descriptor.get("annotations").is_none());
        assert_eq!(find(&custom_digest)["artifactType"], CUSTOM_CONFIG);

        // Filtered: only that type, and the header says the filter was applied.
        let (signatures, filters) = referrers(&format!("{url}?artifactType={SIGNATURE}"));
        assert_eq!(filters.as_deref(), Some("artifactType"));
        assert_eq!(digests_of(&signatures), sorted(&[&signature_digest]));
        let encoded = SBOM.replace('/', "%2F").replace('.', "%2E");
        let (sboms, filters) = referrers(&format!("{url}?artifactType={encoded}"));
        assert_eq!(filters.as_deref(), Some("artifactType"));
        assert_eq!(digests_of(&sboms), sorted(&[&sbom_digest]));
        let (none, filters) = referrers(&format!("{url}?artifactType=application/x.none"));
        assert_eq!(filters.as_deref(), Some("artifactType"));
        assert!(none.is_empty());
    }

    // Scoped to the repository: another one has none, and an unknown subject has none.
    let unknown = Digest::sha256_of(b"never pushed");
    for url in [
        fixture.url(&format!("/v2/other/referrers/{subject}")),
        fixture.proxy_url(&format!("/v2/other/referrers/{subject}")),
        fixture.url(&format!("/v2/{name}/referrers/{unknown}")),
        fixture.proxy_url(&format!("/v2/{name}/referrers/{unknown}")),
    ] {
        assert!(referrers(&url).0.is_empty(), "{url}");
    }
    // The subject's own manifest carries no OCI-Subject; a referrer's does.
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{subject}"))]);
    assert_manifest(&reply, OCI_MANIFEST, &image);
    assert_eq!(reply.header("oci-subject"), None);
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{sbom_digest}"))]);
    assert_manifest(&reply, OCI_MANIFEST, &sbom);
    assert_eq!(
        reply.header("oci-subject"),
        Some(subject.to_string().as_str())
    );
    // Only GET.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/{name}/referrers/{subject}")),
    ]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.error_code(), "UNSUPPORTED");
}

#[test]
fn a_referrer_may_come_before_its_subject() {
    let fixture = Fixture::new("referrers-first");
    let name = "app";
    let (image, _, _) = fixture.image(name, "", 2);
    let subject = Digest::sha256_of(&image);
    let signature = artifact(&fixture, name, &subject, image.len(), Some(SIGNATURE), None);
    let signature_digest = push_referrer(&fixture, name, &signature, &subject);
    // The subject is not there yet; its referrer is listed already.
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{subject}"))]);
    assert_eq!(reply.status, 404);
    let url = fixture.url(&format!("/v2/{name}/referrers/{subject}"));
    assert_eq!(digests_of(&referrers(&url).0), sorted(&[&signature_digest]));
    // Then the subject comes; nothing changes for its referrers.
    let reply = fixture.put_manifest(name, "v1", OCI_MANIFEST, &image);
    assert_eq!(reply.status, 201);
    assert_eq!(digests_of(&referrers(&url).0), sorted(&[&signature_digest]));
    // Pushing the referrer again (by tag this time) does not list it twice.
    let reply = fixture.put_manifest(name, "sig", OCI_MANIFEST, &signature);
    assert_eq!(reply.status, 201);
    assert_eq!(referrers(&url).0.len(), 1);
}

#[test]
fn manifests_by_digest_are_scoped_to_their_repository() {
    let fixture = Fixture::new("scoped");
    let image = push_image(&fixture, "team-a/app", "v1", 3);
    let digest = Digest::sha256_of(&image);
    // Pushed by digest only, into another repository.
    let (untagged, _, _) = fixture.image("team-c/app", "", 4);
    let untagged_digest = Digest::sha256_of(&untagged);
    let reply = fixture.put_manifest(
        "team-c/app",
        &untagged_digest.to_string(),
        OCI_MANIFEST,
        &untagged,
    );
    assert_eq!(reply.status, 201);

    for url in [Fixture::url, Fixture::proxy_url] {
        let own = curl(&[&url(
            &fixture,
            &format!("/v2/team-a/app/manifests/{digest}"),
        )]);
        assert_manifest(&own, OCI_MANIFEST, &image);
        let own = curl(&[&url(
            &fixture,
            &format!("/v2/team-c/app/manifests/{untagged_digest}"),
        )]);
        assert_manifest(&own, OCI_MANIFEST, &untagged);
        for path in [
            format!("/v2/team-b/app/manifests/{digest}"),
            format!("/v2/team-c/app/manifests/{digest}"),
            format!("/v2/team-a/app/manifests/{untagged_digest}"),
        ] {
            let reply = curl(&[&url(&fixture, &path)]);
            assert_eq!(reply.status, 404, "{path}");
            assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN", "{path}");
            let head = curl(&["-I", &url(&fixture, &path)]);
            assert_eq!(head.status, 404, "HEAD {path}");
        }
    }
    // A deletion in another repository changes nothing here.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/team-b/app/manifests/{digest}")),
    ]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
    let own = curl(&[&fixture.url(&format!("/v2/team-a/app/manifests/{digest}"))]);
    assert_eq!(own.status, 200);
}

#[test]
fn delete_by_digest_removes_tags_and_referrer_and_blobs_are_refused() {
    let fixture = Fixture::new("delete");
    let name = "library/app";
    let image = push_image(&fixture, name, "v1", 5);
    let digest = Digest::sha256_of(&image);
    assert_eq!(
        fixture
            .put_manifest(name, "v2", OCI_MANIFEST, &image)
            .status,
        201
    );
    let other = push_image(&fixture, name, "other", 6);
    let signature = artifact(&fixture, name, &digest, image.len(), Some(SIGNATURE), None);
    let signature_digest = push_referrer(&fixture, name, &signature, &digest);
    let listing = fixture.url(&format!("/v2/{name}/referrers/{digest}"));
    assert_eq!(referrers(&listing).0.len(), 1);

    // The referrer first (through the proxy): its record goes with it.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.proxy_url(&format!("/v2/{name}/manifests/{signature_digest}")),
    ]);
    assert_eq!(reply.status, 202);
    assert!(referrers(&listing).0.is_empty());
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{signature_digest}"))]);
    assert_eq!(reply.status, 404);

    // The image (through the agent): both its tags go, the other tag stays.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/{name}/manifests/{digest}")),
    ]);
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    for reference in [digest.to_string(), "v1".to_owned(), "v2".to_owned()] {
        for url in [
            fixture.url(&format!("/v2/{name}/manifests/{reference}")),
            fixture.proxy_url(&format!("/v2/{name}/manifests/{reference}")),
        ] {
            let reply = curl(&[&url]);
            assert_eq!(reply.status, 404, "{url}");
            assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN", "{url}");
        }
    }
    let tags = curl(&[&fixture.url(&format!("/v2/{name}/tags/list"))]);
    assert_eq!(tags.json()["tags"], serde_json::json!(["other"]));
    assert_manifest(
        &curl(&[&fixture.url(&format!("/v2/{name}/manifests/other"))]),
        OCI_MANIFEST,
        &other,
    );
    // Twice: 404.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/{name}/manifests/{digest}")),
    ]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");

    // By tag: the tag only; the manifest stays readable by digest.
    let other_digest = Digest::sha256_of(&other);
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/{name}/manifests/other")),
    ]);
    assert_eq!(reply.status, 202);
    assert_eq!(
        curl(&[&fixture.url(&format!("/v2/{name}/manifests/other"))]).status,
        404
    );
    assert_manifest(
        &curl(&[&fixture.url(&format!("/v2/{name}/manifests/{other_digest}"))]),
        OCI_MANIFEST,
        &other,
    );

    // Blobs: 405 UNSUPPORTED saying why, through both fronts; the blob stays.
    let config = fixture.push_blob(name, "", b"{}");
    for url in [
        fixture.url(&format!("/v2/{name}/blobs/{config}")),
        fixture.proxy_url(&format!("/v2/{name}/blobs/{config}")),
    ] {
        let reply = curl(&["-X", "DELETE", &url]);
        assert_eq!(reply.status, 405, "{url}");
        assert_eq!(reply.error_code(), "UNSUPPORTED");
        let message = reply.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("garbage collection"), "{message}");
    }
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/blobs/{config}"))]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"{}");
}

#[test]
fn bad_input_is_an_oci_error_and_writes_nothing() {
    let fixture = Fixture::new("referrers-bad");
    let name = "app";
    let image = push_image(&fixture, name, "v1", 7);
    let subject = Digest::sha256_of(&image);
    let before = snapshot(&fixture.index_root);
    assert!(!before.is_empty());

    let sha = subject.to_string();
    let front = |method: &str, path: &str| -> (u16, String) {
        let mut results = Vec::new();
        for url in [fixture.url(path), fixture.proxy_url(path)] {
            let reply = curl(&["--path-as-is", "-X", method, &url]);
            results.push((reply.status, reply.error_code()));
        }
        assert_eq!(results[0], results[1], "{method} {path}: agent vs proxy");
        results.remove(0)
    };
    let cases = [
        (
            "GET",
            "/v2/app/referrers/sha256:abc".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/app/referrers/latest".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("/v2/App/referrers/{sha}"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("/v2/../app/referrers/{sha}"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("/v2/app/../../x/referrers/{sha}"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("/v2/%2e%2e/app/referrers/{sha}"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/app/referrers/..".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/app/referrers/sha256:..%2f..%2fx".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "DELETE",
            "/v2/app/manifests/sha256:abc".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "DELETE",
            format!("/v2/app/../x/manifests/{sha}"),
            400,
            "NAME_INVALID",
        ),
        (
            "DELETE",
            format!("/v2/nothing/manifests/{sha}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "DELETE",
            "/v2/app/blobs/sha256:abc".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
    ];
    for (method, path, status, code) in cases {
        assert_eq!(
            front(method, &path),
            (status, code.to_owned()),
            "{method} {path}"
        );
    }

    // A referrer with annotations past their bound: refused before anything is stored.
    let big = serde_json::json!({ "k": "v".repeat(ANNOTATIONS_BYTES_MAX) });
    let manifest = artifact(&fixture, name, &subject, image.len(), Some(SBOM), Some(big));
    let digest = Digest::sha256_of(&manifest);
    let reply = fixture.put_manifest(name, &digest.to_string(), OCI_MANIFEST, &manifest);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "MANIFEST_INVALID");
    // A manifest whose annotations are not strings.
    let mut odd: serde_json::Value = serde_json::from_slice(&image).unwrap();
    odd["annotations"] = serde_json::json!({ "n": 1 });
    let reply = fixture.put_manifest(
        name,
        "odd",
        OCI_MANIFEST,
        &serde_json::to_vec(&odd).unwrap(),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "MANIFEST_INVALID");

    // The build-index's internal API refuses the same, and more.
    let index = |method: &str, path: &str, body: Option<&str>| {
        let url = fixture.index_url(path);
        let mut args = vec!["--path-as-is", "-X", method];
        if let Some(body) = body {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        args.push(&url);
        let reply = curl(&args);
        (reply.status, reply.error_code())
    };
    let record = serde_json::json!({ "digest": sha, "media_type": OCI_MANIFEST }).to_string();
    let other = Digest::sha256_of(b"other");
    let huge = format!(
        "{{\"digest\":\"{sha}\",\"media_type\":\"{}\"}}",
        "a".repeat(70_000)
    );
    let bad_type = serde_json::json!({ "digest": sha, "media_type": "nope" }).to_string();
    let unknown_key =
        serde_json::json!({ "digest": sha, "media_type": OCI_MANIFEST, "x": 1 }).to_string();
    let sizeless_referrer =
        serde_json::json!({ "digest": sha, "media_type": OCI_MANIFEST, "subject": other.to_string() })
            .to_string();
    let internal = [
        (
            "GET",
            format!("/internal/referrers/../x/{sha}"),
            None,
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("/internal/referrers/{sha}"),
            None,
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/internal/referrers/app/sha256:abc".to_owned(),
            None,
            400,
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/a/../b/{sha}"),
            Some(record.as_str()),
            400,
            "NAME_INVALID",
        ),
        (
            "PUT",
            "/internal/manifests/app/sha256:abc".to_owned(),
            Some(record.as_str()),
            400,
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{other}"),
            Some(record.as_str()),
            400,
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{sha}"),
            Some("not json"),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{sha}"),
            Some(unknown_key.as_str()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{sha}"),
            Some(bad_type.as_str()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{sha}"),
            Some(sizeless_referrer.as_str()),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "PUT",
            format!("/internal/manifests/app/{sha}"),
            Some(huge.as_str()),
            413,
            "SIZE_INVALID",
        ),
        (
            "DELETE",
            format!("/internal/manifests/nothing/{sha}"),
            None,
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "POST",
            format!("/internal/referrers/app/{sha}"),
            None,
            405,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, body, status, code) in internal {
        assert_eq!(
            index(method, &path, body),
            (status, code.to_owned()),
            "{method} {path}"
        );
    }

    assert_eq!(
        snapshot(&fixture.index_root),
        before,
        "the build-index's store changed"
    );
    assert!(!fixture.index_root.join("x").exists() && !fixture.index_root.join("../x").exists());
}

#[test]
fn referrers_and_memberships_survive_a_restart_and_corrupt_records_are_skipped() {
    let mut fixture = Fixture::new("referrers-restart");
    let name = "library/app";
    let image = push_image(&fixture, name, "v1", 8);
    let subject = Digest::sha256_of(&image);
    let signature = artifact(&fixture, name, &subject, image.len(), Some(SIGNATURE), None);
    let signature_digest = push_referrer(&fixture, name, &signature, &subject);
    let sbom = artifact(&fixture, name, &subject, image.len(), Some(SBOM), None);
    let sbom_digest = push_referrer(&fixture, name, &sbom, &subject);
    let listing = fixture.url(&format!("/v2/{name}/referrers/{subject}"));

    // A clean restart: everything is there.
    let report = fixture.restart_build_index(|_| {});
    assert_eq!(report.n_referrers, 2, "{report:#?}");
    assert_eq!(report.n_manifests, 3, "{report:#?}");
    assert_eq!(report.n_corrupt_manifest_records, 0);
    assert_eq!(
        digests_of(&referrers(&listing).0),
        sorted(&[&signature_digest, &sbom_digest])
    );
    assert_manifest(
        &curl(&[&fixture.url(&format!("/v2/{name}/manifests/{subject}"))]),
        OCI_MANIFEST,
        &image,
    );
    assert_eq!(
        curl(&[&fixture.url(&format!("/v2/other/manifests/{subject}"))]).status,
        404
    );

    // A bit flipped in one referrer record while stopped: counted, skipped, never served.
    let report = fixture.restart_build_index(|root| {
        let path = root
            .join("repos")
            .join(name)
            .join("_referrers")
            .join(record_name(&subject))
            .join(record_name(&sbom_digest));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x02;
        std::fs::write(&path, bytes).unwrap();
    });
    assert_eq!(report.n_corrupt_manifest_records, 1, "{report:#?}");
    assert_eq!(report.n_referrers, 1);
    assert_eq!(
        digests_of(&referrers(&listing).0),
        sorted(&[&signature_digest])
    );
    // Pushing it again repairs it.
    push_referrer(&fixture, name, &sbom, &subject);
    assert_eq!(referrers(&listing).0.len(), 2);

    // A store from before memberships (tags only): the tagged manifest keeps being served
    // by digest in its repository, and only there.
    let report = fixture.restart_build_index(|root| {
        std::fs::remove_dir_all(root.join("repos").join(name).join("_manifests")).unwrap();
    });
    assert_eq!(report.n_manifests_restored, 1, "{report:#?}");
    assert_manifest(
        &curl(&[&fixture.proxy_url(&format!("/v2/{name}/manifests/{subject}"))]),
        OCI_MANIFEST,
        &image,
    );
    assert_eq!(
        curl(&[&fixture.url(&format!("/v2/other/manifests/{subject}"))]).status,
        404
    );
    // The referrers' memberships were lost with the directory; their records were not.
    assert_eq!(referrers(&listing).0.len(), 2);
}
