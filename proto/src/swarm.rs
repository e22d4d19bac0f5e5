//! The swarm state machine: one instance per (blob, stripe) per host.
//!
//! A [`Swarm`] owns every connection this host has for one stripe of one blob, and decides
//! everything the protocol decides: whom to dial, which connections to accept and close, which
//! piece to request from whom (rarest first, seeded random tie-breaks), how many requests to
//! pipeline, when a request has timed out, when to enter endgame, which uploads to serve, and
//! whom to blacklist. It performs no I/O.
//!
//! # Driving it
//!
//! The driver (the engine, the simulator, the tests) feeds inputs through `handle_*` and then
//! drains outputs, in this order, after every input:
//!
//! 1. [`Swarm::poll_transmit`] until `None`: messages to write to connections. A
//!    [`Message::Piece`] transmit means "send this header, then the piece's bytes from the
//!    store"; when the last byte is written, call [`Swarm::handle_piece_sent`].
//! 2. [`Swarm::poll_event`] until `None`: dials to make, connections to close, completion.
//! 3. [`Swarm::poll_timeout`]: when to call [`Swarm::handle_timeout`] next.
//!
//! Connection life cycle: the driver reports every new transport connection with
//! [`Swarm::handle_connected`] (outbound ones only for peers the swarm asked it to dial), which
//! queues this side's handshake; the remote's handshake then arrives through
//! [`Swarm::handle_message`] like any other message. When the swarm closes a connection it
//! emits [`Event::Close`] and forgets it at once: the driver closes the transport and reports
//! nothing more for that handle. When the transport fails, the driver calls
//! [`Swarm::handle_disconnected`].
//!
//! Piece payloads: when a [`Message::Piece`] header arrives the driver asks
//! [`Swarm::handle_piece_header`] whether to take the payload. It then reads exactly `length`
//! bytes, checks them against the metainfo's SHA-256 (see `Metainfo::verify_piece`), writes
//! them to the store only if they match, and reports the verdict with
//! [`Swarm::handle_piece`]. A piece is announced (Have) only after that report, so nothing
//! unverified is ever announced or served.
//!
//! Handles are generation-checked: a stale [`ConnHandle`] (of a connection already closed) is
//! ignored by every `handle_*` method.

use std::collections::VecDeque;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::metainfo::Metainfo;
use crate::rng::Rng;
use crate::time::Instant;
use crate::types::{InfoHash, PeerId, PieceIndex, StripeIndex};
use crate::wire::{Handshake, Message, PieceHeader};

/// Tunables of one swarm. Every bound the state machine keeps comes from here.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// This host is a dedicated origin seeder: it never dials; peers keep at most
    /// `origin_connections_max` connections to origins.
    pub is_origin: bool,
    /// Agent connections this peer dials on its own until it has this many (inbound ones
    /// count too). Together with `connections_max` this makes the pseudo-random regular graph.
    pub dial_target: usize,
    /// Hard cap on connections of this (blob, stripe), inbound and outbound together.
    pub connections_max: usize,
    /// Connections to origins this peer keeps at most.
    pub origin_connections_max: usize,
    /// Ask origins only for pieces no connected agent has. Off (the default), an origin
    /// connection is asked like any other, rarest first: pieces nobody else has still go to
    /// it first, and it also carries common pieces whenever it has room. In the real swarm
    /// (`shoal-perf`, a quarter of `standard.toml`'s rates) the last-resort rule left the
    /// origin idle for the second half of the pull while the agents' uplinks were the
    /// bottleneck: p50/p99 efficiency 0.78–0.80 / 0.69–0.71 with it, 0.81–0.82 / 0.73
    /// without (perf/RESULTS.md).
    pub origin_last_resort: bool,
    /// Dials in flight at once.
    pub dials_in_flight_max: usize,
    /// Piece requests in flight per connection (the pipeline depth).
    pub requests_per_connection_max: usize,
    /// Piece requests in flight in this swarm, over all connections. Every request in flight
    /// is a flow sharing the host's downlink: fewer, faster flows mean a piece is verified and
    /// passed on sooner, which is what makes a fleet-wide pipeline short.
    pub requests_in_flight_max: usize,
    /// Requests a remote may have queued with us per connection; more are rejected.
    pub upload_queue_per_connection_max: usize,
    /// Pieces this swarm sends at the same time; the rest wait in FIFO order.
    pub uploads_active_max: usize,
    /// A request not answered within this time is re-requested elsewhere.
    pub request_timeout: Duration,
    /// Request timeouts a connection may cause before it is closed as useless.
    pub request_timeouts_max: u32,
    /// After a Reject or a timeout, a connection is not asked again for this long.
    pub reject_backoff: Duration,
    /// A connection with no request or piece in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A Keepalive is sent when nothing else was sent for this long.
    pub keepalive_interval: Duration,
    /// A connection that has not completed its handshake within this time is closed.
    pub handshake_timeout: Duration,
    /// In endgame, one piece is requested from at most this many connections at once.
    pub endgame_duplicates_max: usize,
    /// Peers remembered as dial candidates (from the tracker).
    pub candidates_max: usize,
    /// Blacklisted peers remembered (the oldest entry is forgotten first).
    pub blacklist_max: usize,
    /// First wait before re-dialing a candidate that failed or refused; doubles per failure.
    pub dial_backoff: Duration,
    /// Upper bound of that wait.
    pub dial_backoff_max: Duration,
    /// Seed of every random choice this swarm makes.
    pub seed: u64,
}

impl Default for SwarmConfig {
    fn default() -> SwarmConfig {
        SwarmConfig {
            is_origin: false,
            dial_target: 8,
            connections_max: 16,
            origin_connections_max: 1,
            origin_last_resort: false,
            dials_in_flight_max: 12,
            requests_per_connection_max: 1,
            requests_in_flight_max: 8,
            upload_queue_per_connection_max: 4,
            // Enough that the uplink stays busy while some downloaders are busy receiving
            // from others (measured with shoal-sim and shoal-perf, see perf/RESULTS.md).
            uploads_active_max: 8,
            request_timeout: Duration::from_secs(20),
            request_timeouts_max: 3,
            reject_backoff: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            endgame_duplicates_max: 2,
            candidates_max: 64,
            blacklist_max: 256,
            dial_backoff: Duration::from_millis(500),
            dial_backoff_max: Duration::from_secs(30),
            seed: 0,
        }
    }
}

impl SwarmConfig {
    /// The defaults for an origin seeder: many more connections, never dials.
    pub fn origin() -> SwarmConfig {
        SwarmConfig {
            is_origin: true,
            dial_target: 0,
            connections_max: 256,
            origin_connections_max: 0,
            // Few uploads at once, so that each piece leaves the origin fast and peers pass it
            // on early, but enough to fill an origin uplink several times a host's downlink
            // (measured with shoal-sim and shoal-perf, see perf/RESULTS.md).
            uploads_active_max: 12,
            idle_timeout: Duration::from_secs(10),
            ..SwarmConfig::default()
        }
    }

    /// Checks the relationships between the bounds.
    pub fn validate(&self) -> Result<(), SwarmConfigError> {
        let fail = |what: &'static str| Err(SwarmConfigError(what));
        if self.connections_max == 0 {
            return fail("connections_max must be at least 1");
        }
        if self.dial_target > self.connections_max {
            return fail("dial_target must not exceed connections_max");
        }
        if self.requests_per_connection_max == 0 || self.requests_in_flight_max == 0 {
            return fail("requests_per_connection_max and requests_in_flight_max must be >= 1");
        }
        if self.upload_queue_per_connection_max < self.requests_per_connection_max {
            return fail("upload_queue_per_connection_max must be >= requests_per_connection_max");
        }
        if self.uploads_active_max == 0 {
            return fail("uploads_active_max must be at least 1");
        }
        if self.endgame_duplicates_max == 0 || self.endgame_duplicates_max > 255 {
            return fail("endgame_duplicates_max must be in 1..=255");
        }
        if self.request_timeout.is_zero() || self.idle_timeout.is_zero() {
            return fail("request_timeout and idle_timeout must be non-zero");
        }
        if self.keepalive_interval.is_zero() || self.handshake_timeout.is_zero() {
            return fail("keepalive_interval and handshake_timeout must be non-zero");
        }
        if self.dial_backoff > self.dial_backoff_max {
            return fail("dial_backoff must not exceed dial_backoff_max");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid swarm config: {0}")]
pub struct SwarmConfigError(&'static str);

/// Which pieces of which blob this swarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeGeometry {
    pub info_hash: InfoHash,
    pub stripe: StripeIndex,
    /// Blob-wide index of the stripe's first piece.
    pub first_piece: u32,
    /// Pieces in the stripe (at least 1).
    pub n_pieces: u32,
    /// Length of every piece of the stripe but the last.
    pub piece_len: u32,
    /// Length of the stripe's last piece (shorter than `piece_len` only in the blob's last
    /// stripe).
    pub last_piece_len: u32,
}

impl StripeGeometry {
    /// The geometry of one stripe of a blob. `stripe` must be one of the metainfo's stripes
    /// (`Metainfo::contains_stripe`), and the blob must not be empty.
    pub fn of(metainfo: &Metainfo, stripe: StripeIndex) -> StripeGeometry {
        let pieces = metainfo.stripe_pieces(stripe);
        let last = PieceIndex(pieces.end - 1);
        StripeGeometry {
            info_hash: metainfo.info_hash(),
            stripe,
            first_piece: pieces.start,
            n_pieces: pieces.end - pieces.start,
            piece_len: metainfo.piece_len(),
            last_piece_len: metainfo.piece_len_of(last),
        }
    }

    fn local(&self, piece: PieceIndex) -> Option<usize> {
        let offset = piece.0.checked_sub(self.first_piece)?;
        (offset < self.n_pieces).then_some(offset as usize)
    }

    fn global(&self, local: usize) -> PieceIndex {
        PieceIndex(self.first_piece + local as u32)
    }

    /// Length in bytes of stripe-local piece `local`.
    pub fn piece_len_of(&self, local: usize) -> u32 {
        if local + 1 == self.n_pieces as usize {
            self.last_piece_len
        } else {
            self.piece_len
        }
    }
}

/// Names one connection of one swarm. Generation-checked: a handle outlives its connection
/// harmlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle {
    pub index: u32,
    pub generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// A peer the tracker told us about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub peer: PeerId,
    pub is_origin: bool,
}

/// The outcome of checking a piece's bytes against the metainfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceVerdict {
    /// SHA-256 matched; the bytes are in the store.
    Valid,
    /// SHA-256 did not match (or the length was wrong); nothing was stored.
    Invalid,
}

/// What the driver does with a piece payload announced by a [`PieceHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceDisposition {
    /// Read, verify, store, then report with [`Swarm::handle_piece`].
    Accept,
    /// Read and drop the payload (we cancelled it, or already have it); report nothing.
    Discard,
    /// The header broke the protocol; the swarm closed the connection (see `poll_event`).
    Closed,
}

/// Why the swarm closed a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The handshake named another blob or stripe, or carried a bitfield of the wrong length.
    WrongSwarm,
    /// The remote is ourselves.
    SelfConnection,
    /// We already have a connection to this peer.
    Duplicate,
    /// The peer is blacklisted.
    Blacklisted,
    /// At `connections_max` (or `origin_connections_max`).
    AtCapacity,
    /// The remote sent something the protocol forbids.
    ProtocolViolation(&'static str),
    /// The remote sent a piece whose hash did not match.
    BadPiece(PieceIndex),
    /// Both sides are complete: nothing to exchange.
    BothComplete,
    /// Nothing was exchanged for `idle_timeout`.
    Idle,
    /// The handshake did not arrive in time.
    HandshakeTimeout,
    /// Too many request timeouts.
    TooSlow,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a connection to this peer, then call `handle_connected(.., Outbound, Some(peer))`
    /// or `handle_dial_failed(peer)`.
    Dial(PeerId),
    /// Close this connection's transport. The swarm has already forgotten it.
    Close {
        conn: ConnHandle,
        peer: Option<PeerId>,
        reason: CloseReason,
    },
    /// This peer sent bad data and will not be connected again.
    Blacklisted(PeerId),
    /// Every piece of the stripe is verified and stored.
    Complete,
}

/// A message to write on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub conn: ConnHandle,
    pub message: Message,
}

/// Why a new connection was refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("swarm is at its connection limit")]
    AtCapacity,
    #[error("outbound connection to a peer this swarm did not ask to dial")]
    NotDialed,
    #[error("peer is blacklisted")]
    Blacklisted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    AwaitingHandshake,
    Established,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    local: usize,
    deadline: Instant,
    /// Its payload header was accepted: the remote answered, the bytes are on their way, and
    /// only `handle_piece` ends it (no timeout, no Cancel, no Reject).
    receiving: bool,
}

#[derive(Debug)]
struct Conn {
    generation: u32,
    direction: Direction,
    state: ConnState,
    /// Known from the dial (outbound) or the handshake (inbound).
    peer: Option<PeerId>,
    is_origin: bool,
    /// The remote's pieces of this stripe (stripe-local indexes).
    remote_has: Bitfield,
    /// Our requests on this connection, oldest first (≤ requests_per_connection_max).
    requests: Vec<InFlight>,
    /// Pieces we cancelled here whose payload may still arrive (≤ requests_per_connection_max).
    cancelled: Vec<usize>,
    /// Requests the remote made that wait in our upload FIFO or are being sent.
    uploads_queued: usize,
    /// No new request to this connection before this time; cleared by the first
    /// `handle_timeout` at or after it, and a wake-up until then.
    backoff_until: Option<Instant>,
    request_timeouts: u32,
    /// Pieces received or sent on this connection: a connection that moved none and closed
    /// makes its peer wait `dial_backoff` (doubling) before it is dialed again.
    pieces_exchanged: u32,
    opened_at: Instant,
    last_sent: Instant,
    /// Last request or piece in either direction.
    last_useful: Instant,
}

impl Conn {
    fn is_established(&self) -> bool {
        self.state == ConnState::Established
    }
}

#[derive(Debug, Clone)]
struct CandidateEntry {
    peer: PeerId,
    is_origin: bool,
    not_before: Instant,
    failures: u32,
    dialing: bool,
}

/// One upload waiting for a sending slot.
#[derive(Debug, Clone, Copy)]
struct UploadJob {
    conn: ConnHandle,
    local: usize,
    started: bool,
}

/// The per-(blob, stripe) state machine. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Swarm {
    config: SwarmConfig,
    geometry: StripeGeometry,
    local_peer: PeerId,
    rng: Rng,

    /// Pieces verified and stored here.
    have: Bitfield,
    /// In-flight requests per piece (more than one only in endgame).
    requested: Vec<u8>,
    /// Missing pieces with at least one request in flight.
    n_requested_missing: usize,
    /// How many established non-origin remotes have each piece.
    availability: Vec<u16>,

    conns: Vec<Option<Conn>>,
    free_slots: Vec<u32>,
    next_generation: u32,
    n_conns: usize,
    n_origin_conns: usize,

    candidates: Vec<CandidateEntry>,
    dials_in_flight: usize,
    /// Candidates being dialed, by kind (kept so that `dial` needs no scan).
    n_dialing_agents: usize,
    n_dialing_origins: usize,
    /// Requests in flight over all connections (≤ `requests_in_flight_max`).
    n_requests_in_flight: usize,
    /// No connection deadline falls before this (it may be early, never late): keeps
    /// `poll_timeout` O(1); `handle_timeout` recomputes it exactly.
    timer_lower_bound: Instant,
    /// When a candidate in back-off becomes dialable while we still want connections.
    dial_wakeup: Option<Instant>,
    blacklist: VecDeque<PeerId>,

    uploads: VecDeque<UploadJob>,
    uploads_active: usize,
    /// Uploads started per piece (origins serve the least-served piece first).
    pieces_served: Vec<u32>,

    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    completion_reported: bool,
    /// A piece a local reader is blocked on (stripe-local): requested before the rarest one
    /// whenever a connection offers it. At most one, the latest reported.
    wanted: Option<usize>,
}

impl Swarm {
    /// A swarm for one stripe, with the pieces already in the store (`have`, stripe-local,
    /// `geometry.n_pieces` long).
    pub fn new(
        config: SwarmConfig,
        geometry: StripeGeometry,
        local_peer: PeerId,
        have: Bitfield,
    ) -> Result<Swarm, SwarmConfigError> {
        config.validate()?;
        if geometry.n_pieces == 0
            || have.len() != geometry.n_pieces as usize
            || geometry.piece_len == 0
            || geometry.last_piece_len == 0
            || geometry.last_piece_len > geometry.piece_len
        {
            return Err(SwarmConfigError(
                "stripe must have pieces and `have` must match its length",
            ));
        }
        let n = geometry.n_pieces as usize;
        let rng = Rng::new(config.seed);
        Ok(Swarm {
            config,
            geometry,
            local_peer,
            rng,
            have,
            requested: vec![0; n],
            n_requested_missing: 0,
            availability: vec![0; n],
            conns: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 0,
            n_conns: 0,
            n_origin_conns: 0,
            candidates: Vec::new(),
            dials_in_flight: 0,
            n_dialing_agents: 0,
            n_dialing_origins: 0,
            n_requests_in_flight: 0,
            timer_lower_bound: Instant::NEVER,
            dial_wakeup: None,
            blacklist: VecDeque::new(),
            uploads: VecDeque::new(),
            uploads_active: 0,
            pieces_served: vec![0; n],
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            completion_reported: false,
            wanted: None,
        })
    }

    pub fn geometry(&self) -> &StripeGeometry {
        &self.geometry
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// Stripe-local bitfield of verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Open connections (handshaking or established).
    pub fn n_connections(&self) -> usize {
        self.n_conns
    }

    /// Established connections and the peers behind them.
    pub fn peers(&self) -> impl Iterator<Item = (ConnHandle, PeerId, bool)> + '_ {
        self.conns.iter().enumerate().filter_map(|(index, slot)| {
            let conn = slot.as_ref()?;
            let peer = conn.peer?;
            conn.is_established().then_some((
                ConnHandle {
                    index: index as u32,
                    generation: conn.generation,
                },
                peer,
                conn.is_origin,
            ))
        })
    }

    pub fn is_blacklisted(&self, peer: &PeerId) -> bool {
        self.blacklist.contains(peer)
    }

    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// Peers from a tracker announce. Unknown ones become dial candidates (bounded by
    /// `candidates_max`; when full, a random old idle candidate makes room).
    pub fn handle_peers(&mut self, now: Instant, peers: &[Candidate]) {
        for candidate in peers {
            if candidate.peer == self.local_peer || self.is_blacklisted(&candidate.peer) {
                continue;
            }
            if let Some(entry) = self
                .candidates
                .iter_mut()
                .find(|c| c.peer == candidate.peer)
            {
                if !entry.dialing {
                    entry.is_origin = candidate.is_origin;
                }
                continue;
            }
            let entry = CandidateEntry {
                peer: candidate.peer,
                is_origin: candidate.is_origin,
                not_before: now,
                failures: 0,
                dialing: false,
            };
            if self.candidates.len() < self.config.candidates_max {
                self.candidates.push(entry);
            } else if !self.candidates.is_empty() {
                let victim = self.rng.index(self.candidates.len());
                if !self.candidates[victim].dialing {
                    self.candidates[victim] = entry;
                }
            }
        }
        self.maintain(now);
    }

    /// A dial this swarm asked for could not connect.
    pub fn handle_dial_failed(&mut self, now: Instant, peer: PeerId) {
        self.dial_finished(now, peer, false);
        self.maintain(now);
    }

    /// A new transport connection for this swarm. Outbound: the dial of `peer` succeeded.
    /// Inbound: `peer` is `None` (it is learnt from the handshake). Queues our handshake.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        direction: Direction,
        peer: Option<PeerId>,
    ) -> Result<ConnHandle, ConnectError> {
        let mut is_origin = false;
        match (direction, peer) {
            (Direction::Outbound, Some(peer)) => {
                let Some(entry) = self.candidates.iter().find(|c| c.peer == peer && c.dialing)
                else {
                    return Err(ConnectError::NotDialed);
                };
                is_origin = entry.is_origin;
                if self.is_blacklisted(&peer) {
                    self.dial_finished(now, peer, false);
                    return Err(ConnectError::Blacklisted);
                }
                if self.n_conns >= self.config.connections_max {
                    self.dial_finished(now, peer, false);
                    return Err(ConnectError::AtCapacity);
                }
                self.dial_finished(now, peer, true);
            }
            (Direction::Outbound, None) => return Err(ConnectError::NotDialed),
            (Direction::Inbound, Some(peer)) if self.is_blacklisted(&peer) => {
                return Err(ConnectError::Blacklisted);
            }
            (Direction::Inbound, _) => {
                if self.n_conns >= self.config.connections_max {
                    return Err(ConnectError::AtCapacity);
                }
            }
        }
        let conn = Conn {
            generation: 0,
            direction,
            state: ConnState::AwaitingHandshake,
            peer,
            is_origin,
            remote_has: Bitfield::new(self.geometry.n_pieces as usize),
            requests: Vec::with_capacity(self.config.requests_per_connection_max),
            cancelled: Vec::new(),
            uploads_queued: 0,
            backoff_until: None,
            request_timeouts: 0,
            pieces_exchanged: 0,
            opened_at: now,
            last_sent: now,
            last_useful: now,
        };
        let handle = self.insert_conn(conn);
        if is_origin {
            self.n_origin_conns += 1;
        }
        let handshake = Handshake {
            info_hash: self.geometry.info_hash,
            stripe: self.geometry.stripe,
            peer_id: self.local_peer,
            is_origin: self.config.is_origin,
            bitfield: self.have.clone(),
        };
        self.send(now, handle, Message::Handshake(handshake));
        Ok(handle)
    }

    /// The transport of this connection failed or the remote closed it.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnHandle) {
        if self.conn(conn).is_some() {
            self.remove_conn(conn);
            self.maintain(now);
        }
    }

    /// A message arrived on `conn`. `Message::Piece` headers must go through
    /// [`Swarm::handle_piece_header`] instead.
    pub fn handle_message(&mut self, now: Instant, conn: ConnHandle, message: Message) {
        let Some(state) = self.conn(conn).map(|c| c.state) else {
            return;
        };
        match (state, message) {
            (ConnState::AwaitingHandshake, Message::Handshake(handshake)) => {
                self.on_handshake(now, conn, handshake);
            }
            (ConnState::AwaitingHandshake, _) => {
                self.close(
                    conn,
                    CloseReason::ProtocolViolation("message before handshake"),
                );
            }
            (ConnState::Established, Message::Handshake(_)) => {
                self.close(conn, CloseReason::ProtocolViolation("second handshake"));
            }
            (ConnState::Established, Message::Have(piece)) => {
                // Only this connection can have gained a piece worth requesting: no full
                // maintenance (Have is the most frequent message by far).
                self.on_have(conn, piece);
                if !self.is_complete() {
                    self.fill_connection(now, conn);
                }
                return;
            }
            (ConnState::Established, Message::Request(piece)) => self.on_request(now, conn, piece),
            (ConnState::Established, Message::Cancel(piece)) => self.on_cancel(now, conn, piece),
            (ConnState::Established, Message::Reject(piece)) => self.on_reject(now, conn, piece),
            (ConnState::Established, Message::Complete) => self.on_complete(conn),
            (ConnState::Established, Message::Keepalive) => {}
            (ConnState::Established, Message::Piece(header)) => {
                // Only reachable if the driver forgot handle_piece_header: same checks.
                let _ = self.handle_piece_header(now, conn, header);
                return;
            }
        }
        self.maintain(now);
    }

    /// A piece header arrived on `conn`: should the driver take its payload?
    pub fn handle_piece_header(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        header: PieceHeader,
    ) -> PieceDisposition {
        let Some(c) = self.conn(conn) else {
            return PieceDisposition::Discard;
        };
        if !c.is_established() {
            self.close(
                conn,
                CloseReason::ProtocolViolation("piece before handshake"),
            );
            return PieceDisposition::Closed;
        }
        let Some(local) = self.geometry.local(header.piece) else {
            self.close(conn, CloseReason::ProtocolViolation("piece outside stripe"));
            return PieceDisposition::Closed;
        };
        if header.length != self.geometry.piece_len_of(local) {
            self.close(conn, CloseReason::ProtocolViolation("piece length differs"));
            return PieceDisposition::Closed;
        }
        if let Some(position) = c
            .requests
            .iter()
            .position(|r| r.local == local && !r.receiving)
        {
            if let Some(c) = self.conn_mut(conn) {
                c.requests[position].receiving = true;
                c.last_useful = now;
            }
            return PieceDisposition::Accept;
        }
        if let Some(position) = c.cancelled.iter().position(|&p| p == local) {
            if let Some(c) = self.conn_mut(conn) {
                c.cancelled.swap_remove(position);
                c.last_useful = now;
            }
            return PieceDisposition::Discard;
        }
        self.close(conn, CloseReason::ProtocolViolation("piece not requested"));
        PieceDisposition::Closed
    }

    /// The payload of an accepted piece has been read and checked.
    pub fn handle_piece(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        piece: PieceIndex,
        verdict: PieceVerdict,
    ) {
        let Some(local) = self.geometry.local(piece) else {
            return;
        };
        let Some(c) = self.conn_mut(conn) else {
            // The connection was closed meanwhile; a valid piece is still ours.
            if verdict == PieceVerdict::Valid {
                self.on_piece_stored(now, local);
                self.maintain(now);
            }
            return;
        };
        let Some(position) = c
            .requests
            .iter()
            .position(|r| r.local == local && r.receiving)
        else {
            return; // not outstanding here (the driver reported it twice): ignore
        };
        c.requests.remove(position);
        c.last_useful = now;
        c.request_timeouts = 0;
        c.pieces_exchanged = c.pieces_exchanged.saturating_add(1);
        self.n_requests_in_flight -= 1;
        self.request_finished(local);
        match verdict {
            PieceVerdict::Valid => self.on_piece_stored(now, local),
            PieceVerdict::Invalid => self.close(conn, CloseReason::BadPiece(piece)),
        }
        self.maintain(now);
    }

    /// The last byte of an upload we were asked to send left on `conn`.
    pub fn handle_piece_sent(&mut self, now: Instant, conn: ConnHandle, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            return;
        };
        let Some(position) = self
            .uploads
            .iter()
            .position(|job| job.started && job.conn == conn && job.local == local)
        else {
            return;
        };
        self.uploads.remove(position);
        self.uploads_active -= 1;
        if let Some(c) = self.conn_mut(conn) {
            c.uploads_queued -= 1;
            c.last_useful = now;
            c.pieces_exchanged = c.pieces_exchanged.saturating_add(1);
        }
        self.maintain(now);
    }

    /// A local reader (streaming the blob in order) is blocked on `piece`: request it before
    /// any other as soon as a connection offers it (still never from an origin while another
    /// peer has it). Only the latest such piece is remembered; one that is stored, outside the
    /// stripe, or already here is ignored. Rarest-first governs every other request, so the
    /// swarm's piece diversity is untouched but for the one piece a reader waits for.
    pub fn handle_wanted(&mut self, now: Instant, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            return;
        };
        if self.have.get(local) {
            return;
        }
        self.wanted = Some(local);
        self.maintain(now);
    }

    /// Timers: request timeouts, idle connections, keepalives, handshake timeouts, dial
    /// back-off. Call at (or after) the instant [`Swarm::poll_timeout`] returned.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.conns.len() {
            let Some(c) = self.conns[index].as_ref() else {
                continue;
            };
            let handle = ConnHandle {
                index: index as u32,
                generation: c.generation,
            };
            if !c.is_established() {
                if now >= c.opened_at + self.config.handshake_timeout {
                    self.close(handle, CloseReason::HandshakeTimeout);
                }
                continue;
            }
            if now >= c.last_useful + self.config.idle_timeout {
                self.close(handle, CloseReason::Idle);
                continue;
            }
            if c.backoff_until.is_some_and(|until| until <= now)
                && let Some(c) = self.conn_mut(handle)
            {
                c.backoff_until = None;
            }
            let Some(c) = self.conn(handle) else { continue };
            let expired: Vec<usize> = c
                .requests
                .iter()
                .filter(|r| r.deadline <= now && !r.receiving)
                .map(|r| r.local)
                .collect();
            if !expired.is_empty() {
                self.on_requests_expired(now, handle, &expired);
                if self.conn(handle).is_none() {
                    continue;
                }
            }
            if let Some(c) = self.conn(handle)
                && now >= c.last_sent + self.config.keepalive_interval
            {
                self.send(now, handle, Message::Keepalive);
            }
        }
        self.timer_lower_bound = self.next_deadline_exact();
        self.maintain(now);
    }

    // ----------------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which [`Swarm::handle_timeout`] has work, if any. O(1): it may
    /// be early (then `handle_timeout` finds nothing due and moves it on), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.timer_lower_bound;
        if let Some(when) = self.dial_wakeup {
            next = next.min(when);
        }
        (next != Instant::NEVER).then_some(next)
    }

    /// The earliest connection deadline, computed from scratch.
    fn next_deadline_exact(&self) -> Instant {
        let mut next = Instant::NEVER;
        for c in self.conns.iter().flatten() {
            if !c.is_established() {
                next = next.min(c.opened_at + self.config.handshake_timeout);
                continue;
            }
            next = next.min(c.last_useful + self.config.idle_timeout);
            next = next.min(c.last_sent + self.config.keepalive_interval);
            if let Some(first) = c
                .requests
                .iter()
                .filter(|r| !r.receiving)
                .map(|r| r.deadline)
                .min()
            {
                next = next.min(first);
            }
            if let Some(until) = c.backoff_until {
                next = next.min(until);
            }
        }
        next
    }

    fn note_deadline(&mut self, at: Instant) {
        self.timer_lower_bound = self.timer_lower_bound.min(at);
    }

    // ----------------------------------------------------------------------------------
    // Message handlers
    // ----------------------------------------------------------------------------------

    fn on_handshake(&mut self, now: Instant, conn: ConnHandle, handshake: Handshake) {
        if handshake.info_hash != self.geometry.info_hash
            || handshake.stripe != self.geometry.stripe
            || handshake.bitfield.len() != self.geometry.n_pieces as usize
        {
            self.close(conn, CloseReason::WrongSwarm);
            return;
        }
        let peer = handshake.peer_id;
        if peer == self.local_peer {
            self.close(conn, CloseReason::SelfConnection);
            return;
        }
        if self.is_blacklisted(&peer) {
            self.close(conn, CloseReason::Blacklisted);
            return;
        }
        let Some(c) = self.conn(conn) else { return };
        if c.direction == Direction::Outbound && c.peer != Some(peer) {
            self.close(
                conn,
                CloseReason::ProtocolViolation("peer id differs from dialed"),
            );
            return;
        }
        let existing = self.conns.iter().enumerate().find_map(|(index, slot)| {
            let other = slot.as_ref()?;
            (index as u32 != conn.index && other.is_established() && other.peer == Some(peer))
                .then_some((
                    ConnHandle {
                        index: index as u32,
                        generation: other.generation,
                    },
                    other.direction,
                ))
        });
        if let Some((existing, existing_direction)) = existing {
            // Both sides dialed at once. Both keep the connection dialed by the smaller peer
            // id, so they agree on which one survives.
            let we_dial_the_keeper = self.local_peer < peer;
            let keeper_direction = if we_dial_the_keeper {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            if existing_direction == keeper_direction {
                self.close(conn, CloseReason::Duplicate);
                return;
            }
            self.close(existing, CloseReason::Duplicate);
        }
        let Some(c) = self.conn(conn) else { return };
        let was_origin = c.is_origin;
        if handshake.is_origin && !was_origin {
            if self.n_origin_conns >= self.config.origin_connections_max && !self.config.is_origin {
                self.close(conn, CloseReason::AtCapacity);
                return;
            }
            self.n_origin_conns += 1;
        } else if !handshake.is_origin && was_origin {
            self.n_origin_conns -= 1;
        }
        let we_are_complete = self.is_complete();
        let first_deadline = now + self.config.idle_timeout.min(self.config.keepalive_interval);
        self.note_deadline(first_deadline);
        let Some(c) = self.conn_mut(conn) else { return };
        c.state = ConnState::Established;
        c.peer = Some(peer);
        c.is_origin = handshake.is_origin;
        c.remote_has = handshake.bitfield;
        c.last_useful = now;
        let remote_complete = c.remote_has.is_full();
        if !c.is_origin {
            let ones: Vec<usize> = c.remote_has.iter_ones().collect();
            for local in ones {
                self.availability[local] = self.availability[local].saturating_add(1);
            }
        }
        if we_are_complete && remote_complete {
            self.close(conn, CloseReason::BothComplete);
        }
        // The handshake deadline is gone: make the timer exact again (handshakes are rare).
        self.timer_lower_bound = self.next_deadline_exact();
    }

    fn on_have(&mut self, conn: ConnHandle, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            self.close(conn, CloseReason::ProtocolViolation("have outside stripe"));
            return;
        };
        let Some(c) = self.conn_mut(conn) else { return };
        if !c.remote_has.set(local) {
            return; // repeated Have: harmless
        }
        let is_origin = c.is_origin;
        let remote_complete = c.remote_has.is_full();
        if !is_origin {
            self.availability[local] = self.availability[local].saturating_add(1);
        }
        if remote_complete && self.is_complete() {
            self.close(conn, CloseReason::BothComplete);
        }
    }

    fn on_complete(&mut self, conn: ConnHandle) {
        let Some(c) = self.conn_mut(conn) else { return };
        let missing: Vec<usize> = (0..c.remote_has.len())
            .filter(|&i| !c.remote_has.get(i))
            .collect();
        let is_origin = c.is_origin;
        for &local in &missing {
            c.remote_has.set(local);
        }
        if !is_origin {
            for local in missing {
                self.availability[local] = self.availability[local].saturating_add(1);
            }
        }
        if self.is_complete() {
            self.close(conn, CloseReason::BothComplete);
        }
    }

    fn on_request(&mut self, now: Instant, conn: ConnHandle, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            self.close(
                conn,
                CloseReason::ProtocolViolation("request outside stripe"),
            );
            return;
        };
        let have_it = self.have.get(local);
        let queue_max = self.config.upload_queue_per_connection_max;
        let Some(c) = self.conn_mut(conn) else { return };
        c.last_useful = now;
        if !have_it || c.uploads_queued >= queue_max {
            self.send(now, conn, Message::Reject(piece));
            return;
        }
        c.uploads_queued += 1;
        self.uploads.push_back(UploadJob {
            conn,
            local,
            started: false,
        });
        self.start_uploads(now);
    }

    fn on_cancel(&mut self, now: Instant, conn: ConnHandle, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            self.close(
                conn,
                CloseReason::ProtocolViolation("cancel outside stripe"),
            );
            return;
        };
        if let Some(position) = self
            .uploads
            .iter()
            .position(|job| !job.started && job.conn == conn && job.local == local)
        {
            self.uploads.remove(position);
            if let Some(c) = self.conn_mut(conn) {
                c.uploads_queued -= 1;
            }
            // Acknowledge, so that the requester can forget the cancelled request.
            self.send(now, conn, Message::Reject(piece));
        }
        // A Cancel for an upload already being sent is too late: the payload itself
        // acknowledges it.
    }

    fn on_reject(&mut self, now: Instant, conn: ConnHandle, piece: PieceIndex) {
        let Some(local) = self.geometry.local(piece) else {
            self.close(
                conn,
                CloseReason::ProtocolViolation("reject outside stripe"),
            );
            return;
        };
        let backoff = self.config.reject_backoff;
        let Some(c) = self.conn_mut(conn) else { return };
        if let Some(position) = c
            .requests
            .iter()
            .position(|r| r.local == local && !r.receiving)
        {
            c.requests.remove(position);
            c.backoff_until = Some(now + backoff);
            self.timer_lower_bound = self.timer_lower_bound.min(now + backoff);
            self.n_requests_in_flight -= 1;
            self.request_finished(local);
        } else if let Some(position) = c.cancelled.iter().position(|&p| p == local) {
            c.cancelled.swap_remove(position);
        }
    }

    fn on_requests_expired(&mut self, now: Instant, conn: ConnHandle, expired: &[usize]) {
        let backoff = self.config.reject_backoff;
        let timeouts_max = self.config.request_timeouts_max;
        let cancelled_max = self.config.requests_per_connection_max;
        let Some(c) = self.conn_mut(conn) else { return };
        c.request_timeouts += expired.len() as u32;
        c.backoff_until = Some(now + backoff);
        let too_slow = c.request_timeouts >= timeouts_max;
        let mut n_removed = 0;
        for &local in expired {
            if let Some(position) = c
                .requests
                .iter()
                .position(|r| r.local == local && !r.receiving)
            {
                c.requests.remove(position);
                n_removed += 1;
                // The payload may still come; take it then if we still lack it.
                if c.cancelled.len() < cancelled_max {
                    c.cancelled.push(local);
                }
            }
        }
        self.n_requests_in_flight -= n_removed;
        for &local in expired {
            self.request_finished(local);
            self.send(now, conn, Message::Cancel(self.geometry.global(local)));
        }
        self.note_deadline(now + backoff);
        if too_slow {
            self.close(conn, CloseReason::TooSlow);
        }
    }

    fn on_piece_stored(&mut self, now: Instant, local: usize) {
        if !self.have.set(local) {
            return; // endgame duplicate
        }
        if self.wanted == Some(local) {
            self.wanted = None;
        }
        if self.requested[local] > 0 {
            // Still requested elsewhere (endgame): no longer a missing requested piece.
            self.n_requested_missing -= 1;
        }
        let piece = self.geometry.global(local);
        let complete = self.is_complete();
        // Cancel duplicates elsewhere; announce to every remote that lacks the piece.
        let mut cancels = Vec::new();
        let mut haves = Vec::new();
        for (index, slot) in self.conns.iter_mut().enumerate() {
            let Some(c) = slot.as_mut() else { continue };
            if !c.is_established() {
                continue;
            }
            let handle = ConnHandle {
                index: index as u32,
                generation: c.generation,
            };
            // A copy already arriving is not cancelled: the remote would not stop it anyway.
            if let Some(position) = c
                .requests
                .iter()
                .position(|r| r.local == local && !r.receiving)
            {
                c.requests.remove(position);
                self.n_requests_in_flight -= 1;
                if c.cancelled.len() < self.config.requests_per_connection_max {
                    c.cancelled.push(local);
                }
                cancels.push(handle);
            }
            // On completion, tell every remote not known to be complete, not only those that
            // lack this piece: one that has it would otherwise never learn we are complete.
            if !c.remote_has.get(local) || (complete && !c.remote_has.is_full()) {
                haves.push(handle);
            }
        }
        for handle in cancels {
            self.request_finished(local);
            self.send(now, handle, Message::Cancel(piece));
        }
        for handle in haves {
            let message = if complete {
                Message::Complete
            } else {
                Message::Have(piece)
            };
            self.send(now, handle, message);
        }
        if complete {
            if !self.completion_reported {
                self.completion_reported = true;
                self.events.push_back(Event::Complete);
            }
            self.close_useless_when_complete();
        }
    }

    // ----------------------------------------------------------------------------------
    // Policies
    // ----------------------------------------------------------------------------------

    /// Runs after every input: start uploads, fill request pipelines, dial.
    fn maintain(&mut self, now: Instant) {
        self.start_uploads(now);
        if !self.is_complete() {
            self.fill_requests(now);
        }
        self.dial(now);
    }

    fn start_uploads(&mut self, now: Instant) {
        while self.uploads_active < self.config.uploads_active_max {
            let Some(position) = self.next_upload() else {
                return;
            };
            let job = &mut self.uploads[position];
            job.started = true;
            let (conn, local) = (job.conn, job.local);
            self.uploads_active += 1;
            self.pieces_served[local] = self.pieces_served[local].saturating_add(1);
            let header = PieceHeader {
                piece: self.geometry.global(local),
                length: self.geometry.piece_len_of(local),
            };
            self.send(now, conn, Message::Piece(header));
        }
    }

    /// The waiting upload to start next. Agents serve in arrival order. An origin serves the
    /// waiting request whose piece it has sent the fewest times (arrival order among equals):
    /// every piece leaves the origin once before any leaves twice, so the origin's bandwidth
    /// goes to pieces the swarm does not have yet.
    fn next_upload(&self) -> Option<usize> {
        let mut waiting = self
            .uploads
            .iter()
            .enumerate()
            .filter(|(_, job)| !job.started);
        if !self.config.is_origin {
            return waiting.next().map(|(position, _)| position);
        }
        waiting
            .min_by_key(|(position, job)| (self.pieces_served[job.local], *position))
            .map(|(position, _)| position)
    }

    /// Issues requests until the swarm has `requests_in_flight_max` in flight or no
    /// connection can take one. Connections are visited round-robin from a random start, one
    /// new request per connection per pass, so the requests spread over the peers.
    fn fill_requests(&mut self, now: Instant) {
        let n_slots = self.conns.len();
        if n_slots == 0 {
            return;
        }
        debug_assert_eq!(
            self.n_requests_in_flight,
            self.conns
                .iter()
                .flatten()
                .map(|c| c.requests.len())
                .sum::<usize>()
        );
        let mut in_flight = self.n_requests_in_flight;
        let start = self.rng.index(n_slots);
        // Each pass issues at least one request or stops, and in_flight is bounded: at most
        // requests_in_flight_max + 1 passes.
        for _pass in 0..=self.config.requests_in_flight_max {
            let mut issued = false;
            for step in 0..n_slots {
                if in_flight >= self.config.requests_in_flight_max {
                    return;
                }
                let index = (start + step) % n_slots;
                if self.request_one(now, index) {
                    in_flight += 1;
                    issued = true;
                }
            }
            if !issued {
                return;
            }
        }
    }

    /// Issues requests on one connection until it, or the swarm, is at its limit.
    fn fill_connection(&mut self, now: Instant, conn: ConnHandle) {
        if self.conn(conn).is_none() {
            return;
        }
        let index = conn.index as usize;
        // Bounded by requests_per_connection_max: request_one fails once the pipeline is full.
        while self.n_requests_in_flight < self.config.requests_in_flight_max
            && self.request_one(now, index)
        {}
    }

    /// Issues one request on connection `index` if it can take one and has a piece we want.
    fn request_one(&mut self, now: Instant, index: usize) -> bool {
        let Some(c) = self.conns[index].as_ref() else {
            return false;
        };
        // A cancelled request holds its pipeline slot until the remote acknowledges it (with
        // the payload or a Reject), which also bounds `cancelled`.
        if !c.is_established()
            || c.requests.len() + c.cancelled.len() >= self.config.requests_per_connection_max
            || c.backoff_until.is_some_and(|until| now < until)
        {
            return false;
        }
        let handle = ConnHandle {
            index: index as u32,
            generation: c.generation,
        };
        let Some(local) = self.pick(index) else {
            return false;
        };
        let deadline = now + self.config.request_timeout;
        let Some(c) = self.conns[index].as_mut() else {
            return false;
        };
        c.requests.push(InFlight {
            local,
            deadline,
            receiving: false,
        });
        c.last_useful = now;
        self.n_requests_in_flight += 1;
        self.note_deadline(deadline);
        if self.requested[local] == 0 {
            self.n_requested_missing += 1;
        }
        self.requested[local] += 1;
        let piece = self.geometry.global(local);
        self.send(now, handle, Message::Request(piece));
        true
    }

    /// The piece a reader waits for ([`Swarm::handle_wanted`]) if this connection has it;
    /// otherwise the rarest-first choice of a piece to request on connection `index`, with a seeded random
    /// tie-break (with `origin_last_resort`, origins are asked only for pieces no other
    /// connected peer has; availability counts agents only, so an origin is asked for the
    /// pieces nobody else has before any other either way). In endgame
    /// (every missing piece already requested), pieces already requested elsewhere qualify,
    /// up to `endgame_duplicates_max` requests each.
    fn pick(&mut self, index: usize) -> Option<usize> {
        let c = self.conns[index].as_ref()?;
        if let Some(local) = self.wanted
            && self.requested[local] == 0
            && c.remote_has.get(local)
            && !(c.is_origin && self.config.origin_last_resort && self.availability[local] > 0)
        {
            return Some(local);
        }
        let n_missing = self.have.len() - self.have.count_ones();
        let endgame = self.n_requested_missing >= n_missing;
        let duplicates_max = self.config.endgame_duplicates_max as u8;
        let mut best: Option<usize> = None;
        let mut best_availability = u16::MAX;
        let mut ties = 0u64;
        let origin_last_resort = c.is_origin && self.config.origin_last_resort;
        let remote_words = c.remote_has.words();
        let have_words = self.have.words();
        for (word_index, (&theirs, &mine)) in remote_words.iter().zip(have_words).enumerate() {
            let mut wanted = theirs & !mine;
            while wanted != 0 {
                let bit = wanted.trailing_zeros() as usize;
                wanted &= wanted - 1;
                let local = word_index * 64 + bit;
                let requested = self.requested[local];
                if requested > 0
                    && (!endgame
                        || requested >= duplicates_max
                        || c.requests.iter().any(|r| r.local == local)
                        || c.cancelled.contains(&local))
                {
                    continue;
                }
                let availability = self.availability[local];
                if origin_last_resort && availability > 0 {
                    continue;
                }
                // In endgame prefer the least-requested piece, then the rarest.
                let score = availability.saturating_add(u16::from(requested) << 12);
                if score < best_availability {
                    best = Some(local);
                    best_availability = score;
                    ties = 1;
                } else if score == best_availability {
                    ties += 1;
                    if self.rng.below(ties) == 0 {
                        best = Some(local);
                    }
                }
            }
        }
        best
    }

    fn wants_dials(&self) -> bool {
        !self.config.is_origin && !self.is_complete()
    }

    fn dial(&mut self, now: Instant) {
        self.dial_wakeup = None;
        if !self.wants_dials() {
            return;
        }
        let agents_wanted = self.config.dial_target;
        let mut n_agent_conns = self.n_conns - self.n_origin_conns;
        let mut n_origin_conns = self.n_origin_conns;
        let (dialing_agents, dialing_origins) = (self.n_dialing_agents, self.n_dialing_origins);
        debug_assert_eq!(
            dialing_agents + dialing_origins,
            self.candidates.iter().filter(|c| c.dialing).count()
        );
        n_agent_conns += dialing_agents;
        n_origin_conns += dialing_origins;
        let mut budget_total = self
            .config
            .connections_max
            .saturating_sub(self.n_conns + dialing_agents + dialing_origins);
        while self.dials_in_flight < self.config.dials_in_flight_max && budget_total > 0 {
            let want_agent = n_agent_conns < agents_wanted;
            let want_origin = n_origin_conns < self.config.origin_connections_max;
            if !want_agent && !want_origin {
                return;
            }
            let Some(position) = self.choose_candidate(now, want_agent, want_origin) else {
                // Nobody dialable now: wake up when the first backed-off candidate is.
                self.dial_wakeup = self
                    .candidates
                    .iter()
                    .filter(|c| {
                        !c.dialing
                            && c.not_before > now
                            && ((c.is_origin && want_origin) || (!c.is_origin && want_agent))
                    })
                    .map(|c| c.not_before)
                    .min();
                return;
            };
            let entry = &mut self.candidates[position];
            entry.dialing = true;
            if entry.is_origin {
                n_origin_conns += 1;
                self.n_dialing_origins += 1;
            } else {
                n_agent_conns += 1;
                self.n_dialing_agents += 1;
            }
            self.dials_in_flight += 1;
            budget_total -= 1;
            self.events.push_back(Event::Dial(entry.peer));
        }
    }

    /// A random dialable candidate of a wanted kind, not already connected.
    fn choose_candidate(&mut self, now: Instant, agent: bool, origin: bool) -> Option<usize> {
        let mut chosen = None;
        let mut seen = 0u64;
        for (position, entry) in self.candidates.iter().enumerate() {
            if entry.dialing
                || entry.not_before > now
                || (entry.is_origin && !origin)
                || (!entry.is_origin && !agent)
            {
                continue;
            }
            let connected = self
                .conns
                .iter()
                .flatten()
                .any(|c| c.peer == Some(entry.peer));
            if connected {
                continue;
            }
            seen += 1;
            if self.rng.below(seen) == 0 {
                chosen = Some(position);
            }
        }
        chosen
    }

    fn dial_finished(&mut self, now: Instant, peer: PeerId, connected: bool) {
        let Some(entry) = self
            .candidates
            .iter_mut()
            .find(|c| c.peer == peer && c.dialing)
        else {
            return;
        };
        entry.dialing = false;
        if entry.is_origin {
            self.n_dialing_origins -= 1;
        } else {
            self.n_dialing_agents -= 1;
        }
        self.dials_in_flight -= 1;
        // A successful dial does not reset the failure count: only a connection that moves
        // pieces does (see `remove_conn`), so a peer that accepts and then drops us at once
        // is backed off like one that refuses.
        if !connected {
            let wait = backoff_wait(&self.config, entry.failures);
            entry.failures += 1;
            entry.not_before = now + wait;
        }
        // Blacklisted while the dial was in flight: forget it now.
        if self.blacklist.contains(&peer) {
            self.candidates.retain(|c| c.peer != peer);
        }
    }

    /// When the stripe completes: close connections to complete remotes and origins (they
    /// have nothing for us and we have nothing for them).
    fn close_useless_when_complete(&mut self) {
        let useless: Vec<ConnHandle> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let c = slot.as_ref()?;
                (c.is_established() && (c.remote_has.is_full() || c.is_origin)).then_some(
                    ConnHandle {
                        index: index as u32,
                        generation: c.generation,
                    },
                )
            })
            .collect();
        for handle in useless {
            self.close(handle, CloseReason::BothComplete);
        }
    }

    fn add_to_blacklist(&mut self, peer: PeerId) {
        if self.blacklist.contains(&peer) {
            return;
        }
        if self.blacklist.len() >= self.config.blacklist_max {
            self.blacklist.pop_front();
        }
        self.blacklist.push_back(peer);
        self.candidates.retain(|c| c.peer != peer || c.dialing);
        self.events.push_back(Event::Blacklisted(peer));
    }

    // ----------------------------------------------------------------------------------
    // Bookkeeping
    // ----------------------------------------------------------------------------------

    fn request_finished(&mut self, local: usize) {
        if self.requested[local] == 0 {
            return;
        }
        self.requested[local] -= 1;
        if self.requested[local] == 0 && !self.have.get(local) {
            self.n_requested_missing -= 1;
        }
    }

    fn send(&mut self, now: Instant, conn: ConnHandle, message: Message) {
        if let Some(c) = self.conn_mut(conn) {
            c.last_sent = now;
            self.transmits.push_back(Transmit { conn, message });
        }
    }

    fn close(&mut self, conn: ConnHandle, reason: CloseReason) {
        let Some(c) = self.conn(conn) else { return };
        let peer = c.peer;
        let blamed = matches!(
            reason,
            CloseReason::ProtocolViolation(_) | CloseReason::BadPiece(_)
        )
        .then_some(peer)
        .flatten();
        if let Some(peer) = blamed {
            self.add_to_blacklist(peer);
        }
        self.remove_conn(conn);
        self.events.push_back(Event::Close { conn, peer, reason });
        if let Some(peer) = blamed {
            // Any other connection to the same peer goes too (a simultaneous open).
            let others: Vec<ConnHandle> = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(index, slot)| {
                    let c = slot.as_ref()?;
                    (c.peer == Some(peer)).then_some(ConnHandle {
                        index: index as u32,
                        generation: c.generation,
                    })
                })
                .collect();
            for other in others {
                self.close(other, CloseReason::Blacklisted);
            }
        }
    }

    fn remove_conn(&mut self, handle: ConnHandle) {
        let Some(slot) = self.conns.get_mut(handle.index as usize) else {
            return;
        };
        let Some(c) = slot.take() else { return };
        debug_assert_eq!(c.generation, handle.generation);
        self.free_slots.push(handle.index);
        self.n_conns -= 1;
        if let Some(peer) = c.peer
            && let Some(entry) = self
                .candidates
                .iter_mut()
                .find(|e| e.peer == peer && !e.dialing)
        {
            if c.pieces_exchanged > 0 {
                entry.failures = 0;
            } else {
                let wait = backoff_wait(&self.config, entry.failures);
                entry.failures += 1;
                entry.not_before = entry.not_before.max(c.opened_at + wait);
            }
        }
        if c.is_origin {
            self.n_origin_conns -= 1;
        }
        if c.is_established() && !c.is_origin {
            for local in c.remote_has.iter_ones() {
                self.availability[local] = self.availability[local].saturating_sub(1);
            }
        }
        self.n_requests_in_flight -= c.requests.len();
        for r in &c.requests {
            if self.requested[r.local] > 0 {
                self.requested[r.local] -= 1;
                if self.requested[r.local] == 0 && !self.have.get(r.local) {
                    self.n_requested_missing -= 1;
                }
            }
        }
        let started = self
            .uploads
            .iter()
            .filter(|job| job.conn == handle && job.started)
            .count();
        self.uploads_active -= started;
        self.uploads.retain(|job| job.conn != handle);
        self.transmits.retain(|t| t.conn != handle);
        // Its deadlines are gone (closes are rare enough for an exact recompute).
        self.timer_lower_bound = self.next_deadline_exact();
    }

    fn insert_conn(&mut self, mut conn: Conn) -> ConnHandle {
        self.note_deadline(conn.opened_at + self.config.handshake_timeout);
        self.next_generation = self.next_generation.wrapping_add(1);
        conn.generation = self.next_generation;
        self.n_conns += 1;
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.conns[index as usize] = Some(conn);
                index
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        ConnHandle {
            index,
            generation: self.next_generation,
        }
    }

    fn conn(&self, handle: ConnHandle) -> Option<&Conn> {
        self.conns
            .get(handle.index as usize)?
            .as_ref()
            .filter(|c| c.generation == handle.generation)
    }

    fn conn_mut(&mut self, handle: ConnHandle) -> Option<&mut Conn> {
        self.conns
            .get_mut(handle.index as usize)?
            .as_mut()
            .filter(|c| c.generation == handle.generation)
    }
}

/// How long a candidate waits before its next dial after `failures` failed or fruitless ones.
fn backoff_wait(config: &SwarmConfig, failures: u32) -> Duration {
    config
        .dial_backoff
        .saturating_mul(1 << failures.min(16))
        .min(config.dial_backoff_max)
}
