//! The figures of a finished run: completion-time percentiles (hdrhistogram), efficiency
//! against the distribution lower bound, origin load, and the simulator's own cost.
//!
//! Lower bound (from DESIGN.md): distributing F bytes to N hosts with per-host upload u_i,
//! download d_i and seeder upload u_s takes at least
//! `T* = max(F/u_s, F/min_i d_i, N·F/(u_s + Σ_i u_i))`; a host's efficiency is `T*/T_host`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::sim::{Counters, Sample, Sim};
use crate::topology::Topology;

/// Completion times are recorded in microseconds.
const MICROS_PER_S: f64 = 1e6;

/// At most this many unfinished hosts are listed by id.
const UNFINISHED_LISTED_MAX: usize = 20;

#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub hosts: u32,
    pub origins: u32,
    pub blobs: usize,
    /// F: bytes each host pulls (all blobs).
    pub blob_bytes: u64,
    pub piece_lens: Vec<u32>,
    pub stripes: Vec<u32>,
    pub lower_bound_s: f64,
    pub counted: u32,
    pub completed: u32,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
    pub p999_s: f64,
    pub max_s: f64,
    pub min_s: f64,
    pub mean_s: f64,
    pub p50_efficiency: f64,
    pub p99_efficiency: f64,
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    pub origin_copies: f64,
    pub unfinished: u32,
    pub unfinished_hosts: Vec<u32>,
    pub departed: u32,
    pub liars: u32,
    pub liars_completed: u32,
    pub virtual_end_s: f64,
    pub sim_wall_s: f64,
    pub peak_rss_bytes: u64,
    pub counters: Counters,
    pub timeline: Vec<Sample>,
}

/// VmHWM of this process, in bytes (0 where /proc is unavailable).
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Report {
    pub fn new(name: &str, topology: &Topology, sim: &Sim, sim_wall_s: f64) -> Report {
        let outcomes = sim.outcomes();
        let limit_us = (sim.time_limit().as_secs_f64() * MICROS_PER_S).ceil() as u64 + 1;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, limit_us.max(2), 3)
            .expect("bounds 1..=limit with 3 significant figures are valid");
        let mut unfinished_hosts = Vec::new();
        let (mut counted, mut departed, mut liars, mut liars_completed) = (0, 0, 0, 0);
        let mut sum_s = 0.0;
        for outcome in outcomes.iter().filter(|outcome| !outcome.is_origin) {
            if outcome.departed {
                departed += 1;
                continue;
            }
            if outcome.is_liar {
                liars += 1;
                liars_completed += u32::from(outcome.completion_s.is_some());
                continue;
            }
            counted += 1;
            match outcome.completion_s {
                Some(seconds) => {
                    sum_s += seconds;
                    let micros = ((seconds * MICROS_PER_S).round() as u64).clamp(1, limit_us);
                    histogram
                        .record(micros)
                        .expect("value within the histogram's bounds");
                }
                None => unfinished_hosts.push(outcome.host),
            }
        }
        let unfinished = unfinished_hosts.len() as u32;
        unfinished_hosts.truncate(UNFINISHED_LISTED_MAX);
        let completed = histogram.len() as u32;
        let quantile = |q: f64| {
            if completed == 0 {
                f64::NAN
            } else {
                histogram.value_at_quantile(q) as f64 / MICROS_PER_S
            }
        };

        let blob_bytes: u64 = topology.blobs.iter().map(|blob| blob.size.0).sum();
        let lower_bound_s = lower_bound_s(topology, blob_bytes);
        let counters = sim.counters().clone();
        let blob_total = blob_bytes as f64;
        Report {
            name: name.to_string(),
            seed: topology.seed,
            hosts: topology.hosts.count,
            origins: topology.origins.count,
            blobs: topology.blobs.len(),
            blob_bytes,
            piece_lens: sim.blobs().iter().map(|blob| blob.piece_len()).collect(),
            stripes: sim.blobs().iter().map(|blob| blob.n_stripes()).collect(),
            lower_bound_s,
            counted,
            completed,
            p50_s: quantile(0.5),
            p90_s: quantile(0.9),
            p99_s: quantile(0.99),
            p999_s: quantile(0.999),
            max_s: quantile(1.0),
            min_s: if completed == 0 {
                f64::NAN
            } else {
                histogram.min() as f64 / MICROS_PER_S
            },
            mean_s: sum_s / f64::from(completed.max(1)),
            p50_efficiency: lower_bound_s / quantile(0.5),
            p99_efficiency: lower_bound_s / quantile(0.99),
            origin_bytes: counters.origin_bytes,
            peer_bytes: counters.peer_bytes,
            origin_copies: counters.origin_bytes as f64 / blob_total,
            unfinished,
            unfinished_hosts,
            departed,
            liars,
            liars_completed,
            virtual_end_s: sim.now().as_secs_f64(),
            sim_wall_s,
            peak_rss_bytes: peak_rss_bytes(),
            counters,
            timeline: sim.timeline().to_vec(),
        }
    }

    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        let finite = |x: f64| {
            if x.is_finite() {
                json!(x)
            } else {
                serde_json::Value::Null
            }
        };
        let counters = &self.counters;
        let mut object = serde_json::Map::new();
        object.insert("topology".to_string(), json!(self.name));
        object.insert("seed".to_string(), json!(self.seed));
        object.insert("hosts".to_string(), json!(self.hosts));
        object.insert("origins".to_string(), json!(self.origins));
        object.insert("blobs".to_string(), json!(self.blobs));
        object.insert("blob_bytes".to_string(), json!(self.blob_bytes));
        object.insert("piece_lens".to_string(), json!(self.piece_lens));
        object.insert("stripes".to_string(), json!(self.stripes));
        object.insert(
            "lower_bound_s".to_string(),
            json!(finite(self.lower_bound_s)),
        );
        object.insert("counted_hosts".to_string(), json!(self.counted));
        object.insert("completed".to_string(), json!(self.completed));
        object.insert("p50_s".to_string(), json!(finite(self.p50_s)));
        object.insert("p90_s".to_string(), json!(finite(self.p90_s)));
        object.insert("p99_s".to_string(), json!(finite(self.p99_s)));
        object.insert("p999_s".to_string(), json!(finite(self.p999_s)));
        object.insert("max_s".to_string(), json!(finite(self.max_s)));
        object.insert("min_s".to_string(), json!(finite(self.min_s)));
        object.insert("mean_s".to_string(), json!(finite(self.mean_s)));
        object.insert(
            "p50_efficiency".to_string(),
            json!(finite(self.p50_efficiency)),
        );
        object.insert(
            "p99_efficiency".to_string(),
            json!(finite(self.p99_efficiency)),
        );
        object.insert("origin_bytes".to_string(), json!(self.origin_bytes));
        object.insert("peer_bytes".to_string(), json!(self.peer_bytes));
        object.insert(
            "origin_copies".to_string(),
            json!(finite(self.origin_copies)),
        );
        object.insert("wasted_bytes".to_string(), json!(counters.wasted_bytes));
        object.insert("unfinished".to_string(), json!(self.unfinished));
        object.insert("unfinished_hosts".to_string(), json!(self.unfinished_hosts));
        object.insert("departed".to_string(), json!(self.departed));
        object.insert("liars".to_string(), json!(self.liars));
        object.insert("liars_completed".to_string(), json!(self.liars_completed));
        object.insert("virtual_end_s".to_string(), json!(self.virtual_end_s));
        object.insert("events".to_string(), json!(counters.events));
        object.insert("sim_wall_s".to_string(), json!(self.sim_wall_s));
        object.insert("peak_rss_bytes".to_string(), json!(self.peak_rss_bytes));
        object.insert("pieces_valid".to_string(), json!(counters.pieces_valid));
        object.insert("pieces_invalid".to_string(), json!(counters.pieces_invalid));
        object.insert(
            "pieces_discarded".to_string(),
            json!(counters.pieces_discarded),
        );
        object.insert(
            "flows_cancelled".to_string(),
            json!(counters.flows_cancelled),
        );
        object.insert("dials".to_string(), json!(counters.dials));
        object.insert("dials_failed".to_string(), json!(counters.dials_failed));
        object.insert("connections".to_string(), json!(counters.connections));
        object.insert("announces".to_string(), json!(counters.announces));
        object.insert("blacklistings".to_string(), json!(counters.blacklistings));
        object.insert(
            "closes".to_string(),
            json!({
                        "duplicate": counters.closes_duplicate,
                        "at_capacity": counters.closes_at_capacity,
                        "both_complete": counters.closes_both_complete,
                        "idle": counters.closes_idle,
                        "too_slow": counters.closes_too_slow,
                        "bad_piece": counters.closes_bad_piece,
                        "blacklisted": counters.closes_blacklisted,
                        "handshake_timeout": counters.closes_handshake_timeout,
                        "protocol_violation": counters.closes_protocol_violation,
                        "wrong_swarm": counters.closes_wrong_swarm,
                        "self": counters.closes_self,
            }),
        );
        serde_json::Value::Object(object).to_string()
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let gb = |bytes: u64| bytes as f64 / 1e9;
        let counters = &self.counters;
        let _ = writeln!(out, "topology        {} (seed {})", self.name, self.seed);
        let _ = writeln!(
            out,
            "hosts           {} agents, {} origins; {} blob(s), F = {:.3} GB; piece lengths {:?} B; stripes {:?}",
            self.hosts,
            self.origins,
            self.blobs,
            gb(self.blob_bytes),
            self.piece_lens,
            self.stripes
        );
        let _ = writeln!(out, "lower bound T*  {:.3} s", self.lower_bound_s);
        let _ = writeln!(
            out,
            "completed       {}/{} counted hosts (departed {}, liars {} of which {} completed)",
            self.completed, self.counted, self.departed, self.liars, self.liars_completed
        );
        let _ = writeln!(
            out,
            "completion (s)  min {:.3}  mean {:.3}",
            self.min_s, self.mean_s
        );
        let _ = writeln!(
            out,
            "                p50      p90      p99      p99.9    max"
        );
        let _ = writeln!(
            out,
            "                {:<8.3} {:<8.3} {:<8.3} {:<8.3} {:<8.3}",
            self.p50_s, self.p90_s, self.p99_s, self.p999_s, self.max_s
        );
        let _ = writeln!(
            out,
            "efficiency      p50 {:.3}  p99 {:.3}",
            self.p50_efficiency, self.p99_efficiency
        );
        let _ = writeln!(
            out,
            "bytes           origins {:.3} GB ({:.2} copies), peers {:.3} GB, wasted {:.3} GB",
            gb(self.origin_bytes),
            self.origin_copies,
            gb(self.peer_bytes),
            gb(counters.wasted_bytes)
        );
        let _ = writeln!(
            out,
            "pieces          valid {}, invalid {}, discarded {}, flows cancelled {}",
            counters.pieces_valid,
            counters.pieces_invalid,
            counters.pieces_discarded,
            counters.flows_cancelled
        );
        let _ = writeln!(
            out,
            "connections     {} made, {} dials ({} failed), {} announces, {} blacklistings",
            counters.connections,
            counters.dials,
            counters.dials_failed,
            counters.announces,
            counters.blacklistings
        );
        let _ = writeln!(
            out,
            "closes          duplicate {}, at capacity {}, both complete {}, idle {}, too slow {}, bad piece {}, handshake timeout {}, protocol violation {}",
            counters.closes_duplicate,
            counters.closes_at_capacity,
            counters.closes_both_complete,
            counters.closes_idle,
            counters.closes_too_slow,
            counters.closes_bad_piece,
            counters.closes_handshake_timeout,
            counters.closes_protocol_violation
        );
        let _ = writeln!(
            out,
            "events by kind  join/depart/announce/reply/dial/deliver/disconnect/piece/timer/flow-end {:?}",
            counters.events_by_kind
        );
        if !counters.violations.is_empty() {
            let _ = writeln!(out, "violations      {:?}", counters.violations);
        }
        if self.unfinished > 0 {
            let _ = writeln!(
                out,
                "UNFINISHED      {} hosts at {:.3} s, e.g. {:?}",
                self.unfinished, self.virtual_end_s, self.unfinished_hosts
            );
        }
        let _ = writeln!(
            out,
            "simulator       {} events, {:.2} s wall, virtual end {:.3} s, peak RSS {:.1} MiB",
            counters.events,
            self.sim_wall_s,
            self.virtual_end_s,
            self.peak_rss_bytes as f64 / (1 << 20) as f64
        );
        out.push_str(&self.timeline_table());
        out
    }

    /// About twenty evenly spaced timeline rows.
    fn timeline_table(&self) -> String {
        let mut out = String::new();
        if self.timeline.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "timeline        t (s)    progress  hosts done  origin GB  live flows"
        );
        let stride = self.timeline.len().div_ceil(20).max(1);
        let last = self.timeline.len() - 1;
        for (index, sample) in self.timeline.iter().enumerate() {
            if index % stride != 0 && index != last {
                continue;
            }
            let _ = writeln!(
                out,
                "                {:<8.2} {:<9.4} {:<11} {:<10.3} {}",
                sample.at_s,
                sample.progress,
                sample.hosts_done,
                sample.origin_bytes as f64 / 1e9,
                sample.live_flows
            );
        }
        out
    }
}

/// `T* = max(F/u_s, F/min_i d_i, N·F/(u_s + Σ_i u_i))` for the topology's agents.
pub fn lower_bound_s(topology: &Topology, blob_bytes: u64) -> f64 {
    let f = blob_bytes as f64;
    let n = f64::from(topology.hosts.count);
    let u_s = f64::from(topology.origins.count) * topology.origins.upload_bytes_per_s.0;
    let d_min = topology.hosts.download_bytes_per_s.0;
    let u_sum = n * topology.hosts.upload_bytes_per_s.0;
    (f / u_s).max(f / d_min).max(n * f / (u_s + u_sum))
}
