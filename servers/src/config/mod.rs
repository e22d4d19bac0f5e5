//! Config files: one TOML file per component (`shoal <component> --config FILE.toml`), every
//! key optional with its default in code, unknown keys rejected by name (serde's
//! `deny_unknown_fields`: the error names the key, the file, the line). The shipped examples
//! in `configs/` document every key; a test parses each of them.
//!
//! One file type per component: [`AgentFile`], [`OriginFile`], [`TrackerFile`],
//! [`BuildIndexFile`], [`ProxyFile`], [`DevFile`]. Sections shared by several components:
//! [`EngineSection`] (`[engine]`, with `[engine.store]`) and [`HttpSection`] (`[http]`).
//! Values take human units ([`units`]): sizes `"16MiB"`, rates `"100MB/s"` or `"1Gbit/s"`,
//! durations `"2s"`, `"24h"`. Defaults that belong to no server's own config type (listen
//! addresses, `shoal dev`'s layout) are in [`defaults`].
//!
//! A file only describes settings; the `shoal` binary merges them: built-in defaults, then the
//! file's keys (each section's `overlay`), then the command line's flags, then one validation
//! of the result.

pub mod backends;
pub mod defaults;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use shoal_engine::transport::UploadPath;
use shoal_engine::{Driver, EngineConfig};

use crate::http::HttpConfig;
use crate::origin::OriginConfig;
use crate::tracker::TrackerServerConfig;
use crate::uploads::UploadLimits;
use units::{Bytes, BytesPerSecond, Span};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed TOML, an unknown key, a value of the wrong type or unit: the message names
    /// the key and where it is.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// Well-formed but unusable (a watermark above 1, a limit of 0, …).
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads and parses one config file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses config text (`path` is for messages).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: error.to_string().trim_end().to_owned(),
    })
}

/// `"auto"` or `"poll"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverName {
    Auto,
    Poll,
}

/// `"splice"` or `"copy"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadPathName {
    Splice,
    Copy,
}

/// A duration, or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanOrNever(pub Option<std::time::Duration>);

impl<'de> Deserialize<'de> for SpanOrNever {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SpanOrNever, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) if text == "never" => Ok(SpanOrNever(None)),
            Raw::Text(text) => units::parse_duration(&text)
                .map(|d| SpanOrNever(Some(d)))
                .map_err(serde::de::Error::custom),
            Raw::Seconds(seconds) => Ok(SpanOrNever(Some(std::time::Duration::from_secs(seconds)))),
        }
    }
}

/// `[engine]`: the peer-to-peer data plane of an agent or an origin. Every key is optional;
/// see `configs/agent.toml` for each one's meaning and default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub data_dir: Option<PathBuf>,
    pub trackers: Option<Vec<SocketAddr>>,
    pub peer_listen: Option<SocketAddr>,
    pub shards: Option<usize>,
    pub pin_threads: Option<bool>,
    pub driver: Option<DriverName>,
    pub upload_path: Option<UploadPathName>,
    pub egress_limit: Option<BytesPerSecond>,
    pub ingress_limit: Option<BytesPerSecond>,
    pub connections_max: Option<usize>,
    pub connections_per_blob_max: Option<usize>,
    pub swarm_blobs_max: Option<usize>,
    pub uploads_per_stripe: Option<usize>,
    pub tcp_congestion: Option<String>,
    pub receive_buffer_per_shard: Option<Bytes>,
    pub tracker_timeout: Option<Span>,
    pub dial_timeout: Option<Span>,
    pub store: StoreSection,
}

/// Most pieces one stripe of a blob may upload at once (`engine.uploads_per_stripe`,
/// `--uploads-per-stripe`).
pub const UPLOADS_PER_STRIPE_MAX: usize = 1024;

/// `n` if it is a usable `uploads_per_stripe`, else why not.
pub fn check_uploads_per_stripe(n: usize) -> Result<usize, String> {
    if (1..=UPLOADS_PER_STRIPE_MAX).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not in 1..={UPLOADS_PER_STRIPE_MAX}"))
    }
}

/// `[engine.store]`: the local cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub evict_interval: Option<SpanOrNever>,
    pub evict_idle_after: Option<SpanOrNever>,
    pub evict_age_max: Option<SpanOrNever>,
    pub disk_high_watermark: Option<f64>,
    pub disk_low_watermark: Option<f64>,
    pub verify_on_start: Option<bool>,
    pub verify_digest_on_complete: Option<bool>,
}

/// Rates in a file are bytes per second as floating point; the engine takes whole bytes.
fn rate(value: BytesPerSecond) -> Option<u64> {
    (value.0 >= 1.0).then_some(value.0.round() as u64)
}

impl EngineSection {
    /// Writes the keys the file sets over `config` (which holds the defaults), then checks
    /// the result.
    pub fn apply(&self, config: &mut EngineConfig) -> Result<(), String> {
        self.overlay(config)?;
        config.validate()
    }

    /// Writes the keys the file sets over `config` without checking the whole (flags may
    /// still follow): errors only for a value that cannot be converted, naming its key.
    pub fn overlay(&self, config: &mut EngineConfig) -> Result<(), String> {
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(trackers) = &self.trackers {
            config.trackers = trackers.clone();
        }
        if let Some(listen) = self.peer_listen {
            config.listen = listen;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(pin) = self.pin_threads {
            config.pin_threads = pin;
        }
        if let Some(driver) = self.driver {
            config.driver = match driver {
                DriverName::Auto => Driver::Auto,
                DriverName::Poll => Driver::Poll,
            };
        }
        if let Some(path) = self.upload_path {
            config.upload_path = match path {
                UploadPathName::Splice => UploadPath::Splice,
                UploadPathName::Copy => UploadPath::Copy,
            };
        }
        for (value, target, key) in [
            (
                self.egress_limit,
                &mut config.egress_bytes_per_s,
                "egress_limit",
            ),
            (
                self.ingress_limit,
                &mut config.ingress_bytes_per_s,
                "ingress_limit",
            ),
        ] {
            if let Some(value) = value {
                *target = Some(rate(value).ok_or(format!("engine.{key}: at least 1 B/s"))?);
            }
        }
        if let Some(n) = self.connections_max {
            config.connections_max = n;
        }
        if let Some(n) = self.connections_per_blob_max {
            config.connections_per_blob_max = n;
        }
        if let Some(n) = self.swarm_blobs_max {
            config.swarm_blobs_max = n;
        }
        if let Some(n) = self.uploads_per_stripe {
            config.swarm.uploads_active_max = check_uploads_per_stripe(n)
                .map_err(|e| format!("engine.uploads_per_stripe: {e}"))?;
        }
        if let Some(name) = &self.tcp_congestion {
            shoal_engine::config::check_tcp_congestion(name)
                .map_err(|e| format!("engine.tcp_congestion: {e}"))?;
            config.tcp_congestion = Some(name.clone());
        }
        if let Some(bytes) = self.receive_buffer_per_shard {
            config.receive_buffer_bytes_per_shard = usize::try_from(bytes.0)
                .map_err(|_| "engine.receive_buffer_per_shard: too large".to_owned())?;
        }
        if let Some(span) = self.tracker_timeout {
            config.tracker_timeout = span.0;
        }
        if let Some(span) = self.dial_timeout {
            config.dial_timeout = span.0;
        }
        let store = &self.store;
        if let Some(interval) = store.evict_interval {
            if interval.0 == Some(std::time::Duration::ZERO) {
                return Err("engine.store.evict_interval: must be positive (or \"never\")".into());
            }
            config.evict_interval = interval.0;
        }
        if let Some(idle) = store.evict_idle_after {
            config.store.evict_idle_after = idle.0;
        }
        if let Some(age) = store.evict_age_max {
            config.store.evict_age_max = age.0;
        }
        if let Some(high) = store.disk_high_watermark {
            config.store.disk_high_watermark_fraction = high;
        }
        if let Some(low) = store.disk_low_watermark {
            config.store.disk_low_watermark_fraction = low;
        }
        if let Some(verify) = store.verify_on_start {
            config.store.verify_on_start = verify;
        }
        if let Some(verify) = store.verify_digest_on_complete {
            config.store.verify_digest_on_complete = verify;
        }
        Ok(())
    }
}

/// `[http]`: one HTTP server's bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub connections_max: Option<usize>,
    pub header_read_timeout: Option<Span>,
    pub request_head_bytes_max: Option<Bytes>,
}

impl HttpSection {
    /// Writes the keys the file sets over `config`, then checks the result.
    pub fn apply(&self, config: &mut HttpConfig) -> Result<(), String> {
        self.overlay(config)?;
        config.validate()
    }

    /// Writes the keys the file sets over `config` without checking the whole.
    pub fn overlay(&self, config: &mut HttpConfig) -> Result<(), String> {
        if let Some(n) = self.connections_max {
            config.connections_max = n;
        }
        if let Some(span) = self.header_read_timeout {
            config.header_read_timeout = span.0;
        }
        if let Some(bytes) = self.request_head_bytes_max {
            config.request_head_bytes_max = usize::try_from(bytes.0)
                .map_err(|_| "http.request_head_bytes_max: too large".to_owned())?;
        }
        Ok(())
    }
}

/// `shoal agent --config FILE`: `configs/agent.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentFile {
    pub agent: AgentSection,
    pub engine: EngineSection,
    pub http: HttpSection,
}

/// `[agent]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// The pull API's address ([`defaults::AGENT_LISTEN`]).
    pub listen: Option<SocketAddr>,
    /// The origins' internal API, where manifests are read (with `build_index`): one
    /// `host:port` or a list (a cluster).
    pub origin: Option<Members>,
    /// Copies of each blob in the origin cluster ([`crate::cluster::REPLICAS_DEFAULT`]).
    pub replicas: Option<usize>,
    /// The build-index's internal API, where tags are resolved (with `origin`).
    pub build_index: Option<SocketAddr>,
    /// The proxy's push API, where pushes are forwarded.
    pub proxy: Option<SocketAddr>,
}

/// One `host:port` (an IP address, or a DNS name standing for every address it resolves
/// to), or a list of them: the origins of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Members {
    One(String),
    Many(Vec<String>),
}

impl Members {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Members::One(member) => vec![member],
            Members::Many(members) => members,
        }
    }
}

/// `shoal origin --config FILE`: `configs/origin.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginFile {
    pub origin: OriginSection,
    /// `[[backend]]`: the storage backends ([`backends::BackendEntry`], documented in
    /// `configs/backends.toml`); none: the origin's disk is the only copy.
    pub backend: Vec<backends::BackendEntry>,
    pub engine: EngineSection,
    pub http: HttpSection,
}

/// `[origin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    /// The internal blob API's address ([`defaults::ORIGIN_LISTEN`]).
    pub listen: Option<SocketAddr>,
    /// Largest blob a PUT may carry.
    pub blob_bytes_max: Option<Bytes>,
    /// Every origin of the cluster, this one included (unset: a lone origin).
    pub cluster: Option<Members>,
    /// This origin's address as the cluster lists it (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Copies of each blob in the cluster.
    pub replicas: Option<usize>,
    /// How often this origin catches up on the blobs it owns.
    pub repair_interval: Option<Span>,
    /// How often every member's health is checked.
    pub health_interval: Option<Span>,
    /// The repository name blob keys are routed by among the `[[backend]]` patterns when a
    /// request names none, or one no backend serves (and asked for upstream then).
    pub namespace: Option<String>,
}

impl OriginSection {
    /// Writes the keys the file sets over `config` (`listen` is the caller's).
    pub fn overlay(&self, config: &mut OriginConfig) -> Result<(), String> {
        if let Some(bytes) = self.blob_bytes_max {
            if bytes.0 == 0 {
                return Err("origin.blob_bytes_max: at least 1 byte".into());
            }
            config.blob_bytes_max = bytes.0;
        }
        Ok(())
    }
}

/// `shoal build-index --config FILE`: `configs/build-index.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildIndexFile {
    pub build_index: BuildIndexSection,
    /// `[[backend]]`: the storage backends tags are written through to and read back from
    /// ([`backends::BackendEntry`], documented in `configs/backends.toml`); none: the
    /// build-index's disk is the only copy.
    pub backend: Vec<backends::BackendEntry>,
    pub http: HttpSection,
}

/// `[build_index]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildIndexSection {
    /// The internal tag API's address ([`defaults::BUILD_INDEX_LISTEN`]).
    pub listen: Option<SocketAddr>,
    /// The tag store's root directory (no default: here or `--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// How long a tag learned from a read-only upstream backend is served before it is
    /// resolved upstream again ([`crate::build_index::backing::UPSTREAM_TAG_TTL_DEFAULT`]).
    pub upstream_tag_ttl: Option<Span>,
}

impl BuildIndexSection {
    /// Writes the keys the file sets over the backed build-index's settings.
    pub fn overlay(&self, config: &mut crate::build_index::backing::BackingConfig) {
        if let Some(span) = self.upstream_tag_ttl {
            config.upstream_tag_ttl = span.0;
        }
    }
}

/// `shoal proxy --config FILE`: `configs/proxy.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyFile {
    pub proxy: ProxySection,
    pub http: HttpSection,
}

/// `[proxy]`, with `[proxy.uploads]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// The push API's address ([`defaults::PROXY_LISTEN`]).
    pub listen: Option<SocketAddr>,
    /// Where upload sessions are staged (no default: here or `--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// The origins' internal API (no default: here or `--origin`): one `host:port` or a
    /// list (a cluster).
    pub origin: Option<Members>,
    /// Copies of each blob in the origin cluster ([`crate::cluster::REPLICAS_DEFAULT`]).
    pub replicas: Option<usize>,
    /// The build-index's internal API (no default: here or `--build-index`).
    pub build_index: Option<SocketAddr>,
    pub uploads: UploadsSection,
}

/// `[proxy.uploads]`: the bounds of the upload store ([`UploadLimits`]) and how often idle
/// sessions are swept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsSection {
    pub sessions_max: Option<usize>,
    pub blob_bytes_max: Option<Bytes>,
    /// Unset: `blob_bytes_max` (Docker sends a whole layer as one chunk).
    pub chunk_bytes_max: Option<Bytes>,
    pub idle_timeout: Option<Span>,
    pub sweep_interval: Option<Span>,
}

impl UploadsSection {
    /// Writes the keys the file sets over `limits` and `sweep_interval` (which hold the
    /// defaults), then checks the result, naming the key at fault.
    pub fn apply(
        &self,
        limits: &mut UploadLimits,
        sweep_interval: &mut std::time::Duration,
    ) -> Result<(), String> {
        if let Some(n) = self.sessions_max {
            limits.sessions_max = n;
        }
        if let Some(bytes) = self.blob_bytes_max {
            // A chunk may be a whole blob unless the file says otherwise.
            if limits.chunk_bytes_max == limits.blob_bytes_max {
                limits.chunk_bytes_max = bytes.0;
            }
            limits.blob_bytes_max = bytes.0;
        }
        if let Some(bytes) = self.chunk_bytes_max {
            limits.chunk_bytes_max = bytes.0;
        }
        if let Some(span) = self.idle_timeout {
            limits.idle_timeout = span.0;
        }
        if let Some(span) = self.sweep_interval {
            *sweep_interval = span.0;
        }
        if limits.sessions_max == 0 {
            return Err("proxy.uploads.sessions_max: at least 1".into());
        }
        if limits.blob_bytes_max == 0 || limits.blob_bytes_max > UploadLimits::BLOB_BYTES_MAX_MAX {
            return Err(format!(
                "proxy.uploads.blob_bytes_max: {} is not in 1..=2^50",
                limits.blob_bytes_max
            ));
        }
        if limits.chunk_bytes_max == 0 || limits.chunk_bytes_max > limits.blob_bytes_max {
            return Err(format!(
                "proxy.uploads.chunk_bytes_max: {} is not in 1..=blob_bytes_max ({})",
                limits.chunk_bytes_max, limits.blob_bytes_max
            ));
        }
        if limits.idle_timeout.is_zero() {
            return Err("proxy.uploads.idle_timeout: must be positive".into());
        }
        if sweep_interval.is_zero() {
            return Err("proxy.uploads.sweep_interval: must be positive".into());
        }
        Ok(())
    }
}

/// `shoal dev --config FILE`: `configs/dev.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevFile {
    pub dev: DevSection,
    /// Over both engines (origin and agent), but for the keys `shoal dev` sets itself
    /// (`data_dir`, `trackers`, `peer_listen`, `shards`: refused).
    pub engine: EngineSection,
}

/// `[dev]`: where `shoal dev` keeps its stores and which ports it takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSection {
    /// [`defaults::DEV_DATA_DIR`].
    pub data_dir: Option<PathBuf>,
    /// [`defaults::DEV_AGENT_LISTEN`].
    pub agent_listen: Option<SocketAddr>,
    /// [`defaults::DEV_PORTS_FROM`].
    pub ports_from: Option<u16>,
    /// Shard threads per engine ([`defaults::DEV_SHARDS`]).
    pub shards: Option<usize>,
}

/// `shoal tracker --config FILE`: `configs/tracker.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerFile {
    pub tracker: TrackerSection,
}

/// `[tracker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerSection {
    pub listen: Option<SocketAddr>,
    pub shards: Option<usize>,
    pub origins: Option<Vec<SocketAddr>>,
    pub announce_interval: Option<Span>,
    pub announce_interval_fast: Option<Span>,
    pub peer_ttl: Option<Span>,
    pub sample_size_max: Option<usize>,
    pub peers_per_info_hash_max: Option<usize>,
    pub info_hashes_max: Option<usize>,
    pub peers_max: Option<usize>,
    pub metainfo_max: Option<usize>,
    pub metainfo_bytes_max: Option<Bytes>,
    pub connections_max: Option<usize>,
    pub request_timeout: Option<Span>,
}

impl TrackerSection {
    pub fn apply(&self, config: &mut TrackerServerConfig) -> Result<(), String> {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(origins) = &self.origins {
            config.origins = origins.clone();
        }
        let policy = &mut config.tracker;
        for (value, target) in [
            (self.announce_interval, &mut policy.announce_interval),
            (
                self.announce_interval_fast,
                &mut policy.announce_interval_fast,
            ),
            (self.peer_ttl, &mut policy.peer_ttl),
        ] {
            if let Some(span) = value {
                *target = span.0;
            }
        }
        for (value, target) in [
            (self.sample_size_max, &mut policy.sample_size_max),
            (
                self.peers_per_info_hash_max,
                &mut policy.peers_per_info_hash_max,
            ),
            (self.info_hashes_max, &mut policy.info_hashes_max),
            (self.peers_max, &mut policy.peers_max),
            (self.metainfo_max, &mut config.metainfo_max),
            (self.connections_max, &mut config.connections_max),
        ] {
            if let Some(n) = value {
                *target = n;
            }
        }
        if let Some(bytes) = self.metainfo_bytes_max {
            config.metainfo_bytes_max = usize::try_from(bytes.0)
                .map_err(|_| "tracker.metainfo_bytes_max: too large".to_owned())?;
        }
        if let Some(span) = self.request_timeout {
            config.request_timeout = span.0;
        }
        config.validate()
    }
}

#[cfg(test)]
mod tests;
