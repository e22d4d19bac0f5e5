//! `shoal build-index`: the internal tag API over the tag store. Every tag write is durable
//! when it is answered, so stopping it at any point loses nothing. Settings: `--config FILE`
//! (`configs/build-index.toml`), flags over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use shoal_servers::build_index::server::BuildIndex;
use shoal_servers::config::{BuildIndexFile, defaults};
use shoal_servers::http::HttpConfig;

use crate::serve::{self, HttpArgs, Stop};
use crate::settings::ConfigFile;

#[derive(Args, Debug)]
pub struct BuildIndexArgs {
    /// A config file (`configs/build-index.toml` documents every key); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (see the printed address) [default:
    /// 127.0.0.1:7300].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The tag store's root directory (required, here or as build_index.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the build-index until SIGINT or SIGTERM. Prints `build-index listening on ADDR` once
/// it accepts connections.
pub fn run(args: BuildIndexArgs) -> Result<(), String> {
    let file = ConfigFile::<BuildIndexFile>::load(args.config.as_deref())?;
    let keys = &file.keys;
    let config = args.http.config(&keys.http, &file)?;
    let data_dir = file.required(
        args.data_dir,
        keys.build_index.data_dir.clone(),
        "--data-dir",
        "build_index.data_dir",
    )?;
    let listen = args
        .listen
        .or(keys.build_index.listen)
        .unwrap_or(defaults::BUILD_INDEX_LISTEN);
    serve::run_until(
        Stop::Signals,
        serve(
            &data_dir,
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
