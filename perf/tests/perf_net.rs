//! The real-swarm harness's smoke test: `shoal-perf configs/perf/ci-small.toml` builds 8
//! emulated hosts under kernel caps, runs Shoal, the central registry and BitTorrent on
//! them, and must report every host of every system done with a byte-identical blob (the
//! harness compares each copy's SHA-256 and exits 1 otherwise). Figures are printed, never
//! asserted. Afterwards nothing of the run is left: no namespace, no scratch directory, no
//! process.
//!
//! Needs root and the Debian packages `.ci/run` installs (iproute2, curl, docker-registry,
//! aria2, opentracker); it builds the `shoal` binary if cargo has not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run (three systems, 8 hosts, 32 MiB) takes well under a minute; this bounds a
/// run that hangs.
const RUN_WAIT_MAX: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("perf/ has a parent")
        .to_path_buf()
}

/// `shoal` next to `shoal-perf`, built with the same profile if it is not there yet.
fn shoal_binary() -> PathBuf {
    let perf = PathBuf::from(env!("CARGO_BIN_EXE_shoal-perf"));
    let shoal = perf.with_file_name("shoal");
    if !shoal.is_file() {
        let release = perf
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "shoal", "--bin", "shoal"]);
        if release {
            build.arg("--release");
        }
        let status = build.current_dir(repo_root()).status().expect("cargo runs");
        assert!(status.success(), "building shoal: {status}");
    }
    shoal
}

/// Kills the harness if the test fails while it runs (it then removes its own namespaces
/// on SIGTERM; a later run removes any leftover).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn namespaces() -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("shoalperf-"))
        .map(str::to_owned)
        .collect()
}

/// What a crashed run leaves: a namespace of the harness's with a process inside. Killed
/// and removed on drop if the harness did not.
struct Leftover(std::process::Child);

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", "shoalperf-h7"])
            .stderr(Stdio::null())
            .status();
    }
}

fn make_leftover() -> Leftover {
    let status = Command::new("ip")
        .args(["netns", "add", "shoalperf-h7"])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    Leftover(
        Command::new("ip")
            .args(["netns", "exec", "shoalperf-h7", "sleep", "600"])
            .spawn()
            .expect("sleep in the leftover namespace"),
    )
}

#[test]
fn ci_small_every_host_gets_the_blob_from_every_system() {
    let shoal = shoal_binary();
    let mut leftover = make_leftover();
    let out = std::env::temp_dir().join(format!("shoal-perf-ci-{}", std::process::id()));
    let stdout_path = out.join("stdout");
    std::fs::create_dir_all(&out).expect("out dir");
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-perf"))
        .arg(repo_root().join("configs/perf/ci-small.toml"))
        .arg("--json")
        .arg("--shoal")
        .arg(&shoal)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("shoal-perf starts");
    let mut running = Running(child);
    let deadline = Instant::now() + RUN_WAIT_MAX;
    let status = loop {
        if let Some(status) = running.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shoal-perf still running after {RUN_WAIT_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    println!("{stdout}");
    assert!(status.success(), "shoal-perf: {status}\n{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(json["hosts"], 8);
    assert_eq!(json["blob_bytes"], 32 << 20);
    assert!(json["lower_bound_s"].as_f64().expect("T*") > 1.0);
    for system in ["shoal", "registry", "bittorrent"] {
        let figures = &json[system];
        assert_eq!(figures["hosts_done"], 8, "{system}: {figures}");
        assert_eq!(figures["failures"], serde_json::json!([]), "{system}");
        for key in ["p50_s", "p99_s", "max_s", "p99_efficiency"] {
            assert!(figures[key].as_f64().is_some(), "{system}: no {key}");
        }
        // Every host's bytes crossed the emulated links: the origin's host sent at least
        // one copy.
        assert!(figures["origin_egress_bytes"].as_u64().expect("egress") >= 32 << 20);
    }
    let svg = std::fs::read_to_string(out.join("ci-small-cdf.svg")).expect("plot");
    assert!(svg.starts_with("<svg") && svg.contains("T* ="));
    assert!(
        std::fs::read_to_string(out.join("ci-small.md"))
            .expect("table")
            .contains("| shoal | 8/8 |")
    );

    // The leftover was removed before the run (its process killed), and nothing is left
    // behind.
    assert!(
        leftover.0.try_wait().expect("wait").is_some(),
        "the leftover's process still runs"
    );
    assert_eq!(namespaces(), Vec::<String>::new());
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("shoal-perfnet-")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A scenario with a bad key is refused before anything is built, naming the key.
#[test]
fn a_bad_scenario_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("shoal-perf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "time_limit_s = 10\nbandwidth = 3\n[hosts]\ncount = 2\nupload_bytes_per_s = \"1MB/s\"\n\
         download_bytes_per_s = \"1MB/s\"\n[origin]\nupload_bytes_per_s = \"1MB/s\"\n\
         download_bytes_per_s = \"1MB/s\"\n[[blobs]]\nsize = \"1MiB\"\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-perf"))
        .arg(&path)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bandwidth") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
