//! Scenarios of the real-swarm harness (`shoal-perf`, files in `configs/perf/`): how many
//! emulated hosts, their link caps, the origin's link, the blobs, late joiners, which systems
//! run and how long a run may take. Unknown keys are refused by name.

use std::path::Path;

use serde::Deserialize;

use crate::units::{parse_bytes, parse_bytes_per_s};

/// The systems a scenario can compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Shoal: origin, tracker, build-index, proxy, one agent per host.
    Shoal,
    /// Every host pulls from one central distribution registry on the origin's link.
    Registry,
    /// A BitTorrent swarm (aria2c on every host, opentracker), seeded from the origin's host.
    Bittorrent,
}

impl System {
    pub const ALL: [System; 3] = [System::Shoal, System::Registry, System::Bittorrent];

    pub fn name(self) -> &'static str {
        match self {
            System::Shoal => "shoal",
            System::Registry => "registry",
            System::Bittorrent => "bittorrent",
        }
    }

    pub fn parse(text: &str) -> Result<System, String> {
        System::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| format!("unknown system {text:?} (known: shoal, registry, bittorrent)"))
    }
}

/// Most emulated hosts in one scenario (addresses 10.231.1.1 … 10.231.1.250; one process
/// per host and system on a small machine).
pub const HOSTS_MAX: usize = 250;
/// Most blobs pulled together.
pub const BLOBS_MAX: usize = 16;
/// Longest a system's pull phase may last (seconds).
pub const TIME_LIMIT_S_MAX: f64 = 3600.0;
/// Lowest link rate accepted (bytes/s): below it `tc tbf` bursts dominate.
pub const RATE_MIN_BYTES_PER_S: f64 = 125_000.0;

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub time_limit_s: f64,
    pub systems: Vec<System>,
    pub hosts: usize,
    pub host_upload_bytes_per_s: f64,
    pub host_download_bytes_per_s: f64,
    pub origin_upload_bytes_per_s: f64,
    pub origin_download_bytes_per_s: f64,
    /// Sizes of the blobs every host pulls together.
    pub blob_bytes: Vec<u64>,
    /// Hosts (by index) that join `late_join_at_s` after the others.
    pub late_hosts: Vec<usize>,
    pub late_join_at_s: f64,
    /// Engine shard threads per agent and for the origin.
    pub agent_shards: usize,
    pub origin_shards: usize,
    /// Congestion control of Shoal's peer connections (`--tcp-congestion` of every agent and
    /// the origin); `None`: the system's default, as the baselines get.
    pub tcp_congestion: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "default_seed")]
    seed: u64,
    time_limit_s: f64,
    #[serde(default)]
    systems: Option<Vec<String>>,
    hosts: HostsFile,
    origin: OriginFile,
    blobs: Vec<BlobFile>,
    #[serde(default)]
    shoal: ShoalFile,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    count: usize,
    upload_bytes_per_s: String,
    download_bytes_per_s: String,
    #[serde(default)]
    late_join_fraction: f64,
    #[serde(default)]
    late_join_at_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginFile {
    upload_bytes_per_s: String,
    download_bytes_per_s: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobFile {
    size: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoalFile {
    #[serde(default)]
    agent_shards: Option<usize>,
    #[serde(default)]
    origin_shards: Option<usize>,
    #[serde(default)]
    tcp_congestion: Option<String>,
}

impl Scenario {
    /// Reads and checks a scenario file; errors name the file and the offending key or value.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".to_owned());
        Scenario::parse(&text, &stem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a scenario; `default_name` when it names none.
    pub fn parse(text: &str, default_name: &str) -> Result<Scenario, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let rate = |key: &str, text: &str| -> Result<f64, String> {
            let value = parse_bytes_per_s(text).map_err(|e| format!("{key}: {e}"))?;
            if value < RATE_MIN_BYTES_PER_S {
                return Err(format!(
                    "{key} = {text:?} is below the smallest rate {RATE_MIN_BYTES_PER_S} B/s"
                ));
            }
            Ok(value)
        };
        let name = file.name.unwrap_or_else(|| default_name.to_owned());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("name = {name:?}: letters, digits and '-' only"));
        }
        if !(file.time_limit_s > 0.0 && file.time_limit_s <= TIME_LIMIT_S_MAX) {
            return Err(format!(
                "time_limit_s = {} is not in (0, {TIME_LIMIT_S_MAX}]",
                file.time_limit_s
            ));
        }
        let systems = match file.systems {
            None => System::ALL.to_vec(),
            Some(names) => {
                let mut systems = Vec::new();
                for name in &names {
                    let system = System::parse(name).map_err(|e| format!("systems: {e}"))?;
                    if systems.contains(&system) {
                        return Err(format!("systems: {name:?} given twice"));
                    }
                    systems.push(system);
                }
                if systems.is_empty() {
                    return Err("systems: empty".to_owned());
                }
                systems
            }
        };
        let hosts = file.hosts.count;
        if hosts == 0 || hosts > HOSTS_MAX {
            return Err(format!("hosts.count = {hosts} is not in 1..={HOSTS_MAX}"));
        }
        if file.blobs.is_empty() || file.blobs.len() > BLOBS_MAX {
            return Err(format!(
                "{} [[blobs]]: between 1 and {BLOBS_MAX} are needed",
                file.blobs.len()
            ));
        }
        let mut blob_bytes = Vec::new();
        for blob in &file.blobs {
            let size = parse_bytes(&blob.size).map_err(|e| format!("blobs.size: {e}"))?;
            if size == 0 {
                return Err(format!("blobs.size = {:?}: a blob needs bytes", blob.size));
            }
            blob_bytes.push(size);
        }
        let fraction = file.hosts.late_join_fraction;
        if !(0.0..1.0).contains(&fraction) {
            return Err(format!(
                "hosts.late_join_fraction = {fraction} is not in [0, 1)"
            ));
        }
        let late_join_at_s = file.hosts.late_join_at_s;
        if !(0.0..file.time_limit_s).contains(&late_join_at_s) {
            return Err(format!(
                "hosts.late_join_at_s = {late_join_at_s} is not in [0, time_limit_s)"
            ));
        }
        let late_count = (fraction * hosts as f64).round() as usize;
        let late_hosts = pick_hosts(hosts, late_count, file.seed);
        let shards = |key: &str, value: Option<usize>| -> Result<usize, String> {
            let value = value.unwrap_or(1);
            if value == 0 || value > 64 {
                return Err(format!("shoal.{key} = {value} is not in 1..=64"));
            }
            Ok(value)
        };
        Ok(Scenario {
            name,
            seed: file.seed,
            time_limit_s: file.time_limit_s,
            systems,
            hosts,
            host_upload_bytes_per_s: rate(
                "hosts.upload_bytes_per_s",
                &file.hosts.upload_bytes_per_s,
            )?,
            host_download_bytes_per_s: rate(
                "hosts.download_bytes_per_s",
                &file.hosts.download_bytes_per_s,
            )?,
            origin_upload_bytes_per_s: rate(
                "origin.upload_bytes_per_s",
                &file.origin.upload_bytes_per_s,
            )?,
            origin_download_bytes_per_s: rate(
                "origin.download_bytes_per_s",
                &file.origin.download_bytes_per_s,
            )?,
            blob_bytes,
            late_hosts,
            late_join_at_s,
            agent_shards: shards("agent_shards", file.shoal.agent_shards)?,
            origin_shards: shards("origin_shards", file.shoal.origin_shards)?,
            tcp_congestion: match file.shoal.tcp_congestion {
                Some(name) => {
                    shoal_engine::config::check_tcp_congestion(&name)
                        .map_err(|e| format!("shoal.tcp_congestion = {name:?}: {e}"))?;
                    Some(name)
                }
                None => None,
            },
        })
    }

    /// Bytes every host pulls.
    pub fn total_bytes(&self) -> u64 {
        self.blob_bytes.iter().sum()
    }

    /// `T* = max(F/u_s, F/min d_i, N·F/(u_s + Σu_i))` in seconds, for all blobs together.
    pub fn lower_bound_s(&self) -> f64 {
        let f = self.total_bytes() as f64;
        let n = self.hosts as f64;
        let seeder = f / self.origin_upload_bytes_per_s;
        let download = f / self.host_download_bytes_per_s;
        let aggregate = n * f / (self.origin_upload_bytes_per_s + n * self.host_upload_bytes_per_s);
        seeder.max(download).max(aggregate)
    }

    /// When host `i` starts pulling, seconds after the others.
    pub fn join_s(&self, host: usize) -> f64 {
        if self.late_hosts.contains(&host) {
            self.late_join_at_s
        } else {
            0.0
        }
    }
}

/// `count` distinct host indexes out of `hosts`, chosen by `seed` (a seeded Fisher–Yates
/// prefix), sorted.
fn pick_hosts(hosts: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..hosts).collect();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count.min(hosts) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = i + (state % (hosts - i) as u64) as usize;
        order.swap(i, j);
    }
    let mut picked = order[..count.min(hosts)].to_vec();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: &str = r#"
        time_limit_s = 300
        [hosts]
        count = 32
        upload_bytes_per_s = "100Mbit/s"
        download_bytes_per_s = "100Mbit/s"
        [origin]
        upload_bytes_per_s = "1Gbit/s"
        download_bytes_per_s = "1Gbit/s"
        [[blobs]]
        size = "128MiB"
    "#;

    #[test]
    fn lower_bound_matches_the_brief() {
        let scenario = Scenario::parse(STANDARD, "standard").expect("parses");
        // F / min d_i = 128 MiB / 100 Mbit/s.
        assert!((scenario.lower_bound_s() - 10.737).abs() < 0.01);
        assert_eq!(scenario.systems, System::ALL.to_vec());
        assert!(scenario.late_hosts.is_empty());
    }

    #[test]
    fn bad_scenarios_are_refused_by_key() {
        let check = |from: &str, to: &str, expected: &str| {
            let text = STANDARD.replace(from, to);
            let error = Scenario::parse(&text, "x").expect_err(&text);
            assert!(error.contains(expected), "{error} lacks {expected}");
        };
        check("count = 32", "count = 32\ncolour = 1", "colour");
        check("count = 32", "count = 0", "hosts.count");
        check("\"128MiB\"", "\"128 apples\"", "blobs.size");
        check(
            "\"1Gbit/s\"\n        download",
            "\"1Gbit\"\n        download",
            "origin",
        );
        check("time_limit_s = 300", "time_limit_s = 0", "time_limit_s");
        check(
            "time_limit_s = 300",
            "time_limit_s = 300\nsystems = [\"kraken\"]",
            "kraken",
        );
        check(
            "count = 32",
            "count = 32\nlate_join_fraction = 1.5",
            "late_join_fraction",
        );
        check(
            "[[blobs]]",
            "[shoal]\ntcp_congestion = \"warp\"\n[[blobs]]",
            "shoal.tcp_congestion",
        );
        let text = STANDARD.replace("[[blobs]]", "[shoal]\ntcp_congestion = \"reno\"\n[[blobs]]");
        let scenario = Scenario::parse(&text, "x").expect(&text);
        assert_eq!(scenario.tcp_congestion.as_deref(), Some("reno"));
        let scenario = Scenario::parse(STANDARD, "x").expect("parses");
        assert_eq!(scenario.tcp_congestion, None);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/perf");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("configs/perf") {
            let path = entry.expect("entry").path();
            let scenario = Scenario::load(&path).expect("a shipped scenario parses");
            names.push(scenario.name);
        }
        names.sort();
        assert_eq!(names, ["ci-small", "standard", "standard-quarter", "wide"]);
        let wide = Scenario::load(&dir.join("wide.toml")).expect("wide");
        assert_eq!(wide.late_hosts.len(), 6);
        assert_eq!(wide.total_bytes(), 128 << 20);
    }

    #[test]
    fn late_hosts_are_seeded_and_distinct() {
        let a = pick_hosts(64, 6, 1);
        assert_eq!(a, pick_hosts(64, 6, 1));
        assert_eq!(a.len(), 6);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(pick_hosts(4, 4, 9), vec![0, 1, 2, 3]);
    }
}
