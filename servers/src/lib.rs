//! `shoal-servers`: the thin HTTP shims (agent, origin, tracker, build-index, proxy) over the
//! engine, and the storage backends. The only crate that speaks HTTP.
//!
//! Layout:
//! - [`tracker`]: a minimal tracker server (one compio runtime, one thread) speaking the
//!   tracker protocol of `shoal_proto::tracker_wire` over TCP. The sharded tracker comes
//!   later.
//! - [`uploads`]: blob upload sessions for the push API (chunked and monolithic uploads,
//!   every digest verified), on local disk; blocking, called off the data plane.
//!
//! The HTTP servers arrive with the registry-front issue.

pub use shoal_engine as engine;

pub mod tracker;
pub mod uploads;
