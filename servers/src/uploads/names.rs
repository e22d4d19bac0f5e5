//! Names that come from clients: repository names (the OCI grammar) and session ids (32
//! lowercase hex characters, the only form ever used as a path component). Random names
//! come from `/dev/urandom`.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use super::error::{IoContext as _, UploadError, quote};

pub use crate::build_index::REPOSITORY_LEN_MAX;

/// Length of a session id (and of a `complete/` staging name): 128 bits in lowercase hex.
pub const ID_LEN: usize = 32;

/// Checks a repository name against the OCI distribution grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`REPOSITORY_LEN_MAX`] characters (the build-index's validator: one grammar for the whole
/// registry).
pub fn validate_repository(name: &str) -> Result<(), UploadError> {
    use crate::build_index::NameError;
    crate::build_index::validate_repository(name).map_err(|error| {
        let reason = match error {
            NameError::RepositoryEmpty => "empty",
            NameError::RepositoryTooLong { .. } => "longer than 255 characters",
            _ => {
                "not a repository name: path components of lowercase letters and digits, \
                 joined by '.', '_', '__' or runs of '-'"
            }
        };
        UploadError::InvalidRepository {
            name: quote(name),
            reason,
        }
    })
}

/// Whether `id` is exactly [`ID_LEN`] lowercase hex characters, the only form used as a path.
pub(crate) fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a client-supplied session id.
pub(crate) fn check_id(id: &str) -> Result<(), UploadError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(UploadError::InvalidId { id: quote(id) })
    }
}

/// 128 random bits from `/dev/urandom`, in lowercase hex.
pub(crate) fn random_id() -> Result<String, UploadError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; ID_LEN / 2];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut bytes))
        .context("read", path)?;
    let id = shoal_proto::types::hex(&bytes);
    debug_assert!(is_valid_id(&id));
    Ok(id)
}
