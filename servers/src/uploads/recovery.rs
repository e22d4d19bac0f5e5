//! Start-up recovery: decide, for everything under `sessions/` and `complete/`, whether it can
//! be trusted. The rules are on [`RecoveryReport`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::UploadLimits;
use super::disk::{self, DATA_FILE, META_FILE, TEMP_PREFIX};
use super::error::{IoContext as _, UploadError};
use super::names::is_valid_id;

/// The report lists at most this many discarded paths (all are counted and logged): a root
/// littered with garbage must not make the report unbounded.
pub const DISCARDED_LISTED_MAX: usize = 1024;

/// What [`super::UploadStore::open`] found and did. Recovery keeps only what it can vouch for:
///
/// - `complete/`: everything is removed. A verified blob there was never handed on (or was and
///   its `release` was lost); the client did not get a success for it, or will push it again.
/// - `sessions/<id>/`: kept (resumable) if `<id>` is 32 lowercase hex, `meta` parses (its
///   repository name valid), `data` is a file of at most `blob_bytes_max` bytes, and the
///   session has not been idle for `idle_timeout` (last activity: the later of `meta`'s and
///   `data`'s modification time). Its offset is the length of `data`; its hash is rebuilt on
///   first use. Other files inside are removed.
/// - Everything else under `sessions/` (temporary names, a session being removed, other
///   names, a failed check) is removed whole.
/// - If more sessions pass than `sessions_max` allows, the most recently active are kept.
///
/// Names directly under the root other than `sessions`, `complete` and `lock` are left
/// alone (the root might be misconfigured to a directory with other content).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sessions that can be resumed, most recently active first.
    pub sessions: Vec<RecoveredSession>,
    /// What was removed, and why: the first [`DISCARDED_LISTED_MAX`].
    pub discarded: Vec<Discarded>,
    /// How many paths were removed in all.
    pub n_discarded: usize,
}

/// A session kept at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    pub id: String,
    pub repo: String,
    /// Bytes received so far (the length of its `data`).
    pub offset: u64,
}

/// A path removed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    pub path: PathBuf,
    pub reason: DiscardReason,
}

/// Why recovery removed something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscardReason {
    #[error("verified blob in complete/ that was never handed on")]
    StagedBlob,
    #[error("temporary name left over from an interrupted write or removal")]
    Temporary,
    #[error("name is not one the store uses")]
    UnknownName,
    #[error("wrong file type (a directory where a file belongs, or the reverse)")]
    WrongType,
    #[error("meta missing")]
    MetaMissing,
    #[error("meta corrupt: {0}")]
    MetaCorrupt(String),
    #[error("data missing")]
    DataMissing,
    #[error("data is {len} bytes, more than blob_bytes_max ({blob_bytes_max})")]
    TooLarge { len: u64, blob_bytes_max: u64 },
    #[error("idle for longer than idle_timeout")]
    Expired,
    #[error("more sessions than sessions_max; the least recently active go")]
    OverSessionsMax,
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// A session directory that passed every check.
#[derive(Debug)]
pub(crate) struct LoadedSession {
    pub(crate) id: String,
    pub(crate) repo: String,
    pub(crate) created_ms: u64,
    pub(crate) last_activity_ms: u64,
    pub(crate) offset: u64,
}

/// Runs recovery over `sessions_dir` and `complete_dir` (both exist). Fails only if a
/// directory cannot be listed or something cannot be removed.
pub(crate) fn recover(
    sessions_dir: &Path,
    complete_dir: &Path,
    limits: &UploadLimits,
    now: SystemTime,
) -> Result<(Vec<LoadedSession>, RecoveryReport), UploadError> {
    let mut report = RecoveryReport::default();

    for path in list(complete_dir)? {
        discard(&mut report, path, DiscardReason::StagedBlob)?;
    }

    let mut loaded = Vec::new();
    for path in list(sessions_dir)? {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(TEMP_PREFIX) {
            discard(&mut report, path, DiscardReason::Temporary)?;
            continue;
        }
        if !is_valid_id(&name) {
            discard(&mut report, path, DiscardReason::UnknownName)?;
            continue;
        }
        match load_session(&path, &name, limits, now, &mut report)? {
            Ok(session) => loaded.push(session),
            Err(reason) => discard(&mut report, path, reason)?,
        }
    }

    loaded.sort_by(|a, b| {
        b.last_activity_ms
            .cmp(&a.last_activity_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    while loaded.len() > limits.sessions_max {
        if let Some(session) = loaded.pop() {
            discard(
                &mut report,
                sessions_dir.join(&session.id),
                DiscardReason::OverSessionsMax,
            )?;
        }
    }
    report.sessions = loaded
        .iter()
        .map(|session| RecoveredSession {
            id: session.id.clone(),
            repo: session.repo.clone(),
            offset: session.offset,
        })
        .collect();
    Ok((loaded, report))
}

/// Checks one `sessions/<id>/` directory; removes stray files inside a good one.
fn load_session(
    dir: &Path,
    id: &str,
    limits: &UploadLimits,
    now: SystemTime,
    report: &mut RecoveryReport,
) -> Result<Result<LoadedSession, DiscardReason>, UploadError> {
    let unreadable = |error: io::Error| DiscardReason::Unreadable(error.to_string());
    match fs::symlink_metadata(dir) {
        Err(error) => return Ok(Err(unreadable(error))),
        Ok(metadata) if !metadata.is_dir() => return Ok(Err(DiscardReason::WrongType)),
        Ok(_) => {}
    }

    let meta_path = dir.join(META_FILE);
    let meta = match disk::read_meta(&meta_path) {
        Ok(Ok(meta)) => meta,
        Ok(Err(reason)) => return Ok(Err(DiscardReason::MetaCorrupt(reason))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Err(DiscardReason::MetaMissing));
        }
        Err(error) => return Ok(Err(unreadable(error))),
    };

    let data_path = dir.join(DATA_FILE);
    let data = match fs::symlink_metadata(&data_path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Err(DiscardReason::DataMissing));
        }
        Err(error) => return Ok(Err(unreadable(error))),
        Ok(metadata) if !metadata.is_file() => return Ok(Err(DiscardReason::WrongType)),
        Ok(metadata) => metadata,
    };
    if data.len() > limits.blob_bytes_max {
        return Ok(Err(DiscardReason::TooLarge {
            len: data.len(),
            blob_bytes_max: limits.blob_bytes_max,
        }));
    }
    let data_modified_ms = data.modified().map_or(0, disk::unix_ms);
    let last_activity_ms = meta.last_activity_ms.max(data_modified_ms);
    if disk::is_idle(last_activity_ms, limits.idle_timeout, now) {
        return Ok(Err(DiscardReason::Expired));
    }

    // The session is good: anything else inside goes.
    for path in list(dir)? {
        let name = path.file_name().unwrap_or_default();
        if name == DATA_FILE || name == META_FILE {
            continue;
        }
        let reason = if name.to_string_lossy().starts_with(TEMP_PREFIX) {
            DiscardReason::Temporary
        } else {
            DiscardReason::UnknownName
        };
        discard(report, path, reason)?;
    }

    Ok(Ok(LoadedSession {
        id: id.to_owned(),
        repo: meta.repo,
        created_ms: meta.created_ms,
        last_activity_ms,
        offset: data.len(),
    }))
}

/// The entries of `dir`, sorted (so the report is deterministic).
fn list(dir: &Path) -> Result<Vec<PathBuf>, UploadError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).context("read_dir", dir)? {
        paths.push(entry.context("read_dir", dir)?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Removes `path`, counts it, and lists it if the list has room.
fn discard(
    report: &mut RecoveryReport,
    path: PathBuf,
    reason: DiscardReason,
) -> Result<(), UploadError> {
    tracing::info!(path = %path.display(), %reason, "upload recovery: removing");
    disk::remove_all(&path).context("remove", &path)?;
    report.n_discarded += 1;
    if report.discarded.len() < DISCARDED_LISTED_MAX {
        report.discarded.push(Discarded { path, reason });
    }
    Ok(())
}
