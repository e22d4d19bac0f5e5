//! `shoal dev`: every component in one process, on loopback, on embedded defaults: the
//! first thing a new user runs.
//!
//! | component   | address (`--ports-from 7100`)                  | store              |
//! |-------------|------------------------------------------------|--------------------|
//! | tracker     | 127.0.0.1:7100                                 | (memory)           |
//! | origin      | 127.0.0.1:7200 (internal API), peer :7201      | `DIR/origin`       |
//! | build-index | 127.0.0.1:7300                                 | `DIR/build-index`  |
//! | proxy       | 127.0.0.1:7400 (push API)                      | `DIR/proxy`        |
//! | agent       | `--agent-listen` (127.0.0.1:5000), peer :7501  | `DIR/agent`        |
//!
//! Each component runs on a thread of its own with its own compio runtime (the engines keep
//! their shard threads, `--shards` each), through the same `serve` function as its own
//! subcommand. They start one after the other (each waits for the one before to serve: the
//! origin announces to the tracker, the proxy talks to the origin and the build-index); a
//! component that fails to start stops those already started and the error names it. Once
//! every listener accepts a connection, `shoal dev ready` is printed. SIGINT/SIGTERM (or a
//! component ending by itself) stops them in the reverse order: each thread's runtime ends,
//! its engine shuts down (shards joined, store closed), the thread is joined.
//!
//! Settings: `--config FILE` (`configs/dev.toml`: the data directory, the ports, the shard
//! count), flags over the file; every other setting is the components' default.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::{Either, select};
use shoal_engine::EngineConfig;
use shoal_servers::cluster::ClusterConfig;
use shoal_servers::config::{DevFile, defaults};
use shoal_servers::http::HttpConfig;
use shoal_servers::origin::OriginConfig;

use crate::proxy::ProxyConfig;
use crate::serve::{self, EngineGuard, Stop};
use crate::settings::ConfigFile;

/// Offsets from `--ports-from` of every port but the agent's HTTP one.
const TRACKER_OFFSET: u16 = 0;
const ORIGIN_OFFSET: u16 = 100;
const ORIGIN_PEER_OFFSET: u16 = 101;
const BUILD_INDEX_OFFSET: u16 = 200;
const PROXY_OFFSET: u16 = 300;
const AGENT_PEER_OFFSET: u16 = 401;

/// How long a listener may take to accept the readiness check's connection.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct DevArgs {
    /// A config file (`configs/dev.toml` documents every key); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the stores live: `DIR/origin`, `DIR/build-index`, `DIR/proxy`, `DIR/agent`
    /// [default: shoal-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The agent's pull API (what `docker pull 127.0.0.1:5000/…` talks to) [default:
    /// 127.0.0.1:5000].
    #[arg(long)]
    agent_listen: Option<SocketAddr>,
    /// First port of the others, on 127.0.0.1: tracker +0, origin +100 (peer +101),
    /// build-index +200, proxy +300, agent's peer port +401 [default: 7100].
    #[arg(long)]
    ports_from: Option<u16>,
    /// Shard threads per engine (origin and agent) [default: 1].
    #[arg(long)]
    shards: Option<usize>,
}

/// `shoal dev`'s settings: defaults, then the file's `[dev]`, then the flags; the file's
/// `[engine]` goes over both engines' defaults.
#[derive(Debug)]
struct DevSettings {
    data_dir: PathBuf,
    agent_listen: SocketAddr,
    ports_from: u16,
    shards: usize,
    /// The config file (its `[engine]`, and its path for messages).
    file: ConfigFile<DevFile>,
}

/// `[engine]` keys that `shoal dev` sets itself, and the `[dev]` key that decides each.
const DEV_ENGINE_KEYS: [(&str, &str); 4] = [
    ("engine.data_dir", "dev.data_dir"),
    ("engine.trackers", "dev.ports_from"),
    ("engine.peer_listen", "dev.ports_from"),
    ("engine.shards", "dev.shards"),
];

impl DevSettings {
    fn new(args: &DevArgs) -> Result<DevSettings, String> {
        let file = ConfigFile::<DevFile>::load(args.config.as_deref())?;
        let keys = &file.keys.dev;
        let settings = DevSettings {
            data_dir: args
                .data_dir
                .clone()
                .or_else(|| keys.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from(defaults::DEV_DATA_DIR)),
            agent_listen: args
                .agent_listen
                .or(keys.agent_listen)
                .unwrap_or(defaults::DEV_AGENT_LISTEN),
            ports_from: args
                .ports_from
                .or(keys.ports_from)
                .unwrap_or(defaults::DEV_PORTS_FROM),
            shards: args.shards.or(keys.shards).unwrap_or(defaults::DEV_SHARDS),
            file,
        };
        let file = &settings.file;
        let engine = &file.keys.engine;
        let set = [
            engine.data_dir.is_some(),
            engine.trackers.is_some(),
            engine.peer_listen.is_some(),
            engine.shards.is_some(),
        ];
        for (set, (key, instead)) in set.into_iter().zip(DEV_ENGINE_KEYS) {
            if set {
                return Err(file.error(format!("{key}: shoal dev decides it (see {instead})")));
            }
        }
        if settings.shards == 0 {
            return Err(file.error("--shards (dev.shards) must be at least 1"));
        }
        if settings.ports_from.checked_add(AGENT_PEER_OFFSET).is_none() {
            return Err(file.error(format!(
                "--ports-from (dev.ports_from) {}: ports up to +{AGENT_PEER_OFFSET} must stay below 65536",
                settings.ports_from
            )));
        }
        Ok(settings)
    }
}

/// Every address `shoal dev` uses.
#[derive(Debug, Clone, Copy)]
struct Ports {
    tracker: SocketAddr,
    origin: SocketAddr,
    origin_peer: SocketAddr,
    build_index: SocketAddr,
    proxy: SocketAddr,
    agent: SocketAddr,
    agent_peer: SocketAddr,
}

impl Ports {
    fn new(args: &DevSettings) -> Result<Ports, String> {
        let at = |offset: u16| {
            args.ports_from
                .checked_add(offset)
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                .ok_or_else(|| {
                    format!(
                        "--ports-from {}: ports up to +{AGENT_PEER_OFFSET} must stay below 65536",
                        args.ports_from
                    )
                })
        };
        Ok(Ports {
            tracker: at(TRACKER_OFFSET)?,
            origin: at(ORIGIN_OFFSET)?,
            origin_peer: at(ORIGIN_PEER_OFFSET)?,
            build_index: at(BUILD_INDEX_OFFSET)?,
            proxy: at(PROXY_OFFSET)?,
            agent: args.agent_listen,
            agent_peer: at(AGENT_PEER_OFFSET)?,
        })
    }
}

/// One component on its thread. Dropping `stop` (or sending on it) ends the thread's run.
#[derive(Debug)]
struct Running {
    name: &'static str,
    addr: SocketAddr,
    stop: flume::Sender<()>,
    thread: JoinHandle<Result<(), String>>,
}

/// Runs every component until SIGINT or SIGTERM; `Err` when one fails to start or stops by
/// itself (everything started is stopped first).
pub fn run(args: &DevArgs) -> Result<(), String> {
    let args = &DevSettings::new(args)?;
    let ports = Ports::new(args)?;
    let started_at = Instant::now();
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("compio runtime: {e}"))?;
    runtime.block_on(async {
        // The handlers first: a signal during start-up stops everything cleanly too.
        let mut signals = pin!(serve::signals());
        let early = serve::poll_once(&mut signals).await;
        let (exited_tx, exited_rx) = flume::unbounded::<&'static str>();
        let mut running = Vec::new();
        if let Err(error) = start_all(args, &ports, &exited_tx, &mut running) {
            let _ = stop_all(running);
            return Err(error);
        }
        drop(exited_tx);
        if let Err(error) = check_accepting(&running) {
            let _ = stop_all(running);
            return Err(error);
        }
        println!(
            "shoal dev ready in {} ms (data in {})",
            started_at.elapsed().as_millis(),
            args.data_dir.display()
        );
        let outcome = match early {
            Some(result) => result,
            None => match select(signals, pin!(exited_rx.recv_async())).await {
                Either::Left((result, _)) => result,
                Either::Right((exited, _)) => Err(format!(
                    "{} stopped by itself",
                    exited.unwrap_or("a component")
                )),
            },
        };
        println!("shoal dev stopping");
        let stopped = stop_all(running);
        outcome.and(stopped)
    })
}

/// Starts the components one after the other, each once the one before serves, pushing each
/// onto `running`.
fn start_all(
    args: &DevSettings,
    ports: &Ports,
    exited: &flume::Sender<&'static str>,
    running: &mut Vec<Running>,
) -> Result<(), String> {
    let data = &args.data_dir;
    let http = HttpConfig::default();
    let file = &args.file;
    let engine_config = |dir: &Path, listen: SocketAddr, origin: bool| {
        let mut config = EngineConfig::new(dir, vec![ports.tracker]);
        if origin {
            config = config.into_origin();
        }
        config.listen = listen;
        config.shards = args.shards;
        // Several engines share the machine's cores: pinning would stack them on the same.
        config.pin_threads = false;
        file.keys
            .engine
            .overlay(&mut config)
            .map_err(|e| file.error(e))?;
        config
            .validate()
            .map_err(|e| file.error(format!("engine: {e}")))?;
        Ok::<_, String>(config)
    };
    // Both engines' settings are checked before anything starts or is created.
    let origin_dir = data.join("origin");
    let origin_engine = engine_config(&origin_dir, ports.origin_peer, true)?;
    let agent_dir = data.join("agent");
    let agent_engine = engine_config(&agent_dir, ports.agent_peer, false)?;
    std::fs::create_dir_all(data).map_err(|e| format!("data dir {}: {e}", data.display()))?;

    let tracker = ports.tracker;
    running.push(spawn("tracker", tracker, exited, move |ready| {
        let config = shoal_servers::tracker::TrackerServerConfig {
            listen: tracker,
            ..Default::default()
        };
        crate::tracker::serve(config, ready)
    })?);
    println!("tracker     listening on {tracker} (memory only)");

    let config = origin_engine;
    let (origin, origin_http) = (ports.origin, http.clone());
    running.push(spawn("origin", origin, exited, move |ready| async move {
        let engine = EngineGuard::start(config)?;
        let served = engine.engine().clone();
        let config = OriginConfig::default();
        crate::origin::serve(served, origin, config, origin_http, ready).await
    })?);
    println!(
        "origin      listening on {origin} (peer port {}, store {})",
        ports.origin_peer,
        origin_dir.display()
    );

    let index_dir = data.join("build-index");
    let (build_index, index_http, dir) = (ports.build_index, http.clone(), index_dir.clone());
    running.push(spawn(
        "build-index",
        build_index,
        exited,
        move |ready| async move {
            crate::build_index::serve(&dir, build_index, None, index_http, ready).await
        },
    )?);
    println!(
        "build-index listening on {build_index} (store {})",
        index_dir.display()
    );

    let proxy_dir = data.join("proxy");
    let proxy = ports.proxy;
    let origins = ClusterConfig::new(vec![origin.to_string()]);
    let mut config = ProxyConfig::new(proxy_dir.clone(), origins.clone(), build_index, proxy);
    config.http = http.clone();
    running.push(spawn("proxy", proxy, exited, move |ready| {
        crate::proxy::serve(config, ready)
    })?);
    println!(
        "proxy       listening on {proxy} (push API, store {})",
        proxy_dir.display()
    );

    let config = agent_engine;
    let agent = ports.agent;
    running.push(spawn("agent", agent, exited, move |ready| async move {
        let engine = EngineGuard::start(config)?;
        let served = engine.engine().clone();
        // Manifests and tags from the origin and build-index, pushes forwarded to the proxy:
        // one address for `docker push` and `docker pull`.
        let make = || async move {
            crate::agent::agent(served, Some((origins, build_index)), Some(proxy)).await
        };
        serve::serve_http("agent", agent, http, make, ready).await
    })?);
    println!(
        "agent       listening on {agent} (pull API, peer port {}, store {})",
        ports.agent_peer,
        agent_dir.display()
    );
    Ok(())
}

/// Runs `component` on a thread named `shoal-<name>` with a compio runtime of its own, and
/// waits until it calls its `ready` argument (it serves: `Ok`) or ends (its error, prefixed
/// with `name`). When the thread's run ends, `name` goes to `exited`.
fn spawn<C, F>(
    name: &'static str,
    addr: SocketAddr,
    exited: &flume::Sender<&'static str>,
    component: C,
) -> Result<Running, String>
where
    C: FnOnce(Box<dyn FnOnce(SocketAddr)>) -> F + Send + 'static,
    F: Future<Output = Result<(), String>>,
{
    let (ready_tx, ready_rx) = flume::bounded::<SocketAddr>(1);
    let (stop, stop_rx) = flume::bounded::<()>(1);
    let exited = exited.clone();
    let thread = std::thread::Builder::new()
        .name(format!("shoal-{name}"))
        .spawn(move || {
            let ready = Box::new(move |bound: SocketAddr| {
                let _ = ready_tx.send(bound);
            });
            let result = serve::run_until(Stop::Channel(stop_rx), component(ready));
            let _ = exited.send(name);
            result.map_err(|e| {
                if e.starts_with(name) {
                    e
                } else {
                    format!("{name}: {e}")
                }
            })
        })
        .map_err(|e| format!("{name}: starting its thread: {e}"))?;
    match ready_rx.recv() {
        Ok(_) => Ok(Running {
            name,
            addr,
            stop,
            thread,
        }),
        // The component ended before serving: its error.
        Err(_) => Err(join(name, thread)
            .err()
            .unwrap_or_else(|| format!("{name}: ended before serving"))),
    }
}

fn join(name: &str, thread: JoinHandle<Result<(), String>>) -> Result<(), String> {
    thread
        .join()
        .map_err(|_| format!("{name}: its thread panicked"))?
}

/// Connects once to every component's listener: each accepts (the kernel completes the
/// handshake from the listen backlog), so every address answers.
fn check_accepting(running: &[Running]) -> Result<(), String> {
    for component in running {
        TcpStream::connect_timeout(&component.addr, READY_CONNECT_TIMEOUT).map_err(|e| {
            format!(
                "{}: not accepting connections on {}: {e}",
                component.name, component.addr
            )
        })?;
    }
    Ok(())
}

/// Stops the components in the reverse order of their start and joins their threads; the
/// first error of any of them.
fn stop_all(running: Vec<Running>) -> Result<(), String> {
    let mut outcome = Ok(());
    for component in running.into_iter().rev() {
        let _ = component.stop.send(());
        let result = join(component.name, component.thread);
        if let Err(error) = result {
            eprintln!("shoal: {error}");
            outcome = outcome.and(Err(error));
        }
    }
    outcome
}
