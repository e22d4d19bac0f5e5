//! `shoal-sim`: runs one simulator topology and prints its figures.
//!
//! ```text
//! shoal-sim configs/sim/small.toml                 # human-readable table
//! shoal-sim configs/sim/fleet-15k.toml --json      # ... then one JSON object, last line
//! shoal-sim configs/sim/kraken-2600.toml --hosts 200 --seed 7
//! ```
//!
//! Huge pages: the run is bound by cache and TLB misses over hundreds of MB of swarm state,
//! and glibc's allocator backs its heap with transparent huge pages only when asked
//! (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; measured 20–25 % less CPU on fleet-15k). So
//! unless `GLIBC_TUNABLES` is already set (or `--no-huge-pages` is given), the binary re-runs
//! itself once with it set, passing its arguments, output and exit status through.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_perf::report::Report;
use shoal_perf::sim::Sim;
use shoal_perf::topology::Topology;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-sim",
    about = "Simulate a Shoal fleet pulling blobs, in virtual time"
)]
struct Args {
    /// Topology file (see configs/sim/).
    topology: PathBuf,
    /// Also print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Replace the topology's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Replace the number of agent hosts (for quick runs).
    #[arg(long)]
    hosts: Option<u32>,
    /// Replace the topology's time limit (virtual seconds).
    #[arg(long)]
    time_limit_s: Option<f64>,
    /// Print a progress line every this many virtual seconds.
    #[arg(long)]
    progress_s: Option<f64>,
    /// Do not re-run with glibc's huge-page tunable (see the crate docs).
    #[arg(long)]
    no_huge_pages: bool,
}

const TUNABLES: &str = "GLIBC_TUNABLES";
const HUGE_PAGES: &str = "glibc.malloc.hugetlb=1";

/// Re-runs this binary with `GLIBC_TUNABLES` asking for transparent huge pages, when the
/// kernel allows them (`madvise` or `always`) and nobody set the variable. `None` when it did
/// not (then the caller runs in this process).
fn rerun_with_huge_pages() -> Option<ExitCode> {
    if std::env::var_os(TUNABLES).is_some() {
        return None;
    }
    let policy = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    if policy.contains("[never]") {
        return None;
    }
    let program = std::env::current_exe().ok()?;
    let status = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .env(TUNABLES, HUGE_PAGES)
        .status()
        .ok()?;
    Some(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.no_huge_pages
        && let Some(code) = rerun_with_huge_pages()
    {
        return code;
    }
    let mut topology = match Topology::load(&args.topology) {
        Ok(topology) => topology,
        Err(error) => {
            println!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(seed) = args.seed {
        topology.seed = seed;
    }
    if let Some(hosts) = args.hosts {
        topology.hosts.count = hosts;
    }
    if let Some(limit) = args.time_limit_s {
        topology.time_limit_s = limit;
    }
    let started = std::time::Instant::now();
    let mut sim = match Sim::new(&topology) {
        Ok(sim) => sim,
        Err(error) => {
            println!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match args.progress_s {
        Some(step_s) if step_s > 0.0 => {
            let step = Duration::from_secs_f64(step_s);
            loop {
                let until = sim.now() + step;
                let finished = sim.run_until(until);
                println!(
                    "progress: t {:.2} s, {}/{} hosts done, {} events, {} live flows, {:.1} s wall",
                    sim.now().as_secs_f64(),
                    sim.n_counted_done(),
                    sim.n_counted(),
                    sim.counters().events,
                    sim.live_flows(),
                    started.elapsed().as_secs_f64()
                );
                if finished {
                    break;
                }
            }
        }
        _ => sim.run(),
    }
    let wall_s = started.elapsed().as_secs_f64();
    let name = args
        .topology
        .file_stem()
        .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned());
    let report = Report::new(&name, &topology, &sim, wall_s);
    print!("{}", report.to_table());
    if args.json {
        println!("{}", report.to_json_line());
    }
    ExitCode::SUCCESS
}
