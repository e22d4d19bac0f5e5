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
//! **Listing.** `list_tags` merges the local page with the backend's (`tags/<repo>/…`,
//! only direct children: `tags/<repo>/<x>/<y>` is a tag of `<repo>/<x>`), sorted and
//! paginated the same way, so the tags survive the loss of the build-index's disk. A backend
//! that cannot be listed leaves the local page (logged): listing is not worth an outage.

use std::sync::Arc;

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

/// The settings of a backed build-index.
#[derive(Debug, Clone, Default)]
pub struct BackingConfig {
    pub sync: TagSyncConfig,
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
}

impl Backing {
    /// Opens the write-through journal under `root` (blocking).
    pub fn open(
        root: &std::path::Path,
        store: Arc<TagStore>,
        backends: Arc<Backends>,
        config: BackingConfig,
    ) -> Result<Backing, IndexError> {
        let sync = TagSync::open(root, Arc::clone(&backends), config.sync)?;
        Ok(Backing {
            store,
            backends,
            sync: Arc::new(sync),
            flights: Flights::new(READ_BACKS_MAX),
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

    /// The tag, from the local store, else read back from the repository's backend.
    pub async fn get(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, BackedError> {
        if let Some(record) = self.local(repo, tag).await? {
            return Ok(Some(record));
        }
        if self.backends.for_namespace(repo).is_err() || self.sync.is_dirty(repo, tag) {
            return Ok(None);
        }
        let flight = format!("{repo}\n{tag}");
        Ok(self
            .flights
            .run(&flight, || self.read_back(repo, tag))
            .await?)
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
    async fn read_back(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, BackendError> {
        let unavailable = |e: IndexError| {
            BackendError::unavailable(format!("storing {repo}:{tag} read from the backend: {e}"))
        };
        for _ in 0..READ_BACK_ATTEMPTS_MAX {
            let epoch = self.sync.epoch();
            let Some((digest, record)) = self.read_remote(repo, tag).await? else {
                return Ok(None);
            };
            let (r, t) = (repo.to_owned(), tag.to_owned());
            let (sync, store) = (Arc::clone(&self.sync), Arc::clone(&self.store));
            let media_type = record.media_type.clone();
            let stored = blocking(move || {
                sync.store_read_back(epoch, &r, &t, || {
                    store.put_manifest(&r, &record)?;
                    store.put(&r, &t, digest, &media_type, Some(0))
                })
            })
            .await;
            match stored {
                Ok(Some(record)) => {
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
