//! `shoal-proto`: Shoal's peer-to-peer protocol as pure logic.
//!
//! **This crate performs no I/O whatsoever.** It has no sockets, no files, no clock, no async
//! runtime and no OS randomness. Time comes in as an [`Instant`] argument and every random
//! choice comes from an [`Rng`] seeded by the caller, so a run is replayable from its seed.
//! Three drivers run the same state machines: the engine (real sockets and disks), the
//! simulator in `perf/` (virtual time, thousands of hosts), and this crate's own tests.
//!
//! Layout:
//! - [`types`]: OCI digests, peer ids, info hashes, piece and stripe indexes.
//! - [`bitfield`]: the set of pieces a peer has, and its wire form.
//! - [`metainfo`]: piece length table, per-piece hashes, stripes, canonical encoding.
//! - [`piece_check`]: checking a piece as it arrives (its SHA-256, or SHA-256 chaining values
//!   that make the pieces prove the blob digest).
//! - [`wire`]: the framed peer protocol (`check` then `parse`; bounded everywhere).
//! - [`swarm`]: the per-(blob, stripe) state machine: connections, piece picking, pipelining,
//!   timeouts, endgame, blacklisting. Driven through `handle_*` and `poll_*`.
//! - [`tracker`]: the tracker's handout policy (peer store with TTL, random samples).
//! - [`tracker_wire`]: the peer ↔ tracker protocol over TCP (announce, metainfo get/put).
//! - [`ring`]: rendezvous hashing for placing blobs on origins and trackers.
//! - [`time`], [`rng`]: virtual time and the seeded generator.

pub mod bitfield;
pub mod limits;
pub mod metainfo;
pub mod piece_check;
pub mod ring;
pub mod rng;
pub mod swarm;
pub mod time;
pub mod tracker;
pub mod tracker_wire;
pub mod types;
pub mod wire;

pub use bitfield::Bitfield;
pub use rng::Rng;
pub use time::Instant;
pub use types::{Digest, DigestError, InfoHash, PeerId, PieceIndex, StripeIndex};
