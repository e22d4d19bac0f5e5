//! `shoal agent`: the per-host agent. One engine (its shards on their own threads) and the
//! OCI pull API over HTTP on one compio runtime on the main thread. Serving HTTP on the
//! shards themselves (one listener per shard, `SO_REUSEPORT`, the blob read on the shard that
//! accepted) is a later optimisation.
//!
//! `--origin` and `--build-index` (together) make it serve manifests and tags; `--proxy`
//! makes it forward pushes, so `docker push` and `docker pull` both work against it alone.
//! Settings: `--config FILE` (`configs/agent.toml`), flags over the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::agent::Agent;
use shoal_servers::cluster::ClusterConfig;
use shoal_servers::config::{AgentFile, defaults};
use shoal_servers::http::client::{ClientConfig, HttpClient};
use shoal_servers::registry::Registry;

use crate::origins::{self, OriginsArgs};
use crate::peer::EngineArgs;
use crate::serve::{self, HttpArgs};
use crate::settings::ConfigFile;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// A config file (`configs/agent.toml` documents every key); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// The pull API's address (keep it on loopback: it has no authentication) [default:
    /// 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The peer port [default: 0.0.0.0:0].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The origins, where manifests are read (with --build-index).
    #[command(flatten)]
    origins: OriginsArgs,
    /// The build-index's internal API, where tags are resolved (with --origin).
    #[arg(long)]
    build_index: Option<SocketAddr>,
    /// The proxy's push API, where pushes and catalog requests are forwarded.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the agent until the process is killed. Prints `peer listening ADDR`, then
/// `agent listening on ADDR` once the pull API accepts connections.
pub fn run(args: AgentArgs) -> Result<(), String> {
    let file = ConfigFile::<AgentFile>::load(args.config.as_deref())?;
    let keys = &file.keys;
    let http = args.http.config(&keys.http, &file)?;
    let engine_config =
        args.engine
            .config_with_file(false, args.peer_listen, &keys.engine, &file)?;
    let listen = args
        .listen
        .or(keys.agent.listen)
        .unwrap_or(defaults::AGENT_LISTEN);
    let origin = args
        .origins
        .cluster_config(keys.agent.origin.as_ref(), keys.agent.replicas);
    let build_index = args.build_index.or(keys.agent.build_index);
    if origin.is_some() != build_index.is_some() {
        return Err(file.error(
            "--origin and --build-index (agent.origin and agent.build_index) go together: \
             give both or neither",
        ));
    }
    let proxy = args.proxy.or(keys.agent.proxy);
    let engine = Engine::start(engine_config).map_err(|e| e.to_string())?;
    println!("peer listening {}", engine.listen_addr());
    let served = engine.clone();
    let result = serve::run("agent", listen, http, || async move {
        agent(served, origin.zip(build_index), proxy).await
    });
    engine.shutdown();
    result
}

/// The agent over `engine`, reading manifests and tags from `registry` (the origins, the
/// build-index) and forwarding pushes to `proxy`, when given. Resolves the origins and starts
/// their health checks on the current runtime.
pub async fn agent(
    engine: Engine,
    registry: Option<(ClusterConfig, SocketAddr)>,
    proxy: Option<SocketAddr>,
) -> Result<Agent, String> {
    let client = HttpClient::new(ClientConfig::default());
    let mut agent = Agent::new(engine);
    if let Some((origins, build_index)) = registry {
        let origins = origins::resolve(origins)?;
        origins::watch(&origins, &client, "agent").await;
        agent = agent.with_registry(Registry::with_cluster(client.clone(), origins, build_index));
    }
    if let Some(proxy) = proxy {
        agent = agent.with_proxy(client, proxy);
    }
    Ok(agent)
}
