//! Reading complete blobs.

use std::path::{Path, PathBuf};

use compio::BufResult;
use compio::buf::IoBufMut;
use compio::io::{AsyncReadAt, AsyncReadAtExt};
use shoal_proto::Digest;

use super::Pin;

/// A complete blob opened for reading. While it lives the blob is pinned: eviction does not
/// remove it. Belongs to the runtime that opened it (compio files are not `Send`).
#[derive(Debug)]
pub struct BlobFile {
    file: compio::fs::File,
    digest: Digest,
    len: u64,
    path: PathBuf,
    _pin: Pin,
}

impl BlobFile {
    pub(crate) fn new(
        file: compio::fs::File,
        digest: Digest,
        len: u64,
        path: PathBuf,
        pin: Pin,
    ) -> BlobFile {
        BlobFile {
            file,
            digest,
            len,
            path,
            _pin: pin,
        }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Blob length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for zero-copy paths (splice) that need the descriptor.
    pub fn file(&self) -> &compio::fs::File {
        &self.file
    }

    /// Reads up to the buffer's free capacity at `offset`; `Ok(0)` at the end.
    pub async fn read_at<B: IoBufMut>(&self, buf: B, offset: u64) -> BufResult<usize, B> {
        self.file.read_at(buf, offset).await
    }

    /// Fills the buffer's capacity from `offset`; `UnexpectedEof` past the end.
    pub async fn read_exact_at<B: IoBufMut>(&self, buf: B, offset: u64) -> BufResult<(), B> {
        self.file.read_exact_at(buf, offset).await
    }
}
