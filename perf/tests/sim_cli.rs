//! The `shoal-sim` binary as a user runs it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    assert_eq!(name, "shoal-sim");
    PathBuf::from(env!("CARGO_BIN_EXE_shoal-sim"))
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

#[test]
fn simulator_runs_the_small_topology() {
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sim/small.toml");
    let output = run("shoal-sim", &[topology.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let last = text.lines().last().unwrap();
    let figures: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "hosts",
        "blob_bytes",
        "lower_bound_s",
        "p50_s",
        "p99_s",
        "max_s",
        "p50_efficiency",
        "p99_efficiency",
        "origin_bytes",
        "peer_bytes",
        "sim_wall_s",
    ] {
        assert!(figures.get(key).is_some(), "{key} missing from {last}");
    }
    assert_eq!(figures["unfinished"], 0, "{last}");
    assert_eq!(figures["hosts"], 50);
    // Same seed, same figures (wall time aside).
    let again = run("shoal-sim", &[topology.to_str().unwrap(), "--json"]);
    let again: serde_json::Value =
        serde_json::from_str(stdout(&again).lines().last().unwrap()).unwrap();
    assert_eq!(again["p99_s"], figures["p99_s"]);
    assert_eq!(again["events"], figures["events"]);
}
