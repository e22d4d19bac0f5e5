//! `shoal tracker`: a minimal tracker (one thread; every other setting at its default). It
//! keeps nothing on disk, so stopping it at any point loses nothing.

use std::hash::BuildHasher;
use std::net::SocketAddr;

use shoal_servers::tracker::{self, TrackerServerConfig};

use crate::serve::{self, Stop};

/// Runs the tracker until SIGINT or SIGTERM. Prints `tracker listening on ADDR` once it
/// accepts connections.
pub fn run(listen: SocketAddr) -> Result<(), String> {
    serve::run_until(
        Stop::Signals,
        serve(listen, serve::print_listening("tracker")),
    )
}

/// Serves the tracker protocol on `listen`: binds, calls `ready`, serves. `shoal tracker` and
/// `shoal dev` run it.
pub async fn serve(listen: SocketAddr, ready: impl FnOnce(SocketAddr)) -> Result<(), String> {
    let config = TrackerServerConfig {
        listen,
        ..TrackerServerConfig::default()
    };
    config.validate()?;
    // A random seed for the handout samples (std's hasher keys come from the OS).
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let (listener, bound) = serve::bind(listen).await?;
    ready(bound);
    tracker::serve(listener, config, seed)
        .await
        .map_err(|e| format!("tracker: {e}"))
}
