//! `shoal-engine`: the thread-per-core data plane (shards, piece store, P2P transport,
//! bandwidth limits, tracker client).
//!
//! The engine is the only caller of `shoal-proto`'s `handle_*` / `poll_*` methods on real
//! sockets and disks. Built by the engine issue, module by module:
//! - [`store`]: the on-disk piece store (content-addressed blobs, resumable downloads,
//!   eviction).
//! - [`tracker`]: the tracker client (announce, metainfo get/put, failover over a hash
//!   ring of trackers) and tracker-protocol framing on compio sockets.
//! - [`limit`]: bandwidth limits, one process-wide token bucket per direction that every
//!   shard draws from.
//! - [`transport`]: one peer connection's byte plumbing (frames, piece payloads hashed as
//!   they arrive, uploads by splice or copy).

pub use shoal_proto as proto;

pub mod config;
mod engine;
pub mod limit;
mod shard;
pub mod stats;
pub mod store;
pub mod tracker;
pub mod transport;

pub use config::{Driver, EngineConfig};
pub use engine::{BlobReader, BlobState, BlobStatus, Engine, EngineError};
pub use stats::{EngineStats, PeerKind, ShardStats};

#[cfg(test)]
mod test_runtime;
