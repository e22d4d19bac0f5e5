//! The swarm state machine's rules, one at a time, through `Swarm`'s public API only.
//!
//! Two small drivers, in the spirit of quinn-proto's `Pair` test utility (no network model):
//!
//! - [`Rig`]: one swarm. The test plays every remote by hand (handshakes, messages, piece
//!   headers, verdicts) and moves a virtual clock. Every output is checked as it is drained
//!   ([`Rig::collect`]): requests only for pieces the remote announced and we lack, at most
//!   `requests_per_connection_max` unanswered per connection, at most `uploads_active_max`
//!   uploads between a `Message::Piece` transmit and its `handle_piece_sent`, the handshake first
//!   and only once, no output on connections the swarm closed, at most `connections_max`
//!   connections, at most one established connection per peer, `Event::Complete` at most once,
//!   and, after every `handle_timeout(now)`, a `poll_timeout` later than `now` (a driver that
//!   loops on timers makes progress). [`Pair::collect`] checks the same bounds for two swarms.
//! - [`Pair`]: two swarms joined by in-memory links. Each link is FIFO per direction; which
//!   link delivers next is FIFO overall or a seeded random choice. `step` jumps the clock to
//!   the next wake-up instead of sleeping.
//!
//! Tests that fail because of bugs in `swarm.rs` are at the bottom, behind `#[cfg(any())]`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use shoal_proto::swarm::{
    Candidate, CloseReason, ConnHandle, ConnectError, Direction, Event, PieceDisposition,
    PieceVerdict, StripeGeometry, Swarm, SwarmConfig, Transmit,
};
use shoal_proto::wire::{Handshake, Message, PieceHeader};
use shoal_proto::{Bitfield, InfoHash, Instant, PeerId, PieceIndex, Rng, StripeIndex};

const INFO_HASH: InfoHash = InfoHash([7; 32]);
const STRIPE: StripeIndex = StripeIndex(3);
/// Blob-wide index of the stripe's first piece: not zero, so that a stripe-local index used
/// where a blob-wide one belongs shows up.
const FIRST_PIECE: u32 = 40;
const PIECE_LEN: u32 = 16 * 1024;
const LAST_PIECE_LEN: u32 = 1000;
/// Peer id number of the swarm under test.
const ME: u64 = 1000;
/// Bound of every loop that waits for swarms to settle.
const STEPS_MAX: usize = 20_000;

// ------------------------------------------------------------------------------------------
// Vocabulary
// ------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn peer(n: u64) -> PeerId {
    PeerId::from_u64(n)
}

/// Blob-wide index of stripe-local piece `local`.
fn piece(local: usize) -> PieceIndex {
    PieceIndex(FIRST_PIECE + local as u32)
}

fn geometry(n_pieces: usize) -> StripeGeometry {
    StripeGeometry {
        info_hash: INFO_HASH,
        stripe: STRIPE,
        first_piece: FIRST_PIECE,
        n_pieces: n_pieces as u32,
        piece_len: PIECE_LEN,
        last_piece_len: LAST_PIECE_LEN,
    }
}

fn bits(n_pieces: usize, ones: &[usize]) -> Bitfield {
    let mut bits = Bitfield::new(n_pieces);
    for &one in ones {
        bits.set(one);
    }
    bits
}

fn all(n_pieces: usize) -> Vec<usize> {
    (0..n_pieces).collect()
}

fn agent(n: u64) -> Candidate {
    Candidate {
        peer: peer(n),
        is_origin: false,
    }
}

fn origin(n: u64) -> Candidate {
    Candidate {
        peer: peer(n),
        is_origin: true,
    }
}

/// The defaults with every timer distinct, so that a test can tell which one fired.
fn config() -> SwarmConfig {
    SwarmConfig {
        handshake_timeout: secs(3),
        request_timeout: secs(5),
        reject_backoff: ms(200),
        keepalive_interval: secs(15),
        idle_timeout: secs(40),
        dial_backoff: ms(500),
        dial_backoff_max: secs(4),
        ..SwarmConfig::default()
    }
}

fn is_violation(reason: &CloseReason) -> bool {
    matches!(reason, CloseReason::ProtocolViolation(_))
}

/// Stripe-local pieces requested on `conn`, in order.
fn requests(transmits: &[Transmit], conn: ConnHandle) -> Vec<usize> {
    transmits
        .iter()
        .filter(|t| t.conn == conn)
        .filter_map(|t| match t.message {
            Message::Request(p) => Some((p.0 - FIRST_PIECE) as usize),
            _ => None,
        })
        .collect()
}

fn all_requests(transmits: &[Transmit]) -> Vec<(ConnHandle, usize)> {
    transmits
        .iter()
        .filter_map(|t| match t.message {
            Message::Request(p) => Some((t.conn, (p.0 - FIRST_PIECE) as usize)),
            _ => None,
        })
        .collect()
}

fn sent_to(transmits: &[Transmit], conn: ConnHandle) -> Vec<Message> {
    transmits
        .iter()
        .filter(|t| t.conn == conn)
        .map(|t| t.message.clone())
        .collect()
}

fn closes(events: &[Event]) -> Vec<(ConnHandle, CloseReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Close { conn, reason, .. } => Some((*conn, reason.clone())),
            _ => None,
        })
        .collect()
}

fn dials(events: &[Event]) -> Vec<PeerId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Dial(p) => Some(*p),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Rig: one swarm, remotes played by hand
// ------------------------------------------------------------------------------------------

/// What the test knows about one connection of the swarm under test.
#[derive(Debug, Default)]
struct Remote {
    /// The pieces the swarm was told the remote has (`None` before the remote's handshake).
    has: Option<Bitfield>,
    /// Stripe-local pieces requested here and not yet answered by a payload header the swarm
    /// took (Accept or Discard) or by a Reject. A cancelled request stays until answered.
    outstanding: Vec<usize>,
    /// Pieces whose payload the swarm accepted and whose verdict is not reported yet.
    receiving: Vec<usize>,
    /// The swarm's handshake went out on this connection.
    greeted: bool,
    /// For an outbound connection: the peer dialed.
    dialed: Option<PeerId>,
}

#[derive(Debug)]
struct Rig {
    swarm: Swarm,
    now: Instant,
    /// Live connections, as far as the swarm's outputs tell.
    remotes: BTreeMap<ConnHandle, Remote>,
    /// Every handle ever handed out, live or not.
    handles: Vec<ConnHandle>,
    /// `Message::Piece` transmits not yet reported with `handle_piece_sent`.
    uploads_in_flight: Vec<(ConnHandle, PieceIndex)>,
    /// Peers the swarm asked to dial and the test has not answered.
    dials_in_flight: Vec<PeerId>,
    /// Outputs drained and not yet taken by the test.
    transmits: Vec<Transmit>,
    events: Vec<Event>,
    completions: usize,
}

impl Rig {
    fn new(config: SwarmConfig, n_pieces: usize, have: &[usize]) -> Rig {
        Rig::with_have(config, bits(n_pieces, have))
    }

    fn with_have(config: SwarmConfig, have: Bitfield) -> Rig {
        let swarm = Swarm::new(config, geometry(have.len()), peer(ME), have).unwrap();
        Rig {
            swarm,
            now: Instant::ZERO,
            remotes: BTreeMap::new(),
            handles: Vec::new(),
            uploads_in_flight: Vec::new(),
            dials_in_flight: Vec::new(),
            transmits: Vec::new(),
            events: Vec::new(),
            completions: 0,
        }
    }

    fn n_pieces(&self) -> usize {
        self.swarm.geometry().n_pieces as usize
    }

    fn local(&self, piece: PieceIndex) -> Option<usize> {
        let offset = piece.0.checked_sub(FIRST_PIECE)? as usize;
        (offset < self.n_pieces()).then_some(offset)
    }

    fn header_of(&self, local: usize) -> PieceHeader {
        PieceHeader {
            piece: piece(local),
            length: self.swarm.geometry().piece_len_of(local),
        }
    }

    fn handshake_of(&self, from: u64, ones: &[usize]) -> Handshake {
        Handshake {
            info_hash: INFO_HASH,
            stripe: STRIPE,
            peer_id: peer(from),
            is_origin: false,
            bitfield: bits(self.n_pieces(), ones),
        }
    }

    fn is_established(&self, conn: ConnHandle) -> bool {
        self.swarm.peers().any(|(handle, _, _)| handle == conn)
    }

    fn is_receiving(&self, conn: ConnHandle, p: PieceIndex) -> bool {
        let local = self.local(p);
        self.remotes
            .get(&conn)
            .is_some_and(|r| local.is_some_and(|l| r.receiving.contains(&l)))
    }

    fn outstanding(&self, conn: ConnHandle) -> Vec<usize> {
        self.remotes
            .get(&conn)
            .map(|r| r.outstanding.clone())
            .unwrap_or_default()
    }

    /// Drains the swarm's outputs in the documented order and checks every one.
    fn collect(&mut self) {
        let config = self.swarm.config().clone();
        let mut transmits = Vec::new();
        while let Some(transmit) = self.swarm.poll_transmit() {
            transmits.push(transmit);
        }
        let mut events = Vec::new();
        while let Some(event) = self.swarm.poll_event() {
            events.push(event);
        }
        // A close releases the connection's uploads at once, even when an upload it made room
        // for is drained before the Close event.
        let closed: Vec<ConnHandle> = closes(&events).into_iter().map(|(c, _)| c).collect();
        self.uploads_in_flight.retain(|(c, _)| !closed.contains(c));
        for t in &transmits {
            assert!(
                !closed.contains(&t.conn),
                "transmit on a connection closed: {t:?}"
            );
            let local = match &t.message {
                Message::Request(p) | Message::Piece(PieceHeader { piece: p, .. }) => Some(
                    self.local(*p)
                        .expect("transmit names a piece outside the stripe"),
                ),
                _ => None,
            };
            let we_have = local.map(|l| self.swarm.have().get(l));
            let remote = self
                .remotes
                .get_mut(&t.conn)
                .unwrap_or_else(|| panic!("transmit on unknown or closed {:?}", t.conn));
            assert_eq!(
                matches!(t.message, Message::Handshake(_)),
                !remote.greeted,
                "the handshake goes first, once: {t:?}"
            );
            remote.greeted = true;
            match &t.message {
                Message::Request(p) => {
                    let local = local.unwrap();
                    let has = remote
                        .has
                        .as_ref()
                        .expect("request before the remote's handshake");
                    assert!(has.get(local), "requested {p:?} the remote lacks");
                    assert_eq!(we_have, Some(false), "requested {p:?} we already have");
                    remote.outstanding.push(local);
                    assert!(
                        remote.outstanding.len() <= config.requests_per_connection_max,
                        "{} requests unanswered on {:?}: {:?}",
                        remote.outstanding.len(),
                        t.conn,
                        remote.outstanding
                    );
                }
                Message::Piece(header) => {
                    assert_eq!(we_have, Some(true), "serving {header:?} we lack");
                    let len = self.swarm.geometry().piece_len_of(local.unwrap());
                    assert_eq!(header.length, len, "{header:?}");
                    self.uploads_in_flight.push((t.conn, header.piece));
                    assert!(
                        self.uploads_in_flight.len() <= config.uploads_active_max,
                        "{} uploads in flight",
                        self.uploads_in_flight.len()
                    );
                }
                _ => {}
            }
        }
        for event in &events {
            match event {
                Event::Close { conn, .. } => {
                    assert!(
                        self.remotes.remove(conn).is_some(),
                        "close of unknown or closed {conn:?}"
                    );
                    self.uploads_in_flight.retain(|(c, _)| c != conn);
                }
                Event::Dial(p) => {
                    assert_ne!(*p, self.swarm.local_peer(), "dialing ourselves");
                    assert!(!self.swarm.is_blacklisted(p), "dialing blacklisted {p:?}");
                    assert!(!self.dials_in_flight.contains(p), "dialing {p:?} twice");
                    self.dials_in_flight.push(*p);
                    assert!(self.dials_in_flight.len() <= config.dials_in_flight_max);
                }
                Event::Blacklisted(p) => assert!(self.swarm.is_blacklisted(p)),
                Event::Complete => {
                    self.completions += 1;
                    assert_eq!(self.completions, 1, "Complete reported twice");
                    assert!(self.swarm.is_complete());
                }
            }
        }
        assert!(self.swarm.n_connections() <= config.connections_max);
        assert_eq!(self.swarm.n_connections(), self.remotes.len());
        let mut established_peers = BTreeSet::new();
        for (handle, p, _) in self.swarm.peers() {
            assert!(self.remotes.contains_key(&handle));
            assert!(
                established_peers.insert(p),
                "two established connections to {p:?}"
            );
            assert!(
                !self.swarm.is_blacklisted(&p),
                "established to blacklisted {p:?}"
            );
        }
        self.transmits.extend(transmits);
        self.events.extend(events);
    }

    fn take(&mut self) -> (Vec<Transmit>, Vec<Event>) {
        (
            std::mem::take(&mut self.transmits),
            std::mem::take(&mut self.events),
        )
    }

    fn take_transmits(&mut self) -> Vec<Transmit> {
        std::mem::take(&mut self.transmits)
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn connected(
        &mut self,
        result: Result<ConnHandle, ConnectError>,
    ) -> Result<ConnHandle, ConnectError> {
        if let Ok(conn) = result {
            assert!(
                !self.handles.contains(&conn),
                "handle {conn:?} handed out twice"
            );
            self.handles.push(conn);
            self.remotes.insert(conn, Remote::default());
        }
        self.collect();
        result
    }

    fn try_inbound(&mut self) -> Result<ConnHandle, ConnectError> {
        let result = self
            .swarm
            .handle_connected(self.now, Direction::Inbound, None);
        self.connected(result)
    }

    fn inbound(&mut self) -> ConnHandle {
        self.try_inbound().unwrap()
    }

    /// The transport to `to` is up (whether the swarm asked for it or not).
    fn outbound(&mut self, to: PeerId) -> Result<ConnHandle, ConnectError> {
        self.dials_in_flight.retain(|p| *p != to);
        let result = self
            .swarm
            .handle_connected(self.now, Direction::Outbound, Some(to));
        let result = self.connected(result);
        if let Ok(conn) = result
            && let Some(remote) = self.remotes.get_mut(&conn)
        {
            remote.dialed = Some(to);
        }
        result
    }

    fn dial_failed(&mut self, to: PeerId) {
        self.dials_in_flight.retain(|p| *p != to);
        self.swarm.handle_dial_failed(self.now, to);
        self.collect();
    }

    fn candidates(&mut self, candidates: &[Candidate]) {
        self.swarm.handle_peers(self.now, candidates);
        self.collect();
    }

    fn message(&mut self, conn: ConnHandle, message: Message) {
        let local = match &message {
            Message::Have(p) | Message::Reject(p) => self.local(*p),
            _ => None,
        };
        let n_pieces = self.n_pieces();
        if let Some(remote) = self.remotes.get_mut(&conn) {
            match &message {
                Message::Handshake(handshake) if remote.has.is_none() => {
                    remote.has = Some(handshake.bitfield.clone());
                }
                Message::Have(_) => {
                    if let (Some(has), Some(local)) = (remote.has.as_mut(), local) {
                        has.set(local);
                    }
                }
                Message::Complete if remote.has.is_some() => {
                    remote.has = Some(Bitfield::full(n_pieces));
                }
                Message::Reject(_) => {
                    if let Some(position) =
                        local.and_then(|l| remote.outstanding.iter().position(|&o| o == l))
                    {
                        remote.outstanding.remove(position);
                    }
                }
                _ => {}
            }
        }
        self.swarm.handle_message(self.now, conn, message);
        self.collect();
    }

    fn handshake(&mut self, conn: ConnHandle, handshake: Handshake) {
        self.message(conn, Message::Handshake(handshake));
    }

    /// An inbound connection from agent `from` holding `ones`, handshaken.
    fn connect(&mut self, from: u64, ones: &[usize]) -> ConnHandle {
        let conn = self.inbound();
        let handshake = self.handshake_of(from, ones);
        self.handshake(conn, handshake);
        assert!(self.is_established(conn), "{from} was refused");
        conn
    }

    /// An inbound connection from an origin (which has every piece), handshaken.
    fn connect_origin(&mut self, from: u64) -> ConnHandle {
        let conn = self.inbound();
        let mut handshake = self.handshake_of(from, &all(self.n_pieces()));
        handshake.is_origin = true;
        self.handshake(conn, handshake);
        assert!(self.is_established(conn), "origin {from} was refused");
        conn
    }

    /// Gets `from` blacklisted: it connects and sends a piece nobody asked for.
    fn blacklist(&mut self, from: u64) {
        let conn = self.connect(from, &[]);
        let header = self.header_of(0);
        assert_eq!(self.header(conn, header), PieceDisposition::Closed);
        assert!(self.swarm.is_blacklisted(&peer(from)));
    }

    fn header(&mut self, conn: ConnHandle, header: PieceHeader) -> PieceDisposition {
        let disposition = self.swarm.handle_piece_header(self.now, conn, header);
        if matches!(
            disposition,
            PieceDisposition::Accept | PieceDisposition::Discard
        ) && let Some(local) = self.local(header.piece)
            && let Some(remote) = self.remotes.get_mut(&conn)
            && let Some(position) = remote.outstanding.iter().position(|&o| o == local)
        {
            remote.outstanding.remove(position);
            if disposition == PieceDisposition::Accept {
                remote.receiving.push(local);
            }
        }
        self.collect();
        disposition
    }

    fn verdict(&mut self, conn: ConnHandle, local: usize, verdict: PieceVerdict) {
        if let Some(remote) = self.remotes.get_mut(&conn)
            && let Some(position) = remote.receiving.iter().position(|&r| r == local)
        {
            remote.receiving.remove(position);
        }
        self.swarm
            .handle_piece(self.now, conn, piece(local), verdict);
        self.collect();
    }

    /// The remote sends piece `local` with the right length; the driver reports `verdict` if
    /// the swarm takes the payload.
    fn deliver(
        &mut self,
        conn: ConnHandle,
        local: usize,
        verdict: PieceVerdict,
    ) -> PieceDisposition {
        let header = self.header_of(local);
        let disposition = self.header(conn, header);
        if disposition == PieceDisposition::Accept {
            self.verdict(conn, local, verdict);
        }
        disposition
    }

    /// Answers the oldest unanswered request on `conn` with a valid piece.
    fn serve_one(&mut self, conn: ConnHandle) -> Option<usize> {
        let local = *self.remotes.get(&conn)?.outstanding.first()?;
        self.deliver(conn, local, PieceVerdict::Valid);
        Some(local)
    }

    /// Answers every request on every connection with a valid piece until none is left.
    fn serve_all(&mut self) {
        for _ in 0..STEPS_MAX {
            let next = self
                .remotes
                .iter()
                .find(|(_, r)| !r.outstanding.is_empty())
                .map(|(c, _)| *c);
            let Some(conn) = next else { return };
            self.serve_one(conn);
        }
        panic!("requests never stopped");
    }

    fn piece_sent(&mut self, conn: ConnHandle, p: PieceIndex) {
        if let Some(position) = self.uploads_in_flight.iter().position(|&u| u == (conn, p)) {
            self.uploads_in_flight.remove(position);
        }
        self.swarm.handle_piece_sent(self.now, conn, p);
        self.collect();
    }

    fn disconnect(&mut self, conn: ConnHandle) {
        self.remotes.remove(&conn);
        self.uploads_in_flight.retain(|(c, _)| *c != conn);
        self.swarm.handle_disconnected(self.now, conn);
        self.collect();
    }

    /// Runs the timers at `at` (which may be earlier than `poll_timeout`), then checks that the
    /// next wake-up is strictly later.
    fn timeout_at(&mut self, at: Instant) {
        assert!(at >= self.now, "time runs forward");
        self.now = at;
        self.swarm.handle_timeout(at);
        self.collect();
        if let Some(next) = self.swarm.poll_timeout() {
            assert!(
                next > at,
                "handle_timeout({at:?}) left poll_timeout at {next:?}: a timer loop would spin"
            );
        }
    }

    fn advance(&mut self, by: Duration) {
        self.timeout_at(self.now + by);
    }

    /// Lets time pass: wakes the swarm at every `poll_timeout` up to `now + by`.
    fn run_for(&mut self, by: Duration) {
        let end = self.now + by;
        for _ in 0..STEPS_MAX {
            match self.swarm.poll_timeout() {
                Some(at) if at <= end => self.timeout_at(at.max(self.now)),
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers never settled");
    }
}

// ------------------------------------------------------------------------------------------
// Pair: two swarms, in-memory links
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Link {
    /// The connection's handle on each side.
    ends: [ConnHandle; 2],
    /// Whether each side still has its end.
    open: [bool; 2],
}

#[derive(Debug)]
enum Delivery {
    Message(Message),
    Disconnected,
    /// The last byte of this upload left the sender.
    Sent(PieceIndex),
}

#[derive(Debug)]
struct Queued {
    /// Deliveries of one channel keep their order.
    channel: usize,
    side: usize,
    link: usize,
    delivery: Delivery,
}

#[derive(Debug)]
struct Pair {
    now: Instant,
    swarms: [Swarm; 2],
    links: Vec<Link>,
    queue: VecDeque<Queued>,
    /// `None`: global FIFO. `Some`: a seeded random channel delivers next.
    order: Option<Rng>,
    pending_dials: VecDeque<(usize, PeerId)>,
    events: [Vec<Event>; 2],
    /// Per side: Piece transmits not yet reported sent.
    uploads_in_flight: [usize; 2],
    /// Per (link, requesting side): requests not yet answered.
    outstanding: BTreeMap<(usize, usize), Vec<PieceIndex>>,
    /// Requests to this side are lost on the way (a remote that never answers).
    lose_requests_to: Option<usize>,
}

impl Pair {
    fn new(n_pieces: usize, sides: [(SwarmConfig, u64, &[usize]); 2], order: Option<u64>) -> Pair {
        let [a, b] = sides.map(|(config, id, have)| {
            Swarm::new(config, geometry(n_pieces), peer(id), bits(n_pieces, have)).unwrap()
        });
        Pair {
            now: Instant::ZERO,
            swarms: [a, b],
            links: Vec::new(),
            queue: VecDeque::new(),
            order: order.map(Rng::new),
            pending_dials: VecDeque::new(),
            events: [Vec::new(), Vec::new()],
            uploads_in_flight: [0, 0],
            outstanding: BTreeMap::new(),
            lose_requests_to: None,
        }
    }

    fn id(&self, side: usize) -> PeerId {
        self.swarms[side].local_peer()
    }

    fn data_channel(link: usize, to_side: usize) -> usize {
        link * 4 + to_side
    }

    fn sent_channel(link: usize, side: usize) -> usize {
        link * 4 + 2 + side
    }

    fn push(&mut self, channel: usize, side: usize, link: usize, delivery: Delivery) {
        self.queue.push_back(Queued {
            channel,
            side,
            link,
            delivery,
        });
    }

    fn link_of(&self, side: usize, conn: ConnHandle) -> Option<usize> {
        self.links
            .iter()
            .position(|l| l.open[side] && l.ends[side] == conn)
    }

    fn close_end(&mut self, side: usize, link: usize) {
        self.links[link].open[side] = false;
        self.outstanding.remove(&(link, side));
        let channel = Pair::sent_channel(link, side);
        let before = self.queue.len();
        self.queue.retain(|q| q.channel != channel);
        self.uploads_in_flight[side] -= before - self.queue.len();
    }

    fn collect(&mut self, side: usize) {
        let requests_max = self.swarms[side].config().requests_per_connection_max;
        let uploads_max = self.swarms[side].config().uploads_active_max;
        while let Some(t) = self.swarms[side].poll_transmit() {
            let link = self
                .link_of(side, t.conn)
                .unwrap_or_else(|| panic!("transmit on closed {:?}", t.conn));
            match &t.message {
                Message::Request(p) => {
                    let outstanding = self.outstanding.entry((link, side)).or_default();
                    outstanding.push(*p);
                    assert!(outstanding.len() <= requests_max, "{outstanding:?}");
                }
                Message::Piece(header) => {
                    self.uploads_in_flight[side] += 1;
                    assert!(self.uploads_in_flight[side] <= uploads_max);
                    let channel = Pair::sent_channel(link, side);
                    self.push(channel, side, link, Delivery::Sent(header.piece));
                }
                _ => {}
            }
            if matches!(t.message, Message::Request(_)) && self.lose_requests_to == Some(1 - side) {
                continue;
            }
            let channel = Pair::data_channel(link, 1 - side);
            self.push(channel, 1 - side, link, Delivery::Message(t.message));
        }
        while let Some(event) = self.swarms[side].poll_event() {
            match &event {
                Event::Close { conn, .. } => {
                    let link = self
                        .link_of(side, *conn)
                        .expect("close of an open connection");
                    self.close_end(side, link);
                    let channel = Pair::data_channel(link, 1 - side);
                    self.push(channel, 1 - side, link, Delivery::Disconnected);
                }
                Event::Dial(p) => self.pending_dials.push_back((side, *p)),
                Event::Blacklisted(_) | Event::Complete => {}
            }
            self.events[side].push(event);
        }
    }

    fn connect(&mut self, dialer: usize, to: PeerId) {
        let other = 1 - dialer;
        let inbound = if self.id(other) == to {
            self.swarms[other].handle_connected(self.now, Direction::Inbound, None)
        } else {
            Err(ConnectError::NotDialed)
        };
        match inbound {
            Ok(inbound) => {
                let outbound = self.swarms[dialer]
                    .handle_connected(self.now, Direction::Outbound, Some(to))
                    .unwrap();
                let mut ends = [inbound; 2];
                ends[dialer] = outbound;
                self.links.push(Link {
                    ends,
                    open: [true; 2],
                });
                self.collect(other);
                self.collect(dialer);
            }
            Err(_) => {
                self.swarms[dialer].handle_dial_failed(self.now, to);
                self.collect(dialer);
            }
        }
    }

    fn answer(&mut self, link: usize, side: usize, p: PieceIndex) {
        if let Some(outstanding) = self.outstanding.get_mut(&(link, side))
            && let Some(position) = outstanding.iter().position(|o| *o == p)
        {
            outstanding.remove(position);
        }
    }

    fn pop(&mut self) -> Option<Queued> {
        let Some(rng) = self.order.as_mut() else {
            return self.queue.pop_front();
        };
        let mut channels: Vec<usize> = Vec::new();
        for q in &self.queue {
            if !channels.contains(&q.channel) {
                channels.push(q.channel);
            }
        }
        if channels.is_empty() {
            return None;
        }
        let channel = channels[rng.index(channels.len())];
        let position = self.queue.iter().position(|q| q.channel == channel)?;
        self.queue.remove(position)
    }

    fn deliver(&mut self, queued: Queued) {
        let Queued {
            side,
            link,
            delivery,
            ..
        } = queued;
        let now = self.now;
        let conn = self.links[link].ends[side];
        let open = self.links[link].open[side];
        match delivery {
            Delivery::Message(_) | Delivery::Disconnected if !open => return,
            Delivery::Message(Message::Piece(header)) => {
                let disposition = self.swarms[side].handle_piece_header(now, conn, header);
                if disposition != PieceDisposition::Closed {
                    self.answer(link, side, header.piece);
                }
                if disposition == PieceDisposition::Accept {
                    self.swarms[side].handle_piece(now, conn, header.piece, PieceVerdict::Valid);
                }
            }
            Delivery::Message(message) => {
                if let Message::Reject(p) = message {
                    self.answer(link, side, p);
                }
                self.swarms[side].handle_message(now, conn, message);
            }
            Delivery::Disconnected => {
                self.close_end(side, link);
                self.swarms[side].handle_disconnected(now, conn);
            }
            Delivery::Sent(p) => {
                self.uploads_in_flight[side] -= 1;
                self.swarms[side].handle_piece_sent(now, conn, p);
            }
        }
        self.collect(side);
    }

    /// Delivers everything in flight (dialing as asked) without moving the clock.
    fn run(&mut self) {
        for _ in 0..STEPS_MAX {
            if let Some((dialer, to)) = self.pending_dials.pop_front() {
                self.connect(dialer, to);
                continue;
            }
            let Some(queued) = self.pop() else { return };
            self.deliver(queued);
        }
        panic!("deliveries never settled");
    }

    /// Runs, then jumps the clock to the next wake-up and runs the due timers. Returns false
    /// when neither swarm has a timer left.
    fn step(&mut self) -> bool {
        self.run();
        let Some(next) = self.swarms.iter().filter_map(Swarm::poll_timeout).min() else {
            return false;
        };
        self.now = self.now.max(next);
        for side in 0..2 {
            if self.swarms[side]
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                self.swarms[side].handle_timeout(self.now);
                self.collect(side);
                if let Some(after) = self.swarms[side].poll_timeout() {
                    assert!(after > self.now, "side {side} would spin at {after:?}");
                }
            }
        }
        self.run();
        true
    }

    /// The established connection of each side, if exactly one.
    fn single_connection(&self, side: usize) -> Option<ConnHandle> {
        let peers: Vec<_> = self.swarms[side].peers().collect();
        (peers.len() == 1).then(|| peers[0].0)
    }
}

// ------------------------------------------------------------------------------------------
// Handshakes and connection admission
// ------------------------------------------------------------------------------------------

#[test]
fn handshake_is_checked_against_the_swarm() {
    const N: usize = 9;
    type Edit = fn(&mut Handshake);
    let cases: [(&str, Edit, Option<CloseReason>); 9] = [
        ("valid", |_| {}, None),
        (
            "valid, remote is complete",
            |h| h.bitfield = Bitfield::full(N),
            None,
        ),
        (
            "other info hash",
            |h| h.info_hash = InfoHash([8; 32]),
            Some(CloseReason::WrongSwarm),
        ),
        (
            "other stripe",
            |h| h.stripe = StripeIndex(4),
            Some(CloseReason::WrongSwarm),
        ),
        (
            "bitfield one short",
            |h| h.bitfield = Bitfield::new(N - 1),
            Some(CloseReason::WrongSwarm),
        ),
        (
            "bitfield one long",
            |h| h.bitfield = Bitfield::full(N + 1),
            Some(CloseReason::WrongSwarm),
        ),
        (
            "empty bitfield",
            |h| h.bitfield = Bitfield::new(0),
            Some(CloseReason::WrongSwarm),
        ),
        (
            "our own peer id",
            |h| h.peer_id = peer(ME),
            Some(CloseReason::SelfConnection),
        ),
        (
            "blacklisted peer",
            |h| h.peer_id = peer(66),
            Some(CloseReason::Blacklisted),
        ),
    ];
    for (name, edit, expected) in cases {
        let mut rig = Rig::new(config(), N, &[]);
        rig.blacklist(66);
        rig.take();
        let conn = rig.inbound();
        let mut handshake = rig.handshake_of(5, &[0, 3]);
        edit(&mut handshake);
        rig.handshake(conn, handshake);
        let closed = closes(&rig.take_events());
        match expected {
            None => {
                assert_eq!(closed, vec![], "{name}");
                assert!(rig.is_established(conn), "{name}");
            }
            Some(reason) => {
                assert_eq!(closed, vec![(conn, reason)], "{name}");
                assert_eq!(rig.swarm.n_connections(), 0, "{name}");
                assert!(
                    !rig.swarm.is_blacklisted(&peer(5)),
                    "{name}: refusing is not blaming"
                );
            }
        }
    }
}

#[test]
fn outbound_handshake_must_name_the_dialed_peer() {
    let mut rig = Rig::new(config(), 4, &[]);
    rig.candidates(&[agent(5)]);
    assert_eq!(dials(&rig.take_events()), vec![peer(5)]);
    let conn = rig.outbound(peer(5)).unwrap();
    let handshake = rig.handshake_of(6, &[0]);
    rig.handshake(conn, handshake);
    let closed = closes(&rig.take_events());
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, conn);
    assert!(is_violation(&closed[0].1), "{closed:?}");
}

#[test]
fn second_connection_to_a_peer_is_closed_as_duplicate() {
    // Two inbound connections from one peer, whose id is smaller or larger than ours.
    for from in [5, 2000] {
        let mut rig = Rig::new(config(), 6, &[]);
        let first = rig.connect(from, &[0, 1]);
        let second = rig.inbound();
        let handshake = rig.handshake_of(from, &[0, 1]);
        rig.handshake(second, handshake);
        let closed = closes(&rig.take_events());
        assert_eq!(closed.len(), 1, "{from}: {closed:?}");
        assert_eq!(closed[0].1, CloseReason::Duplicate, "{from}");
        let survivor = if closed[0].0 == first { second } else { first };
        assert!(rig.is_established(survivor), "{from}");
        assert_eq!(rig.swarm.n_connections(), 1);
        assert!(!rig.swarm.is_blacklisted(&peer(from)));
        // The survivor is usable: it carries the requests.
        rig.take_transmits();
        rig.serve_all();
        assert!(rig.swarm.have().get(0) && rig.swarm.have().get(1), "{from}");
    }
}

#[test]
fn simultaneous_open_keeps_the_same_connection_on_both_sides() {
    // Both swarms dial each other at once; whatever order the four handshakes arrive in, both
    // sides must keep the two ends of one link, and only one.
    for (id_a, id_b) in [(1, 2), (2, 1)] {
        for order in 0..40 {
            let mut pair = Pair::new(
                6,
                [(config(), id_a, &[0, 1][..]), (config(), id_b, &[2, 3][..])],
                (order > 0).then_some(order),
            );
            let now = pair.now;
            pair.swarms[0].handle_peers(now, &[agent(id_b)]);
            pair.collect(0);
            pair.swarms[1].handle_peers(now, &[agent(id_a)]);
            pair.collect(1);
            assert_eq!(pair.pending_dials.len(), 2);
            pair.run();
            // A side whose kept connection is still handshaking (peer unknown) when the other
            // one is closed may dial again; that extra connection is resolved the same way.
            assert!(
                (2..=4).contains(&pair.links.len()),
                "{} links",
                pair.links.len()
            );
            let a = pair.single_connection(0).expect("one connection on side a");
            let b = pair.single_connection(1).expect("one connection on side b");
            let kept = pair.links.iter().position(|l| l.ends[0] == a).unwrap();
            assert_eq!(
                pair.links[kept].ends[1], b,
                "ids {id_a}/{id_b}, order {order}: the sides kept different connections"
            );
            for side in 0..2 {
                assert_eq!(pair.swarms[side].n_connections(), 1);
                assert!(
                    closes(&pair.events[side])
                        .iter()
                        .all(|(_, r)| *r == CloseReason::Duplicate)
                );
                assert_eq!(
                    pair.swarms[side].have().count_ones(),
                    4,
                    "pieces crossed over"
                );
            }
        }
    }
}

#[test]
fn messages_before_the_handshake_are_violations() {
    let early = [
        Message::Have(piece(0)),
        Message::Request(piece(0)),
        Message::Cancel(piece(0)),
        Message::Reject(piece(0)),
        Message::Complete,
        Message::Keepalive,
    ];
    for message in early {
        // Inbound: the peer is not known yet, so there is nobody to blacklist.
        let mut rig = Rig::new(config(), 4, &[0]);
        let conn = rig.inbound();
        rig.message(conn, message.clone());
        let closed = closes(&rig.take_events());
        assert_eq!(closed.len(), 1, "{message:?}");
        assert!(is_violation(&closed[0].1), "{message:?}: {closed:?}");
        // Outbound: the dialed peer broke the protocol and is blacklisted.
        rig.candidates(&[agent(5)]);
        let conn = rig.outbound(peer(5)).unwrap();
        rig.message(conn, message.clone());
        let closed = closes(&rig.take_events());
        assert_eq!(closed.len(), 1, "{message:?}");
        assert!(is_violation(&closed[0].1), "{message:?}: {closed:?}");
        assert!(rig.swarm.is_blacklisted(&peer(5)), "{message:?}");
    }
    let mut rig = Rig::new(config(), 4, &[]);
    let conn = rig.inbound();
    let header = rig.header_of(0);
    assert_eq!(rig.header(conn, header), PieceDisposition::Closed);
    let closed = closes(&rig.take_events());
    assert!(is_violation(&closed[0].1), "{closed:?}");
}

#[test]
fn second_handshake_is_a_violation() {
    let mut rig = Rig::new(config(), 4, &[]);
    let conn = rig.connect(5, &[1]);
    rig.take();
    let handshake = rig.handshake_of(5, &[1]);
    rig.handshake(conn, handshake);
    let (_, events) = rig.take();
    let closed = closes(&events);
    assert_eq!(closed.len(), 1);
    assert!(is_violation(&closed[0].1), "{closed:?}");
    assert!(events.contains(&Event::Blacklisted(peer(5))));
}

#[test]
fn inbound_connections_stop_at_connections_max() {
    let mut rig = Rig::new(
        SwarmConfig {
            connections_max: 3,
            dial_target: 3,
            ..config()
        },
        4,
        &[],
    );
    let first = rig.inbound();
    rig.connect(6, &[]);
    rig.inbound();
    assert_eq!(rig.try_inbound(), Err(ConnectError::AtCapacity));
    assert_eq!(rig.swarm.n_connections(), 3);
    rig.disconnect(first);
    assert!(rig.try_inbound().is_ok(), "a slot was freed");
    assert_eq!(rig.try_inbound(), Err(ConnectError::AtCapacity));
}

#[test]
fn outbound_connections_need_a_dial() {
    let mut rig = Rig::new(config(), 4, &[]);
    assert_eq!(rig.outbound(peer(9)), Err(ConnectError::NotDialed));
    let none = rig
        .swarm
        .handle_connected(rig.now, Direction::Outbound, None);
    assert_eq!(none, Err(ConnectError::NotDialed));
    rig.candidates(&[agent(9)]);
    assert_eq!(dials(&rig.take_events()), vec![peer(9)]);
    assert!(rig.outbound(peer(9)).is_ok());
    assert_eq!(
        rig.outbound(peer(9)),
        Err(ConnectError::NotDialed),
        "one dial, one connection"
    );
    // A known blacklisted peer is refused before any handshake.
    rig.blacklist(66);
    let known = rig
        .swarm
        .handle_connected(rig.now, Direction::Inbound, Some(peer(66)));
    assert_eq!(known, Err(ConnectError::Blacklisted));
}

#[test]
fn origin_connections_beyond_origin_connections_max_are_closed() {
    let mut rig = Rig::new(
        SwarmConfig {
            origin_connections_max: 1,
            ..config()
        },
        4,
        &[],
    );
    rig.connect_origin(50);
    let second = rig.inbound();
    let mut handshake = rig.handshake_of(51, &all(4));
    handshake.is_origin = true;
    rig.handshake(second, handshake);
    assert_eq!(
        closes(&rig.take_events()),
        vec![(second, CloseReason::AtCapacity)]
    );
    assert!(!rig.swarm.is_blacklisted(&peer(51)));
    // Agents are still welcome.
    rig.connect(7, &[1]);
    // An origin swarm has no such limit.
    let mut seeder = Rig::new(SwarmConfig::origin(), 4, &all(4));
    for from in 50..55 {
        let conn = seeder.inbound();
        let mut handshake = seeder.handshake_of(from, &[]);
        handshake.is_origin = true;
        seeder.handshake(conn, handshake);
        assert!(seeder.is_established(conn));
    }
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

#[test]
fn pipeline_depth_never_exceeds_requests_per_connection_max() {
    for depth in [1, 2, 3, 5] {
        let mut rig = Rig::new(
            SwarmConfig {
                requests_per_connection_max: depth,
                upload_queue_per_connection_max: depth.max(4),
                ..config()
            },
            12,
            &[],
        );
        let conn = rig.connect(5, &all(12));
        assert_eq!(rig.outstanding(conn).len(), depth, "the pipeline fills up");
        // Rig::collect checks the bound on every transmit.
        for _ in 0..12 {
            rig.serve_one(conn).unwrap();
        }
        assert!(rig.swarm.is_complete(), "depth {depth}");
    }
}

#[test]
fn requests_only_pieces_the_remote_has_and_we_lack() {
    let mut rig = Rig::new(config(), 8, &[0, 5]);
    let a = rig.connect(5, &[0, 1, 2, 6]);
    let b = rig.connect(6, &[3, 5]);
    let c = rig.connect(7, &[]);
    // Rig::collect checks each request against what the remote announced and what we have.
    rig.serve_all();
    rig.message(b, Message::Have(piece(4)));
    rig.message(c, Message::Have(piece(7)));
    rig.message(c, Message::Have(piece(1)));
    rig.serve_all();
    rig.message(a, Message::Complete);
    rig.serve_all();
    assert!(rig.swarm.is_complete());
}

#[test]
fn rarest_piece_is_requested_first() {
    // Remotes 5 and 6 hold pieces 0..3 and take one request each (pipeline depth 1). The one
    // piece of 0..3 left unrequested is then held by three remotes once remote 7 arrives with
    // pieces 0..6; pieces 3..6 are held by remote 7 alone, so its first request is one of them.
    for seed in 0..32 {
        let mut rig = Rig::new(
            SwarmConfig {
                requests_per_connection_max: 1,
                seed,
                ..config()
            },
            6,
            &[],
        );
        rig.connect(5, &[0, 1, 2]);
        rig.connect(6, &[0, 1, 2]);
        rig.take();
        let last = rig.connect(7, &all(6));
        let first = requests(&rig.take_transmits(), last);
        assert_eq!(first.len(), 1, "seed {seed}");
        assert!(
            first[0] >= 3,
            "seed {seed}: requested {first:?} held by three remotes"
        );
    }
}

#[test]
fn a_piece_a_reader_waits_for_is_requested_first_then_rarest_first_resumes() {
    for seed in 0..16 {
        let mut rig = Rig::new(
            SwarmConfig {
                requests_per_connection_max: 1,
                requests_in_flight_max: 8,
                seed,
                ..config()
            },
            32,
            &[],
        );
        // The reader waits for piece 0 before anyone offers it.
        rig.swarm.handle_wanted(rig.now, piece(0));
        rig.collect();
        let conn = rig.connect(5, &all(32));
        let first = requests(&rig.take_transmits(), conn);
        assert_eq!(first, vec![0], "seed {seed}");
        // The reader moves on to piece 17 while 0 is on its way: 17 takes the next slot.
        rig.swarm.handle_wanted(rig.now, piece(17));
        rig.collect();
        rig.serve_one(conn);
        let next = requests(&rig.take_transmits(), conn);
        assert_eq!(next, vec![17], "seed {seed}");
        // Once 17 is stored nothing is wanted: the choices are rarest first again, which
        // with one remote holding everything is a random spread, not 18, 19, ...
        rig.serve_one(conn);
        let mut order = Vec::new();
        for _ in 0..6 {
            order.extend(requests(&rig.take_transmits(), conn));
            rig.serve_one(conn);
        }
        assert_ne!(
            order,
            (18..24).collect::<Vec<_>>(),
            "seed {seed}: sequential"
        );
    }
}

/// A swarm of six pieces with one agent holding pieces 0–2 and one origin: the pieces the
/// origin is asked for, in order, until the swarm is complete (the agent answering its
/// requests too if `serve_agent`).
fn asked_of_the_origin(cfg: SwarmConfig, serve_agent: bool) -> Vec<usize> {
    let mut rig = Rig::new(cfg, 6, &[]);
    let agent_conn = rig.connect(5, &[0, 1, 2]);
    let origin_conn = rig.connect_origin(50);
    let mut asked = Vec::new();
    for _ in 0..STEPS_MAX {
        asked.extend(requests(&rig.take_transmits(), origin_conn));
        if rig.swarm.is_complete() {
            break;
        }
        if serve_agent {
            rig.serve_one(agent_conn);
        }
        rig.serve_one(origin_conn);
    }
    assert!(rig.swarm.is_complete(), "{asked:?}");
    asked
}

#[test]
fn origins_as_last_resort_are_asked_only_for_pieces_no_agent_has() {
    for seed in 0..8 {
        let cfg = SwarmConfig {
            requests_per_connection_max: 1,
            origin_last_resort: true,
            seed,
            ..config()
        };
        // While the agent is connected, the origin serves only the pieces it lacks.
        let mut asked = asked_of_the_origin(cfg.clone(), true);
        asked.sort_unstable();
        assert_eq!(asked, vec![3, 4, 5], "seed {seed}");
        // When the agent leaves, the origin is asked for the rest.
        let mut rig = Rig::new(cfg, 6, &[]);
        let agent_conn = rig.connect(5, &[0, 1, 2]);
        let origin_conn = rig.connect_origin(50);
        rig.disconnect(agent_conn);
        rig.serve_all();
        assert!(rig.swarm.is_complete(), "seed {seed}");
        assert!(!rig.is_established(origin_conn), "complete: origin closed");
    }
}

#[test]
fn origins_are_asked_rarest_first_like_any_peer() {
    for seed in 0..8 {
        let cfg = SwarmConfig {
            requests_per_connection_max: 1,
            origin_last_resort: false,
            seed,
            ..config()
        };
        // The agent is never served: everything comes from the origin, the pieces nobody
        // else has first, then the agent's too.
        let asked = asked_of_the_origin(cfg, false);
        let mut rare_first = asked[..3].to_vec();
        rare_first.sort_unstable();
        assert_eq!(rare_first, vec![3, 4, 5], "seed {seed}: {asked:?}");
        let mut rest = asked[3..].to_vec();
        rest.sort_unstable();
        assert!(
            rest.iter().all(|p| [0, 1, 2].contains(p)),
            "seed {seed}: {asked:?}"
        );
        assert!(
            !rest.is_empty(),
            "seed {seed}: the origin carried no common piece"
        );
    }
}

/// The order in which one remote holding everything is asked for the pieces.
fn request_order(seed: u64) -> Vec<usize> {
    let mut rig = Rig::new(
        SwarmConfig {
            requests_per_connection_max: 1,
            seed,
            ..config()
        },
        64,
        &[],
    );
    let conn = rig.connect(5, &all(64));
    let mut order = Vec::new();
    while !rig.swarm.is_complete() {
        order.extend(requests(&rig.take_transmits(), conn));
        rig.serve_one(conn).unwrap();
    }
    assert_eq!(order.len(), 64);
    order
}

#[test]
fn seeded_tie_breaks_are_reproducible() {
    assert_eq!(request_order(1), request_order(1));
    let orders: BTreeSet<Vec<usize>> = (1..5).map(request_order).collect();
    assert!(orders.len() > 1, "four seeds gave one order");
}

// ------------------------------------------------------------------------------------------
// Pieces
// ------------------------------------------------------------------------------------------

#[test]
fn piece_headers_are_checked() {
    // (pieces in the stripe, header, expected disposition). The remote holds every piece and
    // was asked for exactly one (pipeline depth 1), whichever it is: `Requested` stands for it.
    #[derive(Debug, Clone, Copy)]
    enum Which {
        Requested,
        Unrequested,
        Raw(u32),
    }
    let cases = [
        (4, Which::Requested, None, PieceDisposition::Accept),
        (4, Which::Requested, Some(1), PieceDisposition::Closed),
        (4, Which::Requested, Some(-1), PieceDisposition::Closed),
        (4, Which::Unrequested, None, PieceDisposition::Closed),
        (
            4,
            Which::Raw(FIRST_PIECE - 1),
            None,
            PieceDisposition::Closed,
        ),
        (
            4,
            Which::Raw(FIRST_PIECE + 4),
            None,
            PieceDisposition::Closed,
        ),
        (4, Which::Raw(u32::MAX), None, PieceDisposition::Closed),
        // One piece: it is the last one, shorter than `piece_len`.
        (1, Which::Requested, None, PieceDisposition::Accept),
        (
            1,
            Which::Requested,
            Some(i64::from(PIECE_LEN - LAST_PIECE_LEN)),
            PieceDisposition::Closed,
        ),
    ];
    for (n_pieces, which, length_delta, expected) in cases {
        let mut rig = Rig::new(
            SwarmConfig {
                requests_per_connection_max: 1,
                ..config()
            },
            n_pieces,
            &[],
        );
        let conn = rig.connect(5, &all(n_pieces));
        let requested = rig.outstanding(conn)[0];
        let local = match which {
            Which::Requested => requested,
            Which::Unrequested => (requested + 1) % n_pieces,
            Which::Raw(_) => requested,
        };
        let mut header = rig.header_of(local);
        if let Which::Raw(raw) = which {
            header.piece = PieceIndex(raw);
        }
        if let Some(delta) = length_delta {
            header.length = (i64::from(header.length) + delta) as u32;
        }
        rig.take();
        let label = format!("{n_pieces} pieces, {which:?}, {length_delta:?}");
        assert_eq!(rig.header(conn, header), expected, "{label}");
        let (_, events) = rig.take();
        if expected == PieceDisposition::Closed {
            let closed = closes(&events);
            assert_eq!(closed.len(), 1, "{label}");
            assert!(is_violation(&closed[0].1), "{label}: {closed:?}");
            assert!(events.contains(&Event::Blacklisted(peer(5))), "{label}");
            // The request it held is free again: another remote gets it.
            let other = rig.connect(6, &[requested]);
            assert!(
                rig.outstanding(other).contains(&requested),
                "{label}: piece {requested} not re-requested"
            );
        } else {
            assert_eq!(events, vec![], "{label}");
        }
    }
}

#[test]
fn invalid_piece_blacklists_the_sender_and_is_requested_elsewhere() {
    let mut rig = Rig::new(
        SwarmConfig {
            endgame_duplicates_max: 1,
            ..config()
        },
        1,
        &[],
    );
    let liar = rig.connect(5, &[0]);
    let honest = rig.connect(6, &[0]);
    assert_eq!(rig.outstanding(liar), vec![0]);
    assert_eq!(rig.outstanding(honest), vec![], "no duplicate allowed");
    rig.take();
    assert_eq!(
        rig.deliver(liar, 0, PieceVerdict::Invalid),
        PieceDisposition::Accept
    );
    let (transmits, events) = rig.take();
    assert!(events.contains(&Event::Blacklisted(peer(5))));
    assert_eq!(
        closes(&events),
        vec![(liar, CloseReason::BadPiece(piece(0)))]
    );
    assert_eq!(requests(&transmits, honest), vec![0]);
    assert!(!rig.swarm.have().get(0));
    // The liar cannot come back.
    let again = rig.inbound();
    let handshake = rig.handshake_of(5, &[0]);
    rig.handshake(again, handshake);
    assert_eq!(
        closes(&rig.take_events()),
        vec![(again, CloseReason::Blacklisted)]
    );
    rig.serve_all();
    assert!(rig.swarm.is_complete());
}

#[test]
fn valid_piece_is_announced_only_to_remotes_that_lack_it() {
    let mut rig = Rig::new(
        SwarmConfig {
            requests_per_connection_max: 1,
            ..config()
        },
        4,
        &[],
    );
    let source = rig.connect(5, &all(4));
    let x = rig.outstanding(source)[0];
    let has_x = rig.connect(6, &[x]);
    let lacks_x = rig.connect(7, &[(x + 1) % 4]);
    let has_nothing = rig.connect(8, &[]);
    rig.take();
    assert_eq!(
        rig.deliver(source, x, PieceVerdict::Valid),
        PieceDisposition::Accept
    );
    let transmits = rig.take_transmits();
    let haves = |conn| {
        sent_to(&transmits, conn)
            .into_iter()
            .filter(|m| matches!(m, Message::Have(_)))
            .collect::<Vec<_>>()
    };
    assert_eq!(haves(source), vec![]);
    assert_eq!(haves(has_x), vec![]);
    assert_eq!(haves(lacks_x), vec![Message::Have(piece(x))]);
    assert_eq!(haves(has_nothing), vec![Message::Have(piece(x))]);
}

#[test]
fn completion_is_reported_once_and_closes_useless_connections() {
    // Origins as a last resort, so that piece 1 is asked of one remote only.
    let cfg = SwarmConfig {
        origin_last_resort: true,
        ..config()
    };
    let mut rig = Rig::new(cfg, 2, &[0]);
    let full = rig.connect(5, &all(2));
    let origin_conn = rig.connect_origin(50);
    let has_0 = rig.connect(6, &[0]);
    let has_nothing = rig.connect(7, &[]);
    assert_eq!(rig.outstanding(full), vec![1]);
    assert_eq!(rig.outstanding(origin_conn), vec![], "an agent has piece 1");
    rig.take();
    assert_eq!(
        rig.deliver(full, 1, PieceVerdict::Valid),
        PieceDisposition::Accept
    );
    let (transmits, events) = rig.take();
    assert_eq!(events.iter().filter(|e| **e == Event::Complete).count(), 1);
    let mut closed = closes(&events);
    closed.sort_by_key(|(c, _)| *c);
    let mut expected = vec![
        (full, CloseReason::BothComplete),
        (origin_conn, CloseReason::BothComplete),
    ];
    expected.sort_by_key(|(c, _)| *c);
    assert_eq!(closed, expected);
    assert_eq!(sent_to(&transmits, has_0), vec![Message::Complete]);
    assert_eq!(sent_to(&transmits, has_nothing), vec![Message::Complete]);
    assert!(rig.is_established(has_0) && rig.is_established(has_nothing));
    // A late copy through the closed connection's handle changes nothing.
    rig.verdict(full, 1, PieceVerdict::Valid);
    // A complete newcomer is turned away; incomplete ones are served.
    let complete = rig.inbound();
    let handshake = rig.handshake_of(9, &all(2));
    rig.handshake(complete, handshake);
    assert_eq!(
        closes(&rig.take_events()),
        vec![(complete, CloseReason::BothComplete)]
    );
    // A remote that completes closes its connection too.
    rig.message(has_0, Message::Have(piece(1)));
    assert_eq!(
        closes(&rig.take_events()),
        vec![(has_0, CloseReason::BothComplete)]
    );
    rig.message(has_nothing, Message::Complete);
    assert_eq!(
        closes(&rig.take_events()),
        vec![(has_nothing, CloseReason::BothComplete)]
    );
    assert_eq!(rig.completions, 1);
    assert_eq!(rig.swarm.n_connections(), 0);
}

// ------------------------------------------------------------------------------------------
// Timers
// ------------------------------------------------------------------------------------------

#[test]
fn unanswered_request_is_cancelled_and_requested_elsewhere() {
    let cfg = SwarmConfig {
        endgame_duplicates_max: 1,
        ..config()
    };
    let mut rig = Rig::new(cfg.clone(), 1, &[]);
    let slow = rig.connect(5, &[0]);
    let spare = rig.connect(6, &[0]);
    assert_eq!(rig.outstanding(slow), vec![0]);
    rig.take();
    let deadline = rig.now + cfg.request_timeout;
    assert_eq!(rig.swarm.poll_timeout(), Some(deadline));
    rig.timeout_at(deadline);
    let transmits = rig.take_transmits();
    assert_eq!(sent_to(&transmits, slow), vec![Message::Cancel(piece(0))]);
    assert_eq!(requests(&transmits, spare), vec![0]);
    assert_eq!(
        rig.outstanding(slow),
        vec![0],
        "held until the remote answers"
    );
    rig.serve_one(spare).unwrap();
    assert!(rig.swarm.is_complete());
}

#[test]
fn rejected_request_goes_to_another_connection_at_once() {
    let cfg = SwarmConfig {
        endgame_duplicates_max: 1,
        ..config()
    };
    let mut rig = Rig::new(cfg, 1, &[]);
    let busy = rig.connect(5, &[0]);
    let spare = rig.connect(6, &[0]);
    assert_eq!(rig.outstanding(busy), vec![0]);
    rig.take();
    rig.message(busy, Message::Reject(piece(0)));
    assert_eq!(all_requests(&rig.take_transmits()), vec![(spare, 0)]);
    assert!(rig.is_established(busy), "a Reject is no offence");
}

#[test]
fn repeated_request_timeouts_close_the_connection_as_too_slow() {
    let cfg = SwarmConfig {
        requests_per_connection_max: 1,
        request_timeouts_max: 3,
        ..config()
    };
    let mut rig = Rig::new(cfg.clone(), 4, &[]);
    let slow = rig.connect(5, &all(4));
    for round in 1..=3 {
        let [asked] = rig.outstanding(slow)[..] else {
            panic!("round {round}: {:?}", rig.outstanding(slow));
        };
        rig.take();
        let deadline = rig.now + cfg.request_timeout;
        assert_eq!(rig.swarm.poll_timeout(), Some(deadline), "round {round}");
        rig.timeout_at(deadline);
        let (transmits, events) = rig.take();
        if round < 3 {
            assert_eq!(
                sent_to(&transmits, slow),
                vec![Message::Cancel(piece(asked))]
            );
            assert_eq!(closes(&events), vec![], "round {round}");
            // The remote acknowledges the Cancel; after the back-off it is asked again.
            rig.message(slow, Message::Reject(piece(asked)));
            rig.advance(cfg.reject_backoff);
        } else {
            assert_eq!(closes(&events), vec![(slow, CloseReason::TooSlow)]);
        }
    }
    assert!(!rig.swarm.is_blacklisted(&peer(5)), "slow is not malicious");
}

#[test]
fn piece_answering_resets_the_timeout_count() {
    let cfg = SwarmConfig {
        requests_per_connection_max: 1,
        request_timeouts_max: 2,
        ..config()
    };
    let mut rig = Rig::new(cfg.clone(), 6, &[]);
    let conn = rig.connect(5, &all(6));
    for _ in 0..3 {
        // One timeout, then a piece: never two timeouts in a row.
        let [asked] = rig.outstanding(conn)[..] else {
            panic!("{:?}", rig.outstanding(conn))
        };
        rig.advance(cfg.request_timeout);
        rig.message(conn, Message::Reject(piece(asked)));
        rig.advance(cfg.reject_backoff);
        rig.serve_one(conn).unwrap();
    }
    assert!(rig.is_established(conn));
}

#[test]
fn late_payload_of_a_cancelled_request_is_discarded() {
    let cfg = SwarmConfig {
        requests_per_connection_max: 1,
        ..config()
    };
    let mut rig = Rig::new(cfg.clone(), 3, &[]);
    let conn = rig.connect(5, &all(3));
    let [asked] = rig.outstanding(conn)[..] else {
        panic!()
    };
    rig.advance(cfg.request_timeout);
    assert!(sent_to(&rig.take_transmits(), conn).contains(&Message::Cancel(piece(asked))));
    assert_eq!(
        rig.deliver(conn, asked, PieceVerdict::Valid),
        PieceDisposition::Discard
    );
    assert_eq!(closes(&rig.take_events()), vec![]);
    assert!(rig.is_established(conn));
    assert!(!rig.swarm.is_blacklisted(&peer(5)));
    // The slot is free again: after the back-off the connection is asked again.
    rig.advance(cfg.reject_backoff);
    assert_eq!(requests(&rig.take_transmits(), conn).len(), 1);
    // The same holds for a piece whose copy arrived elsewhere first (see the endgame test).
}

#[test]
fn keepalive_after_silence_then_idle_close() {
    let cfg = config();
    let mut rig = Rig::new(cfg.clone(), 3, &[]);
    let conn = rig.connect(5, &[]);
    let opened = rig.now;
    rig.take();
    assert_eq!(
        rig.swarm.poll_timeout(),
        Some(opened + cfg.keepalive_interval)
    );
    rig.timeout_at(opened + cfg.keepalive_interval);
    assert_eq!(
        sent_to(&rig.take_transmits(), conn),
        vec![Message::Keepalive]
    );
    let second = opened + cfg.keepalive_interval + cfg.keepalive_interval;
    assert_eq!(rig.swarm.poll_timeout(), Some(second));
    rig.timeout_at(second);
    assert_eq!(
        sent_to(&rig.take_transmits(), conn),
        vec![Message::Keepalive]
    );
    // Neither side asked for anything since the handshake: idle.
    assert_eq!(rig.swarm.poll_timeout(), Some(opened + cfg.idle_timeout));
    rig.timeout_at(opened + cfg.idle_timeout);
    assert_eq!(closes(&rig.take_events()), vec![(conn, CloseReason::Idle)]);
    assert_eq!(rig.swarm.poll_timeout(), None);
}

#[test]
fn sending_anything_postpones_the_keepalive() {
    let cfg = config();
    let mut rig = Rig::new(cfg.clone(), 3, &[0]);
    let conn = rig.connect(5, &[]);
    rig.advance(secs(10));
    rig.message(conn, Message::Request(piece(0)));
    rig.take();
    rig.run_for(cfg.keepalive_interval - ms(1));
    assert!(!sent_to(&rig.take_transmits(), conn).contains(&Message::Keepalive));
    rig.run_for(ms(1));
    assert_eq!(
        sent_to(&rig.take_transmits(), conn),
        vec![Message::Keepalive]
    );
}

#[test]
fn handshake_must_arrive_in_time() {
    let cfg = config();
    let mut rig = Rig::new(cfg.clone(), 3, &[]);
    let inbound = rig.inbound();
    rig.candidates(&[agent(5)]);
    rig.advance(secs(1));
    let outbound = rig.outbound(peer(5)).unwrap();
    rig.take();
    assert_eq!(
        rig.swarm.poll_timeout(),
        Some(Instant::ZERO + cfg.handshake_timeout)
    );
    rig.run_for(cfg.handshake_timeout);
    let closed = closes(&rig.take_events());
    assert_eq!(
        closed,
        vec![
            (inbound, CloseReason::HandshakeTimeout),
            (outbound, CloseReason::HandshakeTimeout)
        ]
    );
}

#[test]
fn timer_loop_always_makes_progress_and_settles() {
    // Every kind of timer pending at once: a handshake, requests, keepalives, idleness, dial
    // back-offs, an upload. Waking at every `poll_timeout` must move forward (Rig::timeout_at
    // checks), and with no more input the swarm must run out of timers.
    let mut rig = Rig::new(config(), 6, &[0]);
    rig.inbound();
    let a = rig.connect(5, &[1, 2, 3]);
    rig.connect(6, &[4]);
    rig.connect_origin(50);
    rig.message(a, Message::Request(piece(0)));
    rig.candidates(&[agent(20), agent(21)]);
    // Each dial fails three times (re-dialed after its back-off), then stays in flight.
    let mut failures: BTreeMap<PeerId, u32> = BTreeMap::new();
    let mut wakeups = 0;
    loop {
        for p in dials(&rig.take_events()) {
            let n = failures.entry(p).or_default();
            if *n < 3 {
                *n += 1;
                rig.dial_failed(p);
            }
        }
        let Some(at) = rig.swarm.poll_timeout() else {
            break;
        };
        rig.timeout_at(at);
        wakeups += 1;
        assert!(wakeups < 1000, "timers never settle");
    }
    assert_eq!(failures.values().sum::<u32>(), 6);
    assert_eq!(rig.swarm.n_connections(), 0, "everything timed out");
    assert!(wakeups > 5);
}

// ------------------------------------------------------------------------------------------
// Endgame
// ------------------------------------------------------------------------------------------

#[test]
fn endgame_duplicates_the_last_requests_and_cancels_the_losers() {
    for seed in 0..16 {
        let cfg = SwarmConfig {
            requests_per_connection_max: 2,
            endgame_duplicates_max: 2,
            seed,
            ..config()
        };
        let mut rig = Rig::new(cfg, 3, &[]);
        let first = rig.connect(5, &all(3));
        let asked_first = rig.outstanding(first);
        assert_eq!(asked_first.len(), 2);
        // Not endgame yet: the second connection first takes the piece nobody was asked for,
        // and only then (every missing piece requested) a duplicate.
        let second = rig.connect(6, &all(3));
        let asked_second = rig.outstanding(second);
        assert_eq!(asked_second.len(), 2, "seed {seed}");
        assert!(!asked_first.contains(&asked_second[0]), "seed {seed}");
        assert!(asked_first.contains(&asked_second[1]), "seed {seed}");
        let third = rig.connect(7, &all(3));
        let fourth = rig.connect(8, &all(3));
        // At most `endgame_duplicates_max` requests per piece.
        let mut per_piece = [0; 3];
        for conn in [first, second, third, fourth] {
            for local in rig.outstanding(conn) {
                per_piece[local] += 1;
            }
        }
        assert_eq!(per_piece, [2, 2, 2], "seed {seed}");
        assert_eq!(rig.outstanding(fourth), vec![], "seed {seed}");
        // The first copy of a piece wins; every other request for it is cancelled.
        let won = asked_first[0];
        rig.take();
        assert_eq!(
            rig.deliver(first, won, PieceVerdict::Valid),
            PieceDisposition::Accept
        );
        let transmits = rig.take_transmits();
        for conn in [second, third] {
            let cancelled = sent_to(&transmits, conn).contains(&Message::Cancel(piece(won)));
            assert_eq!(
                cancelled,
                rig.outstanding(conn).contains(&won),
                "seed {seed}"
            );
            if cancelled {
                // Its late payload is dropped quietly.
                assert_eq!(
                    rig.deliver(conn, won, PieceVerdict::Valid),
                    PieceDisposition::Discard
                );
            }
        }
        assert_eq!(rig.take_events(), vec![]);
        rig.serve_all();
        assert!(rig.swarm.is_complete(), "seed {seed}");
    }
}

// ------------------------------------------------------------------------------------------
// Uploads
// ------------------------------------------------------------------------------------------

fn seeder_config(uploads_active_max: usize, upload_queue_per_connection_max: usize) -> SwarmConfig {
    SwarmConfig {
        uploads_active_max,
        upload_queue_per_connection_max,
        requests_per_connection_max: 1,
        ..config()
    }
}

fn pieces_sent(transmits: &[Transmit], conn: ConnHandle) -> Vec<usize> {
    sent_to(transmits, conn)
        .into_iter()
        .filter_map(|m| match m {
            Message::Piece(header) => Some((header.piece.0 - FIRST_PIECE) as usize),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_beyond_the_upload_queue_are_rejected() {
    let mut rig = Rig::new(seeder_config(1, 2), 4, &all(4));
    let conn = rig.connect(5, &[]);
    rig.take();
    for local in 0..4 {
        rig.message(conn, Message::Request(piece(local)));
    }
    let transmits = rig.take_transmits();
    assert_eq!(pieces_sent(&transmits, conn), vec![0], "one active upload");
    assert_eq!(
        sent_to(&transmits, conn)
            .into_iter()
            .filter(|m| matches!(m, Message::Reject(_)))
            .collect::<Vec<_>>(),
        vec![Message::Reject(piece(2)), Message::Reject(piece(3))],
        "one active and one queued fill the queue of two"
    );
    rig.piece_sent(conn, piece(0));
    assert_eq!(pieces_sent(&rig.take_transmits(), conn), vec![1]);
    rig.message(conn, Message::Request(piece(2)));
    assert_eq!(rig.take_transmits(), vec![], "queued behind piece 1");
    rig.piece_sent(conn, piece(1));
    assert_eq!(pieces_sent(&rig.take_transmits(), conn), vec![2]);
}

#[test]
fn active_uploads_are_bounded_until_sent() {
    for active_max in [1, 2, 3] {
        let mut rig = Rig::new(seeder_config(active_max, 4), 4, &all(4));
        let conns: Vec<_> = (5..8).map(|from| rig.connect(from, &[])).collect();
        for &conn in &conns {
            for local in 0..4 {
                rig.message(conn, Message::Request(piece(local)));
            }
        }
        // Rig::collect asserts the bound on every transmit; finish every upload, oldest first.
        let mut sent = 0;
        while let Some(&(conn, p)) = rig.uploads_in_flight.first() {
            assert_eq!(
                rig.uploads_in_flight.len(),
                (12 - sent).min(active_max),
                "uploads wait only for a slot"
            );
            rig.piece_sent(conn, p);
            sent += 1;
        }
        assert_eq!(sent, 12);
        let transmits = rig.take_transmits();
        for &conn in &conns {
            assert_eq!(
                pieces_sent(&transmits, conn),
                vec![0, 1, 2, 3],
                "FIFO per remote"
            );
        }
    }
}

#[test]
fn cancel_of_a_queued_upload_is_acknowledged_with_reject() {
    let mut rig = Rig::new(seeder_config(1, 4), 4, &all(4));
    let conn = rig.connect(5, &[]);
    for local in 0..3 {
        rig.message(conn, Message::Request(piece(local)));
    }
    rig.take();
    rig.message(conn, Message::Cancel(piece(1)));
    assert_eq!(
        rig.take_transmits(),
        vec![Transmit {
            conn,
            message: Message::Reject(piece(1))
        }]
    );
    // Too late for the upload being sent: no answer, the payload is the answer.
    rig.message(conn, Message::Cancel(piece(0)));
    assert_eq!(rig.take_transmits(), vec![]);
    // A Cancel of nothing is ignored.
    rig.message(conn, Message::Cancel(piece(3)));
    assert_eq!(rig.take_transmits(), vec![]);
    rig.piece_sent(conn, piece(0));
    assert_eq!(
        pieces_sent(&rig.take_transmits(), conn),
        vec![2],
        "piece 1 was dropped"
    );
    rig.piece_sent(conn, piece(2));
    assert_eq!(rig.take_transmits(), vec![]);
    assert_eq!(rig.take_events(), vec![]);
}

#[test]
fn request_for_a_piece_we_lack_is_rejected() {
    let mut rig = Rig::new(config(), 4, &[0, 2]);
    let conn = rig.connect(5, &[]);
    rig.take();
    for local in 0..4 {
        rig.message(conn, Message::Request(piece(local)));
    }
    let transmits = rig.take_transmits();
    assert_eq!(pieces_sent(&transmits, conn), vec![0, 2]);
    assert!(sent_to(&transmits, conn).contains(&Message::Reject(piece(1))));
    assert!(sent_to(&transmits, conn).contains(&Message::Reject(piece(3))));
    assert_eq!(rig.take_events(), vec![]);
}

#[test]
fn piece_index_outside_the_stripe_is_a_violation() {
    let outside = [FIRST_PIECE - 1, FIRST_PIECE + 4, u32::MAX];
    let kinds: [fn(PieceIndex) -> Message; 4] = [
        Message::Have,
        Message::Request,
        Message::Cancel,
        Message::Reject,
    ];
    for raw in outside {
        for make in kinds {
            let message = make(PieceIndex(raw));
            let mut rig = Rig::new(config(), 4, &[0]);
            let conn = rig.connect(5, &[1]);
            rig.take();
            rig.message(conn, message.clone());
            let (_, events) = rig.take();
            let closed = closes(&events);
            assert_eq!(closed.len(), 1, "{message:?}");
            assert!(is_violation(&closed[0].1), "{message:?}: {closed:?}");
            assert!(events.contains(&Event::Blacklisted(peer(5))), "{message:?}");
        }
    }
}

#[test]
fn harmless_messages_are_ignored() {
    let mut rig = Rig::new(config(), 4, &[0]);
    let conn = rig.connect(5, &[1]);
    rig.take();
    for message in [
        Message::Keepalive,
        Message::Have(piece(1)),
        Message::Reject(piece(3)),
        Message::Cancel(piece(2)),
    ] {
        rig.message(conn, message.clone());
        assert_eq!(rig.take_events(), vec![], "{message:?}");
    }
    assert!(rig.is_established(conn));
}

// ------------------------------------------------------------------------------------------
// Dialing
// ------------------------------------------------------------------------------------------

#[test]
fn candidates_are_dialed_up_to_the_targets() {
    let mut rig = Rig::new(config(), 4, &[]);
    rig.blacklist(66);
    rig.take();
    let mut candidates: Vec<Candidate> = (10..20).map(agent).collect();
    candidates.extend([origin(50), origin(51), origin(52), agent(ME), agent(66)]);
    rig.candidates(&candidates);
    let dialed = dials(&rig.take_events());
    let agents = dialed.iter().filter(|p| **p < peer(50)).count();
    let origins = dialed
        .iter()
        .filter(|p| [peer(50), peer(51), peer(52)].contains(p))
        .count();
    assert_eq!(agents, config().dial_target);
    assert_eq!(origins, config().origin_connections_max);
    assert!(!dialed.contains(&peer(ME)));
    assert!(!dialed.contains(&peer(66)));
    // Nothing more while those are in flight, whatever the tracker says.
    rig.candidates(&candidates);
    assert_eq!(dials(&rig.take_events()), vec![]);
    // A connection (inbound ones count too) fills the target; a failure frees a slot.
    let first = dialed[0];
    rig.dial_failed(first);
    let again = dials(&rig.take_events());
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], first, "the failed peer backs off");
}

#[test]
fn dials_stop_at_dials_in_flight_max_and_connections_max() {
    let mut rig = Rig::new(
        SwarmConfig {
            dial_target: 8,
            connections_max: 8,
            dials_in_flight_max: 3,
            ..config()
        },
        4,
        &[],
    );
    rig.candidates(&(10..30).map(agent).collect::<Vec<_>>());
    assert_eq!(dials(&rig.take_events()).len(), 3);
    let mut rig = Rig::new(
        SwarmConfig {
            dial_target: 4,
            connections_max: 4,
            ..config()
        },
        4,
        &[],
    );
    rig.connect(5, &[]);
    rig.inbound();
    rig.candidates(&(10..30).map(agent).collect::<Vec<_>>());
    assert_eq!(dials(&rig.take_events()).len(), 2, "two slots left");
}

#[test]
fn failed_dial_backs_off_exponentially() {
    let cfg = config();
    let mut rig = Rig::new(cfg.clone(), 4, &[]);
    rig.candidates(&[agent(5)]);
    assert_eq!(dials(&rig.take_events()), vec![peer(5)]);
    let waits = [ms(500), ms(1000), ms(2000), ms(4000), ms(4000)];
    for wait in waits {
        rig.advance(ms(10));
        rig.dial_failed(peer(5));
        let failed_at = rig.now;
        assert_eq!(dials(&rig.take_events()), vec![], "no immediate redial");
        assert_eq!(rig.swarm.poll_timeout(), Some(failed_at + wait));
        // Nothing before the back-off ends, not even when the tracker repeats the peer.
        rig.timeout_at(failed_at + (wait - ms(1)));
        rig.candidates(&[agent(5)]);
        assert_eq!(dials(&rig.take_events()), vec![], "wait {wait:?}");
        rig.timeout_at(failed_at + wait);
        assert_eq!(dials(&rig.take_events()), vec![peer(5)], "wait {wait:?}");
    }
    // A connection that moves no piece does not reset it (see the next test).
    rig.outbound(peer(5)).unwrap();
}

#[test]
fn connection_dropped_without_a_piece_backs_the_peer_off() {
    // A peer that accepts and then drops us (it blacklisted us, or is full) must not be
    // re-dialed at once: that made a reconnect storm in the simulator.
    let cfg = config();
    let mut rig = Rig::new(cfg.clone(), 4, &[]);
    rig.candidates(&[agent(5)]);
    assert_eq!(dials(&rig.take_events()), vec![peer(5)]);
    rig.advance(ms(10));
    let conn = rig.outbound(peer(5)).unwrap();
    let handshake = rig.handshake_of(5, &[0, 1]);
    rig.handshake(conn, handshake);
    rig.take();
    rig.advance(ms(10));
    rig.disconnect(conn);
    let dropped_at = rig.now;
    assert_eq!(dials(&rig.take_events()), vec![], "no immediate redial");
    rig.timeout_at(dropped_at + (cfg.dial_backoff - ms(30)));
    assert_eq!(dials(&rig.take_events()), vec![]);
    rig.run_for(cfg.dial_backoff);
    assert_eq!(
        dials(&rig.take_events()),
        vec![peer(5)],
        "dialed after the back-off"
    );
}

#[test]
fn complete_swarms_and_origins_never_dial() {
    let cases = [
        ("complete agent", config(), true),
        ("origin", SwarmConfig::origin(), true),
        ("origin, missing pieces", SwarmConfig::origin(), false),
    ];
    for (name, cfg, complete) in cases {
        let have = if complete { all(4) } else { vec![0] };
        let mut rig = Rig::new(cfg, 4, &have);
        rig.candidates(&[agent(5), agent(6), origin(50)]);
        rig.run_for(secs(60));
        assert_eq!(dials(&rig.take_events()), vec![], "{name}");
        assert_eq!(rig.swarm.poll_timeout(), None, "{name}");
    }
    // An agent that completes stops dialing.
    let mut rig = Rig::new(config(), 1, &[]);
    let conn = rig.connect(5, &[0]);
    rig.candidates(&[agent(6)]);
    let pending = dials(&rig.take_events());
    assert_eq!(pending, vec![peer(6)]);
    rig.serve_one(conn).unwrap();
    assert!(rig.swarm.is_complete());
    rig.dial_failed(peer(6));
    rig.candidates(&[agent(7), agent(8)]);
    rig.run_for(secs(60));
    assert_eq!(dials(&rig.take_events()), vec![]);
}

#[test]
fn candidates_are_bounded_by_candidates_max() {
    let mut rig = Rig::new(
        SwarmConfig {
            candidates_max: 3,
            dial_target: 10,
            connections_max: 20,
            dials_in_flight_max: 20,
            ..config()
        },
        4,
        &[],
    );
    rig.candidates(&(10..20).map(agent).collect::<Vec<_>>());
    let first = dials(&rig.take_events());
    assert_eq!(first.len(), 3, "only three remembered");
    // Candidates being dialed are not forgotten for newer ones.
    rig.candidates(&(20..40).map(agent).collect::<Vec<_>>());
    assert_eq!(dials(&rig.take_events()), vec![]);
    for p in first {
        rig.dial_failed(p);
    }
    rig.candidates(&(40..60).map(agent).collect::<Vec<_>>());
    rig.run_for(secs(10));
    assert!(rig.dials_in_flight.len() <= 3, "{:?}", rig.dials_in_flight);
}

// ------------------------------------------------------------------------------------------
// Stale handles
// ------------------------------------------------------------------------------------------

/// A swarm with a live connection carrying requests and an upload, and a handle of a
/// connection that is gone.
fn rig_with_stale_handle() -> (Rig, ConnHandle, ConnHandle) {
    let mut rig = Rig::new(config(), 4, &[0]);
    let stale = rig.connect(5, &all(4));
    rig.message(stale, Message::Request(piece(0)));
    rig.disconnect(stale);
    let live = rig.connect(6, &all(4));
    rig.message(live, Message::Request(piece(0)));
    rig.take();
    (rig, stale, live)
}

/// One `handle_*` call, given the swarm, the time and the handle.
type StaleCall = Box<dyn Fn(&mut Swarm, Instant, ConnHandle)>;

#[test]
fn stale_handles_are_ignored() {
    let cases: Vec<(&str, StaleCall)> = vec![
        (
            "handshake",
            Box::new(|s, now, c| {
                let handshake = Handshake {
                    info_hash: INFO_HASH,
                    stripe: STRIPE,
                    peer_id: peer(5),
                    is_origin: false,
                    bitfield: Bitfield::full(4),
                };
                s.handle_message(now, c, Message::Handshake(handshake));
            }),
        ),
        (
            "have",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Have(piece(1)))),
        ),
        (
            "request",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Request(piece(0)))),
        ),
        (
            "cancel",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Cancel(piece(0)))),
        ),
        (
            "reject",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Reject(piece(1)))),
        ),
        (
            "complete",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Complete)),
        ),
        (
            "keepalive",
            Box::new(|s, now, c| s.handle_message(now, c, Message::Keepalive)),
        ),
        (
            "out-of-stripe have",
            Box::new(|s, now, c| {
                s.handle_message(now, c, Message::Have(PieceIndex(u32::MAX)));
            }),
        ),
        (
            "piece via handle_message",
            Box::new(|s, now, c| {
                let header = PieceHeader {
                    piece: piece(1),
                    length: PIECE_LEN,
                };
                s.handle_message(now, c, Message::Piece(header));
            }),
        ),
        (
            "piece header",
            Box::new(|s, now, c| {
                let header = PieceHeader {
                    piece: piece(1),
                    length: PIECE_LEN,
                };
                assert_eq!(
                    s.handle_piece_header(now, c, header),
                    PieceDisposition::Discard
                );
            }),
        ),
        (
            "bad piece header",
            Box::new(|s, now, c| {
                let header = PieceHeader {
                    piece: PieceIndex(7),
                    length: 3,
                };
                assert_eq!(
                    s.handle_piece_header(now, c, header),
                    PieceDisposition::Discard
                );
            }),
        ),
        (
            "invalid piece",
            Box::new(|s, now, c| {
                s.handle_piece(now, c, piece(1), PieceVerdict::Invalid);
            }),
        ),
        (
            "piece sent",
            Box::new(|s, now, c| s.handle_piece_sent(now, c, piece(0))),
        ),
        (
            "disconnected",
            Box::new(|s, now, c| s.handle_disconnected(now, c)),
        ),
    ];
    for (name, call) in &cases {
        let (mut rig, stale, live) = rig_with_stale_handle();
        let timeout = rig.swarm.poll_timeout();
        let uploads = rig.uploads_in_flight.clone();
        let now = rig.now;
        call(&mut rig.swarm, now, stale);
        assert_eq!(rig.swarm.poll_transmit(), None, "{name}");
        assert_eq!(rig.swarm.poll_event(), None, "{name}");
        assert_eq!(rig.swarm.poll_timeout(), timeout, "{name}");
        assert_eq!(rig.swarm.n_connections(), 1, "{name}");
        assert!(rig.is_established(live), "{name}");
        assert_eq!(rig.swarm.have(), &bits(4, &[0]), "{name}");
        // The live connection's upload is untouched.
        assert_eq!(uploads, vec![(live, piece(0))], "{name}");
        rig.piece_sent(live, piece(0));
        assert_eq!(rig.uploads_in_flight, vec![], "{name}");
    }
}

#[test]
fn stale_handle_of_a_reused_slot_is_ignored() {
    let mut rig = Rig::new(config(), 4, &[]);
    let old = rig.connect(5, &[1]);
    rig.disconnect(old);
    let new = rig.inbound();
    assert_eq!(new.index, old.index, "the slot is reused");
    assert_ne!(new, old);
    // Were these taken for the new connection, it would be closed (message before handshake)
    // or established as peer 5.
    rig.message(old, Message::Have(piece(0)));
    let handshake = rig.handshake_of(5, &[1]);
    rig.handshake(old, handshake);
    assert_eq!(rig.take_events(), vec![]);
    assert!(!rig.is_established(new));
    let handshake = rig.handshake_of(6, &[2]);
    rig.handshake(new, handshake);
    assert!(rig.is_established(new));
}

#[test]
fn valid_piece_of_a_connection_closed_meanwhile_is_kept() {
    // Documented exception to "stale handles are ignored": the payload was accepted, read and
    // verified, and the bytes are in the store, so the piece is ours.
    let mut rig = Rig::new(
        SwarmConfig {
            requests_per_connection_max: 1,
            ..config()
        },
        3,
        &[],
    );
    let source = rig.connect(5, &all(3));
    let other = rig.connect(6, &[]);
    let [asked] = rig.outstanding(source)[..] else {
        panic!()
    };
    let header = rig.header_of(asked);
    assert_eq!(rig.header(source, header), PieceDisposition::Accept);
    rig.disconnect(source);
    rig.take();
    rig.verdict(source, asked, PieceVerdict::Valid);
    assert!(rig.swarm.have().get(asked));
    assert_eq!(
        sent_to(&rig.take_transmits(), other),
        vec![Message::Have(piece(asked))]
    );
    // An invalid one is simply forgotten (its sender is gone).
    let mut rig = Rig::new(config(), 3, &[]);
    let source = rig.connect(5, &all(3));
    let asked = rig.outstanding(source)[0];
    let header = rig.header_of(asked);
    rig.header(source, header);
    rig.disconnect(source);
    rig.take();
    rig.verdict(source, asked, PieceVerdict::Invalid);
    assert_eq!(rig.take(), (vec![], vec![]));
    assert!(!rig.swarm.have().get(asked));
}

// ------------------------------------------------------------------------------------------
// Two swarms
// ------------------------------------------------------------------------------------------

#[test]
fn pair_downloads_a_stripe_within_the_limits() {
    let seeder = SwarmConfig {
        uploads_active_max: 1,
        ..config()
    };
    let leecher = SwarmConfig {
        requests_per_connection_max: 3,
        ..config()
    };
    for order in [None, Some(1), Some(2)] {
        let mut pair = Pair::new(
            9,
            [
                (seeder.clone(), 1, &all(9)[..]),
                (leecher.clone(), 2, &[][..]),
            ],
            order,
        );
        let now = pair.now;
        pair.swarms[1].handle_peers(now, &[agent(1)]);
        pair.collect(1);
        // Pair::collect checks the pipeline and upload bounds on every transmit.
        pair.run();
        assert!(pair.swarms[1].is_complete(), "no timer was needed");
        assert_eq!(
            pair.events[1]
                .iter()
                .filter(|e| **e == Event::Complete)
                .count(),
            1
        );
        assert_eq!(pair.swarms[0].n_connections(), 0, "both complete: closed");
        assert_eq!(pair.swarms[1].n_connections(), 0);
        assert_eq!(
            closes(&pair.events[1]),
            vec![(pair.links[0].ends[1], CloseReason::BothComplete)]
        );
        assert!(!pair.step(), "no timer left");
    }
}

#[test]
fn pair_with_a_seeder_that_never_answers_settles() {
    // Every request to the seeder is lost: the leecher cancels them at the request timeout,
    // and the connection is closed (idle or too slow); no timer keeps spinning.
    let mut pair = Pair::new(
        3,
        [(config(), 1, &all(3)[..]), (config(), 2, &[][..])],
        None,
    );
    pair.lose_requests_to = Some(0);
    let now = pair.now;
    pair.swarms[1].handle_peers(now, &[agent(1)]);
    pair.collect(1);
    pair.run();
    assert_eq!(pair.links.len(), 1);
    // Pair::step checks that every wake-up moves time forward.
    let mut steps = 0;
    while pair.links[0].open[1] {
        assert!(
            pair.step(),
            "a timer is pending while the connection is open"
        );
        steps += 1;
        assert!(steps < 100, "timers never settle");
    }
    assert!(pair.now <= Instant::ZERO + config().idle_timeout);
    assert_eq!(pair.swarms[1].have().count_ones(), 0);
    let reasons: Vec<_> = closes(&pair.events[1])
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(
        matches!(reasons[..], [CloseReason::Idle | CloseReason::TooSlow]) || reasons.is_empty(),
        "{reasons:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Arbitrary inputs
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct FuzzSetup {
    n_pieces: usize,
    have_seed: u64,
    config: SwarmConfig,
}

#[derive(Debug, Clone)]
enum Op {
    Inbound,
    /// Connects a dial in flight.
    Outbound {
        pick: u8,
    },
    /// An outbound connection nobody asked for.
    OutboundUndialed {
        peer: u8,
    },
    DialFailed {
        pick: u8,
    },
    Peers {
        peers: Vec<(u8, bool)>,
    },
    Handshake {
        conn: u8,
        peer: u8,
        flaw: u8,
        ones: u64,
        is_origin: bool,
    },
    Message {
        conn: u8,
        kind: u8,
        piece: u16,
    },
    /// Answers an outstanding request: 0 valid, 1 invalid, 2 header now and verdict later,
    /// 3 valid reported twice.
    Answer {
        conn: u8,
        pick: u8,
        how: u8,
    },
    /// Reports the verdict of a payload accepted earlier (its connection may be gone).
    LateVerdict {
        pick: u8,
        valid: bool,
    },
    RejectOutstanding {
        conn: u8,
        pick: u8,
    },
    Header {
        conn: u8,
        piece: u16,
        length_ok: bool,
    },
    StaleVerdict {
        conn: u8,
        piece: u16,
        valid: bool,
    },
    PieceSent {
        pick: u8,
        stale: bool,
    },
    Disconnect {
        conn: u8,
    },
    Advance {
        ms: u16,
    },
    Timeout,
}

fn setup_strategy() -> impl Strategy<Value = FuzzSetup> {
    (
        (
            prop::sample::select(vec![1usize, 2, 5, 10, 70]),
            any::<u64>(),
            prop::bool::weighted(0.15),
        ),
        (
            1..7usize,
            0..7usize,
            1..4usize,
            0..3usize,
            1..4usize,
            1..4usize,
        ),
        (1..7usize, 1..4usize, 1..5usize, 0..3usize, any::<u64>()),
    )
        .prop_map(
            |(
                (n_pieces, have_seed, is_origin),
                (connections_max, dial_target, requests, queue_extra, uploads, duplicates),
                (candidates, blacklist, dials, origins, seed),
            )| {
                let config = SwarmConfig {
                    is_origin,
                    dial_target: dial_target.min(connections_max),
                    connections_max,
                    origin_connections_max: origins,
                    dials_in_flight_max: dials,
                    requests_per_connection_max: requests,
                    upload_queue_per_connection_max: requests + queue_extra,
                    uploads_active_max: uploads,
                    endgame_duplicates_max: duplicates,
                    candidates_max: candidates,
                    blacklist_max: blacklist,
                    seed,
                    ..config()
                };
                FuzzSetup {
                    n_pieces,
                    have_seed,
                    config,
                }
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Inbound),
        2 => any::<u8>().prop_map(|pick| Op::Outbound { pick }),
        1 => any::<u8>().prop_map(|peer| Op::OutboundUndialed { peer }),
        1 => any::<u8>().prop_map(|pick| Op::DialFailed { pick }),
        2 => prop::collection::vec((any::<u8>(), prop::bool::weighted(0.2)), 0..6)
            .prop_map(|peers| Op::Peers { peers }),
        8 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u64>(), prop::bool::weighted(0.15))
            .prop_map(|(conn, peer, flaw, ones, is_origin)| Op::Handshake {
                conn,
                peer,
                flaw,
                ones,
                is_origin
            }),
        8 => (any::<u8>(), 0..6u8, any::<u16>())
            .prop_map(|(conn, kind, piece)| Op::Message { conn, kind, piece }),
        10 => (any::<u8>(), any::<u8>(), 0..4u8)
            .prop_map(|(conn, pick, how)| Op::Answer { conn, pick, how }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(pick, valid)| Op::LateVerdict { pick, valid }),
        2 => (any::<u8>(), any::<u8>())
            .prop_map(|(conn, pick)| Op::RejectOutstanding { conn, pick }),
        1 => (any::<u8>(), any::<u16>(), any::<bool>())
            .prop_map(|(conn, piece, length_ok)| Op::Header { conn, piece, length_ok }),
        1 => (any::<u8>(), any::<u16>(), any::<bool>())
            .prop_map(|(conn, piece, valid)| Op::StaleVerdict { conn, piece, valid }),
        3 => (any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stale)| Op::PieceSent { pick, stale }),
        1 => any::<u8>().prop_map(|conn| Op::Disconnect { conn }),
        2 => prop_oneof![4 => 0..2_000u16, 1 => 0..60_000u16].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Timeout),
    ]
}

/// Peers of the arbitrary inputs: a handful of agents, and ourselves.
fn pool_peer(sel: u8) -> PeerId {
    match sel % 8 {
        7 => peer(ME),
        n => peer(1 + u64::from(n)),
    }
}

/// A piece index, mostly inside the stripe, sometimes just outside or absurd.
fn arbitrary_piece(sel: u16, n_pieces: usize) -> PieceIndex {
    if sel % 11 == 10 {
        let outside = [0, FIRST_PIECE - 1, FIRST_PIECE + n_pieces as u32, u32::MAX];
        PieceIndex(outside[usize::from(sel / 11) % outside.len()])
    } else {
        piece(usize::from(sel) % n_pieces)
    }
}

fn arbitrary_bits(n_pieces: usize, seed: u64) -> Bitfield {
    let mut rng = Rng::new(seed);
    let density = rng.below(4);
    let mut bits = Bitfield::new(n_pieces);
    for local in 0..n_pieces {
        if rng.below(3) < density {
            bits.set(local);
        }
    }
    bits
}

fn pick<T: Copy>(items: &[T], sel: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(sel) % items.len()])
}

/// Mostly one of `likely` (where the input makes sense), sometimes any handle ever seen,
/// closed ones included.
fn choose(sel: u8, likely: &[ConnHandle], any: &[ConnHandle]) -> Option<ConnHandle> {
    if sel < 224 {
        pick(likely, sel)
    } else {
        pick(any, sel)
    }
}

fn apply(rig: &mut Rig, accepted: &mut Vec<(ConnHandle, usize)>, op: Op) {
    let n_pieces = rig.n_pieces();
    let handles = rig.handles.clone();
    let live: Vec<ConnHandle> = rig.remotes.keys().copied().collect();
    let established: Vec<ConnHandle> = rig.swarm.peers().map(|(c, _, _)| c).collect();
    let handshaking: Vec<ConnHandle> = live
        .iter()
        .copied()
        .filter(|c| !established.contains(c))
        .collect();
    match op {
        Op::Inbound => {
            let full = rig.swarm.n_connections() >= rig.swarm.config().connections_max;
            let result = rig.try_inbound();
            assert_eq!(result.is_err(), full, "{result:?}");
        }
        Op::Outbound { pick: sel } => {
            if let Some(to) = pick(&rig.dials_in_flight, sel) {
                // It may refuse a dial it asked for (full by now, or the peer blacklisted
                // meanwhile), but not as one it never asked for.
                let result = rig.outbound(to);
                assert_ne!(result, Err(ConnectError::NotDialed));
            }
        }
        Op::OutboundUndialed { peer: sel } => {
            let to = pool_peer(sel);
            if !rig.dials_in_flight.contains(&to) {
                assert_eq!(rig.outbound(to), Err(ConnectError::NotDialed));
            }
        }
        Op::DialFailed { pick: sel } => {
            if let Some(to) = pick(&rig.dials_in_flight, sel) {
                rig.dial_failed(to);
            }
        }
        Op::Peers { peers } => {
            let candidates: Vec<Candidate> = peers
                .iter()
                .map(|&(sel, is_origin)| Candidate {
                    peer: pool_peer(sel),
                    is_origin,
                })
                .collect();
            rig.candidates(&candidates);
        }
        Op::Handshake {
            conn,
            peer: sel,
            flaw,
            ones,
            is_origin,
        } => {
            let Some(conn) = choose(conn, &handshaking, &handles) else {
                return;
            };
            let mut bitfield = arbitrary_bits(n_pieces, ones);
            if is_origin {
                bitfield = Bitfield::full(n_pieces);
            }
            let mut handshake = Handshake {
                info_hash: INFO_HASH,
                stripe: STRIPE,
                peer_id: pool_peer(sel),
                is_origin,
                bitfield,
            };
            match flaw % 20 {
                16 => handshake.info_hash = InfoHash([9; 32]),
                17 => handshake.stripe = StripeIndex(STRIPE.0 + 1),
                18 => handshake.bitfield = Bitfield::new(n_pieces + 1),
                19 => handshake.bitfield = Bitfield::new(n_pieces - 1),
                _ => {}
            }
            rig.handshake(conn, handshake);
        }
        Op::Message { conn, kind, piece } => {
            let Some(conn) = choose(conn, &established, &handles) else {
                return;
            };
            let p = arbitrary_piece(piece, n_pieces);
            if kind == 3 && rig.is_receiving(conn, p) {
                // A remote never rejects a request whose payload it is sending: the swarm
                // would take the Reject as the answer, and the payload as another's.
                return;
            }
            let message = match kind {
                0 => Message::Have(p),
                1 => Message::Request(p),
                2 => Message::Cancel(p),
                3 => Message::Reject(p),
                4 => Message::Complete,
                _ => Message::Keepalive,
            };
            rig.message(conn, message);
        }
        Op::Answer {
            conn,
            pick: sel,
            how,
        } => {
            let Some(conn) = pick(&established, conn) else {
                return;
            };
            let Some(local) = pick(&rig.outstanding(conn), sel) else {
                return;
            };
            let header = rig.header_of(local);
            let disposition = rig.header(conn, header);
            if disposition == PieceDisposition::Accept {
                match how {
                    0 => rig.verdict(conn, local, PieceVerdict::Valid),
                    1 => rig.verdict(conn, local, PieceVerdict::Invalid),
                    2 => accepted.push((conn, local)),
                    _ => {
                        rig.verdict(conn, local, PieceVerdict::Valid);
                        rig.verdict(conn, local, PieceVerdict::Valid);
                    }
                }
            }
        }
        Op::LateVerdict { pick: sel, valid } => {
            if accepted.is_empty() {
                return;
            }
            let (conn, local) = accepted.remove(usize::from(sel) % accepted.len());
            let verdict = if valid {
                PieceVerdict::Valid
            } else {
                PieceVerdict::Invalid
            };
            rig.verdict(conn, local, verdict);
        }
        Op::RejectOutstanding { conn, pick: sel } => {
            let Some(conn) = pick(&established, conn) else {
                return;
            };
            let Some(local) = pick(&rig.outstanding(conn), sel) else {
                return;
            };
            rig.message(conn, Message::Reject(piece(local)));
        }
        Op::Header {
            conn,
            piece,
            length_ok,
        } => {
            let Some(conn) = choose(conn, &established, &handles) else {
                return;
            };
            let p = arbitrary_piece(piece, n_pieces);
            if rig.is_receiving(conn, p) {
                // Nor does it send one piece twice for one request.
                return;
            }
            let length = match rig.local(p) {
                Some(local) if length_ok => rig.swarm.geometry().piece_len_of(local),
                _ => PIECE_LEN + 1,
            };
            let header = PieceHeader { piece: p, length };
            if rig.header(conn, header) == PieceDisposition::Accept {
                let local = rig.local(p).unwrap();
                rig.verdict(conn, local, PieceVerdict::Valid);
            }
        }
        Op::StaleVerdict { conn, piece, valid } => {
            // Only stale handles: on a live one, a verdict without an accepted header is a
            // driver bug, not a network event.
            let Some(conn) = pick(&handles, conn) else {
                return;
            };
            if rig.remotes.contains_key(&conn) {
                return;
            }
            let p = arbitrary_piece(piece, n_pieces);
            let verdict = if valid {
                PieceVerdict::Valid
            } else {
                PieceVerdict::Invalid
            };
            rig.swarm.handle_piece(rig.now, conn, p, verdict);
            rig.collect();
        }
        Op::PieceSent { pick: sel, stale } => {
            if stale {
                if let Some(conn) = pick(&handles, sel) {
                    rig.piece_sent(conn, arbitrary_piece(u16::from(sel), n_pieces));
                }
            } else if let Some((conn, p)) = pick(&rig.uploads_in_flight, sel) {
                rig.piece_sent(conn, p);
            }
        }
        Op::Disconnect { conn } => {
            if let Some(conn) = pick(&handles, conn) {
                rig.disconnect(conn);
            }
        }
        Op::Advance { ms: by } => rig.advance(ms(u64::from(by))),
        Op::Timeout => {
            if let Some(at) = rig.swarm.poll_timeout() {
                rig.timeout_at(at.max(rig.now));
            }
        }
    }
}

fn run_arbitrary(setup: FuzzSetup, ops: Vec<Op>) {
    let FuzzSetup {
        n_pieces,
        have_seed,
        config,
    } = setup;
    let have = if config.is_origin {
        Bitfield::full(n_pieces)
    } else {
        arbitrary_bits(n_pieces, have_seed)
    };
    let mut rig = Rig::with_have(config, have);
    let mut accepted = Vec::new();
    for op in ops {
        apply(&mut rig, &mut accepted, op);
    }
    // With no more input, a driver that loops on timers reaches quiet.
    for _ in 0..1000 {
        let Some(at) = rig.swarm.poll_timeout() else {
            return;
        };
        rig.timeout_at(at.max(rig.now));
        rig.take();
    }
    panic!("timers never ran out");
}

/// Deterministic by default (a fixed seed; `PROPTEST_RNG_SEED` and `PROPTEST_CASES` explore
/// further), and no regression files next to the source.
fn fuzz_config() -> ProptestConfig {
    let mut fuzz = ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        fuzz.rng_seed = prop::test_runner::RngSeed::Fixed(0x5eed_5a1d);
    }
    if std::env::var_os("PROPTEST_CASES").is_some() {
        fuzz.cases = ProptestConfig::default().cases;
    }
    fuzz
}

// ==========================================================================================
// Regression tests for bugs this suite found in swarm.rs (all fixed)
// ==========================================================================================
//
// - "reject back-off has no wake-up"
// - "blacklisted peer re-dialed"
// - "connections_max exceeded"
// - "accepted payload of a cancelled request dropped"
// - "blacklisted peer stays connected"
// - "zero keepalive interval spins" (minor)
// - "completion not announced" (minor)
//
// The arbitrary-input test at the end of this module reaches several of them.

mod fixed_bugs {
    use super::*;

    // --------------------------------------------------------------------------------------
    // Bug "reject back-off has no wake-up": after a Reject (or a request timeout) a connection
    // is not asked again before `now + reject_backoff`, but `poll_timeout` does not include
    // that instant, so nothing wakes the swarm when the back-off ends: a swarm whose only
    // useful connection rejected a request idles until an unrelated timer (a keepalive,
    // `keepalive_interval` later) or input.
    // --------------------------------------------------------------------------------------

    #[test]
    fn rejected_request_is_retried_when_the_back_off_ends() {
        let cfg = SwarmConfig {
            requests_per_connection_max: 1,
            ..config()
        };
        let mut rig = Rig::new(cfg.clone(), 4, &[]);
        let conn = rig.connect(5, &all(4));
        let [asked] = rig.outstanding(conn)[..] else {
            panic!("{:?}", rig.outstanding(conn))
        };
        rig.advance(secs(1));
        rig.message(conn, Message::Reject(piece(asked)));
        rig.take();
        let back_off_end = rig.now + cfg.reject_backoff;
        let wake = rig.swarm.poll_timeout();
        assert!(
            wake.is_some_and(|w| w <= back_off_end),
            "next wake-up {wake:?}, but the back-off ends at {back_off_end:?}"
        );
        rig.run_for(cfg.reject_backoff);
        assert_eq!(requests(&rig.take_transmits(), conn).len(), 1);
    }

    // --------------------------------------------------------------------------------------
    // Bug "blacklisted peer re-dialed": `add_to_blacklist` keeps a candidate that is being
    // dialed (`retain(|c| c.peer != peer || c.dialing)`), and nothing removes it when the dial
    // ends. If the dial fails, the peer is dialed again after its back-off; if it connects,
    // `handle_connected` accepts it (no blacklist check for outbound), the handshake closes it
    // as Blacklisted, and since a successful dial resets the back-off the peer is dialed again
    // at the next input: a tight loop of dials to a blacklisted peer.
    // --------------------------------------------------------------------------------------

    #[test]
    fn blacklisted_peer_is_never_dialed_again() {
        for dial_connects in [false, true] {
            let mut rig = Rig::new(config(), 4, &[]);
            rig.candidates(&[agent(5)]);
            assert_eq!(dials(&rig.take_events()), vec![peer(5)]);
            // Meanwhile peer 5 connects to us and breaks the protocol.
            rig.blacklist(5);
            rig.take();
            if dial_connects {
                if let Ok(conn) = rig.outbound(peer(5)) {
                    let handshake = rig.handshake_of(5, &[]);
                    rig.handshake(conn, handshake);
                    assert!(!rig.is_established(conn));
                }
            } else {
                rig.dial_failed(peer(5));
            }
            rig.run_for(secs(10));
            rig.candidates(&[agent(5)]);
            // (Rig::collect already fails on the Dial.)
            assert!(
                !dials(&rig.take_events()).contains(&peer(5)),
                "{dial_connects}"
            );
        }
    }

    // --------------------------------------------------------------------------------------
    // Bug "connections_max exceeded": `handle_connected` checks `connections_max` for inbound
    // connections against open connections only, not dials in flight, and never checks it for
    // outbound ones. Inbound connections that arrive while dials are in flight take the slots
    // the dials counted on, and the dials then connect anyway.
    // --------------------------------------------------------------------------------------

    #[test]
    fn connections_max_holds_with_dials_in_flight() {
        let mut rig = Rig::new(
            SwarmConfig {
                connections_max: 2,
                dial_target: 2,
                ..config()
            },
            4,
            &[],
        );
        rig.candidates(&[agent(5), agent(6)]);
        assert_eq!(dials(&rig.take_events()).len(), 2);
        let _ = rig.try_inbound();
        let _ = rig.try_inbound();
        // Either the inbound connections or the dials may be refused, not neither.
        // (Rig::collect already fails on the third connection.)
        let _ = rig.outbound(peer(5));
        let _ = rig.outbound(peer(6));
        assert!(
            rig.swarm.n_connections() <= 2,
            "{}",
            rig.swarm.n_connections()
        );
    }

    // --------------------------------------------------------------------------------------
    // Bug "accepted payload of a cancelled request dropped": when a request is cancelled
    // (request timeout, or an endgame duplicate that lost) after its payload header was
    // accepted, `handle_piece` finds the piece no longer in `requests` and ignores the verdict.
    // The remote treats its payload as the answer to the Cancel, so the piece stays in
    // `cancelled` forever, holding a pipeline slot; and a piece the driver verified and stored
    // is not recorded (request timeout case).
    // --------------------------------------------------------------------------------------

    #[test]
    fn payload_accepted_before_its_request_timed_out_is_kept() {
        let cfg = SwarmConfig {
            requests_per_connection_max: 1,
            ..config()
        };
        let mut rig = Rig::new(cfg.clone(), 2, &[]);
        let conn = rig.connect(5, &all(2));
        let [asked] = rig.outstanding(conn)[..] else {
            panic!("{:?}", rig.outstanding(conn))
        };
        // The header arrives in time; the payload takes longer than the request timeout.
        let header = rig.header_of(asked);
        assert_eq!(rig.header(conn, header), PieceDisposition::Accept);
        rig.advance(cfg.request_timeout);
        rig.verdict(conn, asked, PieceVerdict::Valid);
        assert!(
            rig.swarm.have().get(asked),
            "a verified, stored piece was dropped"
        );
        rig.advance(cfg.reject_backoff);
        assert_eq!(
            rig.outstanding(conn),
            vec![1 - asked],
            "the connection is never asked again"
        );
    }

    #[test]
    fn endgame_loser_whose_payload_was_accepted_frees_its_slot() {
        let cfg = SwarmConfig {
            requests_per_connection_max: 1,
            endgame_duplicates_max: 2,
            ..config()
        };
        let mut rig = Rig::new(cfg, 2, &[]);
        let loser = rig.connect(5, &all(2));
        let [x] = rig.outstanding(loser)[..] else {
            panic!("{:?}", rig.outstanding(loser))
        };
        let y = 1 - x;
        let busy = rig.connect(6, &all(2));
        assert_eq!(rig.outstanding(busy), vec![y]);
        let winner = rig.connect(7, &[x]);
        assert_eq!(rig.outstanding(winner), vec![x], "endgame duplicate");
        // Both copies of x are on their way; the winner's completes first, and the Cancel to
        // the loser is too late: its payload is the answer.
        let header = rig.header_of(x);
        assert_eq!(rig.header(loser, header), PieceDisposition::Accept);
        assert_eq!(rig.header(winner, header), PieceDisposition::Accept);
        rig.verdict(winner, x, PieceVerdict::Valid);
        rig.verdict(loser, x, PieceVerdict::Valid);
        // The only other source of y leaves: the loser must be asked for it.
        rig.disconnect(busy);
        rig.advance(secs(1));
        assert_eq!(rig.outstanding(loser), vec![y], "the swarm stalls");
    }

    // --------------------------------------------------------------------------------------
    // Bug "blacklisted peer stays connected": blacklisting a peer does not close its other
    // connections. In a simultaneous open, our outbound connection to peer P is still
    // handshaking when P's inbound connection is established; a protocol violation on the
    // outbound one (before its handshake, or a handshake naming another peer) blacklists P
    // (the dialed id) and leaves the established connection to P open.
    // --------------------------------------------------------------------------------------

    #[test]
    fn blacklisting_a_peer_closes_its_other_connections() {
        for other_id in [false, true] {
            let mut rig = Rig::new(config(), 4, &[]);
            rig.candidates(&[agent(5)]);
            let inbound = rig.connect(5, &[1]);
            let outbound = rig.outbound(peer(5)).unwrap();
            if other_id {
                let handshake = rig.handshake_of(6, &[]);
                rig.handshake(outbound, handshake);
            } else {
                rig.message(outbound, Message::Have(piece(0)));
            }
            // (Rig::collect already fails on the established blacklisted peer.)
            assert!(
                !(rig.swarm.is_blacklisted(&peer(5)) && rig.is_established(inbound)),
                "{other_id}"
            );
        }
    }

    // --------------------------------------------------------------------------------------
    // Bug "zero keepalive interval spins" (minor): `SwarmConfig::validate` accepts
    // `keepalive_interval: 0`; then every `handle_timeout(now)` sends keepalives and leaves
    // `poll_timeout() == Some(now)`, so a driver that loops on timers never advances.
    // --------------------------------------------------------------------------------------

    #[test]
    fn zero_keepalive_interval_is_rejected() {
        let cfg = SwarmConfig {
            keepalive_interval: Duration::ZERO,
            ..config()
        };
        assert!(cfg.validate().is_err());
    }

    // --------------------------------------------------------------------------------------
    // Bug "completion not announced" (minor): on its last piece a swarm sends Complete only to
    // remotes that lack that piece. A remote that has it never learns that we are complete, so
    // two swarms that complete each other both keep the connection (BothComplete never fires)
    // until `idle_timeout`.
    // --------------------------------------------------------------------------------------

    #[test]
    fn swarms_that_complete_each_other_close_their_connection() {
        let mut pair = Pair::new(
            4,
            [(config(), 1, &[0, 1][..]), (config(), 2, &[2, 3][..])],
            None,
        );
        let now = pair.now;
        pair.swarms[1].handle_peers(now, &[agent(1)]);
        pair.collect(1);
        pair.run();
        assert!(pair.swarms[0].is_complete() && pair.swarms[1].is_complete());
        for side in 0..2 {
            assert_eq!(pair.swarms[side].n_connections(), 0, "side {side}");
        }
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn arbitrary_inputs_keep_the_invariants(
            setup in setup_strategy(),
            ops in prop::collection::vec(op_strategy(), 1..160),
        ) {
            run_arbitrary(setup, ops);
        }
    }
}
