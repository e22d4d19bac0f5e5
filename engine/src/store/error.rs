//! The store's one error type.

use std::io;
use std::path::PathBuf;

use shoal_proto::{Digest, InfoHash, PieceIndex};

/// Everything the store can refuse or fail at. Each variant names the blob (digest) or the
/// path involved, and I/O failures carry the OS error.
///
/// Digests are boxed where a variant holds one next to other fields: a sha512 [`Digest`] is
/// 65 bytes, and every `Result` of the store would otherwise carry that size.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system call failed. `op` says which (`"open"`, `"fdatasync"`, …).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The filesystem under the store root cannot hold the blob (or a piece of it). Nothing of
    /// the refused download is left on disk.
    #[error(
        "no space for {digest}: {bytes_needed} bytes needed at {}{}",
        path.display(),
        match bytes_available {
            Some(n) => format!(", {n} available"),
            None => String::new(),
        }
    )]
    NoSpace {
        digest: Box<Digest>,
        bytes_needed: u64,
        bytes_available: Option<u64>,
        path: PathBuf,
    },

    /// `begin_download` for a blob that is already complete in `blobs/`: open it instead.
    #[error("blob {digest} is already complete")]
    AlreadyComplete { digest: Box<Digest> },

    /// `begin_download` with a metainfo whose info hash differs from the download of the same
    /// blob that is active in this process.
    #[error("a download of {digest} is active with info hash {active}, not {requested}")]
    DownloadConflict {
        digest: Box<Digest>,
        active: InfoHash,
        requested: InfoHash,
    },

    /// The blob is in a transition (a download being created or completed, a blob being
    /// evicted) that another caller started; retrying later succeeds.
    #[error("{digest} is busy ({what}); retry later")]
    Busy {
        digest: Box<Digest>,
        what: &'static str,
    },

    /// A piece index the blob does not have.
    #[error("{piece} is out of range for {digest}, which has {n_pieces} pieces")]
    PieceOutOfRange {
        digest: Box<Digest>,
        piece: PieceIndex,
        n_pieces: u32,
    },

    /// Piece data of the wrong length.
    #[error("{piece} of {digest} is {expected} bytes, got {actual}")]
    PieceLength {
        digest: Box<Digest>,
        piece: PieceIndex,
        expected: u32,
        actual: usize,
    },

    /// `read_piece` of a piece that is not durably stored yet.
    #[error("{piece} of {digest} is not stored yet")]
    PieceMissing {
        digest: Box<Digest>,
        piece: PieceIndex,
    },

    /// A read buffer too small for the piece.
    #[error("{piece} of {digest} needs a {needed}-byte buffer, got capacity {capacity}")]
    BufferTooSmall {
        digest: Box<Digest>,
        piece: PieceIndex,
        needed: u32,
        capacity: usize,
    },

    /// A byte range that is inverted or reaches past the end of the blob.
    #[error("byte range {start}..{end} is not within {digest}, which is {blob_len} bytes")]
    InvalidRange {
        digest: Box<Digest>,
        start: u64,
        end: u64,
        blob_len: u64,
    },

    /// A read buffer with no capacity where bytes remain to be read (an empty chunk would
    /// look like the end of the range).
    #[error("read buffer of zero capacity for {digest}")]
    EmptyBuffer { digest: Box<Digest> },

    /// `complete` before every piece is stored.
    #[error("download of {digest} is incomplete: {have} of {n_pieces} pieces stored")]
    Incomplete {
        digest: Box<Digest>,
        have: u32,
        n_pieces: u32,
    },

    /// The download hit an I/O failure after which its unsynced data cannot be trusted (a
    /// failed fsync may have dropped dirty pages). Every later write or completion is refused;
    /// drop every handle and `begin_download` again to resume from what was durably stored.
    #[error("download of {digest} stopped after an I/O failure: {reason}")]
    Poisoned { digest: Box<Digest>, reason: String },

    /// Every piece matched its hash but the whole blob does not match its digest: the
    /// metainfo lied. The download is discarded.
    #[error("blob content hashes to {actual}, not {expected}; download discarded")]
    DigestMismatch {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },

    /// Another process (or another `Store` in this one) holds the store root.
    #[error("store root {} is in use by another store (lock file held)", root.display())]
    Locked { root: PathBuf },

    /// A [`super::StoreConfig`] value out of range.
    #[error("invalid store config: {0}")]
    Config(&'static str),
}

impl StoreError {
    /// An I/O failure of `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the OS reported a full disk (ENOSPC or EDQUOT).
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::NoSpace { .. } => true,
            StoreError::Io { source, .. } => is_no_space(source),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Adds the operation and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn context(self, op: &'static str, path: &std::path::Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, op: &'static str, path: &std::path::Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::io(op, path, source))
    }
}
