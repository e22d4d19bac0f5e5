//! The `shoal` binary: every component as a subcommand, `shoal dev` (all of them in one
//! process on loopback), and the operator tools. Components: a minimal tracker
//! (`shoal tracker`), a standalone peer (`shoal peer`), the agent's first slice
//! (`shoal agent`: `/v2/` and blobs), the proxy (`shoal proxy`: the push API), and the
//! origin's and the build-index's internal APIs (`shoal origin`, `shoal build-index`). Each
//! module's `serve` function is the component's start-up, shared by its subcommand and by
//! `shoal dev`; the server subcommands stop cleanly on SIGINT/SIGTERM. Every server subcommand
//! and `shoal dev` take `--config FILE.toml` (examples in `configs/`): built-in defaults, then
//! the file, then the flags ([`settings`]).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::File;
use std::io::{BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
mod build_index;
mod dev;
mod origin;
mod origins;
mod peer;
mod proxy;
mod serve;
mod settings;
mod tracker;
use shoal_proto::Digest;
use shoal_proto::metainfo::{Metainfo, MetainfoBuilder, MetainfoParams, PieceCheck};

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "Shoal: a peer-to-peer OCI registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every component in one process on loopback (tracker, origin, build-index, proxy,
    /// agent), stores under `--data-dir`: the first thing to run. Prints one line per
    /// component, then `shoal dev ready`; stops cleanly on Ctrl-C or SIGTERM.
    Dev(dev::DevArgs),
    /// Build the metainfo of a blob file (streaming; the blob is never held in memory) and
    /// print its geometry and info hash.
    Metainfo {
        /// The blob.
        file: PathBuf,
        /// The blob's expected digest (`sha256:…` or `sha512:…`). Without it, the file's
        /// SHA-256 is computed first (one extra read).
        #[arg(long)]
        digest: Option<String>,
        /// Write the canonical encoding here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decode an encoded metainfo file, check it, and print it.
    InspectMetainfo { file: PathBuf },
    /// Run the agent: the OCI pull API on `--listen` (loopback) over one engine that
    /// fetches blobs through the swarm. Prints `agent listening on ADDR` once it serves.
    Agent(agent::AgentArgs),
    /// Run the proxy: the OCI push API on `--listen`, uploads staged under `--data-dir`,
    /// blobs to `--origin`, tags to `--build-index`. Prints `proxy listening on ADDR`.
    Proxy(proxy::ProxyArgs),
    /// Run an origin: the internal blob API on `--listen` (`/internal/blobs/<digest>`: PUT,
    /// HEAD, GET) over one origin engine that stores and seeds what is pushed. Prints
    /// `origin listening on ADDR` once it serves.
    Origin(origin::OriginArgs),
    /// Run the build-index: the internal tag API on `--listen` (`/internal/tags/…`,
    /// `/internal/repositories`) over the tag store in `--data-dir`. Prints
    /// `build-index listening on ADDR` once it serves.
    BuildIndex(build_index::BuildIndexArgs),
    /// Run one engine as a standalone peer: seed files, or fetch a blob through the swarm.
    #[command(subcommand)]
    Peer(peer::PeerCommand),
    /// Run a tracker (one shard per core unless `shards` says otherwise; `origins` to fetch
    /// metainfo from). Prints `tracker listening on ADDR` once it accepts connections.
    Tracker {
        /// A config file (`configs/tracker.toml` documents every key); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:7100); port 0 picks a free port (see the
        /// printed address).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

/// Bytes read from a file per step when streaming a blob.
const READ_CHUNK_BYTES: usize = 1 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shoal: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `SHOAL_LOG` (`tracing` filter syntax; default `warn`).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Agent(args) => agent::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Origin(args) => origin::run(args),
        Command::BuildIndex(args) => build_index::run(args),
        Command::Peer(command) => peer::run(command),
        Command::Metainfo { file, digest, out } => {
            let digest = match digest {
                Some(text) => Digest::parse(&text).map_err(|e| e.to_string())?,
                None => sha256_of_file(&file)?,
            };
            let metainfo = build_metainfo(&file, digest)?;
            print_metainfo(&metainfo);
            if let Some(out) = out {
                std::fs::write(&out, metainfo.encode())
                    .map_err(|e| format!("writing {}: {e}", out.display()))?;
            }
            Ok(())
        }
        Command::InspectMetainfo { file } => {
            let bytes =
                std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
            let metainfo =
                Metainfo::decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            print_metainfo(&metainfo);
            Ok(())
        }
        Command::Tracker { config, listen } => tracker::run(config.as_deref(), listen),
        Command::Dev(args) => dev::run(&args),
    }
}

fn for_each_chunk(
    file: &PathBuf,
    mut f: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let handle = File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    let mut reader = BufReader::with_capacity(READ_CHUNK_BYTES, handle);
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        f(&buffer[..n])?;
    }
}

fn sha256_of_file(file: &PathBuf) -> Result<Digest, String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for_each_chunk(file, |chunk| {
        hasher.update(chunk);
        Ok(())
    })?;
    Ok(Digest::Sha256(hasher.finalize().into()))
}

fn build_metainfo(file: &PathBuf, digest: Digest) -> Result<Metainfo, String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let mut builder =
        MetainfoBuilder::new(digest, len, &MetainfoParams::default()).map_err(|e| e.to_string())?;
    for_each_chunk(file, |chunk| {
        builder.update(chunk).map_err(|e| e.to_string())
    })?;
    builder
        .finish()
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn print_metainfo(metainfo: &Metainfo) {
    println!("digest            {}", metainfo.digest());
    println!("blob_bytes        {}", metainfo.blob_len());
    println!("piece_bytes       {}", metainfo.piece_len());
    println!("pieces            {}", metainfo.n_pieces());
    println!("pieces_per_stripe {}", metainfo.pieces_per_stripe());
    println!("stripes           {}", metainfo.n_stripes());
    let piece_check = match metainfo.piece_check() {
        PieceCheck::Sha256 => "sha256 (each piece's SHA-256; the digest is checked once complete)",
        PieceCheck::Sha256Chain => "sha256-chain (the pieces, each checked, prove the digest)",
    };
    println!("piece_check       {piece_check}");
    println!("encoded_bytes     {}", metainfo.encode().len());
    println!("info_hash         {}", metainfo.info_hash());
}
