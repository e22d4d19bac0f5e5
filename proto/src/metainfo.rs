//! Metainfo: what the swarm needs to know about one blob before exchanging it.
//!
//! A blob is cut into pieces of a fixed length (the last piece may be shorter). Each piece has
//! a 32-byte hash so that a peer can check every piece on arrival. Contiguous runs of pieces
//! form stripes; a connection carries one stripe of one blob (see [`crate::wire::Handshake`]).
//!
//! The encoding version says what the piece hashes are ([`PieceCheck`]):
//! - version 1: the SHA-256 of each piece. The whole-blob digest needs a pass of its own once
//!   the blob is complete (a metainfo from elsewhere may not describe its digest).
//! - version 2 (sha256 blobs, at least one piece): SHA-256's chaining value after each piece,
//!   and the blob's digest for the last one. Checking every piece checks the digest
//!   ([`crate::piece_check`]); what [`MetainfoBuilder`] makes for sha256 blobs by default.
//!
//! # Canonical encoding
//!
//! All integers are big-endian; every field has a fixed width, so one value has exactly one
//! encoding and the encoding of a decoded value is byte-identical to its input.
//!
//! | bytes   | field                                                           |
//! |---------|-----------------------------------------------------------------|
//! | 4       | magic `b"SHMI"`                                                 |
//! | 1       | encoding version, `1` or `2`                                    |
//! | 1       | digest algorithm: `1` = sha256, `2` = sha512                    |
//! | 32 / 64 | whole-blob digest bytes                                         |
//! | 8       | `blob_len`, at most [`limits::BLOB_LEN_MAX`]                    |
//! | 4       | `piece_len`, a power of two in [`limits::PIECE_LEN_MIN`, `limits::PIECE_LEN_MAX`] |
//! | 4       | `pieces_per_stripe`, in `1..=`[`limits::STRIPE_PIECES_MAX`]     |
//! | 4       | `n_pieces`, which must equal `ceil(blob_len / piece_len)`       |
//! | 32 each | every piece's hash (per the version), in order                  |
//!
//! The [`InfoHash`] that names a swarm is the SHA-256 of this encoding.
//!
//! Decoding checks every header field, and the exact total length, before it allocates
//! anything; it never panics on any input.

use std::fmt;
use std::ops::Range;

use sha2::Digest as _;

use crate::limits;
use crate::piece_check::ChainHasher;
pub use crate::piece_check::{PieceCheck, PieceVerifier};
use crate::types::{Digest, InfoHash, PieceIndex, StripeIndex};

/// First four bytes of every encoded metainfo.
pub const MAGIC: [u8; 4] = *b"SHMI";

/// The newest encoding version this code reads and writes (it reads every older one).
pub const ENCODING_VERSION: u8 = ENCODING_VERSION_CHAIN;
/// Piece hashes are each piece's SHA-256 ([`PieceCheck::Sha256`]).
const ENCODING_VERSION_SHA256: u8 = 1;
/// Piece hashes are SHA-256 chaining values ([`PieceCheck::Sha256Chain`]).
const ENCODING_VERSION_CHAIN: u8 = 2;

const ALGORITHM_SHA256: u8 = 1;
const ALGORITHM_SHA512: u8 = 2;

/// Length of a piece hash (SHA-256), in bytes.
pub const PIECE_HASH_LEN: usize = 32;

/// Encoded header length, everything before the piece hashes, without the digest bytes:
/// magic, version, algorithm, `blob_len`, `piece_len`, `pieces_per_stripe`, `n_pieces`.
const HEADER_LEN_WITHOUT_DIGEST: usize = 4 + 1 + 1 + 8 + 4 + 4 + 4;

/// Longest header (sha512 digest).
const HEADER_LEN_MAX: usize = HEADER_LEN_WITHOUT_DIGEST + 64;

/// Most pieces any valid metainfo can have ([`limits::PIECES_MAX`]). Piece counts and
/// indexes are `u32`; this says they fit.
pub const N_PIECES_MAX: u64 = limits::PIECES_MAX as u64;

/// Longest valid encoding (about 32 MiB): a caller that fetches an encoded metainfo over the
/// network bounds the body by this.
pub const ENCODED_LEN_MAX: u64 = HEADER_LEN_MAX as u64 + N_PIECES_MAX * PIECE_HASH_LEN as u64;

const _: () = assert!(N_PIECES_MAX <= u32::MAX as u64);
const _: () = assert!(limits::STRIPE_PIECES_MAX as u64 <= N_PIECES_MAX);

/// The builder never reserves room for more piece hashes than this up front; beyond it, the
/// list grows as data actually arrives. A wrong (huge) `blob_len` thus costs no memory.
const BUILDER_PREALLOCATED_PIECES_MAX: usize = 4096;

/// Why a metainfo, its parameters, or its encoding are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    #[error("piece length table is empty; it needs at least one entry ending at u64::MAX")]
    TableEmpty,
    #[error(
        "piece length table bounds must ascend strictly: entry {index} has bound {bound}, \
         not above the previous bound {previous}"
    )]
    TableNotAscending {
        index: usize,
        previous: u64,
        bound: u64,
    },
    #[error(
        "piece length table's last bound is {bound}; it must be u64::MAX ({max}) so that every \
         blob length has a piece length",
        max = u64::MAX
    )]
    TableNotCovering { bound: u64 },
    #[error(
        "piece length table entry {index}: piece length {piece_len} must be a power of two in \
         [{min}, {max}]",
        min = limits::PIECE_LEN_MIN,
        max = limits::PIECE_LEN_MAX
    )]
    TablePieceLen { index: usize, piece_len: u32 },
    #[error(
        "piece length {piece_len} is outside [{min}, {max}]",
        min = limits::PIECE_LEN_MIN,
        max = limits::PIECE_LEN_MAX
    )]
    PieceLenOutOfBounds { piece_len: u32 },
    #[error("piece length {piece_len} is not a power of two")]
    PieceLenNotPowerOfTwo { piece_len: u32 },
    #[error(
        "pieces per stripe {pieces_per_stripe} is outside [1, {max}]",
        max = limits::STRIPE_PIECES_MAX
    )]
    PiecesPerStripeOutOfBounds { pieces_per_stripe: u32 },
    #[error("blob length {blob_len} exceeds the limit of {max} bytes", max = limits::BLOB_LEN_MAX)]
    BlobTooLong { blob_len: u64 },
    #[error(
        "a {blob_len}-byte blob in {piece_len}-byte pieces has {n_pieces} pieces, more than the \
         {max} a metainfo may list",
        max = N_PIECES_MAX
    )]
    TooManyPieces {
        blob_len: u64,
        piece_len: u32,
        n_pieces: u64,
    },
    #[error(
        "a blob of {blob_len} bytes in pieces of {piece_len} bytes has {expected} pieces, \
         not {actual}"
    )]
    PieceCountMismatch {
        blob_len: u64,
        piece_len: u32,
        expected: u64,
        actual: u64,
    },
    #[error("metainfo encoding is truncated: it needs at least {needed} bytes, got {actual}")]
    Truncated { needed: u64, actual: usize },
    #[error("metainfo encoding starts with {found:02x?}, not the magic \"SHMI\"")]
    BadMagic { found: [u8; 4] },
    #[error(
        "metainfo encoding version {version} is unknown (this code reads versions 1 to {known})",
        known = ENCODING_VERSION
    )]
    UnknownVersion { version: u8 },
    #[error(
        "a chained metainfo (version 2) needs a sha256 digest and at least one piece, and its \
         last piece hash must be the digest: {reason}"
    )]
    BadChain { reason: &'static str },
    #[error("metainfo digest algorithm {algorithm} is unknown (1 = sha256, 2 = sha512)")]
    UnknownAlgorithm { algorithm: u8 },
    #[error("metainfo encoding should be exactly {expected} bytes, got {actual} (trailing bytes)")]
    TrailingBytes { expected: u64, actual: usize },
    #[error("blob is {blob_len} bytes, but this update would bring the total fed to {received}")]
    TooManyBytes { blob_len: u64, received: u64 },
    #[error("blob is {blob_len} bytes, but only {received} bytes were fed to the metainfo builder")]
    TooFewBytes { blob_len: u64, received: u64 },
    /// Boxed: two sha512 digests would make every `Result` of this module twice as large.
    #[error("blob content has digest {actual}, expected {expected}")]
    DigestMismatch {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },
}

/// Chooses a piece length from a blob's length.
///
/// Entries are `(blob_len_max_inclusive, piece_len)`, with strictly ascending bounds; a blob
/// takes the piece length of the first entry whose bound is at least its length. The last
/// bound is `u64::MAX` so that every length is covered. Plain data (a validated list), so a
/// config layer can later deserialize it through [`PieceLengthTable::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceLengthTable {
    /// Validated by [`PieceLengthTable::new`]: non-empty, ascending, ends at `u64::MAX`, every
    /// piece length a power of two within the protocol limits.
    entries: Vec<(u64, u32)>,
}

impl PieceLengthTable {
    /// Validates a table: non-empty, strictly ascending bounds, last bound `u64::MAX`, every
    /// piece length a power of two in [[`limits::PIECE_LEN_MIN`], [`limits::PIECE_LEN_MAX`]].
    pub fn new(entries: Vec<(u64, u32)>) -> Result<PieceLengthTable, MetainfoError> {
        let Some(&(last_bound, _)) = entries.last() else {
            return Err(MetainfoError::TableEmpty);
        };
        for (index, &(bound, piece_len)) in entries.iter().enumerate() {
            if check_piece_len(piece_len).is_err() {
                return Err(MetainfoError::TablePieceLen { index, piece_len });
            }
            if index > 0 {
                let previous = entries[index - 1].0;
                if bound <= previous {
                    return Err(MetainfoError::TableNotAscending {
                        index,
                        previous,
                        bound,
                    });
                }
            }
        }
        if last_bound != u64::MAX {
            return Err(MetainfoError::TableNotCovering { bound: last_bound });
        }
        Ok(PieceLengthTable { entries })
    }

    /// One piece length for every blob.
    pub fn uniform(piece_len: u32) -> Result<PieceLengthTable, MetainfoError> {
        PieceLengthTable::new(vec![(u64::MAX, piece_len)])
    }

    /// The validated entries, ascending.
    pub fn entries(&self) -> &[(u64, u32)] {
        &self.entries
    }

    /// The piece length for a blob of `blob_len` bytes.
    pub fn piece_len_for(&self, blob_len: u64) -> u32 {
        // The last bound is u64::MAX, so some entry's bound is >= blob_len and the partition
        // point is a valid index.
        let index = self.entries.partition_point(|&(bound, _)| bound < blob_len);
        self.entries[index].1
    }
}

const GIB: u64 = 1 << 30;
const MIB: u32 = 1 << 20;

impl Default for PieceLengthTable {
    /// 1 MiB pieces up to 4 GiB, then the piece length doubles with each doubling of the blob,
    /// up to 64 MiB pieces above 128 GiB:
    ///
    /// | blob length  | piece length |
    /// |--------------|--------------|
    /// | ≤ 4 GiB      | 1 MiB        |
    /// | ≤ 8 GiB      | 2 MiB        |
    /// | ≤ 16 GiB     | 4 MiB        |
    /// | ≤ 32 GiB     | 8 MiB        |
    /// | ≤ 64 GiB     | 16 MiB       |
    /// | ≤ 128 GiB    | 32 MiB       |
    /// | larger       | 64 MiB       |
    ///
    /// Each tier above 4 GiB spans one doubling of the blob length and ends where
    /// `blob / piece` is 4096, so a blob between 2 GiB and 128 GiB has 2048 to 4096 pieces
    /// (100 GiB: 3200). Small pieces make a short pipeline: a piece is passed on only once it
    /// is whole and verified, so every hop through the fleet costs one piece time. Measured
    /// with `shoal-sim` (kraken-2600 at 300 hosts, perf/RESULTS.md): 2 MiB pieces for its
    /// 1.5 GB layers gave a p50 efficiency of 0.89, 1 MiB pieces 0.93. The metainfo stays
    /// small (32 bytes per piece: 128 KiB at 4096 pieces).
    ///
    /// Below 4 GiB the 1 MiB floor wins: a piece must stay large next to the per-piece cost
    /// (a request round trip, a hash, a `Have` to every neighbour), so a 100 MiB layer has 100
    /// pieces. Above 128 GiB the 64 MiB ceiling ([`limits::PIECE_LEN_MAX`], which bounds a
    /// piece payload in memory and on the wire) wins and the count grows linearly.
    fn default() -> PieceLengthTable {
        let entries = vec![
            (4 * GIB, MIB),
            (8 * GIB, 2 * MIB),
            (16 * GIB, 4 * MIB),
            (32 * GIB, 8 * MIB),
            (64 * GIB, 16 * MIB),
            (128 * GIB, 32 * MIB),
            (u64::MAX, 64 * MIB),
        ];
        PieceLengthTable::new(entries).expect("the default piece length table is valid")
    }
}

/// How an origin cuts a new blob into pieces and stripes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetainfoParams {
    pub piece_lengths: PieceLengthTable,
    /// Pieces per stripe, in `1..=`[`limits::STRIPE_PIECES_MAX`]; the last stripe may be
    /// shorter. Checked by [`MetainfoParams::validate`] and [`MetainfoBuilder::new`].
    pub pieces_per_stripe: u32,
    /// How piece hashes are defined. [`PieceCheck::Sha256Chain`] (the default) applies to
    /// sha256 blobs with at least one byte; others get [`PieceCheck::Sha256`].
    pub piece_check: PieceCheck,
}

impl MetainfoParams {
    /// Default stripe width: a 1 GiB blob has 2 stripes, a 4 GiB blob 8, a 100 GiB blob 7,
    /// each with a 64-byte bitfield.
    ///
    /// Measured with `shoal-sim` (kraken-2600 at 300 hosts, see perf/RESULTS.md): every stripe
    /// is a swarm of its own, with its own connections and request limits, so narrower stripes
    /// mean more, smaller swarms per host, more concurrent flows splitting each link, and a
    /// smaller pool of pieces for rarest-first. 128-piece stripes gave a p50 efficiency of
    /// 0.84, 512-piece stripes 0.89 (both with 2 MiB pieces). Two shards per blob hash
    /// 10 Gbit/s.
    pub const PIECES_PER_STRIPE_DEFAULT: u32 = 512;

    /// Checks what the type cannot: `pieces_per_stripe` within bounds. (The table is validated
    /// when it is built.)
    pub fn validate(&self) -> Result<(), MetainfoError> {
        check_pieces_per_stripe(self.pieces_per_stripe)
    }
}

impl Default for MetainfoParams {
    fn default() -> MetainfoParams {
        MetainfoParams {
            piece_lengths: PieceLengthTable::default(),
            pieces_per_stripe: MetainfoParams::PIECES_PER_STRIPE_DEFAULT,
            piece_check: PieceCheck::Sha256Chain,
        }
    }
}

const _: () = assert!(MetainfoParams::PIECES_PER_STRIPE_DEFAULT <= limits::STRIPE_PIECES_MAX);

/// A validated description of one blob: its digest, length, piece and stripe geometry, and
/// the SHA-256 of every piece.
///
/// Immutable once built. Every constructor ([`Metainfo::decode`], [`Metainfo::from_parts`],
/// [`MetainfoBuilder::finish`]) applies the same checks, so every value has a valid encoding.
///
/// Accessors that take a [`PieceIndex`] or [`StripeIndex`] panic when the index is out of
/// range: an index from the network must be checked with [`Metainfo::contains_piece`] or
/// [`Metainfo::contains_stripe`] first.
#[derive(Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// Whole-blob digest: the blob's OCI name, checked once the last piece is in.
    digest: Digest,
    /// Blob length in bytes, at most `limits::BLOB_LEN_MAX`.
    blob_len: u64,
    /// Length of every piece but the last; a power of two within the protocol limits.
    piece_len: u32,
    /// Stripe width in pieces; the last stripe may be shorter.
    pieces_per_stripe: u32,
    /// What the piece hashes are.
    piece_check: PieceCheck,
    /// Hash of each piece (per `piece_check`); exactly `ceil(blob_len / piece_len)` of them
    /// (so the count fits in a `u32`, see [`N_PIECES_MAX`]).
    piece_hashes: Vec<[u8; PIECE_HASH_LEN]>,
    /// SHA-256 of the canonical encoding, computed once at construction: it is the key every
    /// handshake and tracker lookup uses, while computing it costs a pass over the hashes
    /// (O(n_pieces), never the blob data). Derived from the other fields, so comparing it in
    /// `PartialEq` changes nothing.
    info_hash: InfoHash,
}

impl fmt::Debug for Metainfo {
    /// Shows the geometry, not the (possibly thousands of) piece hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metainfo")
            .field("digest", &self.digest)
            .field("blob_len", &self.blob_len)
            .field("piece_len", &self.piece_len)
            .field("pieces_per_stripe", &self.pieces_per_stripe)
            .field("n_pieces", &self.n_pieces())
            .field("piece_check", &self.piece_check)
            .field("info_hash", &self.info_hash)
            .finish()
    }
}

impl Metainfo {
    /// Assembles a metainfo from known parts, with the same checks as [`Metainfo::decode`].
    /// Costs O(n_pieces) (one SHA-256 pass over the piece hashes for the info hash); it never
    /// sees blob data, so simulators can pass synthetic hashes.
    /// The piece hashes are each piece's SHA-256 ([`PieceCheck::Sha256`]).
    pub fn from_parts(
        digest: Digest,
        blob_len: u64,
        piece_len: u32,
        pieces_per_stripe: u32,
        piece_hashes: Vec<[u8; PIECE_HASH_LEN]>,
    ) -> Result<Metainfo, MetainfoError> {
        Metainfo::from_checked_parts(
            PieceCheck::Sha256,
            digest,
            blob_len,
            piece_len,
            pieces_per_stripe,
            piece_hashes,
        )
    }

    /// [`Metainfo::from_parts`] with the piece hashes defined by `piece_check`. A chained
    /// metainfo must name a sha256 digest, have at least one piece, and end with the digest.
    pub fn from_checked_parts(
        piece_check: PieceCheck,
        digest: Digest,
        blob_len: u64,
        piece_len: u32,
        pieces_per_stripe: u32,
        piece_hashes: Vec<[u8; PIECE_HASH_LEN]>,
    ) -> Result<Metainfo, MetainfoError> {
        let n_pieces = check_geometry(blob_len, piece_len, pieces_per_stripe)?;
        let actual = piece_hashes.len() as u64;
        if actual != n_pieces {
            return Err(MetainfoError::PieceCountMismatch {
                blob_len,
                piece_len,
                expected: n_pieces,
                actual,
            });
        }
        if piece_check == PieceCheck::Sha256Chain {
            let Digest::Sha256(digest_bytes) = digest else {
                return Err(MetainfoError::BadChain {
                    reason: "the digest is not sha256",
                });
            };
            match piece_hashes.last() {
                None => {
                    return Err(MetainfoError::BadChain {
                        reason: "the blob has no pieces",
                    });
                }
                Some(last) if *last != digest_bytes => {
                    return Err(MetainfoError::BadChain {
                        reason: "the last piece hash is not the digest",
                    });
                }
                Some(_) => {}
            }
        }
        let mut metainfo = Metainfo {
            digest,
            blob_len,
            piece_len,
            pieces_per_stripe,
            piece_check,
            piece_hashes,
            info_hash: InfoHash::default(),
        };
        metainfo.info_hash = metainfo.compute_info_hash();
        Ok(metainfo)
    }

    /// Builds the metainfo of an in-memory blob, checking it against `digest`. For large
    /// blobs, stream through [`MetainfoBuilder`] instead.
    pub fn build(
        digest: Digest,
        blob: &[u8],
        params: &MetainfoParams,
    ) -> Result<Metainfo, MetainfoError> {
        let mut builder = MetainfoBuilder::new(digest, blob.len() as u64, params)?;
        builder.update(blob)?;
        builder.finish()
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn blob_len(&self) -> u64 {
        self.blob_len
    }

    /// Length of every piece but the last.
    pub fn piece_len(&self) -> u32 {
        self.piece_len
    }

    pub fn pieces_per_stripe(&self) -> u32 {
        self.pieces_per_stripe
    }

    /// `ceil(blob_len / piece_len)`; zero for the empty blob.
    pub fn n_pieces(&self) -> u32 {
        // Fits: construction checked the count against `blob_len`, and N_PIECES_MAX fits.
        self.piece_hashes.len() as u32
    }

    /// `ceil(n_pieces / pieces_per_stripe)`; zero for the empty blob.
    pub fn n_stripes(&self) -> u32 {
        self.n_pieces().div_ceil(self.pieces_per_stripe)
    }

    /// Whether `piece` names a piece of this blob. Check this before using an index that came
    /// from the network.
    pub fn contains_piece(&self, piece: PieceIndex) -> bool {
        piece.0 < self.n_pieces()
    }

    /// Whether `stripe` names a stripe of this blob.
    pub fn contains_stripe(&self, stripe: StripeIndex) -> bool {
        stripe.0 < self.n_stripes()
    }

    /// Byte length of `piece`: `piece_len`, except the last piece, which may be shorter (but
    /// never empty). Panics if the piece is out of range.
    pub fn piece_len_of(&self, piece: PieceIndex) -> u32 {
        self.assert_contains_piece(piece);
        let remaining = self.blob_len - self.piece_offset(piece);
        // At most piece_len, which is a u32.
        remaining.min(u64::from(self.piece_len)) as u32
    }

    /// Offset of `piece`'s first byte within the blob. Panics if the piece is out of range.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        self.assert_contains_piece(piece);
        u64::from(piece.0) * u64::from(self.piece_len)
    }

    /// The stripe that holds `piece`. Panics if the piece is out of range.
    pub fn stripe_of(&self, piece: PieceIndex) -> StripeIndex {
        self.assert_contains_piece(piece);
        StripeIndex(piece.0 / self.pieces_per_stripe)
    }

    /// The blob-wide indexes of the pieces in `stripe`; the last stripe may be shorter than
    /// `pieces_per_stripe`, but never empty. Panics if the stripe is out of range.
    pub fn stripe_pieces(&self, stripe: StripeIndex) -> Range<u32> {
        assert!(
            self.contains_stripe(stripe),
            "{stripe} out of range: the blob has {} stripes",
            self.n_stripes()
        );
        // stripe < n_stripes, so start < n_pieces <= N_PIECES_MAX and neither product
        // overflows a u64 (nor, after the `min`, a u32).
        let start = u64::from(stripe.0) * u64::from(self.pieces_per_stripe);
        let end = (start + u64::from(self.pieces_per_stripe)).min(u64::from(self.n_pieces()));
        start as u32..end as u32
    }

    /// What the piece hashes are (the encoding version).
    pub fn piece_check(&self) -> PieceCheck {
        self.piece_check
    }

    /// Whether checking every piece also checks the blob's digest ([`PieceCheck::Sha256Chain`]):
    /// then a complete download needs no second pass over the blob.
    pub fn pieces_prove_digest(&self) -> bool {
        self.piece_check == PieceCheck::Sha256Chain
    }

    /// The entry of `piece` (per [`Metainfo::piece_check`]). Panics if the piece is out of
    /// range.
    pub fn piece_hash(&self, piece: PieceIndex) -> &[u8; PIECE_HASH_LEN] {
        self.assert_contains_piece(piece);
        &self.piece_hashes[piece.0 as usize]
    }

    /// All piece hashes, in piece order.
    pub fn piece_hashes(&self) -> &[[u8; PIECE_HASH_LEN]] {
        &self.piece_hashes
    }

    /// Whether `data` is exactly `piece`: the right length and the right hash. Panics if
    /// the piece is out of range (the caller needed a valid index to know how many payload
    /// bytes to read anyway).
    pub fn verify_piece(&self, piece: PieceIndex, data: &[u8]) -> bool {
        let mut verifier = self.piece_verifier(piece);
        verifier.update(data);
        verifier.verify()
    }

    /// A checker for `piece`'s bytes fed in chunks as they arrive (what the engine hashes a
    /// payload with while reading it). Panics if the piece is out of range.
    pub fn piece_verifier(&self, piece: PieceIndex) -> PieceVerifier {
        let expected = *self.piece_hash(piece);
        let piece_len = self.piece_len_of(piece);
        match self.piece_check {
            PieceCheck::Sha256 => PieceVerifier::sha256(expected, piece_len),
            PieceCheck::Sha256Chain => {
                let index = piece.0 as usize;
                let previous = index.checked_sub(1).map(|i| &self.piece_hashes[i]);
                let last = index + 1 == self.piece_hashes.len();
                PieceVerifier::chain(
                    previous,
                    self.piece_offset(piece),
                    piece_len,
                    expected,
                    last,
                )
            }
        }
    }

    /// SHA-256 of the canonical encoding; names this blob's swarm. Computed once when the
    /// metainfo is constructed, so this is free.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Length of [`Metainfo::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        header_len(&self.digest) + self.piece_hashes.len() * PIECE_HASH_LEN
    }

    /// The canonical encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_header(&mut out);
        out.extend_from_slice(self.piece_hashes.as_flattened());
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Parses a canonical encoding. Rejects every inconsistency with a specific error, checks
    /// the header and the exact total length before allocating, and never panics.
    pub fn decode(input: &[u8]) -> Result<Metainfo, MetainfoError> {
        let mut reader = Reader { input, offset: 0 };
        let magic = reader.take::<4>()?;
        if magic != MAGIC {
            return Err(MetainfoError::BadMagic { found: magic });
        }
        let [version] = reader.take::<1>()?;
        let piece_check = match version {
            ENCODING_VERSION_SHA256 => PieceCheck::Sha256,
            ENCODING_VERSION_CHAIN => PieceCheck::Sha256Chain,
            _ => return Err(MetainfoError::UnknownVersion { version }),
        };
        let [algorithm] = reader.take::<1>()?;
        let digest = match algorithm {
            ALGORITHM_SHA256 => Digest::Sha256(reader.take::<32>()?),
            ALGORITHM_SHA512 => Digest::Sha512(reader.take::<64>()?),
            _ => return Err(MetainfoError::UnknownAlgorithm { algorithm }),
        };
        let blob_len = u64::from_be_bytes(reader.take::<8>()?);
        let piece_len = u32::from_be_bytes(reader.take::<4>()?);
        let pieces_per_stripe = u32::from_be_bytes(reader.take::<4>()?);
        let n_pieces_declared = u32::from_be_bytes(reader.take::<4>()?);
        debug_assert_eq!(reader.offset, header_len(&digest));

        let n_pieces = check_geometry(blob_len, piece_len, pieces_per_stripe)?;
        if u64::from(n_pieces_declared) != n_pieces {
            return Err(MetainfoError::PieceCountMismatch {
                blob_len,
                piece_len,
                expected: n_pieces,
                actual: u64::from(n_pieces_declared),
            });
        }
        // u64 arithmetic: on a 32-bit target the expected length may exceed usize.
        let expected_len = reader.offset as u64 + n_pieces * PIECE_HASH_LEN as u64;
        let actual_len = input.len();
        if (actual_len as u64) < expected_len {
            return Err(MetainfoError::Truncated {
                needed: expected_len,
                actual: actual_len,
            });
        }
        if actual_len as u64 > expected_len {
            return Err(MetainfoError::TrailingBytes {
                expected: expected_len,
                actual: actual_len,
            });
        }
        // Only now, with the length proven, do we allocate.
        let (piece_hashes, rest) = reader.rest().as_chunks::<PIECE_HASH_LEN>();
        debug_assert!(rest.is_empty());
        let metainfo = Metainfo::from_checked_parts(
            piece_check,
            digest,
            blob_len,
            piece_len,
            pieces_per_stripe,
            piece_hashes.to_vec(),
        )?;
        debug_assert_eq!(metainfo.encoded_len(), input.len());
        Ok(metainfo)
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        let algorithm = match self.digest {
            Digest::Sha256(_) => ALGORITHM_SHA256,
            Digest::Sha512(_) => ALGORITHM_SHA512,
        };
        out.extend_from_slice(&MAGIC);
        out.push(match self.piece_check {
            PieceCheck::Sha256 => ENCODING_VERSION_SHA256,
            PieceCheck::Sha256Chain => ENCODING_VERSION_CHAIN,
        });
        out.push(algorithm);
        out.extend_from_slice(self.digest.as_bytes());
        out.extend_from_slice(&self.blob_len.to_be_bytes());
        out.extend_from_slice(&self.piece_len.to_be_bytes());
        out.extend_from_slice(&self.pieces_per_stripe.to_be_bytes());
        out.extend_from_slice(&self.n_pieces().to_be_bytes());
    }

    /// Hashes the encoding without materialising it: the header, then the piece hashes.
    fn compute_info_hash(&self) -> InfoHash {
        let mut header = Vec::with_capacity(HEADER_LEN_MAX);
        self.write_header(&mut header);
        let mut hasher = sha2::Sha256::new();
        hasher.update(&header);
        hasher.update(self.piece_hashes.as_flattened());
        InfoHash(hasher.finalize().into())
    }

    fn assert_contains_piece(&self, piece: PieceIndex) {
        assert!(
            self.contains_piece(piece),
            "{piece} out of range: the blob has {} pieces",
            self.n_pieces()
        );
    }
}

/// Streams a blob through its piece hashes and its digest, producing its [`Metainfo`]: one
/// SHA-256 pass for a chained metainfo (the default for sha256 blobs), otherwise SHA-256 per
/// piece beside the digest's own algorithm.
///
/// Accepts data in chunks of any size. Memory is the piece hash list, 32 bytes per piece,
/// grown as pieces complete; blob data is never retained.
pub struct MetainfoBuilder {
    /// What the whole blob must hash to; checked by `finish`.
    expected_digest: Digest,
    /// Declared blob length: `update` refuses bytes past it, `finish` refuses fewer.
    blob_len: u64,
    /// From the params' table, for `blob_len`.
    piece_len: u32,
    /// Validated at construction.
    pieces_per_stripe: u32,
    /// Bytes accepted so far.
    received_len: u64,
    hashing: Hashing,
    /// Bytes of the current piece hashed so far; always < `piece_len` between calls.
    piece_filled_len: u32,
    /// Hashes of the completed pieces.
    piece_hashes: Vec<[u8; PIECE_HASH_LEN]>,
}

enum Hashing {
    /// [`PieceCheck::Sha256`]: the whole blob in the digest's algorithm, and the current,
    /// incomplete piece.
    Separate {
        /// Boxed: a sha512 state would make every builder twice as large.
        blob: Box<BlobHasher>,
        piece: sha2::Sha256,
    },
    /// [`PieceCheck::Sha256Chain`]: one SHA-256 over the blob, read at every piece end.
    Chain(ChainHasher),
}

enum BlobHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl BlobHasher {
    fn new(digest: &Digest) -> BlobHasher {
        match digest {
            Digest::Sha256(_) => BlobHasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => BlobHasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            BlobHasher::Sha256(hasher) => hasher.update(data),
            BlobHasher::Sha512(hasher) => hasher.update(data),
        }
    }

    fn finish(self) -> Digest {
        match self {
            BlobHasher::Sha256(hasher) => Digest::Sha256(hasher.finalize().into()),
            BlobHasher::Sha512(hasher) => Digest::Sha512(hasher.finalize().into()),
        }
    }
}

impl fmt::Debug for MetainfoBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetainfoBuilder")
            .field("expected_digest", &self.expected_digest)
            .field("blob_len", &self.blob_len)
            .field("piece_len", &self.piece_len)
            .field("pieces_per_stripe", &self.pieces_per_stripe)
            .field("received_len", &self.received_len)
            .field("n_pieces_done", &self.piece_hashes.len())
            .finish_non_exhaustive()
    }
}

impl MetainfoBuilder {
    /// Starts a blob of `blob_len` bytes that must hash to `digest`. The piece length comes
    /// from `params`' table.
    pub fn new(
        digest: Digest,
        blob_len: u64,
        params: &MetainfoParams,
    ) -> Result<MetainfoBuilder, MetainfoError> {
        params.validate()?;
        let piece_len = params.piece_lengths.piece_len_for(blob_len);
        let n_pieces = check_geometry(blob_len, piece_len, params.pieces_per_stripe)?;
        let preallocated = usize::try_from(n_pieces)
            .unwrap_or(usize::MAX)
            .min(BUILDER_PREALLOCATED_PIECES_MAX);
        let chained = params.piece_check == PieceCheck::Sha256Chain
            && matches!(digest, Digest::Sha256(_))
            && blob_len > 0;
        let hashing = if chained {
            Hashing::Chain(ChainHasher::new())
        } else {
            Hashing::Separate {
                blob: Box::new(BlobHasher::new(&digest)),
                piece: sha2::Sha256::new(),
            }
        };
        Ok(MetainfoBuilder {
            expected_digest: digest,
            blob_len,
            piece_len,
            pieces_per_stripe: params.pieces_per_stripe,
            received_len: 0,
            hashing,
            piece_filled_len: 0,
            piece_hashes: Vec::with_capacity(preallocated),
        })
    }

    /// The piece length chosen for this blob.
    pub fn piece_len(&self) -> u32 {
        self.piece_len
    }

    /// Bytes accepted so far.
    pub fn received_len(&self) -> u64 {
        self.received_len
    }

    /// Feeds the next bytes of the blob. Fails, consuming nothing, if they would take the blob
    /// past its declared length.
    pub fn update(&mut self, data: &[u8]) -> Result<(), MetainfoError> {
        let remaining = self.blob_len - self.received_len;
        let data_len = data.len() as u64;
        if data_len > remaining {
            return Err(MetainfoError::TooManyBytes {
                blob_len: self.blob_len,
                received: self.received_len.saturating_add(data_len),
            });
        }
        if let Hashing::Separate { blob, .. } = &mut self.hashing {
            blob.update(data);
        }
        let mut rest = data;
        let mut position = self.received_len;
        while !rest.is_empty() {
            let room = (self.piece_len - self.piece_filled_len) as usize;
            let (head, tail) = rest.split_at(room.min(rest.len()));
            match &mut self.hashing {
                Hashing::Separate { piece, .. } => piece.update(head),
                Hashing::Chain(chain) => chain.update(head),
            }
            position += head.len() as u64;
            // head.len() <= room <= piece_len, a u32.
            self.piece_filled_len += head.len() as u32;
            if self.piece_filled_len == self.piece_len {
                match &mut self.hashing {
                    Hashing::Separate { piece, .. } => {
                        self.piece_hashes.push(piece.finalize_reset().into());
                    }
                    // The last piece's entry is the digest, written by `finish`.
                    Hashing::Chain(chain) if position < self.blob_len => {
                        // Every piece length is a multiple of the 64-byte block.
                        debug_assert!(chain.chaining_value().is_some());
                        self.piece_hashes
                            .push(chain.chaining_value().unwrap_or_default());
                    }
                    Hashing::Chain(_) => {}
                }
                self.piece_filled_len = 0;
            }
            rest = tail;
        }
        self.received_len += data_len;
        debug_assert!(self.piece_filled_len < self.piece_len);
        debug_assert_eq!(
            self.piece_hashes.len() as u64,
            self.received_len / u64::from(self.piece_len)
        );
        Ok(())
    }

    /// Completes the metainfo. Fails if fewer than `blob_len` bytes arrived, or if the blob's
    /// digest is not the expected one.
    pub fn finish(mut self) -> Result<Metainfo, MetainfoError> {
        if self.received_len != self.blob_len {
            return Err(MetainfoError::TooFewBytes {
                blob_len: self.blob_len,
                received: self.received_len,
            });
        }
        let (piece_check, actual) = match self.hashing {
            Hashing::Separate { blob, piece } => {
                if self.piece_filled_len > 0 {
                    self.piece_hashes.push(piece.finalize().into());
                }
                (PieceCheck::Sha256, blob.finish())
            }
            Hashing::Chain(chain) => {
                let digest = chain.finalize();
                self.piece_hashes.push(digest);
                (PieceCheck::Sha256Chain, Digest::Sha256(digest))
            }
        };
        if actual != self.expected_digest {
            return Err(MetainfoError::DigestMismatch {
                expected: Box::new(self.expected_digest),
                actual: Box::new(actual),
            });
        }
        Metainfo::from_checked_parts(
            piece_check,
            self.expected_digest,
            self.blob_len,
            self.piece_len,
            self.pieces_per_stripe,
            self.piece_hashes,
        )
    }
}

/// Checks the numbers every metainfo must satisfy and returns its piece count,
/// `ceil(blob_len / piece_len)` (at most [`N_PIECES_MAX`]).
fn check_geometry(
    blob_len: u64,
    piece_len: u32,
    pieces_per_stripe: u32,
) -> Result<u64, MetainfoError> {
    if blob_len > limits::BLOB_LEN_MAX {
        return Err(MetainfoError::BlobTooLong { blob_len });
    }
    check_piece_len(piece_len)?;
    check_pieces_per_stripe(pieces_per_stripe)?;
    let n_pieces = blob_len.div_ceil(u64::from(piece_len));
    if n_pieces > N_PIECES_MAX {
        return Err(MetainfoError::TooManyPieces {
            blob_len,
            piece_len,
            n_pieces,
        });
    }
    Ok(n_pieces)
}

fn check_piece_len(piece_len: u32) -> Result<(), MetainfoError> {
    if !(limits::PIECE_LEN_MIN..=limits::PIECE_LEN_MAX).contains(&piece_len) {
        return Err(MetainfoError::PieceLenOutOfBounds { piece_len });
    }
    if !piece_len.is_power_of_two() {
        return Err(MetainfoError::PieceLenNotPowerOfTwo { piece_len });
    }
    Ok(())
}

fn check_pieces_per_stripe(pieces_per_stripe: u32) -> Result<(), MetainfoError> {
    if !(1..=limits::STRIPE_PIECES_MAX).contains(&pieces_per_stripe) {
        return Err(MetainfoError::PiecesPerStripeOutOfBounds { pieces_per_stripe });
    }
    Ok(())
}

fn header_len(digest: &Digest) -> usize {
    HEADER_LEN_WITHOUT_DIGEST + digest.as_bytes().len()
}

/// Reads fixed-size fields off the front of an encoding, reporting truncation.
struct Reader<'a> {
    input: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], MetainfoError> {
        let field = self
            .input
            .get(self.offset..)
            .and_then(|rest| rest.first_chunk::<N>());
        let Some(field) = field else {
            return Err(MetainfoError::Truncated {
                needed: self.offset as u64 + N as u64,
                actual: self.input.len(),
            });
        };
        self.offset += N;
        Ok(*field)
    }

    fn rest(&self) -> &[u8] {
        self.input.get(self.offset..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The smallest legal piece length, so that tests run many pieces through small blobs.
    const P: u32 = limits::PIECE_LEN_MIN;
    const P64: u64 = P as u64;

    fn params(piece_len: u32, pieces_per_stripe: u32) -> MetainfoParams {
        MetainfoParams {
            piece_lengths: PieceLengthTable::uniform(piece_len).unwrap(),
            pieces_per_stripe,
            ..MetainfoParams::default()
        }
    }

    /// Deterministic, distinct, non-cryptographic bytes.
    fn blob_of_len(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn synthetic_hashes(n_pieces: u64) -> Vec<[u8; 32]> {
        (0..n_pieces)
            .map(|i| {
                let mut hash = [0xa5; 32];
                hash[..8].copy_from_slice(&i.to_be_bytes());
                hash
            })
            .collect()
    }

    fn synthetic(blob_len: u64, piece_len: u32, pieces_per_stripe: u32) -> Metainfo {
        let n_pieces = blob_len.div_ceil(u64::from(piece_len));
        Metainfo::from_parts(
            Digest::Sha256([7; 32]),
            blob_len,
            piece_len,
            pieces_per_stripe,
            synthetic_hashes(n_pieces),
        )
        .unwrap()
    }

    // ---- geometry -------------------------------------------------------------------------

    /// Checks counts, the last piece's length and the last stripe's pieces, then walks every
    /// piece and stripe to check that they tile the blob.
    fn check_geometry(
        blob_len: u64,
        piece_len: u32,
        pieces_per_stripe: u32,
        n_pieces: u32,
        n_stripes: u32,
        last_piece_len: Option<u32>,
        last_stripe: Option<Range<u32>>,
    ) {
        let m = synthetic(blob_len, piece_len, pieces_per_stripe);
        let case = format!("blob {blob_len}, piece {piece_len}, stripe {pieces_per_stripe}");
        assert_eq!(m.n_pieces(), n_pieces, "{case}");
        assert_eq!(m.n_stripes(), n_stripes, "{case}");
        let last_piece = n_pieces.checked_sub(1).map(PieceIndex);
        assert_eq!(
            last_piece.map(|p| m.piece_len_of(p)),
            last_piece_len,
            "{case}"
        );
        let last_stripe_index = n_stripes.checked_sub(1).map(StripeIndex);
        assert_eq!(
            last_stripe_index.map(|s| m.stripe_pieces(s)),
            last_stripe,
            "{case}"
        );

        let mut offset = 0u64;
        for i in 0..n_pieces {
            let piece = PieceIndex(i);
            assert!(m.contains_piece(piece));
            assert_eq!(m.piece_offset(piece), offset, "{case}, {piece}");
            let len = m.piece_len_of(piece);
            assert!(len > 0 && len <= piece_len, "{case}, {piece}");
            if i + 1 < n_pieces {
                assert_eq!(len, piece_len, "{case}, {piece}");
            }
            offset += u64::from(len);
            assert!(
                m.stripe_pieces(m.stripe_of(piece)).contains(&i),
                "{case}, {piece}"
            );
        }
        assert_eq!(offset, blob_len, "{case}");
        assert!(!m.contains_piece(PieceIndex(n_pieces)));

        let mut next_piece = 0u32;
        for s in 0..n_stripes {
            let pieces = m.stripe_pieces(StripeIndex(s));
            assert_eq!(pieces.start, next_piece, "{case}, stripe {s}");
            assert!(!pieces.is_empty() && pieces.len() <= pieces_per_stripe as usize);
            next_piece = pieces.end;
        }
        assert_eq!(next_piece, n_pieces, "{case}");
        assert!(!m.contains_stripe(StripeIndex(n_stripes)));
    }

    #[test]
    fn geometry() {
        const WIDE: u32 = limits::STRIPE_PIECES_MAX;
        const M64: u32 = 64 << 20;
        // Empty and tiny blobs.
        check_geometry(0, P, 128, 0, 0, None, None);
        check_geometry(1, P, 128, 1, 1, Some(1), Some(0..1));
        check_geometry(1, M64, 1, 1, 1, Some(1), Some(0..1));
        // Exact multiples of the piece length: the last piece is full.
        check_geometry(P64, P, 128, 1, 1, Some(P), Some(0..1));
        check_geometry(3 * P64, P, 128, 3, 1, Some(P), Some(0..3));
        // A short last piece.
        check_geometry(P64 + 1, P, 128, 2, 1, Some(1), Some(0..2));
        check_geometry(3 * P64 - 1, P, 128, 3, 1, Some(P - 1), Some(0..3));
        // Stripes: one piece each, a short last stripe, exactly full, one wide stripe.
        check_geometry(5 * P64, P, 1, 5, 5, Some(P), Some(4..5));
        check_geometry(5 * P64, P, 2, 5, 3, Some(P), Some(4..5));
        check_geometry(5 * P64 - 7, P, 3, 5, 2, Some(P - 7), Some(3..5));
        check_geometry(6 * P64, P, 3, 6, 2, Some(P), Some(3..6));
        check_geometry(5 * P64, P, 5, 5, 1, Some(P), Some(0..5));
        check_geometry(5 * P64, P, WIDE, 5, 1, Some(P), Some(0..5));
        // Large blobs with the default table's largest piece length.
        check_geometry(100 * GIB, M64, 128, 1600, 13, Some(M64), Some(1536..1600));
        check_geometry(100 * GIB + 5, M64, 128, 1601, 13, Some(5), Some(1536..1601));
        let n = (limits::BLOB_LEN_MAX / u64::from(M64)) as u32;
        check_geometry(
            limits::BLOB_LEN_MAX,
            M64,
            128,
            n,
            n / 128,
            Some(M64),
            Some(n - 128..n),
        );
    }

    #[test]
    fn geometry_indexes_from_a_stripe_are_blob_wide() {
        let m = synthetic(10 * P64, P, 4);
        assert_eq!(m.stripe_pieces(StripeIndex(1)), 4..8);
        assert_eq!(m.stripe_of(PieceIndex(3)), StripeIndex(0));
        assert_eq!(m.stripe_of(PieceIndex(4)), StripeIndex(1));
        assert_eq!(m.stripe_of(PieceIndex(9)), StripeIndex(2));
        assert_eq!(m.piece_offset(PieceIndex(9)), 9 * P64);
        assert_eq!(m.piece_hash(PieceIndex(9)), &synthetic_hashes(10)[9]);
    }

    #[test]
    #[should_panic(expected = "piece 3 out of range: the blob has 3 pieces")]
    fn piece_accessor_panics_out_of_range() {
        synthetic(3 * P64, P, 2).piece_len_of(PieceIndex(3));
    }

    #[test]
    #[should_panic(expected = "stripe 2 out of range: the blob has 2 stripes")]
    fn stripe_accessor_panics_out_of_range() {
        synthetic(3 * P64, P, 2).stripe_pieces(StripeIndex(2));
    }

    #[test]
    #[should_panic(expected = "piece 0 out of range: the blob has 0 pieces")]
    fn empty_blob_has_no_piece_zero() {
        synthetic(0, P, 2).piece_hash(PieceIndex(0));
    }

    // ---- piece length table ---------------------------------------------------------------

    fn check_default_table(blob_len: u64, piece_len_mib: u32) {
        let piece_len = PieceLengthTable::default().piece_len_for(blob_len);
        assert_eq!(piece_len, piece_len_mib << 20, "blob {blob_len}");
    }

    #[test]
    fn default_table_selection() {
        check_default_table(0, 1);
        check_default_table(1, 1);
        check_default_table(GIB, 1);
        check_default_table(4 * GIB, 1);
        check_default_table(4 * GIB + 1, 2);
        check_default_table(8 * GIB, 2);
        check_default_table(8 * GIB + 1, 4);
        check_default_table(16 * GIB, 4);
        check_default_table(32 * GIB, 8);
        check_default_table(64 * GIB, 16);
        check_default_table(100 * GIB, 32);
        check_default_table(128 * GIB, 32);
        check_default_table(128 * GIB + 1, 64);
        check_default_table(limits::BLOB_LEN_MAX, 64);
        check_default_table(u64::MAX, 64);
    }

    #[test]
    fn default_table_gives_2048_to_4096_pieces_between_2_gib_and_128_gib() {
        let table = PieceLengthTable::default();
        let mut blob_len = 2 * GIB + 1;
        while blob_len <= 128 * GIB {
            let n_pieces = blob_len.div_ceil(u64::from(table.piece_len_for(blob_len)));
            assert!(
                (2048..=4096).contains(&n_pieces),
                "blob {blob_len}: {n_pieces}"
            );
            blob_len += 397 << 20;
        }
        let n_pieces_100_gib = (100 * GIB).div_ceil(u64::from(table.piece_len_for(100 * GIB)));
        assert_eq!(n_pieces_100_gib, 3200);
        let n_pieces_max = limits::BLOB_LEN_MAX.div_ceil(u64::from(limits::PIECE_LEN_MAX));
        assert!(n_pieces_max <= N_PIECES_MAX);
    }

    fn check_table(entries: &[(u64, u32)], expected: Result<(), MetainfoError>) {
        let got = PieceLengthTable::new(entries.to_vec()).map(|table| {
            assert_eq!(table.entries(), entries);
        });
        assert_eq!(got, expected, "entries {entries:?}");
    }

    #[test]
    fn table_validation() {
        use MetainfoError::*;
        let max = u64::MAX;
        check_table(&[(max, P)], Ok(()));
        check_table(&[(0, P), (1, 2 * P), (max, limits::PIECE_LEN_MAX)], Ok(()));
        check_table(&[], Err(TableEmpty));
        check_table(&[(10, P)], Err(TableNotCovering { bound: 10 }));
        check_table(
            &[(10, P), (max - 1, P)],
            Err(TableNotCovering { bound: max - 1 }),
        );
        let not_ascending = TableNotAscending {
            index: 1,
            previous: 10,
            bound: 10,
        };
        check_table(&[(10, P), (10, P), (max, P)], Err(not_ascending));
        let descending = TableNotAscending {
            index: 2,
            previous: 20,
            bound: 5,
        };
        check_table(&[(10, P), (20, P), (5, P), (max, P)], Err(descending));
        let bad_len = |index, piece_len| Err(TablePieceLen { index, piece_len });
        check_table(&[(max, 0)], bad_len(0, 0));
        check_table(&[(max, P / 2)], bad_len(0, P / 2));
        check_table(
            &[(max, 2 * limits::PIECE_LEN_MAX)],
            bad_len(0, 2 * limits::PIECE_LEN_MAX),
        );
        check_table(&[(10, P), (max, 3 * P)], bad_len(1, 3 * P));
        check_table(&[(max, u32::MAX)], bad_len(0, u32::MAX));
    }

    #[test]
    fn table_lookup_uses_inclusive_bounds() {
        let table = PieceLengthTable::new(vec![(0, P), (100, 2 * P), (u64::MAX, 4 * P)]).unwrap();
        assert_eq!(table.piece_len_for(0), P);
        assert_eq!(table.piece_len_for(1), 2 * P);
        assert_eq!(table.piece_len_for(100), 2 * P);
        assert_eq!(table.piece_len_for(101), 4 * P);
        assert_eq!(table.piece_len_for(u64::MAX), 4 * P);
    }

    #[test]
    fn params_validation() {
        let default = MetainfoParams::default();
        assert_eq!(default.pieces_per_stripe, 512);
        assert_eq!(default.validate(), Ok(()));
        for pieces_per_stripe in [0, limits::STRIPE_PIECES_MAX + 1, u32::MAX] {
            let bad = MetainfoParams {
                pieces_per_stripe,
                ..MetainfoParams::default()
            };
            let expected = MetainfoError::PiecesPerStripeOutOfBounds { pieces_per_stripe };
            assert_eq!(bad.validate(), Err(expected.clone()));
            let builder = MetainfoBuilder::new(Digest::sha256_of(b""), 0, &bad);
            assert_eq!(builder.map(|_| ()), Err(expected));
        }
    }

    // ---- builder --------------------------------------------------------------------------

    /// Feeds `blob` in chunks of the given sizes (cycled), and checks the result against the
    /// one-shot build and against per-piece hashes computed directly.
    fn check_chunked(blob: &[u8], digest: Digest, params: &MetainfoParams, chunk_sizes: &[usize]) {
        assert!(
            chunk_sizes.iter().any(|&size| size > 0),
            "no progress: {chunk_sizes:?}"
        );
        let one_shot = Metainfo::build(digest, blob, params).unwrap();
        let mut builder = MetainfoBuilder::new(digest, blob.len() as u64, params).unwrap();
        let mut rest = blob;
        for &size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            builder.update(chunk).unwrap();
            rest = tail;
        }
        assert_eq!(builder.received_len(), blob.len() as u64);
        let chunked = builder.finish().unwrap();
        assert_eq!(chunked, one_shot, "chunks {chunk_sizes:?}");

        let piece_len = one_shot.piece_len() as usize;
        assert_eq!(one_shot.n_pieces() as usize, blob.len().div_ceil(piece_len));
        for (i, piece) in blob.chunks(piece_len).enumerate() {
            let index = PieceIndex(i as u32);
            if one_shot.piece_check() == PieceCheck::Sha256 {
                let expected: [u8; 32] = sha2::Sha256::digest(piece).into();
                assert_eq!(one_shot.piece_hash(index), &expected, "piece {i}");
            }
            assert!(one_shot.verify_piece(index, piece), "piece {i}");
            let mut flipped = piece.to_vec();
            flipped[piece.len() / 2] ^= 1;
            assert!(!one_shot.verify_piece(index, &flipped), "piece {i}");
        }
        if one_shot.piece_check() == PieceCheck::Sha256Chain {
            let last = PieceIndex(one_shot.n_pieces() - 1);
            assert_eq!(one_shot.piece_hash(last), digest.as_bytes());
        }
    }

    fn sha256_params(piece_len: u32, pieces_per_stripe: u32) -> MetainfoParams {
        MetainfoParams {
            piece_check: PieceCheck::Sha256,
            ..params(piece_len, pieces_per_stripe)
        }
    }

    #[test]
    fn chained_pieces_are_checked_against_their_neighbours_and_the_digest() {
        for len in [
            P as usize,
            3 * P as usize,
            3 * P as usize + 65,
            2 * P as usize + 1,
        ] {
            let blob = blob_of_len(len);
            let digest = Digest::sha256_of(&blob);
            let m = Metainfo::build(digest, &blob, &params(P, 2)).unwrap();
            assert_eq!(m.piece_check(), PieceCheck::Sha256Chain);
            assert!(m.pieces_prove_digest());
            assert_eq!(m.encode()[4], 2, "version byte");
            assert_eq!(Metainfo::decode(&m.encode()), Ok(m.clone()));
            let pieces: Vec<&[u8]> = blob.chunks(P as usize).collect();
            for (i, piece) in pieces.iter().enumerate() {
                assert!(
                    m.verify_piece(PieceIndex(i as u32), piece),
                    "len {len} piece {i}"
                );
                // Fed in odd chunks, as a socket delivers them.
                let mut verifier = m.piece_verifier(PieceIndex(i as u32));
                for chunk in piece.chunks(1000) {
                    verifier.update(chunk);
                }
                assert!(verifier.verify(), "len {len} piece {i}");
            }
            // A piece in another's place, or cut short, fails.
            if pieces.len() > 2 {
                assert!(!m.verify_piece(PieceIndex(1), pieces[0]));
                let mut short = m.piece_verifier(PieceIndex(0));
                short.update(&pieces[0][..64]);
                assert!(!short.verify());
            }
            // The same blob with each piece's own SHA-256 is another swarm.
            let plain = Metainfo::build(digest, &blob, &sha256_params(P, 2)).unwrap();
            assert_eq!(plain.piece_check(), PieceCheck::Sha256);
            assert!(!plain.pieces_prove_digest());
            assert_eq!(plain.encode()[4], 1, "version byte");
            assert_ne!(plain.info_hash(), m.info_hash());
        }
    }

    #[test]
    fn a_chain_that_does_not_end_at_its_digest_is_refused() {
        let blob = blob_of_len(3 * P as usize);
        let digest = Digest::sha256_of(&blob);
        let m = Metainfo::build(digest, &blob, &params(P, 2)).unwrap();
        let mut hashes = m.piece_hashes().to_vec();
        let chained = |hashes: Vec<[u8; 32]>, digest: Digest| {
            Metainfo::from_checked_parts(
                PieceCheck::Sha256Chain,
                digest,
                blob.len() as u64,
                P,
                2,
                hashes,
            )
        };
        assert_eq!(chained(hashes.clone(), digest), Ok(m.clone()));
        // A tracker that lies about a chaining value: the pieces around it fail, the others
        // pass, and no bytes can be made to pass in their place.
        hashes[1][0] ^= 1;
        let lying = chained(hashes.clone(), digest).unwrap();
        let pieces: Vec<&[u8]> = blob.chunks(P as usize).collect();
        assert!(lying.verify_piece(PieceIndex(0), pieces[0]));
        assert!(!lying.verify_piece(PieceIndex(1), pieces[1]));
        assert!(!lying.verify_piece(PieceIndex(2), pieces[2]));
        // The last entry must be the digest; sha512 blobs and empty blobs cannot be chained.
        let mut wrong_end = m.piece_hashes().to_vec();
        wrong_end[2][5] ^= 1;
        assert!(matches!(
            chained(wrong_end, digest),
            Err(MetainfoError::BadChain { .. })
        ));
        let sha512 = Digest::sha512_of(&blob);
        assert!(matches!(
            chained(m.piece_hashes().to_vec(), sha512),
            Err(MetainfoError::BadChain { .. })
        ));
        // The builder falls back to per-piece SHA-256 where it cannot chain.
        assert_eq!(
            Metainfo::build(sha512, &blob, &params(P, 2))
                .unwrap()
                .piece_check(),
            PieceCheck::Sha256
        );
        let empty = Metainfo::build(Digest::sha256_of(b""), b"", &params(P, 2)).unwrap();
        assert_eq!(empty.piece_check(), PieceCheck::Sha256);
        // A version-2 encoding of a sha512 header is refused when decoded.
        let mut encoded = Metainfo::build(sha512, &blob, &params(P, 2))
            .unwrap()
            .encode();
        encoded[4] = 2;
        assert!(matches!(
            Metainfo::decode(&encoded),
            Err(MetainfoError::BadChain { .. })
        ));
    }

    #[test]
    fn builder_chunkings_agree() {
        let blob = blob_of_len(5 * P as usize + 1000);
        let digest = Digest::sha256_of(&blob);
        let params = params(P, 2);
        let p = P as usize;
        for chunks in [
            &[1][..],
            &[3],
            &[1000],
            &[p - 1],
            &[p],
            &[p + 1],
            &[2 * p + 3],
            &[blob.len()],
            &[0, 1, p, 7, 0, p - 8],
            &[p - 1, 1, 1, p - 2],
        ] {
            check_chunked(&blob, digest, &params, chunks);
        }
        // Exact multiple of the piece length: no short last piece.
        let blob = blob_of_len(3 * p);
        check_chunked(&blob, Digest::sha256_of(&blob), &params, &[p - 5, 10]);
    }

    #[test]
    fn builder_empty_blob() {
        let m = Metainfo::build(Digest::sha256_of(b""), b"", &MetainfoParams::default()).unwrap();
        assert_eq!((m.n_pieces(), m.n_stripes(), m.blob_len()), (0, 0, 0));
        assert_eq!(m.piece_len(), 1 << 20);
        assert_eq!(m.encoded_len(), 4 + 1 + 1 + 32 + 8 + 4 + 4 + 4);
        assert_eq!(Metainfo::decode(&m.encode()), Ok(m.clone()));
        // Nothing fed at all is the same as one empty update.
        let builder = MetainfoBuilder::new(m.digest(), 0, &MetainfoParams::default()).unwrap();
        assert_eq!(builder.finish(), Ok(m));
    }

    #[test]
    fn builder_one_byte() {
        let m = Metainfo::build(Digest::sha256_of(b"x"), b"x", &MetainfoParams::default()).unwrap();
        assert_eq!((m.n_pieces(), m.n_stripes()), (1, 1));
        assert_eq!(m.piece_len_of(PieceIndex(0)), 1);
        assert_eq!(m.stripe_pieces(StripeIndex(0)), 0..1);
        assert!(m.verify_piece(PieceIndex(0), b"x"));
        assert!(!m.verify_piece(PieceIndex(0), b"y"));
        assert!(!m.verify_piece(PieceIndex(0), b"xx"));
        assert!(!m.verify_piece(PieceIndex(0), b""));
    }

    #[test]
    fn verify_piece_checks_length_and_hash() {
        let blob = blob_of_len(2 * P as usize + 10);
        let m = Metainfo::build(Digest::sha256_of(&blob), &blob, &params(P, 128)).unwrap();
        let p = P as usize;
        assert!(m.verify_piece(PieceIndex(0), &blob[..p]));
        assert!(m.verify_piece(PieceIndex(2), &blob[2 * p..]));
        assert!(
            !m.verify_piece(PieceIndex(0), &blob[p..2 * p]),
            "another piece's data"
        );
        assert!(
            !m.verify_piece(PieceIndex(2), &blob[2 * p..2 * p + 9]),
            "one byte short"
        );
        let mut corrupt = blob[p..2 * p].to_vec();
        corrupt[100] ^= 1;
        assert!(!m.verify_piece(PieceIndex(1), &corrupt), "one bit flipped");
    }

    #[test]
    fn builder_sha512() {
        let blob = blob_of_len(3 * P as usize + 1);
        let digest = Digest::sha512_of(&blob);
        check_chunked(&blob, digest, &params(P, 2), &[P as usize + 3]);
        let m = Metainfo::build(digest, &blob, &params(P, 2)).unwrap();
        assert_eq!(m.digest(), digest);
        assert_eq!(m.n_pieces(), 4);
        let encoded = m.encode();
        assert_eq!(encoded[5], 2, "algorithm byte");
        assert_eq!(&encoded[6..70], digest.as_bytes());
        assert_eq!(encoded.len(), 4 + 1 + 1 + 64 + 8 + 4 + 4 + 4 + 4 * 32);
        assert_eq!(Metainfo::decode(&encoded), Ok(m.clone()));

        // The same content under its sha256 name is a different swarm.
        let m256 = Metainfo::build(Digest::sha256_of(&blob), &blob, &sha256_params(P, 2)).unwrap();
        assert_eq!(m256.piece_hashes(), m.piece_hashes());
        assert_ne!(m256.info_hash(), m.info_hash());
    }

    #[test]
    fn builder_digest_mismatch() {
        let blob = blob_of_len(P as usize + 1);
        for (expected, actual) in [
            (Digest::sha256_of(b"other"), Digest::sha256_of(&blob)),
            (Digest::sha512_of(b"other"), Digest::sha512_of(&blob)),
        ] {
            let got = Metainfo::build(expected, &blob, &params(P, 1));
            let mismatch = MetainfoError::DigestMismatch {
                expected: Box::new(expected),
                actual: Box::new(actual),
            };
            assert_eq!(got, Err(mismatch));
        }
    }

    #[test]
    fn builder_too_many_bytes() {
        let digest = Digest::sha256_of(&blob_of_len(10));
        let mut builder = MetainfoBuilder::new(digest, 10, &params(P, 1)).unwrap();
        let too_many = |received| {
            Err(MetainfoError::TooManyBytes {
                blob_len: 10,
                received,
            })
        };
        assert_eq!(builder.update(&blob_of_len(11)), too_many(11));
        assert_eq!(
            builder.received_len(),
            0,
            "a refused update consumes nothing"
        );
        builder.update(&blob_of_len(5)).unwrap();
        assert_eq!(builder.update(&blob_of_len(6)), too_many(11));
        builder.update(&blob_of_len(10)[5..]).unwrap();
        assert_eq!(builder.update(b"x"), too_many(11));
        builder.update(b"").unwrap();
        let m = builder.finish().unwrap();
        assert_eq!(
            m,
            Metainfo::build(digest, &blob_of_len(10), &params(P, 1)).unwrap()
        );
    }

    #[test]
    fn builder_too_few_bytes() {
        let blob = blob_of_len(2 * P as usize);
        let digest = Digest::sha256_of(&blob);
        for fed in [0, 1, P as usize, 2 * P as usize - 1] {
            let expected = MetainfoError::TooFewBytes {
                blob_len: 2 * P64,
                received: fed as u64,
            };
            let finished =
                MetainfoBuilder::new(digest, blob.len() as u64, &params(P, 1)).and_then(|mut b| {
                    b.update(&blob[..fed])?;
                    b.finish()
                });
            assert_eq!(finished, Err(expected), "fed {fed}");
        }
    }

    #[test]
    fn builder_rejects_impossible_blobs() {
        let digest = Digest::sha256_of(b"");
        let too_long = MetainfoBuilder::new(digest, limits::BLOB_LEN_MAX + 1, &params(P, 1));
        assert_eq!(
            too_long.map(|_| ()),
            Err(MetainfoError::BlobTooLong {
                blob_len: limits::BLOB_LEN_MAX + 1
            })
        );
        // The largest blob in the smallest pieces: 2^30 pieces, more than a metainfo may list.
        let too_many = MetainfoBuilder::new(digest, limits::BLOB_LEN_MAX, &params(P, 1));
        assert!(matches!(
            too_many,
            Err(MetainfoError::TooManyPieces { n_pieces, .. }) if n_pieces == 1 << 30
        ));
        // The most pieces allowed: nothing reserved for them up front.
        let blob_len = N_PIECES_MAX * P64;
        let builder = MetainfoBuilder::new(digest, blob_len, &params(P, 1)).unwrap();
        assert!(builder.piece_hashes.capacity() <= BUILDER_PREALLOCATED_PIECES_MAX);
        assert_eq!(builder.piece_len(), P);
    }

    // ---- from_parts -----------------------------------------------------------------------

    #[test]
    fn from_parts_validation() {
        use MetainfoError::*;
        let digest = Digest::Sha256([1; 32]);
        let check = |blob_len, piece_len, pieces_per_stripe, n_hashes, expected| {
            let got = Metainfo::from_parts(
                digest,
                blob_len,
                piece_len,
                pieces_per_stripe,
                synthetic_hashes(n_hashes),
            );
            assert_eq!(
                got.map(|m| m.n_pieces()),
                expected,
                "{blob_len} {piece_len}"
            );
        };
        check(0, P, 1, 0, Ok(0));
        check(P64 + 1, P, 1, 2, Ok(2));
        let mismatch = |blob_len, expected, actual| PieceCountMismatch {
            blob_len,
            piece_len: P,
            expected,
            actual,
        };
        check(0, P, 1, 1, Err(mismatch(0, 0, 1)));
        check(P64 + 1, P, 1, 1, Err(mismatch(P64 + 1, 2, 1)));
        check(P64 + 1, P, 1, 3, Err(mismatch(P64 + 1, 2, 3)));
        check(
            1,
            P - 1,
            1,
            1,
            Err(PieceLenOutOfBounds { piece_len: P - 1 }),
        );
        check(
            1,
            3 * P,
            1,
            1,
            Err(PieceLenNotPowerOfTwo { piece_len: 3 * P }),
        );
        check(
            1,
            P,
            0,
            1,
            Err(PiecesPerStripeOutOfBounds {
                pieces_per_stripe: 0,
            }),
        );
        let too_long = limits::BLOB_LEN_MAX + 1;
        check(too_long, P, 1, 0, Err(BlobTooLong { blob_len: too_long }));
    }

    #[test]
    fn debug_shows_geometry_not_hashes() {
        let text = format!("{:?}", synthetic(1000 * P64, P, 8));
        assert!(text.contains("n_pieces: 1000"), "{text}");
        assert!(text.len() < 400, "{}", text.len());
    }

    // ---- encoding -------------------------------------------------------------------------

    #[test]
    fn encoding_layout() {
        let m = Metainfo::from_parts(
            Digest::Sha256([0x11; 32]),
            P64 + 1,
            P,
            2,
            vec![[0xaa; 32], [0xbb; 32]],
        )
        .unwrap();
        let mut expected = b"SHMI\x01\x01".to_vec();
        expected.extend([0x11; 32]);
        expected.extend([0, 0, 0, 0, 0, 0, 0x40, 0x01]); // blob_len 16385
        expected.extend([0, 0, 0x40, 0]); // piece_len 16384
        expected.extend([0, 0, 0, 2]); // pieces_per_stripe
        expected.extend([0, 0, 0, 2]); // n_pieces
        expected.extend([0xaa; 32]);
        expected.extend([0xbb; 32]);
        assert_eq!(m.encode(), expected);
        assert_eq!(m.encoded_len(), expected.len());
        assert_eq!(
            m.info_hash(),
            InfoHash(sha2::Sha256::digest(&expected).into())
        );
        assert_eq!(Metainfo::decode(&expected), Ok(m));
    }

    /// A raw header, with any field free to be wrong.
    fn raw_header(
        algorithm: u8,
        digest_len: usize,
        blob_len: u64,
        piece_len: u32,
        pieces_per_stripe: u32,
        n_pieces: u32,
    ) -> Vec<u8> {
        let mut out = b"SHMI\x01".to_vec();
        out.push(algorithm);
        out.extend(std::iter::repeat_n(0x33, digest_len));
        out.extend(blob_len.to_be_bytes());
        out.extend(piece_len.to_be_bytes());
        out.extend(pieces_per_stripe.to_be_bytes());
        out.extend(n_pieces.to_be_bytes());
        out
    }

    fn with_hashes(mut header: Vec<u8>, n_hashes: usize) -> Vec<u8> {
        header.extend(std::iter::repeat_n(0x44, n_hashes * 32));
        header
    }

    fn check_rejects(input: &[u8], expected: MetainfoError) {
        assert_eq!(Metainfo::decode(input), Err(expected), "input {input:02x?}");
    }

    #[test]
    fn decode_accepts_raw_headers() {
        let ok = |input: Vec<u8>| assert!(Metainfo::decode(&input).is_ok(), "{input:02x?}");
        ok(raw_header(1, 32, 0, P, 1, 0));
        ok(raw_header(2, 64, 0, P, 1, 0));
        ok(with_hashes(raw_header(1, 32, P64 + 1, P, 4096, 2), 2));
        ok(with_hashes(
            raw_header(2, 64, 1, limits::PIECE_LEN_MAX, 1, 1),
            1,
        ));
    }

    #[test]
    fn decode_rejects_bad_prefixes() {
        use MetainfoError::*;
        let truncated = |needed, actual| Truncated { needed, actual };
        check_rejects(b"", truncated(4, 0));
        check_rejects(b"SHM", truncated(4, 3));
        check_rejects(b"SHMX\x01\x01", BadMagic { found: *b"SHMX" });
        check_rejects(b"shmi\x01\x01", BadMagic { found: *b"shmi" });
        check_rejects(b"SHMI", truncated(5, 4));
        for version in [0, 3, 255] {
            check_rejects(
                &[b'S', b'H', b'M', b'I', version],
                UnknownVersion { version },
            );
        }
        check_rejects(b"SHMI\x01", truncated(6, 5));
        for algorithm in [0, 3, 255] {
            check_rejects(
                &[b'S', b'H', b'M', b'I', 1, algorithm],
                UnknownAlgorithm { algorithm },
            );
        }
        let full = raw_header(1, 32, P64, P, 1, 1);
        check_rejects(&full[..6 + 10], truncated(6 + 32, 6 + 10));
        check_rejects(&full[..6 + 32 + 7], truncated(6 + 32 + 8, 6 + 32 + 7));
        check_rejects(
            &full[..full.len() - 1],
            truncated(full.len() as u64, full.len() - 1),
        );
        let full512 = raw_header(2, 64, P64, P, 1, 1);
        check_rejects(&full512[..6 + 40], truncated(6 + 64, 6 + 40));
        check_rejects(
            &full512[..6 + 64 + 8 + 3],
            truncated(6 + 64 + 8 + 4, 6 + 64 + 8 + 3),
        );
    }

    #[test]
    fn decode_rejects_bad_header_numbers() {
        use MetainfoError::*;
        let over = limits::BLOB_LEN_MAX + 1;
        check_rejects(
            &raw_header(1, 32, over, P, 1, 0),
            BlobTooLong { blob_len: over },
        );
        let max = u64::MAX;
        check_rejects(
            &raw_header(1, 32, max, P, 1, 0),
            BlobTooLong { blob_len: max },
        );
        for piece_len in [0, 1, P / 2, P - 1, 2 * limits::PIECE_LEN_MAX, u32::MAX] {
            check_rejects(
                &raw_header(1, 32, 0, piece_len, 1, 0),
                PieceLenOutOfBounds { piece_len },
            );
        }
        for piece_len in [P + 1, 3 * P, limits::PIECE_LEN_MAX - 1] {
            let expected = PieceLenNotPowerOfTwo { piece_len };
            check_rejects(&raw_header(1, 32, 0, piece_len, 1, 0), expected);
        }
        for pieces_per_stripe in [0, limits::STRIPE_PIECES_MAX + 1, u32::MAX] {
            let expected = PiecesPerStripeOutOfBounds { pieces_per_stripe };
            check_rejects(&raw_header(1, 32, 0, P, pieces_per_stripe, 0), expected);
        }
    }

    #[test]
    fn decode_rejects_wrong_piece_counts_and_lengths() {
        use MetainfoError::*;
        let mismatch = |blob_len, expected, actual| PieceCountMismatch {
            blob_len,
            piece_len: P,
            expected,
            actual,
        };
        let one_for_empty = with_hashes(raw_header(1, 32, 0, P, 1, 1), 1);
        check_rejects(&one_for_empty, mismatch(0, 0, 1));
        let blob_len = P64 + 1;
        let too_few = with_hashes(raw_header(1, 32, blob_len, P, 1, 1), 1);
        check_rejects(&too_few, mismatch(blob_len, 2, 1));
        let too_many = with_hashes(raw_header(1, 32, blob_len, P, 1, 3), 3);
        check_rejects(&too_many, mismatch(blob_len, 2, 3));
        let huge = raw_header(1, 32, blob_len, P, 1, u32::MAX);
        check_rejects(&huge, mismatch(blob_len, 2, u64::from(u32::MAX)));

        let header_len = 6 + 32 + 20;
        let two = raw_header(1, 32, blob_len, P, 1, 2);
        let truncated = |needed, actual| Truncated { needed, actual };
        check_rejects(&two, truncated(header_len + 64, header_len as usize));
        let short = with_hashes(two.clone(), 2);
        check_rejects(
            &short[..short.len() - 1],
            truncated(header_len + 64, short.len() - 1),
        );
        let mut long = with_hashes(two.clone(), 2);
        long.push(0);
        let trailing = TrailingBytes {
            expected: header_len + 64,
            actual: long.len(),
        };
        check_rejects(&long, trailing);
        check_rejects(
            &with_hashes(two, 3),
            TrailingBytes {
                expected: header_len + 64,
                actual: header_len as usize + 96,
            },
        );
    }

    #[test]
    fn decode_rejects_more_pieces_than_the_limit() {
        let n_pieces = N_PIECES_MAX as u32 + 1;
        let blob_len = u64::from(n_pieces) * P64;
        let header = raw_header(1, 32, blob_len, P, 1, n_pieces);
        assert!(matches!(
            Metainfo::decode(&header),
            Err(MetainfoError::TooManyPieces { .. })
        ));
    }

    #[test]
    fn decode_checks_length_before_allocating() {
        // A header that claims 2^20 pieces (32 MiB of hashes) with none present must fail on
        // the length check, not try to allocate.
        let n_pieces = N_PIECES_MAX as u32;
        let header = raw_header(1, 32, N_PIECES_MAX * P64, P, 1, n_pieces);
        let needed = header.len() as u64 + u64::from(n_pieces) * 32;
        assert_eq!(needed, ENCODED_LEN_MAX - 32);
        let actual = header.len();
        check_rejects(&header, MetainfoError::Truncated { needed, actual });
    }

    #[test]
    fn error_messages_name_the_numbers() {
        let message = MetainfoError::PieceCountMismatch {
            blob_len: 16385,
            piece_len: 16384,
            expected: 2,
            actual: 3,
        }
        .to_string();
        for number in ["16385", "16384", "2", "3"] {
            assert!(message.contains(number), "{message}");
        }
        let message = MetainfoError::PieceLenOutOfBounds { piece_len: 5 }.to_string();
        assert!(
            message.contains("5 is outside [16384, 67108864]"),
            "{message}"
        );
        let message = MetainfoError::BadMagic { found: *b"SHMX" }.to_string();
        assert!(message.contains("[53, 48, 4d, 58]"), "{message}");
    }

    // ---- properties -----------------------------------------------------------------------

    fn arb_digest() -> impl Strategy<Value = Digest> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(Digest::Sha256),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
                let mut bytes = [0u8; 64];
                bytes[..32].copy_from_slice(&a);
                bytes[32..].copy_from_slice(&b);
                Digest::Sha512(bytes)
            }),
        ]
    }

    /// Any valid metainfo with at most 40 pieces.
    fn arb_metainfo() -> impl Strategy<Value = Metainfo> {
        let min_exp = limits::PIECE_LEN_MIN.trailing_zeros();
        let max_exp = limits::PIECE_LEN_MAX.trailing_zeros();
        (
            arb_digest(),
            min_exp..=max_exp,
            prop_oneof![1..=8u32, 1..=limits::STRIPE_PIECES_MAX],
            0..=40usize,
            any::<u32>(),
        )
            .prop_flat_map(
                |(digest, exp, pieces_per_stripe, n_pieces, last_len_seed)| {
                    let piece_len = 1u32 << exp;
                    let blob_len = match n_pieces {
                        0 => 0,
                        n => {
                            (n as u64 - 1) * u64::from(piece_len)
                                + u64::from(last_len_seed % piece_len + 1)
                        }
                    };
                    prop::collection::vec(any::<[u8; 32]>(), n_pieces).prop_map(move |hashes| {
                        Metainfo::from_parts(digest, blob_len, piece_len, pieces_per_stripe, hashes)
                            .unwrap()
                    })
                },
            )
    }

    /// Decoding must never panic, and anything it accepts must be canonical.
    fn assert_decode_is_canonical(input: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(m) = Metainfo::decode(input) {
            prop_assert_eq!(m.encode(), input);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_round_trip(m in arb_metainfo()) {
            let encoded = m.encode();
            prop_assert_eq!(encoded.len(), m.encoded_len());
            let info_hash = InfoHash(sha2::Sha256::digest(&encoded).into());
            prop_assert_eq!(m.info_hash(), info_hash);
            let decoded = Metainfo::decode(&encoded).unwrap();
            prop_assert_eq!(&decoded, &m);
            prop_assert_eq!(decoded.encode(), encoded);
        }

        #[test]
        fn prop_decode_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
            assert_decode_is_canonical(&input)?;
        }

        #[test]
        fn prop_decode_arbitrary_after_valid_prefix(
            algorithm in 0..4u8,
            tail in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut input = vec![b'S', b'H', b'M', b'I', 1, algorithm];
            input.extend(tail);
            assert_decode_is_canonical(&input)?;
        }

        #[test]
        fn prop_single_byte_mutation(m in arb_metainfo(), at in any::<usize>(), xor in 1..=255u8) {
            let mut input = m.encode();
            let at = at % input.len();
            input[at] ^= xor;
            assert_decode_is_canonical(&input)?;
        }

        #[test]
        fn prop_truncation_is_rejected(m in arb_metainfo(), cut in any::<usize>()) {
            let input = m.encode();
            let cut = cut % input.len();
            let is_truncated = matches!(
                Metainfo::decode(&input[..cut]),
                Err(MetainfoError::Truncated { .. })
            );
            prop_assert!(is_truncated);
        }

        #[test]
        fn prop_extension_is_rejected(
            m in arb_metainfo(),
            extra in prop::collection::vec(any::<u8>(), 1..40),
        ) {
            let mut input = m.encode();
            input.extend(extra);
            let is_trailing = matches!(
                Metainfo::decode(&input),
                Err(MetainfoError::TrailingBytes { .. })
            );
            prop_assert!(is_trailing);
        }

        #[test]
        fn prop_builder_chunking_is_irrelevant(
            blob_len in 0..(6 * P as usize),
            chunk_sizes in prop::collection::vec(0..(2 * P as usize), 1..8),
            pieces_per_stripe in 1..=4u32,
        ) {
            prop_assume!(chunk_sizes.iter().any(|&size| size > 0));
            let blob = blob_of_len(blob_len);
            let params = params(P, pieces_per_stripe);
            check_chunked(&blob, Digest::sha256_of(&blob), &params, &chunk_sizes);
        }
    }
}
