//! One shard's metainfo cache: digest → canonical encoding, bounded by count and bytes.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::Digest;

/// Digest → canonical metainfo, bounded by count and bytes; evicts the oldest stored first.
#[derive(Debug)]
pub(crate) struct MetainfoStore {
    count_max: usize,
    bytes_max: usize,
    /// The encoding and its insertion number.
    pub(crate) by_digest: HashMap<Digest, (u64, Vec<u8>)>,
    /// Insertion number → digest, oldest first.
    pub(crate) by_age: BTreeMap<u64, Digest>,
    pub(crate) bytes: usize,
    next_seq: u64,
}

impl MetainfoStore {
    pub(crate) fn new(count_max: usize, bytes_max: usize) -> MetainfoStore {
        MetainfoStore {
            count_max,
            bytes_max,
            by_digest: HashMap::new(),
            by_age: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<&[u8]> {
        self.by_digest
            .get(digest)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Stores (or replaces) the metainfo of `digest`, evicting the oldest beyond the bounds.
    /// `encoded.len() <= bytes_max` (a frame holds at most [`METAINFO_LEN_MAX`]; the config
    /// validation makes `bytes_max` at least that).
    pub(crate) fn insert(&mut self, digest: Digest, encoded: Vec<u8>) {
        debug_assert!(encoded.len() <= self.bytes_max);
        self.remove(&digest);
        while self.by_digest.len() >= self.count_max || self.bytes + encoded.len() > self.bytes_max
        {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, bytes)) = self.by_digest.remove(&oldest) {
                self.bytes -= bytes.len();
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += encoded.len();
        self.by_age.insert(seq, digest);
        self.by_digest.insert(digest, (seq, encoded));
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some((seq, bytes)) = self.by_digest.remove(digest) {
            self.by_age.remove(&seq);
            self.bytes -= bytes.len();
        }
    }
}
