//! The one logical tracker of a simulation: proto's real handout policy
//! ([`PeerStore`]), with the topology's `[tracker]` overrides.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::swarm::Candidate;
use shoal_proto::tracker::{PeerInfo, PeerStore, TrackerConfig};
use shoal_proto::{InfoHash, Instant, PeerId};

use crate::SimError;
use crate::topology::TrackerSection;

/// The tracker as the simulator uses it.
#[derive(Debug)]
pub struct Tracker {
    store: PeerStore,
}

/// `TrackerConfig::default()` with the topology's overrides.
pub fn tracker_config(section: &TrackerSection) -> TrackerConfig {
    let mut config = TrackerConfig::default();
    if let Some(seconds) = section.announce_interval_s {
        config.announce_interval = Duration::from_secs_f64(seconds);
    }
    if let Some(seconds) = section.announce_interval_fast_s {
        config.announce_interval_fast = Duration::from_secs_f64(seconds);
    }
    if let Some(size) = section.sample_size {
        config.sample_size_max = size;
    }
    if let Some(seconds) = section.peer_ttl_s {
        config.peer_ttl = Duration::from_secs_f64(seconds);
    }
    config
}

impl Tracker {
    pub fn new(section: &TrackerSection, seed: u64) -> Result<Tracker, SimError> {
        let store = PeerStore::new(tracker_config(section), seed)
            .map_err(|error| SimError::Topology(format!("[tracker]: {error}")))?;
        Ok(Tracker { store })
    }

    /// Records the announce and returns the peers to try, and when to announce again.
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        id: PeerId,
        addr: SocketAddr,
        is_origin: bool,
        is_complete: bool,
    ) -> Result<(Vec<Candidate>, Duration), SimError> {
        let peer = PeerInfo {
            id,
            addr,
            is_origin,
            is_complete,
        };
        let response = self
            .store
            .announce(now, info_hash, peer)
            .map_err(|error| SimError::Topology(format!("tracker: {error}")))?;
        let candidates = response
            .peers
            .iter()
            .map(|info| Candidate {
                peer: info.id,
                is_origin: info.is_origin,
            })
            .collect();
        Ok((candidates, response.interval))
    }
}
