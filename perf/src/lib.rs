//! `shoal-perf`: Shoal's fleet simulator and its real-swarm benchmark harness.
//!
//! The simulator drives proto's real [`shoal_proto::swarm::Swarm`] state machines — one per
//! (host, blob, stripe) — in virtual time over a modelled network, for up to 15,000 hosts.
//! There is no second model of the protocol here: everything the protocol decides, proto
//! decides; this crate only moves its messages and bytes.
//!
//! Layout:
//! - [`units`]: `"1.5GB"`, `"64MiB"`, `"10Gbit/s"` in topology files.
//! - [`topology`]: the TOML topology format (`configs/sim/*.toml`), unknown keys rejected.
//! - [`geometry`]: piece length, stripes and per-stripe geometry of each blob.
//! - [`tracker`]: the one logical tracker the simulated hosts announce to.
//! - [`queue`]: the virtual-time event queue (time order, FIFO among equal times).
//! - [`flows`]: the bandwidth model (piece payloads sharing up- and downlinks).
//! - [`sim`]: the driver: hosts, connections, timers, the network model (see its docs).
//! - [`report`]: completion percentiles, efficiency, origin load, the simulator's own cost.
//! - [`oci_layout`]: OCI image layouts (real tar layers, configs, manifests, indexes) for
//!   skopeo and Docker in the end-to-end tests and benchmarks.
//! - [`procs`]: real `shoal` processes for benchmarks and end-to-end tests (guards that kill
//!   on drop, bounded waits, `/proc` CPU and memory figures).
//!
//! The real-swarm harness (`shoal-perf`, scenarios in `configs/perf/`):
//! - [`scenario`]: the scenario format (hosts, link caps, blobs, late joiners, systems).
//! - [`netns`]: emulated hosts: network namespaces, a bridge, `tc tbf` caps each way.
//! - [`harness`]: runs Shoal, a central registry and a BitTorrent swarm on them, measures.
//! - [`torrent`]: `.torrent` files for the BitTorrent baseline.
//! - [`netreport`]: percentiles, efficiency, the Markdown table, JSON, the CDF plot (SVG).
//!
//! The binary runs one topology and prints its figures (the last line is one JSON object
//! with `--json`):
//!
//! ```text
//! cargo build --release -p shoal-perf
//! target/release/shoal-sim configs/sim/small.toml
//! target/release/shoal-sim configs/sim/fleet-15k.toml --json --progress-s 0.1
//! target/release/shoal-sim configs/sim/kraken-2600.toml --hosts 200 --seed 7 --time-limit-s 60
//! ```

pub mod clients;
pub mod flows;
pub mod geometry;
pub mod harness;
pub mod netns;
pub mod netreport;
pub mod oci_layout;
pub mod procs;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod topology;
pub mod torrent;
pub mod tracker;
/// Sizes and rates in topology files: the same units as the components' config files.
pub use shoal_servers::config::units;

/// Everything that can stop a simulation from starting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("topology: {0}")]
    Topology(String),
    #[error("{0}")]
    Io(String),
}
