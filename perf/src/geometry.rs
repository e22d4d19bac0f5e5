//! Piece geometry of the simulated blobs: piece length, stripes, and each stripe's
//! [`StripeGeometry`] for its swarms.
//!
//! INTERIM: proto's `metainfo` module is not on `main` yet. Until it lands this file carries a
//! copy of the default piece-length table and the stripe arithmetic; it is replaced by
//! `shoal_proto::metainfo::Metainfo` (with synthetic piece hashes) as soon as it does.

use shoal_proto::swarm::StripeGeometry;
use shoal_proto::{Digest, InfoHash, StripeIndex};

use crate::SimError;

/// Default pieces per stripe.
pub const PIECES_PER_STRIPE_DEFAULT: u32 = 128;

/// proto's default piece-length table: the largest blob length each piece length serves.
fn piece_len_for(blob_len: u64) -> u32 {
    const MIB: u32 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let table: [(u64, u32); 6] = [
        (GIB, MIB),
        (2 * GIB, 2 * MIB),
        (4 * GIB, 4 * MIB),
        (8 * GIB, 8 * MIB),
        (16 * GIB, 16 * MIB),
        (32 * GIB, 32 * MIB),
    ];
    table
        .iter()
        .find(|(blob_len_max, _)| blob_len <= *blob_len_max)
        .map_or(64 * MIB, |&(_, piece_len)| piece_len)
}

/// One blob as the simulator sees it.
#[derive(Debug, Clone)]
pub struct BlobLayout {
    pub info_hash: InfoHash,
    pub blob_len: u64,
    pub piece_len: u32,
    pub pieces_per_stripe: u32,
    pub n_pieces: u32,
    pub n_stripes: u32,
}

impl BlobLayout {
    /// The layout of blob number `index` of a topology, `blob_len` bytes long.
    pub fn new(
        index: usize,
        blob_len: u64,
        piece_len: Option<u32>,
        pieces_per_stripe: Option<u32>,
    ) -> Result<BlobLayout, SimError> {
        let piece_len = piece_len.unwrap_or_else(|| piece_len_for(blob_len));
        let pieces_per_stripe = pieces_per_stripe.unwrap_or(PIECES_PER_STRIPE_DEFAULT);
        if piece_len == 0 || pieces_per_stripe == 0 || blob_len == 0 {
            return Err(SimError::Topology(format!(
                "blob {index}: length, piece length and pieces per stripe must be non-zero"
            )));
        }
        let n_pieces = u32::try_from(blob_len.div_ceil(u64::from(piece_len)))
            .map_err(|_| SimError::Topology(format!("blob {index}: too many pieces")))?;
        let n_stripes = n_pieces.div_ceil(pieces_per_stripe);
        let digest =
            Digest::sha256_of(format!("shoal-sim blob {index} of {blob_len} bytes").as_bytes());
        let mut info_hash = [0u8; 32];
        info_hash.copy_from_slice(digest.as_bytes());
        Ok(BlobLayout {
            info_hash: InfoHash(info_hash),
            blob_len,
            piece_len,
            pieces_per_stripe,
            n_pieces,
            n_stripes,
        })
    }

    pub fn stripe_geometry(&self, stripe: u32) -> StripeGeometry {
        assert!(
            stripe < self.n_stripes,
            "stripe {stripe} of {}",
            self.n_stripes
        );
        let first_piece = stripe * self.pieces_per_stripe;
        let n_pieces = self.pieces_per_stripe.min(self.n_pieces - first_piece);
        let last_piece = first_piece + n_pieces - 1;
        let last_piece_len = if last_piece + 1 == self.n_pieces {
            (self.blob_len - u64::from(last_piece) * u64::from(self.piece_len)) as u32
        } else {
            self.piece_len
        };
        StripeGeometry {
            info_hash: self.info_hash,
            stripe: StripeIndex(stripe),
            first_piece,
            n_pieces,
            piece_len: self.piece_len,
            last_piece_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_and_stripes() {
        let layout = BlobLayout::new(0, 1_500_000_000, None, None).expect("layout");
        assert_eq!(layout.piece_len, 2 << 20);
        assert_eq!(layout.n_pieces, 716);
        assert_eq!(layout.n_stripes, 6);
        let last = layout.stripe_geometry(5);
        assert_eq!(last.first_piece, 640);
        assert_eq!(last.n_pieces, 76);
        assert_eq!(
            u64::from(last.last_piece_len),
            1_500_000_000 - 715 * (2u64 << 20)
        );
        let whole = BlobLayout::new(1, 1 << 30, None, None).expect("layout");
        assert_eq!(
            (whole.piece_len, whole.n_pieces, whole.n_stripes),
            (1 << 20, 1024, 8)
        );
        assert_eq!(whole.stripe_geometry(7).last_piece_len, 1 << 20);
        let huge = BlobLayout::new(2, 100 << 30, None, None).expect("layout");
        assert_eq!(
            (huge.piece_len, huge.n_pieces, huge.n_stripes),
            (64 << 20, 1600, 13)
        );
    }
}
