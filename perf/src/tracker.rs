//! The one logical tracker of a simulation.
//!
//! INTERIM: proto's tracker policy (`shoal_proto::tracker::PeerStore`) is not on `main` yet.
//! Until it lands, [`InterimStore`] stands in for it with the same shape of answer (origins
//! first, then complete peers, then the rest, each sampled uniformly; peers expire after a
//! TTL); it is deleted as soon as the real one is merged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::swarm::Candidate;
use shoal_proto::{InfoHash, Instant, PeerId, Rng};

use crate::topology::TrackerSection;

/// One peer of one swarm, as announced and as handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub addr: SocketAddr,
    pub is_origin: bool,
    pub is_complete: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    info: PeerInfo,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct SwarmEntries {
    entries: Vec<Entry>,
    by_id: BTreeMap<PeerId, usize>,
}

/// Stand-in for proto's `PeerStore` (see the module docs).
#[derive(Debug)]
pub struct InterimStore {
    swarms: BTreeMap<InfoHash, SwarmEntries>,
    rng: Rng,
    announce_interval: Duration,
    announce_interval_fast: Duration,
    sample_size: usize,
    peer_ttl: Duration,
}

impl InterimStore {
    fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        peer: PeerInfo,
    ) -> (Vec<PeerInfo>, Duration) {
        let swarm = self.swarms.entry(info_hash).or_default();
        let requester = peer.id;
        match swarm.by_id.get(&peer.id) {
            Some(&index) => {
                swarm.entries[index] = Entry {
                    info: peer,
                    last_seen: now,
                };
            }
            None => {
                swarm.by_id.insert(peer.id, swarm.entries.len());
                swarm.entries.push(Entry {
                    info: peer,
                    last_seen: now,
                });
            }
        }
        let mut groups: [Vec<usize>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (index, entry) in swarm.entries.iter().enumerate() {
            let live = now.saturating_duration_since(entry.last_seen) <= self.peer_ttl;
            if !live || entry.info.id == requester {
                continue;
            }
            let group = if entry.info.is_origin {
                0
            } else if entry.info.is_complete {
                1
            } else {
                2
            };
            groups[group].push(index);
        }
        let mut sample = Vec::with_capacity(self.sample_size);
        for group in groups.iter_mut() {
            let wanted = (self.sample_size - sample.len()).min(group.len());
            for position in 0..wanted {
                let pick = position + self.rng.index(group.len() - position);
                group.swap(position, pick);
                sample.push(swarm.entries[group[position]].info.clone());
            }
        }
        let interval = if sample.len() < self.sample_size {
            self.announce_interval_fast
        } else {
            self.announce_interval
        };
        (sample, interval)
    }
}

/// The tracker as the simulator uses it.
#[derive(Debug)]
pub struct Tracker {
    store: InterimStore,
}

impl Tracker {
    pub fn new(section: &TrackerSection, seed: u64) -> Tracker {
        let announce_interval = Duration::from_secs_f64(section.announce_interval_s.unwrap_or(5.0));
        Tracker {
            store: InterimStore {
                swarms: BTreeMap::new(),
                rng: Rng::new(seed),
                announce_interval,
                announce_interval_fast: announce_interval.min(Duration::from_secs(1)),
                sample_size: section.sample_size.unwrap_or(50),
                peer_ttl: Duration::from_secs_f64(section.peer_ttl_s.unwrap_or(15.0))
                    .max(announce_interval * 3),
            },
        }
    }

    /// Records `peer` and returns the peers it should try, and when to announce again.
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        peer: PeerInfo,
    ) -> Result<(Vec<Candidate>, Duration), String> {
        let (peers, interval) = self.store.announce(now, info_hash, peer);
        let candidates = peers
            .iter()
            .map(|info| Candidate {
                peer: info.id,
                is_origin: info.is_origin,
            })
            .collect();
        Ok((candidates, interval))
    }
}
