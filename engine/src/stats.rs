//! Counters for stats: per shard (so each shard writes only its own cache lines), summed on
//! read. Relaxed atomics: figures for humans and dashboards, not for synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which kind of host the bytes went to or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Origin,
    Agent,
}

/// One shard's counters.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub bytes_in_from_origins: AtomicU64,
    pub bytes_in_from_agents: AtomicU64,
    pub bytes_out_to_origins: AtomicU64,
    pub bytes_out_to_agents: AtomicU64,
    pub pieces_verified: AtomicU64,
    pub pieces_failed: AtomicU64,
    pub pieces_uploaded: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_opened: AtomicU64,
    pub dials_failed: AtomicU64,
    pub peers_blacklisted: AtomicU64,
    pub handoffs: AtomicU64,
    pub requests_sent: AtomicU64,
    pub request_queue_us: AtomicU64,
    pub requests_answered: AtomicU64,
    pub request_answer_us: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Ordering::Relaxed);
}

impl ShardCounters {
    pub fn bytes_in(&self, kind: PeerKind, n: u64) {
        match kind {
            PeerKind::Origin => add(&self.bytes_in_from_origins, n),
            PeerKind::Agent => add(&self.bytes_in_from_agents, n),
        }
    }

    pub fn bytes_out(&self, kind: PeerKind, n: u64) {
        match kind {
            PeerKind::Origin => add(&self.bytes_out_to_origins, n),
            PeerKind::Agent => add(&self.bytes_out_to_agents, n),
        }
    }

    pub fn snapshot(&self) -> ShardStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShardStats {
            bytes_in_from_origins: get(&self.bytes_in_from_origins),
            bytes_in_from_agents: get(&self.bytes_in_from_agents),
            bytes_out_to_origins: get(&self.bytes_out_to_origins),
            bytes_out_to_agents: get(&self.bytes_out_to_agents),
            pieces_verified: get(&self.pieces_verified),
            pieces_failed: get(&self.pieces_failed),
            pieces_uploaded: get(&self.pieces_uploaded),
            connections_open: get(&self.connections_open),
            connections_opened: get(&self.connections_opened),
            dials_failed: get(&self.dials_failed),
            peers_blacklisted: get(&self.peers_blacklisted),
            handoffs: get(&self.handoffs),
            requests_sent: get(&self.requests_sent),
            request_queue_us: get(&self.request_queue_us),
            requests_answered: get(&self.requests_answered),
            request_answer_us: get(&self.request_answer_us),
        }
    }
}

/// A snapshot of one shard's counters (or of their sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Verified piece payload bytes received from origins.
    pub bytes_in_from_origins: u64,
    /// Verified piece payload bytes received from other agents.
    pub bytes_in_from_agents: u64,
    pub bytes_out_to_origins: u64,
    pub bytes_out_to_agents: u64,
    /// Pieces received whose SHA-256 matched.
    pub pieces_verified: u64,
    /// Pieces received whose SHA-256 did not match (each cost its sender the connection).
    pub pieces_failed: u64,
    pub pieces_uploaded: u64,
    /// Peer connections open now.
    pub connections_open: u64,
    /// Peer connections opened since start (inbound and outbound).
    pub connections_opened: u64,
    pub dials_failed: u64,
    /// Peers blacklisted for bad pieces (one count per swarm that blacklisted one).
    pub peers_blacklisted: u64,
    /// Accepted connections handed to another shard after their handshake.
    pub handoffs: u64,
    /// Piece requests written to peers.
    pub requests_sent: u64,
    /// Microseconds those requests waited, in all, between the swarm issuing them and their
    /// last byte reaching the socket: behind earlier messages and piece payloads on the same
    /// connection, and behind a full socket buffer.
    pub request_queue_us: u64,
    /// Requests whose piece's header arrived.
    pub requests_answered: u64,
    /// Microseconds, in all, from a request reaching the socket to its piece's header
    /// arriving: the network both ways plus the wait in the remote's upload queue.
    pub request_answer_us: u64,
}

impl ShardStats {
    fn add(&mut self, other: &ShardStats) {
        self.bytes_in_from_origins += other.bytes_in_from_origins;
        self.bytes_in_from_agents += other.bytes_in_from_agents;
        self.bytes_out_to_origins += other.bytes_out_to_origins;
        self.bytes_out_to_agents += other.bytes_out_to_agents;
        self.pieces_verified += other.pieces_verified;
        self.pieces_failed += other.pieces_failed;
        self.pieces_uploaded += other.pieces_uploaded;
        self.connections_open += other.connections_open;
        self.connections_opened += other.connections_opened;
        self.dials_failed += other.dials_failed;
        self.peers_blacklisted += other.peers_blacklisted;
        self.handoffs += other.handoffs;
        self.requests_sent += other.requests_sent;
        self.request_queue_us += other.request_queue_us;
        self.requests_answered += other.requests_answered;
        self.request_answer_us += other.request_answer_us;
    }
}

/// Counters of the whole engine: the sum, and each shard's (its load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub total: ShardStats,
    pub shards: Vec<ShardStats>,
}

impl EngineStats {
    pub(crate) fn collect(shards: &[ShardCounters]) -> EngineStats {
        let shards: Vec<ShardStats> = shards.iter().map(ShardCounters::snapshot).collect();
        let mut total = ShardStats::default();
        for shard in &shards {
            total.add(shard);
        }
        EngineStats { total, shards }
    }
}
