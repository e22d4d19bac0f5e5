//! `limiter_bench`: a synthetic check of the engine's bandwidth limiter
//! (`shoal_engine::limit::RateLimiter`), with no sockets: tasks on one or more compio runtimes
//! ("shards", one thread each) take tokens from one shared limiter in a loop for a few
//! seconds, and the program prints the rate they achieved and its ratio to the configured
//! one. The real-socket check comes with the engine.
//!
//! ```text
//! cargo run --release -p shoal-perf --bin limiter_bench
//! cargo run --release -p shoal-perf --bin limiter_bench -- --mb-per-s 50 --seconds 4
//! ```
//!
//! Scenarios: every shard busy; one shard busy and the others idle (the case a per-shard
//! split of the rate would cap at `rate / n_shards`); requests bigger than the burst (a
//! whole piece at once, paid for by going into debt). A ratio slightly above 1 is expected:
//! the bucket starts full, so a run may release `rate * seconds + burst`; the printed bound
//! is that.
#![allow(clippy::print_stdout)] // a program that prints its figures

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_engine::limit::{RateLimiter, default_burst_bytes};

#[derive(Debug, Parser)]
#[command(
    name = "limiter_bench",
    about = "Push bytes through one shared RateLimiter from several runtimes; print the achieved rate"
)]
struct Args {
    /// Configured rate, in MB/s (10^6 bytes).
    #[arg(long, default_value_t = 50)]
    mb_per_s: u64,
    /// Length of each scenario, in seconds.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Runtimes (threads) sharing the limiter.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Tasks per busy runtime.
    #[arg(long, default_value_t = 2)]
    tasks: u32,
    /// Bytes per `acquire` in the ordinary scenarios, in KiB.
    #[arg(long, default_value_t = 64)]
    chunk_kib: u64,
}

struct Scenario {
    name: &'static str,
    busy_shards: u32,
    chunk_bytes: u64,
}

fn main() {
    let args = Args::parse();
    let bytes_per_s = args.mb_per_s.max(1) * 1_000_000;
    let burst_bytes = default_burst_bytes(bytes_per_s);
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));
    let shards = args.shards.max(1);
    let tasks = args.tasks.max(1);
    println!(
        "limiter: {} MB/s, burst {} bytes (default), {} runtimes, {} tasks per busy runtime, {:.1} s per scenario",
        args.mb_per_s,
        burst_bytes,
        shards,
        tasks,
        duration.as_secs_f64()
    );
    let scenarios = [
        Scenario {
            name: "every runtime busy",
            busy_shards: shards,
            chunk_bytes: args.chunk_kib.max(1) * 1024,
        },
        Scenario {
            name: "one runtime busy, the others idle",
            busy_shards: 1,
            chunk_bytes: args.chunk_kib.max(1) * 1024,
        },
        Scenario {
            name: "requests of 2x the burst (debt)",
            busy_shards: shards,
            chunk_bytes: 2 * burst_bytes,
        },
    ];
    println!(
        "{:<36} {:>10} {:>12} {:>8} {:>8}  per runtime (MB/s)",
        "scenario", "chunk", "MB/s", "ratio", "bound"
    );
    for scenario in &scenarios {
        let limiter = RateLimiter::new(bytes_per_s, burst_bytes);
        let per_shard = run(&limiter, scenario, shards, tasks, duration);
        let total: u64 = per_shard.iter().sum();
        let seconds = duration.as_secs_f64();
        let rate = total as f64 / seconds;
        let bound =
            (bytes_per_s as f64 * seconds + burst_bytes as f64) / (bytes_per_s as f64 * seconds);
        let shares: Vec<String> = per_shard
            .iter()
            .map(|&bytes| format!("{:.1}", bytes as f64 / seconds / 1e6))
            .collect();
        println!(
            "{:<36} {:>10} {:>12.2} {:>8.3} {:>8.3}  [{}]",
            scenario.name,
            scenario.chunk_bytes,
            rate / 1e6,
            rate / bytes_per_s as f64,
            bound,
            shares.join(", ")
        );
    }
}

/// Runs one scenario; returns the bytes each runtime got through before the deadline.
fn run(
    limiter: &RateLimiter,
    scenario: &Scenario,
    shards: u32,
    tasks: u32,
    duration: Duration,
) -> Vec<u64> {
    let start = Instant::now();
    let deadline = start + duration;
    let counters: Vec<Arc<AtomicU64>> = (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let threads: Vec<_> = (0..shards)
        .map(|shard| {
            let limiter = limiter.clone();
            let counter = Arc::clone(&counters[shard as usize]);
            let busy = shard < scenario.busy_shards;
            let chunk_bytes = scenario.chunk_bytes;
            std::thread::spawn(move || {
                let runtime = match compio::runtime::Runtime::new() {
                    Ok(runtime) => runtime,
                    Err(error) => panic!("compio runtime: {error}"),
                };
                runtime.block_on(async move {
                    if !busy {
                        return;
                    }
                    let workers: Vec<_> = (0..tasks)
                        .map(|_| {
                            let (limiter, counter) = (limiter.clone(), Arc::clone(&counter));
                            compio::runtime::spawn(async move {
                                // Bounded by the deadline: every turn takes at least
                                // chunk_bytes / rate of bucket time.
                                while Instant::now() < deadline {
                                    limiter.acquire(chunk_bytes).await;
                                    if Instant::now() <= deadline {
                                        counter.fetch_add(chunk_bytes, Ordering::Relaxed);
                                    }
                                }
                            })
                        })
                        .collect();
                    for worker in workers {
                        if worker.await.is_err() {
                            panic!("worker task panicked");
                        }
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        if thread.join().is_err() {
            panic!("runtime thread panicked");
        }
    }
    counters
        .iter()
        .map(|counter| counter.load(Ordering::Relaxed))
        .collect()
}
