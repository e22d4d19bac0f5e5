//! The build-index over a real S3-compatible server (moto's, installed by `.ci/run`), as
//! separate processes with an origin on the same bucket, a tracker, a proxy and agents,
//! skopeo as the client: a pushed tag lands in the bucket and follows the tag when it moves;
//! with the build-index's and the origin's disks wiped, a fresh agent pulls the image by tag
//! (tag read back from the bucket, blobs fetched from it) and `tags/list` shows the tag; with
//! the S3 server down, tag pushes succeed, survive a build-index restart, and reach the
//! bucket with their latest values once it is back. A repository pulled through an upstream
//! registry (Debian's `docker-registry`): a tag is resolved upstream, re-resolved once its TTL
//! passed, and served from the cache while the upstream is down. And a bad `[[backend]]` in
//! the build-index's file stops its start-up with an error naming it.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_perf::clients::{layout_blobs as blobs, skopeo_copy};
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{
    Proc, ProcGroup, Scratch, free_port, listening_addr, moto_server, wait_port_free,
};

const WAIT: Duration = Duration::from_secs(120);
const BUCKET: &str = "shoal-tags";

/// The object at `key` (under the `shoal` prefix), read with a signed S3 GET (curl's
/// SigV4, as any S3 client signs; moto refuses anonymous reads); `None` if absent.
fn s3_object(port: u16, key: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args([
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "testing:testing",
        ])
        .arg(format!("http://127.0.0.1:{port}/{BUCKET}/shoal/{key}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n')?;
    (status == "200").then(|| body.to_owned())
}

/// Waits until the tag object at `key` names `digest`.
fn wait_tag_object(port: u16, key: &str, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = s3_object(port, key);
        if seen.as_deref() == Some(digest) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{key} holds {seen:?}, not {digest}");
}

/// Waits until the bucket holds every blob (by hex digest).
fn wait_blobs(port: u16, hexes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&String> = hexes.iter().collect();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|hex| s3_object(port, &format!("blobs/sha256/{hex}")).is_none());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(missing.is_empty(), "not in the bucket: {missing:?}");
}

/// The test's `shoal` processes (their stderr printed if it fails).
fn shoal_procs() -> ProcGroup {
    ProcGroup::new(
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &[("SHOAL_LOG", "info")],
    )
}

fn listening(proc: &mut Proc, prefix: &str) -> String {
    listening_addr(proc, prefix, WAIT).unwrap()
}

/// A `[[backend]]` on moto's bucket, for the origin's and the build-index's files.
fn s3_backend(port: u16) -> String {
    format!(
        r#"
[[backend]]
namespace = "**"
kind = "s3"
bucket = "{BUCKET}"
endpoint = "http://127.0.0.1:{port}"
allow_http = true
prefix = "shoal"
access_key_id = "testing"
secret_access_key = "testing"
retries_max = 0
connect_timeout = "2s"
"#
    )
}

/// The manifest digest of `reference` as the agent at `agent` serves it.
fn manifest_digest(agent: &str, repo: &str, reference: &str) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "30", "-I"])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{agent}/v2/{repo}/manifests/{reference}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no digest for {repo}:{reference}: {text}"))
}

#[test]
fn build_index_writes_tags_through_to_s3_and_reads_them_back() {
    let scratch = Scratch::new("build-index-storage").unwrap();
    let s3_port = free_port().unwrap();
    let mut moto = moto_server(&scratch, s3_port, BUCKET, "moto-1.log").unwrap();
    let origin = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker = format!("127.0.0.1:{}", free_port().unwrap());
    let build_index = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker_file = scratch.path("tracker.toml");
    std::fs::write(
        &tracker_file,
        format!("[tracker]\nlisten = \"{tracker}\"\norigins = [\"{origin}\"]\nshards = 1\n"),
    )
    .unwrap();
    let origin_file = scratch.path("origin.toml");
    std::fs::write(
        &origin_file,
        format!("[origin]\nlisten = \"{origin}\"\n{}", s3_backend(s3_port)),
    )
    .unwrap();
    let index_dir = scratch.path("build-index");
    let index_file = scratch.path("build-index.toml");
    std::fs::write(
        &index_file,
        format!(
            "[build_index]\nlisten = \"{build_index}\"\ndata_dir = \"{}\"\n{}",
            index_dir.display(),
            s3_backend(s3_port)
        ),
    )
    .unwrap();
    let origin_dir = scratch.path("origin");
    let tracker_args = ["tracker", "--config", tracker_file.to_str().unwrap()];
    let origin_args = [
        "origin",
        "--config",
        origin_file.to_str().unwrap(),
        "--data-dir",
        origin_dir.to_str().unwrap(),
        "--tracker",
        &tracker,
        "--peer-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ];
    let index_args = ["build-index", "--config", index_file.to_str().unwrap()];
    let mut procs = shoal_procs();
    listening(
        procs.start("tracker", &tracker_args, &scratch),
        "tracker listening on ",
    );
    listening(
        procs.start("origin", &origin_args, &scratch),
        "origin listening on ",
    );
    listening(
        procs.start("build-index", &index_args, &scratch),
        "build-index listening on ",
    );
    let proxy_dir = scratch.path("proxy");
    let proxy_args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        proxy_dir.to_str().unwrap(),
        "--origin",
        &origin,
        "--build-index",
        &build_index,
    ];
    let proxy = listening(
        procs.start("proxy", &proxy_args, &scratch),
        "proxy listening on ",
    );
    let agent = |procs: &mut ProcGroup, name: &str| {
        let dir = scratch.path(name);
        let args = [
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
            "--tracker",
            &tracker,
            "--origin",
            &origin,
            "--build-index",
            &build_index,
            "--proxy",
            &proxy,
            "--shards",
            "1",
            "--no-pin",
        ];
        listening(procs.start(name, &args, &scratch), "agent listening on ")
    };
    let first_agent = agent(&mut procs, "agent-1");

    let source = scratch.path("source");
    let mut layout = Layout::new(&source, 11).unwrap();
    let one = layout.image("amd64", &[1 << 20, 30_000]).unwrap();
    let two = layout.image("arm64", &[700_000, 40_000, 9]).unwrap();
    layout.tag(&one, "one");
    layout.tag(&two, "two");
    layout.finish().unwrap();
    let original = blobs(&source);
    let src = |tag: &str| format!("oci:{}:{tag}", source.display());
    let at = |agent: &str, reference: &str| format!("docker://{agent}/s3/app:{reference}");

    // A pushed tag lands in the bucket; moved to a second image, the bucket follows.
    for tag in ["keep", "gone"] {
        skopeo_copy(&src("one"), &at(&first_agent, tag));
    }
    skopeo_copy(&src("one"), &at(&first_agent, "v1"));
    assert_eq!(manifest_digest(&first_agent, "s3/app", "v1"), one.digest);
    wait_tag_object(s3_port, "tags/s3/app/v1", &one.digest);
    skopeo_copy(&src("two"), &at(&first_agent, "v1"));
    assert_eq!(manifest_digest(&first_agent, "s3/app", "v1"), two.digest);
    wait_tag_object(s3_port, "tags/s3/app/v1", &two.digest);
    wait_tag_object(s3_port, "tags/s3/app/keep", &one.digest);
    wait_tag_object(s3_port, "tags/s3/app/gone", &one.digest);
    let pulled = scratch.path("pulled-1");
    skopeo_copy(
        &at(&first_agent, "v1"),
        &format!("oci:{}:v1", pulled.display()),
    );
    let image_two: Vec<String> = blobs(&pulled).into_iter().map(|(hex, _)| hex).collect();
    wait_blobs(s3_port, &image_two);

    // The build-index and the origin lose their disks and restart (the tracker too: its
    // metainfo is in memory). A fresh agent pulls the image by tag: the tag is read back
    // from the bucket, the blobs come from it through the origin.
    for name in ["build-index", "origin", "tracker"] {
        procs.kill(name);
    }
    std::fs::remove_dir_all(&index_dir).unwrap();
    std::fs::remove_dir_all(&origin_dir).unwrap();
    for addr in [&tracker, &origin, &build_index] {
        wait_port_free(addr.parse().unwrap(), WAIT).unwrap();
    }
    listening(
        procs.start("tracker", &tracker_args, &scratch),
        "tracker listening on ",
    );
    listening(
        procs.start("origin", &origin_args, &scratch),
        "origin listening on ",
    );
    listening(
        procs.start("build-index", &index_args, &scratch),
        "build-index listening on ",
    );
    // On the empty store: a compare-and-set that fails leaves the bucket's tag alone; a
    // DELETE of a tag only the bucket holds deletes it there.
    let tag_url = |tag: &str| format!("http://{build_index}/internal/tags/s3/app/{tag}");
    let body = format!(
        r#"{{"digest":"{}","media_type":"application/vnd.oci.image.manifest.v1+json","expected_version":12345}}"#,
        two.digest
    );
    let status = |args: &[&str], url: &str| shoal_perf::clients::curl_status(args, url);
    assert_eq!(
        status(&["-X", "PUT", "--data-binary", &body], &tag_url("keep")),
        "409"
    );
    assert_eq!(status(&["-X", "DELETE"], &tag_url("gone")), "202");
    assert_eq!(status(&[], &tag_url("gone")), "404");
    let second_agent = agent(&mut procs, "agent-2");
    let pulled = scratch.path("pulled-2");
    skopeo_copy(
        &at(&second_agent, "v1"),
        &format!("oci:{}:v1", pulled.display()),
    );
    let copied = blobs(&pulled);
    assert_eq!(copied.len(), image_two.len());
    for (hex, bytes) in &copied {
        assert!(
            original.iter().any(|(h, b)| h == hex && b == bytes),
            "blob {hex} differs"
        );
    }
    let log = procs.stderr_of("build-index");
    assert!(
        log.contains("tag read back from the storage backend"),
        "{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while s3_object(s3_port, "tags/s3/app/gone").is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(s3_object(s3_port, "tags/s3/app/gone"), None);
    assert_eq!(
        s3_object(s3_port, "tags/s3/app/keep").as_deref(),
        Some(one.digest.as_str())
    );
    let listed = shoal_perf::clients::run(
        "curl",
        &[
            "-s",
            "--max-time",
            "30",
            &format!("http://{second_agent}/v2/s3/app/tags/list"),
        ],
    );
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("\"v1\""), "{listed}");

    // The S3 server goes down. Tags pushed and moved meanwhile are answered; the
    // build-index restarts while S3 is still down; once S3 is back (empty: moto keeps
    // objects in memory) every tag reaches the bucket with its latest value.
    moto.kill();
    skopeo_copy(&src("one"), &at(&first_agent, "v2"));
    skopeo_copy(&src("two"), &at(&first_agent, "v2"));
    skopeo_copy(&src("one"), &at(&first_agent, "v1"));
    assert_eq!(manifest_digest(&first_agent, "s3/app", "v2"), two.digest);
    assert_eq!(manifest_digest(&first_agent, "s3/app", "v1"), one.digest);
    procs.kill("build-index");
    wait_port_free(build_index.parse().unwrap(), WAIT).unwrap();
    listening(
        procs.start("build-index", &index_args, &scratch),
        "build-index listening on ",
    );
    assert_eq!(manifest_digest(&first_agent, "s3/app", "v2"), two.digest);
    let log = procs.stderr_of("build-index");
    assert!(
        log.contains("serving from it, tag writes journaled"),
        "{log}"
    );
    assert!(log.contains("tag write-through resumed"), "{log}");
    wait_port_free(([127, 0, 0, 1], s3_port).into(), WAIT).unwrap();
    let _moto = moto_server(&scratch, s3_port, BUCKET, "moto-2.log").unwrap();
    wait_tag_object(s3_port, "tags/s3/app/v2", &two.digest);
    wait_tag_object(s3_port, "tags/s3/app/v1", &one.digest);
}

/// Runs `shoal build-index` with `config` (a fresh data directory); its exit code and
/// stderr once it exits (bounded).
fn refused_start(scratch: &Scratch, name: &str, config: &str) -> (Option<i32>, String) {
    let file = scratch.path(&format!("{name}.toml"));
    let data = scratch.path(&format!("{name}-data"));
    std::fs::write(
        &file,
        format!(
            "[build_index]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{config}",
            data.display()
        ),
    )
    .unwrap();
    let mut proc = Proc::start(
        name,
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &["build-index", "--config", file.to_str().unwrap()],
        &[],
        scratch.path(&format!("{name}.stderr")),
    )
    .unwrap();
    let exited = proc.wait_exit(WAIT);
    let stderr = std::fs::read_to_string(proc.stderr_path()).unwrap();
    assert!(
        !data.exists(),
        "{name}: the data directory was created: {stderr}"
    );
    (exited.map(|ok| if ok { 0 } else { 1 }), stderr)
}

#[test]
fn a_bad_backend_in_the_build_index_file_stops_its_start_up_naming_it() {
    let scratch = Scratch::new("build-index-bad-backend").unwrap();
    let (code, stderr) = refused_start(
        &scratch,
        "unknown-kind",
        "[[backend]]\nnamespace = \"**\"\nkind = \"ftp\"\nurl = \"ftp://x\"\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ftp"), "{stderr}");
    assert!(stderr.contains("unknown-kind.toml"), "{stderr}");

    let (code, stderr) = refused_start(
        &scratch,
        "no-bucket",
        "[[backend]]\nnamespace = \"**\"\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bucket"), "{stderr}");

    let port = free_port().unwrap();
    let (code, stderr) = refused_start(
        &scratch,
        "unreachable",
        &s3_backend(port).replace("**", "team/**"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("storage backend"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains(BUCKET), "{stderr}");
    assert!(stderr.contains("team/**"), "{stderr}");
}

/// `docker-registry serve` on `port` over `storage` (Debian's CNCF distribution; `.ci/run`
/// installs it).
fn docker_registry(scratch: &Scratch, port: u16, storage: &Path) -> Proc {
    let config = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    let config_path = scratch.path("registry.yml");
    std::fs::write(&config_path, config).unwrap();
    let mut proc = Proc::start(
        "docker-registry",
        Path::new("docker-registry"),
        &["serve", config_path.to_str().unwrap()],
        &[],
        scratch.path("registry.stderr"),
    )
    .expect("docker-registry (apt install docker-registry)");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline && proc.wait_exit(Duration::ZERO).is_none(),
            "docker-registry never listened: {}",
            proc.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

/// `GET url`: the status and the body.
fn get(url: &str) -> (String, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

#[test]
fn a_pull_through_tag_is_resolved_upstream_and_again_after_its_ttl() {
    let scratch = Scratch::new("build-index-pull-through").unwrap();
    let port = free_port().unwrap();
    let mut upstream = docker_registry(&scratch, port, &scratch.path("registry"));
    let source = scratch.path("source");
    let mut layout = Layout::new(&source, 5).unwrap();
    let one = layout.image("amd64", &[20_000]).unwrap();
    let two = layout.image("arm64", &[30_000]).unwrap();
    layout.tag(&one, "one");
    layout.tag(&two, "two");
    layout.finish().unwrap();
    let src = |tag: &str| format!("oci:{}:{tag}", source.display());
    let upstream_ref = format!("docker://127.0.0.1:{port}/library/app:latest");
    skopeo_copy(&src("one"), &upstream_ref);

    let build_index = format!("127.0.0.1:{}", free_port().unwrap());
    let file = scratch.path("build-index.toml");
    std::fs::write(
        &file,
        format!(
            r#"[build_index]
listen = "{build_index}"
data_dir = "{}"
upstream_tag_ttl = "1s"

[[backend]]
namespace = "hub/**"
kind = "registry"
url = "http://127.0.0.1:{port}"
strip_prefix = "hub/"
"#,
            scratch.path("index").display()
        ),
    )
    .unwrap();
    let mut procs = shoal_procs();
    listening(
        procs.start(
            "build-index",
            &["build-index", "--config", file.to_str().unwrap()],
            &scratch,
        ),
        "build-index listening on ",
    );
    let tag_url = |tag: &str| format!("http://{build_index}/internal/tags/hub/library/app/{tag}");
    let digest_of = |body: &str| -> String {
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        json["digest"].as_str().unwrap().to_owned()
    };

    // A miss is resolved upstream; the manifest is then a member of the repository.
    let (status, body) = get(&tag_url("latest"));
    assert_eq!(status, "200", "{body}");
    assert_eq!(digest_of(&body), one.digest);
    let (status, body) = get(&format!(
        "http://{build_index}/internal/manifests/hub/library/app/{}",
        one.digest
    ));
    assert_eq!(status, "200", "{body}");
    assert!(
        body.contains("application/vnd.oci.image.manifest.v1+json"),
        "{body}"
    );
    let (status, _) = get(&tag_url("nothing"));
    assert_eq!(status, "404");

    // The tag moves upstream: seen here once the TTL has passed.
    skopeo_copy(&src("two"), &upstream_ref);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&tag_url("latest"));
        assert_eq!(status, "200", "{body}");
        if digest_of(&body) == two.digest {
            break;
        }
        assert!(Instant::now() < deadline, "still {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A tag pushed here is local (listed with the upstream's).
    let pushed = format!(
        r#"{{"digest":"{}","media_type":"application/vnd.oci.image.manifest.v1+json"}}"#,
        one.digest
    );
    assert_eq!(
        shoal_perf::clients::curl_status(
            &["-X", "PUT", "--data-binary", &pushed],
            &tag_url("mine")
        ),
        "200"
    );
    let (status, body) = get(&format!(
        "http://{build_index}/internal/tags/hub/library/app/"
    ));
    assert_eq!(status, "200", "{body}");
    assert!(
        body.contains("\"latest\"") && body.contains("\"mine\""),
        "{body}"
    );

    // The upstream goes away: past the TTL the cached tag is still served.
    upstream.kill();
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        let (status, body) = get(&tag_url("latest"));
        assert_eq!(status, "200", "{body}");
        assert_eq!(digest_of(&body), two.digest);
    }
    let (status, body) = get(&tag_url("mine"));
    assert_eq!(
        (status.as_str(), digest_of(&body)),
        ("200", one.digest.clone())
    );
    let log = procs.stderr_of("build-index");
    assert!(log.contains("upstream tag moved"), "{log}");
    assert!(log.contains("the cached one is served"), "{log}");
}
