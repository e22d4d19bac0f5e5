//! `shoal proxy` as a real process, read with `curl`: it starts, answers the version check,
//! and reports an unreachable origin as 503. (The push path against real origin and
//! build-index servers is in the end-to-end tests once those servers exist.)

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_perf::procs::{Proc, Scratch};

fn curl_status(args: &[&str], url: &str) -> String {
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
    assert!(output.status.success(), "curl {url}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn proxy_starts_and_answers() {
    let scratch = Scratch::new("proxy-proc").unwrap();
    // Nothing listens here once the listener is dropped.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let data = scratch.path("proxy");
    let data = data.to_string_lossy();
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &*data,
        "--origin",
        &*down,
        "--build-index",
        &*down,
    ];
    let mut proxy = Proc::start(
        "proxy",
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &args,
        &[],
        scratch.path("proxy.stderr"),
    )
    .unwrap();
    let line = proxy
        .line_starting("proxy listening on ", Duration::from_secs(60))
        .unwrap();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(curl_status(&[], &format!("http://{addr}/v2/")), "200");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let head = format!("http://{addr}/v2/a/blobs/{digest}");
    assert_eq!(curl_status(&["-I"], &head), "503");
    let start = format!("http://{addr}/v2/a/blobs/uploads/");
    assert_eq!(curl_status(&["-X", "POST"], &start), "202");
    assert!(PathBuf::from(&*data).join("uploads").is_dir());
    assert!(
        proxy.wait_exit(Duration::ZERO).is_none(),
        "the proxy exited"
    );
}
