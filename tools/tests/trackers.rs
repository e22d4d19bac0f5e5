//! The tracker group as real processes on 127.0.0.1: `shoal tracker` processes configured
//! with the origins, a `shoal origin` that stores blobs (`curl` puts them), and `shoal peer
//! get` downloading through whichever tracker is alive. Metainfo a tracker never received
//! comes from the origin; a tracker killed with SIGKILL and restarted serves again; with one
//! of two trackers killed, downloads complete through the other.
//!
//! Every process is killed when its guard drops, every wait is bounded, and every scratch
//! directory is removed.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_engine::tracker::{TrackerClient, TrackerClientConfig};
use shoal_perf::procs::{Proc, Scratch, Shoal, cached_blob_path, random_file, sha256_file};
use shoal_proto::Digest;
use shoal_proto::metainfo::Metainfo;

const WAIT_MAX: Duration = Duration::from_secs(120);

fn shoal_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

fn shoal() -> Shoal {
    let mut shoal = Shoal::new(shoal_binary());
    shoal.wait_max = WAIT_MAX;
    shoal
}

/// Starts `shoal ARGS…` and returns it with the address it printed after `prefix`.
fn start(scratch: &Scratch, name: &str, args: &[&str], prefix: &str) -> (Proc, String) {
    let stderr = scratch.path(&format!("{name}.stderr"));
    let mut proc = Proc::start(
        name,
        &shoal_binary(),
        args,
        &[("SHOAL_LOG", "info")],
        stderr,
    )
    .unwrap();
    let line = proc.line_starting(prefix, WAIT_MAX).unwrap();
    (proc, line.rsplit(' ').next().unwrap().to_owned())
}

/// `shoal tracker` with two shards, fetching metainfo from `origins`, on `listen`.
fn start_tracker(scratch: &Scratch, name: &str, listen: &str, origins: &[&str]) -> (Proc, String) {
    let config = scratch.path(&format!("{name}.toml"));
    let origins: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[tracker]\nshards = 2\norigins = [{}]\n",
            origins.join(", ")
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let args = ["tracker", "--config", &config, "--listen", listen];
    start(scratch, name, &args, "tracker listening on ")
}

/// `shoal origin` announcing to `trackers`, its blob API on an ephemeral port.
fn start_origin(scratch: &Scratch, trackers: &[&str]) -> (Proc, String) {
    let data = scratch.path("origin").to_string_lossy().into_owned();
    let mut args = vec![
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--peer-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ];
    for tracker in trackers {
        args.extend(["--tracker", tracker]);
    }
    start(scratch, "origin", &args, "origin listening on ")
}

/// `curl` PUTs `file` to the origin as blob `digest`.
fn put_blob(origin: &str, digest: &str, file: &Path) {
    let output = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{origin}/internal/blobs/{digest}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "201", "{output:?}");
}

/// `curl` GETs `path` from `addr`: the status and the body.
fn curl_get(addr: &str, path: &str) -> (String, Vec<u8>) {
    let out = tempfile_path(path);
    let output = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (String::from_utf8_lossy(&output.stdout).into_owned(), body)
}

fn tempfile_path(path: &str) -> PathBuf {
    let name: String = path.chars().filter(char::is_ascii_alphanumeric).collect();
    std::env::temp_dir().join(format!("shoal-trackers-{}-{name}", std::process::id()))
}

/// Waits (bounded) until nothing listens on `addr`'s port: a killed process's io_uring
/// sockets are closed by the kernel a little after it dies, and until then a new listener
/// with `SO_REUSEPORT` would share the port with them (connections they take are reset).
fn wait_no_listener(addr: &str) {
    let port = addr.parse::<SocketAddr>().unwrap().port();
    let listening = || {
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|local| local.rsplit(':').next())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&"0A")
                })
        })
    };
    for _ in 0..500 {
        if !listening() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{addr} is still listened on 5 s after its process was killed");
}

/// The metainfo of `digest` from `trackers` (failover in ring order), as a peer asks.
fn get_metainfo(trackers: &[&str], digest: &str) -> Option<Metainfo> {
    let trackers: Vec<SocketAddr> = trackers.iter().map(|t| t.parse().unwrap()).collect();
    let digest: Digest = digest.parse().unwrap();
    let client = TrackerClient::new(TrackerClientConfig {
        trackers,
        timeout: Duration::from_secs(10),
        ..TrackerClientConfig::default()
    })
    .unwrap();
    compio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { client.get_metainfo(&digest).await.unwrap() })
}

/// A blob file of `len` random bytes and its digest (`sha256:<hex>`).
fn blob(scratch: &Scratch, len: u64, seed: u64) -> (PathBuf, String) {
    let file = scratch.path(&format!("blob-{seed}"));
    random_file(&file, len, seed).unwrap();
    let digest = sha256_file(&file).unwrap();
    (file, digest)
}

#[test]
fn origin_serves_metainfo_and_a_tracker_it_never_announced_to_fetches_it() {
    let scratch = Scratch::new("trackers-fetch").unwrap();
    let (_announced, announced) = start_tracker(&scratch, "announced", "127.0.0.1:0", &[]);
    let (_origin, origin) = start_origin(&scratch, &[&announced]);
    let (file, digest) = blob(&scratch, 5 << 20, 1);
    put_blob(&origin, &digest, &file);

    // The origin's endpoint: the stored sidecar, 404 for what it lacks, 400 for garbage.
    let (status, body) = curl_get(&origin, &format!("/internal/metainfo/{digest}"));
    assert_eq!(status, "200");
    let metainfo = Metainfo::decode(&body).unwrap();
    assert_eq!(metainfo.digest().to_string(), digest);
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (status, body) = curl_get(&origin, &format!("/internal/metainfo/{unknown}"));
    assert_eq!(status, "404");
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"));
    let (status, _) = curl_get(&origin, "/internal/metainfo/sha256:nothex");
    assert_eq!(status, "400");

    // A second tracker, which the origin never talked to, serves it from the origin.
    let (mut fresh, fresh_addr) = start_tracker(&scratch, "fresh", "127.0.0.1:0", &[&origin]);
    assert_eq!(
        get_metainfo(&[&fresh_addr], &digest),
        Some(metainfo.clone())
    );
    assert_eq!(get_metainfo(&[&fresh_addr], &unknown), None);

    // Killed with SIGKILL and restarted on the same port, empty: it fetches again.
    fresh.kill();
    wait_no_listener(&fresh_addr);
    let (_restarted, restarted) = start_tracker(&scratch, "restarted", &fresh_addr, &[&origin]);
    assert_eq!(restarted, fresh_addr);
    assert_eq!(get_metainfo(&[&restarted], &digest), Some(metainfo));
}

#[test]
fn with_one_of_two_trackers_killed_a_download_completes() {
    let scratch = Scratch::new("trackers-failover").unwrap();
    // Both trackers are bound first (the origin needs their addresses, they need the
    // origin's): the first tracker starts without origins, then is restarted with them.
    let (mut a, a_addr) = start_tracker(&scratch, "a0", "127.0.0.1:0", &[]);
    let (mut b, b_addr) = start_tracker(&scratch, "b0", "127.0.0.1:0", &[]);
    let (_origin, origin) = start_origin(&scratch, &[&a_addr, &b_addr]);
    a.kill();
    b.kill();
    wait_no_listener(&a_addr);
    wait_no_listener(&b_addr);
    let (a, _) = start_tracker(&scratch, "a", &a_addr, &[&origin]);
    let (b, _) = start_tracker(&scratch, "b", &b_addr, &[&origin]);
    let (file, digest) = blob(&scratch, 48 << 20, 2);
    put_blob(&origin, &digest, &file);

    // Kill the tracker the ring asks first for this blob: every peer must fail over.
    let trackers: Vec<SocketAddr> = [&a_addr, &b_addr]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let client = TrackerClient::new(TrackerClientConfig {
        trackers,
        ..TrackerClientConfig::default()
    })
    .unwrap();
    let first = client.trackers_for(&digest.parse().unwrap())[0].to_string();
    let (mut first_proc, mut _survivor) = if first == a_addr { (a, b) } else { (b, a) };
    first_proc.kill();

    let out = scratch.path("getter.out");
    let out = out.to_string_lossy().into_owned();
    let second = if first == a_addr { &b_addr } else { &a_addr };
    let mut getter = shoal()
        .getter(
            "getter",
            &scratch,
            &first,
            &digest,
            &["--tracker", second, "--out", &out],
        )
        .unwrap();
    let done = shoal().completion(&mut getter).unwrap();
    assert_eq!(done["digest"], digest.as_str());
    let expected = sha256_file(&file).unwrap();
    assert_eq!(sha256_file(Path::new(&out)).unwrap(), expected);
    assert_eq!(
        sha256_file(&cached_blob_path(&scratch.path("getter"), &digest)).unwrap(),
        expected
    );
}
