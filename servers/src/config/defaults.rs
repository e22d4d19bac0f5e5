//! Built-in defaults that belong to no server's own config type: the listen addresses of the
//! components, the upload sweep interval, and `shoal dev`'s layout. The others are each
//! config type's `Default` (`EngineConfig::new`, `HttpConfig`, `OriginConfig`,
//! `UploadLimits`, `TrackerServerConfig`). The shipped examples in `configs/` state these
//! values, and a test holds them to it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The agent's pull API: on loopback, since it has no authentication.
pub const AGENT_LISTEN: SocketAddr = loopback(5000);
/// The origin's internal blob API.
pub const ORIGIN_LISTEN: SocketAddr = loopback(7200);
/// The build-index's internal tag API.
pub const BUILD_INDEX_LISTEN: SocketAddr = loopback(7300);
/// The proxy's push API.
pub const PROXY_LISTEN: SocketAddr = loopback(7400);
/// An engine's peer port: every interface, a free port.
pub const PEER_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// How often the proxy removes upload sessions idle past their timeout.
pub const UPLOAD_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// `shoal dev`: the stores' root, relative to the working directory.
pub const DEV_DATA_DIR: &str = "shoal-data";
/// `shoal dev`: the agent's pull API, the one address a client needs.
pub const DEV_AGENT_LISTEN: SocketAddr = loopback(5000);
/// `shoal dev`: the first of the other ports (tracker +0, origin +100, …).
pub const DEV_PORTS_FROM: u16 = 7100;
/// `shoal dev`: shard threads per engine.
pub const DEV_SHARDS: usize = 1;
