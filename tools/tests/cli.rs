//! The `shoal` binary as a user runs it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    assert_eq!(name, "shoal");
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name)).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn info_hash_line(text: &str) -> String {
    text.lines()
        .find(|line| line.starts_with("info_hash"))
        .unwrap()
        .to_owned()
}

#[test]
fn metainfo_round_trips_through_a_file() {
    let dir = scratch_dir("roundtrip");
    let blob = dir.join("blob");
    // 3 MiB + 5 bytes: three whole pieces and a short one.
    let bytes: Vec<u8> = (0..(3 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&blob, &bytes).unwrap();
    let encoded = dir.join("blob.metainfo");
    let built = run(
        "shoal",
        &[
            "metainfo",
            blob.to_str().unwrap(),
            "--out",
            encoded.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let text = stdout(&built);
    assert!(text.contains("pieces            4"), "{text}");
    assert!(text.contains("blob_bytes        3145733"), "{text}");
    let inspected = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    assert_eq!(info_hash_line(&text), info_hash_line(&stdout(&inspected)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_digest_and_damaged_metainfo_are_clear_errors() {
    let dir = scratch_dir("errors");
    let blob = dir.join("blob");
    std::fs::write(&blob, b"hello").unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let mismatch = run(
        "shoal",
        &["metainfo", blob.to_str().unwrap(), "--digest", &wrong],
    );
    assert!(!mismatch.status.success());
    assert!(
        stderr(&mismatch).contains("digest"),
        "{}",
        stderr(&mismatch)
    );

    let bad_digest = run(
        "shoal",
        &["metainfo", blob.to_str().unwrap(), "--digest", "md5:abc"],
    );
    assert!(!bad_digest.status.success());
    assert!(
        stderr(&bad_digest).contains("not supported"),
        "{}",
        stderr(&bad_digest)
    );

    let encoded = dir.join("m");
    let built = run(
        "shoal",
        &[
            "metainfo",
            blob.to_str().unwrap(),
            "--out",
            encoded.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let full = std::fs::read(&encoded).unwrap();
    std::fs::write(&encoded, &full[..full.len() - 1]).unwrap();
    let truncated = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(!truncated.status.success());
    assert!(
        stderr(&truncated).contains("truncated"),
        "{}",
        stderr(&truncated)
    );
    std::fs::write(&encoded, b"not a metainfo at all").unwrap();
    let garbage = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(!garbage.status.success());
    assert!(!stderr(&garbage).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tracker_prints_its_address_and_answers() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    use shoal_proto::tracker_wire::{self, Request, Response};

    // The shipped config file, with the command line overriding its address.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tracker.toml");
    let mut child = Command::new(binary("shoal"))
        .args(["tracker", "--config", config, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line.strip_prefix("tracker listening on ").unwrap();

    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut frame = Vec::new();
    let digest = shoal_proto::Digest::sha256_of(b"nothing stored");
    tracker_wire::encode_request(&Request::GetMetainfo { digest }, &mut frame);
    stream.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    let response = loop {
        if let Some((response, _)) = tracker_wire::parse_response(&reply).unwrap() {
            break response;
        }
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "tracker closed early");
        reply.push(byte[0]);
    };
    assert_eq!(response, Response::NotFound);

    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn tracker_refuses_a_bad_listen_address() {
    let output = run("shoal", &["tracker", "--listen", "not-an-address"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--listen"), "{}", stderr(&output));
}

#[test]
fn tracker_config_files_with_unknown_keys_or_bad_values_are_refused_by_name() {
    let dir = scratch_dir("tracker-config");
    for (text, named) in [
        (
            "[tracker]\nannounce_intervall = \"5s\"\n",
            "announce_intervall",
        ),
        ("[tracker]\npeer_ttl = \"soon\"\n", "peer_ttl"),
        ("[tracker]\npeer_ttl = \"1s\"\n", "peer_ttl"),
    ] {
        let file = dir.join("tracker.toml");
        std::fs::write(&file, text).unwrap();
        let output = run("shoal", &["tracker", "--config", file.to_str().unwrap()]);
        assert!(!output.status.success(), "{text:?} was accepted");
        let message = stderr(&output);
        assert!(message.contains(named), "{text:?}: {message}");
        assert!(message.contains("tracker.toml"), "{text:?}: {message}");
    }
    let missing = run(
        "shoal",
        &["tracker", "--config", "/nonexistent/tracker.toml"],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/tracker.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}
