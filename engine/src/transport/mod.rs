//! One peer connection's byte plumbing: frames in and out through proto's codec, piece
//! payloads hashed as they arrive, piece uploads from a file by splice or by copy.
//!
//! This layer makes no protocol decision: the swarm state machine (driven by the shard loop)
//! says what to send and whether to take a payload; this module moves the bytes. It knows
//! nothing of timers either: every `async` method here can be raced against one (see
//! *Cancellation*).
//!
//! # Shape
//!
//! A [`PeerConn`] wraps one `compio::net::TcpStream` and is the two halves it splits into:
//! - [`PeerReader`]: [`PeerReader::recv`] returns the next [`Message`]; after a
//!   [`Message::Piece`] header the caller takes the payload with
//!   [`PeerReader::recv_piece_payload`] (into its piece buffer, hashed chunk by chunk while
//!   the rest is still arriving, so the verdict is ready when the last byte is) or throws it
//!   away with [`PeerReader::skip_piece_payload`]. A payload is never handed over unverified:
//!   the caller gets the bytes together with a [`Verdict`] and writes them to the store only
//!   if it is [`Verdict::Verified`].
//! - [`PeerWriter`]: [`PeerWriter::send_message`] for every frame but a piece, and
//!   [`PeerWriter::send_piece`], which writes the header and then the payload from a file
//!   (a complete blob, or a download's data file), by [`UploadPath::Splice`] or
//!   [`UploadPath::Copy`].
//!
//! `PeerConn::into_split` gives the halves to two tasks, so that a connection can receive
//! while it uploads.
//!
//! # Bounds
//!
//! Every buffer has a fixed size, named below, and none is sized by a peer:
//! - receive buffer: [`RECV_BUF_LEN`] = one largest frame + [`READ_CHUNK_LEN`], allocated
//!   once per connection;
//! - piece buffer: the caller's, reused; a payload longer than its capacity is refused
//!   ([`TransportError::BufferTooSmall`]) before a byte of it is read. Payload lengths are at
//!   most [`limits::PIECE_LEN_MAX`], which the codec enforces;
//! - frame send buffer: one largest frame ([`SEND_BUF_LEN`]);
//! - copy upload: one [`UPLOAD_CHUNK_LEN`] buffer, allocated on the first copied piece;
//! - splice upload: one pipe of [`PIPE_LEN`] (if the kernel lets us resize it), created on the
//!   first spliced piece.
//!
//! # Errors and cancellation
//!
//! A peer that sends a malformed frame, or closes in the middle of a frame or a payload,
//! cannot be resynchronised: the half that saw it is *poisoned* and answers every later call
//! with [`TransportError::Poisoned`]; the caller drops the connection. The same happens when a
//! future of this module is dropped before it finished (for instance because a timer won the
//! race): with completion-based I/O the bytes of a cancelled read may already be gone, so the
//! stream position is unknown. Dropping a future to close the connection is fine; dropping
//! one and carrying on with the connection is not, and is refused.
//!
//! # Upload paths
//!
//! [`UploadPath::Splice`] moves the payload file → pipe → socket without it entering user
//! space (`compio::driver::op::Splice` on io_uring, whose kernel workers do the pipe → socket
//! half). [`UploadPath::Copy`] reads chunks with `read_exact_at` and writes them. On the
//! polling driver (where io_uring is forbidden) splice from a regular file fails with EPERM,
//! so a writer made on that driver uses Copy whatever was asked; [`PeerWriter::upload_path`]
//! says which path is in effect. Which path wins is measured by
//! `perf/src/bin/transport_bench.rs`.
//!
//! [`Message`]: shoal_proto::wire::Message
//! [`Message::Piece`]: shoal_proto::wire::Message::Piece
//!
//! Measured (1 GiB in 4 MiB pieces from tmpfs, one connection on loopback, sender and
//! receiver as separate processes pinned to the two cores of the development machine, which
//! two simulator runs were loading at the same time: load average ≈ 6, so throughputs are
//! low and noisy; medians of 3 rounds, three runs):
//!
//! | mode | GB/s | vs std+sha | sender CPU-s/GiB | receiver CPU-s/GiB |
//! |---|---|---|---|---|
//! | std (blocking copy, no hashing) | 0.53–0.94 | 1.16–1.76 | 0.45–0.58 | 0.18–0.27 |
//! | std+sha (receiver hashes) | 0.46–0.53 | 1 | 0.41–0.54 | 0.75–0.77 |
//! | `UploadPath::Copy` | 0.50–0.65 | 1.03–1.22 | 0.42–0.64 | 0.79–0.81 |
//! | `UploadPath::Splice` | 0.53–0.66 | 1.15–1.24 | 0.19–0.26 | 0.98–1.00 |
//!
//! Splice halves the sender's CPU and is at least as fast, so it is the path to keep. Its
//! receiver pays more system time for the same code, probably because on loopback the
//! receiver's copy then reads payload no CPU has touched (the copy path's sender has just
//! pulled it into the shared cache); a NIC DMAs into memory either way. SHA-256 is most of
//! the receiver's cost (≈ 0.6 CPU-s/GiB, SHA-NI).

mod accept;
mod conn;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::io;

use shoal_proto::limits;
use shoal_proto::wire::{self, WireError};

pub use accept::read_handshake;
pub use conn::PeerConn;
pub use reader::{PeerReader, Verdict};
pub use writer::{PeerWriter, UploadPath};

/// Size of the `frame_len` prefix of every frame.
const LENGTH_PREFIX_LEN: usize = 4;

/// The largest frame on the wire, length prefix included (a Piece's payload excluded).
pub const FRAME_TOTAL_LEN_MAX: usize = LENGTH_PREFIX_LEN + wire::FRAME_LEN_MAX;

/// Bytes one read asks for at least when the receive buffer holds no complete frame.
pub const READ_CHUNK_LEN: usize = 64 * 1024;

/// Capacity of a connection's receive buffer, fixed for its life: what is left of an
/// incomplete frame (less than [`FRAME_TOTAL_LEN_MAX`]) plus one read of [`READ_CHUNK_LEN`].
pub const RECV_BUF_LEN: usize = FRAME_TOTAL_LEN_MAX + READ_CHUNK_LEN;

/// Most bytes one socket read puts into a piece buffer before they are hashed. Smaller reads
/// hash data sooner after it arrived (still in cache); larger ones make fewer system calls.
pub const PAYLOAD_READ_LEN_MAX: usize = 1024 * 1024;

/// Capacity of a connection's frame send buffer: one largest frame.
pub const SEND_BUF_LEN: usize = FRAME_TOTAL_LEN_MAX;

/// The copy upload path's buffer: the payload goes out in writes of this size (the first one
/// carries the piece header in front).
pub const UPLOAD_CHUNK_LEN: usize = 1024 * 1024;

/// Size the splice path asks for its pipe (`F_SETPIPE_SZ`). If the kernel refuses (the
/// per-user pipe limits), the pipe keeps its default size and splices take more rounds.
pub const PIPE_LEN: usize = 1024 * 1024;

const _: () = assert!(READ_CHUNK_LEN >= FRAME_TOTAL_LEN_MAX);
const _: () = assert!(PAYLOAD_READ_LEN_MAX <= limits::PIECE_LEN_MAX as usize);
const _: () = assert!(UPLOAD_CHUNK_LEN > SEND_BUF_LEN);
const _: () = assert!(PIPE_LEN.is_power_of_two());

/// What can go wrong on a peer connection. Every variant but `BufferTooSmall`,
/// `NoPayloadPending`, `PayloadPending` and `PieceNeedsPayload` (the caller's mistakes, caught
/// before any I/O) leaves the half that returned it poisoned: drop the connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("malformed frame from peer: {0}")]
    Malformed(#[from] WireError),
    /// The peer closed the connection cleanly, between two frames.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame or of a piece payload.
    #[error(
        "peer closed the connection in the middle of a {during} ({received} of {expected} bytes)"
    )]
    Truncated {
        during: &'static str,
        received: usize,
        /// For a frame whose length prefix did not arrive whole, the 4 bytes of the prefix.
        expected: usize,
    },
    #[error("{op} on a peer connection: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// An earlier error, or a future of this connection dropped before it finished, left the
    /// stream at an unknown position.
    #[error("peer connection unusable after an earlier error or a cancelled operation")]
    Poisoned,
    #[error("piece payload of {length} bytes does not fit the piece buffer of {capacity} bytes")]
    BufferTooSmall { length: usize, capacity: usize },
    #[error("no piece payload is pending (the last message received was not a piece header)")]
    NoPayloadPending,
    #[error(
        "a piece payload of {length} bytes is pending: take it (recv_piece_payload) or skip it before the next recv"
    )]
    PayloadPending { length: usize },
    #[error("a piece header goes out with its payload: use send_piece")]
    PieceNeedsPayload,
    /// The first message on an accepted connection was not a handshake.
    #[error("peer sent a {kind} message before its handshake")]
    NotHandshake { kind: &'static str },
}

impl TransportError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> TransportError {
        move |source| TransportError::Io { op, source }
    }
}
