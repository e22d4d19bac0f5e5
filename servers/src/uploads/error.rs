//! The upload store's one error type, and its mapping to OCI error codes and HTTP statuses.

use std::io;
use std::path::PathBuf;

use shoal_proto::Digest;

/// Everything the upload store can refuse or fail at. Each variant names the session, the
/// bound or the path involved. [`UploadError::oci_code`] and [`UploadError::http_status`] are
/// the one place the HTTP layer maps them.
///
/// Text that came from a client (a session id, a repository name) is quoted truncated to
/// [`QUOTE_LEN_MAX`] characters.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The session id is not 32 lowercase hex characters, so it cannot name a session (and it
    /// is never used as a path).
    #[error("upload id {id:?} is not 32 lowercase hex characters")]
    InvalidId { id: String },

    /// No such session: never created, completed, cancelled, or expired after
    /// [`super::UploadLimits::idle_timeout`] without activity.
    #[error("upload {id} is unknown (never created, finished, cancelled or expired)")]
    UnknownSession { id: String },

    /// The repository name does not match the OCI grammar or is too long.
    #[error("repository name {name:?} is invalid: {reason}")]
    InvalidRepository { name: String, reason: &'static str },

    /// [`super::UploadLimits::sessions_max`] sessions (and monolithic uploads) are open.
    #[error("too many uploads in progress ({sessions_max} at most); retry later")]
    TooManySessions { sessions_max: usize },

    /// The upload would grow past [`super::UploadLimits::blob_bytes_max`]. The session is
    /// left at `offset`.
    #[error(
        "upload would exceed {blob_bytes_max} bytes (it has {offset}, the chunk brings it past)"
    )]
    BlobTooLarge { offset: u64, blob_bytes_max: u64 },

    /// One chunk is longer than [`super::UploadLimits::chunk_bytes_max`]. The session is left
    /// at its previous offset.
    #[error("chunk is longer than {chunk_bytes_max} bytes")]
    ChunkTooLarge { chunk_bytes_max: u64 },

    /// The chunk does not start where the upload ends. The HTTP layer answers 416 with
    /// `Range: 0-(offset-1)`. Nothing changed.
    #[error("chunk starts at byte {start}, the upload has {offset} bytes; chunks must be in order")]
    RangeInvalid { offset: u64, start: u64 },

    /// The body's length differs from the one declared (`Content-Length`, or the extent of
    /// `Content-Range`): a truncated body, or one that goes on past its declared end. Reading
    /// stops at the first byte past the declared length, so `received` is then `declared + 1`.
    /// The session is left at its previous offset.
    #[error("body declared {declared} bytes but {received} arrived{}",
        if received > declared { " (or more)" } else { "" })]
    LengthMismatch { declared: u64, received: u64 },

    /// Reading the request body failed (the client went away mid-chunk). The session is left
    /// at its previous offset.
    #[error("reading the upload body failed after {received} bytes: {source}")]
    BodyRead {
        received: u64,
        #[source]
        source: io::Error,
    },

    /// The upload's content does not hash to the digest the client named. The session and
    /// its data are gone; nothing was stored.
    #[error("upload content hashes to {actual}, not {expected}; upload discarded")]
    DigestInvalid {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },

    /// The filesystem under the store root is full (ENOSPC or EDQUOT). The session is left at
    /// its previous offset (the partial chunk was cut off again).
    #[error("no space left for the upload at {}: {source}", path.display())]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An operating-system call failed. `op` says which (`"open"`, `"fdatasync"`, …).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another `UploadStore` (in this process or another) holds the root.
    #[error("upload root {} is in use by another upload store (lock file held)", root.display())]
    Locked { root: PathBuf },

    /// A [`super::UploadLimits`] value out of range.
    #[error("invalid upload limits: {0}")]
    Limits(&'static str),
}

/// Client-supplied text quoted in an error is cut to this many characters.
pub const QUOTE_LEN_MAX: usize = 160;

pub(crate) fn quote(text: &str) -> String {
    text.chars().take(QUOTE_LEN_MAX).collect()
}

impl UploadError {
    /// The OCI distribution error code for the `{"errors":[{"code":…}]}` body.
    /// `RANGE_INVALID` (416) and `UNKNOWN` (server-side failures) are not in the spec's table
    /// of codes, which has none for these cases; clients act on the status.
    pub fn oci_code(&self) -> &'static str {
        match self {
            UploadError::InvalidId { .. } | UploadError::UnknownSession { .. } => {
                "BLOB_UPLOAD_UNKNOWN"
            }
            UploadError::InvalidRepository { .. } => "NAME_INVALID",
            UploadError::TooManySessions { .. } => "TOOMANYREQUESTS",
            UploadError::BlobTooLarge { .. }
            | UploadError::ChunkTooLarge { .. }
            | UploadError::LengthMismatch { .. } => "SIZE_INVALID",
            UploadError::RangeInvalid { .. } => "RANGE_INVALID",
            UploadError::BodyRead { .. } => "BLOB_UPLOAD_INVALID",
            UploadError::DigestInvalid { .. } => "DIGEST_INVALID",
            UploadError::NoSpace { .. }
            | UploadError::Io { .. }
            | UploadError::Locked { .. }
            | UploadError::Limits(_) => "UNKNOWN",
        }
    }

    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            UploadError::InvalidId { .. } | UploadError::UnknownSession { .. } => 404,
            UploadError::InvalidRepository { .. }
            | UploadError::LengthMismatch { .. }
            | UploadError::BodyRead { .. }
            | UploadError::DigestInvalid { .. } => 400,
            UploadError::TooManySessions { .. } => 429,
            UploadError::BlobTooLarge { .. } | UploadError::ChunkTooLarge { .. } => 413,
            UploadError::RangeInvalid { .. } => 416,
            UploadError::NoSpace { .. } => 507,
            UploadError::Io { .. } | UploadError::Locked { .. } | UploadError::Limits(_) => 500,
        }
    }

    /// Whether the OS reported a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, UploadError::NoSpace { .. })
    }

    /// An I/O failure of `op` on `path`; ENOSPC and EDQUOT become [`UploadError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        if is_no_space(&source) {
            return UploadError::NoSpace {
                path: path.into(),
                source,
            };
        }
        UploadError::Io {
            op,
            path: path.into(),
            source,
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
    fn context(self, op: &'static str, path: &std::path::Path) -> Result<T, UploadError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, op: &'static str, path: &std::path::Path) -> Result<T, UploadError> {
        self.map_err(|source| UploadError::io(op, path, source))
    }
}
