//! `shoal origin`: a dedicated seeder. One engine started as an origin (its shards on their
//! own threads) and the internal blob API (`/internal/blobs/<digest>`) on one compio runtime
//! on the main thread ([`serve`], which `shoal dev` runs on a thread of its own).

use std::net::SocketAddr;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::origin::{BLOB_BYTES_MAX_DEFAULT, Origin, OriginConfig};

use crate::peer::EngineArgs;
use crate::serve::{self, EngineGuard, HttpArgs, Stop};
use shoal_servers::http::HttpConfig;

#[derive(Args, Debug)]
pub struct OriginArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The internal blob API's address.
    #[arg(long, default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// The peer port.
    #[arg(long, default_value = "0.0.0.0:0")]
    peer_listen: SocketAddr,
    /// Largest blob a PUT may carry, bytes.
    #[arg(long, default_value_t = BLOB_BYTES_MAX_DEFAULT)]
    blob_bytes_max: u64,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the origin until SIGINT or SIGTERM (then its engine shuts down). Prints
/// `peer listening ADDR`, re-seeds every stored blob, then prints `origin listening on ADDR`
/// once the blob API accepts connections.
pub fn run(args: OriginArgs) -> Result<(), String> {
    let config = args.http.config()?;
    let engine = EngineGuard::start(args.engine.config(true, args.peer_listen))?;
    println!("peer listening {}", engine.engine().listen_addr());
    let origin_config = OriginConfig {
        blob_bytes_max: args.blob_bytes_max,
    };
    let served = engine.engine().clone();
    serve::run_until(
        Stop::Signals,
        serve(
            served,
            args.listen,
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
            let (origin, _report) = Origin::start(engine, origin_config)
                .await
                .map_err(|e| format!("origin: {e}"))?;
            Ok(origin)
        },
        ready,
    )
    .await
}
