//! Bad input against `shoal dev`, through the agent's address (pulls served there, pushes
//! forwarded to the proxy): each request gets its OCI error, and nothing is left behind on
//! disk (no blob on the origin, no upload session, no staged file, no tag).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_perf::procs::{DevCluster, Scratch, Shoal};

const WAIT: Duration = Duration::from_secs(120);

fn start_dev(scratch: &Scratch, salt: u32) -> DevCluster {
    let mut shoal = Shoal::new(PathBuf::from(env!("CARGO_BIN_EXE_shoal")));
    shoal.log = "warn".to_owned();
    shoal.wait_max = WAIT;
    shoal.dev(scratch, salt).unwrap()
}

/// `curl` with `args`; returns (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "--max-time",
            "60",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[track_caller]
fn check(result: (u16, String), status: u16, code: &str) {
    let (got, body) = result;
    assert_eq!(got, status, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("not OCI error JSON ({e}): {body}");
    });
    assert_eq!(json["errors"][0]["code"], code, "{body}");
}

/// Regular files below `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn bad_requests_get_oci_errors_and_leave_nothing_behind() {
    let scratch = Scratch::new("bad-input").unwrap();
    let dev = start_dev(&scratch, 1);
    let base = format!("http://{}", dev.agent);
    let zeros = format!("sha256:{}", "0".repeat(64));
    let body = scratch.path("body");
    std::fs::write(&body, vec![7u8; 100_000]).unwrap();
    let body_arg = format!("@{}", body.display());

    // Malformed names and digests; path traversal.
    check(
        curl(&[&format!("{base}/v2/UPPER/blobs/{zeros}")]),
        400,
        "NAME_INVALID",
    );
    check(
        curl(&[&format!("{base}/v2/ok/blobs/sha256:xyz")]),
        400,
        "DIGEST_INVALID",
    );
    check(
        curl(&[&format!("{base}/v2/ok/blobs/md5:{}", "0".repeat(32))]),
        400,
        "DIGEST_INVALID",
    );
    for path in [
        "/v2/../../etc/passwd/blobs/sha256:00",
        "/v2/a/../b/manifests/latest",
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2//a/manifests/latest",
    ] {
        let (status, body) = curl(&[&format!("{base}{path}")]);
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
        assert!(
            body.contains("NAME_INVALID") || body.contains("NAME_UNKNOWN"),
            "{path}: {body}"
        );
    }
    // Unknown blobs and manifests.
    check(
        curl(&[&format!("{base}/v2/ok/blobs/{zeros}")]),
        404,
        "BLOB_UNKNOWN",
    );
    check(
        curl(&[&format!("{base}/v2/ok/manifests/nope")]),
        404,
        "MANIFEST_UNKNOWN",
    );
    check(
        curl(&[&format!("{base}/v2/ok/manifests/{zeros}")]),
        404,
        "MANIFEST_UNKNOWN",
    );

    // A wrong digest on a monolithic upload.
    check(
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &body_arg,
            &format!("{base}/v2/ok/blobs/uploads/?digest={zeros}"),
        ]),
        400,
        "DIGEST_INVALID",
    );
    // A wrong digest at the end of a chunked upload.
    let started = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-X", "POST"])
        .arg(format!("{base}/v2/ok/blobs/uploads/"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&started.stdout).into_owned();
    let location = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    let separator = if location.contains('?') { '&' } else { '?' };
    check(
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &body_arg,
            &format!("{base}{location}{separator}digest={zeros}"),
        ]),
        400,
        "DIGEST_INVALID",
    );

    // A truncated upload: the client promises 100,000 bytes, sends 10, and hangs up.
    let mut stream = TcpStream::connect(&dev.agent).unwrap();
    write!(
        stream,
        "POST /v2/ok/blobs/uploads/?digest={zeros} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n0123456789"
    )
    .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 201"), "{answer}");

    // An oversize manifest (over the 4 MiB bound).
    let big = scratch.path("big-manifest");
    let padding = "x".repeat(5 << 20);
    std::fs::write(
        &big,
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"annotations\":{{\"pad\":\"{padding}\"}}}}"
        ),
    )
    .unwrap();
    check(
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("{base}/v2/ok/manifests/big"),
        ]),
        413,
        "SIZE_INVALID",
    );
    // A manifest naming a blob nobody pushed.
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{zeros}\",\"size\":2}},\
         \"layers\":[]}}"
    );
    check(
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data",
            &manifest,
            &format!("{base}/v2/ok/manifests/orphan"),
        ]),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );

    // Nothing was stored: no blob on the origin, no tag, no staged upload. (The chunked
    // upload's session was removed by its failed PUT; sessions may only linger for the
    // truncated one's idle timeout, so only staged complete blobs are checked there.)
    for dir in [
        "origin/blobs",
        "origin/incoming",
        "build-index/repos",
        "proxy/uploads/complete",
    ] {
        assert!(
            dev.data.join(dir).is_dir(),
            "{dir} is not where the stores keep it"
        );
    }
    let incoming = files_under(&dev.data.join("origin/incoming"));
    assert!(incoming.is_empty(), "{incoming:?}");
    let origin_blobs = files_under(&dev.data.join("origin/blobs"));
    assert!(origin_blobs.is_empty(), "{origin_blobs:?}");
    let tags = files_under(&dev.data.join("build-index/repos"));
    assert!(tags.is_empty(), "{tags:?}");
    let staged = files_under(&dev.data.join("proxy/uploads/complete"));
    assert!(staged.is_empty(), "{staged:?}");
    check(
        curl(&[&format!("{base}/v2/ok/manifests/orphan")]),
        404,
        "MANIFEST_UNKNOWN",
    );
    check(
        curl(&[&format!("{base}/v2/ok/manifests/big")]),
        404,
        "MANIFEST_UNKNOWN",
    );
}
