//! `shoal build-index`: the internal tag API over the tag store. Every tag write is durable
//! when it is answered, so stopping it at any point loses nothing.

use std::net::SocketAddr;
use std::path::Path;

use shoal_servers::build_index::server::BuildIndex;
use shoal_servers::http::HttpConfig;

use crate::serve::{self, Stop};

/// Runs the build-index until SIGINT or SIGTERM. Prints `build-index listening on ADDR` once
/// it accepts connections.
pub fn run(listen: SocketAddr, data_dir: &Path, config: HttpConfig) -> Result<(), String> {
    serve::run_until(
        Stop::Signals,
        serve(
            data_dir,
            listen,
            config,
            serve::print_listening("build-index"),
        ),
    )
}

/// Serves the tag API on `listen` over the tag store in `data_dir`: opens the store, binds,
/// calls `ready`, serves. `shoal build-index` and `shoal dev` run it.
pub async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    config: HttpConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let (index, report) = BuildIndex::open(data_dir)
        .map_err(|e| format!("tag store in {}: {e}", data_dir.display()))?;
    if report.n_corrupt_records > 0 {
        eprintln!(
            "shoal: build-index: {} corrupt tag records (not served; see the log)",
            report.n_corrupt_records
        );
    }
    serve::serve_http(
        "build-index",
        listen,
        config,
        || async move { Ok(index) },
        ready,
    )
    .await
}
