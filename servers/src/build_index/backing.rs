//! The build-index over storage backends: tag writes go through to the backend
//! ([`TagSync`], `sync.rs`), tags that miss locally are read back from it, and tag listings
//! merge the backend's tags with the local ones. No HTTP here (`server.rs` maps the errors).
//!
//! **Read-back.** A tag GET that misses the local store, for a repository some `[[backend]]`
//! serves, reads `tags/<repo>/<tag>` from that backend (the manifest digest as text), then
//! the manifest itself, `blobs/<alg>/<hex>` ([`Key::blob`]: the object the origin wrote back,
//! or the upstream's manifest for a registry backend), checked against the digest and parsed
//! for its media type (and subject, for a referrer). The manifest's membership of the
//! repository is stored first, then the tag (a compare-and-set "must not exist"), so the
//! manifest is served from that repository by digest too. Concurrent misses for one tag
//! share one backend read ([`Flights`]). A tag with a change not yet written through is
//! never read back (the local state is the truth: a deleted tag stays deleted), and a value
//! read while a local write happened is not stored ([`TagSync::store_read_back`]).
//!
//! **Read-only upstreams (pull-through).** A repository whose backend is read-only (an
//! upstream registry, an HTTP mirror) is someone else's, and its tags move. A tag read back
//! from it is stored as *learned* ([`TagRecord::from_upstream`]) and served from the local
//! store for [`BackingConfig::upstream_tag_ttl`] after it was learned or last confirmed;
//! after that a GET resolves it upstream again (concurrent GETs share one resolution): a new
//! digest replaces the local record (compare-and-set on the version that was read), the
//! same digest confirms it for another TTL, a tag the upstream no longer has is removed
//! locally, and an upstream that cannot be reached (or answers garbage) leaves the cached
//! record served, confirmed for another TTL so that every GET does not wait on it. Tags
//! *pushed* to such a repository are local: not written anywhere, never re-resolved, they
//! shadow the upstream's tag of the same name; deleting one uncovers the upstream's again.
//! Times are wall-clock ([`Clock`], injectable for tests): learned times persist across
//! restarts; a clock that went backwards makes a tag stale, never fresh for longer.
//!
//! **Listing.** `list_tags` merges the local page with the backend's (`tags/<repo>/…`,
//! only direct children: `tags/<repo>/<x>/<y>` is a tag of `<repo>/<x>`), sorted and
//! paginated the same way, so the tags survive the loss of the build-index's disk. A backend
//! that cannot be listed leaves the local page (logged): listing is not worth an outage.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use shoal_proto::Digest;

use super::store::{IndexError, TagPage, TagStore};
use super::sync::{TagSync, TagSyncConfig};
use super::{MANIFEST_LEN_MAX, ManifestRecord, PAGE_LEN_MAX, TagRecord, referenced_digests};
use crate::backend::dedup::Flights;
use crate::backend::{
    BackendError, Backends, ErrorKind, Key, LIST_PAGE_MAX, PageRequest, parse_tag_object,
    read_small,
};

/// Largest tag object read (a digest as text, with room for whitespace).
pub const TAG_OBJECT_BYTES_MAX: usize = 1024;

/// Tags read back at once (more concurrent misses for other tags wait for one of them).
pub const READ_BACKS_MAX: usize = 256;

/// Times a read-back is tried when local writes keep racing it; then the local state is
/// answered.
const READ_BACK_ATTEMPTS_MAX: usize = 3;

/// Backend listing pages read for one page of tags: a repository's prefix also lists the
/// tags of the repositories below it, which are skipped.
const LIST_PAGES_PER_REQUEST_MAX: usize = 16;

/// Confirmation times of learned tags kept in memory; past it the oldest are dropped (a
/// dropped tag falls back to its record's learned time: re-resolved sooner, never later).
pub const CONFIRMED_MAX: usize = 100_000;

/// [`BackingConfig::upstream_tag_ttl`] by default.
pub const UPSTREAM_TAG_TTL_DEFAULT: Duration = Duration::from_secs(60);

/// The settings of a backed build-index.
#[derive(Debug, Clone)]
pub struct BackingConfig {
    pub sync: TagSyncConfig,
    /// How long a tag learned from a read-only upstream is served before it is resolved
    /// upstream again.
    pub upstream_tag_ttl: Duration,
}

impl Default for BackingConfig {
    fn default() -> BackingConfig {
        BackingConfig {
            sync: TagSyncConfig::default(),
            upstream_tag_ttl: UPSTREAM_TAG_TTL_DEFAULT,
        }
    }
}

/// The wall clock, injectable (tests run a fake one).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }

    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Whether a learned tag last confirmed at `confirmed` is still served without asking the
/// upstream at `now`: younger than `ttl`. A `confirmed` in the future (the clock went
/// backwards) is stale.
pub fn upstream_tag_fresh(confirmed: SystemTime, now: SystemTime, ttl: Duration) -> bool {
    now.duration_since(confirmed).is_ok_and(|age| age < ttl)
}

/// What a backed tag read can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackedError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The tag store with its storage backends. `Send + Sync`.
#[derive(Debug)]
pub struct Backing {
    store: Arc<TagStore>,
    backends: Arc<Backends>,
    sync: Arc<TagSync>,
    flights: Flights<Option<TagRecord>>,
    upstream_tag_ttl: Duration,
    clock: Clock,
    /// When each learned tag was last learned or confirmed upstream (at most
    /// [`CONFIRMED_MAX`]); a tag not here (after a restart) counts from its record's
    /// `updated_at`.
    confirmed: Mutex<HashMap<(String, String), SystemTime>>,
}

impl Backing {
    /// Opens the write-through journal under `root` (blocking).
    pub fn open(
        root: &std::path::Path,
        store: Arc<TagStore>,
        backends: Arc<Backends>,
        config: BackingConfig,
        clock: Clock,
    ) -> Result<Backing, IndexError> {
        let sync = TagSync::open(root, Arc::clone(&backends), config.sync)?;
        Ok(Backing {
            store,
            backends,
            sync: Arc::new(sync),
            flights: Flights::new(READ_BACKS_MAX),
            upstream_tag_ttl: config.upstream_tag_ttl,
            clock,
            confirmed: Mutex::new(HashMap::new()),
        })
    }

    pub fn sync(&self) -> &Arc<TagSync> {
        &self.sync
    }

    pub fn store(&self) -> &Arc<TagStore> {
        &self.store
    }

    /// Starts the write-through driver on the current compio runtime.
    pub fn spawn_driver(&self) {
        let (sync, store) = (Arc::clone(&self.sync), Arc::clone(&self.store));
        compio::runtime::spawn(sync.run(store)).detach();
    }

    /// The tag, from the local store, else read back from the repository's backend; a
    /// learned tag past its TTL is resolved upstream again first.
    pub async fn get(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, BackedError> {
        let local = self.local(repo, tag).await?;
        let Ok(backend) = self.backends.for_namespace(repo) else {
            return Ok(local);
        };
        let flight = format!("{repo}\n{tag}");
        match local {
            Some(record) if !record.from_upstream || self.fresh(repo, tag, &record) => {
                Ok(Some(record))
            }
            Some(record) => Ok(self
                .flights
                .run(&flight, || self.refresh(repo, tag, record.clone()))
                .await?),
            None if self.sync.is_dirty(repo, tag) => Ok(None),
            None => {
                let learned = backend.read_only();
                Ok(self
                    .flights
                    .run(&flight, || self.read_back(repo, tag, learned))
                    .await?)
            }
        }
    }

    /// Whether a learned tag may be served without asking the upstream.
    fn fresh(&self, repo: &str, tag: &str, record: &TagRecord) -> bool {
        let key = (repo.to_owned(), tag.to_owned());
        let confirmed = self
            .confirmed
            .lock()
            .ok()
            .and_then(|confirmed| confirmed.get(&key).copied())
            .unwrap_or(record.updated_at);
        upstream_tag_fresh(confirmed, self.clock.now(), self.upstream_tag_ttl)
    }

    /// Records that `repo:tag` was confirmed upstream now (`None`: forgets it).
    fn confirm(&self, repo: &str, tag: &str, at: Option<SystemTime>) {
        let Ok(mut confirmed) = self.confirmed.lock() else {
            return;
        };
        let key = (repo.to_owned(), tag.to_owned());
        let Some(at) = at else {
            confirmed.remove(&key);
            return;
        };
        if confirmed.len() >= CONFIRMED_MAX && !confirmed.contains_key(&key) {
            let (now, ttl) = (self.clock.now(), self.upstream_tag_ttl);
            confirmed.retain(|_, at| upstream_tag_fresh(*at, now, ttl));
            if confirmed.len() >= CONFIRMED_MAX {
                return; // falls back to the record's learned time
            }
        }
        confirmed.insert(key, at);
    }

    /// Resolves a learned tag upstream again; what to serve.
    async fn refresh(
        &self,
        repo: &str,
        tag: &str,
        cached: TagRecord,
    ) -> Result<Option<TagRecord>, BackendError> {
        let unavailable = |e: IndexError| {
            BackendError::unavailable(format!("storing {repo}:{tag} resolved upstream: {e}"))
        };
        let now = self.clock.now();
        match self.read_remote(repo, tag).await {
            Err(error) => {
                tracing::warn!(repo, tag, %error, "upstream tag not re-resolved; the cached one is served");
                self.confirm(repo, tag, Some(now));
                Ok(Some(cached))
            }
            Ok(Some((digest, _))) if digest == cached.digest => {
                self.confirm(repo, tag, Some(now));
                Ok(Some(cached))
            }
            Ok(Some((digest, record))) => {
                let (r, t) = (repo.to_owned(), tag.to_owned());
                let (sync, store) = (Arc::clone(&self.sync), Arc::clone(&self.store));
                let media_type = record.media_type.clone();
                let version = cached.version;
                let stored = blocking(move || {
                    sync.write(|_| {
                        store.put_manifest(&r, &record)?;
                        store.put_learned(&r, &t, digest, &media_type, Some(version))
                    })
                })
                .await;
                match stored {
                    Ok(record) => {
                        self.confirm(repo, tag, Some(now));
                        tracing::info!(repo, tag, from = %cached.digest, to = %digest, "upstream tag moved");
                        Ok(Some(record))
                    }
                    // Pushed or moved here meanwhile: the local state wins.
                    Err(IndexError::Conflict { .. }) => {
                        self.local(repo, tag).await.map_err(unavailable)
                    }
                    Err(error) => Err(unavailable(error)),
                }
            }
            Ok(None) => {
                let (r, t) = (repo.to_owned(), tag.to_owned());
                let (sync, store) = (Arc::clone(&self.sync), Arc::clone(&self.store));
                let version = cached.version;
                blocking(move || sync.write(|_| store.delete_version(&r, &t, version)))
                    .await
                    .map_err(unavailable)?;
                self.confirm(repo, tag, None);
                tracing::info!(repo, tag, "upstream tag gone; forgotten here");
                self.local(repo, tag).await.map_err(unavailable)
            }
        }
    }

    /// A page of `repo`'s tags: the local ones and the backend's, merged.
    pub async fn list_tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<TagPage, BackedError> {
        let page_len = n.unwrap_or(PAGE_LEN_MAX).min(PAGE_LEN_MAX);
        let (r, l, store) = (
            repo.to_owned(),
            last.map(str::to_owned),
            Arc::clone(&self.store),
        );
        let local = blocking(move || match store.list_tags(&r, l.as_deref(), n) {
            Ok(page) => Ok(Some(page)),
            Err(IndexError::RepositoryUnknown { .. }) => Ok(None),
            Err(error) => Err(error),
        })
        .await?;
        let remote = if self.backends.for_namespace(repo).is_ok() {
            match self.backend_tags(repo, last, page_len).await {
                Ok(remote) => Some(remote),
                Err(error) => {
                    tracing::warn!(repo, %error, "the backend's tags could not be listed; local tags only");
                    None
                }
            }
        } else {
            None
        };
        match (local, remote) {
            (None, None) => Err(IndexError::RepositoryUnknown {
                repository: repo.to_owned(),
            }
            .into()),
            (None, Some((tags, more))) if tags.is_empty() && !more => {
                Err(IndexError::RepositoryUnknown {
                    repository: repo.to_owned(),
                }
                .into())
            }
            (local, remote) => {
                let (local_tags, local_more) = local
                    .map(|page| {
                        let more = page.next.is_some();
                        (page.tags, more)
                    })
                    .unwrap_or_default();
                let (remote_tags, remote_more) = remote.unwrap_or_default();
                Ok(merge_pages(
                    local_tags,
                    local_more,
                    remote_tags,
                    remote_more,
                    page_len,
                ))
            }
        }
    }

    async fn local(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, IndexError> {
        let (r, t, store) = (repo.to_owned(), tag.to_owned(), Arc::clone(&self.store));
        blocking(move || store.get(&r, &t)).await
    }

    /// Reads `repo:tag` from the backend and stores it locally; `None` if the backend does
    /// not have it.
    async fn read_back(
        &self,
        repo: &str,
        tag: &str,
        learned: bool,
    ) -> Result<Option<TagRecord>, BackendError> {
        let unavailable = |e: IndexError| {
            BackendError::unavailable(format!("storing {repo}:{tag} read from the backend: {e}"))
        };
        for _ in 0..READ_BACK_ATTEMPTS_MAX {
            let epoch = self.sync.epoch();
            let now = self.clock.now();
            let Some((digest, record)) = self.read_remote(repo, tag).await? else {
                return Ok(None);
            };
            let (r, t) = (repo.to_owned(), tag.to_owned());
            let (sync, store) = (Arc::clone(&self.sync), Arc::clone(&self.store));
            let media_type = record.media_type.clone();
            let stored = blocking(move || {
                sync.store_read_back(epoch, &r, &t, || {
                    store.put_manifest(&r, &record)?;
                    if learned {
                        store.put_learned(&r, &t, digest, &media_type, Some(0))
                    } else {
                        store.put(&r, &t, digest, &media_type, Some(0))
                    }
                })
            })
            .await;
            match stored {
                Ok(Some(record)) => {
                    if learned {
                        self.confirm(repo, tag, Some(now));
                    }
                    tracing::info!(repo, tag, %digest, "tag read back from the storage backend");
                    return Ok(Some(record));
                }
                // A local write raced the read: the local state wins.
                Ok(None) | Err(IndexError::Conflict { .. }) => {}
                Err(error) => return Err(unavailable(error)),
            }
            if let Some(record) = self.local(repo, tag).await.map_err(unavailable)? {
                return Ok(Some(record));
            }
            if self.sync.is_dirty(repo, tag) {
                return Ok(None);
            }
        }
        self.local(repo, tag).await.map_err(unavailable)
    }

    /// The digest the backend's tag object names and the record of its manifest; `None`
    /// if the backend has no such tag.
    async fn read_remote(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<(Digest, ManifestRecord)>, BackendError> {
        let key = Key::tag(repo, tag)?;
        let object = match read_small(&self.backends, &key, TAG_OBJECT_BYTES_MAX).await {
            Ok(object) => object,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        let digest = parse_tag_object(&object)
            .map_err(|e| BackendError::new(e.kind, format!("{key}: {e}")))?;
        let manifest_key = Key::blob(repo, &digest)?;
        let manifest = read_small(&self.backends, &manifest_key, MANIFEST_LEN_MAX)
            .await
            .map_err(|e| {
                let kind = if e.is_not_found() {
                    ErrorKind::Unavailable // written back later than the tag, perhaps
                } else {
                    e.kind
                };
                BackendError::new(kind, format!("{key} names {digest}, whose manifest: {e}"))
            })?;
        if !digest_matches(&digest, &manifest) {
            return Err(BackendError::invalid(format!(
                "{manifest_key}: the bytes do not hash to {digest}"
            )));
        }
        let references = referenced_digests(&manifest, "")
            .map_err(|e| BackendError::invalid(format!("{manifest_key} is not a manifest: {e}")))?;
        let record = ManifestRecord::of_manifest(digest, manifest.len(), &references);
        record
            .validate()
            .map_err(|reason| BackendError::invalid(format!("{manifest_key}: {reason}")))?;
        Ok(Some((digest, record)))
    }

    /// The backend's tags of `repo` after `last`, at most `page_len`, and whether more may
    /// follow.
    async fn backend_tags(
        &self,
        repo: &str,
        last: Option<&str>,
        page_len: usize,
    ) -> Result<(Vec<String>, bool), BackendError> {
        let prefix = format!("tags/{repo}");
        let mut after = last.map(|last| format!("{prefix}/{last}"));
        let mut tags = Vec::new();
        for _ in 0..LIST_PAGES_PER_REQUEST_MAX {
            let page = self
                .backends
                .list(
                    repo,
                    &prefix,
                    PageRequest {
                        after: after.as_deref(),
                        limit: LIST_PAGE_MAX,
                    },
                )
                .await?;
            for entry in &page.entries {
                let Some(name) = entry
                    .path
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_prefix('/'))
                else {
                    continue;
                };
                // A deeper path is a tag of a repository below this one.
                if !name.contains('/') && last.is_none_or(|last| name > last) {
                    tags.push(name.to_owned());
                }
            }
            tags.sort();
            tags.dedup();
            if tags.len() > page_len {
                tags.truncate(page_len);
                return Ok((tags, true));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok((tags, false)),
            }
        }
        // Bounded: the rest comes with the next page.
        Ok((tags, true))
    }
}

/// Merges two sorted pages of tags (each after the same `last`) into one of at most
/// `page_len`; `next` is set when either side may have more, or the merge was cut.
pub(crate) fn merge_pages(
    mut local: Vec<String>,
    local_more: bool,
    remote: Vec<String>,
    remote_more: bool,
    page_len: usize,
) -> TagPage {
    local.extend(remote);
    local.sort();
    local.dedup();
    let cut = local.len() > page_len;
    local.truncate(page_len);
    let next = if cut || local_more || remote_more {
        local.last().cloned()
    } else {
        None
    };
    TagPage { tags: local, next }
}

/// Whether `bytes` hash to `digest` (with its algorithm).
fn digest_matches(digest: &Digest, bytes: &[u8]) -> bool {
    let computed = match digest.algorithm() {
        "sha512" => Digest::sha512_of(bytes),
        _ => Digest::sha256_of(bytes),
    };
    computed == *digest
}

/// Runs blocking store work on compio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    compio::runtime::spawn_blocking(f)
        .await
        .map_err(|_| IndexError::Journal {
            reason: "a tag store task panicked".to_owned(),
        })?
}

#[cfg(test)]
mod tests;
