//! The engine end to end on loopback, as real `shoal` processes (a `shoal tracker`, `shoal peer
//! seed`, `shoal peer get`): throughput against a plain TCP copy, CPU per GiB, a downloader's
//! peak memory, one seeder to many downloaders, and the bandwidth limiter on real sockets.
//!
//! ```text
//! cargo build --release -p shoal -p shoal-perf
//! target/release/engine_bench pair   [--mib 1024] [--rounds 3]
//! target/release/engine_bench rss    [--mib 4096]
//! target/release/engine_bench fanout [--mib 256] [--getters 8]
//! target/release/engine_bench limit  [--mib 256] [--rate-mib 40]
//! target/release/engine_bench stream [--mib 64] [--rate-mib 16] [--rounds 5]
//! ```
//!
//! - `pair`: one seeder → one getter, each one shard, the seeder on CPU 0 and the getter on
//!   CPU 1 (`taskset`), the getter fetching into its store without reading the blob back
//!   (`--no-stream`). Its baselines, in the same run and on the same CPUs: a plain blocking
//!   `std::net` copy of the same file (sender reads 1 MiB and writes it, receiver reads and
//!   drops it), and the same with the receiver computing SHA-256 of what it reads. Modes run
//!   interleaved; the table shows medians. The getter's time is from its process start to its
//!   completion line (tracker lookups and the swarm's start included); CPU is user + system
//!   of each process over the transfer, io_uring workers included.
//! - `rss`: a getter of a large blob (default 4 GiB), peak resident memory (`VmHWM`) with and
//!   without streaming the blob back.
//! - `fanout`: one seeder, N getters started together (all seeding what they have): wall time
//!   until the last completes, the slowest and the median getter.
//! - `stream`: a getter streaming the blob back in order from a slow seeder: time to its
//!   first bytes and to completion (pieces are fetched rarest first, except the one the
//!   reader waits for).
//! - `limit`: one transfer with the seeder's egress limited, one with the getter's ingress
//!   limited: achieved rate against the configured one.
//!
//! Data lives under /dev/shm (tmpfs), so the disk is not what is measured. Before measuring,
//! each scenario writes and deletes a few GiB there: on the virtual machines used here, the
//! first touch of guest memory the host has not backed yet costs several times a plain
//! copy (a getter writing 1 GiB into fresh tmpfs pages took 4 s instead of 1.8 s), which is
//! a property of the VM, not of the engine; a long-running host reuses its page cache.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use sha2::Digest as _;
use shoal_perf::procs::{Proc, Scratch, Shoal, random_file};

#[derive(Parser, Debug)]
#[command(about = "Engine benchmarks with real shoal processes on loopback")]
struct Cli {
    /// The `shoal` binary (default: next to this program).
    #[arg(long)]
    shoal: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    Pair {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    Rss {
        #[arg(long, default_value_t = 4096)]
        mib: u64,
    },
    Fanout {
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 8)]
        getters: usize,
    },
    Limit {
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 40)]
        rate_mib: u64,
    },
    Stream {
        #[arg(long, default_value_t = 64)]
        mib: u64,
        #[arg(long, default_value_t = 16)]
        rate_mib: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = match cli.shoal {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("shoal"),
            Err(error) => {
                eprintln!("engine_bench: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    if !binary.exists() {
        eprintln!(
            "engine_bench: {} not found (cargo build --release -p shoal)",
            binary.display()
        );
        return ExitCode::FAILURE;
    }
    let mut shoal = Shoal::new(binary);
    shoal.log = "warn".to_owned();
    let result = match cli.scenario {
        Scenario::Pair { mib, rounds } => pair(&shoal, mib, rounds),
        Scenario::Rss { mib } => rss(&shoal, mib),
        Scenario::Fanout { mib, getters } => fanout(&shoal, mib, getters),
        Scenario::Limit { mib, rate_mib } => limit(&shoal, mib, rate_mib),
        Scenario::Stream {
            mib,
            rate_mib,
            rounds,
        } => stream(&shoal, mib, rate_mib, rounds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engine_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes and deletes `bytes` of tmpfs data next to the scratch directory, so that the
/// memory the measured processes get is memory the VM has touched before (see the docs).
fn warm_memory(scratch: &Scratch, bytes: u64) -> Result<(), String> {
    let path = scratch.path("warm-up");
    let mut file = std::fs::File::create(&path).map_err(io)?;
    let block = vec![1u8; MIB as usize];
    for _ in 0..bytes / MIB {
        file.write_all(&block).map_err(io)?;
    }
    drop(file);
    std::fs::remove_file(&path).map_err(io)
}

fn io(error: std::io::Error) -> String {
    error.to_string()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One measured transfer.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    sender_cpu: f64,
    receiver_cpu: f64,
}

fn pair(shoal: &Shoal, mib: u64, rounds: usize) -> Result<(), String> {
    let scratch = Scratch::new("engine-bench-pair").map_err(io)?;
    let blob = scratch.path("blob");
    let len = mib * MIB;
    warm_memory(&scratch, 4 * len)?;
    random_file(&blob, len, 42).map_err(io)?;
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let modes = [
        "std",
        "std+sha",
        "shoal splice",
        "shoal copy",
        "shoal splice, no blob re-hash",
        "shoal splice, 2 shards each, both CPUs",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        runs[0].push(std_copy(&blob, false)?);
        runs[1].push(std_copy(&blob, true)?);
        runs[2].push(shoal_pair(
            shoal,
            &scratch,
            &tracker,
            &blob,
            "splice",
            &[],
            round,
        )?);
        runs[3].push(shoal_pair(
            shoal,
            &scratch,
            &tracker,
            &blob,
            "copy",
            &[],
            round,
        )?);
        let no_rehash = ["--no-verify-digest"];
        runs[4].push(shoal_pair(
            shoal, &scratch, &tracker, &blob, "splice", &no_rehash, round,
        )?);
        runs[5].push(shoal_pair(
            shoal,
            &scratch,
            &tracker,
            &blob,
            "splice",
            &["--shards", "2"],
            round,
        )?);
    }
    let gib = len as f64 / GIB;
    let mut baseline = 0.0;
    println!(
        "{mib} MiB, one sender (CPU 0) → one receiver (CPU 1) unless said, medians of {rounds} rounds"
    );
    println!("| mode | seconds | GB/s | vs std+sha | sender CPU-s/GiB | receiver CPU-s/GiB |");
    println!("|---|---|---|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        let seconds = median(&mut runs[i].iter().map(|r| r.seconds).collect::<Vec<_>>());
        let sender = median(&mut runs[i].iter().map(|r| r.sender_cpu).collect::<Vec<_>>());
        let receiver = median(&mut runs[i].iter().map(|r| r.receiver_cpu).collect::<Vec<_>>());
        let rate = len as f64 / seconds;
        if *mode == "std+sha" {
            baseline = rate;
        }
        let ratio = if baseline > 0.0 {
            format!("{:.2}", rate / baseline)
        } else {
            "-".to_owned()
        };
        println!(
            "| {mode} | {seconds:.3} | {:.2} | {ratio} | {:.3} | {:.3} |",
            rate / 1e9,
            sender / gib,
            receiver / gib
        );
    }
    Ok(())
}

/// CPU seconds of the calling thread (user + system).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let field = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / ticks
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(error) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("engine_bench: pinning to CPU {cpu}: {error}");
    }
}

/// The plain baseline: blocking copy file → socket → (hash) → nothing, sender thread on CPU
/// 0, receiver thread on CPU 1.
fn std_copy(blob: &Path, hash: bool) -> Result<Run, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let len = std::fs::metadata(blob).map_err(io)?.len();
    let started = Instant::now();
    let receiver = std::thread::spawn(move || -> Result<f64, String> {
        pin_to(1);
        let cpu = thread_cpu_seconds();
        let (mut stream, _) = listener.accept().map_err(io)?;
        let mut buf = vec![0u8; MIB as usize];
        let mut hasher = sha2::Sha256::new();
        let mut received = 0u64;
        while received < len {
            let n = stream.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Err("sender closed early".into());
            }
            if hash {
                hasher.update(&buf[..n]);
            }
            received += n as u64;
        }
        std::hint::black_box(hasher.finalize());
        Ok(thread_cpu_seconds() - cpu)
    });
    let blob = blob.to_path_buf();
    let sender = std::thread::spawn(move || -> Result<f64, String> {
        pin_to(0);
        let cpu = thread_cpu_seconds();
        let file = std::fs::File::open(&blob).map_err(io)?;
        let mut stream = TcpStream::connect(addr).map_err(io)?;
        let mut buf = vec![0u8; MIB as usize];
        let mut sent = 0u64;
        while sent < len {
            let n = (len - sent).min(MIB) as usize;
            file.read_exact_at(&mut buf[..n], sent).map_err(io)?;
            stream.write_all(&buf[..n]).map_err(io)?;
            sent += n as u64;
        }
        Ok(thread_cpu_seconds() - cpu)
    });
    let sender_cpu = sender.join().map_err(|_| "sender panicked")??;
    let receiver_cpu = receiver.join().map_err(|_| "receiver panicked")??;
    Ok(Run {
        seconds: started.elapsed().as_secs_f64(),
        sender_cpu,
        receiver_cpu,
    })
}

/// One seeder → one getter through the engine.
fn shoal_pair(
    shoal: &Shoal,
    scratch: &Scratch,
    tracker: &str,
    blob: &Path,
    upload_path: &str,
    getter_extra: &[&str],
    round: usize,
) -> Result<Run, String> {
    // One shard per process, each process on its own CPU; or, when the getter's extra
    // arguments set the shard count, both processes on both CPUs with that many shards.
    let spread = getter_extra.contains(&"--shards");
    let (shards, seeder_cpus, getter_cpus) = if spread {
        (&[][..], "0,1", "0,1")
    } else {
        (&["--shards", "1", "--no-pin"][..], "0", "1")
    };
    let one_shard: Vec<&str> = shards.to_vec();
    let mut seeder_args = vec!["--upload-path", upload_path];
    seeder_args.extend_from_slice(&one_shard);
    if spread {
        seeder_args.extend_from_slice(getter_extra);
    }
    let seeder_name = format!("seeder-{upload_path}-{}-{round}", getter_extra.len());
    let (seeder, digest) =
        shoal
            .on_cpus(seeder_cpus)
            .seeder(&seeder_name, scratch, tracker, blob, &seeder_args)?;
    let seeder_cpu = seeder.cpu_seconds().unwrap_or(0.0);
    let mut getter_args = vec!["--no-stream", "--seed-after"];
    getter_args.extend_from_slice(&one_shard);
    getter_args.extend_from_slice(getter_extra);
    let getter_name = format!("getter-{upload_path}-{}-{round}", getter_extra.len());
    let started = Instant::now();
    let mut getter =
        shoal
            .on_cpus(getter_cpus)
            .getter(&getter_name, scratch, tracker, &digest, &getter_args)?;
    shoal.completion(&mut getter)?;
    let seconds = started.elapsed().as_secs_f64();
    let run = Run {
        seconds,
        sender_cpu: seeder.cpu_seconds().unwrap_or(0.0) - seeder_cpu,
        receiver_cpu: getter.cpu_seconds().unwrap_or(0.0),
    };
    drop(getter);
    drop(seeder);
    for name in [seeder_name, getter_name] {
        let _ = std::fs::remove_dir_all(scratch.path(&name));
    }
    Ok(run)
}

fn rss(shoal: &Shoal, mib: u64) -> Result<(), String> {
    let scratch = Scratch::new("engine-bench-rss").map_err(io)?;
    warm_memory(&scratch, 3 * mib * MIB)?;
    let blob = scratch.path("blob");
    random_file(&blob, mib * MIB, 43).map_err(io)?;
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let (seeder, digest) = shoal.seeder("seeder", &scratch, &tracker, &blob, &[])?;
    // The source file is in the seeder's store now: free its memory (tmpfs).
    std::fs::remove_file(&blob).map_err(io)?;
    println!("getter of a {mib} MiB blob (2 shards), peak RSS (VmHWM)");
    println!("| getter | seconds | peak RSS MiB | seeder peak RSS MiB |");
    println!("|---|---|---|---|");
    for (name, extra) in [
        ("fetch only", &["--no-stream", "--seed-after"][..]),
        ("fetch + stream it back", &["--seed-after"][..]),
    ] {
        let started = Instant::now();
        let mut getter = shoal.getter("getter", &scratch, &tracker, &digest, extra)?;
        shoal.completion(&mut getter)?;
        let seconds = started.elapsed().as_secs_f64();
        let peak = getter.peak_rss_bytes().unwrap_or(0);
        println!(
            "| {name} | {seconds:.2} | {:.1} | {:.1} |",
            peak as f64 / MIB as f64,
            seeder.peak_rss_bytes().unwrap_or(0) as f64 / MIB as f64
        );
        drop(getter);
        let _ = std::fs::remove_dir_all(scratch.path("getter"));
    }
    Ok(())
}

fn fanout(shoal: &Shoal, mib: u64, n_getters: usize) -> Result<(), String> {
    let scratch = Scratch::new("engine-bench-fanout").map_err(io)?;
    warm_memory(&scratch, (n_getters as u64 + 2) * mib * MIB)?;
    let blob = scratch.path("blob");
    random_file(&blob, mib * MIB, 44).map_err(io)?;
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let (_seeder, digest) = shoal.seeder("seeder", &scratch, &tracker, &blob, &[])?;
    let started = Instant::now();
    let mut getters: Vec<Proc> = (0..n_getters)
        .map(|i| {
            shoal.getter(
                &format!("getter{i}"),
                &scratch,
                &tracker,
                &digest,
                &["--no-stream", "--seed-after"],
            )
        })
        .collect::<Result<_, _>>()?;
    let mut seconds = Vec::with_capacity(n_getters);
    for getter in &mut getters {
        let done = shoal.completion(getter)?;
        seconds.push(done["seconds"].as_f64().unwrap_or(f64::NAN));
    }
    let wall = started.elapsed().as_secs_f64();
    let slowest = seconds.iter().copied().fold(0.0, f64::max);
    let median = median(&mut seconds);
    println!("1 seeder → {n_getters} getters of {mib} MiB on loopback (2 cores shared by all)");
    println!(
        "| wall until the last completes | slowest getter | median getter | aggregate MB/s delivered |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {wall:.2} s | {slowest:.2} s | {median:.2} s | {:.0} |",
        (mib * MIB) as f64 * n_getters as f64 / wall / 1e6
    );
    Ok(())
}

fn limit(shoal: &Shoal, mib: u64, rate_mib: u64) -> Result<(), String> {
    let scratch = Scratch::new("engine-bench-limit").map_err(io)?;
    let blob = scratch.path("blob");
    let len = mib * MIB;
    random_file(&blob, len, 45).map_err(io)?;
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let rate = rate_mib * MIB;
    let rate_arg = rate.to_string();
    println!("{mib} MiB through one limited side, limit {rate_mib} MiB/s");
    println!("| limited side | seconds | achieved MiB/s | achieved / limit |");
    println!("|---|---|---|---|");
    for side in ["seeder egress", "getter ingress"] {
        let (seeder_extra, getter_extra): (Vec<&str>, Vec<&str>) = if side == "seeder egress" {
            (vec!["--egress-limit", &rate_arg], vec!["--no-stream"])
        } else {
            (vec![], vec!["--no-stream", "--ingress-limit", &rate_arg])
        };
        let name = side.replace(' ', "-");
        let (seeder, digest) = shoal.seeder(
            &format!("seeder-{name}"),
            &scratch,
            &tracker,
            &blob,
            &seeder_extra,
        )?;
        let mut getter = shoal.getter(
            &format!("getter-{name}"),
            &scratch,
            &tracker,
            &digest,
            &getter_extra,
        )?;
        let done = shoal.completion(&mut getter)?;
        let seconds = done["seconds"].as_f64().unwrap_or(f64::NAN);
        let achieved = len as f64 / seconds;
        println!(
            "| {side} | {seconds:.2} | {:.1} | {:.3} |",
            achieved / MIB as f64,
            achieved / rate as f64
        );
        drop(getter);
        drop(seeder);
    }
    Ok(())
}

fn stream(shoal: &Shoal, mib: u64, rate_mib: u64, rounds: usize) -> Result<(), String> {
    let scratch = Scratch::new("engine-bench-stream").map_err(io)?;
    let blob = scratch.path("blob");
    random_file(&blob, mib * MIB, 46).map_err(io)?;
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let rate = (rate_mib * MIB).to_string();
    println!("a reader streaming {mib} MiB in order from a seeder limited to {rate_mib} MiB/s");
    println!("| round | first bytes (s) | complete (s) |");
    println!("|---|---|---|");
    let (mut firsts, mut completes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let seeder_name = format!("seeder{round}");
        let getter_name = format!("getter{round}");
        let (seeder, digest) = shoal.seeder(
            &seeder_name,
            &scratch,
            &tracker,
            &blob,
            &["--egress-limit", &rate],
        )?;
        let out = scratch.path(&format!("{getter_name}.out"));
        let out = out.to_string_lossy();
        let mut getter =
            shoal.getter(&getter_name, &scratch, &tracker, &digest, &["--out", &out])?;
        let done = shoal.completion(&mut getter)?;
        let first = done["first_chunk_seconds"].as_f64().unwrap_or(f64::NAN);
        let complete = done["seconds"].as_f64().unwrap_or(f64::NAN);
        println!("| {round} | {first:.3} | {complete:.3} |");
        firsts.push(first);
        completes.push(complete);
        drop(getter);
        drop(seeder);
        for name in [seeder_name, getter_name] {
            let _ = std::fs::remove_dir_all(scratch.path(&name));
        }
    }
    println!(
        "| median | {:.3} | {:.3} |",
        median(&mut firsts),
        median(&mut completes)
    );
    Ok(())
}
