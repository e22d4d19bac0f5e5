//! The tracker's handout policy: which peers a peer learns about when it announces a blob, and
//! when it should announce again.
//!
//! A [`PeerStore`] holds every swarm (info hash → peers) that one tracker shard owns. An
//! announce records or refreshes the announcing peer and returns a random sample of the other
//! live peers of that swarm: origins first, then peers that have the whole blob, then the rest,
//! each group sampled uniformly without replacement. Peers that have not announced for
//! [`TrackerConfig::peer_ttl`] are never handed out.
//!
//! # Data structure (per info hash)
//!
//! Peers live in a dense `Vec` of entries (removal swaps the last entry into the hole and fixes
//! the three places that point at it). Each entry is also
//! - in exactly one of three *group* vectors (origins, complete, incomplete) holding entry
//!   indexes in arbitrary order. A sample is a partial Fisher–Yates shuffle done in place on
//!   those vectors, so an announce costs O(sample size), not O(swarm size), and allocates only
//!   its response.
//! - on a doubly linked *recency list* ordered by last announce, oldest first. Expiry pops from
//!   the old end until it meets a live peer, and a full swarm evicts from the same end, both in
//!   O(1) per peer.
//!
//! Swarms are kept in a `BTreeMap`, and peers found through a `BTreeMap` by id: ordered maps
//! keep iteration (and so [`PeerStore::expire`]'s sweep) deterministic and need no hasher seed,
//! and announcing peers cannot engineer hash collisions.
//!
//! # Time
//!
//! `now` must not go backwards: the recency list relies on it. A `now` earlier than one already
//! seen is treated as that latest time, so a misbehaving driver cannot corrupt the store.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;
use std::net::SocketAddr;
use std::time::Duration;

use crate::{InfoHash, Instant, PeerId, Rng};

/// Largest `sample_size_max` a config may set: bounds the size of one announce response.
pub const SAMPLE_SIZE_CEILING: usize = 1024;

/// Largest `peers_per_info_hash_max` a config may set. Entry indexes are `u32`, with
/// `u32::MAX` reserved for "none".
pub const PEERS_PER_INFO_HASH_CEILING: usize = 1 << 24;

/// [`PeerStore::expire`] visits at most this many info hashes per call.
pub const EXPIRE_INFO_HASHES_PER_CALL_MAX: usize = 1024;

/// [`PeerStore::expire`] removes at most this many peers per call.
pub const EXPIRE_PEERS_PER_CALL_MAX: usize = 16 * 1024;

/// Longest `announce_interval` a config may set.
pub const ANNOUNCE_INTERVAL_CEILING: Duration = Duration::from_secs(3600);

/// Returned intervals are spread uniformly over ±this many thousandths of the base interval,
/// so that a fleet started together does not keep announcing in lockstep.
pub const ANNOUNCE_INTERVAL_JITTER_PERMILLE: u32 = 100;

const NONE: u32 = u32::MAX;
const _: () = assert!(PEERS_PER_INFO_HASH_CEILING < NONE as usize);
const _: () = assert!(ANNOUNCE_INTERVAL_JITTER_PERMILLE < 1000);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker config: {field} {reason}")]
    InvalidConfig {
        field: &'static str,
        reason: &'static str,
    },
    /// The announce names a new info hash and the store already holds `info_hashes_max`.
    #[error("tracker is full: it already tracks {info_hashes_max} info hashes")]
    Full { info_hashes_max: usize },
    /// The announce would add a peer and the store already holds `peers_max` in total.
    #[error("tracker is full: it already tracks {peers_max} peers")]
    PeersFull { peers_max: usize },
}

/// One peer of one swarm, as announced and as handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    /// Where other peers dial it. The latest announce wins.
    pub addr: SocketAddr,
    /// A dedicated seeder: handed out before everyone else.
    pub is_origin: bool,
    /// Has the whole blob: handed out right after origins.
    pub is_complete: bool,
}

/// Limits and timings of a [`PeerStore`]. Defaults come from [`TrackerConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// A peer that has not announced for longer than this is no longer handed out, and is
    /// dropped. Must exceed the longest interval handed out, jitter included.
    pub peer_ttl: Duration,
    /// The usual announce interval handed back to peers.
    pub announce_interval: Duration,
    /// The interval handed back while a swarm is still forming: when the requester got fewer
    /// peers than `sample_size_max` and some peer joined the swarm within the last
    /// `announce_interval`. Early joiners then learn about later ones within a second or so.
    pub announce_interval_fast: Duration,
    /// Most peers in one announce response.
    pub sample_size_max: usize,
    /// Most peers kept for one info hash. A new peer for a full swarm replaces the peer whose
    /// last announce is oldest.
    pub peers_per_info_hash_max: usize,
    /// Most info hashes kept. An announce for a new info hash beyond it fails with
    /// [`TrackerError::Full`].
    pub info_hashes_max: usize,
    /// Most peers kept over all info hashes, counting expired peers not yet dropped (bounds
    /// memory: roughly 200 bytes each). A new peer beyond it fails with
    /// [`TrackerError::PeersFull`].
    pub peers_max: usize,
}

impl Default for TrackerConfig {
    /// - `announce_interval` 5 s, `announce_interval_fast` 1 s: when a whole fleet pulls the
    ///   same image at once, the first announcers see almost nobody; the fast interval lets them
    ///   find the rest within about a second. Once a peer's sample is full (or the swarm stops
    ///   growing) 5 s is plenty: later joiners find it and connect to it anyway, and the
    ///   tracker's load stays at one announce per peer per blob per 5 s.
    /// - `peer_ttl` 15 s (three intervals): a live peer survives two lost announces, and a dead
    ///   one stops being handed out within 15 s (peers time out failed dials anyway).
    /// - `sample_size_max` 50: several times the connections a peer keeps per (blob, stripe),
    ///   so it can replace failed or slow connections without announcing again.
    /// - `peers_per_info_hash_max` 100,000: several times the largest fleet planned for.
    /// - `info_hashes_max` 1,000,000 and `peers_max` 4,000,000: about 1 GB per shard at
    ///   worst (roughly 200 bytes per peer, a few hundred per info hash).
    fn default() -> TrackerConfig {
        TrackerConfig {
            peer_ttl: Duration::from_secs(15),
            announce_interval: Duration::from_secs(5),
            announce_interval_fast: Duration::from_secs(1),
            sample_size_max: 50,
            peers_per_info_hash_max: 100_000,
            info_hashes_max: 1_000_000,
            peers_max: 4_000_000,
        }
    }
}

impl TrackerConfig {
    /// Rejects configs that cannot work.
    pub fn validate(&self) -> Result<(), TrackerError> {
        let invalid = |field, reason| Err(TrackerError::InvalidConfig { field, reason });
        if self.announce_interval_fast.is_zero() {
            return invalid("announce_interval_fast", "must be positive");
        }
        if self.announce_interval < self.announce_interval_fast {
            return invalid(
                "announce_interval",
                "must not be below announce_interval_fast",
            );
        }
        if self.announce_interval > ANNOUNCE_INTERVAL_CEILING {
            return invalid("announce_interval", "must be at most one hour");
        }
        if self.peer_ttl <= self.interval_max() {
            return invalid(
                "peer_ttl",
                "must exceed announce_interval plus its jitter (10%), or live peers expire",
            );
        }
        if self.sample_size_max == 0 {
            return invalid("sample_size_max", "must be positive");
        }
        if self.sample_size_max > SAMPLE_SIZE_CEILING {
            return invalid("sample_size_max", "must be at most 1024");
        }
        if self.peers_per_info_hash_max < 2 {
            return invalid("peers_per_info_hash_max", "must be at least 2");
        }
        if self.peers_per_info_hash_max > PEERS_PER_INFO_HASH_CEILING {
            return invalid("peers_per_info_hash_max", "must be at most 2^24");
        }
        if self.info_hashes_max == 0 {
            return invalid("info_hashes_max", "must be positive");
        }
        if self.peers_max < self.peers_per_info_hash_max {
            return invalid("peers_max", "must be at least peers_per_info_hash_max");
        }
        Ok(())
    }

    /// The longest interval an announce can return.
    fn interval_max(&self) -> Duration {
        self.announce_interval
            .saturating_add(jitter_span(self.announce_interval))
    }
}

/// The largest jitter applied to `interval`, each way.
fn jitter_span(interval: Duration) -> Duration {
    // Divide first: cannot overflow, and loses under a microsecond.
    interval / 1000 * ANNOUNCE_INTERVAL_JITTER_PERMILLE
}

/// What an announcing peer gets back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Other live peers of the swarm: origins, then complete peers, then the rest; random
    /// within each group; at most `sample_size_max`; never the requester.
    pub peers: Vec<PeerInfo>,
    /// When to announce again.
    pub interval: Duration,
}

/// What one call of [`PeerStore::expire`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireProgress {
    pub peers_removed: usize,
    pub info_hashes_removed: usize,
    /// The sweep reached the last info hash; the next call starts again from the first.
    pub sweep_finished: bool,
}

/// Every swarm one tracker shard owns. Deterministic: the same seed and the same calls give
/// the same responses. See the module documentation for the data structure.
#[derive(Debug)]
pub struct PeerStore {
    config: TrackerConfig,
    /// Draws samples and interval jitter.
    rng: Rng,
    swarms: BTreeMap<InfoHash, SwarmPeers>,
    /// Sum of the swarms' sizes, checked against `peers_max`.
    n_peers_total: usize,
    /// The latest `now` seen; earlier ones are raised to it.
    now_latest: Instant,
    /// Where the next [`PeerStore::expire`] call resumes its sweep (`None`: from the start).
    expire_cursor: Option<InfoHash>,
    /// Info hashes emptied during one `expire` call, removed after the sweep. Kept to reuse
    /// its allocation; at most [`EXPIRE_INFO_HASHES_PER_CALL_MAX`] long.
    expire_emptied: Vec<InfoHash>,
}

impl PeerStore {
    /// An empty store. `seed` drives every random choice; the engine should pick it at random
    /// at start-up, tests and the simulator fix it.
    pub fn new(config: TrackerConfig, seed: u64) -> Result<PeerStore, TrackerError> {
        config.validate()?;
        Ok(PeerStore {
            config,
            rng: Rng::new(seed),
            swarms: BTreeMap::new(),
            n_peers_total: 0,
            now_latest: Instant::ZERO,
            expire_cursor: None,
            expire_emptied: Vec::new(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Records (or refreshes, with its latest address and flags) `peer` in the swarm of
    /// `info_hash`, and returns a sample of the swarm's other live peers and the interval at
    /// which to announce again.
    ///
    /// Drops the swarm's expired peers first (amortized O(1): each peer is dropped once).
    /// A new peer for a full swarm replaces the peer whose last announce is oldest: a
    /// swarm that outgrows its cap keeps the most recently active peers, and whoever was
    /// replaced comes back on its next announce.
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        peer: PeerInfo,
    ) -> Result<AnnounceResponse, TrackerError> {
        let now = self.observe(now);
        let config = &self.config;
        let n_swarms = self.swarms.len();
        let swarm = match self.swarms.entry(info_hash) {
            MapEntry::Occupied(occupied) => occupied.into_mut(),
            MapEntry::Vacant(vacant) => {
                if n_swarms >= config.info_hashes_max {
                    return Err(TrackerError::Full {
                        info_hashes_max: config.info_hashes_max,
                    });
                }
                if self.n_peers_total >= config.peers_max {
                    return Err(TrackerError::PeersFull {
                        peers_max: config.peers_max,
                    });
                }
                vacant.insert(SwarmPeers::new(now))
            }
        };
        let n_expired = swarm.expire(now, config.peer_ttl, usize::MAX);
        self.n_peers_total -= n_expired;

        let outcome = Self::record(
            config,
            &mut self.n_peers_total,
            swarm,
            now,
            peer,
            &mut self.rng,
        );
        // Never empty: a new swarm is created only once the caps allow its first peer, and a
        // refusal cannot follow expiry that emptied a swarm, since that expiry freed room.
        // (Were it ever empty, `expire` would still drop it.)
        debug_assert!(!swarm.is_empty());
        outcome
    }

    /// The part of `announce` that works on one swarm.
    fn record(
        config: &TrackerConfig,
        n_peers_total: &mut usize,
        swarm: &mut SwarmPeers,
        now: Instant,
        peer: PeerInfo,
        rng: &mut Rng,
    ) -> Result<AnnounceResponse, TrackerError> {
        let requester = match swarm.find(&peer.id) {
            Some(index) => {
                swarm.refresh(index, now, peer);
                index
            }
            None => {
                if swarm.len() >= config.peers_per_info_hash_max {
                    swarm.remove_oldest();
                    *n_peers_total -= 1;
                } else if *n_peers_total >= config.peers_max {
                    return Err(TrackerError::PeersFull {
                        peers_max: config.peers_max,
                    });
                }
                *n_peers_total += 1;
                swarm.insert(now, peer)
            }
        };

        let mut peers = Vec::with_capacity(config.sample_size_max.min(swarm.len() - 1));
        swarm.sample(rng, requester, config.sample_size_max, &mut peers);
        debug_assert!(peers.len() == config.sample_size_max.min(swarm.len() - 1));

        let forming = peers.len() < config.sample_size_max
            && now.saturating_duration_since(swarm.last_join) < config.announce_interval;
        let base = if forming {
            config.announce_interval_fast
        } else {
            config.announce_interval
        };
        Ok(AnnounceResponse {
            peers,
            interval: jittered(base, rng),
        })
    }

    /// Forgets a peer that is leaving the swarm. Returns whether it was there.
    pub fn remove(&mut self, info_hash: &InfoHash, peer_id: &PeerId) -> bool {
        let Some(swarm) = self.swarms.get_mut(info_hash) else {
            return false;
        };
        let Some(index) = swarm.find(peer_id) else {
            return false;
        };
        swarm.remove(index);
        self.n_peers_total -= 1;
        if swarm.is_empty() {
            self.swarms.remove(info_hash);
        }
        true
    }

    /// Drops expired peers, and the info hashes left without peers, continuing a sweep over
    /// all info hashes from where the previous call stopped. Each call visits at most
    /// [`EXPIRE_INFO_HASHES_PER_CALL_MAX`] info hashes and removes at most
    /// [`EXPIRE_PEERS_PER_CALL_MAX`] peers, so the driver calls it periodically (a full sweep
    /// of `n` info hashes takes about `n / 1024` calls). Announces also drop their own swarm's
    /// expired peers, so this matters only for swarms nobody announces to any more.
    pub fn expire(&mut self, now: Instant) -> ExpireProgress {
        let now = self.observe(now);
        let ttl = self.config.peer_ttl;
        let mut progress = ExpireProgress::default();
        let mut peer_budget = EXPIRE_PEERS_PER_CALL_MAX;
        let mut next_cursor = None;
        self.expire_emptied.clear();

        let range = match self.expire_cursor {
            Some(start) => self.swarms.range_mut(start..),
            None => self.swarms.range_mut(..),
        };
        for (n_visited, (info_hash, swarm)) in range.enumerate() {
            if n_visited == EXPIRE_INFO_HASHES_PER_CALL_MAX || peer_budget == 0 {
                next_cursor = Some(*info_hash);
                break;
            }
            let removed = swarm.expire(now, ttl, peer_budget);
            peer_budget -= removed;
            progress.peers_removed += removed;
            if swarm.is_empty() {
                self.expire_emptied.push(*info_hash);
            } else if peer_budget == 0 {
                // It may hold more expired peers: start there next time.
                next_cursor = Some(*info_hash);
                break;
            }
        }

        for info_hash in &self.expire_emptied {
            self.swarms.remove(info_hash);
        }
        self.n_peers_total -= progress.peers_removed;
        progress.info_hashes_removed = self.expire_emptied.len();
        progress.sweep_finished = next_cursor.is_none();
        self.expire_cursor = next_cursor;
        progress
    }

    /// Number of info hashes with at least one stored peer.
    pub fn n_info_hashes(&self) -> usize {
        self.swarms.len()
    }

    /// Number of peers stored for `info_hash`, including expired ones not yet dropped.
    pub fn n_peers(&self, info_hash: &InfoHash) -> usize {
        self.swarms.get(info_hash).map_or(0, SwarmPeers::len)
    }

    /// Number of peers stored over all info hashes, including expired ones not yet dropped.
    pub fn n_peers_total(&self) -> usize {
        self.n_peers_total
    }

    fn observe(&mut self, now: Instant) -> Instant {
        self.now_latest = self.now_latest.max(now);
        self.now_latest
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut total = 0;
        for swarm in self.swarms.values() {
            assert!(!swarm.is_empty());
            swarm.check_invariants();
            total += swarm.len();
        }
        assert_eq!(total, self.n_peers_total);
        assert!(self.swarms.len() <= self.config.info_hashes_max);
        assert!(self.n_peers_total <= self.config.peers_max);
    }
}

/// `base` moved by a uniformly random amount within ±[`ANNOUNCE_INTERVAL_JITTER_PERMILLE`].
fn jittered(base: Duration, rng: &mut Rng) -> Duration {
    let span_nanos = u64::try_from(jitter_span(base).as_nanos()).unwrap_or(u64::MAX / 4);
    let offset_nanos = rng.below(2 * span_nanos + 1);
    (base - Duration::from_nanos(span_nanos)) + Duration::from_nanos(offset_nanos)
}

/// Which group a peer is handed out in; groups go out in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Origin = 0,
    Complete = 1,
    Incomplete = 2,
}

const GROUPS: [Group; 3] = [Group::Origin, Group::Complete, Group::Incomplete];

impl Group {
    fn of(peer: &PeerInfo) -> Group {
        if peer.is_origin {
            Group::Origin
        } else if peer.is_complete {
            Group::Complete
        } else {
            Group::Incomplete
        }
    }
}

#[derive(Debug)]
struct PeerEntry {
    peer: PeerInfo,
    last_announce: Instant,
    group: Group,
    /// Where this entry's index sits in `groups[group]`.
    group_position: u32,
    /// Neighbours on the recency list (`NONE` at the ends).
    older: u32,
    newer: u32,
}

/// The peers of one info hash.
#[derive(Debug)]
struct SwarmPeers {
    /// Dense; indexes into it are what the other fields hold.
    entries: Vec<PeerEntry>,
    by_id: BTreeMap<PeerId, u32>,
    /// Entry indexes per [`Group`], in arbitrary order (sampling permutes them in place).
    groups: [Vec<u32>; 3],
    /// Ends of the recency list: least and most recently announced.
    oldest: u32,
    newest: u32,
    /// When a peer last joined (not refreshed): a recent join means the swarm is forming.
    last_join: Instant,
}

impl SwarmPeers {
    fn new(now: Instant) -> SwarmPeers {
        SwarmPeers {
            entries: Vec::new(),
            by_id: BTreeMap::new(),
            groups: [Vec::new(), Vec::new(), Vec::new()],
            oldest: NONE,
            newest: NONE,
            last_join: now,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, id: &PeerId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    fn entry(&mut self, index: u32) -> &mut PeerEntry {
        &mut self.entries[index as usize]
    }

    /// Adds a peer that is not yet present; the caller has checked the caps.
    fn insert(&mut self, now: Instant, peer: PeerInfo) -> u32 {
        assert!(self.entries.len() < PEERS_PER_INFO_HASH_CEILING);
        let index = self.entries.len() as u32;
        let previous = self.by_id.insert(peer.id, index);
        assert!(previous.is_none(), "peer {} inserted twice", peer.id);
        self.entries.push(PeerEntry {
            group: Group::of(&peer),
            peer,
            last_announce: now,
            group_position: NONE,
            older: NONE,
            newer: NONE,
        });
        self.group_push(index);
        self.recency_push_newest(index);
        self.last_join = now;
        index
    }

    /// Records a new announce from a peer already present.
    fn refresh(&mut self, index: u32, now: Instant, peer: PeerInfo) {
        let group = Group::of(&peer);
        let entry = self.entry(index);
        debug_assert_eq!(entry.peer.id, peer.id);
        debug_assert!(entry.last_announce <= now);
        entry.peer = peer;
        entry.last_announce = now;
        if entry.group != group {
            self.group_remove(index);
            self.entry(index).group = group;
            self.group_push(index);
        }
        self.recency_unlink(index);
        self.recency_push_newest(index);
    }

    fn remove_oldest(&mut self) {
        assert!(self.oldest != NONE, "remove_oldest on an empty swarm");
        self.remove(self.oldest);
    }

    /// Removes the peers whose last announce is more than `ttl` before `now`, oldest first, at
    /// most `budget` of them. Returns how many it removed.
    fn expire(&mut self, now: Instant, ttl: Duration, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget && self.oldest != NONE {
            let last_announce = self.entries[self.oldest as usize].last_announce;
            if now.saturating_duration_since(last_announce) <= ttl {
                break;
            }
            self.remove(self.oldest);
            removed += 1;
        }
        removed
    }

    /// Removes one entry; the last entry moves into its slot.
    fn remove(&mut self, index: u32) {
        self.recency_unlink(index);
        self.group_remove(index);
        let id = self.entries[index as usize].peer.id;
        let removed = self.by_id.remove(&id);
        debug_assert_eq!(removed, Some(index));

        let last = (self.entries.len() - 1) as u32;
        if index != last {
            // Re-point everything that refers to `last` at `index`.
            let moved = &self.entries[last as usize];
            let (moved_id, group, position) = (moved.peer.id, moved.group, moved.group_position);
            let (older, newer) = (moved.older, moved.newer);
            self.by_id.insert(moved_id, index);
            self.groups[group as usize][position as usize] = index;
            match older {
                NONE => self.oldest = index,
                older => self.entry(older).newer = index,
            }
            match newer {
                NONE => self.newest = index,
                newer => self.entry(newer).older = index,
            }
        }
        self.entries.swap_remove(index as usize);
    }

    /// Appends up to `count` peers to `out`: origins, then complete, then incomplete peers,
    /// each group sampled uniformly without replacement, never `requester`.
    fn sample(&mut self, rng: &mut Rng, requester: u32, count: usize, out: &mut Vec<PeerInfo>) {
        let requester_group = self.entries[requester as usize].group;
        let mut wanted = count;
        for group in GROUPS {
            if wanted == 0 {
                break;
            }
            let members = &mut self.groups[group as usize];
            let mut n_candidates = members.len();
            if group == requester_group {
                // Park the requester at the end, outside the candidates.
                let position = self.entries[requester as usize].group_position as usize;
                swap_in_group(members, &mut self.entries, position, n_candidates - 1);
                n_candidates -= 1;
            }
            let n_taken = wanted.min(n_candidates);
            // Partial Fisher–Yates: after step i, members[..=i] is a uniform random
            // i+1-subset in uniform random order.
            for i in 0..n_taken {
                let j = i + rng.index(n_candidates - i);
                swap_in_group(members, &mut self.entries, i, j);
                out.push(self.entries[members[i] as usize].peer.clone());
            }
            wanted -= n_taken;
        }
    }

    fn group_push(&mut self, index: u32) {
        let group = self.entries[index as usize].group as usize;
        self.entry(index).group_position = self.groups[group].len() as u32;
        self.groups[group].push(index);
    }

    fn group_remove(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (group, position) = (entry.group as usize, entry.group_position as usize);
        let members = &mut self.groups[group];
        debug_assert_eq!(members[position], index);
        members.swap_remove(position);
        if let Some(&moved) = members.get(position) {
            self.entry(moved).group_position = position as u32;
        }
        self.entry(index).group_position = NONE;
    }

    fn recency_push_newest(&mut self, index: u32) {
        let previous_newest = self.newest;
        let entry = self.entry(index);
        entry.older = previous_newest;
        entry.newer = NONE;
        match previous_newest {
            NONE => self.oldest = index,
            previous => self.entry(previous).newer = index,
        }
        self.newest = index;
    }

    fn recency_unlink(&mut self, index: u32) {
        let entry = self.entry(index);
        let (older, newer) = (entry.older, entry.newer);
        entry.older = NONE;
        entry.newer = NONE;
        match older {
            NONE => self.oldest = newer,
            older => self.entry(older).newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            newer => self.entry(newer).older = older,
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.by_id.len(), self.entries.len());
        for (id, &index) in &self.by_id {
            assert_eq!(self.entries[index as usize].peer.id, *id);
        }
        let n_grouped: usize = self.groups.iter().map(Vec::len).sum();
        assert_eq!(n_grouped, self.entries.len());
        for group in GROUPS {
            for (position, &index) in self.groups[group as usize].iter().enumerate() {
                let entry = &self.entries[index as usize];
                assert_eq!(entry.group, group);
                assert_eq!(entry.group, Group::of(&entry.peer));
                assert_eq!(entry.group_position as usize, position);
            }
        }
        // The recency list holds every entry once, oldest first.
        let mut n_listed = 0;
        let mut previous = NONE;
        let mut cursor = self.oldest;
        while cursor != NONE {
            let entry = &self.entries[cursor as usize];
            assert_eq!(entry.older, previous);
            if previous != NONE {
                assert!(self.entries[previous as usize].last_announce <= entry.last_announce);
            }
            n_listed += 1;
            assert!(n_listed <= self.entries.len());
            previous = cursor;
            cursor = entry.newer;
        }
        assert_eq!(previous, self.newest);
        assert_eq!(n_listed, self.entries.len());
    }
}

/// Swaps two positions of a group vector and records the entries' new positions.
fn swap_in_group(members: &mut [u32], entries: &mut [PeerEntry], a: usize, b: usize) {
    members.swap(a, b);
    entries[members[a] as usize].group_position = a as u32;
    entries[members[b] as usize].group_position = b as u32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const TTL: Duration = Duration::from_secs(15);

    fn at(secs: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(secs)
    }

    fn info_hash(n: u8) -> InfoHash {
        InfoHash([n; 32])
    }

    fn peer(n: u64, group: Group) -> PeerInfo {
        PeerInfo {
            id: PeerId::from_u64(n),
            addr: SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 7000)),
            is_origin: group == Group::Origin,
            is_complete: group == Group::Complete,
        }
    }

    fn config(sample_size_max: usize) -> TrackerConfig {
        TrackerConfig {
            sample_size_max,
            ..TrackerConfig::default()
        }
    }

    fn store(config: TrackerConfig) -> PeerStore {
        PeerStore::new(config, 42).unwrap()
    }

    fn ids(response: &AnnounceResponse) -> Vec<u64> {
        response
            .peers
            .iter()
            .map(|p| u64::from_be_bytes(p.id.0[12..].try_into().unwrap()))
            .collect()
    }

    /// Announces `n_origins` origins, then complete, then incomplete peers (ids 1, 2, …).
    fn populate(store: &mut PeerStore, now: Instant, counts: [u64; 3]) -> u64 {
        let mut next_id = 1;
        for (group, count) in GROUPS.into_iter().zip(counts) {
            for _ in 0..count {
                store
                    .announce(now, info_hash(1), peer(next_id, group))
                    .unwrap();
                next_id += 1;
            }
        }
        next_id
    }

    /// Checks what every response must satisfy.
    fn check_response(response: &AnnounceResponse, requester: &PeerId, sample_size_max: usize) {
        assert!(response.peers.len() <= sample_size_max);
        assert!(response.peers.iter().all(|p| p.id != *requester));
        let distinct: BTreeSet<PeerId> = response.peers.iter().map(|p| p.id).collect();
        assert_eq!(distinct.len(), response.peers.len(), "duplicates");
        let groups: Vec<usize> = response
            .peers
            .iter()
            .map(|p| Group::of(p) as usize)
            .collect();
        assert!(groups.is_sorted(), "groups out of order: {groups:?}");
    }

    #[test]
    fn config_validation() {
        type Edit = fn(&mut TrackerConfig);
        let cases: &[(Edit, Option<&str>)] = &[
            (|_| {}, None),
            (
                |c| c.announce_interval_fast = Duration::ZERO,
                Some("fast must be positive"),
            ),
            (
                |c| c.announce_interval = Duration::from_millis(999),
                Some("below"),
            ),
            (
                |c| c.announce_interval = Duration::from_secs(3601),
                Some("one hour"),
            ),
            (
                |c| c.peer_ttl = Duration::from_secs(5),
                Some("peer_ttl must exceed"),
            ),
            (
                |c| c.peer_ttl = Duration::from_millis(5_500),
                Some("peer_ttl must exceed"),
            ),
            (|c| c.peer_ttl = Duration::from_millis(5_501), None),
            (
                |c| c.sample_size_max = 0,
                Some("sample_size_max must be positive"),
            ),
            (|c| c.sample_size_max = 1025, Some("at most 1024")),
            (|c| c.sample_size_max = 1024, None),
            (|c| c.peers_per_info_hash_max = 1, Some("at least 2")),
            (|c| c.peers_per_info_hash_max = (1 << 24) + 1, Some("2^24")),
            (
                |c| c.info_hashes_max = 0,
                Some("info_hashes_max must be positive"),
            ),
            (|c| c.peers_max = 99_999, Some("peers_max must be at least")),
        ];
        for (i, (edit, expected)) in cases.iter().enumerate() {
            let mut config = TrackerConfig::default();
            edit(&mut config);
            match (PeerStore::new(config, 0), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(fragment)) => {
                    assert!(e.to_string().contains(fragment), "case {i}: {e}");
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn origins_then_complete_then_the_rest() {
        // (origins, complete, incomplete in the swarm), requester's group, sample size
        //   -> (origins, complete, incomplete) in the response
        let cases: &[([u64; 3], Group, usize, [usize; 3])] = &[
            ([0, 0, 0], Group::Incomplete, 5, [0, 0, 0]),
            ([0, 0, 1], Group::Incomplete, 5, [0, 0, 1]),
            ([3, 10, 100], Group::Incomplete, 50, [3, 10, 37]),
            ([3, 10, 100], Group::Complete, 50, [3, 10, 37]),
            ([3, 10, 100], Group::Origin, 50, [3, 10, 37]),
            ([3, 10, 100], Group::Incomplete, 2, [2, 0, 0]),
            ([3, 10, 100], Group::Incomplete, 8, [3, 5, 0]),
            ([0, 10, 3], Group::Incomplete, 50, [0, 10, 3]),
            ([2, 0, 30], Group::Complete, 10, [2, 0, 8]),
            ([0, 0, 20], Group::Incomplete, 20, [0, 0, 20]),
        ];
        for &(counts, requester_group, sample_size_max, expected) in cases {
            let mut store = store(config(sample_size_max));
            let requester_id = populate(&mut store, at(0), counts);
            let requester = peer(requester_id, requester_group);
            for round in 0..3 {
                let response = store.announce(at(round), info_hash(1), requester.clone());
                let response = response.unwrap();
                check_response(&response, &requester.id, sample_size_max);
                let mut got = [0; 3];
                for p in &response.peers {
                    got[Group::of(p) as usize] += 1;
                }
                assert_eq!(
                    got, expected,
                    "{counts:?} {requester_group:?} {sample_size_max}"
                );
            }
            store.check_invariants();
        }
    }

    #[test]
    fn expired_peers_are_never_handed_out() {
        let mut store = store(config(10));
        store
            .announce(at(0), info_hash(1), peer(1, Group::Origin))
            .unwrap();
        store
            .announce(at(5), info_hash(1), peer(2, Group::Incomplete))
            .unwrap();
        let requester = peer(3, Group::Incomplete);
        // (time, peers handed out, peers stored after the announce)
        let steps: &[(Instant, &[u64], usize)] = &[
            (at(15), &[1, 2], 3),
            (at(15) + Duration::from_nanos(1), &[2], 2),
            (at(20), &[2], 2),
            (at(21), &[], 1),
        ];
        for &(now, expected, n_stored) in steps {
            let response = store
                .announce(now, info_hash(1), requester.clone())
                .unwrap();
            assert_eq!(ids(&response), expected, "at {now:?}");
            assert_eq!(store.n_peers(&info_hash(1)), n_stored);
            store.check_invariants();
        }
        // Nobody announces any more: a sweep drops the requester and then the info hash.
        let progress = store.expire(at(36));
        assert_eq!(progress.peers_removed, 0);
        let progress = store.expire(at(37));
        assert_eq!(
            (progress.peers_removed, progress.info_hashes_removed),
            (1, 1)
        );
        assert_eq!((store.n_info_hashes(), store.n_peers_total()), (0, 0));
    }

    #[test]
    fn reannounce_updates_flags_and_address() {
        let mut store = store(config(10));
        let observer = peer(1, Group::Incomplete);
        let mut subject = peer(2, Group::Incomplete);
        store
            .announce(at(0), info_hash(1), subject.clone())
            .unwrap();
        store
            .announce(at(0), info_hash(1), peer(3, Group::Complete))
            .unwrap();
        let response = store
            .announce(at(1), info_hash(1), observer.clone())
            .unwrap();
        assert_eq!(ids(&response), [3, 2]);

        subject.is_complete = true;
        subject.addr = "192.0.2.7:7001".parse().unwrap();
        store
            .announce(at(2), info_hash(1), subject.clone())
            .unwrap();
        subject.is_origin = true;
        store
            .announce(at(3), info_hash(1), subject.clone())
            .unwrap();
        let response = store
            .announce(at(4), info_hash(1), observer.clone())
            .unwrap();
        assert_eq!(response.peers[0], subject);
        assert_eq!(ids(&response), [2, 3]);
        assert_eq!(store.n_peers(&info_hash(1)), 3);

        // A refresh also resets its expiry: at 18 s only the subject (last seen at 3 s) lives.
        let response = store.announce(at(18), info_hash(1), observer).unwrap();
        assert_eq!(ids(&response), [2]);
        store.check_invariants();
    }

    #[test]
    fn full_swarm_replaces_the_stalest_peer() {
        let mut store = store(TrackerConfig {
            peers_per_info_hash_max: 3,
            ..config(10)
        });
        for (n, secs) in [(1, 0), (2, 1), (3, 2)] {
            store
                .announce(at(secs), info_hash(1), peer(n, Group::Origin))
                .unwrap();
        }
        // Peer 1 refreshes: peer 2 is now the stalest. Refreshing evicts nobody.
        store
            .announce(at(3), info_hash(1), peer(1, Group::Origin))
            .unwrap();
        assert_eq!(store.n_peers(&info_hash(1)), 3);
        let response = store
            .announce(at(4), info_hash(1), peer(4, Group::Incomplete))
            .unwrap();
        let mut got = ids(&response);
        got.sort();
        assert_eq!(got, [1, 3]);
        let response = store
            .announce(at(5), info_hash(1), peer(5, Group::Incomplete))
            .unwrap();
        let mut got = ids(&response);
        got.sort();
        assert_eq!(got, [1, 4]);
        assert_eq!(
            (store.n_peers(&info_hash(1)), store.n_peers_total()),
            (3, 3)
        );
        assert!(!store.remove(&info_hash(1), &PeerId::from_u64(3)));
        store.check_invariants();
    }

    #[test]
    fn info_hash_and_total_peer_caps() {
        let mut store = store(TrackerConfig {
            info_hashes_max: 2,
            peers_per_info_hash_max: 2,
            peers_max: 3,
            ..config(10)
        });
        let announce = |store: &mut PeerStore, secs, hash, n| {
            store
                .announce(at(secs), info_hash(hash), peer(n, Group::Incomplete))
                .map(|response| ids(&response))
        };
        assert_eq!(announce(&mut store, 0, 1, 1), Ok(vec![]));
        assert_eq!(announce(&mut store, 0, 2, 2), Ok(vec![]));
        let full = Err(TrackerError::Full { info_hashes_max: 2 });
        assert_eq!(announce(&mut store, 0, 3, 3), full);
        assert_eq!(announce(&mut store, 0, 2, 3), Ok(vec![2]));
        let peers_full = Err(TrackerError::PeersFull { peers_max: 3 });
        assert_eq!(announce(&mut store, 0, 1, 4), peers_full);
        // A full swarm replaces rather than grows, so the total cap does not bite.
        assert_eq!(announce(&mut store, 1, 2, 5), Ok(vec![3]));
        assert_eq!((store.n_info_hashes(), store.n_peers_total()), (2, 3));
        // Leaving frees room for a new info hash.
        assert!(store.remove(&info_hash(1), &PeerId::from_u64(1)));
        assert!(!store.remove(&info_hash(1), &PeerId::from_u64(1)));
        assert!(!store.remove(&info_hash(9), &PeerId::from_u64(1)));
        assert_eq!(store.n_info_hashes(), 1);
        assert_eq!(announce(&mut store, 2, 3, 6), Ok(vec![]));
        store.check_invariants();
        // Expiry frees room too. At 16 s peer 3 (seen at 0 s) has expired, peer 5 (1 s) lives.
        assert_eq!(announce(&mut store, 16, 4, 7), full);
        assert_eq!(announce(&mut store, 16, 2, 7), Ok(vec![5]));
        assert_eq!(announce(&mut store, 16, 3, 8), peers_full);
        // At 18 s peers 5 and 6 have expired, and with 6 its info hash.
        assert_eq!(announce(&mut store, 18, 4, 8), full);
        let progress = store.expire(at(18));
        assert_eq!(
            (progress.peers_removed, progress.info_hashes_removed),
            (2, 1)
        );
        assert_eq!(announce(&mut store, 18, 4, 8), Ok(vec![]));
        store.check_invariants();
    }

    #[test]
    fn refused_announces_change_nothing() {
        let mut store = store(TrackerConfig {
            peers_per_info_hash_max: 2,
            peers_max: 2,
            ..config(10)
        });
        store
            .announce(at(0), info_hash(1), peer(1, Group::Complete))
            .unwrap();
        store
            .announce(at(10), info_hash(2), peer(2, Group::Complete))
            .unwrap();
        let peers_full = Err(TrackerError::PeersFull { peers_max: 2 });
        for (secs, n) in [(10, 3), (12, 4)] {
            let refused = store.announce(at(secs), info_hash(2), peer(n, Group::Origin));
            assert_eq!(refused, peers_full);
            assert_eq!((store.n_info_hashes(), store.n_peers_total()), (2, 2));
            store.check_invariants();
        }
        // Peer 1 has expired, but only a sweep or an announce to its own swarm drops it.
        let refused = store.announce(at(16), info_hash(2), peer(5, Group::Origin));
        assert_eq!(refused, peers_full);
        assert_eq!(store.expire(at(16)).peers_removed, 1);
        assert_eq!((store.n_info_hashes(), store.n_peers_total()), (1, 1));
        let response = store.announce(at(16), info_hash(2), peer(5, Group::Origin));
        assert_eq!(ids(&response.unwrap()), [2]);
        store.check_invariants();
    }

    #[test]
    fn interval_is_short_only_while_the_swarm_forms() {
        let fast = Duration::from_secs(1);
        let slow = Duration::from_secs(5);
        // (peers already there and when they joined, requester's announce time)
        //   -> base interval
        let cases: &[(u64, u64, u64, Duration)] = &[
            (0, 0, 0, fast),  // alone, just joined
            (3, 0, 1, fast),  // small swarm, grew 1 s ago
            (3, 0, 4, fast),  // the requester itself joined just now
            (10, 0, 1, slow), // sample is full
            (11, 0, 1, slow),
        ];
        for &(n_others, join_secs, requester_secs, base) in cases {
            let mut store = store(config(10));
            for n in 0..n_others {
                store
                    .announce(at(join_secs), info_hash(1), peer(n, Group::Incomplete))
                    .unwrap();
            }
            let response = store
                .announce(
                    at(requester_secs),
                    info_hash(1),
                    peer(99, Group::Incomplete),
                )
                .unwrap();
            let span = base / 10;
            let interval = response.interval;
            assert!(
                interval >= base - span && interval <= base + span,
                "{interval:?}"
            );
        }

        // A small swarm that stopped growing announces at the usual interval.
        let mut store = store(config(10));
        store
            .announce(at(0), info_hash(1), peer(1, Group::Incomplete))
            .unwrap();
        let response = store
            .announce(at(0), info_hash(1), peer(2, Group::Origin))
            .unwrap();
        assert!(response.interval < Duration::from_millis(1_100));
        let response = store
            .announce(at(5), info_hash(1), peer(2, Group::Origin))
            .unwrap();
        assert!(response.interval > Duration::from_millis(4_500));

        // Jitter spreads intervals over the whole ±10% band.
        let intervals: Vec<Duration> = (0..1_000)
            .map(|_| {
                store
                    .announce(at(6), info_hash(1), peer(1, Group::Incomplete))
                    .unwrap()
                    .interval
            })
            .collect();
        let mut bins = [0u32; 10]; // 100 ms each, from 4.5 s
        for interval in intervals {
            let offset = interval.checked_sub(Duration::from_millis(4_500)).unwrap();
            assert!(offset <= Duration::from_millis(1_000), "{interval:?}");
            bins[(offset.as_millis() as usize / 100).min(9)] += 1;
        }
        assert!(bins.iter().all(|&n| n > 60), "{bins:?}");
    }

    #[test]
    fn same_seed_same_responses() {
        let run = |seed| {
            let mut store = PeerStore::new(config(7), seed).unwrap();
            let mut rng = Rng::new(1);
            let mut log = Vec::new();
            for step in 0..2_000 {
                let n = rng.below(60);
                let group = GROUPS[rng.index(3)];
                let hash = rng.below(3) as u8;
                let response = store.announce(at(step / 50), info_hash(hash), peer(n, group));
                log.push(response.unwrap());
            }
            log
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn samples_are_uniform_within_a_group() {
        const N_ANNOUNCES: u64 = 20_000;
        // (origins, complete, incomplete), sample size
        let cases: &[([u64; 3], usize)] = &[([0, 0, 100], 10), ([2, 30, 100], 10)];
        for &(counts, sample_size_max) in cases {
            let mut store = store(config(sample_size_max));
            let requester_id = populate(&mut store, at(0), counts);
            let requester = peer(requester_id, Group::Incomplete);
            let mut appearances = vec![0u64; requester_id as usize];
            let mut firsts_after_origins = vec![0u64; requester_id as usize];
            for _ in 0..N_ANNOUNCES {
                let response = store
                    .announce(at(0), info_hash(1), requester.clone())
                    .unwrap();
                let got = ids(&response);
                for &n in &got {
                    appearances[n as usize] += 1;
                }
                firsts_after_origins[got[counts[0] as usize] as usize] += 1;
            }
            store.check_invariants();
            // The group that gets cut: every member should be picked equally often.
            let cut_group = if counts[1] > 0 { 1 } else { 2 };
            let first_id = 1 + counts[..cut_group].iter().sum::<u64>();
            let n_members = counts[cut_group];
            let n_slots = sample_size_max as u64 - counts[..cut_group].iter().sum::<u64>();
            let fair = N_ANNOUNCES * n_slots / n_members;
            let fair_first = N_ANNOUNCES / n_members;
            for n in first_id..first_id + n_members {
                let count = appearances[n as usize];
                assert!(
                    count.abs_diff(fair) <= fair / 7,
                    "peer {n}: {count} vs {fair}"
                );
                let first = firsts_after_origins[n as usize];
                assert!(
                    first.abs_diff(fair_first) <= fair_first / 2,
                    "peer {n}: {first}"
                );
            }
            for n in 1..first_id {
                assert_eq!(appearances[n as usize], N_ANNOUNCES, "always handed out");
            }
            for n in first_id + n_members..requester_id {
                assert_eq!(appearances[n as usize], 0, "lower group: never reached");
            }
        }
    }

    #[test]
    fn clock_going_backwards_is_treated_as_the_latest_time() {
        let mut store = store(config(10));
        store
            .announce(at(100), info_hash(1), peer(1, Group::Incomplete))
            .unwrap();
        store
            .announce(at(50), info_hash(1), peer(2, Group::Incomplete))
            .unwrap();
        store.check_invariants();
        // Peer 2 counts as seen at 100 s, so both live until 115 s.
        let response = store.announce(at(115), info_hash(1), peer(3, Group::Incomplete));
        assert_eq!(response.unwrap().peers.len(), 2);
        store.expire(at(0));
        assert_eq!(store.n_peers_total(), 3);
        store.check_invariants();
    }

    #[test]
    fn expire_sweeps_in_bounded_steps() {
        let n_hashes = EXPIRE_INFO_HASHES_PER_CALL_MAX + 10;
        let mut store = store(TrackerConfig {
            info_hashes_max: 1 << 20,
            ..config(10)
        });
        for hash in 0..n_hashes {
            let hash_bytes = InfoHash((hash as u64).to_be_bytes().repeat(4).try_into().unwrap());
            store
                .announce(at(0), hash_bytes, peer(1, Group::Complete))
                .unwrap();
        }
        // One swarm with more expired peers than one call may remove.
        let big = info_hash(0xff);
        for n in 0..EXPIRE_PEERS_PER_CALL_MAX as u64 + 5 {
            store
                .announce(at(0), big, peer(n, Group::Incomplete))
                .unwrap();
        }
        let live = info_hash(0xfe);
        store
            .announce(at(20), live, peer(1, Group::Incomplete))
            .unwrap();
        let n_total = store.n_peers_total();

        // (peers removed, info hashes removed, sweep finished) per call
        let expected = [
            (
                EXPIRE_INFO_HASHES_PER_CALL_MAX,
                EXPIRE_INFO_HASHES_PER_CALL_MAX,
                false,
            ),
            (10 + EXPIRE_PEERS_PER_CALL_MAX - 10, 10, false),
            (15, 1, true),
            (0, 0, true),
        ];
        let mut n_removed = 0;
        for (call, &(peers_removed, info_hashes_removed, sweep_finished)) in
            expected.iter().enumerate()
        {
            let progress = store.expire(at(20));
            let want = ExpireProgress {
                peers_removed,
                info_hashes_removed,
                sweep_finished,
            };
            assert_eq!(progress, want, "call {call}");
            n_removed += progress.peers_removed;
            store.check_invariants();
        }
        assert_eq!(n_removed, n_total - 1);
        assert_eq!((store.n_info_hashes(), store.n_peers(&live)), (1, 1));
    }

    /// Random announces, leaves, expiry and time steps against a plain model of the store.
    #[test]
    fn agrees_with_a_simple_model() {
        #[derive(Default)]
        struct Model {
            /// info hash -> peer id -> (latest info, last announce, announce sequence number)
            swarms: BTreeMap<u8, BTreeMap<u64, (PeerInfo, Instant, u64)>>,
        }
        impl Model {
            fn drop_expired(&mut self, hash: u8, now: Instant) {
                if let Some(peers) = self.swarms.get_mut(&hash) {
                    peers.retain(|_, (_, last, _)| now.saturating_duration_since(*last) <= TTL);
                    if peers.is_empty() {
                        self.swarms.remove(&hash);
                    }
                }
            }
        }

        const SAMPLE_SIZE_MAX: usize = 6;
        const PEERS_PER_INFO_HASH_MAX: usize = 12;
        for seed in 0..8 {
            let mut rng = Rng::new(seed);
            let mut store = PeerStore::new(
                TrackerConfig {
                    peers_per_info_hash_max: PEERS_PER_INFO_HASH_MAX,
                    ..config(SAMPLE_SIZE_MAX)
                },
                seed,
            )
            .unwrap();
            let mut model = Model::default();
            let mut now = Instant::ZERO;
            for sequence in 0..3_000u64 {
                let hash = rng.below(4) as u8;
                let n = rng.below(30);
                match rng.below(20) {
                    0..=14 => {
                        let group = GROUPS[[0, 1, 1, 2, 2, 2, 2, 2][rng.index(8)]];
                        let mut info = peer(n, group);
                        info.addr.set_port(rng.below(3) as u16 + 7000);
                        let response = store.announce(now, info_hash(hash), info.clone());
                        let response = response.unwrap();
                        check_response(&response, &info.id, SAMPLE_SIZE_MAX);

                        model.drop_expired(hash, now);
                        let peers = model.swarms.entry(hash).or_default();
                        if !peers.contains_key(&n) && peers.len() == PEERS_PER_INFO_HASH_MAX {
                            let stalest = peers.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| *k);
                            peers.remove(&stalest.unwrap());
                        }
                        peers.insert(n, (info, now, sequence));
                        let n_others = peers.len() - 1;
                        assert_eq!(response.peers.len(), n_others.min(SAMPLE_SIZE_MAX));
                        for handed_out in &response.peers {
                            let id = u64::from_be_bytes(handed_out.id.0[12..].try_into().unwrap());
                            assert_eq!(peers[&id].0, *handed_out);
                        }
                    }
                    15..=16 => {
                        let present = model
                            .swarms
                            .get_mut(&hash)
                            .is_some_and(|peers| peers.remove(&n).is_some());
                        if model.swarms.get(&hash).is_some_and(BTreeMap::is_empty) {
                            model.swarms.remove(&hash);
                        }
                        assert_eq!(
                            store.remove(&info_hash(hash), &PeerId::from_u64(n)),
                            present
                        );
                    }
                    17 => {
                        let progress = store.expire(now);
                        assert!(progress.sweep_finished);
                        for hash in 0..4 {
                            model.drop_expired(hash, now);
                        }
                    }
                    _ => now += Duration::from_millis(rng.below(4_000)),
                }
                store.check_invariants();
                assert_eq!(store.n_info_hashes(), model.swarms.len());
                for hash in 0..4 {
                    let n_model = model.swarms.get(&hash).map_or(0, BTreeMap::len);
                    assert_eq!(store.n_peers(&info_hash(hash)), n_model, "seed {seed}");
                }
            }
        }
    }
}
