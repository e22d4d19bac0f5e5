//! Real clients for the tests and benchmarks that drive Shoal from outside: a command that
//! must succeed, `skopeo copy` between an OCI layout and a registry, the blobs of an OCI
//! layout, and curl's status code. Each panics with the tool's stderr on failure (they are
//! for tests).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `program args…`; panics with its stderr unless it succeeded.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `skopeo copy --all --preserve-digests` from one reference to another, plain HTTP allowed
/// on both sides.
pub fn skopeo_copy(from: &str, to: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to,
        ],
    );
}

/// Every blob of the OCI layout at `layout`: (hex digest, bytes), sorted.
pub fn layout_blobs(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut blobs: Vec<(String, Vec<u8>)> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    blobs.sort();
    blobs
}

/// curl's HTTP status code for `url` with `args` (`"000"` when nothing answered).
pub fn curl_status(args: &[&str], url: &str) -> String {
    let output = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}
