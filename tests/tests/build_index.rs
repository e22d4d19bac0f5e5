//! The build-index's internal tag API over real sockets, with `curl`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{Served, curl, scratch};
use shoal_proto::Digest;
use shoal_servers::build_index::server::BuildIndex;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

struct Fixture {
    dir: PathBuf,
    server: Option<Served>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = scratch("build-index", name);
        let mut fixture = Fixture { dir, server: None };
        fixture.start();
        fixture
    }

    /// (Re)opens the tag store and serves it.
    fn start(&mut self) {
        drop(self.server.take());
        let root = self.dir.join("tags");
        self.server = Some(Served::start(move || async move {
            BuildIndex::open(&root).unwrap().0
        }));
    }

    fn url(&self, path: &str) -> String {
        self.server.as_ref().unwrap().url(path)
    }

    fn put(&self, path: &str, body: &str) -> common::Reply {
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &self.url(path),
        ])
    }

    fn put_tag(&self, repo_tag: &str, digest: &Digest, expected: Option<u64>) -> common::Reply {
        let mut body = serde_json::json!({ "digest": digest.to_string(), "media_type": OCI });
        if let Some(expected) = expected {
            body["expected_version"] = expected.into();
        }
        self.put(&format!("/internal/tags/{repo_tag}"), &body.to_string())
    }

    fn get(&self, path: &str) -> common::Reply {
        curl(&[&self.url(path)])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn digest(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

#[test]
fn put_get_retag_delete_and_restart() {
    let mut fixture = Fixture::new("tags");
    let reply = fixture.get("/internal/tags/library/app/latest");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");

    let reply = fixture.put_tag("library/app/latest", &digest(1), None);
    assert_eq!(reply.status, 200);
    let first = reply.json();
    assert_eq!(first["digest"], digest(1).to_string());
    assert_eq!(first["media_type"], OCI);
    let version = first["version"].as_u64().unwrap();
    let reply = fixture.get("/internal/tags/library/app/latest");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), first);

    // A mutable tag: the very next GET sees the new digest.
    for n in 2..6 {
        let reply = fixture.put_tag("library/app/latest", &digest(n), None);
        assert_eq!(reply.status, 200);
        let reply = fixture.get("/internal/tags/library/app/latest");
        assert_eq!(reply.json()["digest"], digest(n).to_string());
        assert!(reply.json()["version"].as_u64().unwrap() > version);
    }

    // A restart keeps the tags.
    fixture.put_tag("library/app/v1", &digest(9), None);
    fixture.start();
    let reply = fixture.get("/internal/tags/library/app/latest");
    assert_eq!(reply.json()["digest"], digest(5).to_string());
    assert_eq!(fixture.get("/internal/tags/library/app/v1").status, 200);

    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url("/internal/tags/library/app/latest"),
    ]);
    assert_eq!(reply.status, 202);
    assert_eq!(fixture.get("/internal/tags/library/app/latest").status, 404);
    let reply = curl(&[
        "-X",
        "DELETE",
        &fixture.url("/internal/tags/library/app/latest"),
    ]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "MANIFEST_UNKNOWN");
}

#[test]
fn compare_and_set() {
    let fixture = Fixture::new("cas");
    let reply = fixture.put_tag("a/t", &digest(1), Some(0));
    assert_eq!(reply.status, 200);
    let version = reply.json()["version"].as_u64().unwrap();
    let reply = fixture.put_tag("a/t", &digest(2), Some(0));
    assert_eq!(reply.status, 409);
    assert_eq!(reply.error_code(), "DENIED");
    assert_eq!(reply.json()["errors"][0]["detail"]["current"], version);
    let reply = fixture.put_tag("a/t", &digest(2), Some(version));
    assert_eq!(reply.status, 200);
    // The stale version now conflicts and changes nothing.
    assert_eq!(
        fixture.put_tag("a/t", &digest(3), Some(version)).status,
        409
    );
    assert_eq!(
        fixture.get("/internal/tags/a/t").json()["digest"],
        digest(2).to_string()
    );
}

#[test]
fn pagination_with_link() {
    let fixture = Fixture::new("pages");
    for tag in ["v3", "v1", "v5", "v2", "v4"] {
        assert_eq!(
            fixture
                .put_tag(&format!("org/app/{tag}"), &digest(1), None)
                .status,
            200
        );
    }
    for repo in ["b", "a", "org/app2"] {
        assert_eq!(
            fixture
                .put_tag(&format!("{repo}/latest"), &digest(1), None)
                .status,
            200
        );
    }
    let mut tags = Vec::new();
    let mut path = "/internal/tags/org/app?n=2".to_owned();
    for _ in 0..10 {
        let reply = fixture.get(&path);
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert_eq!(body["name"], "org/app");
        tags.extend(
            body["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned()),
        );
        let Some(link) = reply.header("link") else {
            break;
        };
        let target = link
            .strip_prefix('<')
            .unwrap()
            .split_once(">; rel=\"next\"")
            .unwrap()
            .0;
        path = target.to_owned();
    }
    assert_eq!(tags, ["v1", "v2", "v3", "v4", "v5"]);
    // Without a query, a trailing slash lists; one segment lists.
    assert_eq!(
        fixture.get("/internal/tags/org/app/").json()["tags"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        fixture.get("/internal/tags/a").json()["tags"],
        serde_json::json!(["latest"])
    );
    let reply = fixture.get("/internal/tags/org/nothing?n=10");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "NAME_UNKNOWN");

    let reply = fixture.get("/internal/repositories?n=2");
    assert_eq!(reply.json()["repositories"], serde_json::json!(["a", "b"]));
    assert_eq!(
        reply.header("link"),
        Some("</internal/repositories?n=2&last=b>; rel=\"next\"")
    );
    let reply = fixture.get("/internal/repositories?n=2&last=b");
    assert_eq!(
        reply.json()["repositories"],
        serde_json::json!(["org/app", "org/app2"])
    );
    assert_eq!(reply.header("link"), None);
    let reply = fixture.get("/internal/repositories");
    assert_eq!(reply.json()["repositories"].as_array().unwrap().len(), 4);
}

#[test]
fn bad_requests_get_oci_errors() {
    let fixture = Fixture::new("errors");
    let check = |reply: common::Reply, status: u16, code: &str| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.error_code(), code);
    };
    check(
        fixture.get("/internal/tags/Bad/latest"),
        400,
        "NAME_INVALID",
    );
    check(
        curl(&["--path-as-is", &fixture.url("/internal/tags/a/../b/latest")]),
        400,
        "NAME_INVALID",
    );
    check(fixture.get("/internal/tags/a/-bad"), 400, "NAME_INVALID");
    check(
        fixture.put_tag("a/.tmp-x", &digest(1), None),
        400,
        "NAME_INVALID",
    );
    check(
        fixture.put("/internal/tags/a/t", "not json"),
        400,
        "MANIFEST_INVALID",
    );
    check(
        fixture.put(
            "/internal/tags/a/t",
            r#"{"digest":"sha256:abc","media_type":"a/b"}"#,
        ),
        400,
        "DIGEST_INVALID",
    );
    let body = serde_json::json!({ "digest": digest(1).to_string(), "media_type": "a b" });
    check(
        fixture.put("/internal/tags/a/t", &body.to_string()),
        400,
        "MANIFEST_INVALID",
    );
    let big = format!("{{\"digest\":\"{}\"}}", "x".repeat(70_000));
    check(fixture.put("/internal/tags/a/t", &big), 413, "SIZE_INVALID");
    check(fixture.get("/internal/tags/a?n=x"), 400, "SIZE_INVALID");
    check(fixture.get("/internal/nothing"), 404, "NAME_UNKNOWN");
    let reply = curl(&["-X", "POST", &fixture.url("/internal/tags/a/t")]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, PUT, DELETE"));
    // Nothing was written by any of these.
    assert_eq!(
        fixture.get("/internal/repositories").json()["repositories"],
        serde_json::json!([])
    );
}
