//! The [`TagStore`]'s manifest memberships and referrers (layout and durability in the
//! parent module; record format in `member.rs`).
//!
//! - [`TagStore::put_manifest`]: the manifest's membership record, then, for a manifest with
//!   a subject, its referrer record. A crash between the two leaves a member that is not yet
//!   listed as a referrer; pushing the manifest again completes it (puts are idempotent).
//! - [`TagStore::delete_manifest`]: every tag of the repository naming the manifest, its
//!   referrer record, then its membership, in that order, so a crash part-way leaves the
//!   manifest a member and a retried delete finishes the job; never a tag without its
//!   manifest.
//! - [`TagStore::referrers`]: the referrer records of a subject, corrupt ones skipped.

use super::*;
use crate::build_index::member::{
    self, MANIFEST_RECORD_LEN_MAX, ManifestRecord, REFERRERS_PER_SUBJECT_MAX, digest_file_name,
    parse_digest_file_name,
};

/// Directory entries a referrers listing looks at before it stops: room for every referrer
/// a subject may have, plus as many names the store does not use (temporaries, strays).
const REFERRER_ENTRIES_SCANNED_MAX: usize = 2 * REFERRERS_PER_SUBJECT_MAX;

/// What [`TagStore::delete_manifest`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedManifest {
    /// Whether the repository had a membership record for it.
    pub was_member: bool,
    /// The repository's tags that named it (all removed).
    pub tags: Vec<String>,
    /// Whether a referrer record was removed.
    pub referrer_removed: bool,
}

impl TagStore {
    /// Records that `repo` holds the manifest `record.digest` and, when it has a subject,
    /// lists it as a referrer of that subject. Idempotent: a record already on disk as is
    /// is not rewritten. Refused: a record that fails [`ManifestRecord::validate`], a new
    /// referrer of a subject that has [`REFERRERS_PER_SUBJECT_MAX`] already.
    pub fn put_manifest(&self, repo: &str, record: &ManifestRecord) -> Result<(), IndexError> {
        validate_repository(repo)?;
        record
            .validate()
            .map_err(|reason| IndexError::ManifestInvalid {
                repository: repo.to_string(),
                digest: record.digest,
                reason,
            })?;
        let mut writer = self.lock_writer()?;
        let name = digest_file_name(&record.digest);
        if let Some(subject) = &record.subject {
            let dir = self.referrers_dir(repo, subject);
            if !dir.join(&name).exists()
                && count_entries(&dir, REFERRERS_PER_SUBJECT_MAX)? >= REFERRERS_PER_SUBJECT_MAX
            {
                return Err(IndexError::TooManyReferrers {
                    repository: repo.to_string(),
                    subject: *subject,
                    max: REFERRERS_PER_SUBJECT_MAX,
                });
            }
        }
        let bytes = member::encode(repo, record);
        let written = (|| {
            let dir = self
                .create_dirs(repo, &[MANIFESTS_DIR])
                .map_err(WriteFailure::NotWritten)?;
            write_if_changed(&dir, &name, &bytes)?;
            if let Some(subject) = &record.subject {
                let dir = self
                    .create_dirs(repo, &[REFERRERS_DIR, &digest_file_name(subject)])
                    .map_err(WriteFailure::NotWritten)?;
                write_if_changed(&dir, &name, &bytes)?;
            }
            Ok(())
        })();
        settle(&mut writer, written)
    }

    /// The record of manifest `digest` of `repo`, `None` if the repository does not hold it.
    pub fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, IndexError> {
        validate_repository(repo)?;
        let path = self.manifest_path(repo, digest);
        read_manifest_record(&path, repo, digest, None)
    }

    /// Removes manifest `digest` from `repo`: every tag of `repo` that names it, its
    /// referrer record, its membership (in that order). `None` if the repository neither
    /// holds it nor has a tag naming it. Cost: one read of every tag record of `repo`.
    pub fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<DeletedManifest>, IndexError> {
        validate_repository(repo)?;
        let mut writer = self.lock_writer()?;
        let path = self.manifest_path(repo, digest);
        // `Some(subject)` once known; a corrupt membership's subject is looked for below.
        let (was_member, subject, subject_known) =
            match read_manifest_record(&path, repo, digest, None) {
                Ok(Some(record)) => (true, record.subject, true),
                Ok(None) => (false, None, true),
                Err(IndexError::CorruptManifest { .. }) => (true, None, false),
                Err(error) => return Err(error),
            };

        let mut names = Vec::new();
        for_each_tag_name(&self.tags_dir(repo), usize::MAX, |tag| {
            names.push(tag.to_string())
        })?;
        let mut tags = Vec::new();
        for tag in names {
            // A corrupt tag record names no manifest we can tell; it stays.
            if let Ok(Some(record)) = self.read_record(repo, &tag)
                && record.digest == *digest
                && self.delete_locked(&mut writer, repo, &tag)?
            {
                tags.push(tag);
            }
        }
        if !was_member && tags.is_empty() {
            return Ok(None);
        }

        let name = digest_file_name(digest);
        let referrer_paths = match subject {
            Some(subject) => vec![self.referrers_dir(repo, &subject).join(&name)],
            None if subject_known => Vec::new(),
            // The membership is unreadable: look under every subject.
            None => self.referrer_files_named(repo, &name)?,
        };
        let mut referrer_removed = false;
        for referrer in referrer_paths {
            if remove_and_sync(&mut writer, &referrer)? {
                referrer_removed = true;
                if let Some(dir) = referrer.parent() {
                    self.remove_empty_dirs(dir.to_path_buf());
                }
            }
        }
        remove_and_sync(&mut writer, &path)?;
        self.remove_empty_dirs(self.repos_dir.join(repo).join(MANIFESTS_DIR));
        Ok(Some(DeletedManifest {
            was_member,
            tags,
            referrer_removed,
        }))
    }

    /// The tags of `repo` that name `digest` (what [`TagStore::delete_manifest`] would
    /// remove), in no particular order. Cost: one read of every tag record of `repo`.
    pub fn tags_naming(&self, repo: &str, digest: &Digest) -> Result<Vec<String>, IndexError> {
        validate_repository(repo)?;
        let mut names = Vec::new();
        for_each_tag_name(&self.tags_dir(repo), usize::MAX, |tag| {
            names.push(tag.to_string())
        })?;
        names.retain(|tag| {
            matches!(self.read_record(repo, tag), Ok(Some(record)) if record.digest == *digest)
        });
        Ok(names)
    }

    /// The referrers of `subject` in `repo`, in digest order; none if it has none (the
    /// subject need not exist). Corrupt records are skipped (logged). At most
    /// [`REFERRERS_PER_SUBJECT_MAX`].
    pub fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Vec<ManifestRecord>, IndexError> {
        validate_repository(repo)?;
        let dir = self.referrers_dir(repo, subject);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("read directory", &dir)(source)),
        };
        let mut referrers = Vec::new();
        for entry in entries.take(REFERRER_ENTRIES_SCANNED_MAX) {
            if referrers.len() >= REFERRERS_PER_SUBJECT_MAX {
                break;
            }
            let entry = entry.map_err(io_error("read directory", &dir))?;
            let Some(digest) = entry.file_name().to_str().and_then(parse_digest_file_name) else {
                continue;
            };
            match read_manifest_record(&entry.path(), repo, &digest, Some(subject)) {
                Ok(Some(record)) => referrers.push(record),
                Ok(None) => {} // removed meanwhile
                Err(error) => tracing::warn!(%error, "referrer record skipped"),
            }
        }
        referrers.sort_by_key(|record| record.digest.to_string());
        Ok(referrers)
    }

    fn manifest_path(&self, repo: &str, digest: &Digest) -> PathBuf {
        debug_assert!(validate_repository(repo).is_ok());
        self.repos_dir
            .join(repo)
            .join(MANIFESTS_DIR)
            .join(digest_file_name(digest))
    }

    fn referrers_dir(&self, repo: &str, subject: &Digest) -> PathBuf {
        debug_assert!(validate_repository(repo).is_ok());
        self.repos_dir
            .join(repo)
            .join(REFERRERS_DIR)
            .join(digest_file_name(subject))
    }

    /// Every `_referrers/<subject>/<name>` of `repo` that exists.
    fn referrer_files_named(&self, repo: &str, name: &str) -> Result<Vec<PathBuf>, IndexError> {
        let root = self.repos_dir.join(repo).join(REFERRERS_DIR);
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error("read directory", &root)(source)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(io_error("read directory", &root))?
                .path()
                .join(name);
            if path.is_file() {
                found.push(path);
            }
        }
        Ok(found)
    }

    /// Before a tag put: writes a bare membership for `digest` unless the repository has one
    /// (readable or not: a corrupt one is reported, and replaced by the next manifest put).
    pub(super) fn ensure_member(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: &str,
    ) -> Result<(), WriteFailure> {
        let path = self.manifest_path(repo, digest);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(());
        }
        let dir = self
            .create_dirs(repo, &[MANIFESTS_DIR])
            .map_err(WriteFailure::NotWritten)?;
        let record = ManifestRecord::member(*digest, media_type);
        write_atomically(
            &dir,
            &digest_file_name(digest),
            &member::encode(repo, &record),
        )
    }
}

/// A write's outcome as the caller sees it: an unsynced change poisons the store.
fn settle<T>(writer: &mut Writer, result: Result<T, WriteFailure>) -> Result<T, IndexError> {
    result.map_err(|failure| match failure {
        WriteFailure::NotWritten(error) => error,
        WriteFailure::Unsynced(error) => {
            writer.poisoned = true;
            error
        }
    })
}

/// Writes `dir/name` atomically unless it already holds `bytes`.
fn write_if_changed(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteFailure> {
    let path = dir.join(name);
    if read_at_most(&path, MANIFEST_RECORD_LEN_MAX).is_ok_and(|current| current == bytes) {
        return Ok(());
    }
    write_atomically(dir, name, bytes)
}

/// Unlinks `path` and fsyncs its directory; `false` if it did not exist.
fn remove_and_sync(writer: &mut Writer, path: &Path) -> Result<bool, IndexError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(io_error("unlink", path)(source)),
    }
    if let Some(dir) = path.parent()
        && let Err(error) = sync_dir(dir)
    {
        writer.poisoned = true;
        return Err(error);
    }
    Ok(true)
}

/// How many entries `dir` has, counting no further than `count_max` (a missing directory
/// has none). Temporary names are not counted.
fn count_entries(dir: &Path, count_max: usize) -> Result<usize, IndexError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io_error("read directory", dir)(source)),
    };
    let mut count = 0;
    for entry in entries {
        if count >= count_max {
            break;
        }
        let entry = entry.map_err(io_error("read directory", dir))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            count += 1;
        }
    }
    Ok(count)
}

/// Reads and checks a manifest or referrer record file.
fn read_manifest_record(
    path: &Path,
    repo: &str,
    digest: &Digest,
    subject: Option<&Digest>,
) -> Result<Option<ManifestRecord>, IndexError> {
    let corrupt = |reason: String| IndexError::CorruptManifest {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match read_at_most(path, MANIFEST_RECORD_LEN_MAX) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.kind() == io::ErrorKind::IsADirectory => {
            return Err(corrupt("a directory, not a record file".to_string()));
        }
        Err(source) => return Err(io_error("read", path)(source)),
    };
    member::decode(&bytes, repo, digest, subject)
        .map(Some)
        .map_err(corrupt)
}

fn report_corrupt(path: PathBuf, reason: String, report: &mut RecoveryReport) {
    tracing::warn!(path = %path.display(), %reason, "corrupt manifest record; not served");
    report.n_corrupt_manifest_records += 1;
    if report.corrupt_manifest_records.len() < REPORT_LISTED_MAX {
        report.corrupt_manifest_records.push((path, reason));
    }
}

/// Start-up: checks every record in one `_manifests` directory.
pub(super) fn recover_manifests(
    dir: &Path,
    repository: &str,
    report: &mut RecoveryReport,
) -> Result<(), IndexError> {
    recover_records(dir, repository, None, report, |report| {
        report.n_manifests += 1
    })
}

/// Start-up: checks every record under one `_referrers` directory.
pub(super) fn recover_referrers(
    dir: &Path,
    repository: &str,
    report: &mut RecoveryReport,
) -> Result<(), IndexError> {
    let entries = fs::read_dir(dir).map_err(io_error("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            remove_temporary(&path, report)?;
            continue;
        }
        match parse_digest_file_name(&name) {
            Some(subject) if entry.file_type().is_ok_and(|t| t.is_dir()) => {
                recover_records(&path, repository, Some(&subject), report, |report| {
                    report.n_referrers += 1
                })?;
            }
            _ => report_unexpected(path, report),
        }
    }
    Ok(())
}

/// Checks every record file in `dir` (`subject` set for a referrer directory).
fn recover_records(
    dir: &Path,
    repository: &str,
    subject: Option<&Digest>,
    report: &mut RecoveryReport,
    count_readable: impl Fn(&mut RecoveryReport),
) -> Result<(), IndexError> {
    let entries = fs::read_dir(dir).map_err(io_error("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read directory", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            remove_temporary(&path, report)?;
            continue;
        }
        let Some(digest) = parse_digest_file_name(&name) else {
            report_unexpected(path, report);
            continue;
        };
        match read_manifest_record(&path, repository, &digest, subject) {
            Ok(Some(_)) => count_readable(report),
            Ok(None) => {}
            Err(IndexError::CorruptManifest { path, reason }) => {
                report_corrupt(path, reason, report)
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Start-up: a readable tag whose manifest has no membership record (a store written before
/// memberships were recorded) gets a bare one, so the repository keeps serving it by digest.
pub(super) fn restore_membership(
    tags_dir: &Path,
    repository: &str,
    tag: &TagRecord,
    report: &mut RecoveryReport,
) -> Result<(), IndexError> {
    let Some(repo_dir) = tags_dir.parent() else {
        return Ok(());
    };
    let dir = repo_dir.join(MANIFESTS_DIR);
    let name = digest_file_name(&tag.digest);
    if fs::symlink_metadata(dir.join(&name)).is_ok() {
        return Ok(());
    }
    if create_dir_if_missing(&dir)? {
        sync_dir(repo_dir)?;
    }
    let record = ManifestRecord::member(tag.digest, &tag.media_type);
    match write_atomically(&dir, &name, &member::encode(repository, &record)) {
        Ok(()) => {}
        Err(WriteFailure::NotWritten(error) | WriteFailure::Unsynced(error)) => return Err(error),
    }
    report.n_manifests_restored += 1;
    tracing::info!(repository, digest = %tag.digest, "membership restored for a tagged manifest");
    Ok(())
}

#[cfg(test)]
mod tests;
