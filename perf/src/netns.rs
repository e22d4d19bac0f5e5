//! Emulated hosts for the real-swarm harness: one network namespace per host, each joined by
//! a veth pair to a bridge in a namespace of its own, each shaped by the kernel at its link
//! rates: `tc tbf` on the host's veth for what it sends, and an IFB device (the veth's
//! ingress redirected to it by a `u32` match-all filter with a `mirred` action) with its own
//! `tbf` for what it receives. (The kernel used here has no netem and no `police` action.)
//!
//! Everything lives in namespaces named `shoalperf-…` and the subnet 10.231.0.0/16, so the
//! machine's own network is never touched and what a crashed run left behind can be found
//! and removed by name ([`cleanup_leftovers`]). [`Net`] removes its namespaces (after killing
//! every process still inside them) when dropped. [`RunLock`] keeps two harness runs from
//! sharing the names.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every namespace of the harness starts with this.
pub const NS_PREFIX: &str = "shoalperf-";
/// The namespace holding the bridge `br0` (no address: it only switches).
pub const BRIDGE_NS: &str = "shoalperf-br";
/// The origin's host: origins, tracker, build-index, proxy; the registry; the seeder.
pub const ORIGIN_NS: &str = "shoalperf-o";
/// The origin host's address.
pub const ORIGIN_IP: &str = "10.231.0.1";
/// The trackers' host (Shoal's tracker, opentracker): a host of its own, as in a real
/// deployment, so that peer discovery does not queue behind the origin's bulk data on the
/// origin's link. Same link caps as the origin's host.
pub const TRACKER_NS: &str = "shoalperf-t";
pub const TRACKER_IP: &str = "10.231.0.2";
/// The subnet's prefix length.
const PREFIX_LEN: u8 = 16;
/// Most hosts: their addresses are 10.231.1.1 … 10.231.1.250.
pub const HOSTS_MAX: usize = 250;
/// How long one `ip`/`tc` command may take.
const COMMAND_WAIT_MAX: Duration = Duration::from_secs(20);
/// The lock that keeps two harness runs apart (namespaces and scratch directories are
/// named by a fixed prefix).
const LOCK_PATH: &str = "/run/shoal-perf.lock";
/// How long a run waits for another to release the lock.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(120);
/// `tbf` queue: how long a packet may wait for tokens before it is dropped.
const TBF_LATENCY_MS: u32 = 25;
/// `tbf` bucket: this many seconds of the rate, at least `TBF_BURST_BYTES_MIN`. The bucket
/// must hold at least one timer tick of the rate, and one whole GSO packet (64 KiB plus
/// headers): a packet bigger than the bucket is cut into frames by `tbf` itself, and every
/// frame then crosses the bridge and the IFB on its own, which costs several times the CPU
/// (this machine has two cores for every emulated host). Headers still count against the
/// rate: `tbf` charges a GSO packet the length of all its frames.
const TBF_BURST_S: f64 = 0.004;
const TBF_BURST_BYTES_MIN: u64 = 128 * 1024;

/// The namespace of host `i` (0-based).
pub fn host_ns(i: usize) -> String {
    format!("{NS_PREFIX}h{i}")
}

/// The address of host `i` (0-based).
pub fn host_ip(i: usize) -> String {
    format!("10.231.1.{}", i + 1)
}

/// A link's capacity each way, bytes per second.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub upload_bytes_per_s: f64,
    pub download_bytes_per_s: f64,
}

/// Runs `program args` (with `stdin` fed, if given), waiting at most [`COMMAND_WAIT_MAX`];
/// its stdout, or an error quoting the command and its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{shown}: writing its input: {e}"))?;
    }
    let deadline = Instant::now() + COMMAND_WAIT_MAX;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown}: no answer within {COMMAND_WAIT_MAX:?}"));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown}: {}; input:\n{}\nstderr: {}",
            output.status,
            stdin.unwrap_or(""),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip netns exec NS program args…` as an argument list for `ip`.
pub fn exec_args(ns: &str, program: &str, args: &[String]) -> Vec<String> {
    let mut all = vec![
        "netns".to_owned(),
        "exec".to_owned(),
        ns.to_owned(),
        program.to_owned(),
    ];
    all.extend(args.iter().cloned());
    all
}

/// The namespaces whose names start with [`NS_PREFIX`].
pub fn our_namespaces() -> Result<Vec<String>, String> {
    let listing = run("ip", &["netns", "list"], None)?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NS_PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Kills (SIGKILL) every process inside namespace `ns`.
fn kill_inside(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns], None) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Removes every namespace named `shoalperf-…` (what a crashed or interrupted run left),
/// after killing the processes inside; the bridge namespace last. Returns how many there
/// were.
pub fn cleanup_leftovers() -> Result<usize, String> {
    let mut names = our_namespaces()?;
    // Hosts first, so their veths go before the bridge's namespace.
    names.sort_by_key(|name| name == BRIDGE_NS);
    for name in &names {
        kill_inside(name);
    }
    // A killed process leaves its namespace once it is reaped; deleting the name is enough
    // for the kernel to free the namespace after that.
    let mut failures = Vec::new();
    for name in &names {
        if let Err(e) = run("ip", &["netns", "del", name], None) {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        Ok(names.len())
    } else {
        Err(failures.join("; "))
    }
}

/// An exclusive `flock` on [`LOCK_PATH`], held while the value lives.
#[derive(Debug)]
pub struct RunLock(#[allow(dead_code)] File);

impl RunLock {
    /// Waits (at most [`LOCK_WAIT_MAX`]) until no other harness run holds the lock.
    pub fn acquire() -> Result<RunLock, String> {
        let path = Path::new(LOCK_PATH);
        let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let deadline = Instant::now() + LOCK_WAIT_MAX;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(RunLock(file)),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(format!(
                        "{}: another shoal-perf run holds it ({e}); waited {LOCK_WAIT_MAX:?}",
                        path.display()
                    ));
                }
            }
        }
    }
}

/// The emulated network: the bridge, the origin's host and `hosts` hosts, shaped. Dropping it
/// kills every process inside and removes every namespace.
#[derive(Debug)]
pub struct Net {
    hosts: usize,
    /// The ARP table's garbage-collection thresholds before [`Net::build`] raised them,
    /// restored when the network is dropped.
    neigh_before: Option<[String; 3]>,
}

/// The IPv4 neighbour (ARP) table's thresholds. The table is one for every namespace of the
/// machine, so its default hard limit (1,024 entries) is too small for an emulated network
/// in which every host learns every other host's address (66 hosts: about 4,400 entries):
/// past it the kernel logs "neighbor table overflow" and a host that has not talked to a
/// peer yet cannot resolve it at all (late joiners could not reach the tracker).
const NEIGH_THRESH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

/// Raises the thresholds so that `entries` fit without garbage collection (never lowers
/// one); returns the previous values.
fn raise_neigh_thresholds(entries: u64) -> Result<[String; 3], String> {
    let mut before: [String; 3] = Default::default();
    for (i, path) in NEIGH_THRESH.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        before[i] = text.trim().to_owned();
    }
    for (i, path) in NEIGH_THRESH.iter().enumerate() {
        let wanted = entries << i; // thresh1 = entries, thresh2 = 2×, thresh3 = 4×
        let current: u64 = before[i].parse().unwrap_or(0);
        if wanted > current {
            std::fs::write(path, wanted.to_string()).map_err(|e| format!("writing {path}: {e}"))?;
        }
    }
    Ok(before)
}

fn restore_neigh_thresholds(before: &[String; 3]) {
    // Highest first going down, so thresh1 ≤ thresh2 ≤ thresh3 holds at every step.
    for (path, value) in NEIGH_THRESH.iter().zip(before.iter()).rev() {
        let _ = std::fs::write(path, value);
    }
}

fn tbf(dev: &str, bytes_per_s: f64) -> String {
    let bits_per_s = (bytes_per_s * 8.0).round() as u64;
    let burst = ((bytes_per_s * TBF_BURST_S) as u64).max(TBF_BURST_BYTES_MIN);
    format!(
        "qdisc add dev {dev} root tbf rate {bits_per_s}bit burst {burst} latency {TBF_LATENCY_MS}ms\n"
    )
}

impl Net {
    /// Builds the network (after removing leftovers of an earlier run). Fails, having torn
    /// down what it built, if any step fails.
    pub fn build(hosts: usize, host_link: Link, origin_link: Link) -> Result<Net, String> {
        if hosts == 0 || hosts > HOSTS_MAX {
            return Err(format!("{hosts} hosts: between 1 and {HOSTS_MAX}"));
        }
        cleanup_leftovers()?;
        let nodes = hosts as u64 + 3; // the hosts, the origin's, the tracker's, the bridge
        let neigh_before = Some(raise_neigh_thresholds(nodes * nodes + 1024)?);
        let net = Net {
            hosts,
            neigh_before,
        };
        run("ip", &["netns", "add", BRIDGE_NS], None)?;
        run(
            "ip",
            &["-n", BRIDGE_NS, "-batch", "-"],
            Some(
                "link set lo up\n\
                 link add br0 type bridge forward_delay 0 stp_state 0\n\
                 link set br0 up\n",
            ),
        )?;
        net.add_host(ORIGIN_NS, "o", ORIGIN_IP, origin_link)?;
        net.add_host(TRACKER_NS, "trk", TRACKER_IP, origin_link)?;
        for i in 0..hosts {
            net.add_host(&host_ns(i), &format!("h{i}"), &host_ip(i), host_link)?;
        }
        Ok(net)
    }

    /// One host: its namespace, a veth into the bridge (`port` on the bridge's side, `eth0`
    /// inside), its address, `tbf` on `eth0` (upload) and on `ifb0` (download, fed by
    /// `eth0`'s ingress).
    fn add_host(&self, ns: &str, port: &str, ip: &str, link: Link) -> Result<(), String> {
        run("ip", &["netns", "add", ns], None)?;
        run(
            "ip",
            &["-n", BRIDGE_NS, "-batch", "-"],
            Some(&format!(
                "link add name {port} type veth peer name eth0 netns {ns}\n\
                 link set dev {port} master br0\n\
                 link set dev {port} up\n"
            )),
        )?;
        run(
            "ip",
            &["-n", ns, "-batch", "-"],
            Some(&format!(
                "link set lo up\n\
                 addr add {ip}/{PREFIX_LEN} dev eth0\n\
                 link set eth0 up\n\
                 link add ifb0 type ifb\n\
                 link set ifb0 up\n"
            )),
        )?;
        let mut shaping = tbf("eth0", link.upload_bytes_per_s);
        shaping.push_str(&tbf("ifb0", link.download_bytes_per_s));
        shaping.push_str("qdisc add dev eth0 handle ffff: ingress\n");
        shaping.push_str(
            "filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 \
             action mirred egress redirect dev ifb0\n",
        );
        run("tc", &["-n", ns, "-batch", "-"], Some(&shaping))?;
        Ok(())
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Bytes the origin's host has sent onto its link so far (frames, headers included): what
    /// the bridge's port `o` received.
    pub fn origin_egress_bytes(&self) -> Result<u64, String> {
        let json = run(
            "ip",
            &["-n", BRIDGE_NS, "-s", "-j", "link", "show", "dev", "o"],
            None,
        )?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("ip -s -j link: {e}: {json}"))?;
        value[0]["stats64"]["rx"]["bytes"]
            .as_u64()
            .ok_or_else(|| format!("ip -s -j link: no rx bytes in {json}"))
    }

    /// Bytes every host has sent and received on its link so far (frames, headers
    /// included), read off the bridge's ports in one `ip` call: `(sent, received)` per
    /// emulated host in host order, then the origin's host.
    pub fn link_bytes(&self) -> Result<Vec<(u64, u64)>, String> {
        let json = run("ip", &["-n", BRIDGE_NS, "-s", "-j", "link", "show"], None)?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("ip -s -j link: {e}"))?;
        let mut by_port = std::collections::HashMap::new();
        for port in value.as_array().into_iter().flatten() {
            let (Some(name), Some(rx), Some(tx)) = (
                port["ifname"].as_str(),
                port["stats64"]["rx"]["bytes"].as_u64(),
                port["stats64"]["tx"]["bytes"].as_u64(),
            ) else {
                continue;
            };
            // The port's rx is what the host sent, its tx what the host received.
            by_port.insert(name.to_owned(), (rx, tx));
        }
        (0..self.hosts)
            .map(|i| format!("h{i}"))
            .chain(std::iter::once("o".to_owned()))
            .map(|port| {
                by_port
                    .get(&port)
                    .copied()
                    .ok_or_else(|| format!("ip -s -j link: no counters for port {port}"))
            })
            .collect()
    }

    /// Kills every process inside the network's namespaces.
    pub fn kill_processes(&self) {
        if let Ok(names) = our_namespaces() {
            for name in names {
                kill_inside(&name);
            }
        }
    }

    /// Kills every process in the namespaces and removes them.
    pub fn teardown(&self) -> Result<usize, String> {
        cleanup_leftovers()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.teardown();
        if let Some(before) = self.neigh_before.take() {
            restore_neigh_thresholds(&before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_lines_carry_rate_and_burst() {
        assert_eq!(
            tbf("eth0", 12_500_000.0),
            "qdisc add dev eth0 root tbf rate 100000000bit burst 131072 latency 25ms\n"
        );
        // Slow links keep a bucket of at least one GSO packet.
        assert!(tbf("ifb0", 125_000.0).contains("burst 131072 "));
    }

    #[test]
    fn names_and_addresses_stay_in_our_space() {
        assert_eq!(host_ns(0), "shoalperf-h0");
        assert_eq!(host_ip(249), "10.231.1.250");
        assert!(BRIDGE_NS.starts_with(NS_PREFIX) && ORIGIN_NS.starts_with(NS_PREFIX));
        assert!(TRACKER_NS.starts_with(NS_PREFIX));
        // Interface names inside the bridge namespace fit IFNAMSIZ.
        assert!(format!("h{}", HOSTS_MAX - 1).len() < 16);
    }
}
