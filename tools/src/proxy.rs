//! `shoal proxy`: the OCI distribution push API. Uploads are staged and verified under
//! `--data-dir`, blobs go to every owner origin of their digest (`--origin`, repeated for a cluster) and tags
//! to the build-index.
//! One compio runtime on the main thread; the upload store's blocking work runs on compio's
//! blocking threads. Settings: `--config FILE` (`configs/proxy.toml`), flags over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::origins::{self, OriginsArgs};
use crate::serve::{self, HttpArgs, Stop};
use crate::settings::ConfigFile;
use shoal_servers::cluster::ClusterConfig;
use shoal_servers::config::{ProxyFile, defaults};
use shoal_servers::http::HttpConfig;
use shoal_servers::http::client::{ClientConfig, HttpClient};
use shoal_servers::proxy::Proxy;
use shoal_servers::registry::Registry;
use shoal_servers::uploads::{UploadLimits, UploadStore};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// A config file (`configs/proxy.toml` documents every key); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The push API's address [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where upload sessions are staged (`<data-dir>/uploads`; required, here or as
    /// proxy.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The origins (required, here or as proxy.origin).
    #[command(flatten)]
    origins: OriginsArgs,
    /// The build-index's internal API (required, here or as proxy.build_index).
    #[arg(long)]
    build_index: Option<SocketAddr>,
    #[command(flatten)]
    http: HttpArgs,
}

/// Everything a proxy runs with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The push API's address.
    pub listen: SocketAddr,
    /// Upload sessions are staged under `<data_dir>/uploads`.
    pub data_dir: PathBuf,
    /// Where blobs go: every owner of their digest in this cluster.
    pub origins: ClusterConfig,
    /// Where tags go.
    pub build_index: SocketAddr,
    /// The upload store's bounds.
    pub uploads: UploadLimits,
    /// How often idle upload sessions are swept.
    pub sweep_interval: Duration,
    pub http: HttpConfig,
}

impl ProxyConfig {
    /// The defaults, with the addresses and the directory that have none.
    pub fn new(
        data_dir: PathBuf,
        origins: ClusterConfig,
        build_index: SocketAddr,
        listen: SocketAddr,
    ) -> ProxyConfig {
        ProxyConfig {
            listen,
            data_dir,
            origins,
            build_index,
            uploads: UploadLimits::default(),
            sweep_interval: defaults::UPLOAD_SWEEP_INTERVAL,
            http: HttpConfig::default(),
        }
    }
}

/// Runs the proxy until SIGINT or SIGTERM. Prints `proxy listening on ADDR` once it accepts
/// connections.
pub fn run(args: ProxyArgs) -> Result<(), String> {
    let file = ConfigFile::<ProxyFile>::load(args.config.as_deref())?;
    let keys = &file.keys.proxy;
    let http = args.http.config(&file.keys.http, &file)?;
    let data_dir = file.required(
        args.data_dir,
        keys.data_dir.clone(),
        "--data-dir",
        "proxy.data_dir",
    )?;
    let origins = file.required(
        args.origins
            .cluster_config(keys.origin.as_ref(), keys.replicas),
        None,
        "--origin",
        "proxy.origin",
    )?;
    let build_index = file.required(
        args.build_index,
        keys.build_index,
        "--build-index",
        "proxy.build_index",
    )?;
    let listen = args
        .listen
        .or(keys.listen)
        .unwrap_or(defaults::PROXY_LISTEN);
    let mut config = ProxyConfig::new(data_dir, origins, build_index, listen);
    config.http = http;
    keys.uploads
        .apply(&mut config.uploads, &mut config.sweep_interval)
        .map_err(|e| file.error(e))?;
    serve::run_until(
        Stop::Signals,
        serve(config, serve::print_listening("proxy")),
    )
}

/// Serves the push API on `config.listen`, uploads staged under `<data_dir>/uploads`, blobs
/// to the origin, tags to the build-index: opens the upload store, binds, calls `ready`,
/// serves (and sweeps idle uploads). `shoal proxy` and `shoal dev` run it.
pub async fn serve(config: ProxyConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), String> {
    let root = config.data_dir.join("uploads");
    let (store, _report) = UploadStore::open(&root, config.uploads.clone())
        .map_err(|e| format!("upload store in {}: {e}", root.display()))?;
    let store = Arc::new(store);
    let origins = origins::resolve(config.origins)?;
    let client = HttpClient::new(ClientConfig::default());
    let registry = Registry::with_cluster(client.clone(), origins.clone(), config.build_index);
    let sweep_interval = config.sweep_interval;
    serve::serve_http(
        "proxy",
        config.listen,
        config.http,
        || async move {
            origins::watch(&origins, &client, "proxy").await;
            let sweeper = Proxy::new(Arc::clone(&store), registry.clone());
            compio::runtime::spawn(async move {
                loop {
                    compio::time::sleep(sweep_interval).await;
                    sweeper.expire_idle_uploads().await;
                }
            })
            .detach();
            Ok(Proxy::new(store, registry))
        },
        ready,
    )
    .await
}
