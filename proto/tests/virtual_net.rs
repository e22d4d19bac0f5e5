//! A virtual network that drives whole swarms through proto's real state machines.
//!
//! Virtual time, seeded, no sleeping: the clock jumps to the next scheduled action. Every
//! message goes through the real wire codec (`wire::encode` on the sender, `wire::parse` on
//! the receiver); every piece carries real bytes and is checked against the real metainfo's
//! SHA-256 before it is stored; peers are found through the real tracker handout policy.
//!
//! Links are store-and-forward: a host's uplink and downlink each carry one message at a time
//! at their bandwidth, and every message takes the sender's one-way latency on top. A test
//! changes bandwidth or latency by editing a field of [`HostSpec`].

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::metainfo::{Metainfo, MetainfoParams, PieceLengthTable};
use shoal_proto::swarm::{
    Candidate, ConnHandle, Direction, Event, PieceDisposition, PieceVerdict, StripeGeometry, Swarm,
    SwarmConfig,
};
use shoal_proto::tracker::{PeerInfo, PeerStore, TrackerConfig};
use shoal_proto::wire::{self, Message};
use shoal_proto::{Bitfield, Digest, Instant, PeerId, PieceIndex, Rng, StripeIndex};

const PIECE_LEN: u32 = 16 * 1024;
/// Upper bound of actions one scenario may process; a run that needs more is a failure.
const ACTIONS_MAX: u64 = 5_000_000;

#[derive(Clone, Debug)]
struct HostSpec {
    upload_bytes_per_s: u64,
    download_bytes_per_s: u64,
    latency: Duration,
    join_at: Duration,
    leave_at: Option<Duration>,
    liar: bool,
    origin: bool,
}

impl HostSpec {
    fn agent() -> HostSpec {
        HostSpec {
            upload_bytes_per_s: 2_000_000,
            download_bytes_per_s: 2_000_000,
            latency: Duration::from_millis(2),
            join_at: Duration::ZERO,
            leave_at: None,
            liar: false,
            origin: false,
        }
    }

    fn origin() -> HostSpec {
        HostSpec {
            upload_bytes_per_s: 4_000_000,
            origin: true,
            ..HostSpec::agent()
        }
    }
}

struct Host {
    spec: HostSpec,
    id: PeerId,
    swarms: Vec<Swarm>,
    /// Verified pieces, by blob-wide index.
    store: Vec<Option<Vec<u8>>>,
    uplink_free_at: u64,
    downlink_free_at: u64,
    joined: bool,
    alive: bool,
    completed_at: Option<Instant>,
    /// Peers this host's swarms blacklisted.
    blacklisted: Vec<PeerId>,
    /// Per stripe: the earliest timer already scheduled (no duplicates in the queue).
    timer_at: Vec<u64>,
}

#[derive(Debug)]
enum Action {
    Join(usize),
    Leave(usize),
    Announce(usize),
    Timer(usize, usize),
    DialFailed(usize, usize, PeerId),
    /// A frame (and, for a piece, its payload) reaches `host`'s end of a connection.
    Deliver {
        host: usize,
        stripe: usize,
        conn: ConnHandle,
        frame: Vec<u8>,
        payload: Option<Vec<u8>>,
    },
    PieceSent(usize, usize, ConnHandle, PieceIndex),
    Disconnected(usize, usize, ConnHandle),
}

struct Scheduled {
    at: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Net {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    hosts: Vec<Host>,
    by_peer: BTreeMap<PeerId, usize>,
    /// (host, stripe, conn) → the other end (host, conn).
    links: BTreeMap<(usize, usize, ConnHandle), (usize, ConnHandle)>,
    tracker: PeerStore,
    metainfo: Metainfo,
    blob: Vec<u8>,
    actions: u64,
    corrupted_pieces_sent: u64,
    /// Piece payload bytes uploaded by origins.
    origin_piece_bytes: u64,
}

fn blob_of(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

impl Net {
    fn new(blob_len: usize, pieces_per_stripe: u32, specs: Vec<HostSpec>, seed: u64) -> Net {
        let blob = blob_of(blob_len, seed);
        let params = MetainfoParams {
            piece_lengths: PieceLengthTable::new(vec![(u64::MAX, PIECE_LEN)]).unwrap(),
            pieces_per_stripe,
            ..MetainfoParams::default()
        };
        let metainfo = Metainfo::build(Digest::sha256_of(&blob), &blob, &params).unwrap();
        let n_stripes = metainfo.n_stripes() as usize;
        let mut rng = Rng::new(seed);
        let tracker_config = TrackerConfig {
            announce_interval: Duration::from_secs(2),
            ..TrackerConfig::default()
        };
        let mut net = Net {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts: Vec::new(),
            by_peer: BTreeMap::new(),
            links: BTreeMap::new(),
            tracker: PeerStore::new(tracker_config, rng.next_u64()).unwrap(),
            metainfo,
            blob,
            actions: 0,
            corrupted_pieces_sent: 0,
            origin_piece_bytes: 0,
        };
        for (index, spec) in specs.into_iter().enumerate() {
            let id = PeerId::from_u64(index as u64 + 1);
            let mut swarms = Vec::new();
            let mut store = vec![None; net.metainfo.n_pieces() as usize];
            for stripe in 0..n_stripes {
                let geometry = StripeGeometry::of(&net.metainfo, StripeIndex(stripe as u32));
                let mut config = if spec.origin {
                    SwarmConfig::origin()
                } else {
                    SwarmConfig::default()
                };
                config.seed = rng.next_u64();
                config.request_timeout = Duration::from_secs(2);
                config.idle_timeout = Duration::from_secs(5);
                let have = if spec.origin {
                    Bitfield::full(geometry.n_pieces as usize)
                } else {
                    Bitfield::new(geometry.n_pieces as usize)
                };
                swarms.push(Swarm::new(config, geometry, id, have).unwrap());
            }
            if spec.origin {
                for piece in 0..net.metainfo.n_pieces() {
                    store[piece as usize] = Some(net.piece_bytes(PieceIndex(piece)).to_vec());
                }
            }
            net.schedule_at(duration_nanos(spec.join_at), Action::Join(index));
            if let Some(leave_at) = spec.leave_at {
                net.schedule_at(duration_nanos(leave_at), Action::Leave(index));
            }
            net.by_peer.insert(id, index);
            net.hosts.push(Host {
                spec,
                id,
                swarms,
                store,
                uplink_free_at: 0,
                downlink_free_at: 0,
                joined: false,
                alive: false,
                completed_at: None,
                blacklisted: Vec::new(),
                timer_at: vec![u64::MAX; n_stripes],
            });
        }
        net
    }

    fn piece_bytes(&self, piece: PieceIndex) -> &[u8] {
        let offset = self.metainfo.piece_offset(piece) as usize;
        let len = self.metainfo.piece_len_of(piece) as usize;
        &self.blob[offset..offset + len]
    }

    fn schedule_at(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            action,
        }));
    }

    fn instant(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    /// Runs until every live non-liar host is complete or `limit` passes.
    fn run(&mut self, limit: Duration) {
        let limit = duration_nanos(limit);
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > limit || self.all_done() {
                break;
            }
            self.actions += 1;
            assert!(self.actions < ACTIONS_MAX, "scenario did not settle");
            self.now = next.at;
            self.apply(next.action);
        }
    }

    fn all_done(&self) -> bool {
        self.hosts.iter().all(|h| {
            h.spec.origin || h.spec.liar || h.completed_at.is_some() || h.spec.leave_at.is_some()
        }) && self.hosts.iter().any(|h| h.joined)
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Join(host) => {
                self.hosts[host].joined = true;
                self.hosts[host].alive = true;
                self.announce(host);
            }
            Action::Leave(host) => self.leave(host),
            Action::Announce(host) => self.announce(host),
            Action::Timer(host, stripe) => {
                if self.hosts[host].timer_at[stripe] == self.now {
                    self.hosts[host].timer_at[stripe] = u64::MAX;
                }
                if self.hosts[host].alive {
                    let now = self.instant();
                    self.hosts[host].swarms[stripe].handle_timeout(now);
                    self.drain(host, stripe);
                }
            }
            Action::DialFailed(host, stripe, peer) => {
                if self.hosts[host].alive {
                    let now = self.instant();
                    self.hosts[host].swarms[stripe].handle_dial_failed(now, peer);
                    self.drain(host, stripe);
                }
            }
            Action::Deliver {
                host,
                stripe,
                conn,
                frame,
                payload,
            } => self.deliver(host, stripe, conn, &frame, payload),
            Action::PieceSent(host, stripe, conn, piece) => {
                if self.hosts[host].alive {
                    let now = self.instant();
                    self.hosts[host].swarms[stripe].handle_piece_sent(now, conn, piece);
                    self.drain(host, stripe);
                }
            }
            Action::Disconnected(host, stripe, conn) => {
                if self.hosts[host].alive && self.links.remove(&(host, stripe, conn)).is_some() {
                    let now = self.instant();
                    self.hosts[host].swarms[stripe].handle_disconnected(now, conn);
                    self.drain(host, stripe);
                }
            }
        }
    }

    fn announce(&mut self, host: usize) {
        if !self.hosts[host].alive {
            return;
        }
        let now = self.instant();
        let h = &self.hosts[host];
        let info = PeerInfo {
            id: h.id,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            is_origin: h.spec.origin,
            is_complete: h.spec.origin || h.completed_at.is_some(),
        };
        let response = self
            .tracker
            .announce(now, self.metainfo.info_hash(), info)
            .unwrap();
        let candidates: Vec<Candidate> = response
            .peers
            .iter()
            .map(|p| Candidate {
                peer: p.id,
                is_origin: p.is_origin,
            })
            .collect();
        for stripe in 0..self.hosts[host].swarms.len() {
            self.hosts[host].swarms[stripe].handle_peers(now, &candidates);
            self.drain(host, stripe);
        }
        let next = self.now + duration_nanos(response.interval);
        self.schedule_at(next, Action::Announce(host));
    }

    fn leave(&mut self, host: usize) {
        self.hosts[host].alive = false;
        self.tracker
            .remove(&self.metainfo.info_hash(), &self.hosts[host].id);
        let latency = duration_nanos(self.hosts[host].spec.latency);
        let mine: Vec<_> = self
            .links
            .iter()
            .filter(|((h, _, _), _)| *h == host)
            .map(|(&key, &other)| (key, other))
            .collect();
        for ((_, stripe, conn), (other_host, other_conn)) in mine {
            self.links.remove(&(host, stripe, conn));
            self.schedule_at(
                self.now + latency,
                Action::Disconnected(other_host, stripe, other_conn),
            );
        }
    }

    fn deliver(
        &mut self,
        host: usize,
        stripe: usize,
        conn: ConnHandle,
        frame: &[u8],
        payload: Option<Vec<u8>>,
    ) {
        if !self.hosts[host].alive || !self.links.contains_key(&(host, stripe, conn)) {
            return;
        }
        let (message, consumed) = wire::parse(frame)
            .expect("frames from the state machine are valid")
            .expect("a whole frame was sent");
        assert_eq!(consumed, frame.len());
        let now = self.instant();
        match message {
            Message::Piece(header) => {
                let payload = payload.expect("a piece frame carries its payload");
                assert_eq!(payload.len(), header.length as usize);
                let swarm = &mut self.hosts[host].swarms[stripe];
                if swarm.handle_piece_header(now, conn, header) == PieceDisposition::Accept {
                    let verdict = if self.metainfo.verify_piece(header.piece, &payload) {
                        self.hosts[host].store[header.piece.0 as usize] = Some(payload);
                        PieceVerdict::Valid
                    } else {
                        PieceVerdict::Invalid
                    };
                    self.hosts[host].swarms[stripe].handle_piece(now, conn, header.piece, verdict);
                }
            }
            other => self.hosts[host].swarms[stripe].handle_message(now, conn, other),
        }
        self.drain(host, stripe);
    }

    /// Drains a swarm's outputs in the documented order: transmits, events, timeout.
    fn drain(&mut self, host: usize, stripe: usize) {
        while let Some(transmit) = self.hosts[host].swarms[stripe].poll_transmit() {
            self.transmit(host, stripe, transmit.conn, &transmit.message);
        }
        while let Some(event) = self.hosts[host].swarms[stripe].poll_event() {
            self.event(host, stripe, event);
        }
        if let Some(at) = self.hosts[host].swarms[stripe].poll_timeout() {
            let at = at.as_nanos().max(self.now + 1);
            if at < self.hosts[host].timer_at[stripe] {
                self.hosts[host].timer_at[stripe] = at;
                self.schedule_at(at, Action::Timer(host, stripe));
            }
        }
        if self.hosts[host].completed_at.is_none()
            && self.hosts[host].swarms.iter().all(Swarm::is_complete)
        {
            self.hosts[host].completed_at = Some(self.instant());
        }
    }

    fn transmit(&mut self, host: usize, stripe: usize, conn: ConnHandle, message: &Message) {
        let Some(&(to_host, to_conn)) = self.links.get(&(host, stripe, conn)) else {
            return;
        };
        let mut frame = Vec::new();
        wire::encode(message, &mut frame);
        let mut payload = None;
        if let Message::Piece(header) = message {
            let mut bytes = self.hosts[host].store[header.piece.0 as usize]
                .clone()
                .expect("the swarm only serves stored pieces");
            if self.hosts[host].spec.liar {
                bytes[0] ^= 0xff;
                self.corrupted_pieces_sent += 1;
            }
            if self.hosts[host].spec.origin {
                self.origin_piece_bytes += bytes.len() as u64;
            }
            payload = Some(bytes);
        }
        let size = (frame.len() + payload.as_ref().map_or(0, Vec::len)) as u64;
        let sender = &mut self.hosts[host];
        let depart = self.now.max(sender.uplink_free_at)
            + transfer_nanos(size, sender.spec.upload_bytes_per_s);
        sender.uplink_free_at = depart;
        let arrive = depart + duration_nanos(sender.spec.latency);
        let receiver = &mut self.hosts[to_host];
        let received = arrive.max(receiver.downlink_free_at)
            + transfer_nanos(size, receiver.spec.download_bytes_per_s);
        receiver.downlink_free_at = received;
        if let Message::Piece(header) = message {
            self.schedule_at(depart, Action::PieceSent(host, stripe, conn, header.piece));
        }
        self.schedule_at(
            received,
            Action::Deliver {
                host: to_host,
                stripe,
                conn: to_conn,
                frame,
                payload,
            },
        );
    }

    fn event(&mut self, host: usize, stripe: usize, event: Event) {
        let now = self.instant();
        let latency = duration_nanos(self.hosts[host].spec.latency);
        match event {
            Event::Dial(peer) => {
                let target = self.by_peer.get(&peer).copied();
                let accepted = target.filter(|&t| self.hosts[t].alive).and_then(|t| {
                    let inbound = self.hosts[t].swarms[stripe].handle_connected(
                        now,
                        Direction::Inbound,
                        None,
                    );
                    inbound.ok().map(|c| (t, c))
                });
                match accepted {
                    Some((target, target_conn)) => {
                        let conn = self.hosts[host].swarms[stripe]
                            .handle_connected(now, Direction::Outbound, Some(peer))
                            .expect("the swarm asked for this dial");
                        self.links
                            .insert((host, stripe, conn), (target, target_conn));
                        self.links
                            .insert((target, stripe, target_conn), (host, conn));
                        self.drain(target, stripe);
                        self.drain(host, stripe);
                    }
                    None => {
                        self.schedule_at(
                            self.now + 2 * latency,
                            Action::DialFailed(host, stripe, peer),
                        );
                    }
                }
            }
            Event::Close { conn, .. } => {
                if let Some((other_host, other_conn)) = self.links.remove(&(host, stripe, conn)) {
                    self.schedule_at(
                        self.now + latency,
                        Action::Disconnected(other_host, stripe, other_conn),
                    );
                }
            }
            Event::Blacklisted(peer) => self.hosts[host].blacklisted.push(peer),
            Event::Complete => {}
        }
    }

    fn completion_secs(&self) -> Vec<f64> {
        self.hosts
            .iter()
            .filter(|h| !h.spec.origin)
            .map(|h| {
                h.completed_at.map_or(f64::INFINITY, |t| {
                    t.as_secs_f64() - h.spec.join_at.as_secs_f64()
                })
            })
            .collect()
    }

    /// Every honest host that stayed has every piece, byte-identical to the blob.
    fn assert_honest_complete(&self) {
        for (index, h) in self.hosts.iter().enumerate() {
            if h.spec.liar || h.spec.leave_at.is_some() || h.spec.origin {
                continue;
            }
            assert!(
                h.completed_at.is_some(),
                "host {index} incomplete: {:?}",
                h.swarms
                    .iter()
                    .map(|s| s.have().count_ones())
                    .collect::<Vec<_>>()
            );
            for piece in 0..self.metainfo.n_pieces() {
                let stored = h.store[piece as usize].as_deref();
                assert_eq!(
                    stored,
                    Some(self.piece_bytes(PieceIndex(piece))),
                    "host {index} piece {piece}"
                );
            }
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap()
}

fn transfer_nanos(bytes: u64, bytes_per_s: u64) -> u64 {
    bytes * 1_000_000_000 / bytes_per_s
}

fn specs(n_origins: usize, n_agents: usize) -> Vec<HostSpec> {
    let mut specs = vec![HostSpec::origin(); n_origins];
    specs.extend(vec![HostSpec::agent(); n_agents]);
    specs
}

#[test]
fn origin_and_dozens_of_peers_all_finish_with_every_piece() {
    let mut net = Net::new(64 * PIECE_LEN as usize + 1234, 16, specs(1, 40), 1);
    assert_eq!(net.metainfo.n_stripes(), 5);
    net.run(Duration::from_secs(120));
    net.assert_honest_complete();
    // The peers did most of the work: origins serve only what nobody else has.
    let copies = net.origin_piece_bytes as f64 / net.blob.len() as f64;
    let times = net.completion_secs();
    eprintln!("origin copies {copies:.2}, completion {times:?}");
    assert!(
        copies < 10.0,
        "origin served {copies:.2} copies to 40 peers"
    );
}

#[test]
fn several_origins_many_stripes() {
    let mut net = Net::new(200 * PIECE_LEN as usize, 8, specs(3, 30), 2);
    assert_eq!(net.metainfo.n_stripes(), 25);
    net.run(Duration::from_secs(120));
    net.assert_honest_complete();
}

#[test]
fn lying_peer_is_blacklisted_and_the_rest_finish() {
    let mut specs = specs(1, 24);
    for liar in [3, 11] {
        specs[liar].liar = true;
        specs[liar].upload_bytes_per_s *= 4; // a fast liar is tempting
    }
    let mut net = Net::new(48 * PIECE_LEN as usize, 16, specs, 3);
    // A liar needs pieces to lie about: it joins, downloads honestly, and serves garbage.
    net.run(Duration::from_secs(120));
    net.assert_honest_complete();
    assert!(net.corrupted_pieces_sent > 0, "the liars never got to lie");
    let liar_ids = [net.hosts[3].id, net.hosts[11].id];
    let blacklisted_liars = net
        .hosts
        .iter()
        .flat_map(|h| h.blacklisted.iter())
        .filter(|p| liar_ids.contains(p))
        .count();
    assert!(blacklisted_liars > 0);
    for h in &net.hosts {
        for peer in &h.blacklisted {
            assert!(liar_ids.contains(peer), "honest peer {peer} blacklisted");
        }
    }
}

#[test]
fn peer_leaving_mid_transfer_does_not_stall_the_rest() {
    let mut specs = specs(1, 20);
    for leaver in [2, 5, 9] {
        specs[leaver].leave_at = Some(Duration::from_millis(300));
        specs[leaver].upload_bytes_per_s *= 3;
    }
    let mut net = Net::new(96 * PIECE_LEN as usize, 32, specs, 4);
    net.run(Duration::from_secs(120));
    net.assert_honest_complete();
    for leaver in [2, 5, 9] {
        let h = &net.hosts[leaver];
        let have: usize = h.swarms.iter().map(|s| s.have().count_ones()).sum();
        assert!(
            have < 96,
            "leaver {leaver} should have left before finishing"
        );
    }
}

#[test]
fn late_joiner_finishes_from_complete_peers() {
    let mut specs = specs(1, 16);
    for late in [15, 16] {
        specs[late].join_at = Duration::from_secs(5);
    }
    let mut net = Net::new(32 * PIECE_LEN as usize, 16, specs, 5);
    net.run(Duration::from_secs(120));
    net.assert_honest_complete();
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let run = |seed| {
        let mut net = Net::new(40 * PIECE_LEN as usize, 16, specs(1, 12), seed);
        net.run(Duration::from_secs(60));
        net.assert_honest_complete();
        (net.completion_secs(), net.actions)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn one_piece_blob() {
    let mut net = Net::new(100, 16, specs(1, 5), 9);
    assert_eq!(net.metainfo.n_pieces(), 1);
    net.run(Duration::from_secs(30));
    net.assert_honest_complete();
}
