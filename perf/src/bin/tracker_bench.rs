//! Announces per second against a real `shoal tracker` process on loopback, with 1 shard and
//! with 2, in the same run: K concurrent clients announce over M info hashes until N requests
//! have been answered. Prints requests/s and the tracker's CPU seconds per 100,000 requests
//! (user + system, from `/proc`) for each, and the ratios (2 shards / 1 shard).
//!
//! ```text
//! cargo build --release -p shoal -p shoal-perf
//! target/release/tracker_bench [--clients 64] [--info-hashes 10000] [--requests 200000]
//!                              [--rounds 3] [--mode fresh|persistent]
//! ```
//!
//! `fresh`: a new TCP connection per announce, as the engine's tracker client does (so the
//! connection lands on whichever shard the kernel picks, and a request it does not own is
//! handed to its owner). `persistent`: each client keeps one connection for all its
//! announces. The clients run on `--client-threads` compio runtimes in this process, on the
//! same cores as the tracker: on a small machine the figure is the whole system's.
//! Rounds alternate 1 and 2 shards; the median round of each is reported.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use compio::net::TcpStream;
use shoal_engine::tracker::{FrameReader, write_frame};
use shoal_perf::procs::{Proc, Scratch, cpu_seconds};
use shoal_proto::tracker_wire::{self, Announce, Request, Response};
use shoal_proto::{Digest, InfoHash, PeerId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Fresh,
    Persistent,
}

#[derive(Parser, Debug)]
#[command(about = "Tracker announces per second, 1 shard against 2")]
struct Cli {
    /// The `shoal` binary (default: next to this program).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Concurrent clients (each one request at a time).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Client runtimes (threads) in this process.
    #[arg(long, default_value_t = 1)]
    client_threads: u64,
    /// Info hashes announced over.
    #[arg(long, default_value_t = 10_000)]
    info_hashes: u64,
    /// Requests per measured run.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Runs per shard count.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, value_enum, default_value_t = Mode::Fresh)]
    mode: Mode,
}

/// Longest wait for one request's answer; a run with a slower one fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const START_WAIT: Duration = Duration::from_secs(30);
/// Most clients and client threads (bounds on what the command line may ask).
const CLIENTS_MAX: u64 = 4096;
const CLIENT_THREADS_MAX: u64 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = match cli.shoal.clone() {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("shoal"),
            Err(error) => {
                eprintln!("tracker_bench: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(&cli, &binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tracker_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    requests_per_s: f64,
    cpu_s_per_100k: f64,
}

fn run(cli: &Cli, binary: &std::path::Path) -> Result<(), String> {
    if cli.clients == 0 || cli.clients > CLIENTS_MAX {
        return Err(format!("--clients must be 1 to {CLIENTS_MAX}"));
    }
    if cli.client_threads == 0 || cli.client_threads > CLIENT_THREADS_MAX.min(cli.clients) {
        return Err(format!(
            "--client-threads must be 1 to {}",
            CLIENT_THREADS_MAX.min(cli.clients)
        ));
    }
    if cli.info_hashes == 0 || cli.requests == 0 || cli.rounds == 0 {
        return Err("--info-hashes, --requests and --rounds must be positive".into());
    }
    let scratch = Scratch::new("tracker-bench").map_err(|e| e.to_string())?;
    println!(
        "tracker_bench: {} clients on {} thread(s), {} info hashes, {} requests per run, mode {:?}, {} cores",
        cli.clients,
        cli.client_threads,
        cli.info_hashes,
        cli.requests,
        cli.mode,
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    );
    let mut results: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..cli.rounds {
        for (slot, shards) in [1usize, 2].into_iter().enumerate() {
            let figures = measure(cli, binary, &scratch, shards, round)?;
            println!(
                "round {round} shards {shards}: {:>9.0} requests/s, {:.2} tracker CPU-s per 100k requests",
                figures.requests_per_s, figures.cpu_s_per_100k
            );
            results[slot].push(figures);
        }
    }
    let [one, two] = results.map(|runs| median(&runs));
    println!(
        "median: 1 shard {:.0} requests/s ({:.2} CPU-s/100k); 2 shards {:.0} requests/s ({:.2} CPU-s/100k)",
        one.requests_per_s, one.cpu_s_per_100k, two.requests_per_s, two.cpu_s_per_100k
    );
    println!(
        "ratio 2 shards / 1 shard: throughput {:.2}, CPU per request {:.2}",
        two.requests_per_s / one.requests_per_s,
        two.cpu_s_per_100k / one.cpu_s_per_100k
    );
    Ok(())
}

/// The run with the median throughput.
fn median(runs: &[Figures]) -> Figures {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
    sorted[sorted.len() / 2]
}

fn measure(
    cli: &Cli,
    binary: &std::path::Path,
    scratch: &Scratch,
    shards: usize,
    round: usize,
) -> Result<Figures, String> {
    let name = format!("tracker-{shards}-{round}");
    let config = scratch.path(&format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("[tracker]\nshards = {shards}\nconnections_max = 65536\n"),
    )
    .map_err(|e| e.to_string())?;
    let config = config.to_string_lossy().into_owned();
    let mut tracker = Proc::start(
        &name,
        binary,
        &["tracker", "--config", &config, "--listen", "127.0.0.1:0"],
        &[("SHOAL_LOG", "warn")],
        scratch.path(&format!("{name}.stderr")),
    )
    .map_err(|e| format!("starting {name}: {e}"))?;
    let line = tracker.line_starting("tracker listening on ", START_WAIT)?;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{line}: {e}"))?;

    let cpu_before = cpu_seconds(tracker.pid()).ok_or("no /proc figures")?;
    let started = Instant::now();
    load(cli, addr)?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(tracker.pid()).ok_or("no /proc figures")? - cpu_before;
    tracker.kill();
    let requests = cli.requests as f64;
    Ok(Figures {
        requests_per_s: requests / elapsed,
        cpu_s_per_100k: cpu / requests * 100_000.0,
    })
}

/// Runs the clients until `cli.requests` announces have been answered.
fn load(cli: &Cli, addr: SocketAddr) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..cli.client_threads)
        .map(|thread| {
            let next = Arc::clone(&next);
            let (clients, threads) = (cli.clients, cli.client_threads);
            let (total, info_hashes, mode) = (cli.requests, cli.info_hashes, cli.mode);
            std::thread::spawn(move || -> Result<(), String> {
                let runtime = compio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                runtime.block_on(async move {
                    // Clients thread, thread + threads, … run on this thread.
                    let tasks: Vec<_> = (thread..clients)
                        .step_by(threads as usize)
                        .map(|client| {
                            let next = Arc::clone(&next);
                            compio::runtime::spawn(async move {
                                client_loop(addr, client, &next, total, info_hashes, mode).await
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.map_err(|_| "a client panicked".to_owned())??;
                    }
                    Ok(())
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a client thread panicked")??;
    }
    Ok(())
}

async fn client_loop(
    addr: SocketAddr,
    client: u64,
    next: &AtomicU64,
    total: u64,
    info_hashes: u64,
    mode: Mode,
) -> Result<(), String> {
    let mut connection: Option<(TcpStream, FrameReader)> = None;
    let mut frame = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return Ok(());
        }
        // Spread over the info hashes without a pattern the shard hash could follow.
        let swarm = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % info_hashes;
        let mut info_hash = [0u8; 32];
        info_hash[..8].copy_from_slice(&swarm.to_be_bytes());
        let request = Request::Announce(Announce {
            digest: Digest::Sha256(info_hash),
            info_hash: InfoHash(info_hash),
            peer_id: PeerId::from_u64(client),
            port: 10_000 + u16::try_from(client % 50_000).unwrap_or(0),
            is_origin: false,
            is_complete: client.is_multiple_of(2),
        });
        frame.clear();
        tracker_wire::encode_request(&request, &mut frame);
        let (stream, reader) = match connection.as_mut() {
            Some(open) => open,
            None => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = stream.set_nodelay(true);
                connection.insert((stream, FrameReader::new()))
            }
        };
        let exchange = async {
            let (written, buf) = write_frame(stream, std::mem::take(&mut frame)).await;
            frame = buf;
            written.map_err(|e| format!("send: {e}"))?;
            reader
                .next(stream, tracker_wire::parse_response)
                .await
                .map_err(|e| format!("receive: {e}"))
        };
        let response = compio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        if !matches!(response, Response::Announce { .. }) {
            return Err(format!("unexpected answer: {response:?}"));
        }
        if mode == Mode::Fresh {
            connection = None;
        }
    }
}
