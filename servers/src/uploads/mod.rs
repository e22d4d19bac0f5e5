//! Blob upload sessions for the push API (the proxy's `POST/PATCH/PUT/DELETE
//! /v2/<name>/blobs/uploads/…`): storage and rules, no HTTP.
//!
//! An [`UploadStore`] owns a root directory and keeps every upload session under it: a
//! chunked upload is [`UploadStore::create`], any number of [`UploadStore::append`] (each
//! chunk must start where the upload ends, as the OCI distribution spec requires; the HTTP
//! layer answers a misplaced one with 416 and `Range: 0-(offset-1)`), then
//! [`UploadStore::finish`] with the digest the client named. A monolithic upload is
//! [`UploadStore::put_monolithic`]. Every digest is verified before anything leaves: a
//! finished upload is a [`CompletedBlob`], a file in `complete/` whose bytes hash to its
//! digest, which the caller hands on (to the origin ring) and then gives back with
//! [`UploadStore::release`].
//!
//! **Blocking.** Every method does blocking file I/O and reads the request body through a
//! blocking [`Read`]. The server calls it off the data plane (a blocking thread pool), never
//! on a shard's runtime. The store is `Send + Sync`: sessions are independent (one lock per
//! session, held for the length of one chunk; a short lock over the table of sessions), so
//! uploads to different sessions proceed in parallel. Two requests on one session run one
//! after the other; the second then usually fails its range check.
//!
//! # Layout under the root
//!
//! ```text
//! <root>/lock                   flock'd by the one UploadStore that owns the root
//! <root>/sessions/<id>/data     the bytes received so far; its length is the offset
//! <root>/sessions/<id>/meta     repository, creation and last-activity times (text)
//! <root>/complete/<name>        a verified blob awaiting hand-off
//! ```
//!
//! `<id>` and `<name>` are 128 random bits (from `/dev/urandom`) in lowercase hex. A
//! client-supplied id is used as a path only if it is exactly 32 lowercase hex characters.
//!
//! # Durability
//!
//! - A session directory is assembled under a temporary name (`sessions/.tmp-<id>`: `meta`
//!   and an empty `data`, both fsynced) and renamed into place, then `sessions/` is fsynced.
//! - A chunk is streamed into `data` at the offset, then `data` is fdatasynced, then `meta` is
//!   rewritten (temporary file, fsync, rename) with the new last activity, and only then is
//!   the chunk acknowledged. Any failure on the way (a short or overlong body, a failed read
//!   of the body, a full disk, a failed fsync) cuts `data` back to the previous offset: a
//!   session is always at the offset of its last acknowledged chunk. If even the cut fails,
//!   the session is removed (its state is unknown), and the original error is returned.
//! - After a crash, `data` may hold bytes of a chunk that was never acknowledged; the
//!   session's offset is then simply further on (a client asks for the status and resumes
//!   from there), and the digest check at the end catches any bytes the crash garbled.
//! - A removed session (cancelled, finished, expired, failed its digest) is first renamed to
//!   a temporary name and then deleted: a crash part-way through a deletion leaves the
//!   temporary name, which recovery deletes, never a half-deleted session. (The rename is not
//!   fsynced; a crash may bring back the whole session, which is a consistent state, or, after
//!   completion, a session without `data`, which recovery drops.)
//! - Completion renames `data` into `complete/` and fsyncs `complete/`; a monolithic upload
//!   is written as `complete/.tmp-<name>`, fdatasynced, verified and renamed.
//! - Start-up recovery ([`RecoveryReport`]) removes `complete/` leftovers, temporary names
//!   and anything it cannot vouch for, and keeps sessions whose `meta` parses.
//!
//! # Hashing
//!
//! A session keeps a SHA-256 hasher in memory, fed as chunks arrive (a chunk is hashed into a
//! copy that replaces the session's only once the chunk is committed), so finishing a
//! SHA-256 upload reads nothing back. Docker, skopeo and every common client push SHA-256
//! digests; a SHA-512 digest (known only at the final `PUT`) is checked by reading the data
//! once more at completion. After a restart a session's hasher is rebuilt by reading its data
//! on first use (at most `blob_bytes_max` bytes). A monolithic upload knows its digest up
//! front and is hashed with that algorithm while it streams.
//!
//! # Bounds
//!
//! [`UploadLimits`]: open sessions (plus monolithic uploads in flight), bytes per blob,
//! bytes per chunk, idle time. Memory per upload in flight is one [`COPY_BUFFER_BYTES`]
//! buffer and one hasher. Sessions hold no file descriptor between requests.

pub(crate) mod disk;
mod error;
mod names;
mod recovery;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use shoal_proto::Digest;

pub use disk::COPY_BUFFER_BYTES;
use disk::{ChunkBounds, DATA_FILE, Hasher, Meta, TEMP_PREFIX};
use error::IoContext as _;
pub use error::{QUOTE_LEN_MAX, UploadError};
pub use names::{ID_LEN, REPOSITORY_LEN_MAX, validate_repository};
pub use recovery::{
    DISCARDED_LISTED_MAX, DiscardReason, Discarded, RecoveredSession, RecoveryReport,
};

const SESSIONS_DIR: &str = "sessions";
const COMPLETE_DIR: &str = "complete";
const LOCK_FILE: &str = "lock";

/// The bounds of an [`UploadStore`]. Every one is enforced with a named [`UploadError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    /// Sessions open at once, counting monolithic uploads in flight
    /// ([`UploadError::TooManySessions`], 429). Each holds at most `blob_bytes_max` of disk,
    /// so `sessions_max * blob_bytes_max` bounds the disk the store can claim. Default 256.
    pub sessions_max: usize,
    /// Bytes in one blob ([`UploadError::BlobTooLarge`], 413). Default 16 GiB, above the
    /// largest image layers seen in practice.
    pub blob_bytes_max: u64,
    /// Bytes in one chunk (one `PATCH` body, or the body of the final `PUT`;
    /// [`UploadError::ChunkTooLarge`], 413). A monolithic upload is bounded by
    /// `blob_bytes_max` only. Default: `blob_bytes_max`, because Docker sends a whole layer
    /// as one `PATCH`. At most `blob_bytes_max`.
    pub chunk_bytes_max: u64,
    /// A session with no request for this long is gone ([`UploadError::UnknownSession`], 404),
    /// and [`UploadStore::expire_idle`] removes it. A chunk being streamed counts as
    /// activity for as long as it streams. Default one hour.
    pub idle_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        const BLOB_BYTES_MAX: u64 = 16 << 30;
        UploadLimits {
            sessions_max: 256,
            blob_bytes_max: BLOB_BYTES_MAX,
            chunk_bytes_max: BLOB_BYTES_MAX,
            idle_timeout: Duration::from_secs(60 * 60),
        }
    }
}

impl UploadLimits {
    /// The largest `blob_bytes_max` accepted (1 PiB): offsets plus a chunk never overflow.
    pub const BLOB_BYTES_MAX_MAX: u64 = 1 << 50;

    fn check(&self) -> Result<(), UploadError> {
        if self.sessions_max == 0 {
            return Err(UploadError::Limits("sessions_max must be at least 1"));
        }
        if self.blob_bytes_max == 0 || self.blob_bytes_max > Self::BLOB_BYTES_MAX_MAX {
            return Err(UploadError::Limits("blob_bytes_max must be in 1..=2^50"));
        }
        if self.chunk_bytes_max == 0 || self.chunk_bytes_max > self.blob_bytes_max {
            return Err(UploadError::Limits(
                "chunk_bytes_max must be in 1..=blob_bytes_max",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(UploadError::Limits("idle_timeout must be positive"));
        }
        Ok(())
    }
}

/// A session just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// 32 lowercase hex characters; goes into the `Location` URL.
    pub id: String,
    pub repo: String,
    /// Always 0 for a new session.
    pub offset: u64,
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub repo: String,
    /// Bytes received and acknowledged; the HTTP layer answers `Range: 0-(offset-1)`.
    pub offset: u64,
}

/// A verified blob in the store's `complete/` staging directory. The caller moves it on (to
/// the origin ring), then passes it to [`UploadStore::release`], which deletes the file if
/// it is still there. Start-up recovery removes any that were never released.
#[derive(Debug, PartialEq, Eq)]
pub struct CompletedBlob {
    /// The file; its bytes hash to `digest`.
    pub path: PathBuf,
    pub digest: Digest,
    /// Its length in bytes.
    pub len: u64,
}

/// No final chunk, for [`UploadStore::finish`]: `store.finish(id, &digest, NO_CHUNK)`.
pub const NO_CHUNK: Option<(Option<u64>, Option<u64>, io::Empty)> = None;

/// Blob upload sessions under one root directory. See the module documentation.
#[derive(Debug)]
pub struct UploadStore {
    sessions_dir: PathBuf,
    complete_dir: PathBuf,
    limits: UploadLimits,
    /// The open sessions and the slots reserved for ones being created and for monolithic
    /// uploads; held only for lookups and bookkeeping, never across I/O.
    table: Mutex<Table>,
    /// Holds the root's `flock` for as long as the store lives.
    _lock_file: fs::File,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<String, Arc<Session>>,
    /// Sessions being created and monolithic uploads in flight: they count against
    /// `sessions_max` without being in `sessions`.
    reserved: usize,
}

/// One session. The fields outside `state` never change, or are atomics that `status` and
/// `expire_idle` read without waiting for a chunk to finish streaming.
#[derive(Debug)]
struct Session {
    id: String,
    repo: String,
    dir: PathBuf,
    created_ms: u64,
    /// Bytes acknowledged. Written only with `state` locked.
    offset: AtomicU64,
    /// Unix milliseconds of the last request's start.
    last_activity_ms: AtomicU64,
    /// Locked for the whole of a request on this session.
    state: Mutex<SessionState>,
}

#[derive(Debug)]
struct SessionState {
    /// Set once the session is cancelled, finished or expired: a request that was waiting for
    /// the lock finds the session gone.
    removed: bool,
    /// SHA-256 of `data[..offset]`; `None` after a restart until first use.
    sha256: Option<Hasher>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent state behind (every field is
    // updated only after the I/O it records), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A slot counted against `sessions_max` until dropped.
struct Reservation<'a> {
    table: &'a Mutex<Table>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut table = lock(self.table);
        table.reserved = table.reserved.saturating_sub(1);
    }
}

impl UploadStore {
    /// Opens (creating if needed) the store at `root`, runs start-up recovery and takes the
    /// root's lock (a second store on the same root fails with [`UploadError::Locked`]).
    pub fn open(
        root: &Path,
        limits: UploadLimits,
    ) -> Result<(UploadStore, RecoveryReport), UploadError> {
        limits.check()?;
        fs::create_dir_all(root).context("create_dir", root)?;
        let lock_path = root.join(LOCK_FILE);
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context("open", &lock_path)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(UploadError::Locked {
                    root: root.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(UploadError::io("flock", &lock_path, error));
            }
        }
        let sessions_dir = root.join(SESSIONS_DIR);
        let complete_dir = root.join(COMPLETE_DIR);
        for dir in [&sessions_dir, &complete_dir] {
            fs::create_dir_all(dir).context("create_dir", dir)?;
        }

        let (loaded, report) =
            recovery::recover(&sessions_dir, &complete_dir, &limits, SystemTime::now())?;
        disk::sync_dir(&sessions_dir)?;
        disk::sync_dir(&complete_dir)?;
        let sessions = loaded
            .into_iter()
            .map(|loaded| {
                let session = Session {
                    dir: sessions_dir.join(&loaded.id),
                    id: loaded.id,
                    repo: loaded.repo,
                    created_ms: loaded.created_ms,
                    offset: AtomicU64::new(loaded.offset),
                    last_activity_ms: AtomicU64::new(loaded.last_activity_ms),
                    state: Mutex::new(SessionState {
                        removed: false,
                        sha256: None,
                    }),
                };
                (session.id.clone(), Arc::new(session))
            })
            .collect();
        let store = UploadStore {
            sessions_dir,
            complete_dir,
            limits,
            table: Mutex::new(Table {
                sessions,
                reserved: 0,
            }),
            _lock_file: lock_file,
        };
        Ok((store, report))
    }

    /// The limits the store was opened with.
    pub fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    /// Opens a chunked upload session for `repo` (`POST /v2/<repo>/blobs/uploads/`).
    pub fn create(&self, repo: &str) -> Result<UploadSession, UploadError> {
        validate_repository(repo)?;
        let _reservation = self.reserve()?;
        let id = names::random_id()?;
        let now_ms = disk::unix_ms(SystemTime::now());
        let meta = Meta {
            repo: repo.to_owned(),
            created_ms: now_ms,
            last_activity_ms: now_ms,
        };
        let temp = self.sessions_dir.join(format!("{TEMP_PREFIX}{id}"));
        let dir = self.sessions_dir.join(&id);
        let result = self.assemble_session_dir(&temp, &dir, &meta);
        if result.is_err() {
            let _ = disk::remove_all(&temp);
        }
        result?;

        let session = Session {
            id: id.clone(),
            repo: repo.to_owned(),
            dir,
            created_ms: now_ms,
            offset: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(now_ms),
            state: Mutex::new(SessionState {
                removed: false,
                sha256: Some(Hasher::Sha256(Default::default())),
            }),
        };
        lock(&self.table)
            .sessions
            .insert(id.clone(), Arc::new(session));
        Ok(UploadSession {
            id,
            repo: repo.to_owned(),
            offset: 0,
        })
    }

    fn assemble_session_dir(
        &self,
        temp: &Path,
        dir: &Path,
        meta: &Meta,
    ) -> Result<(), UploadError> {
        fs::create_dir(temp).context("create_dir", temp)?;
        disk::write_meta(temp, meta)?;
        let data = temp.join(DATA_FILE);
        fs::File::create_new(&data)
            .and_then(|file| file.sync_all())
            .context("create", &data)?;
        disk::sync_dir(temp)?;
        fs::rename(temp, dir).context("rename", temp)?;
        disk::sync_dir(&self.sessions_dir)
    }

    /// Where session `id` stands (`GET /v2/<repo>/blobs/uploads/<id>`). Does not wait for a
    /// chunk being streamed: it reports the offset before that chunk.
    pub fn status(&self, id: &str) -> Result<UploadStatus, UploadError> {
        let session = self.session(id)?;
        // A session whose lock is held is busy with a request, hence not idle.
        let busy = session.state.try_lock().is_err();
        let idle = disk::is_idle(
            session.last_activity_ms.load(Ordering::Acquire),
            self.limits.idle_timeout,
            SystemTime::now(),
        );
        if idle && !busy {
            return Err(UploadError::UnknownSession { id: id.to_owned() });
        }
        Ok(UploadStatus {
            repo: session.repo.clone(),
            offset: session.offset.load(Ordering::Acquire),
        })
    }

    /// Appends a chunk (`PATCH /v2/<repo>/blobs/uploads/<id>`) and returns the new offset.
    ///
    /// `start` is the chunk's first byte (the `Content-Range` start) if the client sent one;
    /// it must equal the current offset, else [`UploadError::RangeInvalid`] and nothing
    /// changes. `len` is the declared length (`Content-Length`), if any: the body must be
    /// exactly that long. The body streams to disk in [`COPY_BUFFER_BYTES`] steps. On any
    /// error the session stays at its previous offset.
    pub fn append(
        &self,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        mut body: impl Read,
    ) -> Result<u64, UploadError> {
        self.with_session(id, |session, state| {
            self.append_locked(session, state, start, len, &mut body)
        })
    }

    /// Completes a chunked upload (`PUT /v2/<repo>/blobs/uploads/<id>?digest=…`): appends the
    /// final chunk if there is one (`(start, len, body)` as for [`UploadStore::append`]; pass
    /// [`NO_CHUNK`] for none), then checks the whole upload against `expected`.
    ///
    /// A failed final chunk leaves the session as it was. A digest mismatch removes the
    /// session and its data ([`UploadError::DigestInvalid`]). On success the session is gone
    /// and its bytes are the returned [`CompletedBlob`].
    pub fn finish(
        &self,
        id: &str,
        expected: &Digest,
        last: Option<(Option<u64>, Option<u64>, impl Read)>,
    ) -> Result<CompletedBlob, UploadError> {
        self.with_session(id, |session, state| {
            if let Some((start, len, mut body)) = last {
                self.append_locked(session, state, start, len, &mut body)?;
            }
            let len = session.offset.load(Ordering::Acquire);
            let data = session.dir.join(DATA_FILE);
            let actual = match expected {
                Digest::Sha256(_) => self.session_sha256(session, state)?.clone().finish(),
                Digest::Sha512(_) => {
                    let mut hasher = Hasher::like(expected);
                    disk::hash_file_prefix(&data, len, &mut hasher)?;
                    hasher.finish()
                }
            };
            if actual != *expected {
                if let Err(error) = self.remove_session(session, state) {
                    tracing::warn!(id = %session.id, %error, "cannot remove upload after a digest mismatch");
                }
                return Err(UploadError::DigestInvalid {
                    expected: Box::new(*expected),
                    actual: Box::new(actual),
                });
            }
            let path = self.complete_dir.join(names::random_id()?);
            fs::rename(&data, &path).context("rename", &data)?;
            disk::sync_dir(&self.complete_dir)?;
            if let Err(error) = self.remove_session(session, state) {
                // The data is out of the session, so recovery would drop the rest anyway.
                tracing::warn!(id = %session.id, %error, "cannot remove a finished upload's directory");
                state.removed = true;
                lock(&self.table).sessions.remove(&session.id);
            }
            Ok(CompletedBlob {
                path,
                digest: *expected,
                len,
            })
        })
    }

    /// Cancels a session (`DELETE /v2/<repo>/blobs/uploads/<id>`) and deletes its data.
    pub fn cancel(&self, id: &str) -> Result<(), UploadError> {
        self.with_session(id, |session, state| self.remove_session(session, state))
    }

    /// Removes every session idle for [`UploadLimits::idle_timeout`] at `now` (a session
    /// streaming a chunk is never idle) and returns how many went. The server calls it
    /// periodically; sessions also expire on their own when next used. A session whose
    /// directory cannot be removed is kept (and logged) for the next round.
    pub fn expire_idle(&self, now: SystemTime) -> usize {
        let candidates: Vec<Arc<Session>> = lock(&self.table)
            .sessions
            .values()
            .filter(|session| self.is_idle(session, now))
            .cloned()
            .collect();
        let mut n_expired = 0;
        for session in candidates {
            // Busy means not idle; a session that was busy is looked at next time.
            let Ok(mut state) = session.state.try_lock() else {
                continue;
            };
            if state.removed || !self.is_idle(&session, now) {
                continue;
            }
            match self.remove_session(&session, &mut state) {
                Ok(()) => n_expired += 1,
                Err(error) => {
                    tracing::warn!(id = %session.id, %error, "cannot remove an expired upload")
                }
            }
        }
        n_expired
    }

    /// A monolithic upload (`POST /v2/<repo>/blobs/uploads/?digest=…` with the body, or a
    /// `PUT` that carries the whole blob): streamed into `complete/` and hashed with
    /// `expected`'s algorithm on the way, bounded by `blob_bytes_max` (and by `len` if
    /// declared). Counts against `sessions_max` while in flight. Nothing is left behind on
    /// error.
    pub fn put_monolithic(
        &self,
        repo: &str,
        expected: &Digest,
        len: Option<u64>,
        mut body: impl Read,
    ) -> Result<CompletedBlob, UploadError> {
        validate_repository(repo)?;
        let _reservation = self.reserve()?;
        let name = names::random_id()?;
        let temp = self.complete_dir.join(format!("{TEMP_PREFIX}{name}"));
        let path = self.complete_dir.join(&name);
        let result = self.write_monolithic(&temp, &path, expected, len, &mut body);
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        let len = result?;
        Ok(CompletedBlob {
            path,
            digest: *expected,
            len,
        })
    }

    fn write_monolithic(
        &self,
        temp: &Path,
        path: &Path,
        expected: &Digest,
        len: Option<u64>,
        body: &mut impl Read,
    ) -> Result<u64, UploadError> {
        let file = fs::File::create_new(temp).context("create", temp)?;
        let mut hasher = Hasher::like(expected);
        let bounds = ChunkBounds {
            declared: len,
            chunk_bytes_max: self.limits.blob_bytes_max,
            blob_bytes_max: self.limits.blob_bytes_max,
        };
        let written = disk::copy_chunk(&file, temp, 0, bounds, &mut hasher, body)?;
        let actual = hasher.finish();
        if actual != *expected {
            return Err(UploadError::DigestInvalid {
                expected: Box::new(*expected),
                actual: Box::new(actual),
            });
        }
        file.sync_data().context("fdatasync", temp)?;
        drop(file);
        fs::rename(temp, path).context("rename", temp)?;
        disk::sync_dir(&self.complete_dir)?;
        Ok(written)
    }

    /// Deletes a completed blob's file once the caller has moved it on; a file already moved
    /// away (renamed) is fine.
    pub fn release(&self, completed: CompletedBlob) -> Result<(), UploadError> {
        let path = &completed.path;
        let ours = path.parent() == Some(self.complete_dir.as_path())
            && path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(names::is_valid_id);
        if !ours {
            return Err(UploadError::io(
                "release",
                path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a completed blob of this upload store",
                ),
            ));
        }
        match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(UploadError::io("remove", path, error))
            }
            _ => Ok(()),
        }
    }

    /// Number of open sessions (not counting monolithic uploads).
    pub fn n_sessions(&self) -> usize {
        lock(&self.table).sessions.len()
    }

    // ---- internals ------------------------------------------------------------------------

    /// Takes a slot against `sessions_max`, for a session being created or a monolithic
    /// upload.
    fn reserve(&self) -> Result<Reservation<'_>, UploadError> {
        let mut table = lock(&self.table);
        if table.sessions.len() + table.reserved >= self.limits.sessions_max {
            return Err(UploadError::TooManySessions {
                sessions_max: self.limits.sessions_max,
            });
        }
        table.reserved += 1;
        Ok(Reservation { table: &self.table })
    }

    /// The session named `id`, without locking it.
    fn session(&self, id: &str) -> Result<Arc<Session>, UploadError> {
        names::check_id(id)?;
        lock(&self.table)
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| UploadError::UnknownSession { id: id.to_owned() })
    }

    /// Runs `f` with session `id` locked, live and not idle; an idle one is removed and
    /// reported unknown. Marks the session active first.
    fn with_session<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Session, &mut SessionState) -> Result<R, UploadError>,
    ) -> Result<R, UploadError> {
        let session = self.session(id)?;
        let mut state = lock(&session.state);
        let unknown = || UploadError::UnknownSession { id: id.to_owned() };
        if state.removed {
            return Err(unknown());
        }
        let now = SystemTime::now();
        if self.is_idle(&session, now) {
            if let Err(error) = self.remove_session(&session, &mut state) {
                tracing::warn!(id = %session.id, %error, "cannot remove an expired upload");
            }
            return Err(unknown());
        }
        session
            .last_activity_ms
            .store(disk::unix_ms(now), Ordering::Release);
        f(&session, &mut state)
    }

    fn is_idle(&self, session: &Session, now: SystemTime) -> bool {
        disk::is_idle(
            session.last_activity_ms.load(Ordering::Acquire),
            self.limits.idle_timeout,
            now,
        )
    }

    /// The session's SHA-256 state, rebuilt from its data if this process has not seen it.
    fn session_sha256<'s>(
        &self,
        session: &Session,
        state: &'s mut SessionState,
    ) -> Result<&'s Hasher, UploadError> {
        if state.sha256.is_none() {
            let mut hasher = Hasher::Sha256(Default::default());
            let offset = session.offset.load(Ordering::Acquire);
            disk::hash_file_prefix(&session.dir.join(DATA_FILE), offset, &mut hasher)?;
            state.sha256 = Some(hasher);
        }
        state
            .sha256
            .as_ref()
            .ok_or_else(|| UploadError::UnknownSession {
                id: session.id.clone(),
            })
    }

    /// One chunk into a locked session; see [`UploadStore::append`].
    fn append_locked(
        &self,
        session: &Session,
        state: &mut SessionState,
        start: Option<u64>,
        len: Option<u64>,
        body: &mut impl Read,
    ) -> Result<u64, UploadError> {
        let offset = session.offset.load(Ordering::Acquire);
        if let Some(start) = start
            && start != offset
        {
            return Err(UploadError::RangeInvalid { offset, start });
        }
        let mut hasher = self.session_sha256(session, state)?.clone();
        let path = session.dir.join(DATA_FILE);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .context("open", &path)?;
        let bounds = ChunkBounds {
            declared: len,
            chunk_bytes_max: self.limits.chunk_bytes_max,
            blob_bytes_max: self.limits.blob_bytes_max,
        };
        let result =
            disk::copy_chunk(&file, &path, offset, bounds, &mut hasher, body).and_then(|written| {
                file.sync_data().context("fdatasync", &path)?;
                let meta = Meta {
                    repo: session.repo.clone(),
                    created_ms: session.created_ms,
                    last_activity_ms: disk::unix_ms(SystemTime::now()),
                };
                disk::write_meta(&session.dir, &meta)?;
                Ok(written)
            });
        match result {
            Ok(written) => {
                let new_offset = offset + written;
                state.sha256 = Some(hasher);
                session.offset.store(new_offset, Ordering::Release);
                session
                    .last_activity_ms
                    .store(disk::unix_ms(SystemTime::now()), Ordering::Release);
                Ok(new_offset)
            }
            Err(error) => {
                if let Err(cut_error) = file.set_len(offset).and_then(|()| file.sync_data()) {
                    tracing::warn!(
                        id = %session.id, %error, %cut_error,
                        "cannot cut an upload back after a failed chunk; removing it"
                    );
                    let _ = self.remove_session(session, state);
                }
                Err(error)
            }
        }
    }

    /// Removes a locked session: out of the table, renamed to a temporary name (so a crash
    /// cannot bring it back), deleted. If the rename fails the session stays as it was.
    fn remove_session(
        &self,
        session: &Session,
        state: &mut SessionState,
    ) -> Result<(), UploadError> {
        let doomed = self
            .sessions_dir
            .join(format!("{TEMP_PREFIX}removed-{}", session.id));
        fs::rename(&session.dir, &doomed).context("rename", &session.dir)?;
        state.removed = true;
        lock(&self.table).sessions.remove(&session.id);
        disk::remove_all(&doomed).context("remove", &doomed)
    }
}
