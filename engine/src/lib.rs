//! `shoal-engine`: the thread-per-core data plane (shards, piece store, P2P transport,
//! bandwidth limits, tracker client).
//!
//! The engine is the only caller of `shoal-proto`'s `handle_*` / `poll_*` methods on real
//! sockets and disks. It is built by the engine issue; today it only fixes the crate's place
//! in the workspace, so that the layering (engine depends on proto, never on servers/ or
//! tools/) is checked by the compiler from the first commit.

pub use shoal_proto as proto;
