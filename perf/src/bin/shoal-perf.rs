//! `shoal-perf SCENARIO.toml`: the real-swarm benchmark. Builds the scenario's emulated hosts
//! (network namespaces, a bridge, `tc tbf` caps; see `shoal_perf::netns`), runs Shoal and the
//! baselines (a central distribution registry, a BitTorrent swarm) one after the other on the
//! same caps, checks every host's copy byte for byte, and prints per-host completion
//! percentiles, efficiency against T*, origin egress, CPU and memory as a Markdown table
//! (also written to `--out`, with an SVG plot of the completion-time CDFs); `--json` prints
//! one JSON object as the last line.
//!
//! Needs root (namespaces, `tc`), `ip`, `tc`, `curl`, and for the baselines `docker-registry`,
//! `aria2c` and `opentracker`. Everything it creates is removed at the end, on failure and
//! on SIGINT/SIGTERM; what a crashed run left is removed before it starts. Exits 1 if any
//! host of any system did not get every blob byte-identical within the time limit.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use shoal_perf::harness::{Bench, Blob, SystemResult};
use shoal_perf::netns::{self, Link, Net, RunLock};
use shoal_perf::netreport::{self, Figures};
use shoal_perf::procs::{self, Scratch};
use shoal_perf::scenario::{Scenario, System};

#[derive(Parser, Debug)]
#[command(
    name = "shoal-perf",
    about = "Shoal against a central registry and BitTorrent on emulated hosts under kernel bandwidth caps"
)]
struct Cli {
    /// The scenario (`configs/perf/*.toml`).
    scenario: PathBuf,
    /// Print one JSON object with every figure as the last line.
    #[arg(long)]
    json: bool,
    /// Run only these systems (comma-separated: shoal, registry, bittorrent), in this order.
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// The `shoal` binary (default: next to this program).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Where the Markdown table, the JSON object and the CDF plot (SVG) are written, and the
    /// processes' logs of a system that failed (`<scenario>-logs/<system>/`).
    #[arg(long, default_value = "shoal-perf-out")]
    out: PathBuf,
}

/// The scratch directory to remove if a signal ends the run.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Attempts at removing the scratch directory after a signal.
const REMOVE_ATTEMPTS: u32 = 10;
/// Held by whoever tears down (the main thread at the end, or the signal thread).
static TEARDOWN: Mutex<()> = Mutex::new(());

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("shoal-perf: {message}");
            ExitCode::from(2)
        }
    }
}

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn check_tools(systems: &[System], shoal: &Path) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root (network namespaces and tc)".to_owned());
    }
    let mut needed = vec![("ip", "iproute2"), ("tc", "iproute2"), ("curl", "curl")];
    if systems.contains(&System::Registry) {
        needed.push(("docker-registry", "docker-registry"));
    }
    if systems.contains(&System::Bittorrent) {
        needed.push(("aria2c", "aria2"));
        needed.push(("opentracker", "opentracker"));
    }
    for (program, package) in needed {
        if !on_path(program) {
            return Err(format!(
                "{program} is not installed (Debian package {package})"
            ));
        }
    }
    if systems.contains(&System::Shoal) && !shoal.is_file() {
        return Err(format!(
            "no shoal binary at {} (cargo build --release -p shoal, or --shoal PATH)",
            shoal.display()
        ));
    }
    Ok(())
}

/// SIGINT and SIGTERM, blocked in every thread (call before any thread starts: threads
/// inherit the mask; child processes do not, std resets it) and taken by [`watch_signals`].
fn block_signals() -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| format!("blocking SIGINT and SIGTERM: {e}"))?;
    Ok(set)
}

/// On SIGINT or SIGTERM: kill what runs in the namespaces, remove them and the scratch
/// directory, exit 130.
fn watch_signals(set: SigSet) {
    std::thread::spawn(move || {
        let Ok(signal) = set.wait() else {
            return;
        };
        let _guard = TEARDOWN.lock();
        eprintln!("shoal-perf: {signal}; removing the emulated network");
        let _ = netns::cleanup_leftovers();
        if let Ok(scratch) = SCRATCH.lock()
            && let Some(dir) = scratch.as_ref()
        {
            // Killed processes may still be exiting (closing files): retry a few times.
            for _ in 0..REMOVE_ATTEMPTS {
                if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        std::process::exit(130);
    });
}

/// Removes scratch directories of earlier runs (the lock is held: none is in use).
fn remove_old_scratch() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("shoal-perfnet-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn run(cli: &Cli) -> Result<bool, String> {
    let mut scenario = Scenario::load(&cli.scenario)?;
    if let Some(names) = &cli.systems {
        scenario.systems = names
            .iter()
            .map(|n| System::parse(n))
            .collect::<Result<_, _>>()?;
    }
    let shoal = match &cli.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("own path: {e}"))?
            .with_file_name("shoal"),
    };
    check_tools(&scenario.systems, &shoal)?;
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;

    let signals = block_signals()?;
    let _lock = RunLock::acquire()?;
    watch_signals(signals);
    remove_old_scratch();
    let scratch = Scratch::new("perfnet").map_err(|e| format!("scratch directory: {e}"))?;
    if let Ok(mut slot) = SCRATCH.lock() {
        *slot = Some(scratch.root().to_path_buf());
    }

    let blobs_dir = scratch.path("blobs");
    std::fs::create_dir_all(&blobs_dir).map_err(|e| format!("{}: {e}", blobs_dir.display()))?;
    let mut blobs = Vec::new();
    for (k, &bytes) in scenario.blob_bytes.iter().enumerate() {
        let name = format!("blob-{k}");
        let path = blobs_dir.join(&name);
        procs::random_file(&path, bytes, scenario.seed.wrapping_mul(1000) + k as u64)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        blobs.push(Blob::describe(path, name)?);
    }

    eprintln!(
        "shoal-perf: {}: building {} hosts under {}",
        scenario.name,
        scenario.hosts,
        scratch.root().display()
    );
    let net = Net::build(
        scenario.hosts,
        Link {
            upload_bytes_per_s: scenario.host_upload_bytes_per_s,
            download_bytes_per_s: scenario.host_download_bytes_per_s,
        },
        Link {
            upload_bytes_per_s: scenario.origin_upload_bytes_per_s,
            download_bytes_per_s: scenario.origin_download_bytes_per_s,
        },
    )?;
    let bench = Bench {
        scenario: &scenario,
        net: &net,
        scratch: scratch.root(),
        shoal,
        blobs,
        logs: cli.out.join(format!("{}-logs", scenario.name)),
    };
    let mut figures = Vec::new();
    for &system in &scenario.systems {
        eprintln!("shoal-perf: {}: running {}", scenario.name, system.name());
        let result = bench.run(system).unwrap_or_else(|e| SystemResult {
            system,
            host_s: vec![None; scenario.hosts],
            failures: vec![e],
            origin_egress_bytes: 0,
            host_cpu_s: Vec::new(),
            host_peak_rss_bytes: Vec::new(),
            server_cpu_s: 0.0,
            server_peak_rss_bytes: 0,
            cores_busy: 0.0,
            cores_busy_before: 0.0,
            pull_wall_s: 0.0,
            timeline: Vec::new(),
            engine_counters: None,
        });
        figures.push(Figures::new(&scenario, result));
    }
    {
        let _guard = TEARDOWN.lock();
        drop(net);
        drop(scratch);
    }

    let table = netreport::to_markdown(&scenario, &figures);
    let json = netreport::to_json_line(&scenario, &figures);
    let svg = netreport::cdf_svg(&scenario, &figures);
    for (suffix, text) in [(".md", &table), (".json", &json), ("-cdf.svg", &svg)] {
        let path = cli.out.join(format!("{}{suffix}", scenario.name));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{table}");
    println!(
        "plot: {}",
        cli.out.join(format!("{}-cdf.svg", scenario.name)).display()
    );
    if cli.json {
        println!("{json}");
    }
    Ok(figures.iter().all(|f| f.result.failures.is_empty()))
}
