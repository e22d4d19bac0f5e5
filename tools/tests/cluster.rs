//! A whole cluster as separate `shoal` processes on loopback — 3 origins, 2 trackers, a
//! build-index, a proxy and 4 agents — with skopeo as the client: an image pushed once is
//! pulled through every agent byte for byte; then one origin and one tracker are killed
//! with SIGKILL, and a second image is pushed and pulled through every agent; then the
//! killed origin comes back and catches up on the blobs it owns.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;

use std::time::{Duration, Instant};

use shoal_perf::clients::{curl_status, layout_blobs as blobs, skopeo_copy};
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{Proc, Scratch, Shoal};
use shoal_proto::Digest;
use shoal_servers::cluster::{ClusterConfig, OriginCluster};

const WAIT: Duration = Duration::from_secs(120);
const REPLICAS: usize = 2;

/// The address at the end of a `… listening on ADDR` line.
fn listening(proc: &mut Proc, prefix: &str) -> String {
    let line = proc.line_starting(prefix, WAIT).unwrap();
    line.rsplit(' ').next().unwrap().to_owned()
}

struct Cluster {
    binary: PathBuf,
    origins: Vec<String>,
    trackers: Vec<String>,
    procs: Vec<(String, Proc)>,
}

impl Cluster {
    fn start(&mut self, name: &str, args: &[String], scratch: &Scratch) -> &mut Proc {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::start(
            name,
            &self.binary,
            &args,
            &[("SHOAL_LOG", "info")],
            scratch.path(&format!("{name}.stderr")),
        )
        .unwrap();
        self.procs.push((name.to_owned(), proc));
        &mut self.procs.last_mut().unwrap().1
    }

    fn proc(&mut self, name: &str) -> &mut Proc {
        &mut self
            .procs
            .iter_mut()
            .rev()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    }

    fn start_origin(&mut self, i: usize, scratch: &Scratch) {
        let mut args: Vec<String> = vec![
            "origin".into(),
            "--listen".into(),
            self.origins[i].clone(),
            "--peer-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            scratch.path(&format!("origin{i}")).to_string_lossy().into(),
            "--shards".into(),
            "1".into(),
            "--no-pin".into(),
            "--replicas".into(),
            REPLICAS.to_string(),
            "--health-interval".into(),
            "1s".into(),
            "--repair-interval".into(),
            "2s".into(),
        ];
        for origin in &self.origins {
            args.extend(["--cluster".into(), origin.clone()]);
        }
        for tracker in &self.trackers {
            args.extend(["--tracker".into(), tracker.clone()]);
        }
        let name = format!("origin{i}");
        let proc = self.start(&name, &args, scratch);
        listening(proc, "origin listening on ");
    }

    fn origin_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        for origin in &self.origins {
            args.extend(["--origin".into(), origin.clone()]);
        }
        args.extend(["--replicas".into(), REPLICAS.to_string()]);
        args
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, proc) in &self.procs {
                eprintln!("--- {name}\n{}", proc.stderr_tail(30));
            }
        }
    }
}

/// A loopback port block for the origins' internal APIs (they must know each other's
/// addresses before any starts), below the kernel's ephemeral range.
fn origin_addrs() -> Vec<String> {
    for attempt in 0..20u32 {
        let base = 21_000 + ((std::process::id().wrapping_add(attempt * 7919)) % 3000) as u16 * 10;
        let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
        if addrs
            .iter()
            .all(|a| std::net::TcpListener::bind(a.as_str()).is_ok())
        {
            return addrs;
        }
    }
    panic!("no free port block for the origins");
}

#[test]
fn a_cluster_survives_losing_an_origin_and_a_tracker() {
    let scratch = Scratch::new("cluster").unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_shoal"));
    let mut shoal = Shoal::new(binary.clone());
    shoal.wait_max = WAIT;
    let mut cluster = Cluster {
        binary,
        origins: origin_addrs(),
        trackers: Vec::new(),
        procs: Vec::new(),
    };
    for i in 0..2 {
        let (tracker, addr) = shoal.tracker(&scratch).unwrap();
        cluster.procs.push((format!("tracker{i}"), tracker));
        cluster.trackers.push(addr);
    }
    for i in 0..3 {
        cluster.start_origin(i, &scratch);
    }
    let index_args: Vec<String> = [
        "build-index",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &scratch.path("build-index").to_string_lossy(),
    ]
    .map(String::from)
    .to_vec();
    let proc = cluster.start("build-index", &index_args, &scratch);
    let build_index = listening(proc, "build-index listening on ");
    let mut proxy_args: Vec<String> = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &scratch.path("proxy").to_string_lossy(),
        "--build-index",
        &build_index,
    ]
    .map(String::from)
    .to_vec();
    proxy_args.extend(cluster.origin_args());
    let proc = cluster.start("proxy", &proxy_args, &scratch);
    let proxy = listening(proc, "proxy listening on ");
    let mut agents = Vec::new();
    for i in 0..4 {
        let mut args: Vec<String> = [
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--data-dir",
            &scratch.path(&format!("agent{i}")).to_string_lossy(),
            "--shards",
            "1",
            "--no-pin",
            "--build-index",
            &build_index,
            "--proxy",
            &proxy,
        ]
        .map(String::from)
        .to_vec();
        args.extend(cluster.origin_args());
        for tracker in &cluster.trackers {
            args.extend(["--tracker".into(), tracker.clone()]);
        }
        let name = format!("agent{i}");
        let proc = cluster.start(&name, &args, &scratch);
        agents.push(listening(proc, "agent listening on "));
    }

    let source = scratch.path("source");
    let mut layout = Layout::new(&source, 5).unwrap();
    let first = layout.image("amd64", &[3 << 20, 200_000]).unwrap();
    let second = layout.image("arm64", &[2 << 20, 100_000, 999]).unwrap();
    layout.tag(&first, "first");
    layout.tag(&second, "second");
    layout.finish().unwrap();
    let original = blobs(&source);
    let src = |tag: &str| format!("oci:{}:{tag}", source.display());

    let pull_everywhere = |tag: &str, round: &str| {
        for (i, agent) in agents.iter().enumerate() {
            let out = scratch.path(&format!("out-{round}-{i}"));
            skopeo_copy(
                &format!("docker://{agent}/cluster/app:{tag}"),
                &format!("oci:{}:{tag}", out.display()),
            );
            let copied = blobs(&out);
            assert!(copied.len() >= 3, "agent {i}: {} blobs", copied.len());
            for (name, bytes) in &copied {
                assert!(
                    original.iter().any(|(n, b)| n == name && b == bytes),
                    "agent {i}: blob {name} differs or is unknown"
                );
            }
        }
    };

    // One push (through agent 0, forwarded to the proxy), pulled through all four agents.
    skopeo_copy(
        &src("first"),
        &format!("docker://{}/cluster/app:first", agents[0]),
    );
    pull_everywhere("first", "1");

    // Lose one origin and one tracker, hard.
    cluster.proc("origin0").kill();
    cluster.proc("tracker0").kill();
    skopeo_copy(
        &src("second"),
        &format!("docker://{}/cluster/app:second", agents[1]),
    );
    pull_everywhere("second", "2");

    // The origin comes back and catches up on the blobs it owns (its home share, the same
    // ring every process computes); its HEAD answers from its own store only.
    shoal_perf::procs::wait_port_free(cluster.origins[0].parse().unwrap(), WAIT).unwrap();
    cluster.start_origin(0, &scratch);
    let origin0 = cluster.origins[0].clone();
    let mut config = ClusterConfig::new(cluster.origins.clone());
    config.replicas = REPLICAS;
    let ring = OriginCluster::resolve(config).unwrap();
    let me = origin0.parse().unwrap();
    let mut owned: Vec<String> = blobs(&scratch.path("out-2-0"))
        .into_iter()
        .map(|(hex, _)| format!("sha256:{hex}"))
        .filter(|digest| ring.is_home_owner(me, &Digest::parse(digest).unwrap()))
        .collect();
    assert!(!owned.is_empty(), "origin 0 owns none of the second image");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !owned.is_empty() && Instant::now() < deadline {
        owned.retain(|digest| {
            curl_status(
                &["-I"],
                &format!("http://{origin0}/internal/blobs/{digest}"),
            ) != "200"
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(owned.is_empty(), "origin 0 did not catch up on {owned:?}");
}
