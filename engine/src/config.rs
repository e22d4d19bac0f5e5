//! The engine's configuration: every bound and switch, with its default in one place
//! ([`EngineConfig::new`]) and its checks in [`EngineConfig::validate`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::swarm::SwarmConfig;

use crate::store::StoreConfig;
use crate::transport::UploadPath;

/// Most shards an engine runs (one per core; more is a configuration mistake).
pub const SHARDS_MAX: usize = 256;

/// Which compio driver the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring, falling back to epoll by itself where io_uring is refused (seccomp).
    Auto,
    /// Force the polling (epoll) driver: the path taken under Docker's and containerd's
    /// default seccomp profiles. Uploads then copy (no splice from files on this driver).
    Poll,
}

/// Everything an engine needs to start. Build it with [`EngineConfig::new`], then change the
/// fields that differ from the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of the piece store (`Store::open`).
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// Shard threads; 0 means one per available core.
    pub shards: usize,
    /// Pin shard `i` to CPU `i mod n_cpus`.
    pub pin_threads: bool,
    pub driver: Driver,
    /// Where peers connect. Port 0 picks a free port (read it back with
    /// `Engine::listen_addr`). Every shard listens on it (`SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Trackers of this cluster (the one per blob is chosen by hash ring).
    pub trackers: Vec<SocketAddr>,
    /// One tracker request (connect, send, answer) takes at most this long before the next
    /// tracker is tried.
    pub tracker_timeout: Duration,
    /// This host is a dedicated origin seeder (it announces as one and never dials).
    pub is_origin: bool,
    /// The per-(blob, stripe) swarm tunables. `seed` is ignored: each swarm gets its own
    /// from the engine's random seed.
    pub swarm: SwarmConfig,
    /// Peer connections of this host, over every blob.
    pub connections_max: usize,
    /// Peer connections of one blob, over all its stripes.
    pub connections_per_blob_max: usize,
    /// Egress limit for piece uploads, bytes per second (`None`: unlimited).
    pub egress_bytes_per_s: Option<u64>,
    /// Ingress limit for piece downloads, bytes per second (`None`: unlimited).
    pub ingress_bytes_per_s: Option<u64>,
    pub upload_path: UploadPath,
    /// Congestion control of peer connections (`TCP_CONGESTION`: `reno`, `cubic`, `bbr`, any
    /// the kernel lists in `net.ipv4.tcp_available_congestion_control`); `None`: the system's
    /// default. Set on the peer listeners (accepted connections inherit it) and on every
    /// dialled connection; `Engine::start` fails if the kernel refuses it.
    pub tcp_congestion: Option<String>,
    /// Piece payloads being received on one shard hold at most this many bytes of buffers;
    /// a connection waits for room before it reads a payload (TCP holds the rest back). A
    /// piece larger than this is still received, alone.
    pub receive_buffer_bytes_per_shard: usize,
    /// An outbound connection that does not connect within this time fails.
    pub dial_timeout: Duration,
    /// An accepted connection whose handshake does not arrive within this time is closed.
    pub accept_handshake_timeout: Duration,
    /// Commands queued for one shard (from the API and from other shards).
    pub shard_queue_len: usize,
    /// Blobs in a swarm at once (downloading or seeding). Starting one more stops seeding
    /// the complete blob that started longest ago (it stays in the cache); with every slot
    /// downloading, the new download is refused.
    pub swarm_blobs_max: usize,
    /// How often the cache is checked for blobs to evict (`StoreConfig`'s idle, age and
    /// disk watermark rules; a seeded blob that is chosen stops seeding). Also checked
    /// before each new download, counting its size as used. `None`: never (origins, whose
    /// blobs may not be written back to storage yet).
    pub evict_interval: Option<Duration>,
}

impl EngineConfig {
    /// Defaults for an agent storing under `data_dir` and announcing to `trackers`:
    /// - one shard per core, pinned, io_uring (epoll where refused);
    /// - peers on port 0 of every address (the tracker hands out the source address it sees);
    /// - 1024 connections per host, 256 per blob (a blob of 16 stripes at the swarm's 16
    ///   connections each);
    /// - no bandwidth limits; uploads by splice;
    /// - 16 MiB of receive buffers per shard: 16 pieces of 1 MiB in flight, enough for the
    ///   swarm's 8 requests per stripe on two stripes, and a 4 GiB download stays well under
    ///   64 MiB of memory.
    pub fn new(data_dir: impl Into<PathBuf>, trackers: Vec<SocketAddr>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            store: StoreConfig::default(),
            shards: 0,
            pin_threads: true,
            driver: Driver::Auto,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            trackers,
            tracker_timeout: Duration::from_secs(2),
            is_origin: false,
            swarm: SwarmConfig::default(),
            connections_max: 1024,
            connections_per_blob_max: 256,
            egress_bytes_per_s: None,
            ingress_bytes_per_s: None,
            upload_path: UploadPath::Splice,
            tcp_congestion: None,
            receive_buffer_bytes_per_shard: 16 << 20,
            dial_timeout: Duration::from_secs(3),
            accept_handshake_timeout: Duration::from_secs(10),
            shard_queue_len: 1024,
            swarm_blobs_max: 256,
            evict_interval: Some(Duration::from_secs(60)),
        }
    }

    /// Makes this config an origin's: origin swarm defaults, more connections.
    pub fn into_origin(mut self) -> EngineConfig {
        self.is_origin = true;
        self.swarm = SwarmConfig::origin();
        self.connections_max = 8192;
        self.connections_per_blob_max = 4096;
        self.evict_interval = None;
        self
    }

    /// The shard count in effect.
    pub fn n_shards(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Rejects configurations that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_shards() > SHARDS_MAX {
            return Err(format!("shards: at most {SHARDS_MAX}"));
        }
        if self.trackers.is_empty() {
            return Err("trackers: at least one tracker address is needed".into());
        }
        if self.tracker_timeout.is_zero() || self.dial_timeout.is_zero() {
            return Err("tracker_timeout and dial_timeout must be positive".into());
        }
        if self.accept_handshake_timeout.is_zero() {
            return Err("accept_handshake_timeout must be positive".into());
        }
        if self.connections_max == 0 || self.connections_per_blob_max == 0 {
            return Err("connections_max and connections_per_blob_max must be positive".into());
        }
        if self.connections_per_blob_max > self.connections_max {
            return Err("connections_per_blob_max must not exceed connections_max".into());
        }
        if self.egress_bytes_per_s == Some(0) || self.ingress_bytes_per_s == Some(0) {
            return Err("egress_bytes_per_s and ingress_bytes_per_s must be positive".into());
        }
        if self.receive_buffer_bytes_per_shard == 0 {
            return Err("receive_buffer_bytes_per_shard must be positive".into());
        }
        if let Some(name) = &self.tcp_congestion {
            check_tcp_congestion(name).map_err(|e| format!("tcp_congestion: {e}"))?;
        }
        if self.swarm_blobs_max == 0 {
            return Err("swarm_blobs_max must be positive".into());
        }
        if self.evict_interval == Some(Duration::ZERO) {
            return Err("evict_interval must be positive (None: never)".into());
        }
        if self.is_origin && self.evict_interval.is_some() {
            return Err(
                "evict_interval: an origin does not evict (must be None with is_origin)".into(),
            );
        }
        if self.shard_queue_len == 0 {
            return Err("shard_queue_len must be positive".into());
        }
        if self.is_origin != self.swarm.is_origin {
            return Err("is_origin and swarm.is_origin must agree (use into_origin)".into());
        }
        self.swarm.validate().map_err(|e| e.to_string())?;
        self.store.validate().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Longest congestion control name the kernel takes (`TCP_CA_NAME_MAX` less its NUL).
const TCP_CONGESTION_NAME_MAX: usize = 15;

/// `Ok` if the kernel lets a socket use congestion control `name`, else why not, with the
/// names it has.
pub fn check_tcp_congestion(name: &str) -> Result<(), String> {
    let available = || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    if name.is_empty()
        || name.len() > TCP_CONGESTION_NAME_MAX
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "{name:?} is not a congestion control name (available: {})",
            available()
        ));
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("a socket to try {name:?} on: {e}"))?;
    socket.set_tcp_congestion(name.as_bytes()).map_err(|e| {
        format!(
            "the kernel refuses {name:?}: {e} (available: {})",
            available()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::EngineConfig;
    use std::time::Duration;

    fn config() -> EngineConfig {
        EngineConfig::new("/nonexistent", vec!["127.0.0.1:7100".parse().unwrap()])
    }

    #[test]
    fn defaults_and_the_origin_variant_are_valid() {
        assert_eq!(config().validate(), Ok(()));
        assert_eq!(config().into_origin().validate(), Ok(()));
    }

    #[test]
    fn bad_settings_are_named() {
        let check = |tweak: fn(&mut EngineConfig), field: &str| {
            let mut config = config();
            tweak(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.contains(field), "{error} should name {field}");
        };
        check(|c| c.trackers.clear(), "trackers");
        check(|c| c.shards = 100_000, "shards");
        check(|c| c.connections_max = 0, "connections_max");
        check(
            |c| c.connections_per_blob_max = 2000,
            "connections_per_blob_max",
        );
        check(|c| c.egress_bytes_per_s = Some(0), "egress_bytes_per_s");
        check(
            |c| c.receive_buffer_bytes_per_shard = 0,
            "receive_buffer_bytes_per_shard",
        );
        check(|c| c.is_origin = true, "is_origin");
        check(
            |c| c.evict_interval = Some(Duration::ZERO),
            "evict_interval",
        );
        check(
            |c| {
                *c = config().into_origin();
                c.evict_interval = Some(Duration::from_secs(60));
            },
            "evict_interval",
        );
        check(|c| c.swarm.connections_max = 0, "connections_max");
    }
}
