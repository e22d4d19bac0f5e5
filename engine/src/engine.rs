//! The engine's API for the servers: start it, download (and read while downloading), seed,
//! remove, list, count. See the crate docs for the architecture.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::RuntimeBuilder;
use event_listener::Event;
use shoal_proto::metainfo::{Metainfo, MetainfoBuilder, MetainfoParams};
use shoal_proto::tracker_wire::Repository;
use shoal_proto::{Bitfield, Digest, InfoHash, PeerId, PieceIndex, StripeIndex};

use crate::config::{Driver, EngineConfig};
use crate::limit::RateLimiter;
use crate::shard::{self, Command, Shard, SourceHandle};
use crate::stats::{EngineStats, ShardCounters};
use crate::store::{BlobStream, DiskUsage, DownloadHandle, EvictionReport, Store, StoreError};
use crate::tracker::{TrackerClient, TrackerClientConfig};

/// What the engine's API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("engine start-up failed: {0}")]
    Startup(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tracker: {0}")]
    Tracker(String),
    #[error("{digest}: no tracker knows this blob")]
    NotFound { digest: Box<Digest> },
    #[error("{digest}: download failed: {reason}")]
    Failed { digest: Box<Digest>, reason: String },
    #[error("{digest}: removed while in use")]
    Removed { digest: Box<Digest> },
    #[error("reading {path}: {error}")]
    Input { path: PathBuf, error: String },
    #[error("the engine has shut down")]
    ShutDown,
    #[error("{limit} blobs are downloading already (swarm_blobs_max)")]
    TooManyBlobs { limit: usize },
}

/// The engine's clock: proto's [`shoal_proto::Instant`] counts nanoseconds since start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    pub fn now(&self) -> shoal_proto::Instant {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shoal_proto::Instant::from_nanos(nanos)
    }

    pub fn to_std(self, instant: shoal_proto::Instant) -> std::time::Instant {
        // NEVER and other far instants: a day ahead is as good as never for a timer that
        // is re-armed on every change.
        let nanos = instant.as_nanos().min(86_400_000_000_000);
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// Where a blob is in its life on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobState {
    /// Its swarm is running and pieces are missing.
    Downloading,
    /// Complete, and seeded.
    Seeding,
    /// Complete in the cache, not in any swarm.
    Cached,
    /// The download ended with this error.
    Failed(String),
}

/// One blob as [`Engine::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    pub digest: Digest,
    pub state: BlobState,
    pub blob_len: u64,
    pub n_pieces: u32,
    /// Pieces verified and stored here (all of them once complete).
    pub pieces_stored: u32,
    /// Pieces already stored when this process started the blob (a resumed download).
    pub pieces_resumed: u32,
    /// Pieces received from peers and stored by this process.
    pub pieces_fetched: u64,
    /// Of those, pieces that were already stored when the blob started (should be 0: a
    /// resumed download never fetches what it has).
    pub pieces_fetched_resumed: u64,
    /// Pieces received that failed their hash.
    pub pieces_failed: u64,
    pub bytes_uploaded: u64,
    /// Peer connections of this blob now.
    pub connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BlobPhase {
    Downloading,
    Complete,
    Failed(String),
    /// Removed or shut down.
    Stopped,
}

/// A blob in a swarm, shared by every shard (`Send + Sync`).
#[derive(Debug)]
pub(crate) struct BlobShared {
    pub digest: Digest,
    pub info_hash: InfoHash,
    pub metainfo: Metainfo,
    phase: Mutex<BlobPhase>,
    /// Notified on every phase change (the announcer re-announces, waiters look again).
    pub changed: Event,
    completing: AtomicBool,
    /// Pieces stored when the blob started in this process.
    initial: Bitfield,
    /// For readers: a handle on the download (`None` when seeding a cached blob).
    pub download: Option<DownloadHandle>,
    n_connections: AtomicUsize,
    connections_max: usize,
    /// When it entered its swarm here (the oldest complete blob stops seeding first).
    launched: std::time::Instant,
    pieces_fetched: AtomicU64,
    pieces_fetched_initial: AtomicU64,
    pieces_failed: AtomicU64,
    bytes_uploaded: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BlobShared {
    fn new(
        metainfo: Metainfo,
        initial: Bitfield,
        download: Option<DownloadHandle>,
        connections_max: usize,
    ) -> BlobShared {
        let phase = if download.is_some() {
            BlobPhase::Downloading
        } else {
            BlobPhase::Complete
        };
        BlobShared {
            digest: metainfo.digest(),
            info_hash: metainfo.info_hash(),
            metainfo,
            phase: Mutex::new(phase),
            changed: Event::new(),
            completing: AtomicBool::new(false),
            initial,
            download,
            n_connections: AtomicUsize::new(0),
            connections_max,
            launched: std::time::Instant::now(),
            pieces_fetched: AtomicU64::new(0),
            pieces_fetched_initial: AtomicU64::new(0),
            pieces_failed: AtomicU64::new(0),
            bytes_uploaded: AtomicU64::new(0),
        }
    }

    fn phase(&self) -> BlobPhase {
        lock(&self.phase).clone()
    }

    pub fn is_complete(&self) -> bool {
        self.phase() == BlobPhase::Complete
    }

    /// Failed or stopped: its swarms are (being) torn down.
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase(), BlobPhase::Failed(_) | BlobPhase::Stopped)
    }

    /// Only the first caller gets `true`: that one runs `Download::complete`.
    pub fn begin_completing(&self) -> bool {
        !self.completing.swap(true, Ordering::AcqRel)
    }

    pub fn set_complete(&self) {
        {
            let mut phase = lock(&self.phase);
            if *phase == BlobPhase::Downloading {
                *phase = BlobPhase::Complete;
            }
        }
        self.changed.notify(usize::MAX);
    }

    /// `true` for the call that moved it to failed.
    pub fn set_failed(&self, reason: &str) -> bool {
        let first = {
            let mut phase = lock(&self.phase);
            match *phase {
                BlobPhase::Downloading | BlobPhase::Complete => {
                    *phase = BlobPhase::Failed(reason.to_owned());
                    true
                }
                BlobPhase::Failed(_) | BlobPhase::Stopped => false,
            }
        };
        self.changed.notify(usize::MAX);
        first
    }

    fn set_stopped(&self) {
        *lock(&self.phase) = BlobPhase::Stopped;
        self.changed.notify(usize::MAX);
    }

    pub fn count_fetched(&self, piece: PieceIndex) {
        self.pieces_fetched.fetch_add(1, Ordering::Relaxed);
        if self.initial.get(piece.0 as usize) {
            self.pieces_fetched_initial.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_failed(&self) {
        self.pieces_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_uploaded(&self, bytes: u64) {
        self.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    fn status(&self, pieces_stored: u32) -> BlobStatus {
        let state = match self.phase() {
            BlobPhase::Downloading => BlobState::Downloading,
            BlobPhase::Complete => BlobState::Seeding,
            BlobPhase::Failed(reason) => BlobState::Failed(reason),
            BlobPhase::Stopped => BlobState::Cached,
        };
        BlobStatus {
            digest: self.digest,
            state,
            blob_len: self.metainfo.blob_len(),
            n_pieces: self.metainfo.n_pieces(),
            pieces_stored,
            pieces_resumed: self.initial.count_ones() as u32,
            pieces_fetched: self.pieces_fetched.load(Ordering::Relaxed),
            pieces_fetched_resumed: self.pieces_fetched_initial.load(Ordering::Relaxed),
            pieces_failed: self.pieces_failed.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            connections: self.n_connections.load(Ordering::Relaxed),
        }
    }
}

/// Counts one peer connection against the host's limit (and, once its blob is known, the
/// blob's) until dropped. `Send`: it travels with a handed-over connection.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    host: Arc<AtomicUsize>,
    blob: Option<Arc<BlobShared>>,
}

impl ConnPermit {
    /// Adds the blob's count; `None` (and the host's count released) at the blob's limit.
    pub fn with_blob(mut self, blob: &Arc<BlobShared>) -> Option<ConnPermit> {
        debug_assert!(self.blob.is_none());
        if !increment_below(&blob.n_connections, blob.connections_max) {
            return None;
        }
        self.blob = Some(Arc::clone(blob));
        Some(self)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.host.fetch_sub(1, Ordering::AcqRel);
        if let Some(blob) = &self.blob {
            blob.n_connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Increments `counter` unless it is at `max`.
fn increment_below(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// A caller waiting for another caller's start of the same download (its error, as text).
type StartWaiter = flume::Sender<Result<(), String>>;

/// What every shard shares (`Send + Sync`).
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub config: EngineConfig,
    pub n_shards: usize,
    pub store: Store,
    pub peer_id: PeerId,
    pub listen_addr: SocketAddr,
    pub senders: Vec<flume::Sender<Command>>,
    pub tracker: TrackerClient,
    pub egress: RateLimiter,
    pub ingress: RateLimiter,
    pub clock: Clock,
    pub counters: Vec<ShardCounters>,
    seed: u64,
    n_connections: Arc<AtomicUsize>,
    /// Blobs in a swarm (downloading, seeding, or failed and being torn down).
    blobs: Mutex<HashMap<Digest, Arc<BlobShared>>>,
    /// Downloads being started, with the callers waiting for the first one's result.
    starting: Mutex<HashMap<Digest, Vec<StartWaiter>>>,
}

impl EngineShared {
    pub fn owner_of(&self, stripe: StripeIndex) -> usize {
        shard::owner_of(stripe, self.n_shards)
    }

    /// The stripes of `metainfo` that shard `shard` owns.
    pub fn stripes_of_shard(
        &self,
        metainfo: &Metainfo,
        shard: usize,
    ) -> impl Iterator<Item = StripeIndex> + use<> {
        let n_shards = self.n_shards;
        (0..metainfo.n_stripes())
            .map(StripeIndex)
            .filter(move |&stripe| shard::owner_of(stripe, n_shards) == shard)
    }

    /// The shards that own at least one stripe of `metainfo`.
    pub fn shards_of_blob(&self, metainfo: &Metainfo) -> Range<usize> {
        0..self.n_shards.min(metainfo.n_stripes() as usize)
    }

    /// The shard that runs a blob's announcer.
    fn coordinator_of(&self, metainfo: &Metainfo) -> usize {
        let shards = self.shards_of_blob(metainfo);
        let hash = metainfo.info_hash();
        shards.start + (usize::from(hash.0[0]) % shards.len().max(1))
    }

    pub fn swarm_seed(&self, info_hash: &InfoHash, stripe: StripeIndex) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&info_hash.0[..8]);
        self.seed ^ u64::from_le_bytes(bytes) ^ u64::from(stripe.0).wrapping_mul(0x9e37_79b9)
    }

    /// A permit for one more connection, or `None` at the host's (or the blob's) limit.
    pub fn try_conn_permit(&self, blob: Option<&Arc<BlobShared>>) -> Option<ConnPermit> {
        if !increment_below(&self.n_connections, self.config.connections_max) {
            return None;
        }
        let permit = ConnPermit {
            host: Arc::clone(&self.n_connections),
            blob: None,
        };
        match blob {
            Some(blob) => permit.with_blob(blob),
            None => Some(permit),
        }
    }

    /// Removes a dead download's directory once nothing holds it any more (readers may
    /// still hold handles for a while): retried [`DISCARD_ATTEMPTS_MAX`] times, then left
    /// to start-up recovery.
    pub async fn discard_when_free(&self, digest: &Digest) {
        for _ in 0..DISCARD_ATTEMPTS_MAX {
            match self.store.discard_download(digest).await {
                Ok(()) => return,
                Err(StoreError::Busy { .. }) => {
                    compio::runtime::time::sleep(DISCARD_RETRY_PAUSE).await;
                }
                Err(error) => {
                    tracing::warn!(%digest, %error, "could not remove a dead download");
                    return;
                }
            }
        }
        tracing::warn!(%digest, "dead download still in use; start-up recovery will find it");
    }

    /// One eviction pass over the cache (the rules of [`StoreConfig`]), treating the blobs
    /// this engine seeds as unpinned: a chosen one stops seeding first (it leaves its swarm),
    /// then the store removes it unless a reader still holds it. With `incoming_bytes` > 0
    /// the watermark rule counts that much more as used (a download about to start).
    /// Downloads in progress are never touched.
    ///
    /// [`StoreConfig`]: crate::store::StoreConfig
    pub async fn evict_pass(&self, incoming_bytes: u64) -> EvictionReport {
        let seeded: HashMap<Digest, Arc<BlobShared>> = lock(&self.blobs)
            .values()
            .filter(|blob| blob.is_complete())
            .map(|blob| (blob.digest, Arc::clone(blob)))
            .collect();
        let releasable = seeded.keys().copied().collect();
        let usage = self.store.disk_usage().map(|usage| DiskUsage {
            used_bytes: usage.used_bytes.saturating_add(incoming_bytes),
            ..usage
        });
        let plan = self
            .store
            .plan_eviction(SystemTime::now(), usage, &releasable);
        let mut stopped = Vec::new();
        for (digest, reason) in &plan.chosen {
            if let Some(blob) = seeded.get(digest) {
                tracing::info!(%digest, ?reason, "stops seeding to be evicted");
                blob.set_stopped();
                self.stop_blob_everywhere(blob).await;
                stopped.push(*digest);
            }
        }
        // The blobs hold their downloads' handles, which pin them; so do the tasks of the
        // swarm's connections until they notice the stop, soon after. A reader's pin stays.
        drop(seeded);
        let deadline = std::time::Instant::now() + EVICT_RELEASE_WAIT_MAX;
        for digest in &stopped {
            while self.store.is_pinned(digest) && std::time::Instant::now() < deadline {
                compio::runtime::time::sleep(EVICT_RELEASE_POLL).await;
            }
        }
        let report = self.store.apply_eviction(plan).await;
        if !report.evicted.is_empty() || !report.failures.is_empty() {
            tracing::info!(
                evicted = report.evicted.len(),
                freed_bytes = report.freed_bytes,
                pinned_skipped = report.n_pinned_skipped,
                failures = report.failures.len(),
                "eviction pass"
            );
        }
        report
    }

    /// Runs [`EngineShared::evict_pass`] every `interval`, for as long as the shard that
    /// spawned it runs.
    pub(crate) async fn evict_periodically(self: Arc<Self>, interval: Duration) {
        loop {
            compio::runtime::time::sleep(interval).await;
            self.evict_pass(0).await;
        }
    }

    /// Stops the blob's stripes on every shard and waits until each has dropped them.
    pub async fn stop_blob_everywhere(&self, shared: &Arc<BlobShared>) {
        let mut replies = Vec::new();
        for owner in self.shards_of_blob(&shared.metainfo) {
            let (reply, wait) = flume::bounded(1);
            let command = Command::StopBlob {
                info_hash: shared.info_hash,
                reply: Some(reply),
            };
            if self.senders[owner].send_async(command).await.is_ok() {
                replies.push(wait);
            }
        }
        for wait in replies {
            let _ = wait.recv_async().await;
        }
        let mut blobs = lock(&self.blobs);
        if blobs
            .get(&shared.digest)
            .is_some_and(|b| Arc::ptr_eq(b, shared))
        {
            blobs.remove(&shared.digest);
        }
    }
}

/// A reader of a blob's bytes in order (see [`Engine::open`]): a [`BlobStream`] that also
/// tells the swarm which piece it is waiting for, so that piece is requested before the
/// rarest-first ones (a streaming client then gets its first bytes early, not whenever
/// piece 0 happens to arrive). Belongs to the runtime that opened it.
#[derive(Debug)]
pub struct BlobReader {
    stream: BlobStream,
    /// The swarm to tell, for a blob still downloading.
    swarm: Option<(Arc<EngineShared>, Arc<BlobShared>)>,
    /// The last piece reported (reported once).
    reported: Option<PieceIndex>,
}

impl BlobReader {
    /// Bytes of the range not yet read.
    pub fn remaining(&self) -> u64 {
        self.stream.remaining()
    }

    /// The next bytes in order, as [`BlobStream::next_chunk`]; an empty buffer at the end.
    pub async fn next_chunk(&mut self, buf: Vec<u8>) -> (Result<(), StoreError>, Vec<u8>) {
        if let Some((engine, blob)) = &self.swarm
            && let Some(piece) = self.stream.waiting_for()
            && self.reported != Some(piece)
        {
            self.reported = Some(piece);
            let owner = engine.owner_of(blob.metainfo.stripe_of(piece));
            let command = Command::Wanted {
                info_hash: blob.info_hash,
                piece,
            };
            // A full queue loses the hint only: the piece still comes, rarest first.
            let _ = engine.senders[owner].try_send(command);
        }
        self.stream.next_chunk(buf).await
    }
}

/// A running engine. Cheap to clone; every clone drives the same shards.
/// [`Engine::shutdown`] stops them.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Rounds a `discard_download` is retried while readers still hold the download.
const DISCARD_ATTEMPTS_MAX: u32 = 100;
const DISCARD_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long an eviction pass waits for a swarm it stopped to release the blob (its
/// connections' tasks end soon after the stop; a reader's pin does not go).
const EVICT_RELEASE_WAIT_MAX: Duration = Duration::from_secs(1);
const EVICT_RELEASE_POLL: Duration = Duration::from_millis(10);

/// Bytes read from a file per step while ingesting it.
const INGEST_READ_LEN: usize = 1 << 20;
/// Pieces written at once while ingesting (the store's group commit shares their fsyncs).
const INGEST_WRITERS: usize = 8;

impl Engine {
    /// Opens the store, binds the peer port, starts the shards. Blocks until every shard
    /// runs. Call it from any thread (it does not need a runtime).
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        config.validate().map_err(EngineError::Config)?;
        let n_shards = config.n_shards();
        let store = open_store(&config)?;
        let listeners = bind_listeners(config.listen, n_shards, config.tcp_congestion.as_deref())
            .map_err(|e| {
            EngineError::Startup(format!("listening on {}: {e}", config.listen))
        })?;
        let listen_addr = listeners[0]
            .local_addr()
            .map_err(|e| EngineError::Startup(e.to_string()))?;
        let tracker = TrackerClient::new(TrackerClientConfig {
            trackers: config.trackers.clone(),
            timeout: config.tracker_timeout,
            ..TrackerClientConfig::default()
        })
        .map_err(|e| EngineError::Config(e.to_string()))?;
        let random = random_bytes::<28>().map_err(|e| EngineError::Startup(e.to_string()))?;
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&random[..20]);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&random[20..]);
        let limiter = |limit: Option<u64>| match limit {
            Some(bytes_per_s) => {
                RateLimiter::new(bytes_per_s, crate::limit::default_burst_bytes(bytes_per_s))
            }
            None => RateLimiter::unlimited(),
        };
        let mut senders = Vec::with_capacity(n_shards);
        let mut receivers = Vec::with_capacity(n_shards);
        for _ in 0..n_shards {
            let (sender, receiver) = flume::bounded(config.shard_queue_len);
            senders.push(sender);
            receivers.push(receiver);
        }
        let shared = Arc::new(EngineShared {
            n_shards,
            store,
            peer_id: PeerId(peer_id),
            listen_addr,
            senders,
            tracker,
            egress: limiter(config.egress_bytes_per_s),
            ingress: limiter(config.ingress_bytes_per_s),
            clock: Clock {
                epoch: std::time::Instant::now(),
            },
            counters: (0..n_shards).map(|_| ShardCounters::default()).collect(),
            seed: u64::from_le_bytes(seed),
            n_connections: Arc::new(AtomicUsize::new(0)),
            blobs: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            config,
        });
        let n_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(n_shards);
        for (id, (listener, receiver)) in listeners.into_iter().zip(receivers).enumerate() {
            let shared = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shoal-shard-{id}"))
                .spawn(move || {
                    let runtime = match build_runtime(&shared.config, id, n_cpus) {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = ready.send(Err(format!("shard {id}: runtime: {error}")));
                            return;
                        }
                    };
                    let driver = runtime.driver_type();
                    let _ = ready.send(Ok(driver));
                    let shard = std::rc::Rc::new(Shard::new(id, shared));
                    runtime.block_on(shard.run(listener, receiver));
                })
                .map_err(|e| EngineError::Startup(e.to_string()))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let engine = Engine {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        };
        for _ in 0..n_shards {
            match ready_rx.recv() {
                Ok(Ok(driver)) => tracing::debug!(?driver, "shard running"),
                Ok(Err(error)) => {
                    engine.shutdown();
                    return Err(EngineError::Startup(error));
                }
                Err(_) => {
                    engine.shutdown();
                    return Err(EngineError::Startup("a shard thread died".into()));
                }
            }
        }
        tracing::info!(addr = %listen_addr, shards = n_shards, peer = %engine.shared.peer_id, "engine started");
        Ok(engine)
    }

    /// The peer port's address (with the port picked when the config said 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    pub fn n_shards(&self) -> usize {
        self.shared.n_shards
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Makes sure `digest` is here or on its way: a no-op for a cached blob or a running
    /// download; otherwise fetches its metainfo from the tracker and starts (or resumes) the
    /// download on every shard. Returns once the swarms run, not when the blob is complete.
    /// Concurrent calls for one digest start one download. Await it inside a compio runtime.
    pub async fn fetch(&self, digest: &Digest) -> Result<(), EngineError> {
        self.fetch_for(digest, None).await
    }

    /// [`Engine::fetch`] on behalf of `repository`, which the tracker passes on to the
    /// origins on a miss (their storage backends are picked by repository). Concurrent calls
    /// for one digest share the first one's metainfo request, whatever repository they name.
    pub async fn fetch_for(
        &self,
        digest: &Digest,
        repository: Option<&Repository>,
    ) -> Result<(), EngineError> {
        if self.shared.store.has_blob(digest) {
            return Ok(());
        }
        if let Some(blob) = self.blob(digest) {
            return match blob.phase() {
                BlobPhase::Failed(reason) => Err(EngineError::Failed {
                    digest: Box::new(*digest),
                    reason,
                }),
                _ => Ok(()),
            };
        }
        let waiter = {
            let mut starting = lock(&self.shared.starting);
            match starting.get_mut(digest) {
                Some(waiters) => {
                    let (sender, receiver) = flume::bounded(1);
                    waiters.push(sender);
                    Some(receiver)
                }
                None => {
                    starting.insert(*digest, Vec::new());
                    None
                }
            }
        };
        if let Some(waiter) = waiter {
            return match waiter.recv_async().await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(EngineError::Failed {
                    digest: Box::new(*digest),
                    reason,
                }),
                Err(_) => Err(EngineError::ShutDown),
            };
        }
        let result = self.start_download(digest, repository).await;
        let waiters = lock(&self.shared.starting)
            .remove(digest)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        result
    }

    async fn start_download(
        &self,
        digest: &Digest,
        repository: Option<&Repository>,
    ) -> Result<(), EngineError> {
        let shared = &self.shared;
        let metainfo = shared
            .tracker
            .get_metainfo_for(digest, repository)
            .await
            .map_err(|e| EngineError::Tracker(e.to_string()))?
            .ok_or_else(|| EngineError::NotFound {
                digest: Box::new(*digest),
            })?;
        if shared.config.evict_interval.is_some() {
            // Make room for the new blob now rather than at the next periodic pass (a
            // download resumed from disk has its space already).
            let incoming = if shared.store.has_download_data(digest) {
                0
            } else {
                metainfo.blob_len()
            };
            shared.evict_pass(incoming).await;
        }
        let download = match shared.store.begin_download(&metainfo).await {
            Ok(download) => download,
            Err(StoreError::AlreadyComplete { .. }) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let initial = download.bitfield();
        if initial.is_full() {
            // Every piece was stored before a restart: only the completion was missing.
            download.complete().await?;
            return Ok(());
        }
        let blob = Arc::new(BlobShared::new(
            metainfo,
            initial,
            Some(download.handle()),
            shared.config.connections_per_blob_max,
        ));
        let source = SourceHandle::Download(download.handle());
        drop(download);
        self.launch(blob, source).await
    }

    /// Starts the blob's stripes on their shards, then its announcer.
    async fn launch(&self, blob: Arc<BlobShared>, source: SourceHandle) -> Result<(), EngineError> {
        let shared = &self.shared;
        let evicted = {
            let mut blobs = lock(&shared.blobs);
            let evicted = if blobs.len() >= shared.config.swarm_blobs_max {
                // The complete blob that entered its swarm first makes room.
                let oldest = blobs
                    .values()
                    .filter(|b| b.is_complete())
                    .min_by_key(|b| b.launched)
                    .map(Arc::clone);
                let Some(oldest) = oldest else {
                    return Err(EngineError::TooManyBlobs {
                        limit: shared.config.swarm_blobs_max,
                    });
                };
                blobs.remove(&oldest.digest);
                Some(oldest)
            } else {
                None
            };
            blobs.insert(blob.digest, Arc::clone(&blob));
            evicted
        };
        if let Some(evicted) = evicted {
            tracing::info!(digest = %evicted.digest, "stops seeding (swarm_blobs_max)");
            evicted.set_stopped();
            shared.stop_blob_everywhere(&evicted).await;
        }
        let mut replies = Vec::new();
        for owner in shared.shards_of_blob(&blob.metainfo) {
            let (reply, wait) = flume::bounded(1);
            let command = Command::StartBlob {
                shared: Arc::clone(&blob),
                source: source.clone(),
                reply,
            };
            shared.senders[owner]
                .send_async(command)
                .await
                .map_err(|_| EngineError::ShutDown)?;
            replies.push(wait);
        }
        let mut failure = None;
        for wait in replies {
            match wait.recv_async().await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failure = Some(error),
                Err(_) => failure = Some("shard stopped".to_owned()),
            }
        }
        if let Some(reason) = failure {
            blob.set_failed(&reason);
            shared.stop_blob_everywhere(&blob).await;
            return Err(EngineError::Failed {
                digest: Box::new(blob.digest),
                reason,
            });
        }
        let coordinator = shared.coordinator_of(&blob.metainfo);
        let announced = Arc::clone(&blob);
        let command = Command::Run(Box::new(move |shard| {
            compio::runtime::spawn(shard::announce::run(shard, announced)).detach();
        }));
        shared.senders[coordinator]
            .send_async(command)
            .await
            .map_err(|_| EngineError::ShutDown)?;
        Ok(())
    }

    fn blob(&self, digest: &Digest) -> Option<Arc<BlobShared>> {
        lock(&self.shared.blobs).get(digest).map(Arc::clone)
    }

    /// A reader of `range` (the whole blob if `None`) of `digest`, which yields bytes in
    /// order as soon as their pieces are verified: from the cache, or from a download it
    /// starts (see [`Engine::fetch`]) or joins; the piece it waits for is fetched first.
    /// Await it inside a compio runtime; the reader belongs to that runtime.
    pub async fn open(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobReader, EngineError> {
        for _ in 0..2 {
            if let Some(blob) = self.shared.store.open_blob(digest).await? {
                let range = range.clone().unwrap_or(0..blob.len());
                return Ok(BlobReader {
                    stream: BlobStream::from_blob(blob, range)?,
                    swarm: None,
                    reported: None,
                });
            }
            self.fetch(digest).await?;
            let Some(blob) = self.blob(digest) else {
                continue;
            };
            if let Some(handle) = blob.download.clone() {
                let download = handle.open().await?;
                let range = range.clone().unwrap_or(0..download.metainfo().blob_len());
                return Ok(BlobReader {
                    stream: BlobStream::from_download(download, range)?,
                    swarm: Some((Arc::clone(&self.shared), blob)),
                    reported: None,
                });
            }
        }
        Err(EngineError::Removed {
            digest: Box::new(*digest),
        })
    }

    /// The length of `digest` in bytes, without reading or downloading any of it: from the
    /// cache, from a download in progress, or else from the metainfo the tracker holds
    /// (which starts nothing). [`EngineError::NotFound`] if no tracker knows the blob. What
    /// answers `HEAD /v2/<name>/blobs/<digest>` and resolves a `Range` before [`Engine::open`].
    pub async fn blob_len(&self, digest: &Digest) -> Result<u64, EngineError> {
        self.blob_len_for(digest, None).await
    }

    /// [`Engine::blob_len`] on behalf of `repository` (see [`Engine::fetch_for`]).
    pub async fn blob_len_for(
        &self,
        digest: &Digest,
        repository: Option<&Repository>,
    ) -> Result<u64, EngineError> {
        if let Some(len) = self.shared.store.blob_len(digest) {
            return Ok(len);
        }
        if let Some(blob) = self.blob(digest)
            && !blob.is_stopped()
        {
            return Ok(blob.metainfo.blob_len());
        }
        let metainfo = self
            .shared
            .tracker
            .get_metainfo_for(digest, repository)
            .await
            .map_err(|e| EngineError::Tracker(e.to_string()))?
            .ok_or_else(|| EngineError::NotFound {
                digest: Box::new(*digest),
            })?;
        Ok(metainfo.blob_len())
    }

    /// Waits until `digest` is complete in the cache (or its download failed).
    pub async fn wait_complete(&self, digest: &Digest) -> Result<(), EngineError> {
        loop {
            if self.shared.store.has_blob(digest) {
                return Ok(());
            }
            let Some(blob) = self.blob(digest) else {
                return Err(EngineError::Removed {
                    digest: Box::new(*digest),
                });
            };
            let listener = blob.changed.listen();
            match blob.phase() {
                BlobPhase::Complete => return Ok(()),
                BlobPhase::Failed(reason) => {
                    return Err(EngineError::Failed {
                        digest: Box::new(*digest),
                        reason,
                    });
                }
                BlobPhase::Stopped => {
                    return Err(EngineError::Removed {
                        digest: Box::new(*digest),
                    });
                }
                BlobPhase::Downloading => listener.await,
            }
        }
    }

    /// Copies a local file into the store as a complete blob (its digest is computed, or
    /// checked when given) and returns the digest. Does not seed it: see [`Engine::seed`].
    pub async fn ingest_file(
        &self,
        path: &Path,
        digest: Option<Digest>,
    ) -> Result<Digest, EngineError> {
        let owned = path.to_path_buf();
        let metainfo = compio::runtime::spawn_blocking(move || build_metainfo(&owned, digest))
            .await
            .map_err(|_| EngineError::Startup("metainfo task panicked".into()))??;
        let digest = metainfo.digest();
        if self.shared.store.has_blob(&digest) {
            return Ok(digest);
        }
        let download = match self.shared.store.begin_download(&metainfo).await {
            Ok(download) => download,
            Err(StoreError::AlreadyComplete { .. }) => return Ok(digest),
            Err(error) => return Err(error.into()),
        };
        let file = compio::fs::File::open(path)
            .await
            .map_err(|e| EngineError::Input {
                path: path.to_path_buf(),
                error: e.to_string(),
            })?;
        let next = std::cell::Cell::new(0u32);
        let n_pieces = metainfo.n_pieces();
        let writer = || async {
            loop {
                let piece = next.get();
                if piece >= n_pieces {
                    return Ok::<(), EngineError>(());
                }
                next.set(piece + 1);
                let piece = PieceIndex(piece);
                let len = metainfo.piece_len_of(piece) as usize;
                let buf = Vec::with_capacity(len);
                let compio::BufResult(read, buf) = compio::io::AsyncReadAtExt::read_exact_at(
                    &file,
                    buf,
                    metainfo.piece_offset(piece),
                )
                .await;
                read.map_err(|e| EngineError::Input {
                    path: path.to_path_buf(),
                    error: e.to_string(),
                })?;
                if !metainfo.verify_piece(piece, &buf) {
                    return Err(EngineError::Input {
                        path: path.to_path_buf(),
                        error: "file changed while it was being ingested".into(),
                    });
                }
                let (written, _) = download.write_piece(piece, buf).await;
                written?;
            }
        };
        let workers: Vec<_> = (0..INGEST_WRITERS).map(|_| writer()).collect();
        for result in futures_util::future::join_all(workers).await {
            result?;
        }
        download.complete().await?;
        Ok(digest)
    }

    /// Seeds a blob that is complete in the store: registers its metainfo with the tracker
    /// and joins its swarm. A no-op if it is already in a swarm. A tracker that does not take
    /// the metainfo (down, full) is logged and does not stop the seeding: trackers fetch a
    /// metainfo they lack from the origins, and the announcer keeps announcing.
    pub async fn seed(&self, digest: &Digest) -> Result<(), EngineError> {
        if let Some(blob) = self.blob(digest)
            && !blob.is_stopped()
        {
            return Ok(());
        }
        let metainfo = self
            .shared
            .store
            .blob_metainfo(digest)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                digest: Box::new(*digest),
            })?;
        if let Err(error) = self.shared.tracker.put_metainfo(&metainfo).await {
            tracing::warn!(%digest, %error, "no tracker took the metainfo; seeding anyway");
        }
        let n_pieces = metainfo.n_pieces() as usize;
        let blob = Arc::new(BlobShared::new(
            metainfo,
            Bitfield::full(n_pieces),
            None,
            self.shared.config.connections_per_blob_max,
        ));
        self.launch(blob, SourceHandle::Blob).await
    }

    /// Leaves the blob's swarm and deletes it from this host (complete or not). Readers of a
    /// complete blob keep reading; readers of a download get an error for the bytes that had
    /// not arrived. A download's files go once the last reader is dropped (within about ten
    /// seconds; otherwise start-up recovery finds them).
    pub async fn remove(&self, digest: &Digest) -> Result<(), EngineError> {
        if let Some(blob) = self.blob(digest) {
            blob.set_stopped();
            if let Some(download) = &blob.download {
                // Readers waiting for pieces get an error instead of waiting for ever.
                download.fail(format!("{digest} was removed"));
            }
            self.shared.stop_blob_everywhere(&blob).await;
        }
        match self.shared.store.remove_blob(digest).await {
            Ok(_) => {}
            Err(StoreError::Busy { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        // Readers may still hold the download: remove its files once they let go, in the
        // background (on shard 0).
        let engine = Arc::clone(&self.shared);
        let digest = *digest;
        let command = Command::Run(Box::new(move |_shard| {
            compio::runtime::spawn(async move { engine.discard_when_free(&digest).await }).detach();
        }));
        let _ = self.shared.senders[0].send_async(command).await;
        Ok(())
    }

    /// One eviction pass now (see `EngineConfig::evict_interval` for the periodic ones):
    /// blobs idle or old beyond the store's limits, then least recently used ones while the
    /// disk is above the high watermark. A seeded blob that is chosen stops seeding first;
    /// one a reader holds stays. Returns what was removed.
    pub async fn evict(&self) -> EvictionReport {
        self.shared.evict_pass(0).await
    }

    /// Every blob in a swarm, then every other blob of the cache.
    pub fn list(&self) -> Vec<BlobStatus> {
        let blobs: Vec<Arc<BlobShared>> = lock(&self.shared.blobs).values().cloned().collect();
        let mut listed: Vec<BlobStatus> = blobs
            .iter()
            .map(|blob| {
                let stored = if blob.is_complete() {
                    blob.metainfo.n_pieces()
                } else {
                    blob.download.as_ref().map_or(0, DownloadHandle::n_stored)
                };
                blob.status(stored)
            })
            .collect();
        for digest in self.shared.store.blobs() {
            if listed.iter().any(|b| b.digest == digest) {
                continue;
            }
            listed.push(BlobStatus {
                digest,
                state: BlobState::Cached,
                blob_len: 0,
                n_pieces: 0,
                pieces_stored: 0,
                pieces_resumed: 0,
                pieces_fetched: 0,
                pieces_fetched_resumed: 0,
                pieces_failed: 0,
                bytes_uploaded: 0,
                connections: 0,
            });
        }
        listed
    }

    /// The status of one blob in a swarm.
    pub fn status(&self, digest: &Digest) -> Option<BlobStatus> {
        self.list().into_iter().find(|b| &b.digest == digest)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats::collect(&self.shared.counters)
    }

    /// Stops every shard and waits for their threads. Other clones stop working.
    pub fn shutdown(&self) {
        for blob in lock(&self.shared.blobs).values() {
            blob.set_stopped();
            if let Some(download) = &blob.download {
                download.fail("the engine shut down".to_owned());
            }
        }
        for sender in &self.shared.senders {
            let _ = sender.send(Command::Shutdown);
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn open_store(config: &EngineConfig) -> Result<Store, EngineError> {
    let root = config.data_dir.clone();
    let store_config = config.store.clone();
    // On a thread of its own: the caller may itself be inside a runtime.
    let opened = std::thread::spawn(move || {
        let runtime = compio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime
            .block_on(Store::open(&root, store_config))
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| EngineError::Startup("store opening thread panicked".into()))?;
    let (store, report) = opened.map_err(EngineError::Startup)?;
    tracing::info!(
        blobs = report.n_blobs,
        resumable = report.resumable.len(),
        discarded = report.n_discarded,
        "store opened"
    );
    Ok(store)
}

/// One listener per shard on the same address (`SO_REUSEPORT`), the first fixing the port.
fn bind_listeners(
    addr: SocketAddr,
    n_shards: usize,
    tcp_congestion: Option<&str>,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(n_shards);
    let mut addr = addr;
    for _ in 0..n_shards {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        if let Some(name) = tcp_congestion {
            socket.set_tcp_congestion(name.as_bytes())?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn build_runtime(
    config: &EngineConfig,
    id: usize,
    n_cpus: usize,
) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    if config.driver == Driver::Poll {
        proactor.driver_type(DriverType::Poll);
    }
    let mut builder = RuntimeBuilder::new();
    builder.with_proactor(proactor);
    if config.pin_threads {
        builder.thread_affinity(std::collections::HashSet::from([id % n_cpus]));
    }
    builder.build()
}

/// Random bytes from the kernel (peer id, swarm seeds).
fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The metainfo of a local file (blocking: run on the blocking pool). Computes the SHA-256
/// first when no digest is given.
fn build_metainfo(path: &Path, digest: Option<Digest>) -> Result<Metainfo, EngineError> {
    let input = |error: std::io::Error| EngineError::Input {
        path: path.to_path_buf(),
        error: error.to_string(),
    };
    let for_each_chunk = |f: &mut dyn FnMut(&[u8]) -> Result<(), EngineError>| {
        let mut file = std::fs::File::open(path).map_err(input)?;
        let mut buf = vec![0u8; INGEST_READ_LEN];
        loop {
            let n = file.read(&mut buf).map_err(input)?;
            if n == 0 {
                return Ok::<(), EngineError>(());
            }
            f(&buf[..n])?;
        }
    };
    let digest = match digest {
        Some(digest) => digest,
        None => {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            for_each_chunk(&mut |chunk| {
                hasher.update(chunk);
                Ok(())
            })?;
            Digest::Sha256(hasher.finalize().into())
        }
    };
    let len = std::fs::metadata(path).map_err(input)?.len();
    let bad = |error: shoal_proto::metainfo::MetainfoError| EngineError::Input {
        path: path.to_path_buf(),
        error: error.to_string(),
    };
    let mut builder = MetainfoBuilder::new(digest, len, &MetainfoParams::default()).map_err(bad)?;
    for_each_chunk(&mut |chunk| builder.update(chunk).map_err(bad))?;
    builder.finish().map_err(bad)
}
