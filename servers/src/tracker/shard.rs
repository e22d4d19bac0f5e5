//! One tracker shard: its listener, its connections, its owned state (peer store, metainfo
//! cache, running origin fetches) and the queue through which other shards hand it the
//! requests it owns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use compio::net::{TcpListener, TcpStream};
use event_listener::Event;
use shoal_engine::tracker::{FrameError, FrameReader, write_frame};
use shoal_proto::tracker::{PeerInfo, PeerStore, TrackerError};
use shoal_proto::tracker_wire::{self, Announce, ErrorCode, Repository, Request, Response};
use shoal_proto::{Digest, Instant};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::metainfo::MetainfoStore;
use super::origins::Origins;
use super::route::Routed;
use super::{FETCHES_PER_SHARD_MAX, TrackerServerConfig};

/// Time allowed to write the refusal to a connection over the limit.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Pause after a failed accept (e.g. out of file descriptors) before accepting again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A request another shard accepted, for its owner, and where to send the answer.
#[derive(Debug)]
pub(crate) struct Job {
    routed: Routed,
    /// A one-slot channel: the answer never waits for room.
    reply: flume::Sender<Response>,
}

/// What every shard shares (`Send + Sync`).
#[derive(Debug)]
pub(crate) struct Shared {
    config: TrackerServerConfig,
    /// Each shard's queue of requests from the others; index = shard id.
    senders: Vec<flume::Sender<Job>>,
    /// Connections open now, over all shards (at most `config.connections_max`).
    connections: AtomicUsize,
    /// Epoch of the peer stores' clocks.
    started: std::time::Instant,
}

impl Shared {
    pub(crate) fn new(config: TrackerServerConfig, senders: Vec<flume::Sender<Job>>) -> Shared {
        debug_assert_eq!(senders.len(), config.shards);
        Shared {
            config,
            senders,
            connections: AtomicUsize::new(0),
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        let nanos = self.started.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// One origin fetch, shared by every request that missed the same digest meanwhile.
#[derive(Debug, Default)]
struct Fetch {
    /// The answer, once the fetch ended.
    answer: RefCell<Option<Response>>,
    done: Event,
}

impl Fetch {
    async fn wait(&self) -> Response {
        loop {
            if let Some(answer) = self.answer.borrow().as_ref() {
                return answer.clone();
            }
            let listener = self.done.listen();
            if self.answer.borrow().is_some() {
                continue;
            }
            listener.await;
        }
    }
}

/// What a fetch from the origins is for: a digest, asked for by a repository or none.
type FetchKey = (Digest, Option<Repository>);

/// A request answered at once, or after an origin fetch.
enum Handled {
    Now(Response),
    Wait(Rc<Fetch>),
}

/// One shard's state. Single-threaded: no borrow is held across an `await`.
#[derive(Debug)]
pub(crate) struct Shard {
    id: usize,
    shared: Arc<Shared>,
    peers: RefCell<PeerStore>,
    metainfo: RefCell<MetainfoStore>,
    origins: Option<Rc<Origins>>,
    /// Origin fetches running, by digest and the repository that asks (at most
    /// [`FETCHES_PER_SHARD_MAX`]). A request for another repository does not join a fetch:
    /// the answer may differ (one repository's backend has the blob, the other's not); the
    /// origins still fetch each blob from a backend once.
    fetches: RefCell<HashMap<FetchKey, Rc<Fetch>>>,
}

/// A started shard and its listener.
#[derive(Debug)]
pub(crate) struct Serving {
    shard: Rc<Shard>,
    listener: TcpListener,
}

impl Shard {
    /// Shard `id`'s state, serving `listener` (of this thread's runtime).
    pub(crate) fn start(
        id: usize,
        shared: Arc<Shared>,
        seed: u64,
        listener: TcpListener,
    ) -> io::Result<Serving> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let config = &shared.config;
        let shard_seed = xxh3_64_with_seed(&(id as u64).to_le_bytes(), seed);
        let peers = PeerStore::new(config.tracker.clone(), shard_seed)
            .map_err(|e| invalid(e.to_string()))?;
        let metainfo = MetainfoStore::new(
            config.metainfo_max_per_shard(),
            config.metainfo_bytes_max_per_shard(),
        );
        let origins = Origins::new(&config.origins)
            .map_err(|e| invalid(format!("tracker origins: {e}")))?
            .map(Rc::new);
        let shard = Rc::new(Shard {
            id,
            shared,
            peers: RefCell::new(peers),
            metainfo: RefCell::new(metainfo),
            origins,
            fetches: RefCell::new(HashMap::new()),
        });
        Ok(Serving { shard, listener })
    }
}

impl Serving {
    /// Accepts and serves connections, and answers the requests other shards send, until
    /// dropped.
    pub(crate) async fn run(self, jobs: flume::Receiver<Job>) -> io::Result<()> {
        let Serving { shard, listener } = self;
        compio::runtime::spawn(Rc::clone(&shard).expire_loop()).detach();
        compio::runtime::spawn(Rc::clone(&shard).job_loop(jobs)).detach();
        loop {
            let (stream, source) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(shard = shard.id, %error, "accept failed");
                    compio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let Some(guard) = ConnectionGuard::new(&shard.shared) else {
                tracing::debug!(%source, "connection refused: at connections_max");
                refuse(stream, shard.shared.config.connections_max).await;
                continue;
            };
            let shard = Rc::clone(&shard);
            compio::runtime::spawn(async move {
                shard.serve_connection(stream, source).await;
                drop(guard);
            })
            .detach();
        }
    }
}

impl Shard {
    async fn expire_loop(self: Rc<Self>) {
        loop {
            compio::time::sleep(self.shared.config.expire_interval).await;
            let progress = self.peers.borrow_mut().expire(self.shared.now());
            if progress.peers_removed > 0 {
                tracing::debug!(shard = self.id, ?progress, "expired peers");
            }
        }
    }

    /// Answers the requests other shards hand over. Ends when every sender is gone.
    async fn job_loop(self: Rc<Self>, jobs: flume::Receiver<Job>) {
        while let Ok(Job { routed, reply }) = jobs.recv_async().await {
            match self.handle(routed) {
                Handled::Now(response) => {
                    // The requester may have given up (timeout): nothing to do then.
                    let _ = reply.try_send(response);
                }
                Handled::Wait(fetch) => {
                    compio::runtime::spawn(async move {
                        let _ = reply.try_send(fetch.wait().await);
                    })
                    .detach();
                }
            }
        }
    }

    async fn serve_connection(self: &Rc<Self>, mut stream: TcpStream, source: SocketAddr) {
        let timeout = self.shared.config.request_timeout;
        let mut reader = FrameReader::new();
        let mut frame = Vec::new();
        loop {
            let next = reader.next(&mut stream, tracker_wire::parse_request);
            let (response, close_after) = match compio::time::timeout(timeout, next).await {
                Err(_) => {
                    tracing::debug!(%source, "connection idle too long; closing");
                    return;
                }
                Ok(Err(FrameError::Closed)) => return,
                Ok(Err(FrameError::Malformed(error))) => {
                    tracing::debug!(%source, %error, "malformed request; closing");
                    let message = format!("malformed request: {error}");
                    (Response::error(ErrorCode::Malformed, &message), true)
                }
                Ok(Err(error)) => {
                    tracing::debug!(%source, %error, "connection failed");
                    return;
                }
                Ok(Ok(request)) => match self.answer(request, source.ip(), timeout).await {
                    Some(response) => (response, false),
                    None => {
                        tracing::debug!(%source, "request not answered in time; closing");
                        return;
                    }
                },
            };
            frame.clear();
            tracker_wire::encode_response(&response, &mut frame);
            match compio::time::timeout(timeout, write_frame(&mut stream, frame)).await {
                Ok((Ok(()), buf)) => frame = buf,
                Ok((Err(error), _)) => {
                    tracing::debug!(%source, %error, "writing a response failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%source, "response not taken in time; closing");
                    return;
                }
            }
            if close_after {
                return;
            }
        }
    }

    /// The answer to `request`: here if this shard owns it, else from its owner. `None` if
    /// it takes longer than `timeout` (an answer at hand takes no timer).
    async fn answer(
        self: &Rc<Self>,
        request: Request,
        source_ip: IpAddr,
        timeout: Duration,
    ) -> Option<Response> {
        let routed = match Routed::new(request, source_ip) {
            Ok(routed) => routed,
            Err(refusal) => return Some(refusal),
        };
        let owner = routed.owner(self.shared.config.shards);
        if owner == self.id {
            return match self.handle(routed) {
                Handled::Now(response) => Some(response),
                Handled::Wait(fetch) => compio::time::timeout(timeout, fetch.wait()).await.ok(),
            };
        }
        compio::time::timeout(timeout, self.ask(owner, routed))
            .await
            .ok()
    }

    /// Hands `routed` to shard `owner` and waits for its answer.
    async fn ask(&self, owner: usize, routed: Routed) -> Response {
        let (reply, answer) = flume::bounded(1);
        let job = Job { routed, reply };
        if self.shared.senders[owner].send_async(job).await.is_err() {
            return Response::error(ErrorCode::Internal, &format!("shard {owner} has stopped"));
        }
        answer.recv_async().await.unwrap_or_else(|_| {
            Response::error(
                ErrorCode::Internal,
                &format!("shard {owner} dropped the request"),
            )
        })
    }

    /// Answers a request this shard owns.
    fn handle(self: &Rc<Self>, routed: Routed) -> Handled {
        debug_assert_eq!(routed.owner(self.shared.config.shards), self.id);
        match routed {
            Routed::Announce(announce, source_ip) => {
                Handled::Now(self.announce(&announce, source_ip))
            }
            Routed::Put(digest, encoded) => {
                tracing::debug!(%digest, shard = self.id, "metainfo stored");
                self.metainfo.borrow_mut().insert(digest, encoded);
                Handled::Now(Response::Ok)
            }
            Routed::Get(digest, repository) => match self.metainfo.borrow().get(&digest) {
                Some(bytes) => Handled::Now(Response::Metainfo(bytes.to_vec())),
                None => self.fetch(digest, repository),
            },
        }
    }

    fn announce(&self, announce: &Announce, source_ip: IpAddr) -> Response {
        debug_assert_ne!(announce.port, 0, "refused by Routed::new");
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; hand out a.b.c.d.
        let addr = SocketAddr::new(source_ip.to_canonical(), announce.port);
        let peer = PeerInfo {
            id: announce.peer_id,
            addr,
            is_origin: announce.is_origin,
            is_complete: announce.is_complete,
        };
        let now = self.shared.now();
        match self
            .peers
            .borrow_mut()
            .announce(now, announce.info_hash, peer)
        {
            Ok(response) => Response::Announce {
                interval: response.interval,
                peers: response.peers,
            },
            Err(error @ (TrackerError::Full { .. } | TrackerError::PeersFull { .. })) => {
                Response::error(ErrorCode::Full, &error.to_string())
            }
            Err(error @ TrackerError::InvalidConfig { .. }) => {
                Response::error(ErrorCode::Internal, &error.to_string())
            }
        }
    }

    /// A miss: joins the running fetch of `digest` for `repository`, or starts one.
    fn fetch(self: &Rc<Self>, digest: Digest, repository: Option<Repository>) -> Handled {
        let Some(origins) = &self.origins else {
            return Handled::Now(Response::NotFound);
        };
        let mut fetches = self.fetches.borrow_mut();
        let key = (digest, repository);
        if let Some(fetch) = fetches.get(&key) {
            return Handled::Wait(Rc::clone(fetch));
        }
        if fetches.len() >= FETCHES_PER_SHARD_MAX {
            return Handled::Now(Response::error(
                ErrorCode::Full,
                &format!("{FETCHES_PER_SHARD_MAX} metainfo fetches already running on this shard"),
            ));
        }
        let fetch = Rc::new(Fetch::default());
        fetches.insert(key.clone(), Rc::clone(&fetch));
        drop(fetches);
        // A task of its own, so that a requester giving up does not cancel it for the others.
        let (shard, origins, running) = (Rc::clone(self), Rc::clone(origins), Rc::clone(&fetch));
        compio::runtime::spawn(async move {
            let answer = match origins.fetch(&digest, key.1.as_ref()).await {
                Ok(Some(encoded)) => {
                    tracing::debug!(%digest, shard = shard.id, "metainfo fetched from an origin");
                    shard.metainfo.borrow_mut().insert(digest, encoded.clone());
                    Response::Metainfo(encoded)
                }
                Ok(None) => Response::NotFound,
                Err(failed) => {
                    tracing::warn!(%failed, "metainfo fetch failed");
                    Response::error(ErrorCode::Internal, &failed.brief())
                }
            };
            shard.fetches.borrow_mut().remove(&key);
            *running.answer.borrow_mut() = Some(answer);
            running.done.notify(usize::MAX);
        })
        .detach();
        Handled::Wait(fetch)
    }
}

/// Tells a connection over the limit why it is closed, then closes it.
async fn refuse(mut stream: TcpStream, connections_max: usize) {
    let response = Response::error(
        ErrorCode::Full,
        &format!("tracker is at its limit of {connections_max} connections"),
    );
    let mut frame = Vec::new();
    tracker_wire::encode_response(&response, &mut frame);
    let _ = compio::time::timeout(REFUSAL_WRITE_TIMEOUT, write_frame(&mut stream, frame)).await;
}

/// Counts a connection as open (over all shards) for as long as it lives.
struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    /// `None` at `connections_max`.
    fn new(shared: &Arc<Shared>) -> Option<ConnectionGuard> {
        let max = shared.config.connections_max;
        shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionGuard(Arc::clone(shared)))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
