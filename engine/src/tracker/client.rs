//! [`TrackerClient`]: announce, get and put metainfo, with failover across trackers.
//!
//! Trackers are ordered per blob by a rendezvous [`HashRing`] over the blob's digest (member
//! names are the trackers' addresses as strings), so every peer asks the same tracker first
//! for the same blob. Each call tries trackers in that order, at most
//! [`TrackerClientConfig::attempts_max`] of them, and fails over on anything that goes wrong
//! with one: connect error, timeout, I/O error, malformed or unexpected response, an error
//! response, or (for metainfo) an answer that does not describe the blob asked for. When all
//! fail, the error names every tracker tried and why.
//!
//! Each attempt opens a fresh TCP connection, sends one request, reads one response and
//! closes: simple, and cheap at one announce per blob every few seconds. (Keeping connections
//! open per tracker would need per-runtime state, since compio sockets are `!Send`.) The
//! client itself holds only addresses and configuration, so it is `Clone + Send + Sync` and
//! its methods work from any compio runtime.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;
use shoal_proto::Digest;
use shoal_proto::metainfo::{Metainfo, MetainfoError};
use shoal_proto::ring::{HashRing, RING_MEMBERS_MAX, RingError};
use shoal_proto::tracker::{AnnounceResponse, PeerInfo};
use shoal_proto::tracker_wire::{self, Announce, ErrorCode, Kind, Repository, Request, Response};

use super::frame::{FrameError, FrameReader, write_frame};

/// Default time allowed for one attempt (connect, send, receive).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// [`TrackerClient::put_metainfo`] stores the metainfo on this many trackers (the first ring
/// owners that accept it), so that it survives one tracker's loss.
pub const PUT_METAINFO_REPLICAS: usize = 2;

/// Where the trackers are and how hard to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerClientConfig {
    /// Every tracker of the group; at least one, at most [`RING_MEMBERS_MAX`], no duplicates.
    pub trackers: Vec<SocketAddr>,
    /// Time allowed for one attempt on one tracker (connect, send, receive).
    pub timeout: Duration,
    /// Most trackers tried per call, in ring order. At least 1; the default,
    /// [`RING_MEMBERS_MAX`], means all of them.
    pub attempts_max: usize,
}

impl Default for TrackerClientConfig {
    /// No trackers (which [`TrackerClient::new`] refuses: the list must come from the
    /// operator), 2 s per attempt, every tracker tried.
    fn default() -> TrackerClientConfig {
        TrackerClientConfig {
            trackers: Vec::new(),
            timeout: TIMEOUT_DEFAULT,
            attempts_max: RING_MEMBERS_MAX,
        }
    }
}

/// Why one attempt on one tracker failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("receive: {0}")]
    Receive(FrameError),
    #[error("tracker refused ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected {0} response")]
    Unexpected(Kind),
    #[error("undecodable metainfo: {0}")]
    BadMetainfo(MetainfoError),
    /// The tracker answered with the metainfo of another blob (`got`); the blob asked for
    /// is named by [`TrackerClientError::AllFailed`].
    #[error("answered with the metainfo of another blob, {got}")]
    WrongDigest { got: Box<Digest> },
}

/// A failed attempt: which tracker, and why.
#[derive(Debug)]
pub struct Attempt {
    pub tracker: SocketAddr,
    pub error: AttemptError,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerClientError {
    #[error("tracker client config: {0}")]
    Config(&'static str),
    #[error("tracker client config: {0}")]
    Ring(#[from] RingError),
    #[error("{operation} for {digest} failed on every tracker tried: {}", AttemptList(.attempts))]
    AllFailed {
        operation: &'static str,
        digest: Digest,
        attempts: Vec<Attempt>,
    },
}

/// Formats attempts as `addr: why; addr: why`.
struct AttemptList<'a>(&'a [Attempt]);

impl fmt::Display for AttemptList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", attempt.tracker, attempt.error)?;
        }
        Ok(())
    }
}

/// A client of a group of trackers. See the module documentation.
#[derive(Debug, Clone)]
pub struct TrackerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TrackerClientConfig,
    /// Members are `config.trackers` as strings.
    ring: HashRing,
}

impl TrackerClient {
    pub fn new(config: TrackerClientConfig) -> Result<TrackerClient, TrackerClientError> {
        if config.trackers.is_empty() {
            return Err(TrackerClientError::Config("the tracker list is empty"));
        }
        if config.attempts_max == 0 {
            return Err(TrackerClientError::Config(
                "attempts_max must be at least 1",
            ));
        }
        if config.timeout.is_zero() {
            return Err(TrackerClientError::Config("timeout must be positive"));
        }
        let ring = HashRing::new(config.trackers.iter().map(SocketAddr::to_string))?;
        Ok(TrackerClient {
            inner: Arc::new(Inner { config, ring }),
        })
    }

    pub fn config(&self) -> &TrackerClientConfig {
        &self.inner.config
    }

    /// The trackers a call about `digest` tries, in order.
    pub fn trackers_for(&self, digest: &Digest) -> Vec<SocketAddr> {
        let inner = &self.inner;
        inner
            .ring
            .owners_of_digest(digest, inner.config.attempts_max)
            .into_iter()
            .filter_map(|name| {
                inner
                    .config
                    .trackers
                    .iter()
                    .find(|addr| addr.to_string() == name)
                    .copied()
            })
            .collect()
    }

    /// Announces to the first tracker that answers; returns its sample of peers and the
    /// interval to announce again after.
    pub async fn announce(
        &self,
        announce: &Announce,
    ) -> Result<AnnounceResponse, TrackerClientError> {
        let request = Request::Announce(announce.clone());
        let mut attempts = Vec::new();
        for tracker in self.trackers_for(&announce.digest) {
            match self.exchange(tracker, &request).await {
                Ok(Response::Announce { interval, peers }) => {
                    return Ok(AnnounceResponse {
                        peers: without_self(peers, announce),
                        interval,
                    });
                }
                Ok(other) => attempts.push(unexpected(tracker, other)),
                Err(error) => attempts.push(Attempt { tracker, error }),
            }
        }
        Err(all_failed("announce", announce.digest, attempts))
    }

    /// The metainfo of `digest` from the first tracker that has it. `Ok(None)` when every
    /// tracker tried either answered that it does not have it or failed, and at least one
    /// answered. A metainfo that does not decode or describes another blob counts as a
    /// failure of that tracker (a lying tracker is never believed).
    pub async fn get_metainfo(
        &self,
        digest: &Digest,
    ) -> Result<Option<Metainfo>, TrackerClientError> {
        self.get_metainfo_for(digest, None).await
    }

    /// [`TrackerClient::get_metainfo`] on behalf of `repository` (the repository a client
    /// pulls the blob for): a tracker that misses asks the origins for it in that
    /// repository, so that the repository's storage backend can fill the miss.
    pub async fn get_metainfo_for(
        &self,
        digest: &Digest,
        repository: Option<&Repository>,
    ) -> Result<Option<Metainfo>, TrackerClientError> {
        let request = Request::GetMetainfo {
            digest: *digest,
            repository: repository.cloned(),
        };
        let mut attempts = Vec::new();
        let mut not_found = false;
        for tracker in self.trackers_for(digest) {
            match self.exchange(tracker, &request).await {
                Ok(Response::Metainfo(bytes)) => match check_metainfo(digest, &bytes) {
                    Ok(metainfo) => return Ok(Some(metainfo)),
                    Err(error) => attempts.push(Attempt { tracker, error }),
                },
                Ok(Response::NotFound) => not_found = true,
                Ok(other) => attempts.push(unexpected(tracker, other)),
                Err(error) => attempts.push(Attempt { tracker, error }),
            }
        }
        if not_found {
            return Ok(None);
        }
        Err(all_failed("get metainfo", *digest, attempts))
    }

    /// Stores `metainfo` on the first [`PUT_METAINFO_REPLICAS`] trackers in ring order that
    /// accept it. Succeeds if at least one did.
    pub async fn put_metainfo(&self, metainfo: &Metainfo) -> Result<(), TrackerClientError> {
        let digest = metainfo.digest();
        let request = Request::PutMetainfo {
            metainfo: metainfo.encode(),
        };
        let mut attempts = Vec::new();
        let mut stored = 0;
        for tracker in self.trackers_for(&digest) {
            match self.exchange(tracker, &request).await {
                Ok(Response::Ok) => {
                    stored += 1;
                    if stored == PUT_METAINFO_REPLICAS {
                        break;
                    }
                }
                Ok(other) => attempts.push(unexpected(tracker, other)),
                Err(error) => attempts.push(Attempt { tracker, error }),
            }
        }
        if stored > 0 {
            if !attempts.is_empty() {
                tracing::debug!(%digest, stored, failed = attempts.len(), "metainfo stored on fewer trackers than asked");
            }
            return Ok(());
        }
        Err(all_failed("put metainfo", digest, attempts))
    }

    /// One request and its response on a fresh connection to `tracker`, within the timeout.
    async fn exchange(
        &self,
        tracker: SocketAddr,
        request: &Request,
    ) -> Result<Response, AttemptError> {
        let timeout = self.inner.config.timeout;
        let result = compio::time::timeout(timeout, exchange_once(tracker, request)).await;
        let outcome = result.unwrap_or(Err(AttemptError::Timeout(timeout)));
        match &outcome {
            Ok(Response::Error { code, message }) => {
                tracing::debug!(%tracker, %code, message, "tracker refused a request");
            }
            Err(error) => tracing::debug!(%tracker, %error, "tracker attempt failed"),
            Ok(_) => {}
        }
        match outcome {
            Ok(Response::Error { code, message }) => Err(AttemptError::Refused { code, message }),
            other => other,
        }
    }
}

async fn exchange_once(tracker: SocketAddr, request: &Request) -> Result<Response, AttemptError> {
    let mut stream = TcpStream::connect(tracker)
        .await
        .map_err(AttemptError::Connect)?;
    // Best effort: a request is one small write anyway.
    let _ = stream.set_nodelay(true);
    let mut frame = Vec::new();
    tracker_wire::encode_request(request, &mut frame);
    let (result, _) = write_frame(&mut stream, frame).await;
    result.map_err(AttemptError::Send)?;
    FrameReader::new()
        .next(&mut stream, tracker_wire::parse_response)
        .await
        .map_err(AttemptError::Receive)
}

fn check_metainfo(asked: &Digest, bytes: &[u8]) -> Result<Metainfo, AttemptError> {
    let metainfo = Metainfo::decode(bytes).map_err(AttemptError::BadMetainfo)?;
    if metainfo.digest() != *asked {
        return Err(AttemptError::WrongDigest {
            got: Box::new(metainfo.digest()),
        });
    }
    Ok(metainfo)
}

/// A tracker never hands a peer itself; drop it should one do so anyway.
fn without_self(mut peers: Vec<PeerInfo>, announce: &Announce) -> Vec<PeerInfo> {
    peers.retain(|peer| peer.id != announce.peer_id);
    peers
}

fn unexpected(tracker: SocketAddr, response: Response) -> Attempt {
    Attempt {
        tracker,
        error: AttemptError::Unexpected(response.kind()),
    }
}

fn all_failed(
    operation: &'static str,
    digest: Digest,
    attempts: Vec<Attempt>,
) -> TrackerClientError {
    TrackerClientError::AllFailed {
        operation,
        digest,
        attempts,
    }
}
