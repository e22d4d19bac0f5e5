//! Talking to trackers: the client peers use to announce and to fetch and store metainfo,
//! and the framing both it and the tracker server use on TCP.
//!
//! The protocol itself (frames, bounds) is `shoal_proto::tracker_wire`; this module only
//! moves its frames over compio sockets.
//! - [`client`]: [`TrackerClient`], with per-blob tracker order from a hash ring and
//!   failover.
//! - [`frame`]: [`FrameReader`] (whole frames off a stream, buffer bounded by the codec) and
//!   [`write_frame`].

pub mod client;
pub mod frame;

pub use client::{
    AttemptError, PUT_METAINFO_REPLICAS, TIMEOUT_DEFAULT, TrackerClient, TrackerClientConfig,
    TrackerClientError,
};
pub use frame::{FrameError, FrameReader, write_frame};
pub use shoal_proto::tracker_wire::Announce;
