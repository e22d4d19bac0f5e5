//! The real-swarm harness behind `shoal-perf`: runs one scenario's systems, one after the
//! other, in the same emulated network ([`crate::netns`]) and measures each.
//!
//! For each system: its servers start on the origin's host, the blobs are pushed once, the
//! hosts' processes start and wait at a barrier (a shell reading one line from its stdin),
//! then every host is released at the same moment (late joiners `late_join_at_s` after), and
//! a host's completion time is from its release to the moment its last blob is whole:
//! - **shoal**: origin, build-index and proxy on the origin's host, the tracker on the
//!   trackers' host, one `shoal agent` per host; each host's client is `curl` reading the
//!   blob from its agent's pull API.
//! - **registry**: one `docker-registry` (CNCF distribution) on the origin's host; each host's
//!   client is `curl` reading the blob from it.
//! - **bittorrent**: opentracker on the trackers' host, a seeding `aria2c` on the origin's
//!   host; one `aria2c`
//!   per host (it keeps seeding after its download, as a peer should), whose
//!   `--on-bt-download-complete` hook marks each finished blob.
//!
//! Every host's copy is then checked against the blob: its SHA-256 when the copies fit in
//! memory, else the CRC-32 and length of what curl received (see [`COPIES_BYTES_MAX`]); a
//! BitTorrent host's file always by SHA-256. Every wait is
//! bounded (`time_limit_s`, and fixed start-up limits); every process is killed when its
//! guard drops; the system's files are removed before the next system runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{self, Net, ORIGIN_IP, ORIGIN_NS, TRACKER_IP, TRACKER_NS};
use crate::procs::{self, Proc};
use crate::scenario::{Scenario, System};
use crate::torrent;

/// Longest any server may take to say it serves, or a blob to be pushed.
const START_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long the machine's background load is sampled before a pull phase.
const BACKGROUND_SAMPLE: Duration = Duration::from_secs(1);
/// How often the pull phase looks at its clients.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How often the pull phase samples every link's byte counters (the utilization timeline).
const LINK_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Ports on the origin's host.
const TRACKER_PORT: u16 = 7100;
const ORIGIN_PORT: u16 = 7200;
const ORIGIN_PEER_PORT: u16 = 7201;
const REGISTRY_PORT: u16 = 5000;
const OPENTRACKER_PORT: u16 = 6969;
/// An agent's pull API (loopback of its host) and peer port.
const AGENT_ADDR: &str = "127.0.0.1:5000";
const AGENT_PEER_PORT: u16 = 7501;
/// Every curl client's switches: fail on an HTTP error, follow redirects, and retry a
/// transient failure (a 503, a refused connection) a few times a second apart, as `docker
/// pull` retries a layer; a retried transfer starts over, so its time counts whole.
const CURL_FLAGS: &str = "-sS -f -L --retry 3 --retry-delay 1 --retry-connrefused";
/// The repository the blobs are pushed to.
const REPOSITORY: &str = "perf/blobs";

/// A blob of the scenario, on disk.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub digest: String,
    pub bytes: u64,
    /// `blob-<k>`: its file name on every host.
    pub name: String,
    /// `cksum`'s CRC-32 and length of the blob (`"<crc> <len>"`), for checking copies that
    /// are not kept.
    pub cksum: String,
}

impl Blob {
    /// Describes the blob at `path`: its length, SHA-256 and `cksum`.
    pub fn describe(path: PathBuf, name: String) -> Result<Blob, String> {
        let bytes = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let digest = procs::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cksum = cksum_line(&netns::run("cksum", &[&path.to_string_lossy()], None)?);
        Ok(Blob {
            path,
            digest,
            bytes,
            name,
            cksum,
        })
    }
}

/// The CRC and the length from a `cksum` line (`<crc> <len> [<name>]`).
fn cksum_line(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to this many bytes in all (hosts × blob bytes), curl clients keep their copies (on
/// tmpfs) and every copy's SHA-256 is compared after the pull; above it, each client pipes
/// what it receives through `cksum` (CRC-32 and length, about 0.05 CPU-s/GiB where
/// coreutils' `sha256sum` costs 3) and keeps nothing, so 64 hosts fit in memory. Shoal's
/// agents check every piece's SHA-256 themselves either way.
const COPIES_BYTES_MAX: u64 = 2 << 30;

/// What the harness needs to run systems.
#[derive(Debug)]
pub struct Bench<'a> {
    pub scenario: &'a Scenario,
    pub net: &'a Net,
    /// Scratch directory (tmpfs): every system's stores and downloads.
    pub scratch: &'a Path,
    /// The `shoal` binary.
    pub shoal: PathBuf,
    pub blobs: Vec<Blob>,
    /// Where the processes' stderr files of a system that failed are copied
    /// (`<logs>/<system>/`), before its scratch directory is removed.
    pub logs: PathBuf,
}

/// How busy the links were over one interval of the pull phase: bytes moved (frames,
/// headers included) as a fraction of what the caps allow in that interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    /// Seconds from the start of the pull phase to the end of the interval.
    pub t_s: f64,
    /// Hosts that pulled during some of the interval.
    pub pulling: usize,
    /// What reached those hosts' links, over the sum of their download caps: what their
    /// caps let through plus what they dropped (TCP sends it again).
    pub download_use: f64,
    /// Of the TCP segments the hosts sent (payload and retransmissions, all hosts with a
    /// live client at both ends of the interval), the share that were retransmissions:
    /// what the caps' queues dropped (and what TCP resent early), from each host's
    /// `/proc/<pid>/net/snmp`, read through a process living in its namespace.
    pub retransmitted: f64,
    /// What every emulated host sent, over the sum of their upload caps.
    pub upload_use: f64,
    /// What the origin's host sent, over its upload cap.
    pub origin_use: f64,
}

/// One reading of the counters the link-use timeline is made from.
#[derive(Debug)]
struct LinkCounters {
    at: Instant,
    /// [`Net::link_bytes`], if it could be read.
    bytes: Option<Vec<(u64, u64)>>,
    /// [`tcp_segments`].
    segments: Vec<Option<(u64, u64)>>,
}

/// What one system achieved.
#[derive(Debug, Clone)]
pub struct SystemResult {
    pub system: System,
    /// Per host: seconds from its release to its last blob whole, if it got every blob
    /// byte-identical within the time limit.
    pub host_s: Vec<Option<f64>>,
    /// What went wrong, per host or for the system.
    pub failures: Vec<String>,
    /// Bytes the origin's host sent onto its link during the pull phase.
    pub origin_egress_bytes: u64,
    /// CPU seconds of each host's resident process during the pull phase (agent or aria2c;
    /// empty for the registry, whose hosts run only curl).
    pub host_cpu_s: Vec<f64>,
    /// Peak RSS of each host's resident process.
    pub host_peak_rss_bytes: Vec<u64>,
    /// CPU seconds of the origin host's servers during the pull phase.
    pub server_cpu_s: f64,
    /// Largest peak RSS among the origin host's servers.
    pub server_peak_rss_bytes: u64,
    /// Fraction of the machine's cores busy during the pull phase.
    pub cores_busy: f64,
    /// Fraction of the machine's cores busy in the second before the pull phase, with every
    /// process of the system started and idle: what else runs on the machine.
    pub cores_busy_before: f64,
    /// Wall seconds of the pull phase.
    pub pull_wall_s: f64,
    /// The links' use during the pull phase, one sample per [`LINK_SAMPLE_INTERVAL`].
    pub timeline: Vec<LinkSample>,
    /// Shoal only: the engines' metrics after the pull (`GET /metrics`, each series summed
    /// over its labels), summed over every agent under `agents`, the origin's under `origin`.
    pub engine_counters: Option<serde_json::Value>,
}

/// A process started in a namespace with `ip netns exec`, which execs it: the guard's pid
/// is the program's own.
fn start_in(
    ns: &str,
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    dir: &Path,
) -> Result<Proc, String> {
    let all = netns::exec_args(ns, &program.to_string_lossy(), args);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Proc::start(
        name,
        Path::new("ip"),
        &all,
        envs,
        dir.join(format!("{name}.stderr")),
    )
    .map_err(|e| format!("starting {name} ({}): {e}", program.display()))
}

/// Runs a short command in a namespace (bounded); its stdout.
fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    netns::run("ip", &all, None)
}

/// Retries `check` every 100 ms until it succeeds or `wait_max` passes; the last error.
fn until_ok<T>(
    what: &str,
    wait_max: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + wait_max;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{what}: not ready within {wait_max:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Per host, the TCP segments it has sent so far and how many of them were retransmissions
/// (`/proc/<pid>/net/snmp` of the host's first live client process, which lives in the host's
/// namespace), if such a process exists.
fn tcp_segments(clients: &mut [Client], hosts: usize) -> Vec<Option<(u64, u64)>> {
    let mut segments = vec![None; hosts];
    for client in clients.iter_mut() {
        if segments[client.host].is_some() || !matches!(client.child.try_wait(), Ok(None)) {
            continue;
        }
        let path = format!("/proc/{}/net/snmp", client.child.id());
        segments[client.host] = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| out_and_retrans_segs(&text));
    }
    segments
}

/// `Tcp: OutSegs` and `Tcp: RetransSegs` of a `/proc/net/snmp` table (a line of names, then
/// a line of values).
fn out_and_retrans_segs(text: &str) -> Option<(u64, u64)> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let values: Vec<&str> = tcp.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let at = names.iter().position(|n| *n == name)?;
        values.get(at)?.parse().ok()
    };
    Some((get("OutSegs")?, get("RetransSegs")?))
}

/// Every series of a Prometheus text exposition summed over its `shard` label: the series
/// name with its other labels (`name{peer="agent"}`, or `name` alone) → sum.
fn sum_series(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let kept: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty() && !l.starts_with("shard="))
                    .collect();
                if kept.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}{{{}}}", kept.join(","))
                }
            }
        };
        *sums.entry(key).or_insert(0.0) += value;
    }
    sums
}

/// Quotes `text` for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One host's client: `bash -c 'read _; …'` in the host's namespace, so it starts the
/// moment a line reaches its stdin. Done when it exits successfully (curl), or when every
/// one of its `done_files` exists (aria2c, which keeps seeding). Killed on drop.
#[derive(Debug)]
struct Client {
    host: usize,
    blobs: Vec<usize>,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
    done_files: Vec<PathBuf>,
    released: Option<Instant>,
    outcome: Option<Result<f64, String>>,
    /// When `poll` found the outcome.
    finished_at: Option<Instant>,
}

impl Client {
    fn spawn(
        host: usize,
        blobs: Vec<usize>,
        command: &str,
        stderr: PathBuf,
        done_files: Vec<PathBuf>,
    ) -> Result<Client, String> {
        let ns = netns::host_ns(host);
        // bash for `pipefail`: a pipeline fails if curl does.
        let script = format!("set -o pipefail; read _; {command}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "bash", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?,
            )
            .spawn()
            .map_err(|e| format!("starting the client of host {host}: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Client {
            host,
            blobs,
            child,
            stdin,
            stderr,
            done_files,
            released: None,
            outcome: None,
            finished_at: None,
        })
    }

    fn release(&mut self, now: Instant) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        self.released = Some(now);
    }

    /// Whether the client pulled during some of `from..to`.
    fn pulled_during(&self, from: Instant, to: Instant) -> bool {
        self.released.is_some_and(|r| r < to) && self.finished_at.is_none_or(|f| f > from)
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Looks at the client once; true once it has an outcome.
    fn poll(&mut self, now: Instant) -> bool {
        let done = self.look(now);
        if done && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
        done
    }

    fn look(&mut self, now: Instant) -> bool {
        if self.outcome.is_some() {
            return true;
        }
        let Some(released) = self.released else {
            return false;
        };
        let elapsed = now.duration_since(released).as_secs_f64();
        if !self.done_files.is_empty() {
            if self.done_files.iter().all(|f| f.exists()) {
                self.outcome = Some(Ok(elapsed));
            } else if let Ok(Some(status)) = self.child.try_wait() {
                self.outcome = Some(Err(format!(
                    "host {}: client exited ({status}) before its blobs were done: {}",
                    self.host,
                    self.stderr_tail()
                )));
            }
            return self.outcome.is_some();
        }
        match self.child.try_wait() {
            Ok(Some(status)) if status.success() => self.outcome = Some(Ok(elapsed)),
            Ok(Some(status)) => {
                self.outcome = Some(Err(format!(
                    "host {}: client failed ({status}): {}",
                    self.host,
                    self.stderr_tail()
                )));
            }
            Ok(None) => {}
            Err(e) => self.outcome = Some(Err(format!("host {}: {e}", self.host))),
        }
        self.outcome.is_some()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time counters of the whole machine (`/proc/stat`'s first line): (busy, total) ticks.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Fraction of the cores busy between two [`machine_ticks`] readings.
fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1).max(1) as f64;
    busy / total
}

/// Resident processes whose CPU and memory are reported.
#[derive(Debug, Default)]
struct Watched {
    hosts: Vec<u32>,
    servers: Vec<u32>,
}

fn cpu_of(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|&pid| procs::cpu_seconds(pid).unwrap_or(0.0))
        .collect()
}

impl Bench<'_> {
    fn system_dir(&self, system: System) -> Result<PathBuf, String> {
        let dir = self.scratch.join(system.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// Runs `system` and removes its files afterwards.
    pub fn run(&self, system: System) -> Result<SystemResult, String> {
        let dir = self.system_dir(system)?;
        let result = match system {
            System::Shoal => self.run_shoal(&dir),
            System::Registry => self.run_registry(&dir),
            System::Bittorrent => self.run_bittorrent(&dir),
        };
        // Whatever a guard's kill did not reach (a client pipeline's curl and cksum).
        self.net.kill_processes();
        if !result.as_ref().is_ok_and(|r| r.failures.is_empty()) {
            self.keep_logs(system, &dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Copies the `*.stderr` files of a system's run to `<logs>/<system>/`.
    fn keep_logs(&self, system: System, dir: &Path) {
        let target = self.logs.join(system.name());
        let _ = std::fs::remove_dir_all(&target);
        if std::fs::create_dir_all(&target).is_err() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".stderr") {
                let _ = std::fs::copy(entry.path(), target.join(name));
            }
        }
    }

    /// Releases the clients (late joiners later), waits until every client has an outcome or
    /// the time limit passes, and measures.
    fn pull(
        &self,
        system: System,
        clients: &mut [Client],
        watched: &Watched,
    ) -> Result<SystemResult, String> {
        let scenario = self.scenario;
        let idle_before = machine_ticks();
        std::thread::sleep(BACKGROUND_SAMPLE);
        let idle_after = machine_ticks();
        let egress_before = self.net.origin_egress_bytes()?;
        let ticks_before = machine_ticks();
        let host_cpu_before = cpu_of(&watched.hosts);
        let server_cpu_before: f64 = cpu_of(&watched.servers).iter().sum();
        let start = Instant::now();
        let limit = Duration::from_secs_f64(scenario.time_limit_s + scenario.late_join_at_s);
        let mut timeline = Vec::new();
        let mut last_sample = self.link_counters(start, clients);
        loop {
            let now = Instant::now();
            if now >= last_sample.at + LINK_SAMPLE_INTERVAL {
                let counters = self.link_counters(now, clients);
                let pulling: Vec<bool> = (0..scenario.hosts)
                    .map(|host| {
                        clients
                            .iter()
                            .any(|c| c.host == host && c.pulled_during(last_sample.at, now))
                    })
                    .collect();
                if let Some(sample) = self.link_sample(start, &last_sample, &counters, &pulling) {
                    timeline.push(sample);
                }
                last_sample = counters;
            }
            let mut all_done = true;
            for client in clients.iter_mut() {
                let join = Duration::from_secs_f64(scenario.join_s(client.host));
                if client.released.is_none() && now >= start + join {
                    client.release(now);
                }
                all_done &= client.poll(now);
            }
            if all_done || now >= start + limit {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let pull_wall_s = start.elapsed().as_secs_f64();
        let ticks_after = machine_ticks();
        let egress_after = self.net.origin_egress_bytes()?;
        let host_cpu_s: Vec<f64> = cpu_of(&watched.hosts)
            .iter()
            .zip(&host_cpu_before)
            .map(|(after, before)| after - before)
            .collect();
        let server_cpu_s = cpu_of(&watched.servers).iter().sum::<f64>() - server_cpu_before;
        let peak = |pid: &u32| procs::peak_rss_bytes(*pid).unwrap_or(0);
        let host_peak_rss_bytes = watched.hosts.iter().map(peak).collect();
        let server_peak_rss_bytes = watched.servers.iter().map(peak).max().unwrap_or(0);

        let mut host_s: Vec<Option<f64>> = vec![Some(0.0); scenario.hosts];
        let mut failures = Vec::new();
        for client in clients.iter() {
            match &client.outcome {
                Some(Ok(seconds)) => {
                    if let Some(slot) = host_s[client.host].as_mut() {
                        *slot = slot.max(*seconds);
                    }
                }
                Some(Err(e)) => {
                    failures.push(e.clone());
                    host_s[client.host] = None;
                }
                None => {
                    failures.push(format!(
                        "host {}: blobs {:?} not done within {:.0} s",
                        client.host, client.blobs, scenario.time_limit_s
                    ));
                    host_s[client.host] = None;
                }
            }
        }
        Ok(SystemResult {
            system,
            host_s,
            failures,
            origin_egress_bytes: egress_after.saturating_sub(egress_before),
            host_cpu_s,
            host_peak_rss_bytes,
            server_cpu_s,
            server_peak_rss_bytes,
            cores_busy: busy_fraction(ticks_before, ticks_after),
            cores_busy_before: busy_fraction(idle_before, idle_after),
            pull_wall_s,
            timeline,
            engine_counters: None,
        })
    }

    /// Every link's byte counters and every host's TCP segment counters, now.
    fn link_counters(&self, at: Instant, clients: &mut [Client]) -> LinkCounters {
        LinkCounters {
            at,
            bytes: self.net.link_bytes().ok(),
            segments: tcp_segments(clients, self.scenario.hosts),
        }
    }

    /// The [`LinkSample`] of the interval between two readings (`None` if the links'
    /// counters could not be read at either end); `pulling[h]` says whether host `h` pulled
    /// during it.
    fn link_sample(
        &self,
        start: Instant,
        before: &LinkCounters,
        after: &LinkCounters,
        pulling: &[bool],
    ) -> Option<LinkSample> {
        let scenario = self.scenario;
        let (Some(bytes_before), Some(bytes_after)) = (&before.bytes, &after.bytes) else {
            return None;
        };
        let dt_s = (after.at - before.at).as_secs_f64();
        let moved = |i: usize| {
            let sent = bytes_after[i].0.saturating_sub(bytes_before[i].0) as f64;
            let received = bytes_after[i].1.saturating_sub(bytes_before[i].1) as f64;
            (sent, received)
        };
        let hosts = scenario.hosts;
        let n_pulling = pulling.iter().filter(|p| **p).count();
        let received: f64 = (0..hosts).filter(|&h| pulling[h]).map(|h| moved(h).1).sum();
        let sent: f64 = (0..hosts).map(|h| moved(h).0).sum();
        let (mut segments, mut resent) = (0u64, 0u64);
        for pair in before.segments.iter().zip(&after.segments) {
            if let (Some(b), Some(a)) = pair {
                segments += a.0.saturating_sub(b.0);
                resent += a.1.saturating_sub(b.1);
            }
        }
        let fraction = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
        Some(LinkSample {
            t_s: (after.at - start).as_secs_f64(),
            pulling: n_pulling,
            download_use: fraction(
                received,
                n_pulling as f64 * scenario.host_download_bytes_per_s * dt_s,
            ),
            upload_use: fraction(sent, hosts as f64 * scenario.host_upload_bytes_per_s * dt_s),
            origin_use: fraction(moved(hosts).0, scenario.origin_upload_bytes_per_s * dt_s),
            retransmitted: fraction(resent as f64, segments as f64),
        })
    }

    /// Compares every host's copy of every blob with the original: `digest_of(host, blob)`
    /// gives the copy's `sha256:<hex>`; a mismatch or an error fails that host.
    fn verify(
        &self,
        result: &mut SystemResult,
        digest_of: impl Fn(usize, &Blob) -> Result<String, String>,
    ) {
        for host in 0..self.scenario.hosts {
            if result.host_s[host].is_none() {
                continue;
            }
            for blob in &self.blobs {
                let got = digest_of(host, blob);
                if got.as_deref() != Ok(blob.digest.as_str()) {
                    result.failures.push(format!(
                        "host {host}: its copy of {} is not {}: {got:?}",
                        blob.name, blob.digest
                    ));
                    result.host_s[host] = None;
                }
            }
        }
    }

    /// Pushes every blob with the distribution push API at `base` (`http://…`) from the
    /// origin's host: `POST …/blobs/uploads/`, then `PUT <Location>&digest=` with the bytes.
    fn push_blobs(&self, base: &str) -> Result<(), String> {
        for blob in &self.blobs {
            let url = format!("{base}/v2/{REPOSITORY}/blobs/uploads/");
            let headers = run_in(
                ORIGIN_NS,
                "curl",
                &[
                    "-sS",
                    "-f",
                    "-X",
                    "POST",
                    "-o",
                    "/dev/null",
                    "-D",
                    "-",
                    &url,
                ],
            )?;
            let location = headers
                .lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.eq_ignore_ascii_case("location")
                        .then(|| value.trim().to_owned())
                })
                .ok_or_else(|| format!("POST {url}: no Location in {headers:?}"))?;
            let location = if location.starts_with('/') {
                format!("{base}{location}")
            } else {
                location
            };
            let separator = if location.contains('?') { '&' } else { '?' };
            let put = format!("{location}{separator}digest={}", blob.digest);
            let data = format!("@{}", blob.path.display());
            run_in(
                ORIGIN_NS,
                "curl",
                &[
                    "-sS",
                    "-f",
                    "-X",
                    "PUT",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    &data,
                    "-o",
                    "/dev/null",
                    &put,
                ],
            )
            .map_err(|e| format!("pushing {}: {e}", blob.name))?;
        }
        Ok(())
    }

    /// Whether curl clients keep their copies (see [`COPIES_BYTES_MAX`]).
    fn keep_copies(&self) -> bool {
        self.scenario.total_bytes() * self.scenario.hosts as u64 <= COPIES_BYTES_MAX
    }

    /// curl clients, one per (host, blob), reading `url(blob)` into `checks/h<host>-<blob>`
    /// (the copy, or its `cksum` line).
    fn curl_clients(
        &self,
        dir: &Path,
        url: impl Fn(&Blob) -> String,
    ) -> Result<Vec<Client>, String> {
        let checks = dir.join("checks");
        std::fs::create_dir_all(&checks).map_err(|e| format!("{}: {e}", checks.display()))?;
        let max_time = format!("{:.0}", self.scenario.time_limit_s.ceil());
        let mut clients = Vec::new();
        for host in 0..self.scenario.hosts {
            for (k, blob) in self.blobs.iter().enumerate() {
                let url = shell_quote(&url(blob));
                let check = shell_quote(&check_path(dir, host, blob).to_string_lossy());
                let command = if self.keep_copies() {
                    format!("exec curl {CURL_FLAGS} --max-time {max_time} -o {check} {url}")
                } else {
                    format!("curl {CURL_FLAGS} --max-time {max_time} {url} | cksum > {check}")
                };
                let stderr = dir.join(format!("client-h{host}-{}.stderr", blob.name));
                clients.push(Client::spawn(host, vec![k], &command, stderr, Vec::new())?);
            }
        }
        Ok(clients)
    }

    /// The digest of host `host`'s copy of `blob` as its curl client left it: the copy's
    /// SHA-256, or the blob's own digest if the `cksum` of what it received matches.
    fn curl_copy_digest(&self, dir: &Path, host: usize, blob: &Blob) -> Result<String, String> {
        let path = check_path(dir, host, blob);
        if self.keep_copies() {
            return procs::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let got = cksum_line(&text);
        if got == blob.cksum {
            Ok(blob.digest.clone())
        } else {
            Err(format!("cksum {got:?}, the blob's is {:?}", blob.cksum))
        }
    }

    fn run_shoal(&self, dir: &Path) -> Result<SystemResult, String> {
        let scenario = self.scenario;
        let shoal = &self.shoal;
        // `SHOAL_PERF_LOG` sets the components' `SHOAL_LOG` (default `warn`).
        let log = std::env::var("SHOAL_PERF_LOG").unwrap_or_else(|_| "warn".to_owned());
        let envs = [("SHOAL_LOG", log.as_str())];
        let tracker_addr = format!("{TRACKER_IP}:{TRACKER_PORT}");
        let origin_addr = format!("{ORIGIN_IP}:{ORIGIN_PORT}");
        let s = |items: &[&str]| -> Vec<String> { items.iter().map(|i| (*i).to_owned()).collect() };
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();

        let mut tracker = start_in(
            TRACKER_NS,
            "tracker",
            shoal,
            &s(&["tracker", "--listen", &tracker_addr]),
            &envs,
            dir,
        )?;
        tracker.line_starting("tracker listening on ", START_WAIT_MAX)?;
        let origin_shards = scenario.origin_shards.to_string();
        // `--tcp-congestion NAME` for the origin and every agent, if the scenario sets it.
        let congestion: Vec<String> = scenario
            .tcp_congestion
            .iter()
            .flat_map(|name| ["--tcp-congestion".to_owned(), name.clone()])
            .collect();
        let mut origin = start_in(
            ORIGIN_NS,
            "origin",
            shoal,
            &s(&[
                "origin",
                "--listen",
                &origin_addr,
                "--peer-listen",
                &format!("{ORIGIN_IP}:{ORIGIN_PEER_PORT}"),
                "--data-dir",
                &path("origin"),
                "--tracker",
                &tracker_addr,
                "--shards",
                &origin_shards,
                "--no-pin",
            ])
            .into_iter()
            .chain(congestion.iter().cloned())
            .collect::<Vec<_>>(),
            &envs,
            dir,
        )?;
        origin.line_starting("origin listening on ", START_WAIT_MAX)?;
        let mut build_index = start_in(
            ORIGIN_NS,
            "build-index",
            shoal,
            &s(&[
                "build-index",
                "--listen",
                "127.0.0.1:7300",
                "--data-dir",
                &path("build-index"),
            ]),
            &envs,
            dir,
        )?;
        build_index.line_starting("build-index listening on ", START_WAIT_MAX)?;
        let mut proxy = start_in(
            ORIGIN_NS,
            "proxy",
            shoal,
            &s(&[
                "proxy",
                "--listen",
                "127.0.0.1:7400",
                "--data-dir",
                &path("proxy"),
                "--origin",
                &origin_addr,
                "--build-index",
                "127.0.0.1:7300",
            ]),
            &envs,
            dir,
        )?;
        proxy.line_starting("proxy listening on ", START_WAIT_MAX)?;
        self.push_blobs("http://127.0.0.1:7400")?;

        let agent_shards = scenario.agent_shards.to_string();
        let mut agents = Vec::new();
        for host in 0..scenario.hosts {
            let name = format!("agent-h{host}");
            agents.push(start_in(
                &netns::host_ns(host),
                &name,
                shoal,
                &s(&[
                    "agent",
                    "--data-dir",
                    &path(&name),
                    "--tracker",
                    &tracker_addr,
                    "--listen",
                    AGENT_ADDR,
                    "--peer-listen",
                    &format!("{}:{AGENT_PEER_PORT}", netns::host_ip(host)),
                    "--shards",
                    &agent_shards,
                    "--no-pin",
                ])
                .into_iter()
                .chain(congestion.iter().cloned())
                .collect::<Vec<_>>(),
                &envs,
                dir,
            )?);
        }
        for agent in &mut agents {
            agent.line_starting("agent listening on ", START_WAIT_MAX)?;
        }
        // The origin announces a pushed blob's metainfo to the tracker as it seeds it: wait
        // until an agent can see every blob (HEAD starts no download).
        for blob in &self.blobs {
            let url = format!("http://{AGENT_ADDR}/v2/{REPOSITORY}/blobs/{}", blob.digest);
            until_ok(
                &format!("{} at the tracker", blob.name),
                START_WAIT_MAX,
                || run_in(&netns::host_ns(0), "curl", &["-sS", "-f", "-I", &url]),
            )?;
        }
        let mut clients = self.curl_clients(dir, |blob| {
            format!("http://{AGENT_ADDR}/v2/{REPOSITORY}/blobs/{}", blob.digest)
        })?;
        let watched = Watched {
            hosts: agents.iter().map(Proc::pid).collect(),
            servers: vec![origin.pid(), tracker.pid()],
        };
        let mut result = self.pull(System::Shoal, &mut clients, &watched)?;
        drop(clients);
        result.engine_counters = self.engine_counters(&origin_addr);
        self.verify(&mut result, |host, blob| {
            self.curl_copy_digest(dir, host, blob)
        });
        Ok(result)
    }

    /// Every agent's and the origin's `GET /metrics`, each series summed over its labels;
    /// the agents' summed. A diagnostic: `{"error": …}` if one cannot be read.
    fn engine_counters(&self, origin_addr: &str) -> Option<serde_json::Value> {
        let read = |ns: &str, addr: &str| -> Result<BTreeMap<String, f64>, String> {
            let url = format!("http://{addr}/metrics");
            let text = run_in(ns, "curl", &["-sS", "-f", "--max-time", "5", &url])?;
            Ok(sum_series(&text))
        };
        let mut agents = BTreeMap::new();
        for host in 0..self.scenario.hosts {
            match read(&netns::host_ns(host), AGENT_ADDR) {
                Ok(sums) => {
                    for (name, value) in sums {
                        *agents.entry(name).or_insert(0.0) += value;
                    }
                }
                Err(e) => return Some(serde_json::json!({ "error": format!("host {host}: {e}") })),
            }
        }
        Some(match read(ORIGIN_NS, origin_addr) {
            Ok(origin) => serde_json::json!({ "agents": agents, "origin": origin }),
            Err(e) => serde_json::json!({ "error": format!("the origin: {e}") }),
        })
    }

    fn run_registry(&self, dir: &Path) -> Result<SystemResult, String> {
        let base = format!("http://{ORIGIN_IP}:{REGISTRY_PORT}");
        let config = dir.join("registry.yml");
        let storage = dir.join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {ORIGIN_IP}:{REGISTRY_PORT}\n",
                storage.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let registry = start_in(
            ORIGIN_NS,
            "registry",
            Path::new("docker-registry"),
            &["serve".to_owned(), config.to_string_lossy().into_owned()],
            &[],
            dir,
        )?;
        until_ok("docker-registry", START_WAIT_MAX, || {
            run_in(ORIGIN_NS, "curl", &["-sS", "-f", &format!("{base}/v2/")])
        })?;
        self.push_blobs(&base)?;
        let mut clients = self.curl_clients(dir, |blob| {
            format!("{base}/v2/{REPOSITORY}/blobs/{}", blob.digest)
        })?;
        let watched = Watched {
            hosts: Vec::new(),
            servers: vec![registry.pid()],
        };
        let mut result = self.pull(System::Registry, &mut clients, &watched)?;
        drop(clients);
        self.verify(&mut result, |host, blob| {
            self.curl_copy_digest(dir, host, blob)
        });
        Ok(result)
    }

    fn run_bittorrent(&self, dir: &Path) -> Result<SystemResult, String> {
        let tracker_base = format!("http://{TRACKER_IP}:{OPENTRACKER_PORT}");
        let announce = format!("{tracker_base}/announce");
        // opentracker chroots into its directory and drops to `nobody`: the whitelist is
        // named relative to that directory and must be readable by everyone.
        let chroot = dir.join("opentracker");
        std::fs::create_dir_all(&chroot).map_err(|e| format!("{}: {e}", chroot.display()))?;
        let seed_dir = dir.join("seed");
        std::fs::create_dir_all(&seed_dir).map_err(|e| format!("{}: {e}", seed_dir.display()))?;
        let mut torrents = Vec::new();
        let mut whitelist = String::new();
        for blob in &self.blobs {
            let torrent = torrent::make(&blob.path, &blob.name, &announce)?;
            let path = dir.join(format!("{}.torrent", blob.name));
            std::fs::write(&path, &torrent.bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            whitelist.push_str(&torrent.info_hash_hex());
            whitelist.push('\n');
            let seeded = seed_dir.join(&blob.name);
            std::fs::hard_link(&blob.path, &seeded)
                .or_else(|_| std::fs::copy(&blob.path, &seeded).map(|_| ()))
                .map_err(|e| format!("{}: {e}", seeded.display()))?;
            torrents.push((path, torrent));
        }
        let whitelist_path = chroot.join("whitelist.txt");
        std::fs::write(&whitelist_path, whitelist)
            .map_err(|e| format!("{}: {e}", whitelist_path.display()))?;
        let opentracker = start_in(
            TRACKER_NS,
            "opentracker",
            Path::new("opentracker"),
            &[
                "-i".to_owned(),
                TRACKER_IP.to_owned(),
                "-p".to_owned(),
                OPENTRACKER_PORT.to_string(),
                "-P".to_owned(),
                OPENTRACKER_PORT.to_string(),
                "-d".to_owned(),
                chroot.to_string_lossy().into_owned(),
                "-u".to_owned(),
                "nobody".to_owned(),
                "-w".to_owned(),
                "whitelist.txt".to_owned(),
            ],
            &[],
            dir,
        )?;
        let hook = dir.join("done.sh");
        // aria2 calls it with GID, number of files, path of the first file.
        std::fs::write(&hook, "#!/bin/sh\n: > \"$3.done\"\n")
            .map_err(|e| format!("{}: {e}", hook.display()))?;
        make_executable(&hook)?;
        let torrent_args: Vec<String> = torrents
            .iter()
            .map(|(path, _)| path.to_string_lossy().into_owned())
            .collect();
        let mut seeder_args = aria2_args(&seed_dir, None);
        seeder_args.push("--bt-seed-unverified=true".to_owned());
        seeder_args.extend(torrent_args.iter().cloned());
        let seeder = start_in(
            ORIGIN_NS,
            "seeder",
            Path::new("aria2c"),
            &seeder_args,
            &[],
            dir,
        )?;
        // Ready when the tracker counts the seeder as complete for every torrent.
        for (_, torrent) in &torrents {
            let url = format!(
                "{tracker_base}/scrape?info_hash={}",
                torrent.info_hash_url()
            );
            until_ok("the seeder at opentracker", START_WAIT_MAX, || {
                let answer = run_in(ORIGIN_NS, "curl", &["-sS", "-f", &url])?;
                if answer.contains("8:completei0e") || !answer.contains("8:completei") {
                    return Err(format!("scrape: {answer:?}"));
                }
                Ok(())
            })?;
        }
        let mut clients = Vec::new();
        for host in 0..self.scenario.hosts {
            let host_dir = dir.join(format!("h{host}"));
            std::fs::create_dir_all(&host_dir)
                .map_err(|e| format!("{}: {e}", host_dir.display()))?;
            let mut args = aria2_args(&host_dir, Some(&hook));
            args.extend(torrent_args.iter().cloned());
            // `exec`: the client's pid is aria2c's (its CPU and memory are reported).
            let command = std::iter::once("exec aria2c".to_owned())
                .chain(args.iter().map(|a| shell_quote(a)))
                .collect::<Vec<_>>()
                .join(" ");
            let done = self
                .blobs
                .iter()
                .map(|b| host_dir.join(format!("{}.done", b.name)))
                .collect();
            let stderr = dir.join(format!("client-h{host}.stderr"));
            clients.push(Client::spawn(
                host,
                (0..self.blobs.len()).collect(),
                &command,
                stderr,
                done,
            )?);
        }
        // The clients' pids are those of `ip netns exec` → sh → aria2c, one process.
        let watched = Watched {
            hosts: clients.iter().map(|c| c.child.id()).collect(),
            servers: vec![seeder.pid(), opentracker.pid()],
        };
        let mut result = self.pull(System::Bittorrent, &mut clients, &watched)?;
        drop(clients);
        self.verify(&mut result, |host, blob| {
            let path = dir.join(format!("h{host}")).join(&blob.name);
            procs::sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))
        });
        Ok(result)
    }
}

/// Where a curl client leaves its copy or its `cksum` line.
fn check_path(dir: &Path, host: usize, blob: &Blob) -> PathBuf {
    dir.join("checks").join(format!("h{host}-{}", blob.name))
}

/// aria2c's switches for one host (`hook`: mark each finished download): no DHT or local
/// discovery (the tracker is the only source of peers, as for Shoal), no preallocation
/// (tmpfs), seeding forever (until killed), quiet.
fn aria2_args(dir: &Path, hook: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        format!("--dir={}", dir.display()),
        "--seed-ratio=0.0".to_owned(),
        "--enable-dht=false".to_owned(),
        "--enable-dht6=false".to_owned(),
        "--bt-enable-lpd=false".to_owned(),
        "--disable-ipv6=true".to_owned(),
        "--file-allocation=none".to_owned(),
        "--max-concurrent-downloads=16".to_owned(),
        "--listen-port=6881-6889".to_owned(),
        "--summary-interval=0".to_owned(),
        "--console-log-level=warn".to_owned(),
        "--allow-overwrite=true".to_owned(),
        "--auto-file-renaming=false".to_owned(),
        "--check-certificate=false".to_owned(),
    ];
    if let Some(hook) = hook {
        args.push(format!("--on-bt-download-complete={}", hook.display()));
    }
    args
}

fn make_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn cksum_lines_compare_without_the_name() {
        assert_eq!(
            cksum_line("4294967295 33554432 /x/blob-0\n"),
            "4294967295 33554432"
        );
        assert_eq!(cksum_line("12 34\n"), "12 34");
    }

    #[test]
    fn tcp_segments_come_from_the_named_columns() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin InSegs OutSegs RetransSegs InErrs\n\
                    Tcp: 1 200 5 228165 1132 0\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(out_and_retrans_segs(text), Some((228_165, 1132)));
        assert_eq!(out_and_retrans_segs("Tcp: OutSegs\n"), None);
        assert_eq!(out_and_retrans_segs(""), None);
    }

    #[test]
    fn series_are_summed_over_their_labels() {
        let text = "# HELP x X.\n# TYPE x counter\nx_total{shard=\"0\",peer=\"a\"} 2\n\
                    x_total{shard=\"1\",peer=\"a\"} 3.5\nx_total{shard=\"1\",peer=\"b\"} 1\n\
                    y{shard=\"0\"} 4\ny{shard=\"1\"} 1\nz 7\n# EOF\n";
        let sums = sum_series(text);
        assert_eq!(sums.get(r#"x_total{peer="a"}"#), Some(&5.5));
        assert_eq!(sums.get(r#"x_total{peer="b"}"#), Some(&1.0));
        assert_eq!(sums.get("y"), Some(&5.0));
        assert_eq!(sums.get("z"), Some(&7.0));
        assert_eq!(sums.len(), 4);
    }

    #[test]
    fn machine_ticks_move_forward() {
        let (busy, total) = machine_ticks();
        assert!(total >= busy);
    }
}
