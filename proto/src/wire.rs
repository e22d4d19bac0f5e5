//! The peer wire protocol: length-prefixed, versioned frames.
//!
//! (Codec to be completed: frame layout, `check`, `parse`, `encode`, bounds.)

use crate::bitfield::Bitfield;
use crate::types::{InfoHash, PeerId, PieceIndex, StripeIndex};

/// The first message on every connection, in both directions. A connection carries exactly
/// one (blob, stripe): the one named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub info_hash: InfoHash,
    pub stripe: StripeIndex,
    pub peer_id: PeerId,
    /// The sender is a dedicated origin seeder (the receiver then asks it only for pieces that
    /// no other peer has).
    pub is_origin: bool,
    /// The sender's pieces of this stripe; bit `i` is piece `first_piece_of_stripe + i`.
    pub bitfield: Bitfield,
}

/// Announces that the payload of a piece follows: exactly `length` raw bytes after the frame.
/// The payload is not part of the frame (it is streamed, never buffered by the codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceHeader {
    pub piece: PieceIndex,
    pub length: u32,
}

/// Every message of the peer protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Handshake(Handshake),
    /// The sender now has this piece (verified).
    Have(PieceIndex),
    /// Please send this whole piece.
    Request(PieceIndex),
    /// A piece's payload follows this frame.
    Piece(PieceHeader),
    /// The sender no longer wants this piece (endgame duplicate, or it arrived elsewhere).
    Cancel(PieceIndex),
    /// The sender will not serve this request (it lacks the piece or is at its upload limit).
    Reject(PieceIndex),
    /// The sender has every piece of the stripe.
    Complete,
    /// Nothing to say; keeps an idle connection from timing out.
    Keepalive,
}
