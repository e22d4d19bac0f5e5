//! Topology files (`configs/sim/*.toml`): who pulls what, over which links.
//!
//! Every key is documented in the shipped files; unknown keys are rejected with their name
//! (`deny_unknown_fields`), so a typo never silently falls back to a default. Defaults live in
//! this module only (the `default_*` functions and `Default` impls).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shoal_proto::swarm::SwarmConfig;

use crate::SimError;
use crate::units::{Bytes, BytesPerSecond};

/// A whole topology file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Seeds every random choice of the run (roles, join times, jitter, swarm seeds, tracker).
    pub seed: u64,
    /// Virtual seconds after which the run stops; hosts not done by then are reported.
    pub time_limit_s: f64,
    /// Timer quantum: a swarm's wake-ups may run up to this late (see the `sim` module docs).
    #[serde(default = "default_timer_granularity_ms")]
    pub timer_granularity_ms: f64,
    pub hosts: HostsSection,
    pub origins: OriginsSection,
    pub blobs: Vec<BlobSection>,
    #[serde(default)]
    pub pieces: PiecesSection,
    /// Overrides of `SwarmConfig::default()` for agents.
    #[serde(default)]
    pub swarm: SwarmOverrides,
    /// Overrides of `SwarmConfig::origin()` for origins.
    #[serde(default)]
    pub origin_swarm: SwarmOverrides,
    #[serde(default)]
    pub tracker: TrackerSection,
}

fn default_timer_granularity_ms() -> f64 {
    100.0
}

/// The agents: every one pulls every blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsSection {
    pub count: u32,
    pub upload_bytes_per_s: BytesPerSecond,
    pub download_bytes_per_s: BytesPerSecond,
    /// One-way latency of every message (and of a piece payload's first byte).
    pub latency_ms: f64,
    /// Extra one-way latency per host pair, uniform in `[0, latency_jitter_ms)`, fixed for the
    /// pair for the whole run.
    #[serde(default)]
    pub latency_jitter_ms: f64,
    /// 0: every host joins at t = 0. Otherwise join times are uniform in `[0, join_spread_s)`.
    #[serde(default)]
    pub join_spread_s: f64,
    /// This fraction of the hosts joins at `late_join_at_s` instead.
    #[serde(default)]
    pub late_join_fraction: f64,
    #[serde(default)]
    pub late_join_at_s: f64,
    /// This fraction of the hosts leaves at `depart_at_s` (mid-transfer); they are left out of
    /// the completion figures and counted separately.
    #[serde(default)]
    pub depart_fraction: f64,
    #[serde(default)]
    pub depart_at_s: f64,
    /// This fraction of the hosts corrupts every piece it uploads (each fails verification at
    /// its receiver). Left out of the completion figures.
    #[serde(default)]
    pub liar_fraction: f64,
    /// Every agent reads each blob in order from its first byte as pieces arrive (as
    /// `docker pull` through an agent does), and the piece its reader waits for is requested
    /// first (`Swarm::handle_wanted`). Off: pieces strictly rarest first.
    #[serde(default)]
    pub streaming_readers: bool,
}

/// The dedicated origin seeders: complete for every blob from t = 0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginsSection {
    pub count: u32,
    pub upload_bytes_per_s: BytesPerSecond,
    pub download_bytes_per_s: BytesPerSecond,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSection {
    pub size: Bytes,
}

/// Piece geometry overrides; by default proto's piece-length table and stripe size apply.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiecesSection {
    pub piece_len: Option<Bytes>,
    pub pieces_per_stripe: Option<u32>,
}

/// Tracker policy overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerSection {
    /// Seconds between a host's announces of one blob.
    pub announce_interval_s: Option<f64>,
    /// Seconds between announces while a swarm is still forming.
    pub announce_interval_fast_s: Option<f64>,
    /// Most peers one announce response carries.
    pub sample_size: Option<usize>,
    /// Seconds a peer stays listed after its last announce.
    pub peer_ttl_s: Option<f64>,
}

/// Overrides of [`SwarmConfig`] fields; durations in milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmOverrides {
    pub dial_target: Option<usize>,
    pub connections_max: Option<usize>,
    pub origin_connections_max: Option<usize>,
    pub origin_last_resort: Option<bool>,
    pub dials_in_flight_max: Option<usize>,
    pub requests_per_connection_max: Option<usize>,
    pub requests_in_flight_max: Option<usize>,
    pub upload_queue_per_connection_max: Option<usize>,
    pub uploads_active_max: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub request_timeouts_max: Option<u32>,
    pub reject_backoff_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub keepalive_interval_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub endgame_duplicates_max: Option<usize>,
    pub candidates_max: Option<usize>,
    pub blacklist_max: Option<usize>,
    pub dial_backoff_ms: Option<u64>,
    pub dial_backoff_max_ms: Option<u64>,
}

impl SwarmOverrides {
    /// `base` with every given field replaced.
    pub fn apply(&self, mut base: SwarmConfig) -> SwarmConfig {
        fn set<T: Copy>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        fn set_ms(field: &mut Duration, value: Option<u64>) {
            if let Some(ms) = value {
                *field = Duration::from_millis(ms);
            }
        }
        set(&mut base.dial_target, self.dial_target);
        set(&mut base.connections_max, self.connections_max);
        set(
            &mut base.origin_connections_max,
            self.origin_connections_max,
        );
        set(&mut base.origin_last_resort, self.origin_last_resort);
        set(&mut base.dials_in_flight_max, self.dials_in_flight_max);
        set(
            &mut base.requests_per_connection_max,
            self.requests_per_connection_max,
        );
        set(
            &mut base.requests_in_flight_max,
            self.requests_in_flight_max,
        );
        set(
            &mut base.upload_queue_per_connection_max,
            self.upload_queue_per_connection_max,
        );
        set(&mut base.uploads_active_max, self.uploads_active_max);
        set_ms(&mut base.request_timeout, self.request_timeout_ms);
        set(&mut base.request_timeouts_max, self.request_timeouts_max);
        set_ms(&mut base.reject_backoff, self.reject_backoff_ms);
        set_ms(&mut base.idle_timeout, self.idle_timeout_ms);
        set_ms(&mut base.keepalive_interval, self.keepalive_interval_ms);
        set_ms(&mut base.handshake_timeout, self.handshake_timeout_ms);
        set(
            &mut base.endgame_duplicates_max,
            self.endgame_duplicates_max,
        );
        set(&mut base.candidates_max, self.candidates_max);
        set(&mut base.blacklist_max, self.blacklist_max);
        set_ms(&mut base.dial_backoff, self.dial_backoff_ms);
        set_ms(&mut base.dial_backoff_max, self.dial_backoff_max_ms);
        base
    }
}

/// Hosts a run may have: host indexes and peer ids must fit the simulator's `u32` ids.
pub const HOSTS_MAX: u32 = 1_000_000;

/// Blobs one topology may list.
pub const BLOBS_MAX: usize = 64;

impl Topology {
    pub fn from_toml_str(text: &str) -> Result<Topology, SimError> {
        let topology: Topology =
            toml::from_str(text).map_err(|error| SimError::Topology(error.to_string()))?;
        topology.validate()?;
        Ok(topology)
    }

    pub fn load(path: &Path) -> Result<Topology, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| SimError::Io(format!("reading {}: {error}", path.display())))?;
        Topology::from_toml_str(&text)
            .map_err(|error| SimError::Topology(format!("{}: {error}", path.display())))
    }

    /// The agent swarm config (seed left at 0: the simulator sets one per swarm).
    pub fn agent_swarm_config(&self) -> SwarmConfig {
        self.swarm.apply(SwarmConfig::default())
    }

    pub fn origin_swarm_config(&self) -> SwarmConfig {
        self.origin_swarm.apply(SwarmConfig::origin())
    }

    /// Checks ranges and relationships the types cannot express.
    pub fn validate(&self) -> Result<(), SimError> {
        let fail = |message: String| Err(SimError::Topology(message));
        let hosts = &self.hosts;
        if hosts.count == 0 || hosts.count > HOSTS_MAX {
            return fail(format!("hosts.count must be in 1..={HOSTS_MAX}"));
        }
        if self.origins.count == 0 || self.origins.count > HOSTS_MAX - hosts.count {
            return fail("origins.count must be at least 1 (and fit with hosts)".to_string());
        }
        if self.blobs.is_empty() || self.blobs.len() > BLOBS_MAX {
            return fail(format!("list 1..={BLOBS_MAX} [[blobs]]"));
        }
        if self.blobs.iter().any(|blob| blob.size.0 == 0) {
            return fail("every blob must have a non-zero size".to_string());
        }
        let rates = [
            ("hosts.upload_bytes_per_s", hosts.upload_bytes_per_s.0),
            ("hosts.download_bytes_per_s", hosts.download_bytes_per_s.0),
            (
                "origins.upload_bytes_per_s",
                self.origins.upload_bytes_per_s.0,
            ),
            (
                "origins.download_bytes_per_s",
                self.origins.download_bytes_per_s.0,
            ),
        ];
        for (name, rate) in rates {
            if rate <= 0.0 {
                return fail(format!("{name} must be positive"));
            }
        }
        let non_negative = [
            ("time_limit_s", self.time_limit_s),
            ("timer_granularity_ms", self.timer_granularity_ms),
            ("hosts.latency_ms", hosts.latency_ms),
            ("hosts.latency_jitter_ms", hosts.latency_jitter_ms),
            ("hosts.join_spread_s", hosts.join_spread_s),
            ("hosts.late_join_at_s", hosts.late_join_at_s),
            ("hosts.depart_at_s", hosts.depart_at_s),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return fail(format!("{name} must be a non-negative number"));
            }
        }
        if self.time_limit_s <= 0.0 || self.timer_granularity_ms <= 0.0 {
            return fail("time_limit_s and timer_granularity_ms must be positive".to_string());
        }
        let fractions = [
            ("hosts.late_join_fraction", hosts.late_join_fraction),
            ("hosts.depart_fraction", hosts.depart_fraction),
            ("hosts.liar_fraction", hosts.liar_fraction),
        ];
        for (name, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return fail(format!("{name} must be in [0, 1]"));
            }
        }
        if self.pieces.pieces_per_stripe == Some(0) {
            return fail("pieces.pieces_per_stripe must be at least 1".to_string());
        }
        let positive = |value: Option<f64>| value.is_none_or(|x| x.is_finite() && x > 0.0);
        let tracker = &self.tracker;
        if !positive(tracker.announce_interval_s)
            || !positive(tracker.announce_interval_fast_s)
            || !positive(tracker.peer_ttl_s)
        {
            return fail("tracker intervals and TTL must be positive".to_string());
        }
        if let Err(error) = crate::tracker::tracker_config(tracker).validate() {
            return fail(format!("[tracker]: {error}"));
        }
        if let Err(error) = self.agent_swarm_config().validate() {
            return fail(format!("[swarm]: {error}"));
        }
        if let Err(error) = self.origin_swarm_config().validate() {
            return fail(format!("[origin_swarm]: {error}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
        seed = 1
        time_limit_s = 60
        [hosts]
        count = 10
        upload_bytes_per_s = "100MB/s"
        download_bytes_per_s = "1Gbit/s"
        latency_ms = 0.5
        [origins]
        count = 1
        upload_bytes_per_s = 1_000_000
        download_bytes_per_s = "1GB/s"
        [[blobs]]
        size = "64MiB"
    "#;

    fn error_of(text: &str) -> String {
        Topology::from_toml_str(text)
            .expect_err("topology is rejected")
            .to_string()
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let topology = Topology::from_toml_str(MINIMAL).expect("minimal topology");
        assert_eq!(topology.hosts.count, 10);
        assert_eq!(topology.hosts.upload_bytes_per_s, BytesPerSecond(100e6));
        assert_eq!(topology.hosts.download_bytes_per_s, BytesPerSecond(125e6));
        assert_eq!(topology.origins.upload_bytes_per_s, BytesPerSecond(1e6));
        assert_eq!(topology.blobs[0].size, Bytes(64 << 20));
        assert_eq!(topology.hosts.join_spread_s, 0.0);
        assert_eq!(topology.timer_granularity_ms, 100.0);
        assert_eq!(
            topology.agent_swarm_config().dial_target,
            SwarmConfig::default().dial_target
        );
        assert!(topology.origin_swarm_config().is_origin);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let top_level = format!("colour = 3\n{MINIMAL}");
        assert!(
            error_of(&top_level).contains("colour"),
            "{}",
            error_of(&top_level)
        );
        let nested = MINIMAL.replace("latency_ms = 0.5", "latency_ms = 0.5\nlatncy_jitter_ms = 1");
        assert!(
            error_of(&nested).contains("latncy_jitter_ms"),
            "{}",
            error_of(&nested)
        );
        let swarm = format!("{MINIMAL}\n[swarm]\ndial_targett = 3\n");
        assert!(
            error_of(&swarm).contains("dial_targett"),
            "{}",
            error_of(&swarm)
        );
    }

    #[test]
    fn overrides_apply_and_are_validated() {
        let text = format!(
            "{MINIMAL}\n[swarm]\ndial_target = 3\nrequest_timeout_ms = 1500\n\
             [origin_swarm]\nconnections_max = 40\n"
        );
        let topology = Topology::from_toml_str(&text).expect("overrides parse");
        let agent = topology.agent_swarm_config();
        assert_eq!(agent.dial_target, 3);
        assert_eq!(agent.request_timeout, Duration::from_millis(1500));
        assert_eq!(topology.origin_swarm_config().connections_max, 40);

        let bad = format!("{MINIMAL}\n[swarm]\ndial_target = 30\nconnections_max = 10\n");
        assert!(
            error_of(&bad).contains("dial_target must not exceed"),
            "{}",
            error_of(&bad)
        );
    }

    #[test]
    fn ranges_are_checked() {
        let bad_fraction =
            MINIMAL.replace("latency_ms = 0.5", "latency_ms = 0.5\nliar_fraction = 2");
        assert!(error_of(&bad_fraction).contains("liar_fraction"));
        let bad_unit = MINIMAL.replace("\"64MiB\"", "\"64Mb\"");
        assert!(error_of(&bad_unit).contains("unknown unit"));
        let no_hosts = MINIMAL.replace("count = 10", "count = 0");
        assert!(error_of(&no_hosts).contains("hosts.count"));
    }
}
