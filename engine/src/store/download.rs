//! Downloads in progress: creating or resuming the directory, writing pieces with group
//! commit, reading stored pieces, waiting for pieces, and completion.
//!
//! # Waiting for pieces
//!
//! A reader that serves a blob while it downloads (the agent streaming to `docker pull`)
//! waits for pieces with [`Download::wait_piece`]. Every download has one
//! [`event_listener::Event`], shared by every shard's handle, notified (all listeners) after
//! a commit sets bits in [`Bits::stored`], when the download completes, and when it is
//! poisoned or ended with [`Download::fail`]. A waiter registers a listener, looks at the
//! bits again, and only then awaits the listener, so a notification between its first look
//! and its registration is never lost.

use std::cell::RefCell;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin as StdPin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf, IoBufMut};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};
use shoal_proto::metainfo::Metainfo;
use shoal_proto::{Bitfield, Digest, PieceIndex};

use super::error::{IoContext, is_no_space};
use super::layout::{self, Layout};
use super::{BlobEntry, DownloadSlot, Pin, Store, StoreError, lock, recovery, sys};

/// Buffer for hashing a whole blob at completion.
const HASH_BUFFER_LEN: usize = 1 << 20;

/// State of one download shared by every shard's handle. `Send + Sync`.
#[derive(Debug)]
pub(crate) struct DownloadShared {
    store: Store,
    metainfo: Metainfo,
    dir: PathBuf,
    data_path: PathBuf,
    pieces_path: PathBuf,
    bits: Mutex<Bits>,
    /// Notified (every listener) whenever `bits` changes in a way a waiter cares about: bits
    /// set by a commit, completion, poisoning. See the module docs.
    changed: event_listener::Event,
    /// Keeps the blob pinned (against eviction once complete) while any handle lives.
    _pin: Pin,
}

#[derive(Debug)]
struct Bits {
    /// Pieces whose data is durable (fdatasync'd) and verified: readable, announceable. The
    /// on-disk bitfield is always a subset of this.
    stored: Bitfield,
    /// The `pieces` file, written only while this mutex is held (see the module docs).
    pieces_file: fs::File,
    phase: Phase,
}

/// Looks [`DownloadHandle::open`] takes at a download whose data a completion may be moving.
const OPEN_ATTEMPTS: usize = 4;

#[derive(Debug, Clone)]
enum Phase {
    Active,
    /// One handle is running `complete`.
    Completing,
    /// The data is the blob at this path now.
    Completed(PathBuf),
    /// An fsync failed, the blob failed its digest, or the engine ended the download
    /// ([`Download::fail`]): no more writes, and waiters for missing pieces get the reason.
    Poisoned(String),
}

impl DownloadShared {
    pub(crate) fn new(
        store: Store,
        metainfo: Metainfo,
        stored: Bitfield,
        pin: Pin,
    ) -> Result<DownloadShared, StoreError> {
        let dir = store.inner.layout.download_dir(&metainfo.digest());
        let data_path = dir.join(layout::DATA_FILE);
        let pieces_path = dir.join(layout::PIECES_FILE);
        // A short blocking open: the file is local and exists.
        let pieces_file = fs::OpenOptions::new()
            .write(true)
            .open(&pieces_path)
            .context("open", &pieces_path)?;
        assert_eq!(stored.len(), metainfo.n_pieces() as usize);
        Ok(DownloadShared {
            store,
            metainfo,
            dir,
            data_path,
            pieces_path,
            bits: Mutex::new(Bits {
                stored,
                pieces_file,
                phase: Phase::Active,
            }),
            changed: event_listener::Event::new(),
            _pin: pin,
        })
    }

    pub(crate) fn metainfo(&self) -> &Metainfo {
        &self.metainfo
    }

    fn digest(&self) -> Box<Digest> {
        Box::new(self.metainfo.digest())
    }

    /// Stops the download for good, keeping the first reason. A completed download stays
    /// completed (the check and the change are one critical section, so a completion racing
    /// with [`Download::fail`] is never turned into a poisoned download whose data has moved).
    fn poison(&self, reason: String) {
        {
            let mut bits = lock(&self.bits);
            match bits.phase {
                Phase::Active | Phase::Completing => {
                    tracing::error!(digest = %self.metainfo.digest(), %reason, "download poisoned");
                    bits.phase = Phase::Poisoned(reason);
                }
                Phase::Completed(_) | Phase::Poisoned(_) => {}
            }
        }
        self.notify_waiters();
    }

    /// Wakes every task in [`DownloadShared::wait_piece`]; they look at the bits again.
    fn notify_waiters(&self) {
        self.changed.notify(usize::MAX);
    }

    /// `Ok(true)` if `piece` is stored, `Ok(false)` if it may still come, the error if it
    /// never will. A stored piece stays readable after the download is poisoned: its bit
    /// names durable, verified data.
    fn piece_state(&self, piece: PieceIndex) -> Result<bool, StoreError> {
        if !self.metainfo.contains_piece(piece) {
            return Err(StoreError::PieceOutOfRange {
                digest: self.digest(),
                piece,
                n_pieces: self.metainfo.n_pieces(),
            });
        }
        let bits = lock(&self.bits);
        if bits.stored.get(piece.0 as usize) {
            return Ok(true);
        }
        match &bits.phase {
            Phase::Poisoned(reason) => Err(self.poisoned_error(reason)),
            Phase::Active | Phase::Completing | Phase::Completed(_) => Ok(false),
        }
    }

    /// See [`Download::wait_piece`].
    async fn wait_piece(&self, piece: PieceIndex) -> Result<(), StoreError> {
        // Each turn either returns or awaits a notification that came after a look at the
        // bits: the loop runs once per relevant change of the download, no more.
        loop {
            if self.piece_state(piece)? {
                return Ok(());
            }
            let listener = self.changed.listen();
            if self.piece_state(piece)? {
                return Ok(());
            }
            listener.await;
        }
    }

    /// See [`Download::fail`].
    fn fail(&self, reason: String) {
        self.poison(reason);
    }

    fn poisoned_error(&self, reason: &str) -> StoreError {
        StoreError::Poisoned {
            digest: self.digest(),
            reason: reason.to_owned(),
        }
    }
}

/// A `Send + Sync` reference to a download, for handing it to another shard: call
/// [`DownloadHandle::open`] there to get that shard's [`Download`].
#[derive(Debug, Clone)]
pub struct DownloadHandle {
    shared: Arc<DownloadShared>,
}

impl DownloadHandle {
    pub(crate) fn from_shared(shared: Arc<DownloadShared>) -> DownloadHandle {
        DownloadHandle { shared }
    }

    pub fn metainfo(&self) -> &Metainfo {
        &self.shared.metainfo
    }

    /// Number of pieces stored (durable and verified).
    pub fn n_stored(&self) -> u32 {
        // At most n_pieces, a u32.
        lock(&self.shared.bits).stored.count_ones() as u32
    }

    /// [`Download::wait_piece`], from any thread or runtime.
    pub async fn wait_piece(&self, piece: PieceIndex) -> Result<(), StoreError> {
        self.shared.wait_piece(piece).await
    }

    /// [`Download::fail`], from any thread or runtime.
    pub fn fail(&self, reason: String) {
        self.shared.fail(reason);
    }

    /// Opens this download on the current compio runtime: its own file descriptors and its
    /// own group commit, over the state every shard shares.
    pub async fn open(&self) -> Result<Download, StoreError> {
        let shared = Arc::clone(&self.shared);
        // A completion on another shard may move `data` between our look and our open: while
        // it is still completing (the move done, the phase not yet changed) we wait for the
        // phase to change, then look again and see the new path.
        for attempt in 0..OPEN_ATTEMPTS {
            let changed = shared.changed.listen();
            let phase = lock(&shared.bits).phase.clone();
            let (path, writable) = match &phase {
                Phase::Completed(path) => (path.clone(), false),
                _ => (shared.data_path.clone(), true),
            };
            let opened = compio::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
                .await;
            let data = match opened {
                Ok(file) => file,
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound && attempt + 1 < OPEN_ATTEMPTS =>
                {
                    if matches!(phase, Phase::Completing) {
                        changed.await;
                    }
                    continue;
                }
                Err(error) => return Err(StoreError::io("open", path, error)),
            };
            let pieces = if writable {
                let opened = compio::fs::File::open(&shared.pieces_path).await;
                match opened {
                    Ok(file) => Some(file),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                    Err(error) => return Err(StoreError::io("open", &shared.pieces_path, error)),
                }
            } else {
                None
            };
            return Ok(Download {
                local: Rc::new(Local {
                    shared,
                    data,
                    pieces,
                    commit: RefCell::new(CommitQueue::default()),
                    #[cfg(test)]
                    fail_point: std::cell::Cell::new(None),
                    #[cfg(test)]
                    n_commits: std::cell::Cell::new(0),
                }),
            });
        }
        Err(StoreError::io(
            "open",
            &shared.data_path,
            io::Error::from(io::ErrorKind::NotFound),
        ))
    }
}

/// One shard's handle on a download: write and read pieces, complete the blob. Clone it freely
/// within the runtime that opened it (clones share the file descriptors and the group commit);
/// use [`Download::handle`] to reach another runtime.
#[derive(Debug, Clone)]
pub struct Download {
    local: Rc<Local>,
}

#[derive(Debug)]
struct Local {
    shared: Arc<DownloadShared>,
    /// `data`, or the blob once completed elsewhere.
    data: compio::fs::File,
    /// `pieces`, for fdatasync (writes go through the shared descriptor). `None` once the
    /// download completed.
    pieces: Option<compio::fs::File>,
    commit: RefCell<CommitQueue>,
    #[cfg(test)]
    fail_point: std::cell::Cell<Option<FailPoint>>,
    /// Commits that ran (non-empty batches), to observe the batching.
    #[cfg(test)]
    n_commits: std::cell::Cell<u64>,
}

/// Test hooks that stop a write half-way, as a crash would.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailPoint {
    /// The piece's data is written and fdatasync'd, then `write_piece` returns `Ok` without
    /// setting the bit: the state a crash between steps 2 and 3 leaves.
    SkipBit,
    /// The next commit's data fdatasync fails with EIO.
    FailDataSync,
}

/// The group commit of one handle. Pieces join the open batch (generation `next_gen`) once
/// their data is written; one task at a time commits a batch; batches commit in order.
#[derive(Debug)]
struct CommitQueue {
    /// Pieces of the open batch: data written, not yet synced.
    pending: Vec<u32>,
    /// Generation of the open batch.
    next_gen: u64,
    /// Every batch up to this generation is committed.
    done_gen: u64,
    /// A commit is running.
    in_flight: bool,
    /// Tasks waiting for the running commit. At most one entry per waiting `write_piece`
    /// call (each registers once per wake-up, and the list is drained on every wake-up).
    waiters: Vec<Waker>,
}

impl Default for CommitQueue {
    fn default() -> CommitQueue {
        CommitQueue {
            pending: Vec::new(),
            next_gen: 1,
            done_gen: 0,
            in_flight: false,
            waiters: Vec::new(),
        }
    }
}

impl CommitQueue {
    fn wake_all(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }
}

/// Resolves on the second poll: registers the task with the running commit, then lets the
/// caller look again after any wake-up.
struct WaitForCommit<'a> {
    queue: &'a RefCell<CommitQueue>,
    registered: bool,
}

impl Future for WaitForCommit<'_> {
    type Output = ();
    fn poll(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.queue.borrow_mut().waiters.push(cx.waker().clone());
        self.registered = true;
        Poll::Pending
    }
}

/// The running commit's batch. If the commit's future is dropped (the writing task was
/// cancelled), the batch goes back to the open batch, renumbered so that its waiters are
/// served by the next commit, and another waiter takes over.
struct CommitLeader<'a> {
    queue: &'a RefCell<CommitQueue>,
    generation: u64,
    batch: Vec<u32>,
    finished: bool,
}

impl CommitLeader<'_> {
    fn finish(mut self, committed: bool) {
        self.finished = true;
        let mut queue = self.queue.borrow_mut();
        queue.in_flight = false;
        if committed {
            debug_assert_eq!(queue.done_gen + 1, self.generation);
            queue.done_gen = self.generation;
        }
        queue.wake_all();
    }
}

impl Drop for CommitLeader<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.queue.borrow_mut();
        queue.in_flight = false;
        queue.pending.append(&mut self.batch);
        queue.next_gen = self.generation;
        queue.wake_all();
    }
}

impl Download {
    /// A `Send + Sync` handle for opening this download on another runtime.
    pub fn handle(&self) -> DownloadHandle {
        DownloadHandle::from_shared(Arc::clone(&self.local.shared))
    }

    pub fn metainfo(&self) -> &Metainfo {
        &self.local.shared.metainfo
    }

    pub fn digest(&self) -> Digest {
        self.local.shared.metainfo.digest()
    }

    /// The pieces stored so far (durable and verified), as a snapshot.
    pub fn bitfield(&self) -> Bitfield {
        lock(&self.local.shared.bits).stored.clone()
    }

    /// Whether `piece` is stored (durable and verified). `false` for an out-of-range index.
    pub fn has_piece(&self, piece: PieceIndex) -> bool {
        let shared = &self.local.shared;
        shared.metainfo.contains_piece(piece) && lock(&shared.bits).stored.get(piece.0 as usize)
    }

    /// Number of pieces stored.
    pub fn n_stored(&self) -> u32 {
        // At most n_pieces, a u32.
        lock(&self.local.shared.bits).stored.count_ones() as u32
    }

    /// Resolves once `piece` is stored (durable and verified: readable with
    /// [`Download::read_piece`]), at once if it already is. Fails with
    /// [`StoreError::PieceOutOfRange`] for an index the blob does not have, and with
    /// [`StoreError::Poisoned`] (carrying the reason) if the piece is missing and the
    /// download is poisoned or was ended with [`Download::fail`]: it will never come. A piece
    /// stored before the download was poisoned still resolves `Ok`.
    ///
    /// Wakes on any shard's commits (the wake-up is shared by every handle). Nothing else
    /// ends the wait: if every writer gives up without calling [`Download::fail`], waiters
    /// wait until they are dropped. Cancel-safe.
    pub async fn wait_piece(&self, piece: PieceIndex) -> Result<(), StoreError> {
        self.local.shared.wait_piece(piece).await
    }

    /// Ends the download for good (the engine gave up: disk full, no source left, shutting
    /// the blob's swarm down): poisons it, so every later write and completion is refused,
    /// and wakes every [`Download::wait_piece`] waiter of every shard, who get
    /// [`StoreError::Poisoned`] with `reason` unless their piece is already stored. A no-op
    /// on a completed download; a poisoned one keeps its first reason. The files stay: call
    /// [`Store::discard_download`] once every handle is dropped to remove them (or begin the
    /// download again to resume from what is stored).
    pub fn fail(&self, reason: String) {
        self.local.shared.fail(reason);
    }

    /// Writes a piece whose SHA-256 the caller has already checked against the metainfo, and
    /// returns once it is durable and its bit persisted (see the module docs for the order
    /// and the group commit). The buffer comes back, for reuse.
    ///
    /// A piece already stored (its data durable, possibly through another handle whose commit
    /// is still persisting the bit) is not written again: `Ok` at once. Errors name the download:
    /// a full disk is [`StoreError::NoSpace`], a failed fsync poisons the download.
    pub async fn write_piece<B: IoBuf>(
        &self,
        piece: PieceIndex,
        buf: B,
    ) -> (Result<(), StoreError>, B) {
        let shared = &self.local.shared;
        let metainfo = &shared.metainfo;
        if let Err(error) = self.check_piece(piece, buf.buf_len()) {
            return (Err(error), buf);
        }
        {
            let bits = lock(&shared.bits);
            if let Phase::Poisoned(reason) = &bits.phase {
                return (Err(shared.poisoned_error(reason)), buf);
            }
            if bits.stored.get(piece.0 as usize) {
                return (Ok(()), buf);
            }
        }
        debug_assert!(
            metainfo.verify_piece(piece, buf.as_init()),
            "{piece} of {} handed to the store unverified",
            metainfo.digest()
        );
        let offset = metainfo.piece_offset(piece);
        let BufResult(result, buf) = (&self.local.data).write_all_at(buf, offset).await;
        if let Err(error) = result {
            let error = if is_no_space(&error) {
                StoreError::NoSpace {
                    digest: shared.digest(),
                    bytes_needed: u64::from(metainfo.piece_len_of(piece)),
                    bytes_available: sys::available_bytes(&shared.dir),
                    path: shared.data_path.clone(),
                }
            } else {
                StoreError::io("pwrite", &shared.data_path, error)
            };
            return (Err(error), buf);
        }
        #[cfg(test)]
        if self.local.fail_point.get() == Some(FailPoint::SkipBit) {
            let synced = self.local.data.sync_data().await;
            return (synced.context("fdatasync", &shared.data_path), buf);
        }
        let my_gen = {
            let mut queue = self.local.commit.borrow_mut();
            queue.pending.push(piece.0);
            queue.next_gen
        };
        (self.wait_committed(my_gen).await, buf)
    }

    /// Waits until the batch of generation `my_gen` is committed, running commits when none
    /// is in flight.
    async fn wait_committed(&self, my_gen: u64) -> Result<(), StoreError> {
        let local = &*self.local;
        loop {
            if local.commit.borrow().done_gen >= my_gen {
                return Ok(());
            }
            if let Phase::Poisoned(reason) = &lock(&local.shared.bits).phase {
                return Err(local.shared.poisoned_error(reason));
            }
            let leader = {
                let mut queue = local.commit.borrow_mut();
                if queue.in_flight {
                    None
                } else {
                    queue.in_flight = true;
                    let generation = queue.next_gen;
                    queue.next_gen += 1;
                    Some(CommitLeader {
                        queue: &local.commit,
                        generation,
                        batch: std::mem::take(&mut queue.pending),
                        finished: false,
                    })
                }
            };
            let Some(leader) = leader else {
                WaitForCommit {
                    queue: &local.commit,
                    registered: false,
                }
                .await;
                continue;
            };
            match self.commit(&leader.batch).await {
                Ok(()) => leader.finish(true),
                Err(error) => {
                    local.shared.poison(error.to_string());
                    leader.finish(false);
                    return Err(error);
                }
            }
        }
    }

    /// Steps 2–4 of the durability order for `batch`.
    async fn commit(&self, batch: &[u32]) -> Result<(), StoreError> {
        let local = &*self.local;
        let shared = &local.shared;
        if batch.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        local.n_commits.set(local.n_commits.get() + 1);
        #[cfg(test)]
        if local.fail_point.get() == Some(FailPoint::FailDataSync) {
            return Err(StoreError::io(
                "fdatasync",
                &shared.data_path,
                io::Error::from_raw_os_error(5),
            ));
        }
        local
            .data
            .sync_data()
            .await
            .context("fdatasync", &shared.data_path)?;
        let written = {
            let mut bits = lock(&shared.bits);
            for &piece in batch {
                bits.stored.set(piece as usize);
            }
            write_bitfield_bytes(&bits.stored, &bits.pieces_file, batch)
        };
        // The data is durable: the pieces are readable whatever happens to the bitfield file.
        shared.notify_waiters();
        written.context("pwrite", &shared.pieces_path)?;
        if let Some(pieces) = &local.pieces {
            pieces
                .sync_data()
                .await
                .context("fdatasync", &shared.pieces_path)?;
        }
        Ok(())
    }

    /// Reads a stored piece into `buf`, which is cleared first and holds exactly the piece on
    /// success (its capacity must hold the piece: nothing is allocated here). Refused with [`StoreError::PieceMissing`] unless the
    /// piece is stored, so only verified, durable data is ever served.
    pub async fn read_piece<B: IoBufMut>(
        &self,
        piece: PieceIndex,
        mut buf: B,
    ) -> (Result<(), StoreError>, B) {
        let shared = &self.local.shared;
        let metainfo = &shared.metainfo;
        if !metainfo.contains_piece(piece) {
            return (Err(self.out_of_range(piece)), buf);
        }
        if !lock(&shared.bits).stored.get(piece.0 as usize) {
            let error = StoreError::PieceMissing {
                digest: shared.digest(),
                piece,
            };
            return (Err(error), buf);
        }
        let len = metainfo.piece_len_of(piece);
        let capacity = buf.buf_capacity();
        if capacity < len as usize {
            let error = StoreError::BufferTooSmall {
                digest: shared.digest(),
                piece,
                needed: len,
                capacity,
            };
            return (Err(error), buf);
        }
        buf.clear();
        let offset = metainfo.piece_offset(piece);
        let BufResult(result, slice) = self
            .local
            .data
            .read_exact_at(buf.slice(0..len as usize), offset)
            .await;
        let buf = slice.into_inner();
        (result.context("pread", &shared.data_path), buf)
    }

    /// The data file and the offset of a stored piece, for uploading it straight from the
    /// file (`transport::PeerWriter::send_piece`, which can splice it). Refused, like
    /// [`Download::read_piece`], unless the piece is stored: only verified, durable data is
    /// ever served.
    pub fn piece_source(&self, piece: PieceIndex) -> Result<(&compio::fs::File, u64), StoreError> {
        let shared = &self.local.shared;
        let metainfo = &shared.metainfo;
        if !metainfo.contains_piece(piece) {
            return Err(self.out_of_range(piece));
        }
        if !lock(&shared.bits).stored.get(piece.0 as usize) {
            return Err(StoreError::PieceMissing {
                digest: shared.digest(),
                piece,
            });
        }
        Ok((&self.local.data, metainfo.piece_offset(piece)))
    }

    /// This handle's data file (the blob once completed: the descriptor survives the
    /// rename) and the path it was opened as, for [`super::BlobStream`]. Read only stored
    /// pieces from it.
    pub(super) fn data_file(&self) -> (&compio::fs::File, &Path) {
        (&self.local.data, &self.local.shared.data_path)
    }

    /// The end (a blob offset, at most `end`) of the run of stored pieces that starts with
    /// `piece`, which must be stored: how far a read from inside `piece` may go without
    /// touching a piece that is not.
    pub(super) fn stored_run_end(&self, piece: PieceIndex, end: u64) -> u64 {
        let metainfo = &self.local.shared.metainfo;
        let end = end.min(metainfo.blob_len());
        let bits = lock(&self.local.shared.bits);
        debug_assert!(bits.stored.get(piece.0 as usize), "{piece} is not stored");
        let mut run_end = metainfo.piece_offset(piece);
        // At most one turn per piece of the blob.
        for index in piece.0..metainfo.n_pieces() {
            if run_end >= end || !bits.stored.get(index as usize) {
                break;
            }
            run_end += u64::from(metainfo.piece_len_of(PieceIndex(index)));
        }
        run_end.min(end)
    }

    /// Turns the finished download into a complete blob and returns its path: fsyncs `data`,
    /// checks the blob's digest (if configured), writes the metainfo sidecar, renames `data`
    /// into `blobs/` (same filesystem, atomic), fsyncs the directories, removes the download
    /// directory. Fails with [`StoreError::Incomplete`] unless every piece is stored.
    ///
    /// Calling it again (from any handle) after success returns the same path.
    pub async fn complete(&self) -> Result<PathBuf, StoreError> {
        let shared = &self.local.shared;
        let digest = shared.metainfo.digest();
        {
            let mut bits = lock(&shared.bits);
            match &bits.phase {
                Phase::Completed(path) => return Ok(path.clone()),
                Phase::Completing => {
                    return Err(StoreError::Busy {
                        digest: shared.digest(),
                        what: "being completed",
                    });
                }
                Phase::Poisoned(reason) => return Err(shared.poisoned_error(reason)),
                Phase::Active => {}
            }
            if !bits.stored.is_full() {
                return Err(StoreError::Incomplete {
                    digest: shared.digest(),
                    have: bits.stored.count_ones() as u32,
                    n_pieces: shared.metainfo.n_pieces(),
                });
            }
            bits.phase = Phase::Completing;
        }
        match self.install().await {
            Ok(path) => {
                lock(&shared.bits).phase = Phase::Completed(path.clone());
                shared.notify_waiters();
                self.remove_download_dir().await;
                tracing::info!(%digest, path = %path.display(), "blob complete");
                Ok(path)
            }
            Err(error) => {
                {
                    let mut bits = lock(&shared.bits);
                    if matches!(bits.phase, Phase::Completing) {
                        bits.phase = Phase::Active;
                    }
                }
                // An `open` waiting for the completion looks again.
                shared.notify_waiters();
                Err(error)
            }
        }
    }

    /// The steps of `complete` up to the blob being durable in `blobs/` and in the index.
    async fn install(&self) -> Result<PathBuf, StoreError> {
        let shared = &self.local.shared;
        let store = &shared.store.inner;
        let layout = &store.layout;
        let metainfo = &shared.metainfo;
        let digest = metainfo.digest();
        self.local
            .data
            .sync_all()
            .await
            .context("fsync", &shared.data_path)?;
        // A chained metainfo's pieces, each verified, already hash to the digest.
        if store.config.verify_digest_on_complete && !metainfo.pieces_prove_digest() {
            let actual = hash_file(&shared.data_path, &digest).await?;
            if actual != digest {
                let error = StoreError::DigestMismatch {
                    expected: Box::new(digest),
                    actual: Box::new(actual),
                };
                shared.poison(error.to_string());
                if let Err(error) = sys::remove_all(&shared.dir).await {
                    tracing::warn!(dir = %shared.dir.display(), %error, "could not remove download");
                }
                return Err(error);
            }
        }

        let blob_dir = layout.blob_dir(&digest);
        compio::fs::create_dir_all(&blob_dir)
            .await
            .context("create directory", &blob_dir)?;
        let sidecar = layout.blob_metainfo_path(&digest);
        let temp = layout.temp_path(&blob_dir, &format!("{}.metainfo", digest.encoded()));
        let written = async {
            write_new_file(&temp, metainfo.encode()).await?;
            compio::fs::rename(&temp, &sidecar)
                .await
                .context("rename", &temp)
        }
        .await;
        if let Err(error) = written {
            let _ = sys::remove_all(&temp).await;
            return Err(error);
        }
        let blob_path = layout.blob_path(&digest);
        compio::fs::rename(&shared.data_path, &blob_path)
            .await
            .context("rename", &shared.data_path)?;
        // The blob's name, and every directory above it that may be new, made durable.
        for dir in [
            blob_dir,
            layout.blob_algorithm_dir(&digest),
            layout.blobs_dir(),
        ] {
            sys::sync_dir(&dir).await.context("fsync directory", &dir)?;
        }

        let allocated_bytes = fs::metadata(&blob_path)
            .map(|metadata| sys::allocated_bytes(&metadata))
            .unwrap_or(metainfo.blob_len());
        let now = SystemTime::now();
        let mut state = lock(&store.state);
        state.blobs.insert(
            digest,
            BlobEntry {
                len: metainfo.blob_len(),
                allocated_bytes,
                completed_at: now,
                last_access: now,
                evicting: false,
            },
        );
        if let Some(DownloadSlot::Active(weak)) = state.downloads.get(&digest)
            && std::ptr::eq(weak.as_ptr(), Arc::as_ptr(shared))
        {
            state.downloads.remove(&digest);
        }
        Ok(blob_path)
    }

    /// Removes what is left of the download directory once the blob is installed. Failures
    /// are logged: start-up recovery removes the leftovers.
    async fn remove_download_dir(&self) {
        let shared = &self.local.shared;
        let result = async {
            for name in [layout::METAINFO_FILE, layout::PIECES_FILE] {
                let path = shared.dir.join(name);
                compio::fs::remove_file(&path)
                    .await
                    .context("remove", &path)?;
            }
            compio::fs::remove_dir(&shared.dir)
                .await
                .context("remove", &shared.dir)?;
            let downloads = shared.store.inner.layout.downloads_dir();
            sys::sync_dir(&downloads)
                .await
                .context("fsync directory", &downloads)
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not remove a completed download's directory");
        }
    }

    fn check_piece(&self, piece: PieceIndex, len: usize) -> Result<(), StoreError> {
        let metainfo = &self.local.shared.metainfo;
        if !metainfo.contains_piece(piece) {
            return Err(self.out_of_range(piece));
        }
        let expected = metainfo.piece_len_of(piece);
        if len != expected as usize {
            return Err(StoreError::PieceLength {
                digest: self.local.shared.digest(),
                piece,
                expected,
                actual: len,
            });
        }
        Ok(())
    }

    fn out_of_range(&self, piece: PieceIndex) -> StoreError {
        StoreError::PieceOutOfRange {
            digest: self.local.shared.digest(),
            piece,
            n_pieces: self.local.shared.metainfo.n_pieces(),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_fail_point(&self, fail_point: Option<FailPoint>) {
        self.local.fail_point.set(fail_point);
    }

    #[cfg(test)]
    pub(crate) fn n_commits(&self) -> u64 {
        self.local.n_commits.get()
    }
}

/// Byte `index` of the wire form of `bits` (MSB first).
pub(crate) fn bitfield_byte(bits: &Bitfield, index: usize) -> u8 {
    let mut byte = 0u8;
    for offset in 0..8 {
        let bit = index * 8 + offset;
        if bit < bits.len() && bits.get(bit) {
            byte |= 0x80 >> offset;
        }
    }
    byte
}

/// Writes the bytes of the `pieces` file that hold `pieces`' bits, taking their values from
/// `bits` (so they also carry every other bit set so far). Contiguous bytes go in one write.
pub(crate) fn write_bitfield_bytes(
    bits: &Bitfield,
    file: &fs::File,
    pieces: &[u32],
) -> io::Result<()> {
    let mut indexes: Vec<usize> = pieces.iter().map(|&piece| piece as usize / 8).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let mut run: Vec<u8> = Vec::with_capacity(indexes.len());
    let mut run_start = 0;
    for (position, &index) in indexes.iter().enumerate() {
        if position > 0 && index != indexes[position - 1] + 1 {
            file.write_all_at(&run, run_start as u64)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = index;
        }
        run.push(bitfield_byte(bits, index));
    }
    if !run.is_empty() {
        file.write_all_at(&run, run_start as u64)?;
    }
    Ok(())
}

/// Creates `path` (which must not exist), writes `contents`, fsyncs it.
pub(crate) async fn write_new_file(path: &Path, contents: Vec<u8>) -> Result<(), StoreError> {
    let mut file = compio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .context("create", path)?;
    let BufResult(result, _) = file.write_all_at(contents, 0).await;
    result.context("write", path)?;
    file.sync_all().await.context("fsync", path)
}

/// Streams a file through the hash of `like`'s algorithm on the blocking pool, with a fixed
/// buffer.
pub(crate) async fn hash_file(path: &Path, like: &Digest) -> Result<Digest, StoreError> {
    let owned = path.to_path_buf();
    let like = *like;
    let hashed = compio::runtime::spawn_blocking(move || hash_file_blocking(&owned, &like)).await;
    hashed
        .unwrap_or_else(|_| Err(io::Error::other("hashing task panicked")))
        .context("hash", path)
}

fn hash_file_blocking(path: &Path, like: &Digest) -> io::Result<Digest> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buffer = vec![0u8; HASH_BUFFER_LEN];
    match like {
        Digest::Sha256(_) => {
            let mut hasher = sha2::Sha256::new();
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
            Ok(Digest::Sha256(hasher.finalize().into()))
        }
        Digest::Sha512(_) => {
            let mut hasher = sha2::Sha512::new();
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
            Ok(Digest::Sha512(hasher.finalize().into()))
        }
    }
}

/// Makes `downloads/<name>` ready for `metainfo`: resumes a matching directory (returning its
/// stored pieces), or discards whatever is there and creates a fresh one.
pub(crate) async fn prepare_dir(
    layout: &Layout,
    metainfo: &Metainfo,
) -> Result<Bitfield, StoreError> {
    let digest = metainfo.digest();
    let dir = layout.download_dir(&digest);
    let owned = dir.clone();
    let loaded =
        compio::runtime::spawn_blocking(move || recovery::load_download_dir(&owned, &digest))
            .await
            .unwrap_or_else(|_| {
                Err(recovery::DiscardReason::Unreadable(
                    "loader panicked".into(),
                ))
            });
    match loaded {
        Ok(None) => {}
        Ok(Some(found)) if found.metainfo.info_hash() == metainfo.info_hash() => {
            for extra in &found.extra_entries {
                sys::remove_all(extra).await.context("remove", extra)?;
            }
            tracing::info!(
                %digest,
                stored = found.stored.count_ones(),
                n_pieces = metainfo.n_pieces(),
                "resuming download"
            );
            return Ok(found.stored);
        }
        Ok(Some(found)) => {
            tracing::info!(
                %digest,
                old = %found.metainfo.info_hash(),
                new = %metainfo.info_hash(),
                "discarding a download with a different metainfo"
            );
            sys::remove_all(&dir).await.context("remove", &dir)?;
        }
        Err(reason) => {
            tracing::warn!(%digest, %reason, "discarding an unusable download directory");
            sys::remove_all(&dir).await.context("remove", &dir)?;
        }
    }
    create_fresh_dir(layout, metainfo).await?;
    Ok(Bitfield::new(metainfo.n_pieces() as usize))
}

/// Assembles a new download directory under a temporary name, then renames it into place.
/// Any failure removes the temporary directory; a full disk is [`StoreError::NoSpace`].
async fn create_fresh_dir(layout: &Layout, metainfo: &Metainfo) -> Result<(), StoreError> {
    let digest = metainfo.digest();
    let downloads = layout.downloads_dir();
    let dir = layout.download_dir(&digest);
    let temp = layout.temp_path(&downloads, &layout::download_dir_name(&digest));
    compio::fs::create_dir(&temp)
        .await
        .context("create directory", &temp)?;
    let result = async {
        write_new_file(&temp.join(layout::METAINFO_FILE), metainfo.encode()).await?;
        let pieces = vec![0u8; Bitfield::byte_len(metainfo.n_pieces() as usize)];
        write_new_file(&temp.join(layout::PIECES_FILE), pieces).await?;
        let data_path = temp.join(layout::DATA_FILE);
        let blob_len = metainfo.blob_len();
        let owned = data_path.clone();
        let preallocated = compio::runtime::spawn_blocking(move || {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&owned)?;
            let preallocated = sys::preallocate(&file, blob_len)?;
            file.sync_all()?;
            Ok::<_, io::Error>(preallocated)
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("preallocation task panicked")))
        .context("fallocate", &data_path)?;
        if preallocated == sys::Preallocated::SparseFallback {
            tracing::warn!(
                %digest,
                "filesystem has no fallocate: data file is sparse, space is not reserved"
            );
        }
        sys::sync_dir(&temp)
            .await
            .context("fsync directory", &temp)?;
        compio::fs::rename(&temp, &dir)
            .await
            .context("rename", &temp)?;
        sys::sync_dir(&downloads)
            .await
            .context("fsync directory", &downloads)
    }
    .await;
    let Err(error) = result else {
        tracing::debug!(%digest, blob_len = metainfo.blob_len(), "download created");
        return Ok(());
    };
    if let Err(cleanup) = sys::remove_all(&temp).await {
        tracing::warn!(dir = %temp.display(), error = %cleanup, "could not remove a temporary download");
    }
    if error.is_no_space() {
        let bytes_needed = metainfo.blob_len()
            + metainfo.encoded_len() as u64
            + Bitfield::byte_len(metainfo.n_pieces() as usize) as u64;
        return Err(StoreError::NoSpace {
            digest: Box::new(digest),
            bytes_needed,
            bytes_available: sys::available_bytes(&downloads),
            path: dir,
        });
    }
    Err(error)
}
