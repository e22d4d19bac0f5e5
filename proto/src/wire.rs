//! The peer wire protocol: length-prefixed, versioned frames.
//!
//! Every message travels as one frame. All integers are big-endian.
//!
//! ```text
//! frame    = frame_len:u32  version:u8  kind:u8  body
//! frame_len = number of bytes after the frame_len field (1 + 1 + body length)
//!
//! kind  message     body
//! 0     Handshake   info_hash[32] stripe:u32 peer_id[20] flags:u8 n_bits:u32 bitfield[ceil(n_bits/8)]
//! 1     Have        piece:u32
//! 2     Request     piece:u32
//! 3     Piece       piece:u32 length:u32          (then `length` payload bytes, outside the frame)
//! 4     Cancel      piece:u32
//! 5     Reject      piece:u32
//! 6     Complete    (empty)
//! 7     Keepalive   (empty)
//! ```
//!
//! Rules, all enforced by [`parse`]:
//! - `version` is [`WIRE_VERSION`]; `frame_len` lies in `FRAME_LEN_MIN..=FRAME_LEN_MAX`.
//! - Each kind has exactly one acceptable body length (for a handshake, the one its `n_bits`
//!   implies): no short bodies, no trailing bytes inside a frame.
//! - Handshake `flags`: bit 0 is `is_origin`; every other bit must be clear.
//! - Handshake `n_bits` is at most [`limits::STRIPE_PIECES_MAX`]; the bitfield is in
//!   [`Bitfield`]'s wire form (most significant bit first, spare bits of the last byte zero).
//! - Piece `length` lies in `1..=`[`limits::PIECE_LEN_MAX`].
//!
//! Together these make the encoding canonical: a message has exactly one encoding, and
//! [`encode`] of a parsed message reproduces the bytes it was parsed from.
//!
//! # Piece payloads are outside the frame
//!
//! A [`Message::Piece`] frame carries only the [`PieceHeader`]. The `length` bytes of payload
//! follow the frame directly on the stream, are *not* counted in `frame_len`, and are never
//! read by this codec: the engine hashes them and streams them to disk without buffering a
//! whole piece. After [`parse`] returns a `Piece` header and `consumed`, the next
//! `header.length` bytes of the stream (starting at `buf[consumed]`, some of which may already
//! be in the buffer) are payload; the caller must take them before it calls [`parse`] again.
//! Likewise [`encode`] writes only the header; the sender writes the payload after it.
//!
//! # Reading frames
//!
//! [`check`] is a cheap completeness test: `Ok(None)` means "read more bytes", which is normal
//! and not an error. It rejects a malformed frame as soon as the offending bytes are visible:
//! a bad `frame_len` from the first 4 bytes, a bad version or kind from the next two, a body
//! length that cannot belong to the kind as soon as the kind (or, for a handshake, `n_bits`)
//! is known, and bad handshake flags or piece lengths as soon as that field arrives. So a
//! reader never waits for (or buffers) the body of a frame it will reject. Only the contents
//! of a handshake bitfield are left to [`parse`], which runs `check` and then decodes the one
//! complete frame.
//!
//! Nothing is allocated on the strength of a length read from the wire, except the handshake
//! bitfield, whose size is bounded by [`limits::STRIPE_PIECES_MAX`] before it is built.

use std::fmt;

use crate::bitfield::{Bitfield, BitfieldError};
use crate::limits;
use crate::types::{InfoHash, PeerId, PieceIndex, StripeIndex};

/// The protocol version this build speaks (the frame's `version` byte). There is no
/// negotiation: a frame of any other version is rejected.
pub const WIRE_VERSION: u8 = 1;

/// Size of the `frame_len` field that starts every frame.
const LENGTH_PREFIX_LEN: usize = 4;

/// Bytes before a frame's body: `frame_len`, `version`, `kind`.
pub const FRAME_HEADER_LEN: usize = LENGTH_PREFIX_LEN + 1 + 1;

/// Smallest acceptable `frame_len`: `version` and `kind` with an empty body.
pub const FRAME_LEN_MIN: usize = FRAME_HEADER_LEN - LENGTH_PREFIX_LEN;

/// Handshake body before the bitfield: `info_hash`, `stripe`, `peer_id`, `flags`, `n_bits`.
const HANDSHAKE_FIXED_LEN: usize = 32 + 4 + 20 + 1 + 4;
/// Offsets within a handshake body, for early rejection in [`check`].
const HANDSHAKE_FLAGS_OFFSET: usize = 32 + 4 + 20;
const HANDSHAKE_N_BITS_OFFSET: usize = HANDSHAKE_FLAGS_OFFSET + 1;

/// Handshake flag bit 0: the sender is an origin seeder. No other bit is defined.
const FLAG_IS_ORIGIN: u8 = 0x01;

/// Body of Have, Request, Cancel and Reject: a piece index.
const PIECE_INDEX_BODY_LEN: usize = 4;
/// Body of a Piece header: piece index, payload length.
const PIECE_HEADER_BODY_LEN: usize = 4 + 4;
/// Offset of the payload length within a Piece header body.
const PIECE_LENGTH_OFFSET: usize = 4;

/// Largest handshake bitfield on the wire.
const BITFIELD_BYTES_MAX: usize = limits::STRIPE_PIECES_MAX as usize / 8;

/// Largest acceptable `frame_len` (bytes after the length field): a handshake carrying a
/// bitfield of [`limits::STRIPE_PIECES_MAX`] bits. Every other kind is smaller. A whole frame
/// on the wire is at most `4 + FRAME_LEN_MAX` bytes (plus, for a Piece, its payload).
pub const FRAME_LEN_MAX: usize = FRAME_LEN_MIN + HANDSHAKE_FIXED_LEN + BITFIELD_BYTES_MAX;

const _: () = assert!(HANDSHAKE_N_BITS_OFFSET + 4 == HANDSHAKE_FIXED_LEN);
const _: () = assert!(PIECE_LENGTH_OFFSET + 4 == PIECE_HEADER_BODY_LEN);
const _: () = assert!(limits::STRIPE_PIECES_MAX.is_multiple_of(8));
const _: () = assert!(FRAME_LEN_MIN + PIECE_HEADER_BODY_LEN <= FRAME_LEN_MAX);
const _: () = assert!(FRAME_LEN_MAX == 575);
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);
// `usize_from` below relies on this.
const _: () = assert!(usize::BITS >= u32::BITS);

/// A message kind: the frame's `kind` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Handshake = 0,
    Have = 1,
    Request = 2,
    Piece = 3,
    Cancel = 4,
    Reject = 5,
    Complete = 6,
    Keepalive = 7,
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 8] = [
        Kind::Handshake,
        Kind::Have,
        Kind::Request,
        Kind::Piece,
        Kind::Cancel,
        Kind::Reject,
        Kind::Complete,
        Kind::Keepalive,
    ];

    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0 => Some(Kind::Handshake),
            1 => Some(Kind::Have),
            2 => Some(Kind::Request),
            3 => Some(Kind::Piece),
            4 => Some(Kind::Cancel),
            5 => Some(Kind::Reject),
            6 => Some(Kind::Complete),
            7 => Some(Kind::Keepalive),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    /// Lowercase name, for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Have => "have",
            Kind::Request => "request",
            Kind::Piece => "piece",
            Kind::Cancel => "cancel",
            Kind::Reject => "reject",
            Kind::Complete => "complete",
            Kind::Keepalive => "keepalive",
        }
    }

    /// The body length every frame of this kind has; `None` for a handshake, whose body
    /// length depends on its `n_bits`.
    fn fixed_body_len(self) -> Option<usize> {
        match self {
            Kind::Handshake => None,
            Kind::Have | Kind::Request | Kind::Cancel | Kind::Reject => Some(PIECE_INDEX_BODY_LEN),
            Kind::Piece => Some(PIECE_HEADER_BODY_LEN),
            Kind::Complete | Kind::Keepalive => Some(0),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes do not form a valid frame. Any of these means the peer is broken or hostile:
/// the stream cannot be resynchronised, so the connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame length {len} exceeds the maximum of {max}")]
    FrameTooLong { len: usize, max: usize },
    #[error("frame length {len} is below the minimum of {min} (version and kind bytes)")]
    FrameTooShort { len: usize, min: usize },
    #[error("unsupported wire version {0} (this build speaks version {WIRE_VERSION})", WIRE_VERSION = WIRE_VERSION)]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("{kind} frame body must be {expected} bytes, got {actual}")]
    BodyLength {
        kind: Kind,
        expected: usize,
        actual: usize,
    },
    #[error("handshake frame body must be at least {min} bytes, got {actual}")]
    HandshakeTooShort { min: usize, actual: usize },
    #[error("handshake flags {0:#04x} have undefined bits set (only bit 0, is_origin, is defined)")]
    BadFlags(u8),
    #[error("handshake bitfield of {n_bits} bits exceeds the maximum of {max}")]
    TooManyBits { n_bits: u32, max: u32 },
    #[error("handshake: {0}")]
    Bitfield(#[from] BitfieldError),
    #[error("piece payload length {length} is outside 1..={max}")]
    PieceLength { length: u32, max: u32 },
}

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
    /// Nothing to say; keeps the transport (and any middlebox state) alive. A connection that
    /// exchanges no requests or pieces is still closed after the swarm's idle timeout.
    Keepalive,
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Handshake(_) => Kind::Handshake,
            Message::Have(_) => Kind::Have,
            Message::Request(_) => Kind::Request,
            Message::Piece(_) => Kind::Piece,
            Message::Cancel(_) => Kind::Cancel,
            Message::Reject(_) => Kind::Reject,
            Message::Complete => Kind::Complete,
            Message::Keepalive => Kind::Keepalive,
        }
    }
}

/// Checks whether `buf` starts with a complete frame, without decoding it.
///
/// - `Ok(None)`: not enough bytes yet (read more and call again).
/// - `Ok(Some(n))`: a complete frame of `n` bytes (including the 4-byte length; excluding a
///   Piece's payload) starts the buffer.
/// - `Err(_)`: the frame is malformed as far as `buf` shows. Each field is judged as soon as
///   its bytes are present; only a handshake's bitfield contents are left to [`parse`].
///
/// Runs in constant time and never looks past the frame it checks.
pub fn check(buf: &[u8]) -> Result<Option<usize>, WireError> {
    Ok(check_frame(buf)?.map(|frame| frame.total_len))
}

/// Parses the frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the message and the number of bytes it
/// took from `buf` (`consumed <= buf.len()`). Bytes after the frame are left alone: a second
/// frame, or the payload of a [`Message::Piece`] (see the module docs: the caller must take
/// `header.length` payload bytes before parsing again).
///
/// Never panics, whatever `buf` holds, and allocates only a handshake's bitfield (at most
/// `STRIPE_PIECES_MAX / 8` bytes of bits).
pub fn parse(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    let Some(frame) = check_frame(buf)? else {
        return Ok(None);
    };
    let message = decode_body(frame.kind, frame.body)?;
    Ok(Some((message, frame.total_len)))
}

/// Size of `message`'s frame on the wire, including the 4-byte length (for a Piece, excluding
/// its payload).
///
/// # Panics
///
/// If the message cannot be encoded (see [`encode`]).
pub fn encoded_len(message: &Message) -> usize {
    FRAME_HEADER_LEN + body_len(message)
}

/// Appends `message`'s frame to `out`. For a [`Message::Piece`] only the header is written;
/// the sender writes the `length` payload bytes after it.
///
/// # Panics
///
/// On a message that no peer may send, which is a bug in the caller, not a network event:
/// a handshake whose bitfield has more than [`limits::STRIPE_PIECES_MAX`] bits, or a piece
/// header whose `length` is outside `1..=`[`limits::PIECE_LEN_MAX`].
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    let frame_start = out.len();
    let total_len = encoded_len(message);
    let frame_len = total_len - LENGTH_PREFIX_LEN;
    assert!((FRAME_LEN_MIN..=FRAME_LEN_MAX).contains(&frame_len));
    out.reserve(total_len);
    // Lossless: frame_len <= FRAME_LEN_MAX, which fits in a u32 (asserted at compile time).
    out.extend_from_slice(&(frame_len as u32).to_be_bytes());
    out.push(WIRE_VERSION);
    out.push(message.kind().byte());
    match message {
        Message::Handshake(handshake) => encode_handshake(handshake, out),
        Message::Have(piece)
        | Message::Request(piece)
        | Message::Cancel(piece)
        | Message::Reject(piece) => out.extend_from_slice(&piece.0.to_be_bytes()),
        Message::Piece(header) => {
            out.extend_from_slice(&header.piece.0.to_be_bytes());
            out.extend_from_slice(&header.length.to_be_bytes());
        }
        Message::Complete | Message::Keepalive => {}
    }
    assert_eq!(out.len() - frame_start, total_len);
}

fn encode_handshake(handshake: &Handshake, out: &mut Vec<u8>) {
    let n_bits = handshake.bitfield.len();
    out.extend_from_slice(&handshake.info_hash.0);
    out.extend_from_slice(&handshake.stripe.0.to_be_bytes());
    out.extend_from_slice(&handshake.peer_id.0);
    out.push(if handshake.is_origin {
        FLAG_IS_ORIGIN
    } else {
        0
    });
    // Lossless: body_len asserted n_bits <= STRIPE_PIECES_MAX.
    out.extend_from_slice(&(n_bits as u32).to_be_bytes());
    let bits_start = out.len();
    out.resize(bits_start + Bitfield::byte_len(n_bits), 0);
    handshake.bitfield.write_bytes(&mut out[bits_start..]);
}

/// Body length of an encodable message; asserts that it is encodable.
fn body_len(message: &Message) -> usize {
    match message {
        Message::Handshake(handshake) => {
            let n_bits = handshake.bitfield.len();
            assert!(
                n_bits <= usize_from(limits::STRIPE_PIECES_MAX),
                "handshake bitfield of {n_bits} bits exceeds STRIPE_PIECES_MAX"
            );
            HANDSHAKE_FIXED_LEN + Bitfield::byte_len(n_bits)
        }
        Message::Piece(header) => {
            assert!(
                piece_length_is_valid(header.length),
                "piece payload length {} is outside 1..=PIECE_LEN_MAX",
                header.length
            );
            PIECE_HEADER_BODY_LEN
        }
        Message::Have(_) | Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => {
            PIECE_INDEX_BODY_LEN
        }
        Message::Complete | Message::Keepalive => 0,
    }
}

/// A complete, shape-checked frame at the start of a buffer.
struct Frame<'a> {
    kind: Kind,
    /// Exactly the frame's body.
    body: &'a [u8],
    /// Bytes from the start of the length prefix to the end of the body.
    total_len: usize,
}

fn check_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, WireError> {
    let Some(frame_len) = be_u32_at(buf, 0) else {
        return Ok(None);
    };
    let frame_len = usize_from(frame_len);
    if frame_len > FRAME_LEN_MAX {
        return Err(WireError::FrameTooLong {
            len: frame_len,
            max: FRAME_LEN_MAX,
        });
    }
    if frame_len < FRAME_LEN_MIN {
        return Err(WireError::FrameTooShort {
            len: frame_len,
            min: FRAME_LEN_MIN,
        });
    }
    let Some(&version) = buf.get(LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let Some(&kind_byte) = buf.get(LENGTH_PREFIX_LEN + 1) else {
        return Ok(None);
    };
    let kind = Kind::from_byte(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;

    let total_len = LENGTH_PREFIX_LEN + frame_len;
    let body_len = frame_len - FRAME_LEN_MIN;
    let visible_end = total_len.min(buf.len());
    let visible_body = buf.get(FRAME_HEADER_LEN..visible_end).unwrap_or_default();
    check_body_prefix(kind, body_len, visible_body)?;

    Ok(buf.get(FRAME_HEADER_LEN..total_len).map(|body| Frame {
        kind,
        body,
        total_len,
    }))
}

/// Rejects a frame of `kind` whose body will be `body_len` bytes, judging each field of the
/// body as soon as it is in `visible_body` (a prefix of the body). [`decode_body`] repeats
/// these checks on the complete body; this exists so that bad frames fail early.
fn check_body_prefix(kind: Kind, body_len: usize, visible_body: &[u8]) -> Result<(), WireError> {
    match kind.fixed_body_len() {
        Some(expected) => expect_body_len(kind, expected, body_len)?,
        None => {
            if body_len < HANDSHAKE_FIXED_LEN {
                return Err(WireError::HandshakeTooShort {
                    min: HANDSHAKE_FIXED_LEN,
                    actual: body_len,
                });
            }
            if let Some(&flags) = visible_body.get(HANDSHAKE_FLAGS_OFFSET) {
                is_origin_from_flags(flags)?;
            }
            if let Some(n_bits) = be_u32_at(visible_body, HANDSHAKE_N_BITS_OFFSET) {
                expect_body_len(kind, handshake_body_len(n_bits)?, body_len)?;
            }
        }
    }
    if kind == Kind::Piece
        && let Some(length) = be_u32_at(visible_body, PIECE_LENGTH_OFFSET)
    {
        check_piece_length(length)?;
    }
    Ok(())
}

/// Decodes a complete body. Validates everything itself, so it is correct on any input, not
/// only on what [`check_frame`] let through.
fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, WireError> {
    let message = match kind {
        Kind::Handshake => Message::Handshake(decode_handshake(body)?),
        Kind::Have => Message::Have(decode_piece_index(kind, body)?),
        Kind::Request => Message::Request(decode_piece_index(kind, body)?),
        Kind::Cancel => Message::Cancel(decode_piece_index(kind, body)?),
        Kind::Reject => Message::Reject(decode_piece_index(kind, body)?),
        Kind::Piece => {
            let [p0, p1, p2, p3, l0, l1, l2, l3] = exact_body::<PIECE_HEADER_BODY_LEN>(kind, body)?;
            Message::Piece(PieceHeader {
                piece: PieceIndex(u32::from_be_bytes([p0, p1, p2, p3])),
                length: check_piece_length(u32::from_be_bytes([l0, l1, l2, l3]))?,
            })
        }
        Kind::Complete => {
            exact_body::<0>(kind, body)?;
            Message::Complete
        }
        Kind::Keepalive => {
            exact_body::<0>(kind, body)?;
            Message::Keepalive
        }
    };
    debug_assert_eq!(message.kind(), kind);
    Ok(message)
}

fn decode_piece_index(kind: Kind, body: &[u8]) -> Result<PieceIndex, WireError> {
    let bytes = exact_body::<PIECE_INDEX_BODY_LEN>(kind, body)?;
    Ok(PieceIndex(u32::from_be_bytes(bytes)))
}

fn decode_handshake(body: &[u8]) -> Result<Handshake, WireError> {
    let too_short = || WireError::HandshakeTooShort {
        min: HANDSHAKE_FIXED_LEN,
        actual: body.len(),
    };
    let mut reader = Reader { rest: body };
    let info_hash = InfoHash(reader.array().ok_or_else(too_short)?);
    let stripe = StripeIndex(reader.u32().ok_or_else(too_short)?);
    let peer_id = PeerId(reader.array().ok_or_else(too_short)?);
    let is_origin = is_origin_from_flags(reader.u8().ok_or_else(too_short)?)?;
    let n_bits = reader.u32().ok_or_else(too_short)?;
    expect_body_len(Kind::Handshake, handshake_body_len(n_bits)?, body.len())?;
    // n_bits <= STRIPE_PIECES_MAX here, so this allocation is bounded.
    let bitfield = Bitfield::from_bytes(reader.rest, usize_from(n_bits))?;
    Ok(Handshake {
        info_hash,
        stripe,
        peer_id,
        is_origin,
        bitfield,
    })
}

/// The body length a handshake announcing `n_bits` must have.
fn handshake_body_len(n_bits: u32) -> Result<usize, WireError> {
    if n_bits > limits::STRIPE_PIECES_MAX {
        return Err(WireError::TooManyBits {
            n_bits,
            max: limits::STRIPE_PIECES_MAX,
        });
    }
    Ok(HANDSHAKE_FIXED_LEN + Bitfield::byte_len(usize_from(n_bits)))
}

fn is_origin_from_flags(flags: u8) -> Result<bool, WireError> {
    if flags & !FLAG_IS_ORIGIN != 0 {
        return Err(WireError::BadFlags(flags));
    }
    Ok(flags & FLAG_IS_ORIGIN != 0)
}

fn piece_length_is_valid(length: u32) -> bool {
    (1..=limits::PIECE_LEN_MAX).contains(&length)
}

fn check_piece_length(length: u32) -> Result<u32, WireError> {
    if !piece_length_is_valid(length) {
        return Err(WireError::PieceLength {
            length,
            max: limits::PIECE_LEN_MAX,
        });
    }
    Ok(length)
}

fn expect_body_len(kind: Kind, expected: usize, actual: usize) -> Result<(), WireError> {
    if actual != expected {
        return Err(WireError::BodyLength {
            kind,
            expected,
            actual,
        });
    }
    Ok(())
}

/// `body` as an array of exactly `N` bytes.
fn exact_body<const N: usize>(kind: Kind, body: &[u8]) -> Result<[u8; N], WireError> {
    body.try_into().map_err(|_| WireError::BodyLength {
        kind,
        expected: N,
        actual: body.len(),
    })
}

/// The big-endian `u32` at `offset`, if all four of its bytes are in `buf`.
fn be_u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..)?.first_chunk::<4>()?;
    Some(u32::from_be_bytes(*bytes))
}

/// Lossless on every target this crate builds for (asserted at compile time).
fn usize_from(n: u32) -> usize {
    n as usize
}

/// Reads fixed-size fields off the front of a slice; `None` once it runs out.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const INFO_HASH: [u8; 32] = [0xa5; 32];
    const PEER_ID: [u8; 20] = [0x3c; 20];

    fn handshake(n_bits: usize, ones: &[usize], is_origin: bool) -> Message {
        let mut bitfield = Bitfield::new(n_bits);
        for &i in ones {
            bitfield.set(i);
        }
        Message::Handshake(Handshake {
            info_hash: InfoHash(INFO_HASH),
            stripe: StripeIndex(3),
            peer_id: PeerId(PEER_ID),
            is_origin,
            bitfield,
        })
    }

    fn piece(piece: u32, length: u32) -> Message {
        Message::Piece(PieceHeader {
            piece: PieceIndex(piece),
            length,
        })
    }

    fn encoded(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(message, &mut out);
        out
    }

    /// A frame with the given header fields and body; `frame_len` as given.
    fn raw_with_len(frame_len: u32, version: u8, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = frame_len.to_be_bytes().to_vec();
        out.push(version);
        out.push(kind);
        out.extend_from_slice(body);
        out
    }

    /// A version-1 frame whose `frame_len` matches `body`.
    fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
        let frame_len = u32::try_from(FRAME_LEN_MIN + body.len()).unwrap();
        raw_with_len(frame_len, WIRE_VERSION, kind, body)
    }

    /// A handshake body with the test identifiers and the given flags, n_bits and bits.
    fn handshake_body(flags: u8, n_bits: u32, bits: &[u8]) -> Vec<u8> {
        let mut body = INFO_HASH.to_vec();
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(&PEER_ID);
        body.push(flags);
        body.extend_from_slice(&n_bits.to_be_bytes());
        body.extend_from_slice(bits);
        body
    }

    fn be(n: u32) -> [u8; 4] {
        n.to_be_bytes()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// `input` is exactly one valid frame encoding `expected`: every proper prefix needs more
    /// bytes, the whole parses, trailing bytes are left alone, and encoding gives it back.
    #[track_caller]
    fn check_accepted(input: &[u8], expected: Message) {
        for end in 0..input.len() {
            assert_eq!(parse(&input[..end]), Ok(None), "prefix of {end} bytes");
            assert_eq!(check(&input[..end]), Ok(None), "prefix of {end} bytes");
        }
        let n = input.len();
        assert_eq!(parse(input), Ok(Some((expected.clone(), n))));
        assert_eq!(check(input), Ok(Some(n)));
        let mut with_tail = input.to_vec();
        with_tail.extend_from_slice(&[0xff, 0, 0, 0, 2, 1, 7]);
        assert_eq!(parse(&with_tail), Ok(Some((expected.clone(), n))));
        assert_eq!(encoded(&expected), input, "encoding is canonical");
        assert_eq!(encoded_len(&expected), n);
    }

    /// `input` is malformed, detectably so once `visible` bytes of it are present: shorter
    /// prefixes need more bytes, longer ones (and the whole) fail with `expected`.
    #[track_caller]
    fn check_rejected(input: &[u8], visible: usize, expected: WireError) {
        assert!(visible <= input.len());
        for end in 0..=input.len() {
            let prefix = &input[..end];
            if end < visible {
                assert_eq!(parse(prefix), Ok(None), "prefix of {end} bytes");
            } else {
                assert_eq!(
                    parse(prefix),
                    Err(expected.clone()),
                    "prefix of {end} bytes"
                );
            }
        }
        // check() sees everything but a bitfield's contents.
        match expected {
            WireError::Bitfield(_) => assert_eq!(check(input), Ok(Some(input.len()))),
            _ => assert_eq!(check(input), Err(expected)),
        }
    }

    #[test]
    fn golden_encodings() {
        check_accepted(
            &[0, 0, 0, 6, 1, 1, 0, 0, 0, 7],
            Message::Have(PieceIndex(7)),
        );
        check_accepted(
            &[0, 0, 0, 6, 1, 2, 0xde, 0xad, 0xbe, 0xef],
            Message::Request(PieceIndex(0xdead_beef)),
        );
        check_accepted(
            &[0, 0, 0, 10, 1, 3, 0, 0, 1, 0, 0, 0x10, 0, 0],
            piece(256, 1024 * 1024),
        );
        check_accepted(
            &[0, 0, 0, 6, 1, 4, 0, 0, 0, 0],
            Message::Cancel(PieceIndex(0)),
        );
        check_accepted(
            &[0, 0, 0, 6, 1, 5, 0xff, 0xff, 0xff, 0xff],
            Message::Reject(PieceIndex(u32::MAX)),
        );
        check_accepted(&[0, 0, 0, 2, 1, 6], Message::Complete);
        check_accepted(&[0, 0, 0, 2, 1, 7], Message::Keepalive);
        // 10 bits, bits 0 and 9 set: 0b1000_0000, 0b0100_0000.
        check_accepted(
            &raw(0, &handshake_body(0x01, 10, &[0x80, 0x40])),
            handshake(10, &[0, 9], true),
        );
        check_accepted(
            &raw(0, &handshake_body(0, 0, &[])),
            handshake(0, &[], false),
        );
    }

    #[test]
    fn round_trip_every_kind() {
        let max_bits = usize_from(limits::STRIPE_PIECES_MAX);
        let mut full = handshake(max_bits, &[], true);
        if let Message::Handshake(h) = &mut full {
            h.bitfield = Bitfield::full(max_bits);
        }
        let messages = [
            handshake(0, &[], false),
            handshake(1, &[0], true),
            handshake(7, &[6], false),
            handshake(8, &[0, 7], false),
            handshake(9, &[8], true),
            handshake(max_bits, &[0, max_bits - 1], false),
            full,
            Message::Have(PieceIndex(0)),
            Message::Request(PieceIndex(1)),
            piece(0, 1),
            piece(u32::MAX, limits::PIECE_LEN_MAX),
            Message::Cancel(PieceIndex(u32::MAX)),
            Message::Reject(PieceIndex(42)),
            Message::Complete,
            Message::Keepalive,
        ];
        let mut kinds_seen = Vec::new();
        for message in messages {
            kinds_seen.push(message.kind());
            check_accepted(&encoded(&message), message);
        }
        for kind in Kind::ALL {
            assert!(kinds_seen.contains(&kind), "{kind} not covered");
        }
    }

    #[test]
    fn constants() {
        assert_eq!(WIRE_VERSION, 1);
        assert_eq!(FRAME_HEADER_LEN, 6);
        assert_eq!(FRAME_LEN_MIN, 2);
        let max_bits = usize_from(limits::STRIPE_PIECES_MAX);
        let largest = encoded_len(&handshake(max_bits, &[], false));
        assert_eq!(FRAME_LEN_MAX, largest - LENGTH_PREFIX_LEN);
        assert_eq!(FRAME_LEN_MAX, 2 + 61 + 512);
        assert_eq!(encoded_len(&Message::Keepalive), FRAME_HEADER_LEN);
        assert_eq!(encoded_len(&piece(0, 1)), FRAME_HEADER_LEN + 8);
    }

    #[test]
    fn kinds_match_their_bytes() {
        for (byte, kind) in Kind::ALL.into_iter().enumerate() {
            let byte = u8::try_from(byte).unwrap();
            assert_eq!(kind.byte(), byte);
            assert_eq!(Kind::from_byte(byte), Some(kind));
        }
        for byte in 8..=u8::MAX {
            assert_eq!(Kind::from_byte(byte), None);
        }
    }

    #[test]
    fn frame_len_out_of_bounds_rejected_from_four_bytes() {
        let too_long = |len: usize| WireError::FrameTooLong {
            len,
            max: FRAME_LEN_MAX,
        };
        let too_short = |len: usize| WireError::FrameTooShort {
            len,
            min: FRAME_LEN_MIN,
        };
        check_rejected(&be(0), 4, too_short(0));
        check_rejected(&be(1), 4, too_short(1));
        check_rejected(&raw_with_len(1, 1, 7, &[]), 4, too_short(1));
        check_rejected(&be(576), 4, too_long(576));
        check_rejected(&be(0x0100_0000), 4, too_long(0x0100_0000));
        check_rejected(&be(u32::MAX), 4, too_long(usize_from(u32::MAX)));
        // An oversized frame is refused without waiting for (or looking at) its body.
        let mut huge = raw_with_len(1 << 20, WIRE_VERSION, 3, &[]);
        huge.resize(1000, 0);
        check_rejected(&huge, 4, too_long(1 << 20));
        // The bounds themselves are fine as far as the length goes.
        assert_eq!(check(&be(2)), Ok(None));
        assert_eq!(check(&be(575)), Ok(None));
    }

    #[test]
    fn version_rejected_from_its_byte() {
        for version in [0, 2, 0x80, 0xff] {
            check_rejected(
                &raw_with_len(2, version, 7, &[]),
                5,
                WireError::UnsupportedVersion(version),
            );
            check_rejected(
                &raw_with_len(6, version, 1, &[0, 0, 0, 1]),
                5,
                WireError::UnsupportedVersion(version),
            );
        }
    }

    #[test]
    fn unknown_kind_rejected_from_its_byte() {
        for kind in [8, 9, 0x7f, 0xff] {
            check_rejected(&raw(kind, &[]), 6, WireError::UnknownKind(kind));
            check_rejected(&raw(kind, &[0; 4]), 6, WireError::UnknownKind(kind));
        }
    }

    #[test]
    fn fixed_body_lengths_rejected_from_header() {
        let cases: [(Kind, usize); 7] = [
            (Kind::Have, 4),
            (Kind::Request, 4),
            (Kind::Piece, 8),
            (Kind::Cancel, 4),
            (Kind::Reject, 4),
            (Kind::Complete, 0),
            (Kind::Keepalive, 0),
        ];
        for (kind, expected) in cases {
            let mut wrong_lengths = vec![expected + 1, expected + 4, FRAME_LEN_MAX - 2];
            if expected > 0 {
                wrong_lengths.extend([0, expected - 1]);
            }
            for actual in wrong_lengths {
                // A body of 0x01 bytes: a valid piece index and piece length.
                let input = raw(kind.byte(), &vec![1; actual]);
                let error = WireError::BodyLength {
                    kind,
                    expected,
                    actual,
                };
                check_rejected(&input, FRAME_HEADER_LEN, error);
            }
        }
    }

    #[test]
    fn handshake_shape() {
        let body_len_error = |expected: usize, actual: usize| WireError::BodyLength {
            kind: Kind::Handshake,
            expected,
            actual,
        };
        // Too short to hold even n_bits: known from the header.
        for actual in [0, 1, 56, 57, 60] {
            let body = &handshake_body(0, 0, &[])[..actual];
            let error = WireError::HandshakeTooShort { min: 61, actual };
            check_rejected(&raw(0, body), FRAME_HEADER_LEN, error);
        }
        // n_bits disagrees with frame_len: known once n_bits is visible (byte 67).
        let n_bits_end = FRAME_HEADER_LEN + HANDSHAKE_FIXED_LEN;
        check_rejected(
            &raw(0, &handshake_body(0, 0, &[0])),
            n_bits_end,
            body_len_error(61, 62),
        );
        check_rejected(
            &raw(0, &handshake_body(0, 9, &[0])),
            n_bits_end,
            body_len_error(63, 62),
        );
        check_rejected(
            &raw(0, &handshake_body(0, 8, &[0, 0])),
            n_bits_end,
            body_len_error(62, 63),
        );
        check_rejected(
            &raw(0, &handshake_body(0, 4096, &[])),
            n_bits_end,
            body_len_error(61 + 512, 61),
        );
        // Too many bits, whatever the frame length.
        for n_bits in [4097, 4104, 1 << 20, u32::MAX] {
            let error = WireError::TooManyBits { n_bits, max: 4096 };
            check_rejected(
                &raw(0, &handshake_body(0, n_bits, &[])),
                n_bits_end,
                error.clone(),
            );
            let full_frame = raw(0, &handshake_body(0, n_bits, &[0; 512]));
            check_rejected(&full_frame, n_bits_end, error.clone());
        }
        // The largest handshake fits exactly.
        let full = raw(0, &handshake_body(1, 4096, &[0xff; 512]));
        assert_eq!(full.len(), 4 + FRAME_LEN_MAX);
        let mut expected = handshake(4096, &[], true);
        if let Message::Handshake(h) = &mut expected {
            h.bitfield = Bitfield::full(4096);
        }
        check_accepted(&full, expected);
    }

    #[test]
    fn handshake_flags() {
        let flags_end = FRAME_HEADER_LEN + HANDSHAKE_FLAGS_OFFSET + 1;
        check_accepted(
            &raw(0, &handshake_body(0, 1, &[0])),
            handshake(1, &[], false),
        );
        check_accepted(
            &raw(0, &handshake_body(1, 1, &[0x80])),
            handshake(1, &[0], true),
        );
        for flags in [0x02, 0x03, 0x80, 0x81, 0xff] {
            let input = raw(0, &handshake_body(flags, 1, &[0]));
            check_rejected(&input, flags_end, WireError::BadFlags(flags));
            // Bad flags come before (and win over) a bad n_bits.
            let input = raw(0, &handshake_body(flags, 5000, &[]));
            check_rejected(&input, flags_end, WireError::BadFlags(flags));
        }
    }

    #[test]
    fn handshake_spare_bits_rejected_with_whole_frame() {
        let cases: [(u32, &[u8]); 5] = [
            (1, &[0x40]),
            (1, &[0x01]),
            (7, &[0x01]),
            (9, &[0x00, 0x40]),
            (4095, &[0x01; 512]),
        ];
        for (n_bits, bits) in cases {
            let input = raw(0, &handshake_body(0, n_bits, bits));
            let len = usize_from(n_bits);
            let error = WireError::Bitfield(BitfieldError::SpareBitsSet { len });
            check_rejected(&input, input.len(), error);
        }
        // No spare bits when n_bits is a multiple of 8.
        check_accepted(
            &raw(0, &handshake_body(0, 16, &[0x01, 0x01])),
            handshake(16, &[7, 15], false),
        );
    }

    #[test]
    fn piece_length_rejected_from_its_field() {
        let length_end = FRAME_HEADER_LEN + 8;
        for length in [0, limits::PIECE_LEN_MAX + 1, u32::MAX] {
            let input = raw(3, &cat(&[&be(9), &be(length)]));
            let error = WireError::PieceLength {
                length,
                max: limits::PIECE_LEN_MAX,
            };
            check_rejected(&input, length_end, error);
        }
        check_accepted(&raw(3, &cat(&[&be(9), &be(1)])), piece(9, 1));
        check_accepted(
            &raw(3, &cat(&[&be(9), &be(limits::PIECE_LEN_MAX)])),
            piece(9, limits::PIECE_LEN_MAX),
        );
    }

    #[test]
    fn piece_payload_is_left_to_the_caller() {
        let header = piece(5, 4);
        let mut stream = encoded(&header);
        let header_len = stream.len();
        stream.extend_from_slice(&[0, 0, 0, 2]); // payload that looks like a frame prefix
        stream.extend_from_slice(&encoded(&Message::Keepalive));
        assert_eq!(parse(&stream), Ok(Some((header, header_len))));
        let after_payload = &stream[header_len + 4..];
        assert_eq!(parse(after_payload), Ok(Some((Message::Keepalive, 6))));
    }

    #[test]
    fn frames_back_to_back_parse_one_at_a_time() {
        let messages = [
            handshake(12, &[3, 11], false),
            Message::Have(PieceIndex(3)),
            Message::Keepalive,
            piece(2, 100),
            Message::Complete,
        ];
        let mut stream = Vec::new();
        for message in &messages {
            encode(message, &mut stream);
        }
        let mut rest = &stream[..];
        for message in &messages {
            let (parsed, consumed) = parse(rest).unwrap().unwrap();
            assert_eq!(&parsed, message);
            assert_eq!(consumed, encoded_len(message));
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty());
        assert_eq!(parse(rest), Ok(None));
    }

    #[test]
    fn trailing_garbage_is_not_consumed() {
        let mut input = encoded(&Message::Request(PieceIndex(1)));
        input.extend_from_slice(&[0xff; 9]);
        assert_eq!(
            parse(&input),
            Ok(Some((Message::Request(PieceIndex(1)), 10)))
        );
        // The garbage is the next frame's problem.
        assert_eq!(
            parse(&input[10..]),
            Err(WireError::FrameTooLong {
                len: usize_from(u32::MAX),
                max: FRAME_LEN_MAX
            })
        );
    }

    #[test]
    fn error_messages_name_the_values() {
        let cases: [(WireError, &str); 10] = [
            (
                WireError::FrameTooLong {
                    len: 9999,
                    max: 575,
                },
                "frame length 9999 exceeds the maximum of 575",
            ),
            (
                WireError::FrameTooShort { len: 1, min: 2 },
                "frame length 1 is below the minimum of 2",
            ),
            (
                WireError::UnsupportedVersion(9),
                "unsupported wire version 9 (this build speaks version 1)",
            ),
            (WireError::UnknownKind(200), "unknown message kind 200"),
            (
                WireError::BodyLength {
                    kind: Kind::Cancel,
                    expected: 4,
                    actual: 5,
                },
                "cancel frame body must be 4 bytes, got 5",
            ),
            (
                WireError::HandshakeTooShort { min: 61, actual: 3 },
                "at least 61 bytes, got 3",
            ),
            (WireError::BadFlags(0x82), "flags 0x82"),
            (
                WireError::TooManyBits {
                    n_bits: 5000,
                    max: 4096,
                },
                "5000 bits exceeds the maximum of 4096",
            ),
            (
                WireError::Bitfield(BitfieldError::SpareBitsSet { len: 3 }),
                "handshake: bitfield of 3 bits has spare bits set",
            ),
            (
                WireError::PieceLength { length: 0, max: 7 },
                "piece payload length 0 is outside 1..=7",
            ),
        ];
        for (error, fragment) in cases {
            let message = error.to_string();
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
    }

    #[test]
    #[should_panic(expected = "exceeds STRIPE_PIECES_MAX")]
    fn encoding_oversized_bitfield_panics() {
        encode(&handshake(4097, &[], false), &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "outside 1..=PIECE_LEN_MAX")]
    fn encoding_empty_piece_panics() {
        encode(&piece(0, 0), &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "outside 1..=PIECE_LEN_MAX")]
    fn encoding_oversized_piece_panics() {
        encoded_len(&piece(0, limits::PIECE_LEN_MAX + 1));
    }

    fn arb_bitfield() -> impl Strategy<Value = Bitfield> {
        let n_bits_max = usize_from(limits::STRIPE_PIECES_MAX);
        prop_oneof![0..=17usize, 0..=n_bits_max, Just(n_bits_max)]
            .prop_flat_map(|n_bits| proptest::collection::vec(any::<bool>(), n_bits))
            .prop_map(|bits| {
                let mut bitfield = Bitfield::new(bits.len());
                for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
                    bitfield.set(i);
                }
                bitfield
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let index = || any::<u32>().prop_map(PieceIndex);
        let handshake = (
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<[u8; 20]>(),
            any::<bool>(),
            arb_bitfield(),
        )
            .prop_map(|(info_hash, stripe, peer_id, is_origin, bitfield)| {
                Message::Handshake(Handshake {
                    info_hash: InfoHash(info_hash),
                    stripe: StripeIndex(stripe),
                    peer_id: PeerId(peer_id),
                    is_origin,
                    bitfield,
                })
            });
        let length = prop_oneof![
            Just(1),
            Just(limits::PIECE_LEN_MAX),
            1..=limits::PIECE_LEN_MAX
        ];
        prop_oneof![
            handshake,
            index().prop_map(Message::Have),
            index().prop_map(Message::Request),
            (index(), length)
                .prop_map(|(piece, length)| Message::Piece(PieceHeader { piece, length })),
            index().prop_map(Message::Cancel),
            index().prop_map(Message::Reject),
            Just(Message::Complete),
            Just(Message::Keepalive),
        ]
    }

    /// Bytes worth feeding the parser: uniformly random, or a valid frame with a few bytes
    /// flipped, perhaps truncated, followed by random bytes.
    fn arb_wire_bytes() -> impl Strategy<Value = Vec<u8>> {
        let mutated = (
            arb_message(),
            proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
            proptest::option::of(any::<Index>()),
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(message, flips, cut, tail)| {
                let mut bytes = encoded(&message);
                for (at, mask) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes.extend(tail);
                bytes
            });
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=700),
            // Random bodies behind a plausible header, to get past the first checks.
            (0..=9u8, proptest::collection::vec(any::<u8>(), 0..=600))
                .prop_map(|(kind, body)| { raw(kind, &body) }),
            mutated,
        ]
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(message in arb_message()) {
            let bytes = encoded(&message);
            prop_assert_eq!(bytes.len(), encoded_len(&message));
            prop_assert!(bytes.len() <= LENGTH_PREFIX_LEN + FRAME_LEN_MAX);
            prop_assert_eq!(parse(&bytes), Ok(Some((message, bytes.len()))));
        }

        #[test]
        fn parse_stays_in_bounds(bytes in arb_wire_bytes()) {
            if let Ok(Some((_, consumed))) = parse(&bytes) {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(consumed >= FRAME_HEADER_LEN);
            }
        }

        #[test]
        fn accepted_frames_are_canonical(bytes in arb_wire_bytes()) {
            if let Ok(Some((message, consumed))) = parse(&bytes) {
                prop_assert_eq!(encoded(&message), &bytes[..consumed]);
            }
        }

        #[test]
        fn check_agrees_with_parse(bytes in arb_wire_bytes()) {
            match (check(&bytes), parse(&bytes)) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(n)), Ok(Some((_, consumed)))) => prop_assert_eq!(n, consumed),
                (Ok(Some(_)), Err(WireError::Bitfield(_))) => {}
                (Err(checked), Err(parsed)) => prop_assert_eq!(checked, parsed),
                (checked, parsed) => {
                    prop_assert!(false, "check {:?} but parse {:?}", checked, parsed);
                }
            }
        }

        /// Feeding bytes one at a time: the answer is "need more" until it is final, and once
        /// final (a frame or an error) it no longer changes as bytes arrive.
        #[test]
        fn answers_are_stable_as_bytes_arrive(bytes in arb_wire_bytes()) {
            let mut settled = None;
            for end in 0..=bytes.len() {
                let result = parse(&bytes[..end]);
                match &settled {
                    None if result != Ok(None) => settled = Some(result),
                    None => {}
                    Some(first) => prop_assert_eq!(first, &result, "prefix of {} bytes", end),
                }
            }
        }
    }
}
