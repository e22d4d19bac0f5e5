//! Protocol-wide hard bounds. Every length that crosses the wire is checked against one of
//! these before anything is allocated for it.

/// Smallest piece length any metainfo may use. The default table never goes below 1 MiB;
/// the floor is lower so that tests can run many pieces through small blobs.
pub const PIECE_LEN_MIN: u32 = 16 * 1024;

/// Largest piece length any metainfo may use (and so the largest piece payload on the wire).
pub const PIECE_LEN_MAX: u32 = 64 * 1024 * 1024;

/// Most pieces a stripe may hold; bounds the handshake's bitfield (512 bytes).
pub const STRIPE_PIECES_MAX: u32 = 4096;

/// Largest blob a metainfo may describe (16 TiB); with [`PIECE_LEN_MIN`] this bounds the
/// piece count, and so the size of an encoded metainfo.
pub const BLOB_LEN_MAX: u64 = 16 << 40;

/// Most pieces a metainfo may list (1 Mi), which bounds an encoded metainfo to 32 MiB of
/// piece hashes. The default piece-length table never comes near it (a 16 TiB blob at 64 MiB
/// pieces has 256 Ki pieces); it binds only tables with small pieces and huge blobs.
pub const PIECES_MAX: u32 = 1 << 20;

const _: () = assert!(PIECE_LEN_MIN <= PIECE_LEN_MAX);
const _: () = assert!(BLOB_LEN_MAX.div_ceil(PIECE_LEN_MAX as u64) <= PIECES_MAX as u64);
const _: () = assert!(PIECE_LEN_MIN.is_power_of_two() && PIECE_LEN_MAX.is_power_of_two());
const _: () = assert!(STRIPE_PIECES_MAX.is_multiple_of(8));
