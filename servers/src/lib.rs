//! `shoal-servers`: the thin HTTP shims (agent, origin, tracker, build-index, proxy) over the
//! engine, and the storage backends. The only crate that speaks HTTP.
//!
//! Layout:
//! - [`tracker`]: a minimal tracker server (one compio runtime, one thread) speaking the
//!   tracker protocol of `shoal_proto::tracker_wire` over TCP. The sharded tracker comes
//!   later.
//! - [`build_index`]: the build-index's tag store (persistent, versioned tag → digest map
//!   on local disk) and manifest reference parsing; its HTTP server comes with the
//!   registry front.
//!
//! The HTTP servers arrive with the registry-front issue.

pub use shoal_engine as engine;

pub mod build_index;
pub mod tracker;
