//! The agent's pull API over real sockets, with `curl` as the client: a real tracker, a
//! seeder engine, and an agent engine behind `shoal_servers::http::serve`, all in this
//! process on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use common::{Served, WAIT_MAX as READ_WAIT_MAX, bytes, curl, engine, run, scratch, tracker};
use shoal_engine::Engine;
use shoal_proto::Digest;
use shoal_servers::agent::Agent;

/// A tracker, a seeder, and an agent serving HTTP on its own thread; torn down on drop.
struct Fixture {
    dir: PathBuf,
    seeder: Engine,
    agent: Engine,
    server: Option<Served>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = scratch("agent", name);
        let tracker = tracker();
        let seeder = engine(&dir, "seeder", tracker);
        let agent = engine(&dir, "agent", tracker);
        let served = agent.clone();
        let server = Served::start(move || async move { Agent::new(served) });
        Fixture {
            dir,
            seeder,
            agent,
            server: Some(server),
        }
    }

    /// A blob of `len` pseudo-random bytes, ingested and seeded by the seeder.
    fn seed(&self, len: usize, seed: u8) -> (Digest, Vec<u8>) {
        let bytes = bytes(len, seed);
        let path = self.dir.join(format!("blob-{seed}"));
        std::fs::write(&path, &bytes).unwrap();
        let digest = run(async {
            let digest = self.seeder.ingest_file(&path, None).await.unwrap();
            self.seeder.seed(&digest).await.unwrap();
            digest
        });
        (digest, bytes)
    }

    fn url(&self, path: &str) -> String {
        self.server().url(path)
    }

    fn server(&self) -> &Served {
        self.server.as_ref().unwrap()
    }

    fn blob_url(&self, digest: &Digest) -> String {
        self.url(&format!("/v2/library/test/blobs/{digest}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.server.take());
        self.agent.shutdown();
        self.seeder.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn version_check() {
    let fixture = Fixture::new("base");
    for path in ["/v2/", "/v2"] {
        let reply = curl(&[&fixture.url(path)]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"{}");
        assert_eq!(
            reply.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
}

#[test]
fn blob_through_the_swarm_then_from_the_cache_with_ranges() {
    let fixture = Fixture::new("blob");
    // Four whole 1 MiB pieces and a short one.
    let (digest, bytes) = fixture.seed((4 << 20) + 12_345, 1);
    let len = bytes.len();
    let url = fixture.blob_url(&digest);

    // The agent has nothing: this GET starts the download and streams it.
    let reply = curl(&[&url]);
    assert_eq!(reply.status, 200);
    assert!(reply.body == bytes, "the blob differs");
    assert_eq!(
        reply.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(
        reply.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    run(fixture.agent.wait_complete(&digest)).unwrap();
    assert!(fixture.agent.store().has_blob(&digest));

    // From the cache now.
    let reply = curl(&[&url]);
    assert_eq!(reply.status, 200);
    assert!(reply.body == bytes, "the cached blob differs");

    let range = |header: &str, start: usize, end: usize| {
        let reply = curl(&["-H", &format!("Range: {header}"), &url]);
        assert_eq!(reply.status, 206, "{header}");
        assert!(reply.body == bytes[start..end], "{header}: wrong bytes");
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes {start}-{}/{len}", end - 1).as_str()),
            "{header}"
        );
        assert_eq!(
            reply.header("content-length"),
            Some((end - start).to_string().as_str())
        );
    };
    range("bytes=0-0", 0, 1);
    range("bytes=1000-1999999", 1000, 2_000_000);
    range(&format!("bytes={}-", len - 7), len - 7, len);
    range("bytes=-100", len - 100, len);
    range(&format!("bytes=5-{}", len * 2), 5, len);

    for header in [format!("bytes={len}-"), "bytes=-0".to_owned()] {
        let reply = curl(&["-H", &format!("Range: {header}"), &url]);
        assert_eq!(reply.status, 416, "{header}");
        assert_eq!(reply.error_code(), "RANGE_INVALID");
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    // Several ranges are not supported: the whole blob.
    let reply = curl(&["-H", "Range: bytes=0-1,5-6", &url]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), len);
}

#[test]
fn a_range_while_the_blob_downloads() {
    let fixture = Fixture::new("range-first");
    let (digest, bytes) = fixture.seed((3 << 20) + 5, 2);
    // The first request is a range: the download starts and only those bytes come back.
    let reply = curl(&[
        "-H",
        "Range: bytes=2097150-2097160",
        &fixture.blob_url(&digest),
    ]);
    assert_eq!(reply.status, 206);
    assert!(reply.body == bytes[2_097_150..2_097_161]);
}

#[test]
fn head_gives_the_headers_and_starts_no_download() {
    let fixture = Fixture::new("head");
    let (digest, bytes) = fixture.seed((2 << 20) + 1, 3);
    let url = fixture.blob_url(&digest);
    let reply = curl(&["-I", &url]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    assert_eq!(
        reply.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(
        reply.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        reply.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert!(
        fixture.agent.status(&digest).is_none(),
        "HEAD started a download"
    );
    assert!(!fixture.agent.store().has_blob(&digest));

    let reply = curl(&["-I", "-H", "Range: bytes=-10", &url]);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.header("content-length"), Some("10"));

    let unknown = format!("sha256:{}", "ab".repeat(32));
    let reply = curl(&["-I", &fixture.url(&format!("/v2/a/blobs/{unknown}"))]);
    assert_eq!(reply.status, 404);
}

#[test]
fn bad_requests_get_oci_errors() {
    let fixture = Fixture::new("errors");
    let unknown = format!("sha256:{}", "ab".repeat(32));
    let check = |args: &[&str], status: u16, code: &str| {
        let reply = curl(args);
        assert_eq!(reply.status, status, "{args:?}");
        assert_eq!(reply.error_code(), code, "{args:?}");
        assert_eq!(
            reply.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    };
    let url = |path: &str| fixture.url(path);
    check(
        &[&url(&format!("/v2/a/blobs/{unknown}"))],
        404,
        "BLOB_UNKNOWN",
    );
    check(&[&url("/v2/a/blobs/sha256:abc")], 400, "DIGEST_INVALID");
    check(&[&url("/v2/a/blobs/md5:abc")], 400, "DIGEST_INVALID");
    check(&[&url("/v2/a/blobs/latest")], 400, "DIGEST_INVALID");
    // Traversal, sent as written (curl would otherwise normalise `..`).
    for path in [
        "/v2/a/../blobs/",
        "/v2/a/../../etc/blobs/",
        "/v2/%2e%2e/blobs/",
        "/v2/a/%2E%2E/b/blobs/",
        "/v2/a//b/blobs/",
        "/v2/A/blobs/",
        "/v2/a/.hidden/blobs/",
    ] {
        check(
            &["--path-as-is", &url(&format!("{path}{unknown}"))],
            400,
            "NAME_INVALID",
        );
    }
    // Without --origin/--build-index and --proxy: manifests, tags and pushes are
    // unavailable (tests/tests/pull.rs has an agent with all three).
    check(&[&url("/v2/a/manifests/latest")], 503, "UNAVAILABLE");
    check(&[&url("/v2/a/tags/list")], 503, "UNAVAILABLE");
    check(&[&url("/v2/a/things")], 404, "NAME_UNKNOWN");
    check(&[&url("/other")], 404, "NAME_UNKNOWN");
    check(
        &["-X", "POST", &url("/v2/a/blobs/uploads/")],
        503,
        "UNAVAILABLE",
    );
    check(
        &["-X", "PUT", &url("/v2/a/manifests/latest")],
        503,
        "UNAVAILABLE",
    );
    let reply = curl(&["-X", "DELETE", &url(&format!("/v2/a/blobs/{unknown}"))]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
}

#[test]
fn a_client_hanging_up_mid_body_leaves_the_others_served() {
    let fixture = Fixture::new("hangup");
    let (digest, bytes) = fixture.seed(48 << 20, 4);
    let url = fixture.blob_url(&digest);
    run(async {
        fixture.agent.fetch(&digest).await.unwrap();
        fixture.agent.wait_complete(&digest).await.unwrap();
    });
    let request = format!("GET /v2/library/test/blobs/{digest} HTTP/1.1\r\nHost: agent\r\n\r\n");
    // A client that reads a little of the body and hangs up, a few times over (more than
    // the 8 connection slots: a leaked slot would stall the curl below).
    for _ in 0..12 {
        let mut client = TcpStream::connect(fixture.server().addr).unwrap();
        client.set_read_timeout(Some(READ_WAIT_MAX)).unwrap();
        client.write_all(request.as_bytes()).unwrap();
        let mut first = vec![0u8; 256 << 10];
        client.read_exact(&mut first).unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200 OK\r\n"));
        drop(client);
    }
    // A client that stops reading and stays: the others go on around it.
    let mut stalled = TcpStream::connect(fixture.server().addr).unwrap();
    stalled.set_read_timeout(Some(READ_WAIT_MAX)).unwrap();
    stalled.write_all(request.as_bytes()).unwrap();
    let mut first = vec![0u8; 4096];
    stalled.read_exact(&mut first).unwrap();

    let reply = curl(&[&url]);
    assert_eq!(reply.status, 200);
    assert!(reply.body == bytes, "the blob differs");
    let reply = curl(&[&fixture.url("/v2/")]);
    assert_eq!(reply.status, 200);
    drop(stalled);
}
