//! Piece geometry of the simulated blobs: each blob is a real [`Metainfo`] (proto's piece
//! length table, stripes and info hash), built with synthetic piece hashes — the simulator
//! moves no bytes, so nothing is ever hashed; a liar's piece is simply reported `Invalid`.

use shoal_proto::metainfo::{Metainfo, MetainfoParams, PIECE_HASH_LEN};
use shoal_proto::swarm::StripeGeometry;
use shoal_proto::{Digest, InfoHash, StripeIndex};

use crate::SimError;

/// One blob as the simulator sees it.
#[derive(Debug, Clone)]
pub struct BlobLayout {
    metainfo: Metainfo,
}

impl BlobLayout {
    /// The layout of blob number `index` of a topology, `blob_len` bytes long; piece length
    /// and stripe size from proto's defaults unless overridden.
    pub fn new(
        index: usize,
        blob_len: u64,
        piece_len: Option<u32>,
        pieces_per_stripe: Option<u32>,
    ) -> Result<BlobLayout, SimError> {
        let params = MetainfoParams::default();
        let piece_len = piece_len.unwrap_or_else(|| params.piece_lengths.piece_len_for(blob_len));
        let pieces_per_stripe = pieces_per_stripe.unwrap_or(params.pieces_per_stripe);
        if piece_len == 0 || blob_len == 0 {
            return Err(SimError::Topology(format!(
                "blob {index}: length and piece length must be non-zero"
            )));
        }
        let n_pieces = blob_len.div_ceil(u64::from(piece_len));
        // Synthetic piece hashes: the piece index, so that they differ.
        let hashes = (0..n_pieces)
            .map(|piece| {
                let mut hash = [0u8; PIECE_HASH_LEN];
                hash[..8].copy_from_slice(&piece.to_be_bytes());
                hash
            })
            .collect();
        let digest = Digest::sha256_of(format!("shoal-sim blob {index}").as_bytes());
        let metainfo = Metainfo::from_parts(digest, blob_len, piece_len, pieces_per_stripe, hashes)
            .map_err(|error| SimError::Topology(format!("blob {index}: {error}")))?;
        Ok(BlobLayout { metainfo })
    }

    pub fn metainfo(&self) -> &Metainfo {
        &self.metainfo
    }

    pub fn info_hash(&self) -> InfoHash {
        self.metainfo.info_hash()
    }

    pub fn blob_len(&self) -> u64 {
        self.metainfo.blob_len()
    }

    pub fn piece_len(&self) -> u32 {
        self.metainfo.piece_len()
    }

    pub fn n_stripes(&self) -> u32 {
        self.metainfo.n_stripes()
    }

    pub fn stripe_geometry(&self, stripe: u32) -> StripeGeometry {
        StripeGeometry::of(&self.metainfo, StripeIndex(stripe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_and_stripes() {
        let layout = BlobLayout::new(0, 1_500_000_000, None, None).expect("layout");
        assert_eq!(layout.piece_len(), 2 << 20);
        assert_eq!(layout.metainfo().n_pieces(), 716);
        assert_eq!(layout.n_stripes(), 2);
        let last = layout.stripe_geometry(1);
        assert_eq!((last.first_piece, last.n_pieces), (512, 204));
        assert_eq!(
            u64::from(last.last_piece_len),
            1_500_000_000 - 715 * (2u64 << 20)
        );
        let whole = BlobLayout::new(1, 1 << 30, None, None).expect("layout");
        assert_eq!((whole.piece_len(), whole.n_stripes()), (1 << 20, 2));
        assert_eq!(whole.stripe_geometry(1).last_piece_len, 1 << 20);
        let huge = BlobLayout::new(2, 100 << 30, None, None).expect("layout");
        assert_eq!((huge.piece_len(), huge.n_stripes()), (64 << 20, 4));
        assert_ne!(layout.info_hash(), whole.info_hash());
    }

    #[test]
    fn overrides_are_checked_by_proto() {
        let small = BlobLayout::new(0, 1 << 20, Some(64 << 10), Some(4)).expect("layout");
        assert_eq!(small.n_stripes(), 4);
        let error = BlobLayout::new(0, 1 << 20, Some(3000), None)
            .expect_err("not a power of two")
            .to_string();
        assert!(error.contains("blob 0"), "{error}");
    }
}
