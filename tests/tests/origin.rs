//! The origin's internal blob API over real sockets, with `curl` (and a raw TCP client for
//! a truncated upload): a real tracker, an origin engine behind `Origin`, and an agent that
//! pulls what was put through the swarm.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use common::{
    Served, bytes, curl, engine, engine_config, run, scratch, tracker, tracker_at, wait_until,
};
use shoal_engine::Engine;
use shoal_proto::Digest;
use shoal_servers::agent::Agent;
use shoal_servers::origin::{INCOMING_DIR, Origin, OriginConfig};

/// A tracker and an origin serving HTTP; torn down on drop.
struct Fixture {
    dir: PathBuf,
    tracker: std::net::SocketAddr,
    origin: Option<Engine>,
    server: Option<Served>,
}

fn start_origin(
    dir: &Path,
    tracker: std::net::SocketAddr,
    config: OriginConfig,
) -> (Engine, Served) {
    let engine = Engine::start(engine_config(dir, "origin", tracker).into_origin()).unwrap();
    let served = engine.clone();
    let server =
        Served::start(move || async move { Origin::start(served, config).await.unwrap().0 });
    (engine, server)
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture::with_config(name, OriginConfig::default())
    }

    fn with_config(name: &str, config: OriginConfig) -> Fixture {
        let dir = scratch("origin", name);
        let tracker = tracker();
        let (origin, server) = start_origin(&dir, tracker, config);
        Fixture {
            dir,
            tracker,
            origin: Some(origin),
            server: Some(server),
        }
    }

    fn origin(&self) -> &Engine {
        self.origin.as_ref().unwrap()
    }

    fn server(&self) -> &Served {
        self.server.as_ref().unwrap()
    }

    fn blob_url(&self, digest: &Digest) -> String {
        self.server().url(&format!("/internal/blobs/{digest}"))
    }

    /// Writes `bytes` to a file and PUTs it with curl.
    fn put(&self, digest: &Digest, bytes: &[u8]) -> common::Reply {
        let file = self.dir.join(format!("upload-{}", bytes.len()));
        std::fs::write(&file, bytes).unwrap();
        let data = format!("@{}", file.display());
        curl(&["-X", "PUT", "--data-binary", &data, &self.blob_url(digest)])
    }

    fn incoming_is_empty(&self) -> bool {
        let incoming = self.dir.join("origin").join(INCOMING_DIR);
        std::fs::read_dir(incoming).unwrap().next().is_none()
    }

    fn stop_origin(&mut self) {
        drop(self.server.take());
        if let Some(origin) = self.origin.take() {
            origin.shutdown();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_origin();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn put_head_get_sha256_and_sha512() {
    let fixture = Fixture::new("put");
    let blob = bytes((3 << 20) + 777, 1);
    let len = blob.len();
    for digest in [Digest::sha256_of(&blob), Digest::sha512_of(&blob)] {
        let url = fixture.blob_url(&digest);
        let reply = curl(&["-I", &url]);
        assert_eq!(reply.status, 404, "{digest}");

        let reply = fixture.put(&digest, &blob);
        assert_eq!(
            reply.status,
            201,
            "{digest}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert!(fixture.origin().store().has_blob(&digest));
        assert!(fixture.incoming_is_empty());

        let reply = curl(&["-I", &url]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some(len.to_string().as_str())
        );
        let reply = curl(&[&url]);
        assert_eq!(reply.status, 200);
        assert!(reply.body == blob, "{digest}: the blob differs");
        assert_eq!(
            reply.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );

        let reply = curl(&["-H", "Range: bytes=1048570-1048600", &url]);
        assert_eq!(reply.status, 206);
        assert!(reply.body == blob[1_048_570..1_048_601]);
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes 1048570-1048600/{len}").as_str())
        );
        let reply = curl(&["-H", "Range: bytes=-5", &url]);
        assert_eq!(reply.status, 206);
        assert!(reply.body == blob[len - 5..]);
        let reply = curl(&["-H", &format!("Range: bytes={len}-"), &url]);
        assert_eq!(reply.status, 416);
        assert_eq!(reply.error_code(), "RANGE_INVALID");

        // Idempotent: the same blob again is 201 and changes nothing.
        let reply = fixture.put(&digest, &blob);
        assert_eq!(reply.status, 201);
        assert!(fixture.incoming_is_empty());
        let reply = curl(&[&url]);
        assert!(reply.body == blob);
    }
    // An empty blob.
    let empty = Digest::sha256_of(b"");
    assert_eq!(fixture.put(&empty, b"").status, 201);
    let reply = curl(&[&fixture.blob_url(&empty)]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
}

#[test]
fn refused_puts_keep_nothing() {
    let fixture = Fixture::with_config(
        "refused",
        OriginConfig {
            blob_bytes_max: 1 << 20,
            ..OriginConfig::default()
        },
    );
    let blob = bytes(100_000, 2);
    let digest = Digest::sha256_of(&blob);
    let url = fixture.blob_url(&digest);

    // The wrong digest for the body.
    let mut other = blob.clone();
    other[5] ^= 1;
    let reply = fixture.put(&digest, &other);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "DIGEST_INVALID");
    assert!(!fixture.origin().store().has_blob(&digest));
    assert!(fixture.incoming_is_empty());
    assert_eq!(curl(&["-I", &url]).status, 404);

    // No Content-Length (chunked).
    let file = fixture.dir.join("chunked");
    std::fs::write(&file, &blob).unwrap();
    let data = format!("@{}", file.display());
    let reply = curl(&[
        "-X",
        "PUT",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(reply.status, 411);
    assert_eq!(reply.error_code(), "SIZE_INVALID");

    // Over the bound.
    let big = bytes((1 << 20) + 1, 3);
    let reply = fixture.put(&Digest::sha256_of(&big), &big);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "SIZE_INVALID");

    // A client that hangs up half way.
    let mut client = TcpStream::connect(fixture.server().addr).unwrap();
    let head = format!(
        "PUT /internal/blobs/{digest} HTTP/1.1\r\nHost: origin\r\nContent-Length: {}\r\n\r\n",
        blob.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(&blob[..blob.len() / 2]).unwrap();
    client.flush().unwrap();
    drop(client);
    // The PUT holds its digest until it has cleaned up: a full PUT after it goes through
    // once it is done, and nothing of the truncated one was kept before.
    wait_until("the truncated upload's file is removed", || {
        fixture.incoming_is_empty()
    });
    assert!(!fixture.origin().store().has_blob(&digest));
    assert_eq!(fixture.put(&digest, &blob).status, 201);
    assert!(curl(&[&url]).body == blob);
}

#[test]
fn bad_requests_get_oci_errors() {
    let fixture = Fixture::new("errors");
    let unknown = format!("sha256:{}", "ab".repeat(32));
    let url = |path: &str| fixture.server().url(path);
    let check = |args: &[&str], status: u16, code: &str| {
        let reply = curl(args);
        assert_eq!(reply.status, status, "{args:?}");
        assert_eq!(reply.error_code(), code, "{args:?}");
    };
    check(
        &[&url(&format!("/internal/blobs/{unknown}"))],
        404,
        "BLOB_UNKNOWN",
    );
    check(&[&url("/internal/blobs/sha256:abc")], 400, "DIGEST_INVALID");
    check(
        &["-X", "PUT", "-d", "x", &url("/internal/blobs/md5:abc")],
        400,
        "DIGEST_INVALID",
    );
    // `/internal/blobs/` is the listing (for the other origins of a cluster).
    let listing = curl(&[&url("/internal/blobs/")]);
    assert_eq!(listing.status, 200);
    assert!(listing.body == br#"{"blobs":[],"next":null}"#);
    check(&[&url("/internal/blobs/?n=0")], 400, "SIZE_INVALID");
    check(&[&url("/internal/blobs/?n=1001")], 400, "SIZE_INVALID");
    let reply = curl(&["-X", "PUT", "-d", "x", &url("/internal/blobs/")]);
    assert_eq!(reply.status, 405);
    check(&[&url("/v2/")], 404, "NAME_UNKNOWN");
    check(&[&url("/internal/tags/a/b")], 404, "NAME_UNKNOWN");
    let reply = curl(&["-X", "DELETE", &url(&format!("/internal/blobs/{unknown}"))]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD, PUT"));
}

#[test]
fn a_blob_put_to_the_origin_is_pulled_through_an_agent_also_after_a_restart() {
    let mut fixture = Fixture::new("swarm");
    let blob = bytes((5 << 20) + 4321, 4);
    let digest = Digest::sha256_of(&blob);
    assert_eq!(fixture.put(&digest, &blob).status, 201);
    let listing = curl(&[&fixture.server().url("/internal/blobs/?n=1")]);
    assert_eq!(listing.status, 200);
    let expected = format!(r#"{{"blobs":["{digest}"],"next":null}}"#);
    assert!(listing.body == expected.as_bytes());

    let (dir, tracker) = (fixture.dir.clone(), fixture.tracker);
    let pull = |name: &str| {
        let agent = engine(&dir, name, tracker);
        let served = agent.clone();
        let server = Served::start(move || async move { Agent::new(served) });
        let reply = curl(&[&server.url(&format!("/v2/library/app/blobs/{digest}"))]);
        assert_eq!(reply.status, 200, "{name}");
        assert!(reply.body == blob, "{name}: the blob differs");
        run(agent.wait_complete(&digest)).unwrap();
        drop(server);
        agent.shutdown();
    };
    pull("agent-1");

    // A restarted origin seeds what it stores again: a new agent pulls it from the swarm.
    fixture.stop_origin();
    let (origin, server) = start_origin(&fixture.dir, fixture.tracker, OriginConfig::default());
    fixture.origin = Some(origin);
    fixture.server = Some(server);
    assert_eq!(curl(&["-I", &fixture.blob_url(&digest)]).status, 200);
    pull("agent-2");
}

#[test]
fn a_put_succeeds_while_no_tracker_takes_the_metainfo_and_the_blob_is_seeded() {
    // The tracker's address answers nothing yet.
    let tracker = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = scratch("origin", "no-tracker");
    let (origin, server) = start_origin(&dir, tracker, OriginConfig::default());
    let mut fixture = Fixture {
        dir,
        tracker,
        origin: Some(origin),
        server: Some(server),
    };
    let blob = bytes((2 << 20) + 99, 6);
    let digest = Digest::sha256_of(&blob);
    // Stored and seeded although no tracker took its metainfo (the log says so).
    assert_eq!(fixture.put(&digest, &blob).status, 201);
    assert!(fixture.incoming_is_empty());
    assert_eq!(curl(&["-I", &fixture.blob_url(&digest)]).status, 200);
    let reply = curl(&[&fixture.blob_url(&digest)]);
    assert_eq!(reply.status, 200);
    assert!(reply.body == blob);

    // The tracker comes up knowing the origin: it fetches the metainfo from it, the origin's
    // announcer gets through, and an agent pulls the blob from the swarm.
    tracker_at(
        tracker,
        shoal_servers::tracker::TrackerServerConfig {
            origins: vec![fixture.server().addr],
            ..Default::default()
        },
    );
    let agent = engine(&fixture.dir, "agent", tracker);
    let served = agent.clone();
    let agent_server = Served::start(move || async move { Agent::new(served) });
    let reply = curl(&[&agent_server.url(&format!("/v2/library/app/blobs/{digest}"))]);
    assert_eq!(reply.status, 200);
    assert!(reply.body == blob, "the blob differs");
    run(agent.wait_complete(&digest)).unwrap();
    drop(agent_server);
    agent.shutdown();
    fixture.stop_origin();
}
