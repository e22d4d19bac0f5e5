//! [`TagStore`]: the persistent map (repository, tag) → [`TagRecord`] on local disk.
//!
//! # Layout under the root
//!
//! ```text
//! <root>/lock                              flock'd by the one TagStore that owns the root
//! <root>/version-floor                     largest version handed out, as of the last delete
//! <root>/repos/<repository>/_tags/<tag>    one record per tag (format in `record.rs`)
//! <root>/repos/<repository>/_manifests/<alg>-<hex>
//!                                          one record per manifest of the repository
//! <root>/repos/<repository>/_referrers/<subject alg>-<hex>/<alg>-<hex>
//!                                          one record per referrer of a subject
//! ```
//!
//! Manifest and referrer records (format in `member.rs`) are written and read by the
//! methods in `store/members.rs`: a repository holds a manifest while it has its membership
//! record; a manifest with a `subject` also has a referrer record under that subject. Every
//! tag's manifest is a member: a tag put writes a bare membership first if there is none,
//! and start-up recovery writes the missing ones for tags written before memberships were
//! recorded (counted in [`RecoveryReport::n_manifests_restored`]).
//!
//! `<repository>` is the repository name with its `/`s as directories
//! (`repos/library/ubuntu/_tags/latest`). [`validate_repository`] and [`validate_tag`] keep
//! every path inside the root; `_tags` cannot be a repository component (components start
//! with `[a-z0-9]`), and neither a component nor a tag can start with `.`, the first
//! character of the temporary names (`.tmp-…`) that writes go through.
//!
//! # Durability
//!
//! A put writes the record to `_tags/.tmp-<tag>`, fsyncs it, renames it over `_tags/<tag>`
//! and fsyncs `_tags`; directories it had to create are fsynced into their parents first. A
//! rename is atomic, so a reader (and a crash) sees the old record or the new one, whole:
//! never a mix, never a torn file. A delete unlinks the record and fsyncs `_tags`. Start-up
//! recovery ([`TagStore::open`]) removes leftover temporary files, reads and checks every
//! record, and reports (never serves as valid, never panics on) any record that fails its
//! checksum; see [`RecoveryReport`].
//!
//! If an fsync fails after a rename or an unlink made a change visible, that change may not
//! be durable (Linux may drop the dirty pages), so the store refuses every later write with
//! [`IndexError::Poisoned`]; reads go on. Reopening the store (a restart) runs recovery and
//! clears it. A failure before the rename changes nothing and only fails that put.
//!
//! # Concurrency and freshness
//!
//! A [`TagStore`] is `Send + Sync`. Writes (put, delete) are serialised by one mutex, so
//! concurrent puts to one tag are ordered and versions never go backwards; a compare-and-set
//! reads the current record and writes the new one under it. Reads take no lock and keep no
//! cache: [`TagStore::get`] reads the record file, so it always returns the state of the
//! last completed write (rename is atomic). Writes are about 2 fsyncs each and serialised
//! store-wide, which bounds write throughput to what the disk's journal commits allow (a few
//! hundred per second on ordinary disks): enough for tag pushes; per-repository locks can
//! come if a measurement asks for them. Only one `TagStore` may own a root: it holds an
//! exclusive `flock` on `<root>/lock`.
//!
//! **Blocking:** every method does blocking std file I/O (and put/delete fsync). Call them
//! from a blocking pool or a dedicated thread, never from a compio shard's event loop.

use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use shoal_proto::Digest;

use super::names::{self, NameError, validate_repository, validate_tag};
use super::record::{self, MediaTypeError, RECORD_LEN_MAX, TagRecord, validate_media_type};

/// Largest page [`TagStore::list_tags`] and [`TagStore::list_repositories`] return, and the
/// page length when the caller gives none (the OCI "no `n`" case: the client follows the
/// `next` link for more). Distribution's catalog uses the same 1000.
pub const PAGE_LEN_MAX: usize = 1000;

/// The recovery report lists at most this many corrupt records and this many unexpected
/// paths (all are logged and counted): a damaged root must not make the report unbounded.
pub const REPORT_LISTED_MAX: usize = 1024;

/// Deepest directory nesting under `repos/` that can hold a repository: a name of
/// [`names::REPOSITORY_LEN_MAX`] bytes has at most this many components.
const REPOSITORY_DEPTH_MAX: usize = names::REPOSITORY_LEN_MAX.div_ceil(2);

/// Prefix of every temporary name (never a valid tag or repository component).
const TEMP_PREFIX: &str = ".tmp-";

/// Directory of a repository's tag records.
const TAGS_DIR: &str = "_tags";

/// Directory of a repository's manifest (membership) records.
const MANIFESTS_DIR: &str = "_manifests";

/// Directory of a repository's referrer records, one subdirectory per subject.
const REFERRERS_DIR: &str = "_referrers";

/// Everything the tag store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A repository name or tag that does not match the OCI grammar.
    #[error(transparent)]
    Name(#[from] NameError),

    /// A media type that is not a plain `type/subtype`.
    #[error(transparent)]
    MediaType(#[from] MediaTypeError),

    /// A compare-and-set put whose expected version is not the tag's current one (`current`
    /// is `None` when the tag does not exist; an expected version of 0 means "must not
    /// exist").
    #[error(
        "{repository}:{tag} is {}, not version {expected}",
        match current { Some(v) => format!("at version {v}"), None => "absent".to_string() }
    )]
    Conflict {
        repository: String,
        tag: String,
        expected: u64,
        current: Option<u64>,
    },

    /// `list_tags` of a repository that has no tags (a repository exists while it has one).
    #[error("repository {repository} is unknown (it has no tags)")]
    RepositoryUnknown { repository: String },

    /// The tag's record file exists but fails its checks (checksum, format, names). The tag
    /// is not served; an unconditional put or a delete replaces or removes it.
    #[error("record of {repository}:{tag} at {} is corrupt: {reason}", path.display())]
    Corrupt {
        repository: String,
        tag: String,
        path: PathBuf,
        reason: String,
    },

    /// An operating-system call failed. `op` says which (`"open"`, `"fsync"`, …).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another `TagStore` (in this process or another) owns the root.
    #[error("{} is locked by another tag store", path.display())]
    Locked { path: PathBuf },

    /// An earlier write's fsync failed after its change became visible; writes are refused
    /// until the store is reopened (see the module documentation).
    #[error("an earlier write failed to sync; writes are refused until the tag store is reopened")]
    Poisoned,

    /// The version counter reached `u64::MAX` (not reachable in practice).
    #[error("tag versions are exhausted")]
    VersionsExhausted,

    /// A manifest record that cannot be stored (a bad media type or artifact type,
    /// annotations past their bound, a referrer without a size).
    #[error("manifest {digest} of {repository}: {reason}")]
    ManifestInvalid {
        repository: String,
        digest: Digest,
        reason: String,
    },

    /// The subject already has [`super::REFERRERS_PER_SUBJECT_MAX`] referrers in the
    /// repository.
    #[error("{repository}@{subject} already has {max} referrers, the most recorded")]
    TooManyReferrers {
        repository: String,
        subject: Digest,
        max: usize,
    },

    /// A manifest record file exists but fails its checks. A put replaces it, a delete
    /// removes it.
    #[error("manifest record {} is corrupt: {reason}", path.display())]
    CorruptManifest { path: PathBuf, reason: String },

    /// A tag write could not be journaled for its storage backend (the journal's disk
    /// failed, or too many tags wait for the backend already); nothing was changed.
    #[error("tag write-through journal: {reason}")]
    Journal { reason: String },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One page of [`TagStore::list_tags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    /// Tags in lexical (byte) order, all after the request's `last`.
    pub tags: Vec<String>,
    /// The last tag of this page when more follow: the `last` of the next request (the
    /// `Link` header's). `None` on the final page.
    pub next: Option<String>,
}

/// One page of [`TagStore::list_repositories`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPage {
    /// Repository names in lexical (byte) order, all after the request's `last`.
    pub repositories: Vec<String>,
    /// The last name of this page when more follow; `None` on the final page.
    pub next: Option<String>,
}

/// What [`TagStore::open`] found under the root.
///
/// - Temporary files (`.tmp-…`, from a write interrupted before its rename) are removed:
///   the record they would have replaced is still in place, whole.
/// - Every record is read and checked. A corrupt one (checksum, format, or a record naming
///   another tag) is listed in `corrupt_records` and left in place for inspection: `get`
///   refuses it with [`IndexError::Corrupt`], an unconditional put replaces it, a delete
///   removes it.
/// - Names the store does not use (not a valid component, tag, `_tags` or temporary name;
///   symlinks; files where directories belong) are listed in `unexpected_paths` and left
///   alone: they are never served, since every path served is built from validated names.
///
/// The first [`REPORT_LISTED_MAX`] of each list are kept; the counts are complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Repositories with at least one readable record.
    pub n_repositories: usize,
    /// Readable records.
    pub n_tags: usize,
    /// Temporary files removed.
    pub n_temporary_removed: usize,
    /// Corrupt records found: the first [`REPORT_LISTED_MAX`].
    pub corrupt_records: Vec<CorruptRecord>,
    pub n_corrupt_records: usize,
    /// Paths the store does not use: the first [`REPORT_LISTED_MAX`].
    pub unexpected_paths: Vec<PathBuf>,
    pub n_unexpected_paths: usize,
    /// Why the version floor file could not be read, if it could not (versions of tags
    /// deleted before the crash may then be handed out again).
    pub version_floor_error: Option<String>,
    /// The version the next put gets.
    pub next_version: u64,
    /// Readable manifest (membership) records.
    pub n_manifests: usize,
    /// Readable referrer records.
    pub n_referrers: usize,
    /// Memberships written at start-up for tagged manifests that had none (a store written
    /// before memberships were recorded).
    pub n_manifests_restored: usize,
    /// Manifest and referrer records that fail their checks (left in place, never served;
    /// a referrers listing skips them): the first [`REPORT_LISTED_MAX`].
    pub corrupt_manifest_records: Vec<(PathBuf, String)>,
    pub n_corrupt_manifest_records: usize,
}

/// A record that failed its checks at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    pub repository: String,
    pub tag: String,
    pub path: PathBuf,
    pub reason: String,
}

/// The persistent tag map. See the module documentation for layout, durability and
/// concurrency.
#[derive(Debug)]
pub struct TagStore {
    /// `<root>/repos`.
    repos_dir: PathBuf,
    /// `<root>`, for the version floor file.
    root: PathBuf,
    /// Serialises writes; holds the version counter.
    writer: Mutex<Writer>,
    /// Holds the exclusive flock on `<root>/lock` for the store's lifetime.
    _lock_file: File,
}

/// State only writers touch, under [`TagStore::writer`].
#[derive(Debug)]
struct Writer {
    /// The version the next put gets: larger than every version on disk or in the floor.
    next_version: u64,
    /// The version floor as last written to disk (or read at start-up).
    floor_on_disk: u64,
    /// Set when a visible change failed to sync.
    poisoned: bool,
}

/// How a write through a temporary file failed.
enum WriteFailure {
    /// Before the rename: nothing changed.
    NotWritten(IndexError),
    /// After the rename: the change is visible but may not be durable.
    Unsynced(IndexError),
}

impl TagStore {
    /// Opens (creating if needed) the tag store under `root`, takes its lock, and runs
    /// start-up recovery (see [`RecoveryReport`]). Fails if another store owns the root or a
    /// directory cannot be read; a corrupt record is reported, not an error.
    pub fn open(root: &Path) -> Result<(TagStore, RecoveryReport), IndexError> {
        fs::create_dir_all(root).map_err(io_error("create directory", root))?;
        let lock_path = root.join("lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(IndexError::Locked { path: lock_path });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(IndexError::Io {
                    op: "flock",
                    path: lock_path,
                    source,
                });
            }
        }

        let mut report = RecoveryReport::default();
        let repos_dir = root.join("repos");
        if create_dir_if_missing(&repos_dir)? {
            sync_dir(root)?;
        }
        remove_temporaries(root, &mut report)?;
        let floor_on_disk = read_version_floor(root, &mut report)?;
        let max_version = recover_repositories(&repos_dir, &mut report)?;
        let next_version = max_version
            .max(floor_on_disk)
            .checked_add(1)
            .ok_or(IndexError::VersionsExhausted)?;
        report.next_version = next_version;
        tracing::info!(
            root = %root.display(),
            repositories = report.n_repositories,
            tags = report.n_tags,
            temporary_removed = report.n_temporary_removed,
            corrupt = report.n_corrupt_records,
            unexpected = report.n_unexpected_paths,
            manifests = report.n_manifests,
            referrers = report.n_referrers,
            manifests_restored = report.n_manifests_restored,
            corrupt_manifest_records = report.n_corrupt_manifest_records,
            next_version,
            "tag store opened"
        );
        let store = TagStore {
            repos_dir,
            root: root.to_path_buf(),
            writer: Mutex::new(Writer {
                next_version,
                floor_on_disk,
                poisoned: false,
            }),
            _lock_file: lock_file,
        };
        Ok((store, report))
    }

    /// Whether `root` holds a tag store already (one was opened there before).
    pub fn exists(root: &Path) -> bool {
        root.join("lock").is_file()
    }

    /// The current record of `repo:tag`, `None` if the tag does not exist. Reads the record
    /// file every time (no cache), so a put that returned is visible to the next get.
    pub fn get(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, IndexError> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        self.read_record(repo, tag)
    }

    /// Points `repo:tag` at `digest` and returns the new record, whose version is larger than
    /// any handed out before. With `expected_version`, a compare-and-set: the tag's current
    /// version must be that one (0: the tag must not exist), else [`IndexError::Conflict`];
    /// a CAS on a corrupt record fails with [`IndexError::Corrupt`], an unconditional put
    /// replaces it.
    ///
    /// Checking that the manifest's blobs exist is the caller's job, before the put
    /// ([`super::referenced_digests`] lists them).
    pub fn put(
        &self,
        repo: &str,
        tag: &str,
        digest: Digest,
        media_type: &str,
        expected_version: Option<u64>,
    ) -> Result<TagRecord, IndexError> {
        self.put_from(repo, tag, digest, media_type, expected_version, false)
    }

    /// [`TagStore::put`] of a tag learned from a read-only upstream
    /// ([`TagRecord::from_upstream`]).
    pub fn put_learned(
        &self,
        repo: &str,
        tag: &str,
        digest: Digest,
        media_type: &str,
        expected_version: Option<u64>,
    ) -> Result<TagRecord, IndexError> {
        self.put_from(repo, tag, digest, media_type, expected_version, true)
    }

    fn put_from(
        &self,
        repo: &str,
        tag: &str,
        digest: Digest,
        media_type: &str,
        expected_version: Option<u64>,
        from_upstream: bool,
    ) -> Result<TagRecord, IndexError> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        validate_media_type(media_type)?;
        let mut writer = self.lock_writer()?;

        if let Some(expected) = expected_version {
            let current = self.read_record(repo, tag)?.map(|record| record.version);
            if current.unwrap_or(0) != expected {
                return Err(IndexError::Conflict {
                    repository: repo.to_string(),
                    tag: tag.to_string(),
                    expected,
                    current,
                });
            }
        }

        let version = writer.next_version;
        writer.next_version = version
            .checked_add(1)
            .ok_or(IndexError::VersionsExhausted)?;
        let record = TagRecord {
            digest,
            media_type: media_type.to_string(),
            version,
            updated_at: SystemTime::now(),
            from_upstream,
        };
        // The tag's manifest is a member of the repository before the tag names it.
        if let Err(failure) = self.ensure_member(repo, &digest, media_type) {
            return Err(match failure {
                WriteFailure::NotWritten(error) => error,
                WriteFailure::Unsynced(error) => {
                    writer.poisoned = true;
                    error
                }
            });
        }
        let tags_dir = self.create_dirs(repo, &[TAGS_DIR])?;
        let bytes = record::encode(repo, tag, &record);
        match write_atomically(&tags_dir, tag, &bytes) {
            Ok(()) => Ok(record),
            Err(WriteFailure::NotWritten(error)) => Err(error),
            Err(WriteFailure::Unsynced(error)) => {
                writer.poisoned = true;
                Err(error)
            }
        }
    }

    /// Removes `repo:tag` (a corrupt record too); `false` if it did not exist. A repository
    /// whose last tag goes disappears from [`TagStore::list_repositories`].
    pub fn delete(&self, repo: &str, tag: &str) -> Result<bool, IndexError> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        let mut writer = self.lock_writer()?;
        self.delete_locked(&mut writer, repo, tag)
    }

    /// Removes `repo:tag` only if it is at `version` (a compare-and-set delete); `false` if
    /// it is not (absent, another version, or corrupt).
    pub fn delete_version(&self, repo: &str, tag: &str, version: u64) -> Result<bool, IndexError> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        let mut writer = self.lock_writer()?;
        match self.read_record(repo, tag) {
            Ok(Some(record)) if record.version == version => {
                self.delete_locked(&mut writer, repo, tag)
            }
            Ok(_) | Err(IndexError::Corrupt { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// [`TagStore::delete`] under the writer lock (names validated).
    fn delete_locked(
        &self,
        writer: &mut Writer,
        repo: &str,
        tag: &str,
    ) -> Result<bool, IndexError> {
        let path = self.record_path(repo, tag);
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(io_error("stat", &path)(source)),
        }
        // A restart computes the next version from the records on disk; once this one is
        // gone, only the floor remembers that its version was handed out.
        let handed_out_max = writer.next_version.saturating_sub(1);
        if writer.floor_on_disk < handed_out_max {
            let bytes = record::encode_version_floor(handed_out_max);
            match write_atomically(&self.root, "version-floor", &bytes) {
                Ok(()) => writer.floor_on_disk = handed_out_max,
                Err(WriteFailure::NotWritten(error)) => return Err(error),
                Err(WriteFailure::Unsynced(error)) => {
                    writer.poisoned = true;
                    return Err(error);
                }
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(IndexError::Io {
                    op: "unlink",
                    path,
                    source,
                });
            }
        }
        let tags_dir = self.tags_dir(repo);
        if let Err(error) = sync_dir(&tags_dir) {
            writer.poisoned = true;
            return Err(error);
        }
        self.remove_empty_dirs(self.tags_dir(repo));
        Ok(true)
    }

    /// Tags of `repo` in lexical order, after `last` (exclusive) if given, at most `n`
    /// (capped at [`PAGE_LEN_MAX`], which is also the default). `next` is set when more
    /// follow. [`IndexError::RepositoryUnknown`] if the repository has no tags at all.
    ///
    /// Listing reads names only: a tag whose record is corrupt is listed (its `get` fails).
    /// Cost: one directory read of the repository's tags, memory O(page).
    pub fn list_tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<TagPage, IndexError> {
        validate_repository(repo)?;
        let page_len = page_len(n);
        let tags_dir = self.tags_dir(repo);
        let mut smallest = Smallest::new(page_len);
        let n_tags = for_each_tag_name(&tags_dir, usize::MAX, |tag| {
            if last.is_none_or(|last| tag > last) {
                smallest.offer(tag.to_string());
            }
        })?;
        if n_tags == 0 {
            return Err(IndexError::RepositoryUnknown {
                repository: repo.to_string(),
            });
        }
        let (tags, next) = smallest.into_page();
        Ok(TagPage { tags, next })
    }

    /// Repositories (those with at least one tag) in lexical order, after `last` (exclusive)
    /// if given, at most `n` (capped at [`PAGE_LEN_MAX`], also the default): the catalog.
    ///
    /// Cost: a walk of the whole `repos/` tree per page (lexical order of full names is not
    /// the walk's order: `a-b` sorts between `a` and `a/b`), memory O(page + tree breadth).
    pub fn list_repositories(
        &self,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<RepoPage, IndexError> {
        let mut smallest = Smallest::new(page_len(n));
        walk_repositories(&self.repos_dir, |repository, dir| {
            if last.is_some_and(|last| repository <= last) {
                return Ok(());
            }
            if for_each_tag_name(&dir.join(TAGS_DIR), 1, |_| {})? > 0 {
                smallest.offer(repository.to_string());
            }
            Ok(())
        })?;
        let (repositories, next) = smallest.into_page();
        Ok(RepoPage { repositories, next })
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, IndexError> {
        // A panic while holding the lock cannot leave the counter behind the disk: it only
        // grows before a write. So a poisoned mutex is safe to take over.
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if writer.poisoned {
            return Err(IndexError::Poisoned);
        }
        Ok(writer)
    }

    fn tags_dir(&self, repo: &str) -> PathBuf {
        debug_assert!(validate_repository(repo).is_ok());
        self.repos_dir.join(repo).join(TAGS_DIR)
    }

    fn record_path(&self, repo: &str, tag: &str) -> PathBuf {
        debug_assert!(validate_tag(tag).is_ok());
        self.tags_dir(repo).join(tag)
    }

    /// Reads and decodes `repo:tag`'s record (names already validated).
    fn read_record(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, IndexError> {
        let path = self.record_path(repo, tag);
        let corrupt = |reason: String| IndexError::Corrupt {
            repository: repo.to_string(),
            tag: tag.to_string(),
            path: path.clone(),
            reason,
        };
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::IsADirectory => {
                return Err(corrupt("a directory, not a record file".to_string()));
            }
            Err(source) => return Err(io_error("read", &path)(source)),
        };
        record::decode(&bytes, repo, tag).map(Some).map_err(corrupt)
    }

    /// Creates `repos/<repo>/<below…>` and any missing parent, each fsynced into its
    /// parent.
    fn create_dirs(&self, repo: &str, below: &[&str]) -> Result<PathBuf, IndexError> {
        let mut dir = self.repos_dir.clone();
        for component in repo.split('/').chain(below.iter().copied()) {
            let parent = dir.clone();
            dir.push(component);
            if create_dir_if_missing(&dir)? {
                sync_dir(&parent)?;
            }
        }
        Ok(dir)
    }

    /// After a delete: removes `dir` (under `repos/`) and its parents if they are empty,
    /// deepest first, stopping at the first that is not. Best effort: an empty directory
    /// left behind (an error, a crash) is harmless, since a repository is listed only while
    /// it has a tag.
    fn remove_empty_dirs(&self, mut dir: PathBuf) {
        while dir != self.repos_dir && dir.starts_with(&self.repos_dir) {
            if fs::remove_dir(&dir).is_err() {
                return;
            }
            if !dir.pop() {
                return;
            }
        }
    }
}

/// Page length for a requested `n`.
fn page_len(n: Option<usize>) -> usize {
    n.unwrap_or(PAGE_LEN_MAX).min(PAGE_LEN_MAX)
}

/// Keeps the `page_len + 1` smallest names offered (the extra one says whether more follow),
/// in memory O(page_len).
struct Smallest {
    page_len: usize,
    heap: BinaryHeap<String>,
}

impl Smallest {
    fn new(page_len: usize) -> Smallest {
        Smallest {
            page_len,
            heap: BinaryHeap::with_capacity(page_len + 1),
        }
    }

    fn offer(&mut self, name: String) {
        if self.heap.len() <= self.page_len {
            self.heap.push(name);
        } else if self.heap.peek().is_some_and(|largest| name < *largest) {
            self.heap.pop();
            self.heap.push(name);
        }
    }

    /// The sorted page and, if more follow, its last name.
    fn into_page(self) -> (Vec<String>, Option<String>) {
        let mut names = self.heap.into_sorted_vec();
        if names.len() > self.page_len {
            names.truncate(self.page_len);
            let next = names.last().cloned();
            return (names, next);
        }
        (names, None)
    }
}

/// Calls `f` with each valid tag name in `tags_dir` that is a regular file, stopping after
/// `count_max` of them; returns how many. A missing directory has none.
fn for_each_tag_name(
    tags_dir: &Path,
    count_max: usize,
    mut f: impl FnMut(&str),
) -> Result<usize, IndexError> {
    let entries = match fs::read_dir(tags_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io_error("read directory", tags_dir)(source)),
    };
    let mut count = 0;
    for entry in entries {
        if count >= count_max {
            break;
        }
        let entry = entry.map_err(io_error("read directory", tags_dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if validate_tag(&name).is_err() || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        f(&name);
        count += 1;
    }
    Ok(count)
}

/// Walks `repos/`, calling `f(repository, directory)` for every directory that has a `_tags`
/// directory (whether or not it holds tags). Skips names the store does not use. Directories
/// that vanish during the walk (a concurrent delete) are skipped.
fn walk_repositories(
    repos_dir: &Path,
    mut f: impl FnMut(&str, &Path) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    // (directory, its repository name, depth); the root has an empty name.
    let mut pending = vec![(repos_dir.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, repository, depth)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io_error("read directory", &dir)(source)),
        };
        let mut has_tags_dir = false;
        for entry in entries {
            let entry = entry.map_err(io_error("read directory", &dir))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_dir {
                continue;
            }
            if name == TAGS_DIR && depth > 0 {
                has_tags_dir = true;
            } else if let Some(child) = child_repository(&repository, &name, depth) {
                pending.push((entry.path(), child, depth + 1));
            }
        }
        if has_tags_dir {
            f(&repository, &dir)?;
        }
    }
    Ok(())
}

/// The repository name of directory `name` under `parent` (at `depth`), if it is one the
/// store could have created.
fn child_repository(parent: &str, name: &str, depth: usize) -> Option<String> {
    if depth >= REPOSITORY_DEPTH_MAX || names::check_component(name).is_err() {
        return None;
    }
    let child = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    };
    (child.len() <= names::REPOSITORY_LEN_MAX).then_some(child)
}

/// Reads a file of at most [`RECORD_LEN_MAX`] bytes (one more is read, so that a longer file
/// is seen to be too long without reading it whole).
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    read_at_most(path, RECORD_LEN_MAX)
}

/// Reads at most `len_max + 1` bytes of a file.
fn read_at_most(path: &Path, len_max: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::with_capacity(256);
    file.take(len_max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates `dir`; `true` if it was created, `false` if it existed.
fn create_dir_if_missing(dir: &Path) -> Result<bool, IndexError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(io_error("create directory", dir)(source)),
    }
}

/// fsyncs a directory, so that the names created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Writes `bytes` to `dir/name` through `dir/.tmp-<name>`: write, fsync, rename, fsync `dir`.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteFailure> {
    let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let target = dir.join(name);
    let written = File::create(&temp)
        .map_err(io_error("create", &temp))
        .and_then(|mut file| {
            file.write_all(bytes).map_err(io_error("write", &temp))?;
            file.sync_all().map_err(io_error("fsync", &temp))
        })
        .and_then(|()| fs::rename(&temp, &target).map_err(io_error("rename", &temp)));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(WriteFailure::NotWritten(error));
    }
    sync_dir(dir).map_err(WriteFailure::Unsynced)
}

/// Removes `.tmp-…` entries directly under `dir`.
fn remove_temporaries(dir: &Path, report: &mut RecoveryReport) -> Result<(), IndexError> {
    let entries = fs::read_dir(dir).map_err(io_error("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read directory", dir))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            remove_temporary(&entry.path(), report)?;
        }
    }
    Ok(())
}

fn remove_temporary(path: &Path, report: &mut RecoveryReport) -> Result<(), IndexError> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            report.n_temporary_removed += 1;
            tracing::info!(path = %path.display(), "removed temporary file left by an interrupted write");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("remove", path)(source)),
    }
}

fn read_version_floor(root: &Path, report: &mut RecoveryReport) -> Result<u64, IndexError> {
    let path = root.join("version-floor");
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io_error("read", &path)(source)),
    };
    match record::decode_version_floor(&bytes) {
        Ok(floor) => Ok(floor),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "version floor unreadable");
            report.version_floor_error = Some(reason);
            Ok(0)
        }
    }
}

fn report_unexpected(path: PathBuf, report: &mut RecoveryReport) {
    tracing::warn!(path = %path.display(), "name the tag store does not use; left alone");
    report.n_unexpected_paths += 1;
    if report.unexpected_paths.len() < REPORT_LISTED_MAX {
        report.unexpected_paths.push(path);
    }
}

/// Walks `repos/` at start-up: removes temporaries, checks every record, reports the rest.
/// Returns the largest version found on a readable record.
fn recover_repositories(repos_dir: &Path, report: &mut RecoveryReport) -> Result<u64, IndexError> {
    let mut max_version = 0;
    let mut pending = vec![(repos_dir.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, repository, depth)) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(io_error("read directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("read directory", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                remove_temporary(&path, report)?;
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && name == TAGS_DIR && depth > 0 {
                let n_tags = recover_tags(&path, &repository, report, &mut max_version)?;
                if n_tags > 0 {
                    report.n_repositories += 1;
                }
                continue;
            }
            if is_dir && name == MANIFESTS_DIR && depth > 0 {
                members::recover_manifests(&path, &repository, report)?;
                continue;
            }
            if is_dir && name == REFERRERS_DIR && depth > 0 {
                members::recover_referrers(&path, &repository, report)?;
                continue;
            }
            match child_repository(&repository, &name, depth) {
                Some(child) if is_dir => pending.push((path, child, depth + 1)),
                _ => report_unexpected(path, report),
            }
        }
    }
    Ok(max_version)
}

/// Checks every record in one `_tags` directory; returns how many are readable.
fn recover_tags(
    tags_dir: &Path,
    repository: &str,
    report: &mut RecoveryReport,
    max_version: &mut u64,
) -> Result<usize, IndexError> {
    let mut n_readable = 0;
    let entries = fs::read_dir(tags_dir).map_err(io_error("read directory", tags_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read directory", tags_dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            remove_temporary(&path, report)?;
            continue;
        }
        if validate_tag(&name).is_err() {
            report_unexpected(path, report);
            continue;
        }
        let checked = if entry.file_type().is_ok_and(|t| t.is_file()) {
            read_bounded(&path)
                .map_err(|error| format!("unreadable: {error}"))
                .and_then(|bytes| record::decode(&bytes, repository, &name))
        } else {
            Err("not a regular file".to_string())
        };
        match checked {
            Ok(record) => {
                n_readable += 1;
                report.n_tags += 1;
                *max_version = (*max_version).max(record.version);
                members::restore_membership(tags_dir, repository, &record, report)?;
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "corrupt tag record; not served");
                report.n_corrupt_records += 1;
                if report.corrupt_records.len() < REPORT_LISTED_MAX {
                    report.corrupt_records.push(CorruptRecord {
                        repository: repository.to_string(),
                        tag: name,
                        path,
                        reason,
                    });
                }
            }
        }
    }
    Ok(n_readable)
}

mod members;

pub use members::DeletedManifest;

#[cfg(test)]
mod tests;
