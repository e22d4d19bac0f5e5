//! `shoal-perf`'s figures: completion-time percentiles (hdrhistogram), efficiency against
//! T*, origin egress, CPU and memory, as a Markdown table, one JSON object, and an SVG plot
//! of the completion-time CDFs with T* marked.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::harness::{LinkSample, SystemResult};
use crate::scenario::{Scenario, System};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// Completion-time percentiles of one system (seconds), over the hosts that finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

/// Percentiles of `seconds` (recorded in milliseconds, 3 significant digits); `None` if
/// empty.
pub fn percentiles(seconds: &[f64]) -> Option<Percentiles> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000, 3).ok()?;
    for s in seconds {
        let ms = (s * 1000.0).round().max(1.0) as u64;
        histogram.saturating_record(ms);
    }
    if histogram.is_empty() {
        return None;
    }
    // The middle of each value's bucket (3 significant digits), not its upper edge.
    let at = |q: f64| histogram.median_equivalent(histogram.value_at_quantile(q)) as f64 / 1000.0;
    Some(Percentiles {
        p50_s: at(0.50),
        p90_s: at(0.90),
        p99_s: at(0.99),
        max_s: histogram.median_equivalent(histogram.max()) as f64 / 1000.0,
    })
}

/// One system's figures, derived from its result.
#[derive(Debug, Clone)]
pub struct Figures {
    pub system: System,
    pub hosts_done: usize,
    pub percentiles: Option<Percentiles>,
    pub lower_bound_s: f64,
    pub result: SystemResult,
    pub bytes_per_host: u64,
}

impl Figures {
    pub fn new(scenario: &Scenario, result: SystemResult) -> Figures {
        let done: Vec<f64> = result.host_s.iter().flatten().copied().collect();
        Figures {
            system: result.system,
            hosts_done: done.len(),
            percentiles: percentiles(&done),
            lower_bound_s: scenario.lower_bound_s(),
            result,
            bytes_per_host: scenario.total_bytes(),
        }
    }

    fn efficiency(&self, seconds: f64) -> f64 {
        self.lower_bound_s / seconds.max(1e-9)
    }

    /// Sum of the hosts' resident processes' CPU seconds per GiB they received.
    pub fn host_cpu_s_per_gib(&self) -> Option<f64> {
        if self.result.host_cpu_s.is_empty() || self.hosts_done == 0 {
            return None;
        }
        let received = self.bytes_per_host as f64 * self.result.host_cpu_s.len() as f64 / GIB;
        Some(self.result.host_cpu_s.iter().sum::<f64>() / received)
    }

    pub fn host_peak_rss_max(&self) -> Option<u64> {
        self.result.host_peak_rss_bytes.iter().copied().max()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let p = self.percentiles;
        let mean_efficiency = {
            let done: Vec<f64> = self.result.host_s.iter().flatten().copied().collect();
            (!done.is_empty())
                .then(|| done.iter().map(|s| self.efficiency(*s)).sum::<f64>() / done.len() as f64)
        };
        json!({
            "hosts_done": self.hosts_done,
            "p50_s": p.map(|p| p.p50_s),
            "p90_s": p.map(|p| p.p90_s),
            "p99_s": p.map(|p| p.p99_s),
            "max_s": p.map(|p| p.max_s),
            "p50_efficiency": p.map(|p| self.efficiency(p.p50_s)),
            "p99_efficiency": p.map(|p| self.efficiency(p.p99_s)),
            "mean_efficiency": mean_efficiency,
            "host_s": self.result.host_s,
            "origin_egress_bytes": self.result.origin_egress_bytes,
            "host_cpu_s": self.result.host_cpu_s,
            "host_cpu_s_per_gib": self.host_cpu_s_per_gib(),
            "host_peak_rss_bytes_max": self.host_peak_rss_max(),
            "server_cpu_s": self.result.server_cpu_s,
            "server_peak_rss_bytes": self.result.server_peak_rss_bytes,
            "cores_busy": self.result.cores_busy,
            "cores_busy_before": self.result.cores_busy_before,
            "pull_wall_s": self.result.pull_wall_s,
            "engine_counters": self.result.engine_counters,
            "timeline": self.result.timeline.iter().map(|s| json!({
                "t_s": s.t_s,
                "pulling": s.pulling,
                "download_use": s.download_use,
                "retransmitted": s.retransmitted,
                "upload_use": s.upload_use,
                "origin_use": s.origin_use,
            })).collect::<Vec<_>>(),
            "failures": self.result.failures,
        })
    }
}

/// The one JSON object `--json` prints last.
pub fn to_json_line(scenario: &Scenario, figures: &[Figures]) -> String {
    let mut object = json!({
        "scenario": scenario.name,
        "hosts": scenario.hosts,
        "blob_bytes": scenario.total_bytes(),
        "blobs_bytes": scenario.blob_bytes,
        "late_hosts": scenario.late_hosts,
        "lower_bound_s": scenario.lower_bound_s(),
        "host_upload_bytes_per_s": scenario.host_upload_bytes_per_s,
        "host_download_bytes_per_s": scenario.host_download_bytes_per_s,
        "origin_upload_bytes_per_s": scenario.origin_upload_bytes_per_s,
    });
    for system in System::ALL {
        let value = figures
            .iter()
            .find(|f| f.system == system)
            .map_or(serde_json::Value::Null, Figures::to_json);
        object[system.name()] = value;
    }
    object.to_string()
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "—".to_owned())
}

/// The Markdown table of every system's figures.
pub fn to_markdown(scenario: &Scenario, figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} hosts, {} blob(s) of {:.0} MiB in all, hosts {:.0}/{:.0} Mbit/s up/down, \
         origin {:.0} Mbit/s up; T* = {:.2} s{}",
        scenario.name,
        scenario.hosts,
        scenario.blob_bytes.len(),
        scenario.total_bytes() as f64 / MIB,
        scenario.host_upload_bytes_per_s * 8e-6,
        scenario.host_download_bytes_per_s * 8e-6,
        scenario.origin_upload_bytes_per_s * 8e-6,
        scenario.lower_bound_s(),
        if scenario.late_hosts.is_empty() {
            String::new()
        } else {
            format!(
                "; {} hosts join {:.1} s late",
                scenario.late_hosts.len(),
                scenario.late_join_at_s
            )
        }
    );
    out.push('\n');
    out.push_str(
        "| system | hosts done | p50 s | p90 s | p99 s | max s | p50 eff | p99 eff \
         | origin egress MiB | host CPU-s/GiB | host peak RSS MiB | server CPU-s | cores busy (before) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for f in figures {
        let p = f.percentiles;
        let seconds = |get: fn(&Percentiles) -> f64| or_dash(p.map(|p| format!("{:.2}", get(&p))));
        let eff = |get: fn(&Percentiles) -> f64| {
            or_dash(p.map(|p| format!("{:.3}", f.efficiency(get(&p)))))
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} | {:.0}% ({:.0}%) |",
            f.system.name(),
            f.hosts_done,
            f.result.host_s.len(),
            seconds(|p| p.p50_s),
            seconds(|p| p.p90_s),
            seconds(|p| p.p99_s),
            seconds(|p| p.max_s),
            eff(|p| p.p50_s),
            eff(|p| p.p99_s),
            f.result.origin_egress_bytes as f64 / MIB,
            or_dash(f.host_cpu_s_per_gib().map(|v| format!("{v:.2}"))),
            or_dash(
                f.host_peak_rss_max()
                    .map(|v| format!("{:.0}", v as f64 / MIB))
            ),
            f.result.server_cpu_s,
            f.result.cores_busy * 100.0,
            f.result.cores_busy_before * 100.0,
        );
    }
    for f in figures {
        out.push_str(&timeline_table(f));
    }
    for f in figures {
        if let Some(line) = f.result.engine_counters.as_ref().and_then(request_line) {
            let _ = writeln!(out, "\n{}: {line}", f.system.name());
        }
    }
    for f in figures {
        for failure in f.result.failures.iter().take(10) {
            let _ = writeln!(out, "\n{}: {failure}", f.system.name());
        }
    }
    out
}

/// Rows of the link-use timeline at most (samples are merged into rows of equal spans).
const TIMELINE_ROWS_MAX: usize = 24;

/// The system's link use over the pull phase as a Markdown table (empty without samples):
/// per row, the mean of its samples.
fn timeline_table(f: &Figures) -> String {
    let samples = &f.result.timeline;
    if samples.is_empty() {
        return String::new();
    }
    let per_row = samples.len().div_ceil(TIMELINE_ROWS_MAX);
    let mut out = format!(
        "\n{}: link use over the pull (bytes moved over the caps' allowance, frames included)\n\n\
         | until s | hosts pulling | their downlinks | all uplinks | origin uplink | hosts' segments resent |\n\
         |---|---|---|---|---|---|\n",
        f.system.name()
    );
    for row in samples.chunks(per_row) {
        let n = row.len() as f64;
        let mean = |get: fn(&LinkSample) -> f64| row.iter().map(get).sum::<f64>() / n;
        let last = row[row.len() - 1];
        let _ = writeln!(
            out,
            "| {:.0} | {} | {:.0}% | {:.0}% | {:.0}% | {:.1}% |",
            last.t_s,
            row[0].pulling,
            mean(|s| s.download_use) * 100.0,
            mean(|s| s.upload_use) * 100.0,
            mean(|s| s.origin_use) * 100.0,
            mean(|s| s.retransmitted) * 100.0,
        );
    }
    out
}

/// What the agents' request metrics say (see `shoal_engine::ShardStats`): mean time a
/// request waited to leave, mean time to its piece's header, and where the bytes came from.
fn request_line(counters: &serde_json::Value) -> Option<String> {
    if let Some(error) = counters["error"].as_str() {
        return Some(format!("metrics not read: {error}"));
    }
    let agents = &counters["agents"];
    let get = |key: &str| agents[key].as_f64();
    let sent = get("shoal_piece_requests_sent_total")?;
    let answered = get("shoal_piece_requests_answered_total")?;
    Some(format!(
        "agents sent {sent:.0} requests, each waited {:.1} ms on average to leave and {:.1} ms \
         more for its piece's header ({answered:.0} timed); agents received {:.0} MiB from \
         agents, {:.0} MiB from origins",
        get("shoal_piece_request_queue_seconds_total")? * 1000.0 / sent.max(1.0),
        get("shoal_piece_request_answer_seconds_total")? * 1000.0 / answered.max(1.0),
        get(r#"shoal_piece_bytes_received_total{peer="agent"}"#)? / MIB,
        get(r#"shoal_piece_bytes_received_total{peer="origin"}"#)? / MIB,
    ))
}

/// Colours of the systems' curves.
fn colour(system: System) -> &'static str {
    match system {
        System::Shoal => "#1f77b4",
        System::Registry => "#d62728",
        System::Bittorrent => "#2ca02c",
    }
}

/// A step of 1, 2 or 5 × 10^k giving about `ticks` ticks over `span`.
fn tick_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The completion-time CDF of every system (fraction of hosts done against seconds), with
/// T* as a dashed vertical line, as a standalone SVG document.
pub fn cdf_svg(scenario: &Scenario, figures: &[Figures]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let lower_bound = scenario.lower_bound_s();
    let slowest = figures
        .iter()
        .filter_map(|f| f.percentiles.map(|p| p.max_s))
        .fold(lower_bound, f64::max);
    let step = tick_step(slowest * 1.05, 8.0);
    let x_max = (slowest * 1.05 / step).ceil() * step;
    let x = |s: f64| LEFT + s / x_max * (W - LEFT - RIGHT);
    let y = |fraction: f64| H - BOTTOM - fraction * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}: completion time of {} hosts ({:.0} MiB each)</text>"#,
        W / 2.0,
        scenario.name,
        scenario.hosts,
        scenario.total_bytes() as f64 / MIB
    );
    // Axes and grid.
    let mut tick = 0.0;
    while tick <= x_max + step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            x(tick),
            y(0.0),
            y(1.0),
            y(0.0) + 16.0,
            tick
        );
        tick += step;
    }
    for i in 0..=4 {
        let fraction = f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{fraction}</text>"##,
            x(0.0),
            y(fraction),
            x(x_max),
            x(0.0) - 6.0,
            y(fraction) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds from the start of the pull</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">fraction of hosts done</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // T*.
    let _ = writeln!(
        svg,
        r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="black" stroke-dasharray="6 4"/><text x="{3:.1}" y="{4:.1}">T* = {5:.2} s</text>"#,
        x(lower_bound),
        y(0.0),
        y(1.0),
        x(lower_bound) + 4.0,
        y(1.0) + 14.0,
        lower_bound
    );
    // One step curve per system.
    for (i, f) in figures.iter().enumerate() {
        let mut done: Vec<f64> = f.result.host_s.iter().flatten().copied().collect();
        done.sort_by(f64::total_cmp);
        let n = f.result.host_s.len().max(1) as f64;
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (k, s) in done.iter().enumerate() {
            let _ = write!(
                points,
                " {0:.1},{1:.1} {0:.1},{2:.1}",
                x(*s),
                y(k as f64 / n),
                y((k + 1) as f64 / n)
            );
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{points}"/>"#,
            colour(f.system)
        );
        let legend_y = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{3}" stroke-width="3"/><text x="{4:.1}" y="{5:.1}">{6}</text>"#,
            W - RIGHT - 150.0,
            legend_y,
            W - RIGHT - 125.0,
            colour(f.system),
            W - RIGHT - 118.0,
            legend_y + 4.0,
            f.system.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_few_hosts() {
        let p = percentiles(&[1.0, 2.0, 3.0, 4.0]).expect("some");
        let close = |a: f64, b: f64| (a - b).abs() <= b * 1e-3;
        assert!(close(p.p50_s, 2.0), "{p:?}");
        assert!(close(p.max_s, 4.0), "{p:?}");
        assert!(close(p.p99_s, 4.0), "{p:?}");
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(40.0, 8.0), 5.0);
        assert_eq!(tick_step(11.0, 8.0), 2.0);
        assert_eq!(tick_step(0.9, 8.0), 0.2);
    }
}
