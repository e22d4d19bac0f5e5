//! The discrete-event simulation: proto's real [`Swarm`] state machines, one per
//! (host, blob, stripe), driven in virtual time over a modelled network.
//!
//! # What is simulated
//!
//! - **Hosts.** Origins (hosts `0..n_origins`) hold every blob from t = 0 and seed with
//!   `SwarmConfig::origin()`; agents (the rest) join at their join time with empty stores and
//!   pull every blob at once, one swarm per stripe. A host is done when every stripe of every
//!   blob is complete; its completion time is measured from its join. Agents may be *late*
//!   (join at `late_join_at_s`), *departing* (leave at `depart_at_s`, dropping every
//!   connection and flow) or *liars* (every piece they upload fails verification). The roles
//!   are disjoint and drawn from the seed.
//! - **Tracker.** One logical tracker ([`crate::tracker`]). Each host announces each blob at
//!   join and then at the interval the tracker returns; the request and the response each take
//!   one latency. The response's peers are handed to every stripe swarm of that blob
//!   (`handle_peers`). Hosts announce `is_complete` once they have the whole blob, and keep
//!   announcing (they seed).
//! - **Connections.** When a swarm emits `Event::Dial(peer)`, the dial reaches the peer's swarm
//!   for the same (blob, stripe) one latency later. There, if the peer's host is absent (not
//!   joined yet, or gone) the dialer gets `handle_dial_failed`; otherwise the remote gets
//!   `handle_connected(Inbound)` (a refusal becomes the dialer's `handle_dial_failed`) and the
//!   dialer `handle_connected(Outbound)`, both at that instant. The two `ConnHandle`s are then
//!   paired in per-swarm link tables. A swarm's `Event::Close` removes its end at once, cancels
//!   the link's flows, and reaches the other end as `handle_disconnected` one latency later
//!   (messages already in flight towards it still arrive first).
//!
//! # The network model
//!
//! - **Latency.** Every message and every piece payload's first byte takes the one-way
//!   latency of its host pair: `latency_ms` plus a per-pair jitter, uniform in
//!   `[0, latency_jitter_ms)` and fixed for the run (a hash of the seed and the pair). Equal
//!   latencies keep each connection first-in first-out.
//! - **Control messages** (everything but piece payloads) arrive after that latency; their size
//!   is ignored.
//! - **Piece payloads** are flows ([`crate::flows`]): an upload's `Message::Piece` header
//!   arrives after the latency, when the downloader is asked `handle_piece_header`; if it takes
//!   (or discards) the payload, the bytes then flow at the rate the model gives them: the
//!   smaller of what the uploader's and the downloader's water-filled links allot the flow
//!   (an approximation of max-min sharing, see [`crate::flows`]), re-rated whenever either
//!   endpoint gains or loses a flow. When the last byte arrives the uploader gets `handle_piece_sent` and the downloader
//!   `handle_piece` (verdict `Invalid` if the uploader is a liar). Control messages do not
//!   queue behind payloads.
//!
//! # Timers
//!
//! After every input the driver drains `poll_transmit`, then `poll_event`, then reads
//! `poll_timeout` and keeps one pending wake-up per swarm (lazily invalidated: a wake-up that
//! finds the swarm's timeout later than expected just re-arms). Timers are quantised to
//! `timer_granularity_ms`: when a wake-up is already armed within that span, `poll_timeout`
//! is not read (whatever it says, that wake-up serves it, as `handle_timeout` deals with
//! everything due), and a timeout at or before `now` — which proto should never report right
//! after an input, and once did for as long as a swarm held an idle dial candidate — becomes a
//! wake-up one granularity later, so that virtual time always advances.
//!
//! # Cost
//!
//! A piece costs about seven inputs: the Request, the Piece header (flow start), the flow's
//! end (upload done and piece verified at once) and about four Haves. fleet-15k (15,000
//! hosts, 120,000 swarms) is 113 M inputs; with `perf`, about 60 % of the time is inside
//! proto (`Swarm::maintain` after every input: the candidate scan in `dial` and the
//! `remote_has` loads in `pick`; the connection look-up in `handle_message`), nearly all of
//! it cache misses over 1.6 GB of swarm state. The driver's share is the flow re-rating
//! (about a fifth) and event dispatch. Per input the driver allocates nothing but a boxed
//! handshake and an announce's peer list.
//!
//! # Determinism
//!
//! Everything random is drawn from [`Rng`]s derived from the topology seed; events at the same
//! instant run in the order they were scheduled; no hash-map order affects behaviour; the wall
//! clock is read only by the binary to report how long the run took.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::swarm::{
    Candidate, CloseReason, ConnHandle, Direction, Event, PieceDisposition, PieceVerdict, Swarm,
    SwarmConfig, Transmit,
};
use shoal_proto::wire::{Handshake, Message, PieceHeader};
use shoal_proto::{Bitfield, Instant, PeerId, PieceIndex, Rng};

use crate::SimError;
use crate::flows::{FlowEnd, FlowId, FlowNet};
use crate::geometry::BlobLayout;
use crate::queue::EventQueue;
use crate::topology::Topology;
use crate::tracker::Tracker;

/// Host index standing for the tracker in latency look-ups.
const TRACKER_HOST: u32 = u32::MAX;

/// Progress samples kept for the timeline (one per `timeline_step`).
const TIMELINE_SAMPLES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Origin,
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    NotJoined,
    Present,
    Departed,
}

#[derive(Debug)]
struct Host {
    role: Role,
    is_liar: bool,
    join_at: Instant,
    depart_at: Option<Instant>,
    presence: Presence,
    /// Incomplete stripes over all blobs.
    stripes_left: u32,
    /// Incomplete stripes per blob.
    blob_stripes_left: Vec<u32>,
    done_at: Option<Instant>,
    /// With streaming readers: per blob, the next piece its reader needs (in blob order).
    reader_at: Vec<u32>,
}

impl Host {
    /// Counted in the completion figures: an honest agent that stays.
    fn is_counted(&self) -> bool {
        self.role == Role::Agent && !self.is_liar && self.depart_at.is_none()
    }
}

/// This swarm's end of one connection, indexed by `ConnHandle::index`.
#[derive(Debug, Clone, Copy)]
struct LinkEnd {
    /// `ConnHandle::generation` of the live connection; 0 when the slot is free.
    generation: u32,
    remote_swarm: u32,
    remote_conn: ConnHandle,
}

const LINK_FREE: LinkEnd = LinkEnd {
    generation: 0,
    remote_swarm: 0,
    remote_conn: ConnHandle {
        index: 0,
        generation: 0,
    },
};

#[derive(Debug)]
struct SwarmSlot {
    swarm: Option<Box<Swarm>>,
    links: Vec<LinkEnd>,
    /// The pending wake-up, or `Instant::NEVER`.
    timer_at: Instant,
}

/// Which connection and piece a flow belongs to.
#[derive(Debug, Clone, Copy)]
struct FlowTag {
    up_swarm: u32,
    up_conn: ConnHandle,
    down_swarm: u32,
    down_conn: ConnHandle,
    piece: PieceIndex,
    /// The downloader takes the payload (`Accept`) rather than dropping it (`Discard`).
    accepted: bool,
}

/// A control message in flight. [`Message`] is as large as its largest variant (the
/// handshake, with its bitfield); boxing that one keeps queued events small, which matters with
/// tens of thousands in flight.
#[derive(Debug)]
enum Control {
    Handshake(Box<Handshake>),
    Other(SmallMessage),
}

#[derive(Debug, Clone, Copy)]
enum SmallMessage {
    Have(PieceIndex),
    Request(PieceIndex),
    Cancel(PieceIndex),
    Reject(PieceIndex),
    Complete,
    Keepalive,
}

impl Control {
    /// The control message, or the header of a piece payload (which travels as a flow).
    fn pack(message: Message) -> Result<Control, PieceHeader> {
        let small = match message {
            Message::Handshake(handshake) => return Ok(Control::Handshake(Box::new(handshake))),
            Message::Have(piece) => SmallMessage::Have(piece),
            Message::Request(piece) => SmallMessage::Request(piece),
            Message::Cancel(piece) => SmallMessage::Cancel(piece),
            Message::Reject(piece) => SmallMessage::Reject(piece),
            Message::Complete => SmallMessage::Complete,
            Message::Keepalive => SmallMessage::Keepalive,
            Message::Piece(header) => return Err(header),
        };
        Ok(Control::Other(small))
    }

    fn unpack(self) -> Message {
        match self {
            Control::Handshake(handshake) => Message::Handshake(*handshake),
            Control::Other(SmallMessage::Have(piece)) => Message::Have(piece),
            Control::Other(SmallMessage::Request(piece)) => Message::Request(piece),
            Control::Other(SmallMessage::Cancel(piece)) => Message::Cancel(piece),
            Control::Other(SmallMessage::Reject(piece)) => Message::Reject(piece),
            Control::Other(SmallMessage::Complete) => Message::Complete,
            Control::Other(SmallMessage::Keepalive) => Message::Keepalive,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Join(u32),
    Depart(u32),
    AnnounceArrive {
        host: u32,
        blob: u32,
    },
    AnnounceReply {
        host: u32,
        blob: u32,
        peers: Vec<Candidate>,
    },
    DialArrive {
        from: u32,
        peer: PeerId,
    },
    Deliver {
        to: u32,
        conn: ConnHandle,
        message: Control,
    },
    Disconnect {
        to: u32,
        conn: ConnHandle,
    },
    PieceStart {
        tag: FlowTag,
        header: PieceHeader,
    },
    Timer {
        swarm: u32,
    },
}

/// Counters gathered during a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Inputs handed to swarms or the flow model (stale wake-ups not counted).
    pub events: u64,
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    /// Payload bytes that bought nothing: discarded, invalid, or cut off by a close.
    pub wasted_bytes: u64,
    pub pieces_valid: u64,
    pub pieces_invalid: u64,
    pub pieces_discarded: u64,
    pub flows_cancelled: u64,
    pub dials: u64,
    pub dials_failed: u64,
    pub connections: u64,
    pub announces: u64,
    pub tracker_errors: u64,
    pub blacklistings: u64,
    pub closes_wrong_swarm: u64,
    pub closes_self: u64,
    pub closes_duplicate: u64,
    pub closes_blacklisted: u64,
    pub closes_at_capacity: u64,
    pub closes_protocol_violation: u64,
    pub closes_bad_piece: u64,
    pub closes_both_complete: u64,
    pub closes_idle: u64,
    pub closes_handshake_timeout: u64,
    pub closes_too_slow: u64,
    /// Events by kind: join, depart, announce, announce reply, dial, deliver, disconnect,
    /// piece start, timer (stale included), flow end.
    pub events_by_kind: [u64; 10],
    /// Protocol violations by proto's reason text.
    pub violations: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn count_close(&mut self, reason: &CloseReason) {
        let counter = match reason {
            CloseReason::WrongSwarm => &mut self.closes_wrong_swarm,
            CloseReason::SelfConnection => &mut self.closes_self,
            CloseReason::Duplicate => &mut self.closes_duplicate,
            CloseReason::Blacklisted => &mut self.closes_blacklisted,
            CloseReason::AtCapacity => &mut self.closes_at_capacity,
            CloseReason::ProtocolViolation(why) => {
                *self.violations.entry(why).or_default() += 1;
                &mut self.closes_protocol_violation
            }
            CloseReason::BadPiece(_) => &mut self.closes_bad_piece,
            CloseReason::BothComplete => &mut self.closes_both_complete,
            CloseReason::Idle => &mut self.closes_idle,
            CloseReason::HandshakeTimeout => &mut self.closes_handshake_timeout,
            CloseReason::TooSlow => &mut self.closes_too_slow,
        };
        *counter += 1;
    }
}

/// One point of the run's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_s: f64,
    /// Valid payload bytes received by counted agents / what they need in total.
    pub progress: f64,
    pub hosts_done: u32,
    pub origin_bytes: u64,
    pub live_flows: usize,
}

/// How one host fared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostOutcome {
    pub host: u32,
    pub is_origin: bool,
    pub is_liar: bool,
    pub departed: bool,
    pub join_s: f64,
    /// Seconds from join to done.
    pub completion_s: Option<f64>,
    pub stripes_left: u32,
}

/// A simulation in progress.
#[derive(Debug)]
pub struct Sim {
    seed: u64,
    latency_ns: u64,
    latency_jitter_ns: u64,
    timer_granularity: Duration,
    time_limit: Instant,
    agent_config: SwarmConfig,
    origin_config: SwarmConfig,

    blobs: Vec<BlobLayout>,
    /// (blob, stripe) of each swarm position `k` within a host.
    host_stripes: Vec<(u32, u32)>,
    /// First `k` of each blob.
    blob_first_k: Vec<u32>,
    /// Agents stream every blob in order (see `HostsSection::streaming_readers`).
    streaming_readers: bool,

    now: Instant,
    queue: EventQueue<Ev>,
    net: FlowNet<FlowTag>,
    hosts: Vec<Host>,
    swarms: Vec<SwarmSlot>,
    tracker: Tracker,

    n_counted: u32,
    n_counted_done: u32,
    /// Valid bytes received by counted agents.
    counted_bytes: u64,
    counters: Counters,
    timeline: Vec<Sample>,
    timeline_step: Duration,
    next_sample_at: Instant,
    scratch_flows: Vec<FlowId>,
}

/// Mixes two words into one (splitmix64's finaliser over their combination).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn peer_of(host: u32) -> PeerId {
    PeerId::from_u64(u64::from(host))
}

fn addr_of(host: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + (host % 50_000) as u16))
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

impl Sim {
    pub fn new(topology: &Topology) -> Result<Sim, SimError> {
        topology.validate()?;
        let seed = topology.seed;
        let piece_len = topology
            .pieces
            .piece_len
            .map(|bytes| {
                u32::try_from(bytes.0)
                    .map_err(|_| SimError::Topology("pieces.piece_len is too large".to_string()))
            })
            .transpose()?;
        let blobs = topology
            .blobs
            .iter()
            .enumerate()
            .map(|(index, blob)| {
                BlobLayout::new(
                    index,
                    blob.size.0,
                    piece_len,
                    topology.pieces.pieces_per_stripe,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut host_stripes = Vec::new();
        let mut blob_first_k = Vec::new();
        for (blob_index, blob) in blobs.iter().enumerate() {
            blob_first_k.push(host_stripes.len() as u32);
            for stripe in 0..blob.n_stripes() {
                host_stripes.push((blob_index as u32, stripe));
            }
        }
        let n_origins = topology.origins.count;
        let n_agents = topology.hosts.count;
        let n_hosts = n_origins + n_agents;
        let n_swarms = u64::from(n_hosts) * host_stripes.len() as u64;
        if n_swarms >= u64::from(u32::MAX) {
            return Err(SimError::Topology(format!(
                "{n_hosts} hosts × {} stripes is too many swarms",
                host_stripes.len()
            )));
        }

        let hosts = Self::make_hosts(topology, &blobs);
        let mut net = FlowNet::new();
        for index in 0..n_hosts {
            let (up, down) = if index < n_origins {
                (
                    topology.origins.upload_bytes_per_s.0,
                    topology.origins.download_bytes_per_s.0,
                )
            } else {
                (
                    topology.hosts.upload_bytes_per_s.0,
                    topology.hosts.download_bytes_per_s.0,
                )
            };
            net.add_host(up, down);
        }
        let swarms = (0..n_swarms)
            .map(|_| SwarmSlot {
                swarm: None,
                links: Vec::new(),
                timer_at: Instant::NEVER,
            })
            .collect();
        let n_counted = hosts.iter().filter(|host| host.is_counted()).count() as u32;
        let time_limit = Instant::ZERO + secs(topology.time_limit_s);
        let timeline_step = secs((topology.time_limit_s / TIMELINE_SAMPLES_MAX as f64).max(0.1));
        let mut sim = Sim {
            seed,
            latency_ns: (topology.hosts.latency_ms * 1e6).round() as u64,
            latency_jitter_ns: (topology.hosts.latency_jitter_ms * 1e6).round() as u64,
            timer_granularity: secs(topology.timer_granularity_ms / 1e3),
            time_limit,
            agent_config: topology.agent_swarm_config(),
            origin_config: topology.origin_swarm_config(),
            blobs,
            host_stripes,
            blob_first_k,
            streaming_readers: topology.hosts.streaming_readers,
            now: Instant::ZERO,
            queue: EventQueue::new(),
            net,
            hosts,
            swarms,
            tracker: Tracker::new(&topology.tracker, mix(seed, 0x0074_7261_636b_6572))?,
            n_counted,
            n_counted_done: 0,
            counted_bytes: 0,
            counters: Counters::default(),
            timeline: Vec::new(),
            timeline_step,
            next_sample_at: Instant::ZERO,
            scratch_flows: Vec::new(),
        };
        for host in 0..n_hosts {
            let join_at = sim.hosts[host as usize].join_at;
            sim.queue.schedule(join_at, Ev::Join(host));
        }
        Ok(sim)
    }

    /// Origins first, then agents with their roles and join times drawn from the seed.
    fn make_hosts(topology: &Topology, blobs: &[BlobLayout]) -> Vec<Host> {
        let n_origins = topology.origins.count;
        let n_agents = topology.hosts.count;
        let blob_stripes: Vec<u32> = blobs.iter().map(|blob| blob.n_stripes()).collect();
        let stripes_total: u32 = blob_stripes.iter().sum();
        let mut hosts = Vec::with_capacity((n_origins + n_agents) as usize);
        for _ in 0..n_origins {
            hosts.push(Host {
                role: Role::Origin,
                is_liar: false,
                join_at: Instant::ZERO,
                depart_at: None,
                presence: Presence::NotJoined,
                stripes_left: 0,
                blob_stripes_left: vec![0; blobs.len()],
                done_at: Some(Instant::ZERO),
                reader_at: vec![0; blobs.len()],
            });
        }
        let section = &topology.hosts;
        let mut rng = Rng::new(mix(topology.seed, 0x0072_6f6c_6573));
        for _ in 0..n_agents {
            let join_s = if section.join_spread_s > 0.0 {
                rng.f64() * section.join_spread_s
            } else {
                0.0
            };
            hosts.push(Host {
                role: Role::Agent,
                is_liar: false,
                join_at: Instant::ZERO + secs(join_s),
                depart_at: None,
                presence: Presence::NotJoined,
                stripes_left: stripes_total,
                blob_stripes_left: blob_stripes.clone(),
                done_at: None,
                reader_at: vec![0; blobs.len()],
            });
        }
        // Disjoint roles: a shuffled list of agents is cut into liars, departers, late joiners.
        let mut order: Vec<u32> = (n_origins..n_origins + n_agents).collect();
        rng.shuffle(&mut order);
        let count = |fraction: f64| (fraction * f64::from(n_agents)).round() as usize;
        let n_liars = count(section.liar_fraction).min(order.len());
        let n_departing = count(section.depart_fraction).min(order.len() - n_liars);
        let n_late = count(section.late_join_fraction).min(order.len() - n_liars - n_departing);
        let (liars, rest) = order.split_at(n_liars);
        let (departing, rest) = rest.split_at(n_departing);
        for &host in liars {
            hosts[host as usize].is_liar = true;
        }
        for &host in departing {
            hosts[host as usize].depart_at = Some(Instant::ZERO + secs(section.depart_at_s));
        }
        for &host in &rest[..n_late] {
            hosts[host as usize].join_at = Instant::ZERO + secs(section.late_join_at_s);
        }
        hosts
    }

    // ----------------------------------------------------------------------------------
    // Running
    // ----------------------------------------------------------------------------------

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn timeline(&self) -> &[Sample] {
        &self.timeline
    }

    pub fn time_limit(&self) -> Instant {
        self.time_limit
    }

    pub fn blobs(&self) -> &[BlobLayout] {
        &self.blobs
    }

    pub fn n_counted(&self) -> u32 {
        self.n_counted
    }

    pub fn n_counted_done(&self) -> u32 {
        self.n_counted_done
    }

    pub fn live_flows(&self) -> usize {
        self.net.n_live()
    }

    /// Every counted host is done, or nothing is left to happen, or time is up.
    pub fn is_finished(&mut self) -> bool {
        self.n_counted_done == self.n_counted
            || self.now >= self.time_limit
            || self.next_due().is_none()
    }

    fn next_due(&mut self) -> Option<Instant> {
        match (self.queue.next_time(), self.net.next_completion()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every input due before `until` (and before the time limit), stopping early once
    /// the run is finished. Returns whether it is.
    pub fn run_until(&mut self, until: Instant) -> bool {
        let until = until.min(self.time_limit);
        loop {
            if self.n_counted_done == self.n_counted {
                return true;
            }
            let Some(due) = self.next_due() else {
                return true;
            };
            if due >= until {
                self.now = self.now.max(until);
                self.sample_timeline();
                return self.is_finished();
            }
            self.now = due;
            self.sample_timeline();
            let flow_due = self.net.next_completion().is_some_and(|at| at <= due);
            if flow_due {
                if let Some(end) = self.net.complete_next(due) {
                    self.counters.events += 1;
                    self.counters.events_by_kind[9] += 1;
                    self.on_flow_completed(end);
                }
            } else if let Some((at, event)) = self.queue.pop() {
                debug_assert_eq!(at, due);
                self.dispatch(event);
            }
        }
    }

    /// Runs to the end.
    pub fn run(&mut self) {
        self.run_until(Instant::NEVER);
    }

    fn sample_timeline(&mut self) {
        while self.now >= self.next_sample_at && self.timeline.len() < TIMELINE_SAMPLES_MAX {
            let needed = self.blobs.iter().map(|blob| blob.blob_len()).sum::<u64>() as f64
                * f64::from(self.n_counted.max(1));
            self.timeline.push(Sample {
                at_s: self.next_sample_at.as_secs_f64(),
                progress: self.counted_bytes as f64 / needed,
                hosts_done: self.n_counted_done,
                origin_bytes: self.counters.origin_bytes,
                live_flows: self.net.n_live(),
            });
            self.next_sample_at += self.timeline_step;
        }
    }

    /// How every host fared (origins included, flagged).
    pub fn outcomes(&self) -> Vec<HostOutcome> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(index, host)| HostOutcome {
                host: index as u32,
                is_origin: host.role == Role::Origin,
                is_liar: host.is_liar,
                departed: host.depart_at.is_some(),
                join_s: host.join_at.as_secs_f64(),
                completion_s: host
                    .done_at
                    .map(|done| done.saturating_duration_since(host.join_at).as_secs_f64()),
                stripes_left: host.stripes_left,
            })
            .collect()
    }

    fn dispatch(&mut self, event: Ev) {
        let kind = match &event {
            Ev::Join(_) => 0,
            Ev::Depart(_) => 1,
            Ev::AnnounceArrive { .. } => 2,
            Ev::AnnounceReply { .. } => 3,
            Ev::DialArrive { .. } => 4,
            Ev::Deliver { .. } => 5,
            Ev::Disconnect { .. } => 6,
            Ev::PieceStart { .. } => 7,
            Ev::Timer { .. } => 8,
        };
        self.counters.events_by_kind[kind] += 1;
        if !matches!(event, Ev::Timer { .. }) {
            self.counters.events += 1;
        }
        match event {
            Ev::Join(host) => self.on_join(host),
            Ev::Depart(host) => self.on_depart(host),
            Ev::AnnounceArrive { host, blob } => self.on_announce_arrive(host, blob),
            Ev::AnnounceReply { host, blob, peers } => self.on_announce_reply(host, blob, &peers),
            Ev::DialArrive { from, peer } => self.on_dial_arrive(from, peer),
            Ev::Deliver { to, conn, message } => self.on_deliver(to, conn, message),
            Ev::Disconnect { to, conn } => self.on_disconnect(to, conn),
            Ev::PieceStart { tag, header } => self.on_piece_start(tag, header),
            Ev::Timer { swarm } => self.on_timer(swarm),
        }
    }

    // ----------------------------------------------------------------------------------
    // Geometry and latency helpers
    // ----------------------------------------------------------------------------------

    fn stripes_per_host(&self) -> u32 {
        self.host_stripes.len() as u32
    }

    fn host_of_swarm(&self, swarm: u32) -> u32 {
        swarm / self.stripes_per_host()
    }

    fn swarm_id(&self, host: u32, k: u32) -> u32 {
        host * self.stripes_per_host() + k
    }

    fn host_of_peer(&self, peer: PeerId) -> Option<u32> {
        let bytes = peer.0;
        if bytes[..12].iter().any(|&b| b != 0) {
            return None;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[12..]);
        let host = u64::from_be_bytes(word);
        (host < self.hosts.len() as u64).then_some(host as u32)
    }

    fn latency(&self, a: u32, b: u32) -> Duration {
        let mut ns = self.latency_ns;
        if self.latency_jitter_ns > 0 {
            let (low, high) = if a < b { (a, b) } else { (b, a) };
            let pair = (u64::from(low) << 32) | u64::from(high);
            let unit = (mix(self.seed ^ 0x6a69_7474_6572, pair) >> 11) as f64 / (1u64 << 53) as f64;
            ns += (unit * self.latency_jitter_ns as f64) as u64;
        }
        Duration::from_nanos(ns)
    }

    fn swarm_mut(&mut self, swarm: u32) -> Option<&mut Swarm> {
        self.swarms[swarm as usize].swarm.as_deref_mut()
    }

    /// This swarm's live end of `conn`, if the driver still pairs it.
    fn link(&self, swarm: u32, conn: ConnHandle) -> Option<LinkEnd> {
        let end = *self.swarms[swarm as usize].links.get(conn.index as usize)?;
        (end.generation != 0 && end.generation == conn.generation).then_some(end)
    }

    fn take_link(&mut self, swarm: u32, conn: ConnHandle) -> Option<LinkEnd> {
        let end = self.link(swarm, conn)?;
        self.swarms[swarm as usize].links[conn.index as usize] = LINK_FREE;
        Some(end)
    }

    fn set_link(
        &mut self,
        swarm: u32,
        conn: ConnHandle,
        remote_swarm: u32,
        remote_conn: ConnHandle,
    ) {
        assert_ne!(conn.generation, 0, "proto generations start at 1");
        let links = &mut self.swarms[swarm as usize].links;
        let index = conn.index as usize;
        if links.len() <= index {
            links.resize(index + 1, LINK_FREE);
        }
        debug_assert_eq!(
            links[index].generation, 0,
            "connection slot reused while paired"
        );
        links[index] = LinkEnd {
            generation: conn.generation,
            remote_swarm,
            remote_conn,
        };
    }

    // ----------------------------------------------------------------------------------
    // Driving one swarm
    // ----------------------------------------------------------------------------------

    /// After any input to `swarm`: transmits, then events, then the timer.
    fn drain(&mut self, swarm: u32) {
        while let Some(transmit) = self.swarm_mut(swarm).and_then(Swarm::poll_transmit) {
            self.route(swarm, transmit);
        }
        while let Some(event) = self.swarm_mut(swarm).and_then(Swarm::poll_event) {
            self.on_swarm_event(swarm, event);
        }
        self.arm_timer(swarm);
    }

    fn route(&mut self, from: u32, transmit: Transmit) {
        let Some(end) = self.link(from, transmit.conn) else {
            return; // the remote closed this connection; our close is on its way
        };
        let latency = self.latency(
            self.host_of_swarm(from),
            self.host_of_swarm(end.remote_swarm),
        );
        let at = self.now + latency;
        let event = match Control::pack(transmit.message) {
            Ok(message) => Ev::Deliver {
                to: end.remote_swarm,
                conn: end.remote_conn,
                message,
            },
            Err(header) => Ev::PieceStart {
                tag: FlowTag {
                    up_swarm: from,
                    up_conn: transmit.conn,
                    down_swarm: end.remote_swarm,
                    down_conn: end.remote_conn,
                    piece: header.piece,
                    accepted: true,
                },
                header,
            },
        };
        self.queue.schedule(at, event);
    }

    fn on_swarm_event(&mut self, swarm: u32, event: Event) {
        match event {
            Event::Dial(peer) => {
                self.counters.dials += 1;
                let from_host = self.host_of_swarm(swarm);
                let to_host = self.host_of_peer(peer).unwrap_or(from_host);
                let at = self.now + self.latency(from_host, to_host);
                self.queue
                    .schedule(at, Ev::DialArrive { from: swarm, peer });
            }
            Event::Close { conn, reason, .. } => {
                self.counters.count_close(&reason);
                self.close_link(swarm, conn);
            }
            Event::Blacklisted(_) => self.counters.blacklistings += 1,
            Event::Complete => self.on_stripe_complete(swarm),
        }
    }

    /// Our end of `conn` is gone: cancel its flows, tell the other end after the latency.
    fn close_link(&mut self, swarm: u32, conn: ConnHandle) {
        let Some(end) = self.take_link(swarm, conn) else {
            return;
        };
        self.cancel_flows_of_link(swarm, conn);
        let latency = self.latency(
            self.host_of_swarm(swarm),
            self.host_of_swarm(end.remote_swarm),
        );
        self.queue.schedule(
            self.now + latency,
            Ev::Disconnect {
                to: end.remote_swarm,
                conn: end.remote_conn,
            },
        );
    }

    fn cancel_flows_of_link(&mut self, swarm: u32, conn: ConnHandle) {
        let host = self.host_of_swarm(swarm);
        let mut doomed = std::mem::take(&mut self.scratch_flows);
        doomed.clear();
        doomed.extend(
            self.net
                .flows_up(host)
                .filter(|(_, tag)| tag.up_swarm == swarm && tag.up_conn == conn)
                .map(|(id, _)| id),
        );
        doomed.extend(
            self.net
                .flows_down(host)
                .filter(|(_, tag)| tag.down_swarm == swarm && tag.down_conn == conn)
                .map(|(id, _)| id),
        );
        for &id in &doomed {
            let end = self.net.cancel(self.now, id);
            self.count_cancelled(&end);
        }
        self.scratch_flows = doomed;
    }

    fn count_cancelled(&mut self, end: &FlowEnd<FlowTag>) {
        self.counters.flows_cancelled += 1;
        self.counters.wasted_bytes += end.bytes_sent;
    }

    fn arm_timer(&mut self, swarm: u32) {
        let now = self.now;
        let granularity = self.timer_granularity;
        if self.swarms[swarm as usize].timer_at <= now + granularity {
            // A wake-up within the granularity is armed already: whatever poll_timeout says,
            // it would be served by that wake-up (handle_timeout deals with everything due).
            return;
        }
        let Some(swarm_ref) = self.swarm_mut(swarm) else {
            return;
        };
        let Some(at) = swarm_ref.poll_timeout() else {
            return;
        };
        let at = if at <= now { now + granularity } else { at };
        let slot = &mut self.swarms[swarm as usize];
        if at < slot.timer_at {
            slot.timer_at = at;
            self.queue.schedule(at, Ev::Timer { swarm });
        }
    }

    fn on_timer(&mut self, swarm: u32) {
        let now = self.now;
        let slot = &mut self.swarms[swarm as usize];
        if slot.timer_at != now {
            return; // superseded by an earlier wake-up
        }
        slot.timer_at = Instant::NEVER;
        let Some(swarm_ref) = slot.swarm.as_deref_mut() else {
            return;
        };
        match swarm_ref.poll_timeout() {
            Some(at) if at <= now => {
                self.counters.events += 1;
                swarm_ref.handle_timeout(now);
                self.drain(swarm);
            }
            _ => self.arm_timer(swarm),
        }
    }

    // ----------------------------------------------------------------------------------
    // Event handlers
    // ----------------------------------------------------------------------------------

    fn on_join(&mut self, host: u32) {
        let role = self.hosts[host as usize].role;
        self.hosts[host as usize].presence = Presence::Present;
        for k in 0..self.stripes_per_host() {
            let (blob, stripe) = self.host_stripes[k as usize];
            let geometry = self.blobs[blob as usize].stripe_geometry(stripe);
            let swarm_id = self.swarm_id(host, k);
            let (mut config, have) = match role {
                Role::Origin => (
                    self.origin_config.clone(),
                    Bitfield::full(geometry.n_pieces as usize),
                ),
                Role::Agent => (
                    self.agent_config.clone(),
                    Bitfield::new(geometry.n_pieces as usize),
                ),
            };
            config.seed = mix(self.seed, u64::from(swarm_id) + 1);
            let swarm = Swarm::new(config, geometry, peer_of(host), have)
                .expect("topology validation checked the swarm configs and geometry");
            self.swarms[swarm_id as usize].swarm = Some(Box::new(swarm));
        }
        for blob in 0..self.blobs.len() as u32 {
            self.advance_reader(host, blob);
        }
        let to_tracker = self.latency(host, TRACKER_HOST);
        for blob in 0..self.blobs.len() as u32 {
            self.queue
                .schedule(self.now + to_tracker, Ev::AnnounceArrive { host, blob });
        }
        if let Some(depart_at) = self.hosts[host as usize].depart_at {
            self.queue
                .schedule(depart_at.max(self.now), Ev::Depart(host));
        }
    }

    fn on_depart(&mut self, host: u32) {
        self.hosts[host as usize].presence = Presence::Departed;
        for k in 0..self.stripes_per_host() {
            let swarm = self.swarm_id(host, k);
            let links = std::mem::take(&mut self.swarms[swarm as usize].links);
            for end in links.iter().filter(|end| end.generation != 0) {
                let latency = self.latency(host, self.host_of_swarm(end.remote_swarm));
                self.queue.schedule(
                    self.now + latency,
                    Ev::Disconnect {
                        to: end.remote_swarm,
                        conn: end.remote_conn,
                    },
                );
            }
            let slot = &mut self.swarms[swarm as usize];
            slot.swarm = None;
            slot.timer_at = Instant::NEVER;
        }
        let mut doomed = std::mem::take(&mut self.scratch_flows);
        doomed.clear();
        doomed.extend(self.net.flows_up(host).map(|(id, _)| id));
        doomed.extend(self.net.flows_down(host).map(|(id, _)| id));
        for &id in &doomed {
            let end = self.net.cancel(self.now, id);
            self.count_cancelled(&end);
        }
        self.scratch_flows = doomed;
    }

    fn on_announce_arrive(&mut self, host: u32, blob: u32) {
        let state = &self.hosts[host as usize];
        if state.presence != Presence::Present {
            return;
        }
        self.counters.announces += 1;
        let is_origin = state.role == Role::Origin;
        let is_complete = state.blob_stripes_left[blob as usize] == 0;
        let info_hash = self.blobs[blob as usize].info_hash();
        let latency = self.latency(host, TRACKER_HOST);
        let announced = self.tracker.announce(
            self.now,
            info_hash,
            peer_of(host),
            addr_of(host),
            is_origin,
            is_complete,
        );
        let interval = match announced {
            Ok((peers, interval)) => {
                self.queue
                    .schedule(self.now + latency, Ev::AnnounceReply { host, blob, peers });
                interval
            }
            Err(_) => {
                self.counters.tracker_errors += 1;
                Duration::from_secs(5)
            }
        };
        // The next announce leaves when the reply has arrived and the interval has passed.
        let next = self.now + latency + interval + latency;
        self.queue.schedule(next, Ev::AnnounceArrive { host, blob });
    }

    fn on_announce_reply(&mut self, host: u32, blob: u32, peers: &[Candidate]) {
        if self.hosts[host as usize].presence != Presence::Present {
            return;
        }
        let first = self.blob_first_k[blob as usize];
        let n_stripes = self.blobs[blob as usize].n_stripes();
        let now = self.now;
        for k in first..first + n_stripes {
            let swarm = self.swarm_id(host, k);
            if let Some(swarm_ref) = self.swarm_mut(swarm) {
                swarm_ref.handle_peers(now, peers);
                self.drain(swarm);
            }
        }
    }

    fn on_dial_arrive(&mut self, from: u32, peer: PeerId) {
        let now = self.now;
        if self.swarms[from as usize].swarm.is_none() {
            return; // the dialer left meanwhile
        }
        let k = from % self.stripes_per_host();
        let target = self
            .host_of_peer(peer)
            .map(|host| self.swarm_id(host, k))
            .filter(|&swarm| self.swarms[swarm as usize].swarm.is_some());
        let inbound = match target {
            Some(to) => self
                .swarm_mut(to)
                .map(|remote| remote.handle_connected(now, Direction::Inbound, None)),
            None => None,
        };
        let (Some(to), Some(Ok(remote_conn))) = (target, inbound) else {
            self.counters.dials_failed += 1;
            if let Some(dialer) = self.swarm_mut(from) {
                dialer.handle_dial_failed(now, peer);
            }
            self.drain(from);
            return;
        };
        let outbound = self
            .swarm_mut(from)
            .map(|dialer| dialer.handle_connected(now, Direction::Outbound, Some(peer)));
        let Some(Ok(local_conn)) = outbound else {
            // The dialer no longer wanted this peer: the accepted transport closes at once.
            if let Some(remote) = self.swarm_mut(to) {
                remote.handle_disconnected(now, remote_conn);
            }
            self.drain(to);
            self.drain(from);
            return;
        };
        self.counters.connections += 1;
        self.set_link(to, remote_conn, from, local_conn);
        self.set_link(from, local_conn, to, remote_conn);
        self.drain(to);
        self.drain(from);
    }

    fn on_deliver(&mut self, to: u32, conn: ConnHandle, message: Control) {
        // No link look-up: proto ignores stale handles itself (they are generation-checked),
        // and skipping it saves a cache miss on the hottest path.
        let now = self.now;
        if let Some(swarm) = self.swarm_mut(to) {
            swarm.handle_message(now, conn, message.unpack());
            self.drain(to);
        }
    }

    fn on_disconnect(&mut self, to: u32, conn: ConnHandle) {
        if self.take_link(to, conn).is_none() {
            return;
        }
        let now = self.now;
        if let Some(swarm) = self.swarm_mut(to) {
            swarm.handle_disconnected(now, conn);
            self.drain(to);
        }
    }

    fn on_piece_start(&mut self, mut tag: FlowTag, header: PieceHeader) {
        let paired = |end: Option<LinkEnd>, swarm: u32, conn: ConnHandle| {
            end.is_some_and(|end| end.remote_swarm == swarm && end.remote_conn == conn)
        };
        let down_end = self.link(tag.down_swarm, tag.down_conn);
        let up_end = self.link(tag.up_swarm, tag.up_conn);
        if !paired(down_end, tag.up_swarm, tag.up_conn)
            || !paired(up_end, tag.down_swarm, tag.down_conn)
        {
            return; // one side closed the connection while the header was in flight
        }
        let now = self.now;
        let Some(downloader) = self.swarm_mut(tag.down_swarm) else {
            return;
        };
        let disposition = downloader.handle_piece_header(now, tag.down_conn, header);
        match disposition {
            PieceDisposition::Accept | PieceDisposition::Discard => {
                tag.accepted = disposition == PieceDisposition::Accept;
                let src = self.host_of_swarm(tag.up_swarm);
                let dst = self.host_of_swarm(tag.down_swarm);
                self.net.start(now, src, dst, u64::from(header.length), tag);
            }
            PieceDisposition::Closed => {}
        }
        self.drain(tag.down_swarm);
    }

    fn on_flow_completed(&mut self, end: FlowEnd<FlowTag>) {
        let now = self.now;
        let tag = end.tag;
        let uploader = &self.hosts[end.src as usize];
        let (src_is_origin, src_is_liar) = (uploader.role == Role::Origin, uploader.is_liar);
        if src_is_origin {
            self.counters.origin_bytes += end.bytes_sent;
        } else {
            self.counters.peer_bytes += end.bytes_sent;
        }
        if let Some(swarm) = self.swarm_mut(tag.up_swarm) {
            swarm.handle_piece_sent(now, tag.up_conn, tag.piece);
            self.drain(tag.up_swarm);
        }
        if !tag.accepted {
            self.counters.pieces_discarded += 1;
            self.counters.wasted_bytes += end.bytes_sent;
            return;
        }
        let verdict = if src_is_liar {
            self.counters.pieces_invalid += 1;
            self.counters.wasted_bytes += end.bytes_sent;
            PieceVerdict::Invalid
        } else {
            self.counters.pieces_valid += 1;
            if self.hosts[end.dst as usize].is_counted() {
                self.counted_bytes += end.bytes_sent;
            }
            PieceVerdict::Valid
        };
        if let Some(swarm) = self.swarm_mut(tag.down_swarm) {
            swarm.handle_piece(now, tag.down_conn, tag.piece, verdict);
            self.drain(tag.down_swarm);
        }
        if verdict == PieceVerdict::Valid && self.streaming_readers {
            let host = self.host_of_swarm(tag.down_swarm);
            let k = tag.down_swarm % self.stripes_per_host();
            let (blob, _) = self.host_stripes[k as usize];
            if self.hosts[host as usize].reader_at[blob as usize] == tag.piece.0 {
                self.advance_reader(host, blob);
            }
        }
    }

    /// With streaming readers: moves `host`'s reader of `blob` past the pieces it has, then
    /// tells the swarm of the next piece's stripe that the reader waits for it. Amortised
    /// O(1) per piece: the reader only moves forward.
    fn advance_reader(&mut self, host: u32, blob: u32) {
        if !self.streaming_readers || self.hosts[host as usize].role != Role::Agent {
            return;
        }
        let now = self.now;
        let metainfo = self.blobs[blob as usize].metainfo();
        let n_pieces = metainfo.n_pieces();
        loop {
            let piece = self.hosts[host as usize].reader_at[blob as usize];
            if piece >= n_pieces {
                return;
            }
            let metainfo = self.blobs[blob as usize].metainfo();
            let stripe = metainfo.stripe_of(PieceIndex(piece));
            let first = metainfo.stripe_pieces(stripe).start;
            let k = self.blob_first_k[blob as usize] + stripe.0;
            let swarm_id = self.swarm_id(host, k);
            let Some(swarm) = self.swarm_mut(swarm_id) else {
                return;
            };
            if swarm.have().get((piece - first) as usize) {
                self.hosts[host as usize].reader_at[blob as usize] += 1;
                continue;
            }
            swarm.handle_wanted(now, PieceIndex(piece));
            self.drain(swarm_id);
            return;
        }
    }

    fn on_stripe_complete(&mut self, swarm: u32) {
        let host = self.host_of_swarm(swarm);
        let k = swarm % self.stripes_per_host();
        let (blob, _) = self.host_stripes[k as usize];
        let now = self.now;
        let state = &mut self.hosts[host as usize];
        debug_assert!(state.blob_stripes_left[blob as usize] > 0 && state.stripes_left > 0);
        state.blob_stripes_left[blob as usize] -= 1;
        state.stripes_left -= 1;
        if state.stripes_left == 0 {
            state.done_at = Some(now);
            if state.is_counted() {
                self.n_counted_done += 1;
            }
        }
    }
}
