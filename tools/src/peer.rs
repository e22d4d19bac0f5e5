//! `shoal peer`: one engine as a standalone peer, to seed local files or fetch a blob by
//! digest through the swarm. An operator's tool for trying a tracker and a few hosts, and
//! what the engine's multi-process tests run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use compio::io::AsyncWriteAtExt;
use shoal_engine::transport::UploadPath;
use shoal_engine::{BlobState, BlobStatus, Driver, Engine, EngineConfig};
use shoal_proto::Digest;
use shoal_servers::config::{EngineSection, check_uploads_per_stripe, defaults};

use crate::settings::{ConfigFile, missing};

#[derive(Subcommand, Debug)]
pub enum PeerCommand {
    /// Copy files into the store and seed them until killed. Prints `listening ADDR`, then
    /// `seeding DIGEST` per file.
    Seed {
        #[command(flatten)]
        engine: EngineArgs,
        /// The peer port.
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Announce as an origin (peers ask it only for pieces nobody else has).
        #[arg(long)]
        origin: bool,
        /// The files to seed.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Fetch a blob through the swarm, streaming it to `--out` in order as its pieces are
    /// verified. Prints one JSON line with the blob's counters when it is complete.
    Get {
        #[command(flatten)]
        engine: EngineArgs,
        /// The peer port.
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Where to write the blob (written as it arrives).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep seeding after the download, until killed.
        #[arg(long)]
        seed_after: bool,
        /// Do not read the blob back while it downloads (only fetch it into the store): for
        /// measuring the swarm alone.
        #[arg(long, conflicts_with = "out")]
        no_stream: bool,
        digest: String,
    },
}

/// The engine's switches, shared by `shoal peer`, `shoal agent` and `shoal origin`. Each
/// overrides the `[engine]` key of a `--config` file where the component takes one; unset,
/// the file's key or the default applies.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// The store's root directory (required; with --config, engine.data_dir may give it).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A tracker address (repeat for several; required; with --config, engine.trackers may
    /// give them).
    #[arg(long = "tracker")]
    trackers: Vec<SocketAddr>,
    /// Shard threads (0: one per core) [default: 0].
    #[arg(long)]
    shards: Option<usize>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// The I/O driver [default: auto].
    #[arg(long, value_enum)]
    driver: Option<DriverArg>,
    /// How piece uploads leave [default: splice].
    #[arg(long, value_enum)]
    upload_path: Option<UploadArg>,
    /// Egress limit for piece uploads, bytes per second.
    #[arg(long)]
    egress_limit: Option<u64>,
    /// Ingress limit for piece downloads, bytes per second.
    #[arg(long)]
    ingress_limit: Option<u64>,
    /// Pieces one stripe of a blob uploads at once [default: 8 for an agent, 12 for an
    /// origin].
    #[arg(long)]
    uploads_per_stripe: Option<usize>,
    /// Congestion control of peer connections (`reno`, `cubic`, `bbr`: one the kernel lists
    /// in net.ipv4.tcp_available_congestion_control) [default: the system's].
    #[arg(long)]
    tcp_congestion: Option<String>,
    /// Skip re-hashing a downloaded blob against its digest at completion where its metainfo
    /// needs it (version 1: sha512 or empty blobs, older origins; every piece is still checked
    /// as it arrives, this only stops guarding against a metainfo that does not describe its
    /// digest). Version-2 metainfo never needs the pass.
    #[arg(long)]
    no_verify_digest: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DriverArg {
    /// io_uring, epoll where refused.
    Auto,
    /// Force epoll.
    Poll,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum UploadArg {
    Splice,
    Copy,
}

impl EngineArgs {
    /// The engine's config for `shoal peer` (no config file), with its peer port at `listen`.
    pub fn config(&self, origin: bool, listen: SocketAddr) -> Result<EngineConfig, String> {
        let mut config = engine_defaults(origin);
        config.listen = listen;
        self.overlay::<()>(&mut config, None)?;
        config
            .validate()
            .map_err(|e| format!("engine settings: {e}"))?;
        Ok(config)
    }

    /// The engine's config for a component: defaults (an origin's when `origin`), then the
    /// file's `[engine]`, then these flags and `peer_listen` (the component's `--peer-listen`).
    pub fn config_with_file<T>(
        &self,
        origin: bool,
        peer_listen: Option<SocketAddr>,
        section: &EngineSection,
        file: &ConfigFile<T>,
    ) -> Result<EngineConfig, String> {
        let mut config = engine_defaults(origin);
        config.listen = defaults::PEER_LISTEN;
        section.overlay(&mut config).map_err(|e| file.error(e))?;
        if let Some(listen) = peer_listen {
            config.listen = listen;
        }
        self.overlay(&mut config, Some(file))?;
        config
            .validate()
            .map_err(|e| file.error(format!("engine: {e}")))?;
        Ok(config)
    }

    /// Writes the flags given over `config`; checks that the data directory and a tracker
    /// came from somewhere (`file` names where else they could have come from).
    fn overlay<T>(
        &self,
        config: &mut EngineConfig,
        file: Option<&ConfigFile<T>>,
    ) -> Result<(), String> {
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if !self.trackers.is_empty() {
            config.trackers.clone_from(&self.trackers);
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if self.no_pin {
            config.pin_threads = false;
        }
        if let Some(driver) = self.driver {
            config.driver = match driver {
                DriverArg::Auto => Driver::Auto,
                DriverArg::Poll => Driver::Poll,
            };
        }
        if let Some(path) = self.upload_path {
            config.upload_path = match path {
                UploadArg::Splice => UploadPath::Splice,
                UploadArg::Copy => UploadPath::Copy,
            };
        }
        if self.egress_limit.is_some() {
            config.egress_bytes_per_s = self.egress_limit;
        }
        if self.ingress_limit.is_some() {
            config.ingress_bytes_per_s = self.ingress_limit;
        }
        if let Some(n) = self.uploads_per_stripe {
            config.swarm.uploads_active_max =
                check_uploads_per_stripe(n).map_err(|e| format!("--uploads-per-stripe: {e}"))?;
        }
        if let Some(name) = &self.tcp_congestion {
            shoal_engine::config::check_tcp_congestion(name)
                .map_err(|e| format!("--tcp-congestion: {e}"))?;
            config.tcp_congestion = Some(name.clone());
        }
        if self.no_verify_digest {
            config.store.verify_digest_on_complete = false;
        }
        let key = |key| file.map(|_| key);
        if config.data_dir.as_os_str().is_empty() {
            return Err(missing("--data-dir", key("engine.data_dir")));
        }
        if config.trackers.is_empty() {
            return Err(missing("--tracker", key("engine.trackers")));
        }
        Ok(())
    }
}

/// The engine's built-in defaults, with no data directory and no tracker yet.
fn engine_defaults(origin: bool) -> EngineConfig {
    let config = EngineConfig::new(PathBuf::new(), Vec::new());
    if origin { config.into_origin() } else { config }
}

pub fn run(command: PeerCommand) -> Result<(), String> {
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    match command {
        PeerCommand::Seed {
            engine,
            listen,
            origin,
            files,
        } => {
            let engine =
                Engine::start(engine.config(origin, listen)?).map_err(|e| e.to_string())?;
            println!("listening {}", engine.listen_addr());
            runtime.block_on(async {
                for file in &files {
                    let digest = engine
                        .ingest_file(file, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    engine.seed(&digest).await.map_err(|e| e.to_string())?;
                    println!("seeding {digest}");
                }
                forever().await;
                Ok(())
            })
        }
        PeerCommand::Get {
            engine,
            listen,
            out,
            seed_after,
            no_stream,
            digest,
        } => {
            let digest = Digest::parse(&digest).map_err(|e| e.to_string())?;
            let engine = Engine::start(engine.config(false, listen)?).map_err(|e| e.to_string())?;
            println!("listening {}", engine.listen_addr());
            runtime.block_on(async {
                let started = Instant::now();
                let result = if no_stream {
                    fetch_only(&engine, &digest).await
                } else {
                    get(&engine, &digest, out, started).await
                };
                let streamed = result.as_ref().ok().copied().unwrap_or_default();
                let seconds = started.elapsed().as_secs_f64();
                let status = engine.status(&digest);
                if let Err(error) = result {
                    engine.shutdown();
                    return Err(error);
                }
                println!(
                    "{}",
                    status_json(&digest, status.as_ref(), seconds, streamed)
                );
                if seed_after {
                    forever().await;
                }
                engine.shutdown();
                Ok(())
            })
        }
    }
}

/// Fetches the blob into the store without reading it.
async fn fetch_only(engine: &Engine, digest: &Digest) -> Result<Streamed, String> {
    engine.fetch(digest).await.map_err(|e| e.to_string())?;
    engine
        .wait_complete(digest)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Streamed::default())
}

/// When the reader started and got its first bytes, relative to the download's completion.
#[derive(Debug, Clone, Copy, Default)]
struct Streamed {
    reader_started_before_complete: bool,
    first_chunk_before_complete: bool,
    /// From the start of the `get` to the first bytes in the reader's hands.
    first_chunk_seconds: Option<f64>,
}

/// Streams the blob (to `out` if given) and waits for its completion.
async fn get(
    engine: &Engine,
    digest: &Digest,
    out: Option<PathBuf>,
    started: Instant,
) -> Result<Streamed, String> {
    let mut stream = engine.open(digest, None).await.map_err(|e| e.to_string())?;
    let downloading = || {
        engine
            .status(digest)
            .is_some_and(|s| s.state == BlobState::Downloading)
    };
    let mut streamed = Streamed {
        reader_started_before_complete: downloading(),
        first_chunk_before_complete: false,
        first_chunk_seconds: None,
    };
    let mut file = match &out {
        Some(path) => Some(
            compio::fs::File::create(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut offset = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let (result, chunk) = stream.next_chunk(buf).await;
        result.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            break;
        }
        if offset == 0 {
            streamed.first_chunk_before_complete = downloading();
            streamed.first_chunk_seconds = Some(started.elapsed().as_secs_f64());
        }
        let len = chunk.len() as u64;
        buf = match &mut file {
            Some(file) => {
                let compio::BufResult(written, chunk) = file.write_all_at(chunk, offset).await;
                written.map_err(|e| format!("writing the output: {e}"))?;
                chunk
            }
            None => chunk,
        };
        offset += len;
    }
    if let Some(file) = file {
        file.sync_all()
            .await
            .map_err(|e| format!("syncing the output: {e}"))?;
    }
    engine
        .wait_complete(digest)
        .await
        .map_err(|e| e.to_string())?;
    Ok(streamed)
}

fn status_json(
    digest: &Digest,
    status: Option<&BlobStatus>,
    seconds: f64,
    streamed: Streamed,
) -> String {
    let field = |f: fn(&BlobStatus) -> u64| status.map_or(0, f);
    format!(
        "{{\"event\":\"complete\",\"digest\":\"{digest}\",\"seconds\":{seconds:.3},\"reader_started_before_complete\":{},\"first_chunk_before_complete\":{},\"first_chunk_seconds\":{},\"pieces\":{},\"pieces_resumed\":{},\"pieces_fetched\":{},\"pieces_fetched_resumed\":{},\"pieces_failed\":{}}}",
        streamed.reader_started_before_complete,
        streamed.first_chunk_before_complete,
        streamed
            .first_chunk_seconds
            .map_or("null".to_owned(), |s| format!("{s:.3}")),
        field(|s| u64::from(s.n_pieces)),
        field(|s| u64::from(s.pieces_resumed)),
        field(|s| s.pieces_fetched),
        field(|s| s.pieces_fetched_resumed),
        field(|s| s.pieces_failed),
    )
}

async fn forever() {
    loop {
        compio::runtime::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
