//! `shoal agent` as a real process: a `shoal tracker`, a `shoal peer seed`, and an agent
//! whose pull API `curl` reads a blob from, first through the swarm, then from the cache.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shoal_perf::procs::{Scratch, Shoal, random_file, sha256_file};

fn curl_to_file(url: &str, out: &std::path::Path) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "120", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    assert!(output.status.success(), "curl {url}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn agent_serves_a_seeded_blob_over_http() {
    let mut shoal = Shoal::new(PathBuf::from(env!("CARGO_BIN_EXE_shoal")));
    shoal.wait_max = Duration::from_secs(120);
    let scratch = Scratch::new("agent-proc").unwrap();
    let file = scratch.path("blob");
    random_file(&file, (6 << 20) + 321, 9).unwrap();
    let (_tracker, tracker) = shoal.tracker(&scratch).unwrap();
    let (_seeder, digest) = shoal
        .seeder(
            "seeder",
            &scratch,
            &tracker,
            &file,
            &["--shards", "2", "--no-pin"],
        )
        .unwrap();
    let (mut agent, http) = shoal
        .agent("agent", &scratch, &tracker, &["--shards", "2", "--no-pin"])
        .unwrap();
    let expected = sha256_file(&file).unwrap();
    assert_eq!(expected, digest);

    let url = format!("http://{http}/v2/library/app/blobs/{digest}");
    for round in ["swarm", "cache"] {
        let out = scratch.path(&format!("{round}.out"));
        assert_eq!(curl_to_file(&url, &out), "200", "{round}");
        assert_eq!(sha256_file(&out).unwrap(), expected, "{round}");
    }
    let out = scratch.path("base.out");
    assert_eq!(curl_to_file(&format!("http://{http}/v2/"), &out), "200");
    assert_eq!(std::fs::read(&out).unwrap(), b"{}");
    assert!(
        agent.wait_exit(Duration::ZERO).is_none(),
        "the agent exited"
    );
}

#[test]
fn a_blob_pulled_while_the_swarm_downloads_it_streams_whole_and_starts_early() {
    let mut shoal = Shoal::new(PathBuf::from(env!("CARGO_BIN_EXE_shoal")));
    shoal.wait_max = Duration::from_secs(120);
    let scratch = Scratch::new("agent-stream").unwrap();
    let file = scratch.path("blob");
    random_file(&file, 64 << 20, 19).unwrap();
    let expected = sha256_file(&file).unwrap();
    let (_tracker, tracker) = shoal.tracker(&scratch).unwrap();
    // 16 MiB/s: the agent's download of the 64 MiB blob takes about four seconds.
    let (_seeder, digest) = shoal
        .seeder(
            "seeder",
            &scratch,
            &tracker,
            &file,
            &["--egress-limit", "16777216"],
        )
        .unwrap();
    let (_agent, http) = shoal.agent("agent", &scratch, &tracker, &[]).unwrap();
    let cached = shoal_perf::procs::cached_blob_path(&scratch.path("agent"), &digest);
    let out = scratch.path("stream.out");
    let url = format!("http://{http}/v2/library/app/blobs/{digest}");
    let mut curl = Command::new("curl")
        .args(["-s", "--max-time", "120", "-o"])
        .arg(&out)
        .arg(&url)
        .spawn()
        .unwrap();
    // The first bytes reach the client while the blob is not yet complete in the agent's
    // cache (the swarm fetches the piece the reader waits for first).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let received = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if received > 0 {
            assert!(
                !cached.exists(),
                "the blob was complete before the client got its first bytes"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no bytes arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(curl.wait().unwrap().success());
    assert_eq!(sha256_file(&out).unwrap(), expected);
    // The stream ends with the last piece; the download completes (whole-blob check, move
    // into the cache) just after.
    while !cached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not keep the blob"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
