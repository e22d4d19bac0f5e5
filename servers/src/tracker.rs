//! A minimal tracker server: peer discovery and metainfo over the tracker protocol
//! (`shoal_proto::tracker_wire`) on TCP.
//!
//! **Minimal on purpose:** one compio runtime on one thread holds one [`PeerStore`] and one
//! in-memory metainfo map. The full tracker (announce state sharded by info hash over one
//! runtime per core, metainfo fetched from the origins, a TOML config) comes later; the
//! protocol and the client (`shoal_engine::tracker`) do not change with it.
//!
//! What it does:
//! - Accepts at most [`TrackerServerConfig::connections_max`] connections at once; one more
//!   gets an `Error` response with code `Full` and is closed.
//! - Reads requests in a loop per connection (a connection may carry many, one at a time).
//!   A connection idle for [`TrackerServerConfig::request_timeout`], or whose response cannot
//!   be written within it, is closed.
//! - Announce: the peer is recorded at the connection's **source IP** and the announced port,
//!   never at an address the peer claims. Port 0 is refused.
//! - GetMetainfo / PutMetainfo: an in-memory map digest → canonical metainfo, bounded by count
//!   and bytes; the oldest stored entry goes first. A put is decoded with
//!   [`Metainfo::decode`] and refused (code `BadRequest`, with the reason) if it does not
//!   decode; it is stored under the digest inside it.
//! - A malformed frame gets an `Error` response (code `Malformed`, the reason) and the
//!   connection is closed; other connections are unaffected. Nothing here panics on input.
//! - [`PeerStore::expire`] runs every [`TrackerServerConfig::expire_interval`].
//!
//! Memory bound: the peer store's (see `TrackerConfig`), the metainfo map's
//! `metainfo_bytes_max`, and per connection one frame buffer, which grows only as bytes
//! arrive, up to one largest frame (about 32 MiB, for a PutMetainfo).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use compio::net::{TcpListener, TcpStream};
use shoal_engine::tracker::{FrameError, FrameReader, write_frame};
use shoal_proto::metainfo::Metainfo;
use shoal_proto::tracker::{PeerInfo, PeerStore, TrackerConfig, TrackerError};
use shoal_proto::tracker_wire::{self, Announce, ErrorCode, METAINFO_LEN_MAX, Request, Response};
use shoal_proto::{Digest, Instant};

/// Default listen address of `shoal tracker`.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7100);

/// Time allowed to write the refusal to a connection over the limit.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Pause after a failed accept (e.g. out of file descriptors) before accepting again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of a [`serve`] run. Defaults from [`TrackerServerConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerServerConfig {
    /// Where `shoal tracker` binds (ignored by [`serve`], which takes a bound listener).
    pub listen: SocketAddr,
    /// The handout policy and its bounds.
    pub tracker: TrackerConfig,
    /// Most metainfos kept; beyond it the oldest stored goes.
    pub metainfo_max: usize,
    /// Most bytes of metainfo kept; beyond it the oldest stored go. At least one largest
    /// metainfo ([`METAINFO_LEN_MAX`]).
    pub metainfo_bytes_max: usize,
    /// Most connections open at once.
    pub connections_max: usize,
    /// Longest wait for the next request on a connection (and for a response to be written);
    /// then the connection is closed.
    pub request_timeout: Duration,
    /// How often expired peers are swept out.
    pub expire_interval: Duration,
}

impl Default for TrackerServerConfig {
    /// Listen on 127.0.0.1:7100; the default handout policy; 10,000 metainfos and 1 GiB of
    /// them; 1,024 connections; 30 s request timeout (peers announce every 5 s, but on a
    /// fresh connection each time, so a connection is normally short); sweep every second.
    fn default() -> TrackerServerConfig {
        TrackerServerConfig {
            listen: LISTEN_DEFAULT,
            tracker: TrackerConfig::default(),
            metainfo_max: 10_000,
            metainfo_bytes_max: 1 << 30,
            connections_max: 1024,
            request_timeout: Duration::from_secs(30),
            expire_interval: Duration::from_secs(1),
        }
    }
}

impl TrackerServerConfig {
    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.tracker.validate().map_err(|e| e.to_string())?;
        if self.metainfo_max == 0 {
            return Err("tracker server config: metainfo_max must be positive".into());
        }
        if self.metainfo_bytes_max < METAINFO_LEN_MAX {
            return Err(format!(
                "tracker server config: metainfo_bytes_max must be at least {METAINFO_LEN_MAX} \
                 (one largest metainfo)"
            ));
        }
        if self.connections_max == 0 {
            return Err("tracker server config: connections_max must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return Err("tracker server config: request_timeout must be positive".into());
        }
        if self.expire_interval.is_zero() {
            return Err("tracker server config: expire_interval must be positive".into());
        }
        Ok(())
    }
}

/// Serves the tracker protocol on `listener` until accepting fails for good (it does not,
/// short of the runtime stopping): errors only on a config that does not validate
/// ([`io::ErrorKind::InvalidInput`]). `seed` drives the peer store's random samples. Must run
/// inside a compio runtime; spawns one task per connection and one for expiry.
pub async fn serve(
    listener: TcpListener,
    config: TrackerServerConfig,
    seed: u64,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let peers = PeerStore::new(config.tracker.clone(), seed)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let state = Rc::new(State {
        peers: RefCell::new(peers),
        metainfo: RefCell::new(MetainfoStore::new(
            config.metainfo_max,
            config.metainfo_bytes_max,
        )),
        started: std::time::Instant::now(),
        connections: Cell::new(0),
        config,
    });
    tracing::info!(addr = ?listener.local_addr().ok(), "tracker serving");

    let expiry = Rc::clone(&state);
    compio::runtime::spawn(async move {
        loop {
            compio::time::sleep(expiry.config.expire_interval).await;
            let progress = expiry.peers.borrow_mut().expire(expiry.now());
            if progress.peers_removed > 0 {
                tracing::debug!(?progress, "expired peers");
            }
        }
    })
    .detach();

    loop {
        let (stream, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                compio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if state.connections.get() >= state.config.connections_max {
            tracing::debug!(%source, "connection refused: at connections_max");
            refuse(stream, state.config.connections_max).await;
            continue;
        }
        let guard = ConnectionGuard::new(Rc::clone(&state));
        compio::runtime::spawn(async move {
            serve_connection(&guard.0, stream, source).await;
            drop(guard);
        })
        .detach();
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

/// Everything the connections share (one thread: no locks; no borrow is held across an
/// `await`).
struct State {
    config: TrackerServerConfig,
    peers: RefCell<PeerStore>,
    metainfo: RefCell<MetainfoStore>,
    /// Epoch of the peer store's clock.
    started: std::time::Instant,
    /// Connections open now.
    connections: Cell<usize>,
}

impl State {
    fn now(&self) -> Instant {
        let nanos = self.started.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The answer to one request from a connection whose source IP is `source_ip`.
    fn handle(&self, request: Request, source_ip: IpAddr) -> Response {
        match request {
            Request::Announce(announce) => self.announce(&announce, source_ip),
            Request::GetMetainfo { digest } => match self.metainfo.borrow().get(&digest) {
                Some(bytes) => Response::Metainfo(bytes.to_vec()),
                None => Response::NotFound,
            },
            Request::PutMetainfo { metainfo } => match Metainfo::decode(&metainfo) {
                Ok(decoded) => {
                    tracing::debug!(digest = %decoded.digest(), "metainfo stored");
                    self.metainfo
                        .borrow_mut()
                        .insert(decoded.digest(), metainfo);
                    Response::Ok
                }
                Err(error) => Response::error(
                    ErrorCode::BadRequest,
                    &format!("metainfo does not decode: {error}"),
                ),
            },
        }
    }

    fn announce(&self, announce: &Announce, source_ip: IpAddr) -> Response {
        if announce.port == 0 {
            return Response::error(ErrorCode::BadRequest, "announce port 0 is not dialable");
        }
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; hand out a.b.c.d.
        let addr = SocketAddr::new(source_ip.to_canonical(), announce.port);
        let peer = PeerInfo {
            id: announce.peer_id,
            addr,
            is_origin: announce.is_origin,
            is_complete: announce.is_complete,
        };
        let now = self.now();
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
}

/// Counts a connection as open for as long as it lives.
struct ConnectionGuard(Rc<State>);

impl ConnectionGuard {
    fn new(state: Rc<State>) -> ConnectionGuard {
        state.connections.set(state.connections.get() + 1);
        ConnectionGuard(state)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

async fn serve_connection(state: &State, mut stream: TcpStream, source: SocketAddr) {
    let timeout = state.config.request_timeout;
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
            Ok(Ok(request)) => (state.handle(request, source.ip()), false),
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

/// Digest → canonical metainfo, bounded by count and bytes; evicts the oldest stored first.
#[derive(Debug)]
struct MetainfoStore {
    count_max: usize,
    bytes_max: usize,
    /// The encoding and its insertion number.
    by_digest: HashMap<Digest, (u64, Vec<u8>)>,
    /// Insertion number → digest, oldest first.
    by_age: BTreeMap<u64, Digest>,
    bytes: usize,
    next_seq: u64,
}

impl MetainfoStore {
    fn new(count_max: usize, bytes_max: usize) -> MetainfoStore {
        MetainfoStore {
            count_max,
            bytes_max,
            by_digest: HashMap::new(),
            by_age: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    fn get(&self, digest: &Digest) -> Option<&[u8]> {
        self.by_digest
            .get(digest)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Stores (or replaces) the metainfo of `digest`, evicting the oldest beyond the bounds.
    /// `encoded.len() <= bytes_max` (a frame holds at most [`METAINFO_LEN_MAX`]; the config
    /// validation makes `bytes_max` at least that).
    fn insert(&mut self, digest: Digest, encoded: Vec<u8>) {
        debug_assert!(encoded.len() <= self.bytes_max);
        self.remove(&digest);
        while self.by_digest.len() >= self.count_max || self.bytes + encoded.len() > self.bytes_max
        {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, bytes)) = self.by_digest.remove(&oldest) {
                self.bytes -= bytes.len();
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += encoded.len();
        self.by_age.insert(seq, digest);
        self.by_digest.insert(digest, (seq, encoded));
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some((seq, bytes)) = self.by_digest.remove(digest) {
            self.by_age.remove(&seq);
            self.bytes -= bytes.len();
        }
    }
}

#[cfg(test)]
mod tests;
