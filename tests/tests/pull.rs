//! The agent's whole registry face over real sockets, with `curl` as the client: a tracker,
//! an origin, a build-index, a proxy, and an agent given all three, in this process on
//! loopback. Images are pushed through the agent (which forwards to the proxy) and pulled
//! back from it: manifests from the origin, tags from the build-index, layers through the
//! swarm.

#![allow(clippy::unwrap_used)]

mod common;

use common::fixture::{CONFIG_TYPE, Fixture, assert_manifest};
use common::{Served, curl, run};
use shoal_proto::Digest;
use shoal_servers::agent::Agent;
use shoal_servers::build_index::{DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

#[test]
fn push_through_the_agent_then_pull_from_it() {
    let fixture = Fixture::new("push-pull");
    let name = "library/app";
    let (manifest, config, layer) = fixture.image(name, "", 1);
    let digest = Digest::sha256_of(&manifest);
    let reply = fixture.put_manifest(name, "v1", OCI_MANIFEST, &manifest);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(
        reply.header("location"),
        Some(format!("/v2/{name}/manifests/{digest}").as_str())
    );
    assert_eq!(
        reply.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // By tag and by digest, GET and HEAD.
    let by_tag = curl(&[&fixture.url(&format!("/v2/{name}/manifests/v1"))]);
    assert_manifest(&by_tag, OCI_MANIFEST, &manifest);
    let by_digest = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{digest}"))]);
    assert_manifest(&by_digest, OCI_MANIFEST, &manifest);
    let head = curl(&["-I", &fixture.url(&format!("/v2/{name}/manifests/v1"))]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert!(head.body.is_empty());

    // The config and the layer, through the swarm (the origin seeds what it stores).
    for blob in [&config, &layer] {
        let blob_digest = Digest::sha256_of(blob);
        let reply = curl(&[&fixture.url(&format!("/v2/{name}/blobs/{blob_digest}"))]);
        assert_eq!(reply.status, 200);
        assert!(reply.body == *blob, "the blob differs");
        run(fixture.agent.wait_complete(&blob_digest)).unwrap();
        assert!(fixture.agent.store().has_blob(&blob_digest));
    }

    // The engine's counters saw it: Prometheus text, one series per shard.
    let reply = curl(&[&fixture.url("/metrics")]);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.header("content-type")
    );
    let text = String::from_utf8(reply.body.clone()).unwrap();
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let layer_bytes = (config.len() + layer.len()) as f64;
    assert_eq!(
        sum("shoal_piece_bytes_received_total{"),
        layer_bytes,
        "{text}"
    );
    assert!(sum("shoal_pieces_verified_total") >= 2.0, "{text}");
    assert!(
        sum("shoal_piece_requests_sent_total") >= sum("shoal_pieces_verified_total"),
        "{text}"
    );
    assert!(sum("shoal_piece_requests_answered_total") >= 2.0, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let reply = curl(&["-X", "POST", &fixture.url("/metrics")]);
    assert_eq!(reply.status, 405);

    // Tags, paginated with the Link rewritten to the public path.
    let reply = fixture.put_manifest(name, "v2", OCI_MANIFEST, &manifest);
    assert_eq!(reply.status, 201);
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/tags/list"))]);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        serde_json::json!({ "name": name, "tags": ["v1", "v2"] })
    );
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/tags/list?n=1"))]);
    assert_eq!(reply.json()["tags"], serde_json::json!(["v1"]));
    let link = reply.header("link").unwrap();
    assert!(
        link.starts_with(&format!("</v2/{name}/tags/list?")) && link.contains("last=v1"),
        "{link}"
    );

    // The catalog is forwarded to the proxy.
    let reply = curl(&[&fixture.url("/v2/_catalog")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["repositories"], serde_json::json!([name]));

    // Retag: the very next GET sees the new manifest.
    let (manifest_b, _, _) = fixture.image(name, "", 2);
    assert_eq!(
        fixture
            .put_manifest(name, "v1", OCI_MANIFEST, &manifest_b)
            .status,
        201
    );
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/v1"))]);
    assert_manifest(&reply, OCI_MANIFEST, &manifest_b);

    // An index of two platform manifests, served with its own type (Accept is ignored).
    let mut entries = Vec::new();
    for (arch, manifest) in [("amd64", &manifest), ("arm64", &manifest_b)] {
        let digest = Digest::sha256_of(manifest);
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
    }))
    .unwrap();
    assert_eq!(
        fixture
            .put_manifest(name, "multi", OCI_INDEX, &index)
            .status,
        201
    );
    let reply = curl(&[
        "-H",
        &format!("Accept: {OCI_MANIFEST}"),
        &fixture.url(&format!("/v2/{name}/manifests/multi")),
    ]);
    assert_manifest(&reply, OCI_INDEX, &index);
    let index_digest = Digest::sha256_of(&index);
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{index_digest}"))]);
    assert_manifest(&reply, OCI_INDEX, &index);

    // A Docker manifest list, by tag and by digest.
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [],
    }))
    .unwrap();
    assert_eq!(
        fixture
            .put_manifest(name, "list", DOCKER_MANIFEST_LIST, &list)
            .status,
        201
    );
    let list_digest = Digest::sha256_of(&list);
    for reference in ["list".to_owned(), list_digest.to_string()] {
        let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/{reference}"))]);
        assert_manifest(&reply, DOCKER_MANIFEST_LIST, &list);
    }

    // A tag deleted through the agent.
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url(&format!("/v2/{name}/manifests/v2")),
    ]);
    assert_eq!(reply.status, 202);
    let reply = curl(&[&fixture.url(&format!("/v2/{name}/manifests/v2"))]);
    assert_eq!(reply.status, 404);
}

#[test]
fn mirror_namespace() {
    let fixture = Fixture::new("mirror");
    let query = "ns=example.com&";
    let (manifest, _, _) = fixture.image("app", query, 3);
    let reply = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_MANIFEST}"),
        "--data-binary",
        &fixture.file(&manifest),
        &fixture.url("/v2/app/manifests/v1?ns=example.com"),
    ]);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // Served for `example.com/app`, with `?ns=` or by the full name, on the agent and the
    // proxy alike; `app` alone has nothing.
    for url in [
        fixture.url("/v2/app/manifests/v1?ns=example.com"),
        fixture.url("/v2/example.com/app/manifests/v1"),
        fixture.proxy_url("/v2/example.com/app/manifests/v1"),
    ] {
        assert_manifest(&curl(&[&url]), OCI_MANIFEST, &manifest);
    }
    let reply = curl(&[&fixture.url("/v2/app/manifests/v1")]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
    let reply = curl(&[&fixture.url("/v2/app/tags/list?ns=example.com")]);
    assert_eq!(
        reply.json(),
        serde_json::json!({ "name": "example.com/app", "tags": ["v1"] })
    );
    // `/v2/` is the same with `ns`.
    assert_eq!(curl(&[&fixture.url("/v2/?ns=example.com")]).status, 200);
    // A namespace outside the name grammar (a port) makes the name invalid.
    let reply = curl(&[&fixture.url("/v2/app/manifests/v1?ns=localhost%3A5000")]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "NAME_INVALID");
}

#[test]
fn errors() {
    let fixture = Fixture::new("errors");
    let reply = curl(&[&fixture.url("/v2/library/app/manifests/nope")]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
    let unknown = Digest::sha256_of(b"nothing");
    let reply = curl(&[&fixture.url(&format!("/v2/library/app/manifests/{unknown}"))]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
    let reply = curl(&[&fixture.url("/v2/library/app/manifests/-bad")]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "MANIFEST_INVALID");
    let reply = curl(&[&fixture.url("/v2/library/app/manifests/sha256:abc")]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "DIGEST_INVALID");
    let reply = curl(&[&fixture.url("/v2/Library/app/manifests/v1")]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "NAME_INVALID");
    let reply = curl(&[&fixture.url("/v2/library/app/tags/list")]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "NAME_UNKNOWN");
    // A manifest whose layer was never pushed: the proxy's refusal comes back as is.
    let missing = Digest::sha256_of(b"missing");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": CONFIG_TYPE, "digest": missing.to_string(), "size": 7 },
        "layers": [],
    }))
    .unwrap();
    let reply = fixture.put_manifest("library/app", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "MANIFEST_BLOB_UNKNOWN");
    let reply = curl(&["-X", "POST", &fixture.url("/v2/library/app/manifests/v1")]);
    assert_eq!(reply.status, 405);

    // An agent with neither a registry nor a proxy: 503 for manifests, tags and pushes.
    let served = fixture.agent.clone();
    let bare = Served::start(move || async move { Agent::new(served) });
    for (method, path) in [
        ("GET", "/v2/library/app/manifests/v1"),
        ("GET", "/v2/library/app/tags/list"),
        ("POST", "/v2/library/app/blobs/uploads/"),
        ("PUT", "/v2/library/app/manifests/v1"),
        ("GET", "/v2/_catalog"),
    ] {
        let reply = curl(&["-X", method, &bare.url(path)]);
        assert_eq!(reply.status, 503, "{method} {path}");
        assert_eq!(reply.error_code(), "UNAVAILABLE", "{method} {path}");
    }
    drop(bare);
}
