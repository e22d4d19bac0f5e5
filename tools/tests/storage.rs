//! An origin over a real S3-compatible server (moto's, installed by `.ci/run`) as separate
//! processes with a tracker, a build-index, a proxy and agents, skopeo as the client: a
//! pushed image lands in the bucket; with the origin's disk wiped and the origin and the
//! tracker restarted, a fresh agent still pulls it whole (from the bucket); with the S3
//! server down, a read of a blob only the bucket held is 503 (not 404), a push succeeds and
//! its blobs reach the bucket once the server is back (the write-back queue).

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
const BUCKET: &str = "shoal-origin";

/// Whether the bucket holds the blob (from the bucket's listing: moto answers anonymous
/// listings, not anonymous reads of the objects).
fn in_bucket(port: u16, hex: &str) -> bool {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .arg(format!(
            "http://127.0.0.1:{port}/{BUCKET}?list-type=2&prefix=shoal/blobs/sha256/{hex}"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .contains(&format!("<Key>shoal/blobs/sha256/{hex}</Key>"))
}

/// curl's status code for `url` (with `args`), and what it printed.
fn http_status(args: &[&str], url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(args)
        .args(["--max-time", "60", "-w", "\n%{http_code}"])
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn wait_in_bucket(port: u16, hexes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&String> = hexes.iter().collect();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|hex| !in_bucket(port, hex));
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

#[test]
fn an_origin_over_s3_survives_a_wiped_disk_and_an_s3_outage() {
    let scratch = Scratch::new("storage").unwrap();
    let s3_port = free_port().unwrap();
    let mut moto = moto_server(&scratch, s3_port, BUCKET, "moto-1.log").unwrap();
    let origin = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker_file = scratch.path("tracker.toml");
    std::fs::write(
        &tracker_file,
        format!("[tracker]\nlisten = \"{tracker}\"\norigins = [\"{origin}\"]\nshards = 1\n"),
    )
    .unwrap();
    let origin_file = scratch.path("origin.toml");
    std::fs::write(
        &origin_file,
        format!(
            r#"
[origin]
listen = "{origin}"

[[backend]]
namespace = "**"
kind = "s3"
bucket = "{BUCKET}"
endpoint = "http://127.0.0.1:{s3_port}"
allow_http = true
prefix = "shoal"
access_key_id = "testing"
secret_access_key = "testing"
retries_max = 0
connect_timeout = "2s"
"#
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
    let mut procs = shoal_procs();
    let start_tracker_and_origin = |procs: &mut ProcGroup| {
        listening(
            procs.start("tracker", &tracker_args, &scratch),
            "tracker listening on ",
        );
        listening(
            procs.start("origin", &origin_args, &scratch),
            "origin listening on ",
        );
    };
    start_tracker_and_origin(&mut procs);
    let index_dir = scratch.path("build-index");
    let index_args = [
        "build-index",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        index_dir.to_str().unwrap(),
    ];
    let build_index = listening(
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
    let mut layout = Layout::new(&source, 9).unwrap();
    let one = layout.image("amd64", &[2 << 20, 50_000]).unwrap();
    let two = layout.image("arm64", &[1 << 20, 70_000, 12]).unwrap();
    layout.tag(&one, "one");
    layout.tag(&two, "two");
    layout.finish().unwrap();
    let original = blobs(&source);
    let src = |tag: &str| format!("oci:{}:{tag}", source.display());

    // A push lands in the bucket (every blob of the image: layers, config, manifest).
    skopeo_copy(&src("one"), &format!("docker://{first_agent}/s3/app:one"));
    let pulled = scratch.path("pulled-1");
    skopeo_copy(
        &format!("docker://{first_agent}/s3/app:one"),
        &format!("oci:{}:one", pulled.display()),
    );
    let image_one: Vec<String> = blobs(&pulled).into_iter().map(|(hex, _)| hex).collect();
    wait_in_bucket(s3_port, &image_one);

    // The origin loses its disk; it and the tracker (metainfo in memory) restart. A fresh
    // agent pulls the image whole: every byte now comes from the bucket through the origin.
    let wipe_origin = |procs: &mut ProcGroup| {
        procs.kill("origin");
        procs.kill("tracker");
        std::fs::remove_dir_all(&origin_dir).unwrap();
        for addr in [&tracker, &origin] {
            wait_port_free(addr.parse().unwrap(), WAIT).unwrap();
        }
        start_tracker_and_origin(procs);
    };
    wipe_origin(&mut procs);
    let second_agent = agent(&mut procs, "agent-2");
    let pulled = scratch.path("pulled-2");
    skopeo_copy(
        &format!("docker://{second_agent}/s3/app:one"),
        &format!("oci:{}:one", pulled.display()),
    );
    let copied = blobs(&pulled);
    assert_eq!(copied.len(), image_one.len());
    for (hex, bytes) in &copied {
        assert!(
            original.iter().any(|(h, b)| h == hex && b == bytes),
            "blob {hex} differs"
        );
    }

    // The S3 server goes down; a push still succeeds; the blobs reach the bucket once it is
    // back (moto restarts empty, with the bucket made again).
    // With the origin's disk wiped again (an origin starts only if it can list its bucket),
    // image one is only in the bucket, which then becomes unreachable: a fresh agent's GET of
    // one of its blobs is 503 (retry later), not 404 (no such blob); a HEAD, which asks
    // whether to upload, is 404.
    wipe_origin(&mut procs);
    moto.kill();
    let third_agent = agent(&mut procs, "agent-3");
    let blob_url = format!(
        "http://{third_agent}/v2/s3/app/blobs/sha256:{}",
        image_one[0]
    );
    let (status, body) = http_status(&["-s"], &blob_url);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert_eq!(http_status(&["-s", "-I"], &blob_url).0, 404);
    // The push below checks each blob with a HEAD first and uploads it.
    skopeo_copy(&src("two"), &format!("docker://{first_agent}/s3/app:two"));
    let pulled = scratch.path("pulled-3");
    skopeo_copy(
        &format!("docker://{first_agent}/s3/app:two"),
        &format!("oci:{}:two", pulled.display()),
    );
    let image_two: Vec<String> = blobs(&pulled).into_iter().map(|(hex, _)| hex).collect();
    assert!(!in_bucket(s3_port, &image_two[0]));
    wait_port_free(([127, 0, 0, 1], s3_port).into(), WAIT).unwrap();
    let _moto = moto_server(&scratch, s3_port, BUCKET, "moto-2.log").unwrap();
    wait_in_bucket(s3_port, &image_two);
}
