//! Checking one piece against its metainfo entry, in either of the two ways a metainfo can
//! define piece hashes ([`PieceCheck`]).
//!
//! [`PieceCheck::Sha256Chain`] uses the structure of SHA-256 itself: the blob's digest is
//! computed by feeding 64-byte blocks through a compression function, starting from a fixed
//! initial state, then padding the end with the message length. Every piece length is a
//! multiple of 64, so the state after the last block of piece `i` (its *chaining value*)
//! depends on pieces `0..=i` only. The metainfo lists that state for every piece but the last,
//! and the blob digest for the last. A piece is checked by starting from the previous piece's
//! listed state (or the initial state) and comparing the state after it with its own entry;
//! the last piece ends with SHA-256's padding and must produce the digest. If every piece
//! passes, the pieces together hash to the digest — whatever the metainfo listed in between —
//! so no second pass over the blob is needed to trust a metainfo that came from elsewhere.
//! Forging a piece (or a metainfo) that passes means finding a preimage for SHA-256's
//! compression function.

use sha2::Digest as _;
use sha2::block_api::compress256;

use crate::metainfo::PIECE_HASH_LEN;

/// How a metainfo's piece hashes are defined (its encoding version says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceCheck {
    /// Each entry is the SHA-256 of its piece. The blob digest needs a pass of its own.
    Sha256,
    /// Each entry is SHA-256's chaining value after its piece, the last entry the blob's
    /// sha256 digest: checking every piece checks the digest (module documentation).
    Sha256Chain,
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK_LEN: usize = 64;

/// SHA-256 over a message that starts at a known chaining value: what the chained check and
/// the metainfo builder run. Any chunk sizes; blocks are compressed as they fill.
#[derive(Clone)]
pub(crate) struct ChainHasher {
    state: [u32; 8],
    /// Bytes of a block not yet compressed.
    partial: [u8; BLOCK_LEN],
    partial_len: usize,
    /// Message bytes fed so far, counting those before the starting state.
    len: u64,
}

impl ChainHasher {
    /// At the start of a message.
    pub(crate) fn new() -> ChainHasher {
        ChainHasher::resume(SHA256_INITIAL, 0)
    }

    /// After `len` bytes (a multiple of 64) that left the state `state`.
    pub(crate) fn resume(state: [u32; 8], len: u64) -> ChainHasher {
        debug_assert_eq!(len % BLOCK_LEN as u64, 0);
        ChainHasher {
            state,
            partial: [0; BLOCK_LEN],
            partial_len: 0,
            len,
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.partial_len > 0 {
            let take = (BLOCK_LEN - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
            self.partial_len += take;
            data = &data[take..];
            if self.partial_len < BLOCK_LEN {
                return;
            }
            compress256(&mut self.state, &[self.partial]);
            self.partial_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<BLOCK_LEN>();
        if !blocks.is_empty() {
            compress256(&mut self.state, blocks);
        }
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// The chaining value, serialized like a digest; `None` unless the bytes fed so far are a
    /// whole number of blocks.
    pub(crate) fn chaining_value(&self) -> Option<[u8; PIECE_HASH_LEN]> {
        (self.partial_len == 0).then(|| state_bytes(&self.state))
    }

    /// Pads the message as SHA-256 does and returns its digest.
    pub(crate) fn finalize(mut self) -> [u8; PIECE_HASH_LEN] {
        let bit_len = self.len.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK_LEN];
        tail[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
        tail[self.partial_len] = 0x80;
        let tail_len = if self.partial_len < BLOCK_LEN - 8 {
            BLOCK_LEN
        } else {
            2 * BLOCK_LEN
        };
        tail[tail_len - 8..tail_len].copy_from_slice(&bit_len.to_be_bytes());
        let (blocks, _) = tail[..tail_len].as_chunks::<BLOCK_LEN>();
        compress256(&mut self.state, blocks);
        state_bytes(&self.state)
    }
}

fn state_bytes(state: &[u32; 8]) -> [u8; PIECE_HASH_LEN] {
    let mut out = [0u8; PIECE_HASH_LEN];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn state_words(bytes: &[u8; PIECE_HASH_LEN]) -> [u32; 8] {
    let mut state = [0u32; 8];
    for (word, chunk) in state.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    state
}

/// Checks one piece's bytes, fed in any chunks, against its metainfo entry (made by
/// [`crate::metainfo::Metainfo::piece_verifier`]). Holds no piece data.
#[derive(Clone)]
pub struct PieceVerifier {
    kind: VerifierKind,
    expected: [u8; PIECE_HASH_LEN],
    expected_len: u64,
    fed_len: u64,
}

#[derive(Clone)]
enum VerifierKind {
    Sha256(sha2::Sha256),
    /// `last`: the piece ends the blob (pad and compare with the digest).
    Chain {
        hasher: ChainHasher,
        last: bool,
    },
}

impl std::fmt::Debug for PieceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceVerifier")
            .field("expected_len", &self.expected_len)
            .field("fed_len", &self.fed_len)
            .finish_non_exhaustive()
    }
}

impl PieceVerifier {
    /// A piece of `piece_len` bytes checked by its own SHA-256 (`expected`).
    pub fn sha256(expected: [u8; PIECE_HASH_LEN], piece_len: u32) -> PieceVerifier {
        PieceVerifier {
            kind: VerifierKind::Sha256(sha2::Sha256::new()),
            expected,
            expected_len: u64::from(piece_len),
            fed_len: 0,
        }
    }

    /// A piece of `piece_len` bytes at `offset` (a multiple of 64) checked by chaining from
    /// `previous` (the previous piece's entry; `None` for the first piece). `last`: it ends
    /// the blob, and `expected` is the blob digest.
    pub(crate) fn chain(
        previous: Option<&[u8; PIECE_HASH_LEN]>,
        offset: u64,
        piece_len: u32,
        expected: [u8; PIECE_HASH_LEN],
        last: bool,
    ) -> PieceVerifier {
        let hasher = match previous {
            Some(previous) => ChainHasher::resume(state_words(previous), offset),
            None => ChainHasher::new(),
        };
        PieceVerifier {
            kind: VerifierKind::Chain { hasher, last },
            expected,
            expected_len: u64::from(piece_len),
            fed_len: 0,
        }
    }

    /// Feeds the next bytes of the piece.
    pub fn update(&mut self, data: &[u8]) {
        self.fed_len = self.fed_len.saturating_add(data.len() as u64);
        match &mut self.kind {
            VerifierKind::Sha256(hasher) => hasher.update(data),
            VerifierKind::Chain { hasher, .. } => hasher.update(data),
        }
    }

    /// Whether the bytes fed are exactly the piece: its length and its entry.
    pub fn verify(self) -> bool {
        if self.fed_len != self.expected_len {
            return false;
        }
        let actual = match self.kind {
            VerifierKind::Sha256(hasher) => hasher.finalize().into(),
            VerifierKind::Chain { hasher, last: true } => hasher.finalize(),
            VerifierKind::Chain {
                hasher,
                last: false,
            } => match hasher.chaining_value() {
                Some(value) => value,
                None => return false,
            },
        };
        actual == self.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
            .collect()
    }

    #[test]
    fn the_chain_hasher_is_sha256_for_every_length_and_chunking() {
        for len in [
            0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 70_001,
        ] {
            let data = bytes(len, 3);
            let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
            for chunk in [1, 7, 64, 100, 4096] {
                let mut hasher = ChainHasher::new();
                for part in data.chunks(chunk) {
                    hasher.update(part);
                }
                assert_eq!(hasher.finalize(), expected, "len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn resuming_from_a_chaining_value_continues_the_same_hash() {
        let data = bytes(64 * 1000 + 17, 9);
        let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
        for split in [0usize, 64, 6400, 64 * 1000] {
            let mut first = ChainHasher::new();
            first.update(&data[..split]);
            let value = first.chaining_value().unwrap();
            let mut second = ChainHasher::resume(state_words(&value), split as u64);
            second.update(&data[split..]);
            assert_eq!(second.finalize(), expected, "split at {split}");
        }
        let mut odd = ChainHasher::new();
        odd.update(&data[..65]);
        assert_eq!(odd.chaining_value(), None);
    }
}
