//! Shards: one compio runtime per core, each on its own (pinned) thread, sharing nothing but
//! the engine's `Send + Sync` parts (store, counters, limiters, tracker client) and talking
//! through bounded channels made at start-up.
//!
//! Stripe `s` of every blob is owned by shard `s mod n_shards`: its swarm, its connections
//! and its piece writes live there. Every shard listens on the engine's port
//! (`SO_REUSEPORT`: the kernel spreads accepted connections over them); the accepting shard
//! reads the handshake, which names the (blob, stripe), and hands the socket (its file
//! descriptor, plus any bytes read past the handshake) to the owner.
//!
//! A blob's announcer runs on one shard, its *coordinator* (chosen from the digest), and
//! forwards each announce's peers to every shard that owns stripes of the blob.

pub(crate) mod announce;
mod blob;
mod conn;
mod stripe;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use compio::net::{TcpListener, TcpStream};
use event_listener::Event;
use shoal_proto::swarm::{Candidate, StripeGeometry, Swarm};
use shoal_proto::tracker::PeerInfo;
use shoal_proto::wire::Handshake;
use shoal_proto::{Bitfield, InfoHash, PieceIndex, StripeIndex};

pub(crate) use blob::{BlobIo, ShardBlob, Source};
use stripe::Stripe;

use crate::engine::{BlobShared, ConnPermit, EngineShared};
use crate::stats::{self, ShardCounters};
use crate::store::DownloadHandle;
use crate::transport::read_handshake;

/// What a shard is asked to do, by the engine's API or by another shard.
pub(crate) enum Command {
    /// Start this shard's stripes of a blob.
    StartBlob {
        shared: Arc<BlobShared>,
        source: SourceHandle,
        reply: flume::Sender<Result<(), String>>,
    },
    /// Peers from an announce of this blob.
    Peers {
        info_hash: InfoHash,
        peers: Arc<[PeerInfo]>,
    },
    /// An accepted connection whose handshake names a stripe this shard owns.
    Adopt {
        fd: OwnedFd,
        handshake: Handshake,
        received: Vec<u8>,
        permit: ConnPermit,
    },
    /// A local reader waits for this piece (of a stripe this shard owns).
    Wanted {
        info_hash: InfoHash,
        piece: PieceIndex,
    },
    /// Stop this shard's stripes of a blob and drop its handles.
    StopBlob {
        info_hash: InfoHash,
        reply: Option<flume::Sender<()>>,
    },
    /// Run a closure on the shard (it may spawn tasks there).
    Run(Box<dyn FnOnce(Rc<Shard>) + Send>),
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::StartBlob { .. } => "StartBlob",
            Command::Peers { .. } => "Peers",
            Command::Adopt { .. } => "Adopt",
            Command::Wanted { .. } => "Wanted",
            Command::StopBlob { .. } => "StopBlob",
            Command::Run(_) => "Run",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

/// How a shard opens its own handle on a blob's bytes.
#[derive(Debug, Clone)]
pub(crate) enum SourceHandle {
    Download(DownloadHandle),
    /// Complete in the store: open it there.
    Blob,
}

/// Bytes of piece buffers a shard lets its connections hold at once.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    capacity: usize,
    used: Cell<usize>,
    wake: Event,
}

/// Bytes taken from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct BudgetPermit<'a> {
    budget: &'a ByteBudget,
    bytes: usize,
}

impl Drop for BudgetPermit<'_> {
    fn drop(&mut self) {
        let budget = self.budget;
        budget.used.set(budget.used.get() - self.bytes);
        budget.wake.notify(usize::MAX);
    }
}

impl ByteBudget {
    fn new(capacity: usize) -> ByteBudget {
        ByteBudget {
            capacity,
            used: Cell::new(0),
            wake: Event::new(),
        }
    }

    /// Waits until `bytes` fit (or nothing else is held: a buffer larger than the whole
    /// budget is still granted, alone).
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit<'_> {
        loop {
            let used = self.used.get();
            if used == 0 || used + bytes <= self.capacity {
                self.used.set(used + bytes);
                return BudgetPermit {
                    budget: self,
                    bytes,
                };
            }
            let listener = self.wake.listen();
            let used = self.used.get();
            if used == 0 || used + bytes <= self.capacity {
                continue;
            }
            listener.await;
        }
    }
}

/// One shard's state. Lives on its thread only.
#[derive(Debug)]
pub(crate) struct Shard {
    pub id: usize,
    pub engine: Arc<EngineShared>,
    blobs: RefCell<HashMap<InfoHash, ShardBlob>>,
    pub recv_budget: ByteBudget,
}

/// Pause after a failed `accept` (out of file descriptors, for instance) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

impl Shard {
    pub fn new(id: usize, engine: Arc<EngineShared>) -> Shard {
        let budget = engine.config.receive_buffer_bytes_per_shard;
        Shard {
            id,
            engine,
            blobs: RefCell::new(HashMap::new()),
            recv_budget: ByteBudget::new(budget),
        }
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.engine.counters[self.id]
    }

    /// The shard's main loop: accept on `listener`, run commands until `Shutdown`.
    pub(crate) async fn run(
        self: Rc<Self>,
        listener: std::net::TcpListener,
        commands: flume::Receiver<Command>,
    ) {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                let shard = Rc::clone(&self);
                compio::runtime::spawn(async move { shard.accept_loop(listener).await }).detach();
            }
            Err(error) => tracing::error!(shard = self.id, %error, "cannot listen"),
        }
        if let (0, Some(interval)) = (self.id, self.engine.config.evict_interval) {
            let engine = Arc::clone(&self.engine);
            compio::runtime::spawn(engine.evict_periodically(interval)).detach();
        }
        while let Ok(command) = commands.recv_async().await {
            match command {
                Command::Shutdown => break,
                command => self.handle(command),
            }
        }
        for blob in self.blobs.borrow_mut().drain() {
            blob.1.stop();
        }
    }

    fn handle(self: &Rc<Self>, command: Command) {
        match command {
            Command::StartBlob {
                shared,
                source,
                reply,
            } => {
                let shard = Rc::clone(self);
                compio::runtime::spawn(async move {
                    let result = shard.start_blob(shared, source).await;
                    let _ = reply.send(result);
                })
                .detach();
            }
            Command::Peers { info_hash, peers } => self.peers(info_hash, &peers),
            Command::Adopt {
                fd,
                handshake,
                received,
                permit,
            } => self.adopt_fd(fd, handshake, received, permit),
            Command::Wanted { info_hash, piece } => self.wanted(&info_hash, piece),
            Command::StopBlob { info_hash, reply } => {
                self.stop_blob(&info_hash);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            Command::Run(f) => f(Rc::clone(self)),
            Command::Shutdown => {}
        }
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(shard = self.id, %error, "accept failed");
                    compio::runtime::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some(permit) = self.engine.try_conn_permit(None) else {
                tracing::debug!(%addr, "refused: host connection limit");
                continue;
            };
            let shard = Rc::clone(&self);
            compio::runtime::spawn(async move { shard.accepted(stream, addr, permit).await })
                .detach();
        }
    }

    /// Reads the handshake of an accepted connection and gives it to its owner shard.
    async fn accepted(self: Rc<Self>, mut stream: TcpStream, addr: SocketAddr, permit: ConnPermit) {
        let timeout = self.engine.config.accept_handshake_timeout;
        let (handshake, received) =
            match compio::runtime::time::timeout(timeout, read_handshake(&mut stream)).await {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    tracing::debug!(%addr, %error, "accepted connection: no handshake");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "accepted connection: handshake timed out");
                    return;
                }
            };
        let owner = self.engine.owner_of(handshake.stripe);
        if owner == self.id {
            self.adopt_stream(stream, handshake, received, permit);
            return;
        }
        let fd = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection over (dup failed)");
                return;
            }
        };
        drop(stream);
        let command = Command::Adopt {
            fd,
            handshake,
            received,
            permit,
        };
        if self.engine.senders[owner].try_send(command).is_err() {
            tracing::debug!(owner, "owner shard's queue is full: connection dropped");
            return;
        }
        stats::add(&self.counters().handoffs, 1);
    }

    fn adopt_fd(&self, fd: OwnedFd, handshake: Handshake, received: Vec<u8>, permit: ConnPermit) {
        let stream = std::net::TcpStream::from(fd);
        match TcpStream::from_std(stream) {
            Ok(stream) => self.adopt_stream(stream, handshake, received, permit),
            Err(error) => tracing::warn!(%error, "cannot adopt a handed-over connection"),
        }
    }

    fn adopt_stream(
        &self,
        stream: TcpStream,
        handshake: Handshake,
        received: Vec<u8>,
        permit: ConnPermit,
    ) {
        let stripe = {
            let blobs = self.blobs.borrow();
            blobs
                .get(&handshake.info_hash)
                .and_then(|blob| blob.stripes.get(&handshake.stripe.0))
                .map(Rc::clone)
        };
        let Some(stripe) = stripe else {
            tracing::debug!(info_hash = %handshake.info_hash, stripe = handshake.stripe.0, "connection for a swarm we are not in");
            return;
        };
        let Some(permit) = permit.with_blob(&stripe.io.shared) else {
            tracing::debug!(digest = %stripe.io.shared.digest, "refused: blob connection limit");
            return;
        };
        conn::adopt(stripe, stream, handshake, received, permit);
    }

    /// Opens this shard's handle on the blob and starts a swarm for each stripe it owns.
    async fn start_blob(
        self: &Rc<Self>,
        shared: Arc<BlobShared>,
        source: SourceHandle,
    ) -> Result<(), String> {
        let info_hash = shared.info_hash;
        if self.blobs.borrow().contains_key(&info_hash) {
            return Ok(());
        }
        let metainfo = &shared.metainfo;
        let (source, have) = match source {
            SourceHandle::Download(handle) => {
                let download = handle.open().await.map_err(|e| e.to_string())?;
                let have = download.bitfield();
                (Source::Download(download), have)
            }
            SourceHandle::Blob => {
                let blob = self
                    .engine
                    .store
                    .open_blob(&shared.digest)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{} is not in the store", shared.digest))?;
                (
                    Source::Blob(blob),
                    Bitfield::full(metainfo.n_pieces() as usize),
                )
            }
        };
        let io = Rc::new(BlobIo {
            shared: Arc::clone(&shared),
            source,
            addrs: RefCell::new(HashMap::new()),
        });
        let mut stripes = HashMap::new();
        for stripe in self.engine.stripes_of_shard(metainfo, self.id) {
            let geometry = StripeGeometry::of(metainfo, stripe);
            let pieces = metainfo.stripe_pieces(stripe);
            let mut stripe_have = Bitfield::new(geometry.n_pieces as usize);
            for piece in pieces.clone() {
                if have.get(piece as usize) {
                    stripe_have.set((piece - pieces.start) as usize);
                }
            }
            let mut config = self.engine.config.swarm.clone();
            config.seed = self.engine.swarm_seed(&info_hash, stripe);
            let swarm = Swarm::new(config, geometry, self.engine.peer_id, stripe_have)
                .map_err(|e| e.to_string())?;
            stripes.insert(
                stripe.0,
                Stripe::new(Rc::clone(self), Rc::clone(&io), swarm),
            );
        }
        if self.blobs.borrow().contains_key(&info_hash) || shared.is_stopped() {
            for stripe in stripes.values() {
                stripe.stop();
            }
            return Ok(());
        }
        self.blobs
            .borrow_mut()
            .insert(info_hash, ShardBlob { io, stripes });
        Ok(())
    }

    fn peers(&self, info_hash: InfoHash, peers: &[PeerInfo]) {
        let stripes: Vec<Rc<Stripe>> = {
            let blobs = self.blobs.borrow();
            let Some(blob) = blobs.get(&info_hash) else {
                return;
            };
            blob.io.learn_addrs(
                peers
                    .iter()
                    .filter(|p| p.id != self.engine.peer_id)
                    .map(|p| (p.id, p.addr)),
            );
            blob.stripes.values().map(Rc::clone).collect()
        };
        let candidates: Vec<Candidate> = peers
            .iter()
            .filter(|p| p.id != self.engine.peer_id)
            .map(|p| Candidate {
                peer: p.id,
                is_origin: p.is_origin,
            })
            .collect();
        for stripe in stripes {
            stripe.input(|state, now| state.swarm.handle_peers(now, &candidates));
        }
    }

    fn wanted(&self, info_hash: &InfoHash, piece: PieceIndex) {
        let stripe = {
            let blobs = self.blobs.borrow();
            blobs.get(info_hash).and_then(|blob| {
                let stripe = blob.io.shared.metainfo.stripe_of(piece);
                blob.stripes.get(&stripe.0).map(Rc::clone)
            })
        };
        if let Some(stripe) = stripe {
            stripe.input(|state, now| state.swarm.handle_wanted(now, piece));
        }
    }

    pub(crate) fn stop_blob(&self, info_hash: &InfoHash) {
        let blob = self.blobs.borrow_mut().remove(info_hash);
        if let Some(blob) = blob {
            blob.stop();
        }
    }

    /// Called after every stored piece: the shard that stores the last one completes the
    /// download.
    pub(crate) fn piece_stored(self: &Rc<Self>, io: &Rc<BlobIo>) {
        let Some(download) = io.download() else {
            return;
        };
        if download.n_stored() < io.shared.metainfo.n_pieces() || !io.shared.begin_completing() {
            return;
        }
        let (shard, download, shared) = (Rc::clone(self), download.clone(), Arc::clone(&io.shared));
        compio::runtime::spawn(async move {
            match download.complete().await {
                Ok(path) => {
                    tracing::info!(digest = %shared.digest, path = %path.display(), "download complete");
                    shared.set_complete();
                }
                Err(error) => shard.fail_blob(&shared, &error.to_string()),
            }
        })
        .detach();
    }

    /// Ends a download for good (disk full, failed fsync, failed completion): readers get
    /// the error, every shard stops its stripes, and the download's files are removed once
    /// the last handle is gone.
    pub(crate) fn fail_blob(self: &Rc<Self>, shared: &Arc<BlobShared>, reason: &str) {
        if !shared.set_failed(reason) {
            return;
        }
        tracing::error!(digest = %shared.digest, reason, "download failed");
        if let Some(blob) = self.blobs.borrow().get(&shared.info_hash)
            && let Some(download) = blob.io.download()
        {
            download.fail(reason.to_owned());
        }
        let engine = Arc::clone(&self.engine);
        let shared = Arc::clone(shared);
        compio::runtime::spawn(async move {
            engine.stop_blob_everywhere(&shared).await;
            engine.discard_when_free(&shared.digest).await;
        })
        .detach();
    }
}

/// Whether `stripe` belongs to shard `shard` of `n_shards`.
pub(crate) fn owner_of(stripe: StripeIndex, n_shards: usize) -> usize {
    stripe.0 as usize % n_shards
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::ByteBudget;

    #[test]
    fn the_receive_budget_bounds_bytes_held_and_grants_an_oversized_buffer_alone() {
        crate::test_runtime::run(async {
            let budget = Rc::new(ByteBudget::new(10));
            let a = budget.acquire(6).await;
            let b = budget.acquire(4).await;
            assert_eq!(budget.used.get(), 10);
            // A third waits until room is given back.
            let waiter = {
                let budget = Rc::clone(&budget);
                compio::runtime::spawn(async move {
                    let _c = budget.acquire(5).await;
                    budget.used.get()
                })
            };
            compio::runtime::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!waiter.is_finished(), "granted past the budget");
            drop(a);
            assert_eq!(waiter.await.unwrap(), 9);
            drop(b);
            assert_eq!(budget.used.get(), 0);
            // Larger than the whole budget: granted when nothing else is held.
            let big = budget.acquire(25).await;
            assert_eq!(budget.used.get(), 25);
            drop(big);
            assert_eq!(budget.used.get(), 0);
        });
    }
}
