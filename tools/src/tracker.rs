//! `shoal tracker`: the sharded tracker (one thread and runtime per shard). Its settings come
//! from `--config FILE` (`configs/tracker.toml` documents every key) and the command line,
//! which wins. It keeps nothing on disk (metainfo it lacks comes back from the origins), so
//! stopping it at any point loses nothing.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::Path;

use shoal_servers::config::{self, TrackerFile};
use shoal_servers::tracker::{self, TrackerServerConfig};

use crate::serve::{self, Stop};

/// Runs the tracker until SIGINT or SIGTERM. Prints `tracker listening on ADDR` once it
/// accepts connections. `listen` (from the command line) overrides the file's.
pub fn run(config_file: Option<&Path>, listen: Option<SocketAddr>) -> Result<(), String> {
    let mut config = TrackerServerConfig::default();
    if let Some(path) = config_file {
        let file: TrackerFile = config::load(path).map_err(|e| e.to_string())?;
        file.tracker
            .apply(&mut config)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(listen) = listen {
        config.listen = listen;
    }
    serve::run_until(
        Stop::Signals,
        serve(config, serve::print_listening("tracker")),
    )
}

/// Serves the tracker protocol on `config.listen`: binds one listener per shard, calls
/// `ready`, serves. `shoal tracker` and `shoal dev` run it.
pub async fn serve(
    config: TrackerServerConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    config.validate()?;
    let listen = config.listen;
    // A random seed for the handout samples (std's hasher keys come from the OS).
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let listeners = tracker::bind(listen, config.shards).map_err(|e| e.to_string())?;
    let bound = listeners
        .first()
        .and_then(|listener| listener.local_addr().ok())
        .ok_or_else(|| format!("listening on {listen}: no address"))?;
    ready(bound);
    tracker::serve_sharded(listeners, config, seed)
        .await
        .map_err(|e| format!("tracker: {e}"))
}
