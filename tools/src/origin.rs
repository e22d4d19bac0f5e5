//! `shoal origin`: a dedicated seeder. One engine started as an origin (its shards on their
//! own threads) and the internal blob API (`/internal/blobs/<digest>`) on one compio runtime
//! on the main thread.

use std::net::SocketAddr;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::origin::{BLOB_BYTES_MAX_DEFAULT, Origin, OriginConfig};

use crate::peer::EngineArgs;
use crate::serve::{self, HttpArgs};

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

/// Runs the origin until the process is killed. Prints `peer listening ADDR`, re-seeds every
/// stored blob, then prints `origin listening on ADDR` once the blob API accepts connections.
pub fn run(args: OriginArgs) -> Result<(), String> {
    let config = args.http.config()?;
    let engine =
        Engine::start(args.engine.config(true, args.peer_listen)).map_err(|e| e.to_string())?;
    println!("peer listening {}", engine.listen_addr());
    let origin_config = OriginConfig {
        blob_bytes_max: args.blob_bytes_max,
    };
    let served = engine.clone();
    let result = serve::run("origin", args.listen, config, || async move {
        let (origin, _report) = Origin::start(served, origin_config)
            .await
            .map_err(|e| format!("origin: {e}"))?;
        Ok(origin)
    });
    engine.shutdown();
    result
}
