//! `shoal build-index`: the internal tag API over the tag store. Every tag write is durable
//! when it is answered, so stopping it at any point loses nothing. With `[[backend]]` entries
//! in its file, tag writes are written through to the repository's backend (journaled
//! before they are answered) and tags missing locally are read back from it. Settings:
//! `--config FILE` (`configs/build-index.toml`), flags over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use shoal_servers::backend::Backends;
use shoal_servers::build_index::TagStore;
use shoal_servers::build_index::backing::{Backing, BackingConfig, Clock};
use shoal_servers::build_index::server::BuildIndex;
use shoal_servers::config::backends::BackendsFile;
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

/// The storage backends of a build-index and how it uses them.
#[derive(Debug)]
pub struct Storage {
    pub backends: Backends,
    pub config: BackingConfig,
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
    let storage = if keys.backend.is_empty() {
        None
    } else {
        let file_of_backends = BackendsFile {
            backend: keys.backend.clone(),
        };
        let backends = Backends::build(&file_of_backends).map_err(|e| file.error(e))?;
        let mut backing = BackingConfig::default();
        keys.build_index.overlay(&mut backing);
        Some(Storage {
            backends,
            config: backing,
        })
    };
    serve::run_until(
        Stop::Signals,
        serve(
            &data_dir,
            listen,
            storage,
            config,
            serve::print_listening("build-index"),
        ),
    )
}

/// Serves the tag API on `listen` over the tag store in `data_dir` (and its storage
/// backends, checked first): opens the store, binds, calls `ready`, serves. `shoal
/// build-index` and `shoal dev` run it.
pub async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    storage: Option<Storage>,
    config: HttpConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    // The backends first: a bad one stops the start-up before anything is written. A
    // build-index that has a store already starts anyway (its journal holds the tag writes
    // until the backend is back), so it restarts through a backend outage.
    if let Some(storage) = &storage
        && let Err(error) = storage.backends.check().await
    {
        if !TagStore::exists(data_dir) {
            return Err(format!("build-index: storage backend: {error}"));
        }
        eprintln!(
            "shoal: build-index: storage backend: {error} (it has a store already: serving \
             from it, tag writes journaled until the backend is back)"
        );
    }
    let (index, report) = BuildIndex::open(data_dir)
        .map_err(|e| format!("tag store in {}: {e}", data_dir.display()))?;
    if report.n_corrupt_records > 0 {
        eprintln!(
            "shoal: build-index: {} corrupt tag records (not served; see the log)",
            report.n_corrupt_records
        );
    }
    let data_dir = data_dir.to_path_buf();
    serve::serve_http(
        "build-index",
        listen,
        config,
        || async move {
            let Some(storage) = storage else {
                return Ok(index);
            };
            let store = Arc::clone(index.store());
            let backends = Arc::new(storage.backends);
            let backing = compio::runtime::spawn_blocking(move || {
                Backing::open(&data_dir, store, backends, storage.config, Clock::system())
            })
            .await
            .map_err(|_| "build-index: opening the write-through journal panicked".to_owned())?
            .map_err(|e| format!("build-index: {e}"))?;
            backing.spawn_driver();
            Ok(BuildIndex::with_backing(Arc::new(backing)))
        },
        ready,
    )
    .await
}
