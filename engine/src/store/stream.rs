//! Reading a byte range of a blob in order, from a complete blob or from a download that is
//! still in progress: what answers `GET /v2/<name>/blobs/<digest>` (with or without `Range`)
//! while the swarm is still fetching the blob.
//!
//! A [`BlobStream`] owns what pins the blob (a [`BlobFile`] or a [`Download`]), so eviction
//! leaves it alone for as long as the stream lives. Each [`BlobStream::next_chunk`] fills the
//! caller's buffer with a positioned read (compio) and nothing else: the stream holds no
//! buffer of its own, and nothing holds the whole blob in memory.
//!
//! From a download, a chunk only ever covers stored pieces (verified and durable, the store's
//! rule for anything it serves): the stream waits with [`Download::wait_piece`] for the piece
//! that holds its next byte, then reads up to the end of the run of stored pieces that
//! follows, so a chunk may end early, at the boundary of a piece that is not stored yet.
//! Reads go through the download's own descriptor of `data`; when the download completes,
//! `data` is renamed into `blobs/` and that descriptor keeps reading the same file.

use std::ops::Range;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncReadAtExt;
use shoal_proto::{Digest, PieceIndex};

use super::error::IoContext;
use super::{BlobFile, Download, StoreError};

/// Reads a byte range of a blob in order: from a complete blob, or from a download, waiting
/// for each piece to be stored. Belongs to the runtime that opened its source (compio files
/// are not `Send`).
#[derive(Debug)]
pub struct BlobStream {
    /// Where the bytes come from; also what keeps the blob pinned.
    source: Source,
    /// Blob offset of the next byte to hand out.
    next: u64,
    /// Blob offset one past the last byte of the range.
    end: u64,
}

#[derive(Debug)]
enum Source {
    Blob(BlobFile),
    Download(Download),
}

impl BlobStream {
    /// Streams `range` of a complete blob. Fails with [`StoreError::InvalidRange`] if the
    /// range is inverted or reaches past the blob's end.
    pub fn from_blob(blob: BlobFile, range: Range<u64>) -> Result<BlobStream, StoreError> {
        check_range(&blob.digest(), blob.len(), &range)?;
        Ok(BlobStream {
            source: Source::Blob(blob),
            next: range.start,
            end: range.end,
        })
    }

    /// Streams `range` of a blob being downloaded, waiting for its pieces as they are stored.
    /// Fails with [`StoreError::InvalidRange`] if the range is inverted or reaches past the
    /// blob's end. If the download is ended ([`Download::fail`]) or poisoned, the stream gets
    /// the error when it reaches a piece that is not stored.
    pub fn from_download(download: Download, range: Range<u64>) -> Result<BlobStream, StoreError> {
        check_range(&download.digest(), download.metainfo().blob_len(), &range)?;
        Ok(BlobStream {
            source: Source::Download(download),
            next: range.start,
            end: range.end,
        })
    }

    /// Bytes of the range not yet handed out.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// The piece the next [`BlobStream::next_chunk`] would wait for: the one holding the next
    /// byte, if it is not stored yet. `None` from a complete blob or at the end of the range.
    pub fn waiting_for(&self) -> Option<PieceIndex> {
        let Source::Download(download) = &self.source else {
            return None;
        };
        if self.next >= self.end {
            return None;
        }
        let piece_len = u64::from(download.metainfo().piece_len());
        // Below n_pieces (next < end <= blob_len), a u32.
        let piece = PieceIndex((self.next / piece_len) as u32);
        (!download.has_piece(piece)).then_some(piece)
    }

    /// Up to `buf.capacity()` next bytes (buf cleared first; never allocates); an empty buf at
    /// the end of the range.
    ///
    /// From a download, waits until the piece holding the next byte is stored, and stops at
    /// the first piece after it that is not. Errors: [`StoreError::Poisoned`] when that piece
    /// will never come, [`StoreError::EmptyBuffer`] for a zero-capacity buffer while bytes
    /// remain, [`StoreError::Io`] for a failed read. After an error the stream has not moved:
    /// calling again retries the same bytes. If the future is dropped while reading, the
    /// buffer goes with it (compio owns it during the read); the stream has not moved.
    pub async fn next_chunk(&mut self, mut buf: Vec<u8>) -> (Result<(), StoreError>, Vec<u8>) {
        buf.clear();
        let remaining = self.remaining();
        if remaining == 0 {
            return (Ok(()), buf);
        }
        if buf.capacity() == 0 {
            let error = StoreError::EmptyBuffer {
                digest: Box::new(self.digest()),
            };
            return (Err(error), buf);
        }
        // Fits in usize: at most the buffer's capacity.
        let wanted = remaining.min(buf.capacity() as u64);
        let (file, path, len) = match &self.source {
            Source::Blob(blob) => (blob.file(), blob.path(), wanted),
            Source::Download(download) => {
                let metainfo = download.metainfo();
                debug_assert!(metainfo.piece_len() > 0 && self.next < metainfo.blob_len());
                // Below n_pieces (next < blob_len), a u32.
                let piece = PieceIndex((self.next / u64::from(metainfo.piece_len())) as u32);
                if let Err(error) = download.wait_piece(piece).await {
                    return (Err(error), buf);
                }
                let run_end = download.stored_run_end(piece, self.next + wanted);
                debug_assert!(run_end > self.next && run_end <= self.next + wanted);
                let (file, path) = download.data_file();
                (file, path, run_end - self.next)
            }
        };
        let BufResult(result, slice) = file
            .read_exact_at(buf.slice(0..len as usize), self.next)
            .await;
        let buf = slice.into_inner();
        if let Err(error) = result.context("pread", path) {
            return (Err(error), buf);
        }
        debug_assert_eq!(buf.len() as u64, len);
        self.next += len;
        (Ok(()), buf)
    }

    fn digest(&self) -> Digest {
        match &self.source {
            Source::Blob(blob) => blob.digest(),
            Source::Download(download) => download.digest(),
        }
    }
}

/// `range` must be `start <= end <= blob_len`.
fn check_range(digest: &Digest, blob_len: u64, range: &Range<u64>) -> Result<(), StoreError> {
    if range.start <= range.end && range.end <= blob_len {
        return Ok(());
    }
    Err(StoreError::InvalidRange {
        digest: Box::new(*digest),
        start: range.start,
        end: range.end,
        blob_len,
    })
}
