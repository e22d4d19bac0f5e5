//! The piece store: content-addressed blobs on disk, downloads in progress that survive a
//! restart, and eviction.
//!
//! Nothing here ever holds a whole blob in memory: pieces go straight from the caller's buffer
//! to the file with positioned writes, reads fill a caller's piece-sized buffer, and whole-blob
//! hashing streams through a fixed 1 MiB buffer. Blobs of 100 GB and more are ordinary.
//!
//! # Layout under the root
//!
//! ```text
//! <root>/lock                                 flock'd by the one Store that owns the root
//! <root>/blobs/<algorithm>/<xx>/<hex>          a complete blob: exactly its bytes
//! <root>/blobs/<algorithm>/<xx>/<hex>.metainfo its canonical metainfo (proto's encoding)
//! <root>/downloads/<algorithm>-<hex>/data      the blob being downloaded, preallocated
//! <root>/downloads/<algorithm>-<hex>/metainfo  canonical metainfo, written once, fsynced
//! <root>/downloads/<algorithm>-<hex>/pieces    persisted piece bitfield (see below)
//! ```
//!
//! `<xx>` is the first two hex digits of `<hex>`. Only `sha256` and `sha512` digests exist
//! (proto's [`Digest`] validates the hex), so no name can escape the root; the path builders
//! still assert that every component is a plain name.
//!
//! Anything written and then renamed into place first has a temporary name starting with
//! `.tmp-` in the same directory: a new download directory is assembled under a temporary name
//! and renamed whole, a blob's metainfo sidecar is written under a temporary name and renamed.
//! A complete blob is one whose file *and* sidecar exist; the sidecar gives its length (so a
//! wrong-sized file is detected at start-up) and lets a seeder serve the blob's swarm.
//!
//! The `pieces` file is the wire form of proto's [`shoal_proto::Bitfield`]: `ceil(n/8)`
//! bytes, bit `i` is the most significant bit first of byte `i / 8`, spare bits zero.
//!
//! # Durability: a bit on disk always means durable, verified data
//!
//! [`Download::write_piece`] takes a piece whose SHA-256 the caller has checked, and:
//! 1. writes it at its offset in `data` (compio positioned write);
//! 2. `fdatasync`s `data`;
//! 3. sets the piece's bit in memory and `pwrite`s the byte holding it into `pieces`;
//! 4. `fdatasync`s `pieces`, and only then returns `Ok`.
//!
//! So after a crash at any point a bit set on disk names data that reached the disk, and a
//! piece whose bit did not make it is simply fetched again. Step 2 before step 3 is the whole
//! invariant. A failed fsync poisons the download ([`StoreError::Poisoned`]): after a failed
//! fsync Linux may have dropped the dirty pages, so nothing unsynced can be trusted; the bits
//! already on disk remain true.
//!
//! **Batching (group commit).** The two fsyncs are shared between every piece written
//! concurrently through the same [`Download`] handle: a write whose data is in the page cache
//! joins the next commit; one task at a time runs a commit (steps 2–4) for every piece waiting
//! at its start, and the others wait for it. There is no timer and no piece-count threshold: a
//! lone writer pays two fsyncs per piece (≥ 1 MiB, so the cost is bounded relative to the
//! data), and many concurrent writers — the normal case, with requests pipelined on several
//! connections — share them. Nothing waits for a batch to fill, so no latency is added.
//!
//! Measured with `perf/src/bin/store_write_bench.rs` (512 MiB blob, 1 MiB pieces, io_uring, the
//! 2-core development machine, ext4 on a virtual disk; noisy, orders of magnitude): one writer
//! 10 ms per piece (≈ 100 MiB/s: two journal commits per piece, the data fsync converting
//! preallocated extents), 4 writers ≈ 200 MiB/s, 16 writers ≈ 1 GB/s; on tmpfs 3.6–5 GB/s
//! whatever the concurrency. So the engine should keep several piece writes in flight per
//! shard, which its pipelined requests do anyway.
//!
//! # Shards
//!
//! A [`Store`] is `Send + Sync` and cheap to clone: one per process, shared by every shard.
//! compio handles are not `Send`, so a [`Download`] (and a [`BlobFile`]) belongs to the
//! runtime that opened it. To let several shards write one blob — each the pieces of the
//! stripes it owns — send a [`DownloadHandle`] (`Send + Sync`) and call
//! [`DownloadHandle::open`] on each shard: it opens that shard's own file descriptors and its
//! own group commit, over state shared with the other shards.
//!
//! The piece bitfield is one file for the whole blob, whatever the stripe width. Writing its
//! bytes is serialised by the download's mutex: step 3 sets the bits and `pwrite`s the
//! affected bytes (a page-cache write of a few bytes, microseconds) while holding it, so the
//! last write of any byte always carries every bit set so far, even when two shards' stripes
//! share a byte (stripes of a width that is not a multiple of 8). The fsyncs happen outside
//! the lock. (The alternative, one bitfield file per stripe, would need the one-shard-per-
//! stripe rule to hold for correctness; this way it only matters for speed.)
//!
//! # Streaming a blob while it downloads
//!
//! [`Download::wait_piece`] resolves once a piece is stored (its bit set in memory, step 3
//! above: after the data fsync), woken by any shard's commit; [`Download::fail`] ends a
//! download for good and wakes every waiter with the error. [`BlobStream`] builds on them: it
//! reads a byte range in order, from a [`BlobFile`] or from a [`Download`], never handing out
//! a byte of a piece that is not stored, and it keeps the blob pinned while it lives.
//!
//! # Start-up, eviction
//!
//! [`Store::open`] removes anything it cannot vouch for (the rules are on [`RecoveryReport`],
//! which says what it removed) and keeps every download it can resume. [`Store::evict`]
//! removes complete blobs by idle time, by age and by disk watermarks; never a blob that is
//! pinned (an open [`BlobFile`], or any handle of a [`Download`]) and never a download in
//! progress.
//!
//! # Blocking calls
//!
//! Data I/O and fsyncs go through compio. `fallocate`, recursive removal and loading an
//! existing download directory (up to 32 MiB of metainfo) run on compio's blocking pool.
//! Short metadata calls (opening the bitfield file, a few-byte `pwrite`, `statvfs`) are made
//! directly. [`Store::open`] scans the directories with blocking calls: it runs once, before
//! the store serves anything.

mod blob;
mod download;
mod error;
mod evict;
mod layout;
mod recovery;
mod stream;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use shoal_proto::Digest;
use shoal_proto::metainfo::Metainfo;

pub use blob::BlobFile;
pub use download::{Download, DownloadHandle};
pub use error::StoreError;
pub use evict::{EvictReason, EvictedBlob, EvictionPlan, EvictionReport};
pub use recovery::{
    DISCARDED_LISTED_MAX, DiscardReason, Discarded, RecoveryReport, ResumableDownload,
};
pub use stream::BlobStream;
pub use sys::DiskUsage;

use download::DownloadShared;
use error::IoContext;
use layout::Layout;

/// Store tunables. Defaults (in [`StoreConfig::default`]) suit an agent's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Evict a complete blob nobody opened for this long. `None`: never for idleness.
    pub evict_idle_after: Option<Duration>,
    /// Evict a complete blob this long after it completed, however busy. `None`: never for
    /// age.
    pub evict_age_max: Option<Duration>,
    /// When the filesystem is fuller than this fraction, eviction removes least recently used
    /// blobs until it is at most [`StoreConfig::disk_low_watermark_fraction`] full.
    pub disk_high_watermark_fraction: f64,
    /// Where watermark eviction stops; at most the high watermark.
    pub disk_low_watermark_fraction: f64,
    /// At start-up, re-hash every piece a resumable download marks present and clear the bits
    /// that fail. Costs a read of everything downloaded so far.
    pub verify_on_start: bool,
    /// Before a download becomes a blob, hash the whole file and check the blob's digest,
    /// unless its metainfo's pieces prove the digest (`Metainfo::pieces_prove_digest`: a
    /// chained, version-2 metainfo). Every piece matched the metainfo already; this catches a
    /// version-1 metainfo whose piece hashes do not describe the digest it names. Costs one
    /// read and one hash of the blob, on the blocking pool.
    pub verify_digest_on_complete: bool,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            evict_idle_after: Some(Duration::from_secs(24 * 3600)),
            evict_age_max: None,
            disk_high_watermark_fraction: 0.85,
            disk_low_watermark_fraction: 0.75,
            verify_on_start: false,
            verify_digest_on_complete: true,
        }
    }
}

impl StoreConfig {
    /// Checks the watermarks: `0 < low <= high <= 1`.
    pub fn validate(&self) -> Result<(), StoreError> {
        let low = self.disk_low_watermark_fraction;
        let high = self.disk_high_watermark_fraction;
        if !(low > 0.0 && low <= 1.0) {
            return Err(StoreError::Config(
                "disk_low_watermark_fraction must be in (0, 1]",
            ));
        }
        if !(high > 0.0 && high <= 1.0) {
            return Err(StoreError::Config(
                "disk_high_watermark_fraction must be in (0, 1]",
            ));
        }
        if low > high {
            return Err(StoreError::Config(
                "disk_low_watermark_fraction must not exceed disk_high_watermark_fraction",
            ));
        }
        Ok(())
    }
}

/// The piece store of one root directory. Cheap to clone, `Send + Sync`: share one between
/// every shard of the process. Its async methods run on whichever compio runtime awaits them.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    layout: Layout,
    config: StoreConfig,
    /// Every in-memory index. Held only for short, non-blocking sections, never across an
    /// await.
    state: Mutex<StoreState>,
    /// Holds the root's `flock` for as long as anything of the store lives.
    _lock_file: fs::File,
}

#[derive(Debug, Default)]
struct StoreState {
    /// Every complete blob, by digest.
    blobs: HashMap<Digest, BlobEntry>,
    /// Readers and downloads of each digest; eviction skips a digest present here.
    pins: HashMap<Digest, u32>,
    /// Downloads this process has begun.
    downloads: HashMap<Digest, DownloadSlot>,
}

/// What the store knows about a complete blob.
#[derive(Debug, Clone)]
struct BlobEntry {
    len: u64,
    /// What removing it frees (`st_blocks * 512`).
    allocated_bytes: u64,
    /// When it became complete (the sidecar's mtime after a restart).
    completed_at: SystemTime,
    /// Last `open_blob` (or completion); kept in memory only.
    last_access: SystemTime,
    /// Eviction has chosen it and is removing the files: it can no longer be opened.
    evicting: bool,
}

#[derive(Debug)]
enum DownloadSlot {
    /// `begin_download` is creating or loading the directory.
    Starting,
    /// A live download; dead once every handle is gone.
    Active(Weak<DownloadShared>),
}

/// Keeps a digest pinned: eviction never removes a pinned blob. Released on drop.
#[derive(Debug)]
pub(crate) struct Pin {
    store: Arc<StoreInner>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = lock(&self.store.state);
        match state.pins.get_mut(&self.digest) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                state.pins.remove(&self.digest);
            }
            None => debug_assert!(false, "pin of {} released twice", self.digest),
        }
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves data that is still consistent
/// for our uses (every critical section is a few assignments), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StoreInner {
    /// Pins `digest`; the caller holds the state lock.
    fn pin_locked(self: &Arc<Self>, state: &mut StoreState, digest: Digest) -> Pin {
        *state.pins.entry(digest).or_insert(0) += 1;
        Pin {
            store: Arc::clone(self),
            digest,
        }
    }
}

/// Removes the `Starting` slot of a download whose `begin_download` did not finish (error or
/// cancelled future).
struct StartingClaim<'a> {
    store: &'a Arc<StoreInner>,
    digest: Digest,
    armed: bool,
}

impl Drop for StartingClaim<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = lock(&self.store.state);
            if matches!(
                state.downloads.get(&self.digest),
                Some(DownloadSlot::Starting)
            ) {
                state.downloads.remove(&self.digest);
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`, runs start-up recovery, and reports
    /// what it kept and what it discarded. Must run inside a compio runtime.
    ///
    /// Fails with [`StoreError::Locked`] when another `Store` (in any process) has the root.
    pub async fn open(
        root: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<(Store, RecoveryReport), StoreError> {
        config.validate()?;
        let layout = Layout::new(root.as_ref().to_path_buf());
        for dir in [
            layout.root().to_path_buf(),
            layout.blobs_dir(),
            layout.downloads_dir(),
        ] {
            fs::create_dir_all(&dir).context("create directory", &dir)?;
        }
        let lock_path = layout.lock_file();
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context("open", &lock_path)?;
        if let Err(error) = sys::lock_exclusive(&lock_file) {
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StoreError::Locked {
                    root: layout.root().to_path_buf(),
                });
            }
            return Err(StoreError::io("flock", lock_path, error));
        }

        let (blobs, report) = recovery::recover(&layout, &config).await?;
        let state = StoreState {
            blobs,
            ..StoreState::default()
        };
        let store = Store {
            inner: Arc::new(StoreInner {
                layout,
                config,
                state: Mutex::new(state),
                _lock_file: lock_file,
            }),
        };
        Ok((store, report))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Where the complete blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.layout.blob_path(digest)
    }

    /// Whether `digest` is complete and not being evicted.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        let state = lock(&self.inner.state);
        state.blobs.get(digest).is_some_and(|entry| !entry.evicting)
    }

    /// The length of the complete blob `digest`; `None` if it is not complete (or is being
    /// evicted). Touches no file.
    pub fn blob_len(&self, digest: &Digest) -> Option<u64> {
        let state = lock(&self.inner.state);
        state
            .blobs
            .get(digest)
            .filter(|entry| !entry.evicting)
            .map(|entry| entry.len)
    }

    /// Digests of the complete blobs, in no particular order.
    pub fn blobs(&self) -> Vec<Digest> {
        let state = lock(&self.inner.state);
        state
            .blobs
            .iter()
            .filter(|(_, entry)| !entry.evicting)
            .map(|(digest, _)| *digest)
            .collect()
    }

    /// Starts, or resumes, downloading the blob `metainfo` describes.
    ///
    /// - If the blob is complete: [`StoreError::AlreadyComplete`].
    /// - If this process has a live download of it with the same info hash: another handle
    ///   to it, on the current runtime; with a different info hash:
    ///   [`StoreError::DownloadConflict`].
    /// - If `downloads/` holds it with the same metainfo: it is resumed
    ///   ([`Download::bitfield`] says which pieces are already stored). With a different or
    ///   unreadable metainfo, the old directory is discarded and the download starts fresh.
    /// - Otherwise a new directory is made, with `data` preallocated to the blob's length. A
    ///   filesystem that cannot hold it gives [`StoreError::NoSpace`] and leaves nothing
    ///   behind (evicting, then retrying, is the caller's choice).
    pub async fn begin_download(&self, metainfo: &Metainfo) -> Result<Download, StoreError> {
        let digest = metainfo.digest();
        let existing = {
            let mut state = lock(&self.inner.state);
            if let Some(entry) = state.blobs.get(&digest) {
                if entry.evicting {
                    return Err(StoreError::Busy {
                        digest: Box::new(digest),
                        what: "being evicted",
                    });
                }
                return Err(StoreError::AlreadyComplete {
                    digest: Box::new(digest),
                });
            }
            let live = match state.downloads.get(&digest) {
                Some(DownloadSlot::Starting) => {
                    return Err(StoreError::Busy {
                        digest: Box::new(digest),
                        what: "download being started",
                    });
                }
                Some(DownloadSlot::Active(weak)) => weak.upgrade(),
                None => None,
            };
            if live.is_none() {
                state.downloads.insert(digest, DownloadSlot::Starting);
            }
            live
        };
        if let Some(shared) = existing {
            if shared.metainfo().info_hash() != metainfo.info_hash() {
                return Err(StoreError::DownloadConflict {
                    digest: Box::new(digest),
                    active: shared.metainfo().info_hash(),
                    requested: metainfo.info_hash(),
                });
            }
            return DownloadHandle::from_shared(shared).open().await;
        }
        let mut claim = StartingClaim {
            store: &self.inner,
            digest,
            armed: true,
        };
        let pin = {
            let mut state = lock(&self.inner.state);
            self.inner.pin_locked(&mut state, digest)
        };

        let bits = download::prepare_dir(&self.inner.layout, metainfo).await?;
        let shared = DownloadShared::new(self.clone(), metainfo.clone(), bits, pin)?;
        let shared = Arc::new(shared);
        {
            let mut state = lock(&self.inner.state);
            state
                .downloads
                .insert(digest, DownloadSlot::Active(Arc::downgrade(&shared)));
        }
        claim.armed = false;
        DownloadHandle::from_shared(shared).open().await
    }

    /// Opens the complete blob `digest` for reading, pinning it against eviction until the
    /// [`BlobFile`] is dropped, and records the access. `None` if it is not complete (or is
    /// being evicted).
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobFile>, StoreError> {
        let (pin, len) = {
            let mut state = lock(&self.inner.state);
            let Some(entry) = state.blobs.get_mut(digest) else {
                return Ok(None);
            };
            if entry.evicting {
                return Ok(None);
            }
            entry.last_access = SystemTime::now();
            let len = entry.len;
            (self.inner.pin_locked(&mut state, *digest), len)
        };
        let path = self.inner.layout.blob_path(digest);
        match compio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(BlobFile::new(file, *digest, len, path, pin))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind our back: forget it.
                tracing::warn!(%digest, path = %path.display(), "complete blob vanished");
                drop(pin);
                lock(&self.inner.state).blobs.remove(digest);
                Ok(None)
            }
            Err(error) => Err(StoreError::io("open", path, error)),
        }
    }

    /// The metainfo of a complete blob (from its sidecar), for seeding it. `None` if the blob
    /// is not complete.
    pub async fn blob_metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, StoreError> {
        if !self.has_blob(digest) {
            return Ok(None);
        }
        let path = self.inner.layout.blob_metainfo_path(digest);
        let owned = path.clone();
        let read = compio::runtime::spawn_blocking(move || recovery::read_metainfo_file(&owned))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("reading task panicked")));
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("read", path, error)),
        };
        match Metainfo::decode(&bytes) {
            Ok(metainfo) if metainfo.digest() == *digest => Ok(Some(metainfo)),
            Ok(_) | Err(_) => Err(StoreError::io(
                "decode metainfo",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt metainfo sidecar"),
            )),
        }
    }

    /// Abandons the download of `digest`: removes its directory. Refused (`Busy`) while any
    /// handle of it is alive in this process.
    pub async fn discard_download(&self, digest: &Digest) -> Result<(), StoreError> {
        {
            let mut state = lock(&self.inner.state);
            match state.downloads.get(digest) {
                Some(DownloadSlot::Starting) => {
                    return Err(StoreError::Busy {
                        digest: Box::new(*digest),
                        what: "download being started",
                    });
                }
                Some(DownloadSlot::Active(weak)) if weak.strong_count() > 0 => {
                    return Err(StoreError::Busy {
                        digest: Box::new(*digest),
                        what: "download in use",
                    });
                }
                _ => {}
            }
            state.downloads.insert(*digest, DownloadSlot::Starting);
        }
        let claim = StartingClaim {
            store: &self.inner,
            digest: *digest,
            armed: true,
        };
        let dir = self.inner.layout.download_dir(digest);
        let result = sys::remove_all(&dir).await.context("remove", &dir);
        drop(claim);
        result
    }

    /// Whether a download of `digest` has its data file on disk (preallocated: resuming it
    /// takes no more space).
    pub fn has_download_data(&self, digest: &Digest) -> bool {
        self.inner
            .layout
            .download_dir(digest)
            .join(layout::DATA_FILE)
            .exists()
    }

    /// Whether a reader or a download handle holds `digest` (eviction leaves it alone).
    pub fn is_pinned(&self, digest: &Digest) -> bool {
        lock(&self.inner.state).pins.contains_key(digest)
    }

    /// Removes the complete blob `digest` (its file and sidecar). `Ok(false)` if the store
    /// does not have it; [`StoreError::Busy`] while it is open or held by a download handle.
    pub async fn remove_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        evict::remove_one(&self.inner, digest).await
    }

    /// Test hook: pretend the blob was last opened at `when`.
    #[cfg(test)]
    pub(crate) fn set_last_access(&self, digest: &Digest, when: SystemTime) {
        let mut state = lock(&self.inner.state);
        if let Some(entry) = state.blobs.get_mut(digest) {
            entry.last_access = when;
        }
    }

    /// The disk usage of the store's filesystem (`statvfs` of the root); `None`, logged, if
    /// it cannot be read.
    pub fn disk_usage(&self) -> Option<DiskUsage> {
        let root = self.inner.layout.root();
        match sys::disk_usage(root) {
            Ok(usage) => Some(usage),
            Err(error) => {
                tracing::warn!(root = %root.display(), %error, "statvfs failed; watermark eviction skipped");
                None
            }
        }
    }

    /// Evicts complete blobs by idle time, age and the disk watermarks (reading the disk
    /// usage with `statvfs` of the root). See [`Store::evict_with_usage`].
    pub async fn evict(&self, now: SystemTime) -> EvictionReport {
        self.evict_with_usage(now, self.disk_usage()).await
    }

    /// Evicts, given the disk usage (`None`: skip the watermark rule):
    /// 1. every unpinned blob older than `evict_age_max` or idle longer than
    ///    `evict_idle_after`;
    /// 2. then, while the disk (less what step 1 freed) is above the high watermark, the least
    ///    recently used unpinned blobs until it is at most at the low watermark.
    ///
    /// Pinned blobs (open readers, live download handles) and downloads in progress are never
    /// touched. Failures to remove a file are reported, not returned: eviction is best effort.
    pub async fn evict_with_usage(
        &self,
        now: SystemTime,
        usage: Option<DiskUsage>,
    ) -> EvictionReport {
        let plan = self.plan_eviction(now, usage, &HashSet::new());
        self.apply_eviction(plan).await
    }

    /// The first half of [`Store::evict_with_usage`], for a caller that holds pins of its
    /// own: what the rules choose when the blobs in `releasable` count as unpinned. The
    /// caller releases those it holds among the chosen, then calls
    /// [`Store::apply_eviction`]; a chosen blob that is still pinned then is skipped.
    pub fn plan_eviction(
        &self,
        now: SystemTime,
        usage: Option<DiskUsage>,
        releasable: &HashSet<Digest>,
    ) -> EvictionPlan {
        evict::plan(&self.inner, now, usage, releasable)
    }

    /// Removes what [`Store::plan_eviction`] chose, skipping (and counting as pinned) any
    /// blob pinned by now.
    pub async fn apply_eviction(&self, plan: EvictionPlan) -> EvictionReport {
        evict::apply(&self.inner, plan).await
    }
}
