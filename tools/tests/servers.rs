//! `shoal origin` and `shoal build-index` as real processes: each says where it listens,
//! and `curl` puts and reads back through it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_perf::procs::{Proc, Scratch, Shoal, random_file, sha256_file};

const WAIT_MAX: Duration = Duration::from_secs(60);

fn shoal() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Starts `shoal ARGS…` and returns it with the address it printed after `prefix`.
fn start(scratch: &Scratch, name: &str, args: &[&str], prefix: &str) -> (Proc, String) {
    let stderr = scratch.path(&format!("{name}.stderr"));
    let mut proc = Proc::start(name, &shoal(), args, &[("SHOAL_LOG", "info")], stderr).unwrap();
    let line = proc.line_starting(prefix, WAIT_MAX).unwrap();
    (proc, line.rsplit(' ').next().unwrap().to_owned())
}

/// `curl -s ARGS… -o OUT -w %{http_code}`: the status.
fn curl(args: &[&str], out: &Path) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn origin_stores_and_serves_a_put_blob() {
    let scratch = Scratch::new("origin-proc").unwrap();
    let (_tracker, tracker) = Shoal::new(shoal()).tracker(&scratch).unwrap();
    let data = scratch.path("origin");
    let data = data.to_string_lossy();
    let args = [
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--tracker",
        &tracker,
        "--peer-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
    ];
    let (mut origin, http) = start(&scratch, "origin", &args, "origin listening on ");
    let file = scratch.path("blob");
    random_file(&file, (2 << 20) + 5, 3).unwrap();
    let digest = sha256_file(&file).unwrap();
    let url = format!("http://{http}/internal/blobs/{digest}");
    let upload = format!("@{}", file.display());
    let out = scratch.path("put.out");
    assert_eq!(
        curl(&["-X", "PUT", "--data-binary", &upload, &url], &out),
        "201"
    );
    let out = scratch.path("get.out");
    assert_eq!(curl(&[&url], &out), "200");
    assert_eq!(sha256_file(&out).unwrap(), sha256_file(&file).unwrap());
    assert!(
        origin.wait_exit(Duration::ZERO).is_none(),
        "the origin exited"
    );
}

#[test]
fn build_index_keeps_tags_across_a_restart() {
    let scratch = Scratch::new("build-index-proc").unwrap();
    let data = scratch.path("tags");
    let data = data.to_string_lossy();
    let args = [
        "build-index",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ];
    let digest = format!("sha256:{}", "ab".repeat(32));
    let body = format!(
        r#"{{"digest":"{digest}","media_type":"application/vnd.oci.image.manifest.v1+json"}}"#
    );
    let out = scratch.path("out");
    {
        let (mut index, http) = start(
            &scratch,
            "build-index-1",
            &args,
            "build-index listening on ",
        );
        let url = format!("http://{http}/internal/tags/library/app/latest");
        assert_eq!(curl(&["-X", "PUT", "-d", &body, &url], &out), "200");
        index.kill();
    }
    let (_index, http) = start(
        &scratch,
        "build-index-2",
        &args,
        "build-index listening on ",
    );
    let url = format!("http://{http}/internal/tags/library/app/latest");
    assert_eq!(curl(&[&url], &out), "200");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(record["digest"], digest);
}
