//! One blob on one shard: where its pieces are read from and written to, the addresses of its
//! peers, and the stripes of it this shard owns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use shoal_proto::{PeerId, PieceIndex};

use super::stripe::Stripe;
use crate::engine::BlobShared;
use crate::store::{BlobFile, Download};

/// Most peer addresses a shard remembers per blob. Beyond it the table starts over from the
/// latest announce (the swarms keep their own bounded candidate lists).
pub(crate) const PEER_ADDRS_PER_BLOB_MAX: usize = 4096;

/// Where a shard's pieces of a blob live.
#[derive(Debug)]
pub(crate) enum Source {
    /// Being downloaded (or downloaded by this process: the handle keeps reading from the
    /// same descriptor after the blob moved into the cache).
    Download(Download),
    /// A complete blob from the cache, seeded.
    Blob(BlobFile),
}

/// A blob's I/O on one shard, shared by its stripes and their connection tasks.
#[derive(Debug)]
pub(crate) struct BlobIo {
    pub shared: Arc<BlobShared>,
    pub source: Source,
    /// Where to dial the peers the tracker named (bounded by [`PEER_ADDRS_PER_BLOB_MAX`]).
    pub addrs: RefCell<HashMap<PeerId, SocketAddr>>,
}

impl BlobIo {
    pub fn download(&self) -> Option<&Download> {
        match &self.source {
            Source::Download(download) => Some(download),
            Source::Blob(_) => None,
        }
    }

    /// The file and offset to upload `piece` from: only stored (verified) pieces.
    pub fn piece_file(&self, piece: PieceIndex) -> Result<(&compio::fs::File, u64), String> {
        match &self.source {
            Source::Download(download) => download.piece_source(piece).map_err(|e| e.to_string()),
            Source::Blob(blob) => {
                let metainfo = &self.shared.metainfo;
                if !metainfo.contains_piece(piece) {
                    return Err(format!("{piece} is outside the blob"));
                }
                Ok((blob.file(), metainfo.piece_offset(piece)))
            }
        }
    }

    /// Records the peers of an announce.
    pub fn learn_addrs(&self, peers: impl Iterator<Item = (PeerId, SocketAddr)>) {
        let mut addrs = self.addrs.borrow_mut();
        for (peer, addr) in peers {
            if addrs.len() >= PEER_ADDRS_PER_BLOB_MAX && !addrs.contains_key(&peer) {
                addrs.clear();
            }
            addrs.insert(peer, addr);
        }
    }
}

/// The blob's state on one shard.
#[derive(Debug)]
pub(crate) struct ShardBlob {
    pub io: Rc<BlobIo>,
    /// The stripes this shard owns (stripe index → driver).
    pub stripes: HashMap<u32, Rc<Stripe>>,
}

impl ShardBlob {
    pub fn stop(&self) {
        for stripe in self.stripes.values() {
            stripe.stop();
        }
    }
}
