//! `shoal dev` as a new user meets it: time from start to ready, then to the end of a first
//! `skopeo copy` of an image into it (through the agent's address), then back out.
//!
//! ```text
//! cargo build --release -p shoal -p shoal-perf
//! target/release/dev_bench [--mib 100] [--layers 4]
//! ```
//!
//! The image is an OCI layout of `--layers` random tar layers totalling `--mib` MiB, on
//! /dev/shm; `shoal dev` keeps its stores there too.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{Proc, Scratch};

#[derive(Parser, Debug)]
#[command(about = "Time to ready and to a first skopeo copy with shoal dev")]
struct Cli {
    /// The `shoal` binary (default: next to this program).
    #[arg(long)]
    shoal: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    mib: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// First port of `shoal dev`'s range (`--ports-from`); the agent listens at +450.
    #[arg(long, default_value_t = 41_000)]
    ports_from: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = match cli.shoal.clone() {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("shoal"),
            Err(error) => {
                eprintln!("dev_bench: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(&cli, &binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dev_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn skopeo_copy(from: &str, to: &str) -> Result<(), String> {
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to,
        ])
        .output()
        .map_err(|e| format!("skopeo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "skopeo copy {from} {to}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn run(cli: &Cli, binary: &Path) -> Result<(), String> {
    let scratch = Scratch::new("dev-bench").map_err(|e| e.to_string())?;
    let image = scratch.path("image");
    let mut layout = Layout::new(&image, 48).map_err(|e| e.to_string())?;
    let layer_len = (cli.mib << 20) / cli.layers.max(1);
    let sizes = vec![layer_len; cli.layers.max(1)];
    let manifest = layout.image("amd64", &sizes).map_err(|e| e.to_string())?;
    layout.tag(&manifest, "latest");
    layout.finish().map_err(|e| e.to_string())?;

    let agent = format!("127.0.0.1:{}", cli.ports_from + 450);
    let data = scratch.path("data");
    let started = Instant::now();
    let mut dev = Proc::start(
        "dev",
        binary,
        &[
            "dev",
            "--data-dir",
            &data.to_string_lossy(),
            "--ports-from",
            &cli.ports_from.to_string(),
            "--agent-listen",
            &agent,
        ],
        &[("SHOAL_LOG", "warn")],
        scratch.path("dev.stderr"),
    )
    .map_err(|e| e.to_string())?;
    dev.line_starting("shoal dev ready", Duration::from_secs(60))?;
    let ready = started.elapsed().as_secs_f64();
    let remote = format!("docker://{agent}/bench/app:latest");
    skopeo_copy(&format!("oci:{}:latest", image.display()), &remote)?;
    let pushed = started.elapsed().as_secs_f64();
    let out = scratch.path("out");
    let pull_started = Instant::now();
    skopeo_copy(&remote, &format!("oci:{}:latest", out.display()))?;
    let pulled = pull_started.elapsed().as_secs_f64();
    println!(
        "shoal dev, a {} MiB image of {} layers, skopeo through the agent's address",
        cli.mib, cli.layers
    );
    println!("| start → ready | start → end of the first push | pull back (through the swarm) |");
    println!("|---|---|---|");
    println!("| {ready:.3} s | {pushed:.2} s | {pulled:.2} s |");
    Ok(())
}
