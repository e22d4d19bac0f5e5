//! `shoal proxy`: the OCI distribution push API. Uploads are staged and verified under
//! `--data-dir`, blobs go to one origin and tags to one build-index (clusters come later).
//! One compio runtime on the main thread; the upload store's blocking work runs on compio's
//! blocking threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::serve::{self, HttpArgs, Stop};
use shoal_servers::http::HttpConfig;
use shoal_servers::http::client::{ClientConfig, HttpClient};
use shoal_servers::proxy::Proxy;
use shoal_servers::registry::Registry;
use shoal_servers::uploads::{UploadLimits, UploadStore};

/// How often idle upload sessions are swept.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The push API's address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Where upload sessions are staged (`<data-dir>/uploads`).
    #[arg(long)]
    data_dir: PathBuf,
    /// The origin's internal API.
    #[arg(long)]
    origin: SocketAddr,
    /// The build-index's internal API.
    #[arg(long)]
    build_index: SocketAddr,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the proxy until SIGINT or SIGTERM. Prints `proxy listening on ADDR` once it accepts
/// connections.
pub fn run(args: ProxyArgs) -> Result<(), String> {
    let config = args.http.config()?;
    serve::run_until(
        Stop::Signals,
        serve(
            &args.data_dir,
            args.origin,
            args.build_index,
            args.listen,
            config,
            serve::print_listening("proxy"),
        ),
    )
}

/// Serves the push API on `listen`, uploads staged under `<data_dir>/uploads`, blobs to
/// `origin`, tags to `build_index`: opens the upload store, binds, calls `ready`, serves (and
/// sweeps idle uploads). `shoal proxy` and `shoal dev` run it.
pub async fn serve(
    data_dir: &Path,
    origin: SocketAddr,
    build_index: SocketAddr,
    listen: SocketAddr,
    config: HttpConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let root = data_dir.join("uploads");
    let (store, _report) = UploadStore::open(&root, UploadLimits::default())
        .map_err(|e| format!("upload store in {}: {e}", root.display()))?;
    let store = Arc::new(store);
    let registry = Registry::new(
        HttpClient::new(ClientConfig::default()),
        origin,
        build_index,
    );
    serve::serve_http(
        "proxy",
        listen,
        config,
        || async move {
            let sweeper = Proxy::new(Arc::clone(&store), registry.clone());
            compio::runtime::spawn(async move {
                loop {
                    compio::time::sleep(EXPIRE_INTERVAL).await;
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
