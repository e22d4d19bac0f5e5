//! Names that come from clients: repository names (the OCI grammar) and session ids (32
//! lowercase hex characters, the only form ever used as a path component). Random names
//! come from `/dev/urandom`.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use super::error::{IoContext as _, UploadError, quote};

/// The longest repository name accepted. The spec notes that many clients limit the
/// registry host plus `/` plus the name to 255 characters; the name alone can be no longer.
pub const REPOSITORY_LEN_MAX: usize = 255;

/// Length of a session id (and of a `complete/` staging name): 128 bits in lowercase hex.
pub const ID_LEN: usize = 32;

/// Checks a repository name against the OCI distribution grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`REPOSITORY_LEN_MAX`] characters.
pub fn validate_repository(name: &str) -> Result<(), UploadError> {
    let invalid = |reason| UploadError::InvalidRepository {
        name: quote(name),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > REPOSITORY_LEN_MAX {
        return Err(invalid("longer than 255 characters"));
    }
    for component in name.split('/') {
        check_component(component).map_err(invalid)?;
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(component: &str) -> Result<(), &'static str> {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return Err("empty path component (leading, trailing or doubled '/')");
    }
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut previous_was_alnum = false;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            previous_was_alnum = true;
            i += 1;
            continue;
        }
        // A run of separator characters: must sit between alphanumerics and be exactly
        // ".", "_", "__", or one or more "-".
        let run_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[run_start..i];
        let separator_ok =
            run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
        if !separator_ok {
            return Err(
                "only lowercase letters, digits and the separators '.', '_', '__', '-' are allowed",
            );
        }
        if !previous_was_alnum || i == bytes.len() {
            return Err("a path component must start and end with a lowercase letter or digit");
        }
        previous_was_alnum = false;
    }
    Ok(())
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
