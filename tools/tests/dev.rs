//! `shoal dev` as a real process, on ports the test picks free and a scratch data dir: it
//! gets ready, answers `/v2/` on the agent and the proxy, a blob pushed to the proxy comes
//! back through the agent (tracker and the origin's swarm) byte for byte, a manifest pushed
//! by tag is served by tag, SIGTERM stops it with exit code 0 leaving the stores, a restart
//! on the same data dir serves the same content, and a second `shoal dev` on the same ports
//! fails naming the port.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_perf::procs::{Proc, Scratch, random_file, sha256_file};

/// Bound on every wait for the process (start-up, requests, exit).
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Offsets of `--ports-from` that `shoal dev` binds (see `tools/src/dev.rs`), and the one
/// the test gives the agent.
const OFFSETS: [u16; 7] = [0, 100, 101, 200, 300, 401, AGENT_OFFSET];
const AGENT_OFFSET: u16 = 500;

/// Bases are picked below the kernel's ephemeral range (32768 and up by default): a port
/// from that range can be taken by any outgoing connection on the host between the stop and
/// the restart of `shoal dev`.
const BASE_MIN: u16 = 10_000;
const BASE_SPAN: u64 = 22_000;

/// A `--ports-from` base whose every port is free now.
fn free_base() -> u16 {
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..100u64 {
        let offset = random.hash_one((std::process::id(), attempt)) % BASE_SPAN;
        let base = BASE_MIN + u16::try_from(offset).unwrap();
        let all_free = OFFSETS
            .iter()
            .all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

/// `curl` with `args` on `url`, the body to `out`; the HTTP status.
fn curl(args: &[&str], url: &str, out: &Path) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(output.status.success(), "curl {url}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn start_dev(scratch: &Scratch, name: &str, base: u16, agent: &str) -> Proc {
    let data = scratch.path("data");
    let base = base.to_string();
    let args = [
        "dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--ports-from",
        &base,
        "--agent-listen",
        agent,
    ];
    Proc::start(
        name,
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &args,
        &[("SHOAL_LOG", "info")],
        scratch.path(&format!("{name}.stderr")),
    )
    .unwrap()
}

/// Starts `shoal dev` and waits for `shoal dev ready`; the time it took.
fn start_ready(scratch: &Scratch, name: &str, base: u16, agent: &str) -> (Proc, Duration) {
    let started = Instant::now();
    let mut dev = start_dev(scratch, name, base, agent);
    dev.line_starting("shoal dev ready", WAIT_MAX).unwrap();
    (dev, started.elapsed())
}

/// SIGTERM, then the exit status within the bound.
fn terminate(dev: &mut Proc) -> Option<bool> {
    let status = Command::new("kill")
        .args(["-TERM", &dev.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    dev.wait_exit(WAIT_MAX)
}

fn push_blob(proxy: &str, file: &Path, digest: &str, scratch: &Scratch) {
    let url = format!("http://{proxy}/v2/t/blobs/uploads/?digest={digest}");
    let args = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
    ];
    let data = format!("@{}", file.display());
    let mut all: Vec<&str> = args.to_vec();
    all.push(&data);
    assert_eq!(curl(&all, &url, &scratch.path("push.out")), "201");
}

#[test]
fn dev_runs_every_component_and_stops_cleanly() {
    let scratch = Scratch::new("dev-proc").unwrap();
    let base = free_base();
    let agent = format!("127.0.0.1:{}", base + AGENT_OFFSET);
    let proxy = format!("127.0.0.1:{}", base + 300);
    let (mut dev, ready_after) = start_ready(&scratch, "dev", base, &agent);
    eprintln!("shoal dev ready after {} ms", ready_after.as_millis());

    for addr in [&agent, &proxy] {
        let out = scratch.path("v2.out");
        assert_eq!(curl(&[], &format!("http://{addr}/v2/"), &out), "200");
        assert_eq!(std::fs::read(&out).unwrap(), b"{}");
    }

    // A layer and a config blob, pushed monolithically to the proxy.
    let layer = scratch.path("layer");
    random_file(&layer, (3 << 20) + 77, 5).unwrap();
    let layer_digest = sha256_file(&layer).unwrap();
    push_blob(&proxy, &layer, &layer_digest, &scratch);
    let config = scratch.path("config");
    std::fs::write(&config, b"{}").unwrap();
    let config_digest = sha256_file(&config).unwrap();
    push_blob(&proxy, &config, &config_digest, &scratch);

    // Through the agent: tracker, then the origin's swarm.
    let blob_url = format!("http://{agent}/v2/t/blobs/{layer_digest}");
    let out = scratch.path("layer.out");
    assert_eq!(curl(&[], &blob_url, &out), "200");
    assert_eq!(sha256_file(&out).unwrap(), layer_digest);

    // A manifest by tag, served back by the proxy.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        (3 << 20) + 77
    );
    let manifest_file = scratch.path("manifest.json");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let manifest_url = format!("http://{proxy}/v2/t/manifests/v1");
    let media = "Content-Type: application/vnd.oci.image.manifest.v1+json";
    let data = format!("@{}", manifest_file.display());
    let put = ["-X", "PUT", "-H", media, "--data-binary", &data];
    assert_eq!(curl(&put, &manifest_url, &scratch.path("put.out")), "201");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let out = scratch.path("manifest.out");
    assert_eq!(curl(&["-H", accept], &manifest_url, &out), "200");
    assert_eq!(std::fs::read(&out).unwrap(), manifest.as_bytes());

    // A second `shoal dev` on the same ports: the first port it binds is named.
    let mut second = start_dev(&scratch, "second", base, &agent);
    assert_eq!(second.wait_exit(WAIT_MAX), Some(false), "the second dev");
    let stderr = std::fs::read_to_string(second.stderr_path()).unwrap();
    assert!(
        stderr.contains(&format!("tracker: listening on 127.0.0.1:{base}")),
        "{stderr}"
    );

    let stop_started = Instant::now();
    assert_eq!(terminate(&mut dev), Some(true), "{}", dev.stderr_tail(30));
    eprintln!(
        "shoal dev stopped in {} ms",
        stop_started.elapsed().as_millis()
    );
    for store in ["origin", "build-index", "proxy", "agent"] {
        assert!(scratch.path("data").join(store).is_dir(), "{store}");
    }

    // Restarted on the same data dir: the same blob and tag.
    let (mut dev, ready_after) = start_ready(&scratch, "restarted", base, &agent);
    eprintln!(
        "restarted shoal dev ready after {} ms",
        ready_after.as_millis()
    );
    let out = scratch.path("again.out");
    assert_eq!(curl(&[], &blob_url, &out), "200");
    assert_eq!(sha256_file(&out).unwrap(), layer_digest);
    let proxy_blob = format!("http://{proxy}/v2/t/blobs/{layer_digest}");
    assert_eq!(curl(&[], &proxy_blob, &out), "200");
    assert_eq!(sha256_file(&out).unwrap(), layer_digest);
    assert_eq!(curl(&["-H", accept], &manifest_url, &out), "200");
    assert_eq!(std::fs::read(&out).unwrap(), manifest.as_bytes());
    assert_eq!(terminate(&mut dev), Some(true), "{}", dev.stderr_tail(30));
}
