//! `shoal agent`: the per-host agent. One engine (its shards on their own threads) and the
//! OCI pull API over HTTP on one compio runtime on the main thread. Serving HTTP on the
//! shards themselves (one listener per shard, `SO_REUSEPORT`, the blob read on the shard that
//! accepted) is a later optimisation.

use std::net::SocketAddr;
use std::rc::Rc;

use clap::Args;
use shoal_engine::Engine;
use shoal_servers::agent::Agent;
use shoal_servers::http::{self, HttpConfig};

use crate::peer::EngineArgs;

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
    /// HTTP connections served at once (more wait in the kernel's backlog).
    #[arg(long, default_value_t = HttpConfig::default().connections_max)]
    http_connections_max: usize,
}

/// Runs the agent until the process is killed. Prints `peer listening ADDR`, then
/// `agent listening on ADDR` once the pull API accepts connections.
pub fn run(args: AgentArgs) -> Result<(), String> {
    let config = HttpConfig {
        connections_max: args.http_connections_max,
        ..HttpConfig::default()
    };
    config.validate()?;
    let engine =
        Engine::start(args.engine.config(false, args.peer_listen)).map_err(|e| e.to_string())?;
    println!("peer listening {}", engine.listen_addr());
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("compio runtime: {e}"))?;
    let result = runtime.block_on(async {
        let listener = compio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        println!("agent listening on {bound}");
        http::serve(listener, Rc::new(Agent::new(engine.clone())), config)
            .await
            .map_err(|e| format!("agent: {e}"))
    });
    engine.shutdown();
    result
}
