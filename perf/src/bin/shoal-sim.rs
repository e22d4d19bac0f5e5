//! `shoal-sim`: runs one simulator topology and prints its figures.
//!
//! ```text
//! shoal-sim configs/sim/small.toml                 # human-readable table
//! shoal-sim configs/sim/fleet-15k.toml --json      # ... then one JSON object, last line
//! shoal-sim configs/sim/kraken-2600.toml --hosts 200 --seed 7
//! ```
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
}

fn main() -> ExitCode {
    let args = Args::parse();
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
