//! Tag write-through: every tag write to a repository routed to a writable storage backend
//! reaches that backend, across backend outages and restarts.
//!
//! **What is journaled is "this tag changed", not the value.** [`TagSync::write`] runs a
//! local tag write under one lock, after marking each tag it changes *dirty* in a journal
//! (one file per tag under `<root>/tag-sync/`, written to a temporary, fsynced, renamed,
//! directory fsynced) — so a tag write that was answered has its mark on disk. The driver
//! ([`TagSync::run`], one compio task) delivers a dirty tag by reading the tag's *current*
//! local record: present, its digest is put as the tag object ([`Key::tag`],
//! [`tag_object`]); absent, the object is deleted. So:
//!
//! - a tag moved several times while the backend is down is delivered once, with its
//!   latest value (the marks coalesce: one file per tag);
//! - a DELETE is never undone by an older PUT: there is no older PUT to replay, only the
//!   local state, which says "absent";
//! - a mark whose write then failed (a conflict, a full disk) delivers the unchanged local
//!   state: harmless. A mark that cannot be written fails the write before anything changed.
//!
//! A tag changed again while its delivery was in flight is delivered again: every mark bumps
//! the tag's generation, and a delivery only clears the mark of the generation it read
//! (checked under the same lock the marks are written under, so the file is never removed
//! from under a newer mark). A delivery the backend may get over
//! ([`BackendError::is_retryable`]) is retried with exponential back-off from
//! [`TagSyncConfig::backoff_min`] doubling to [`TagSyncConfig::backoff_max`], for as long as it
//! takes; any other failure (a read-only backend, an invalid key) moves the mark aside as
//! `<name>.failed`, logged, kept for an operator. Bounded: at most
//! [`TagSyncConfig::entries_max`] dirty tags; past it a new mark is refused (the write is
//! answered 503 and changes nothing).
//!
//! Which tags are marked: those whose repository's first matching `[[backend]]` is writable
//! ([`Backend::read_only`](crate::backend::Backend::read_only) false). Tags of repositories
//! served by a read-only backend (an upstream registry, an HTTP mirror) or by none stay
//! local.
//!
//! The journal lock also orders read-backs ([`TagSync::store_read_back`]): a tag read from
//! the backend is stored locally only if no tag write happened since the read began (the
//! write *epoch* is unchanged) and the tag is not dirty, so a value read from the backend
//! before a local PUT or DELETE never overwrites it.
//!
//! The queue's rules are [`Queue`]'s, a plain state machine that takes the time as an
//! argument (its tests run on a fake clock); [`TagSync`] adds the files and the driver.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::TagRecord;
use super::store::{IndexError, TagStore};
use super::{validate_repository, validate_tag};
use crate::backend::{BackendError, Backends, ByteStream, Key, PutSource, tag_object};

/// Directory under the build-index's root that holds the journal.
pub const SYNC_DIR: &str = "tag-sync";

/// Suffix of a dirty tag's journal file.
const DIRTY_SUFFIX: &str = ".dirty";

/// The journal's bound and the delivery back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSyncConfig {
    /// Dirty tags at once; a new mark past it is refused.
    pub entries_max: usize,
    /// First retry delay after a failed delivery.
    pub backoff_min: Duration,
    /// Longest retry delay (the back-off doubles up to it).
    pub backoff_max: Duration,
}

impl Default for TagSyncConfig {
    fn default() -> TagSyncConfig {
        TagSyncConfig {
            entries_max: 100_000,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A tag: (repository, tag), both valid names.
pub type TagKey = (String, String);

/// A dirty tag's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirty {
    /// Bumped by every mark; a delivery clears only the generation it read.
    generation: u64,
    /// Failed deliveries in a row.
    failures: u32,
    /// When the next delivery may start.
    due: Instant,
}

/// What a delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend holds the tag's local state as of the delivered generation.
    Delivered,
    /// It failed in a way the backend may get over: try again later.
    Retry,
    /// It can never work: give up on this mark.
    GiveUp,
}

/// What to do with the journal file once a delivery settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The mark is cleared: remove its file.
    Remove,
    /// The mark stays (a newer generation to deliver, or a retry later).
    Keep,
    /// The mark is given up: move its file aside.
    SetAside,
}

/// The dirty tags and when each is due: the queue's rules, no I/O, time as an argument.
#[derive(Debug)]
pub struct Queue {
    dirty: BTreeMap<TagKey, Dirty>,
    config: TagSyncConfig,
    /// Tag writes so far (every [`TagSync::write`]): a read-back stores its result only if
    /// this did not move while it read.
    epoch: u64,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Queue {
    pub fn new(config: TagSyncConfig) -> Queue {
        Queue {
            dirty: BTreeMap::new(),
            config,
            epoch: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.dirty.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    pub fn contains(&self, key: &TagKey) -> bool {
        self.dirty.contains_key(key)
    }

    /// Whether marking `key` needs room (it is not dirty yet) and there is none.
    pub fn check_room(&self, key: &TagKey) -> Result<(), Full> {
        if self.dirty.contains_key(key) || self.dirty.len() < self.config.entries_max {
            Ok(())
        } else {
            Err(Full)
        }
    }

    /// Marks `key` dirty; `true` if it was not (its journal file must be written first).
    /// A tag already dirty keeps its schedule (a backend that is down is not hammered):
    /// its next delivery carries the latest value anyway.
    pub fn mark(&mut self, key: &TagKey, now: Instant) -> Result<bool, Full> {
        self.check_room(key)?;
        match self.dirty.get_mut(key) {
            Some(dirty) => {
                dirty.generation += 1;
                Ok(false)
            }
            None => {
                self.dirty.insert(
                    key.clone(),
                    Dirty {
                        generation: 1,
                        failures: 0,
                        due: now,
                    },
                );
                Ok(true)
            }
        }
    }

    /// The dirty tag due first (ties: the smaller key), its generation and when it is due.
    pub fn next(&self) -> Option<(TagKey, u64, Instant)> {
        self.dirty
            .iter()
            .min_by_key(|(key, dirty)| (dirty.due, *key))
            .map(|(key, dirty)| (key.clone(), dirty.generation, dirty.due))
    }

    /// Records how the delivery of `key` at `generation` went.
    pub fn settle(
        &mut self,
        key: &TagKey,
        generation: u64,
        outcome: Outcome,
        now: Instant,
    ) -> Settled {
        let backoff = |failures| backoff(&self.config, failures);
        let Some(dirty) = self.dirty.get_mut(key) else {
            return Settled::Keep; // not dirty (cannot happen: one driver delivers)
        };
        let newer = dirty.generation != generation;
        match outcome {
            Outcome::Delivered | Outcome::GiveUp if newer => {
                // Changed while it was delivered: deliver the newer state now.
                dirty.failures = 0;
                dirty.due = now;
                Settled::Keep
            }
            Outcome::Delivered => {
                self.dirty.remove(key);
                Settled::Remove
            }
            Outcome::GiveUp => {
                self.dirty.remove(key);
                Settled::SetAside
            }
            Outcome::Retry => {
                dirty.failures = dirty.failures.saturating_add(1);
                dirty.due = now + backoff(dirty.failures);
                Settled::Keep
            }
        }
    }

    /// The generation of a dirty tag.
    pub fn generation(&self, key: &TagKey) -> Option<u64> {
        self.dirty.get(key).map(|dirty| dirty.generation)
    }

    /// Forgets a mark (one whose write changed nothing after all).
    pub fn unmark(&mut self, key: &TagKey) {
        self.dirty.remove(key);
    }

    /// Counts a tag write (see [`Queue::epoch`]).
    fn bump_epoch(&mut self) {
        self.epoch += 1;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The delay after `failures` failed deliveries: `backoff_min · 2^(failures-1)`, at most
/// `backoff_max`.
fn backoff(config: &TagSyncConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    config
        .backoff_min
        .saturating_mul(1 << doublings)
        .min(config.backoff_max)
}

/// A journal file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    repository: String,
    tag: String,
}

/// The journal file name of a tag: the SHA-256 of `repository\ntag` (names hold `/`, and a
/// file per tag makes marks coalesce).
fn file_stem(key: &TagKey) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(key.0.as_bytes());
    hasher.update(b"\n");
    hasher.update(key.1.as_bytes());
    shoal_proto::types::hex(&hasher.finalize())
}

/// The persistent write-through queue of tags. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct TagSync {
    dir: PathBuf,
    backends: Arc<Backends>,
    /// Held by every tag write (blocking threads only), across its mark and its store
    /// call, and by a settle that removes a file: orders marks, writes and file removals.
    write_lock: Mutex<()>,
    /// The queue; held briefly (also by the driver on the compio thread).
    queue: Mutex<Queue>,
    /// Fired when a tag is marked (wakes the driver) and when a mark settles.
    changed: Event,
}

/// What [`TagSync::write`]'s operation marks tags with.
#[derive(Debug)]
pub struct Marks<'a> {
    sync: &'a TagSync,
    /// Tags this write marked that were not dirty before: unmarked again if the write
    /// changes nothing after all.
    fresh: Vec<TagKey>,
}

impl Marks<'_> {
    /// Marks `repo:tag` dirty, durably, if its repository is routed to a writable backend.
    /// Call before the store call that changes the tag.
    pub fn mark(&mut self, repo: &str, tag: &str) -> Result<(), IndexError> {
        if !self.sync.writes_through(repo) {
            return Ok(());
        }
        let key = (repo.to_owned(), tag.to_owned());
        let fresh = {
            let queue = self.sync.lock_queue()?;
            let max = queue.config.entries_max;
            queue.check_room(&key).map_err(|Full| full(max))?;
            !queue.contains(&key)
        };
        if fresh {
            write_mark(&self.sync.dir, &key).map_err(|e| IndexError::Journal {
                reason: format!("marking {repo}:{tag} in {}: {e}", self.sync.dir.display()),
            })?;
        }
        // Under the write lock nothing else marked or settled meanwhile.
        {
            let mut queue = self.sync.lock_queue()?;
            let max = queue.config.entries_max;
            queue.mark(&key, Instant::now()).map_err(|Full| full(max))?;
        }
        if fresh {
            self.fresh.push(key);
        }
        Ok(())
    }
}

impl TagSync {
    /// Opens (creating) the journal under `root` and reads back the dirty tags (removing
    /// `.tmp-*` leftovers; a file it cannot read is renamed `<name>.corrupt`). Blocking.
    pub fn open(
        root: &Path,
        backends: Arc<Backends>,
        config: TagSyncConfig,
    ) -> Result<TagSync, IndexError> {
        let dir = root.join(SYNC_DIR);
        let journal = |op: &str, e: io::Error| IndexError::Journal {
            reason: format!("{op} {}: {e}", dir.display()),
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| journal("create", e))?;
            sync_dir(root).map_err(|e| journal("fsync the parent of", e))?;
        }
        let mut queue = Queue::new(config);
        let now = Instant::now();
        for entry in std::fs::read_dir(&dir).map_err(|e| journal("read", e))? {
            let entry = entry.map_err(|e| journal("read", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(DIRTY_SUFFIX) else {
                continue; // `.failed`, `.corrupt`: kept for an operator
            };
            match read_mark(&path, stem) {
                Some(key) => {
                    // Past the bound only if the bound was lowered: keep them all.
                    queue.dirty.insert(
                        key,
                        Dirty {
                            generation: 1,
                            failures: 0,
                            due: now,
                        },
                    );
                }
                None => {
                    tracing::error!(path = %path.display(), "unreadable tag-sync entry set aside");
                    let _ = std::fs::rename(&path, dir.join(format!("{stem}.corrupt")));
                }
            }
        }
        if !queue.is_empty() {
            tracing::info!(tags = queue.len(), dir = %dir.display(), "tag write-through resumed");
        }
        Ok(TagSync {
            dir,
            backends,
            write_lock: Mutex::new(()),
            queue: Mutex::new(queue),
            changed: Event::new(),
        })
    }

    /// Whether tags of `repo` are written through (its backend is writable).
    pub fn writes_through(&self, repo: &str) -> bool {
        self.backends
            .for_namespace(repo)
            .is_ok_and(|backend| !backend.read_only())
    }

    /// Dirty tags (not yet confirmed by their backend).
    pub fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `repo:tag` has a change not yet delivered.
    pub fn is_dirty(&self, repo: &str, tag: &str) -> bool {
        self.queue
            .lock()
            .map(|q| q.contains(&(repo.to_owned(), tag.to_owned())))
            .unwrap_or(true)
    }

    /// The current write epoch (see [`TagSync::store_read_back`]).
    pub fn epoch(&self) -> u64 {
        self.queue.lock().map(|q| q.epoch()).unwrap_or(u64::MAX)
    }

    /// Runs a local tag write: `op` marks every tag it changes ([`Marks::mark`]) before the
    /// store call that changes it, all under the journal's write lock. Blocking.
    pub fn write<T>(
        &self,
        op: impl FnOnce(&mut Marks<'_>) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let _guard = self.lock_writes();
        self.lock_queue()?.bump_epoch();
        let mut marks = Marks {
            sync: self,
            fresh: Vec::new(),
        };
        let result = op(&mut marks);
        if let Err(error) = &result
            && error.changed_nothing()
        {
            // A refused write (a conflict, a bad media type) must not deliver the unchanged
            // local state: after a lost disk that would delete the backend's copy.
            for key in marks.fresh.drain(..) {
                self.unmark(&key);
            }
        }
        if !marks.fresh.is_empty() || result.is_ok() {
            self.changed.notify(usize::MAX);
        }
        result
    }

    /// Clears a mark this write made (under the write lock): its file, then its entry. A
    /// file that cannot be removed keeps the entry (the mark stays, as on disk).
    fn unmark(&self, key: &TagKey) {
        let path = self.dir.join(format!("{}{DIRTY_SUFFIX}", file_stem(key)));
        match std::fs::remove_file(&path).and_then(|()| sync_dir(&self.dir)) {
            Ok(()) => {
                if let Ok(mut queue) = self.queue.lock() {
                    queue.unmark(key);
                }
            }
            Err(error) => {
                tracing::warn!(repo = key.0, tag = key.1, %error, "tag-sync mark not cleared")
            }
        }
    }

    /// A dirty tag's generation and its local record, read together under the write lock
    /// (so never between a write's mark and its store call); `None` if it is not dirty.
    /// Blocking.
    fn snapshot(
        &self,
        store: &TagStore,
        key: &TagKey,
    ) -> Option<(u64, Result<Option<TagRecord>, IndexError>)> {
        let _guard = self.lock_writes();
        let generation = self.queue.lock().ok()?.generation(key)?;
        Some((generation, store.get(&key.0, &key.1)))
    }

    /// Runs `op` (storing a tag read from the backend) only if no tag write happened since
    /// `epoch` was read and `repo:tag` is not dirty; `None` otherwise. Blocking.
    pub fn store_read_back<T>(
        &self,
        epoch: u64,
        repo: &str,
        tag: &str,
        op: impl FnOnce() -> Result<T, IndexError>,
    ) -> Result<Option<T>, IndexError> {
        let _guard = self.lock_writes();
        {
            let queue = self.lock_queue()?;
            if queue.epoch() != epoch || queue.contains(&(repo.to_owned(), tag.to_owned())) {
                return Ok(None);
            }
        }
        op().map(Some)
    }

    /// Waits until no tag is dirty or `wait_max` passed; whether none is.
    pub async fn wait_empty(&self, wait_max: Duration) -> bool {
        let deadline = Instant::now() + wait_max;
        loop {
            let listener = self.changed.listen();
            if self.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = compio::time::timeout(left, listener).await;
        }
    }

    /// The driver: delivers dirty tags, one at a time, until the future is dropped. Run it
    /// as one compio task.
    pub async fn run(self: Arc<Self>, store: Arc<TagStore>) {
        loop {
            let listener = self.changed.listen();
            let next = self.queue.lock().ok().and_then(|q| q.next());
            let Some((key, _, due)) = next else {
                listener.await;
                continue;
            };
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                // Woken early by a new mark or a settle.
                let _ = compio::time::timeout(wait, listener).await;
                continue;
            }
            drop(listener);
            let (sync, s, k) = (Arc::clone(&self), Arc::clone(&store), key.clone());
            let Ok(snapshot) = compio::runtime::spawn_blocking(move || sync.snapshot(&s, &k)).await
            else {
                tracing::error!("a tag-sync snapshot task panicked");
                compio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let Some((generation, local)) = snapshot else {
                continue; // unmarked meanwhile
            };
            let outcome = self.deliver(&key, local).await;
            let sync = Arc::clone(&self);
            let settled =
                compio::runtime::spawn_blocking(move || sync.settle(&key, generation, outcome))
                    .await;
            if settled.is_err() {
                tracing::error!("a tag-sync settle task panicked");
            }
            self.changed.notify(usize::MAX);
        }
    }

    /// Puts the tag's local state (`local`, read at the delivered generation) to its
    /// backend.
    async fn deliver(
        &self,
        (repo, tag): &TagKey,
        local: Result<Option<TagRecord>, IndexError>,
    ) -> Outcome {
        let key = match Key::tag(repo, tag) {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(repo, tag, %error, "tag cannot be written through");
                return Outcome::GiveUp;
            }
        };
        let result: Result<(), BackendError> = match local {
            Ok(Some(record)) => {
                let object = tag_object(&record.digest);
                let len = object.len() as u64;
                let source = PutSource::Stream(ByteStream::from_bytes(object));
                self.backends.put(&key, source, len).await
            }
            Ok(None) => self.backends.delete(&key).await,
            Err(IndexError::Corrupt { .. }) => {
                // Its value is unknown; the next put of the tag marks it again.
                tracing::error!(repo, tag, "tag record corrupt: not written through");
                return Outcome::GiveUp;
            }
            Err(error) => {
                tracing::warn!(repo, tag, %error, "tag unreadable; write-through retries");
                return Outcome::Retry;
            }
        };
        match result {
            Ok(()) => {
                tracing::debug!(%key, "tag written through");
                Outcome::Delivered
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(%key, %error, "tag write-through failed; will retry");
                Outcome::Retry
            }
            Err(error) => {
                tracing::error!(%key, %error, "tag write-through failed for good");
                Outcome::GiveUp
            }
        }
    }

    /// Settles a delivery and removes or sets aside its file (blocking).
    fn settle(&self, key: &TagKey, generation: u64, outcome: Outcome) {
        let _guard = self.lock_writes();
        let settled = match self.queue.lock() {
            Ok(mut queue) => queue.settle(key, generation, outcome, Instant::now()),
            Err(_) => return,
        };
        let path = self.dir.join(format!("{}{DIRTY_SUFFIX}", file_stem(key)));
        let done = match settled {
            Settled::Keep => return,
            Settled::Remove => std::fs::remove_file(&path).and_then(|()| sync_dir(&self.dir)),
            Settled::SetAside => {
                let aside = self.dir.join(format!("{}.failed", file_stem(key)));
                std::fs::rename(&path, aside).and_then(|()| sync_dir(&self.dir))
            }
        };
        if let Err(error) = done {
            // A leftover mark only delivers the tag again after a restart.
            tracing::warn!(repo = key.0, tag = key.1, %error, "tag-sync entry not removed");
        }
    }

    /// The write lock guards no data (only the order of marks, store calls and file
    /// removals), so a panic while it was held leaves nothing to distrust: taken over.
    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_queue(&self) -> Result<MutexGuard<'_, Queue>, IndexError> {
        self.queue.lock().map_err(|_| IndexError::Poisoned)
    }
}

/// The error of a mark past the journal's bound of `max` tags.
fn full(max: usize) -> IndexError {
    IndexError::Journal {
        reason: format!(
            "{max} tags are waiting for their storage backend already (the bound); try \
             again once it is reachable"
        ),
    }
}

fn write_mark(dir: &Path, key: &TagKey) -> io::Result<()> {
    let stem = file_stem(key);
    let tmp = dir.join(format!(".tmp-{stem}"));
    let bytes = serde_json::to_vec(&Mark {
        repository: key.0.clone(),
        tag: key.1.clone(),
    })
    .map_err(io::Error::other)?;
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{stem}{DIRTY_SUFFIX}")))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A journal file's tag, if the file is whole and named for it.
fn read_mark(path: &Path, stem: &str) -> Option<TagKey> {
    let bytes = std::fs::read(path).ok()?;
    let mark: Mark = serde_json::from_slice(&bytes).ok()?;
    validate_repository(&mark.repository).ok()?;
    validate_tag(&mark.tag).ok()?;
    let key = (mark.repository, mark.tag);
    (file_stem(&key) == stem).then_some(key)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
