//! `shoal origin`: a dedicated seeder. One engine started as an origin (its shards on their
//! own threads) and the internal blob API (`/internal/blobs/<digest>`) on one compio runtime
//! on the main thread ([`serve`], which `shoal dev` runs on a thread of its own).
//! Settings: `--config FILE` (`configs/origin.toml`), flags over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::backend::Backends;
use shoal_servers::backend::writeback::WriteBackConfig;
use shoal_servers::cluster::ClusterConfig;
use shoal_servers::config::backends::BackendsFile;
use shoal_servers::config::{Members, OriginFile, defaults};
use shoal_servers::origin::{
    Membership, NAMESPACE_DEFAULT, Origin, OriginConfig, REPAIR_INTERVAL_DEFAULT, Storage,
};

use crate::origins;
use crate::peer::EngineArgs;
use crate::serve::{self, EngineGuard, HttpArgs, Stop};
use crate::settings::ConfigFile;
use shoal_servers::http::HttpConfig;

#[derive(Args, Debug)]
pub struct OriginArgs {
    /// A config file (`configs/origin.toml` documents every key); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// The internal blob API's address [default: 127.0.0.1:7200].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The peer port [default: 0.0.0.0:0].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Largest blob a PUT may carry, bytes [default: 68719476736, 64 GiB].
    #[arg(long)]
    blob_bytes_max: Option<u64>,
    /// An origin of this origin's cluster, `host:port`, this one included; repeat for every
    /// member (a DNS name stands for every address it resolves to). Unset: a lone origin.
    #[arg(long = "cluster")]
    cluster: Vec<String>,
    /// This origin's internal API address as the cluster lists it [default: --listen].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Copies of each blob in the cluster [default: 3].
    #[arg(long)]
    replicas: Option<usize>,
    /// How often this origin catches up on the blobs it owns [default: 60s].
    #[arg(long, value_parser = origins::duration_arg)]
    repair_interval: Option<Duration>,
    /// How often every member's health is checked [default: 2s].
    #[arg(long, value_parser = origins::duration_arg)]
    health_interval: Option<Duration>,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the origin until SIGINT or SIGTERM (then its engine shuts down). Prints
/// `peer listening ADDR`, re-seeds every stored blob, then prints `origin listening on ADDR`
/// once the blob API accepts connections.
pub fn run(args: OriginArgs) -> Result<(), String> {
    let file = ConfigFile::<OriginFile>::load(args.config.as_deref())?;
    let keys = &file.keys;
    let config = args.http.config(&keys.http, &file)?;
    let engine_config =
        args.engine
            .config_with_file(true, args.peer_listen, &keys.engine, &file)?;
    let mut origin_config = OriginConfig::default();
    keys.origin
        .overlay(&mut origin_config)
        .map_err(|e| file.error(e))?;
    if let Some(bytes) = args.blob_bytes_max {
        if bytes == 0 {
            return Err("--blob-bytes-max: at least 1 byte".into());
        }
        origin_config.blob_bytes_max = bytes;
    }
    let listen = args
        .listen
        .or(keys.origin.listen)
        .unwrap_or(defaults::ORIGIN_LISTEN);
    let members = if args.cluster.is_empty() {
        keys.origin.cluster.clone().map(Members::into_vec)
    } else {
        Some(args.cluster.clone())
    };
    if !keys.backend.is_empty() {
        let file_of_backends = BackendsFile {
            backend: keys.backend.clone(),
        };
        let backends = Backends::build(&file_of_backends).map_err(|e| file.error(e))?;
        origin_config.storage = Some(Storage {
            backends: Arc::new(backends),
            namespace: keys
                .origin
                .namespace
                .clone()
                .unwrap_or_else(|| NAMESPACE_DEFAULT.to_owned()),
            writeback: WriteBackConfig::default(),
        });
    }
    if let Some(members) = members {
        let mut cluster = ClusterConfig::new(members);
        if let Some(replicas) = args.replicas.or(keys.origin.replicas) {
            cluster.replicas = replicas;
        }
        if let Some(interval) = args
            .health_interval
            .or(keys.origin.health_interval.map(|span| span.0))
        {
            cluster.health_interval = interval;
        }
        let advertise = args.advertise.or(keys.origin.advertise).unwrap_or(listen);
        let cluster = origins::resolve(cluster).map_err(|e| file.error(e))?;
        if cluster.is_healthy(advertise).is_none() {
            return Err(file.error(format!(
                "this origin's address {advertise} (--advertise, else --listen) is not one of \
                 the cluster's members {:?}",
                cluster.members()
            )));
        }
        origin_config.membership = Some(Membership {
            cluster,
            advertise,
            repair_interval: args
                .repair_interval
                .or(keys.origin.repair_interval.map(|span| span.0))
                .unwrap_or(REPAIR_INTERVAL_DEFAULT),
        });
    }
    let engine = EngineGuard::start(engine_config)?;
    println!("peer listening {}", engine.engine().listen_addr());
    let served = engine.engine().clone();
    serve::run_until(
        Stop::Signals,
        serve(
            served,
            listen,
            origin_config,
            config,
            serve::print_listening("origin"),
        ),
    )
}

/// Serves the internal blob API on `listen` over `engine` (started as an origin): binds,
/// re-seeds every stored blob, calls `ready`, serves. `shoal origin` and `shoal dev` run it.
pub async fn serve(
    engine: Engine,
    listen: SocketAddr,
    origin_config: OriginConfig,
    config: HttpConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    serve::serve_http(
        "origin",
        listen,
        config,
        || async move {
            if let Some(storage) = &origin_config.storage {
                storage
                    .backends
                    .check()
                    .await
                    .map_err(|e| format!("origin: storage backend: {e}"))?;
            }
            let (origin, _report) = Origin::start(engine, origin_config)
                .await
                .map_err(|e| format!("origin: {e}"))?;
            Ok(origin)
        },
        ready,
    )
    .await
}
