//! `shoal agent`: the per-host agent. One engine (its shards on their own threads) and the
//! OCI pull API over HTTP on one compio runtime on the main thread. Serving HTTP on the
//! shards themselves (one listener per shard, `SO_REUSEPORT`, the blob read on the shard that
//! accepted) is a later optimisation.
//!
//! `--origin` and `--build-index` (together) make it serve manifests and tags; `--proxy`
//! makes it forward pushes, so `docker push` and `docker pull` both work against it alone.

use std::net::SocketAddr;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::agent::Agent;
use shoal_servers::http::client::{ClientConfig, HttpClient};
use shoal_servers::registry::Registry;

use crate::peer::EngineArgs;
use crate::serve::{self, HttpArgs};

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The pull API's address (keep it on loopback: it has no authentication).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// The peer port.
    #[arg(long, default_value = "0.0.0.0:0")]
    peer_listen: SocketAddr,
    /// The origin's internal API, where manifests are read (with --build-index).
    #[arg(long, requires = "build_index")]
    origin: Option<SocketAddr>,
    /// The build-index's internal API, where tags are resolved (with --origin).
    #[arg(long, requires = "origin")]
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
    let config = args.http.config()?;
    let engine =
        Engine::start(args.engine.config(false, args.peer_listen)).map_err(|e| e.to_string())?;
    println!("peer listening {}", engine.listen_addr());
    let served = engine.clone();
    let result = serve::run("agent", args.listen, config, || async move {
        Ok(agent(served, args.origin.zip(args.build_index), args.proxy))
    });
    engine.shutdown();
    result
}

/// The agent over `engine`, reading manifests and tags from `registry` (origin, build-index)
/// and forwarding pushes to `proxy`, when given.
pub fn agent(
    engine: Engine,
    registry: Option<(SocketAddr, SocketAddr)>,
    proxy: Option<SocketAddr>,
) -> Agent {
    let client = HttpClient::new(ClientConfig::default());
    let mut agent = Agent::new(engine);
    if let Some((origin, build_index)) = registry {
        agent = agent.with_registry(Registry::new(client.clone(), origin, build_index));
    }
    if let Some(proxy) = proxy {
        agent = agent.with_proxy(client, proxy);
    }
    agent
}
