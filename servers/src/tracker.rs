//! The tracker server: peer discovery and metainfo over the tracker protocol
//! (`shoal_proto::tracker_wire`) on TCP, sharded over one compio runtime per shard.
//!
//! **Shards.** [`TrackerServerConfig::shards`] threads (default: one per core), each with its
//! own compio runtime, its own listener on the shared port (`SO_REUSEPORT`: the kernel spreads
//! connections over them) and its own state: a [`PeerStore`] for the swarms whose info hash it
//! owns and a metainfo cache for the digests it owns ([`shard_of_info_hash`],
//! [`shard_of_digest`]: seeded xxh3 of the key, mod the shard count). A request is read and
//! checked by the shard that accepted its connection, then answered there if that shard owns
//! it, or else sent to its owner through the owner's bounded `flume` queue
//! ([`SHARD_QUEUE_LEN`] requests; a full queue makes the sender wait, within the request
//! timeout) with a one-slot reply channel. Connections stay where they were accepted; no
//! state is shared between shards but the connection count (one atomic) and the queues.
//!
//! What it does:
//! - Accepts at most [`TrackerServerConfig::connections_max`] connections at once over all
//!   shards; one more gets an `Error` response with code `Full` and is closed.
//! - Reads requests in a loop per connection (a connection may carry many, one at a time).
//!   A connection idle for [`TrackerServerConfig::request_timeout`], or whose request is not
//!   answered and written within it, is closed.
//! - Announce: the peer is recorded at the connection's **source IP** and the announced port,
//!   never at an address the peer claims. Port 0 is refused.
//! - GetMetainfo / PutMetainfo: each shard caches digest → canonical metainfo, bounded by
//!   count and bytes (its share of [`TrackerServerConfig::metainfo_max`] and
//!   [`TrackerServerConfig::metainfo_bytes_max`], at least one largest metainfo); the oldest
//!   stored entry goes first. A put is decoded with [`Metainfo`]`::decode` and refused (code
//!   `BadRequest`, with the reason) if it does not decode; it is stored under the digest
//!   inside it.
//! - A get that misses asks the origins ([`TrackerServerConfig::origins`], ordered per digest
//!   by the hash ring; `GET /internal/metainfo/<digest>` of each in turn) and caches and
//!   returns the first metainfo that decodes and is the digest's; concurrent misses for one
//!   digest share one fetch, and at most [`FETCHES_PER_SHARD_MAX`] fetches run per shard
//!   (beyond: `Full`). `NotFound` when no origin is configured, or when no origin had it and
//!   at least one said so; `Internal` naming every origin and why when all failed.
//! - A malformed frame gets an `Error` response (code `Malformed`, the reason) and the
//!   connection is closed; other connections are unaffected. Nothing here panics on input.
//! - Each shard sweeps its [`PeerStore`] every [`TrackerServerConfig::expire_interval`].
//!
//! Memory bound: per shard, the peer store's (see `TrackerConfig`: its bounds are per shard)
//! and its metainfo share; the queues ([`SHARD_QUEUE_LEN`] requests per shard); per
//! connection one frame buffer, which grows only as bytes arrive, up to one largest frame
//! (about 32 MiB, for a PutMetainfo).

mod metainfo;
mod origins;
mod route;
mod shard;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shoal_proto::ring::RING_MEMBERS_MAX;
use shoal_proto::tracker::TrackerConfig;
use shoal_proto::tracker_wire::METAINFO_LEN_MAX;

#[cfg(test)]
use metainfo::MetainfoStore;
pub use origins::{ORIGIN_CONNECT_TIMEOUT, ORIGIN_RESPONSE_TIMEOUT};
pub use route::{shard_of_digest, shard_of_info_hash};
use shard::{Job, Shard, Shared};

/// Default listen address of `shoal tracker`.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7100);

/// Most shards of one tracker.
pub const SHARDS_MAX: usize = 256;

/// Requests waiting in one shard's queue from the other shards.
pub const SHARD_QUEUE_LEN: usize = 1024;

/// Metainfo fetches from the origins running at once on one shard.
pub const FETCHES_PER_SHARD_MAX: usize = 64;

/// Backlog of each shard's listener.
const LISTEN_BACKLOG: i32 = 1024;

/// How long a stopped shard's runtime keeps running for its sockets' closes to complete (so
/// that a restart finds the port free).
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// Settings of a [`serve_sharded`] (or [`serve`]) run. Defaults from [`TrackerServerConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerServerConfig {
    /// Where `shoal tracker` binds (ignored by [`serve_sharded`], which takes bound listeners).
    pub listen: SocketAddr,
    /// Shards, each a thread with its own runtime (the first runs on [`serve_sharded`]'s caller).
    pub shards: usize,
    /// The origins' internal API addresses, asked for metainfo on a miss. Empty: a miss is
    /// not found. At most [`RING_MEMBERS_MAX`], no duplicates.
    pub origins: Vec<SocketAddr>,
    /// The handout policy and its bounds (per shard).
    pub tracker: TrackerConfig,
    /// Most metainfos kept; beyond it the oldest stored goes.
    pub metainfo_max: usize,
    /// Most bytes of metainfo kept; beyond it the oldest stored go. At least one largest
    /// metainfo ([`METAINFO_LEN_MAX`]); each shard keeps its share of it, or one largest
    /// metainfo if that is more.
    pub metainfo_bytes_max: usize,
    /// Most connections open at once.
    pub connections_max: usize,
    /// Longest wait for the next request on a connection (and for its answer to be
    /// written); then the connection is closed.
    pub request_timeout: Duration,
    /// How often expired peers are swept out.
    pub expire_interval: Duration,
}

/// One shard per core (at most [`SHARDS_MAX`]).
pub fn shards_default() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(SHARDS_MAX)
}

impl Default for TrackerServerConfig {
    /// Listen on 127.0.0.1:7100; one shard per core; no origins; the default handout
    /// policy; 10,000 metainfos and 1 GiB of them; 1,024 connections; 30 s request timeout
    /// (peers announce every 5 s, but on a fresh connection each time, so a connection is
    /// normally short); sweep every second.
    fn default() -> TrackerServerConfig {
        TrackerServerConfig {
            listen: LISTEN_DEFAULT,
            shards: shards_default(),
            origins: Vec::new(),
            tracker: TrackerConfig::default(),
            metainfo_max: 10_000,
            metainfo_bytes_max: 1 << 30,
            connections_max: 1024,
            request_timeout: Duration::from_secs(30),
            expire_interval: Duration::from_secs(1),
        }
    }
}

impl TrackerServerConfig {
    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.tracker.validate().map_err(|e| e.to_string())?;
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(format!(
                "tracker server config: shards must be 1 to {SHARDS_MAX}, not {}",
                self.shards
            ));
        }
        if self.origins.len() > RING_MEMBERS_MAX {
            return Err(format!(
                "tracker server config: origins lists {} addresses, more than {RING_MEMBERS_MAX}",
                self.origins.len()
            ));
        }
        for (i, origin) in self.origins.iter().enumerate() {
            if self.origins[..i].contains(origin) {
                return Err(format!(
                    "tracker server config: origins lists {origin} twice"
                ));
            }
        }
        if self.metainfo_max == 0 {
            return Err("tracker server config: metainfo_max must be positive".into());
        }
        if self.metainfo_bytes_max < METAINFO_LEN_MAX {
            return Err(format!(
                "tracker server config: metainfo_bytes_max must be at least {METAINFO_LEN_MAX} \
                 (one largest metainfo), not {}",
                self.metainfo_bytes_max
            ));
        }
        if self.connections_max == 0 {
            return Err("tracker server config: connections_max must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return Err("tracker server config: request_timeout must be positive".into());
        }
        if self.expire_interval.is_zero() {
            return Err("tracker server config: expire_interval must be positive".into());
        }
        Ok(())
    }

    /// Metainfos one shard keeps: its share of the count.
    fn metainfo_max_per_shard(&self) -> usize {
        self.metainfo_max.div_ceil(self.shards)
    }

    /// Metainfo bytes one shard keeps: its share, and at least one largest metainfo.
    fn metainfo_bytes_max_per_shard(&self) -> usize {
        (self.metainfo_bytes_max / self.shards).max(METAINFO_LEN_MAX)
    }
}

/// Binds `shards` listeners on `listen` (`SO_REUSEPORT`). Errors name the address.
///
/// `SO_REUSEPORT` would let a second tracker (of the same user) join the port of one already
/// running and take half its connections, so the port is first probed with a socket
/// without it, which fails (`EADDRINUSE`) if anything listens there; port 0 is resolved by
/// that probe too.
pub fn bind(listen: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let named =
        |error: io::Error| io::Error::new(error.kind(), format!("listening on {listen}: {error}"));
    let socket = |reuse_port: bool| -> io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        Ok(socket)
    };
    let addr = {
        let probe = socket(false).map_err(named)?;
        probe.bind(&listen.into()).map_err(named)?;
        probe
            .local_addr()
            .map_err(named)?
            .as_socket()
            .ok_or_else(|| named(io::Error::other("not an IP address")))?
    };
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = socket(true).map_err(named)?;
        socket.bind(&addr.into()).map_err(named)?;
        socket.listen(LISTEN_BACKLOG).map_err(named)?;
        listeners.push(std::net::TcpListener::from(socket));
    }
    Ok(listeners)
}

/// Serves the tracker protocol on `listener` as one shard on the caller's compio runtime
/// (`config.shards` is not used) until accepting fails for good (it does not, short of the
/// runtime stopping). Errors only on a config that does not validate
/// ([`io::ErrorKind::InvalidInput`]). `seed` drives the peer store's random samples.
pub async fn serve(
    listener: compio::net::TcpListener,
    config: TrackerServerConfig,
    seed: u64,
) -> io::Result<()> {
    let config = TrackerServerConfig {
        shards: 1,
        ..config
    };
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let (sender, jobs) = flume::bounded::<Job>(SHARD_QUEUE_LEN);
    let shared = Arc::new(Shared::new(config, vec![sender]));
    tracing::info!(addr = ?listener.local_addr().ok(), shards = 1, "tracker serving");
    Shard::start(0, shared, seed, listener)?.run(jobs).await
}

/// Serves the tracker protocol on `listeners` (one per shard, from [`bind`]) until accepting
/// fails for good (it does not, short of the runtime stopping). Shard 0 runs on the caller's
/// compio runtime; the others on threads of their own, stopped and joined when this future
/// is dropped. Errors on a config that does not validate, or listeners that are not one per
/// shard ([`io::ErrorKind::InvalidInput`]), and when a shard cannot start. `seed` drives the
/// peer stores' random samples (each shard's derived from it).
pub async fn serve_sharded(
    listeners: Vec<std::net::TcpListener>,
    config: TrackerServerConfig,
    seed: u64,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if listeners.len() != config.shards {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "tracker: {} listeners for {} shards",
                listeners.len(),
                config.shards
            ),
        ));
    }
    let n_shards = config.shards;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n_shards)
        .map(|_| flume::bounded::<Job>(SHARD_QUEUE_LEN))
        .unzip();
    let shared = Arc::new(Shared::new(config, senders));
    tracing::info!(addr = ?listeners[0].local_addr().ok(), shards = n_shards, "tracker serving");

    let mut inputs = listeners.into_iter().zip(receivers);
    let Some((listener_0, jobs_0)) = inputs.next() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tracker: no shard",
        ));
    };
    let mut threads = ShardThreads::default();
    for (id, (listener, jobs)) in inputs.enumerate().map(|(i, input)| (i + 1, input)) {
        threads
            .start(id, Arc::clone(&shared), seed, listener, jobs)
            .await?;
    }
    let listener_0 = compio::net::TcpListener::from_std(listener_0)?;
    let result = Shard::start(0, shared, seed, listener_0)?.run(jobs_0).await;
    drop(threads);
    result
}

/// The shard threads other than the caller's: stopped (their stop channel hung up) and
/// joined when dropped.
#[derive(Default)]
struct ShardThreads {
    running: Vec<(flume::Sender<()>, JoinHandle<()>)>,
}

impl ShardThreads {
    /// Starts shard `id` on a new thread; returns once it serves, or with why it could not.
    async fn start(
        &mut self,
        id: usize,
        shared: Arc<Shared>,
        seed: u64,
        listener: std::net::TcpListener,
        jobs: flume::Receiver<Job>,
    ) -> io::Result<()> {
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let (started_tx, started_rx) = flume::bounded::<io::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name(format!("shoal-tracker-{id}"))
            .spawn(move || {
                let runtime = match compio::runtime::Runtime::new() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = compio::net::TcpListener::from_std(listener)
                        .and_then(|listener| Shard::start(id, shared, seed, listener));
                    let shard = match started {
                        Ok(shard) => shard,
                        Err(error) => {
                            let _ = started_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let serving = std::pin::pin!(shard.run(jobs));
                    let stopped = std::pin::pin!(stop_rx.recv_async());
                    if let futures_util::future::Either::Left((Err(error), _)) =
                        futures_util::future::select(serving, stopped).await
                    {
                        tracing::error!(shard = id, %error, "tracker shard failed");
                    }
                    compio::time::sleep(CLOSE_GRACE).await;
                });
            })
            .map_err(|e| io::Error::new(e.kind(), format!("tracker shard {id} thread: {e}")))?;
        self.running.push((stop_tx, thread));
        match started_rx.recv_async().await {
            Ok(result) => {
                result.map_err(|e| io::Error::new(e.kind(), format!("tracker shard {id}: {e}")))
            }
            Err(_) => Err(io::Error::other(format!(
                "tracker shard {id} ended while starting"
            ))),
        }
    }
}

impl Drop for ShardThreads {
    fn drop(&mut self) {
        let running = std::mem::take(&mut self.running);
        let (stops, threads): (Vec<_>, Vec<_>) = running.into_iter().unzip();
        drop(stops);
        for thread in threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
