//! Serving a cached blob over HTTP on loopback: the Shoal agent next to nginx (`sendfile on`)
//! and the CNCF distribution registry (Debian `docker-registry`), the same bytes, in the same
//! run. Each server runs pinned to CPU 0, `curl -o /dev/null` on CPU 1; the figure that
//! decides is the server's CPU seconds per GiB served (user + system of its processes, from
//! `/proc`), since on two cores the client limits the throughput.
//!
//! ```text
//! apt-get install nginx-light docker-registry curl     # what .ci/run installs for the tests
//! cargo build --release -p shoal -p shoal-perf
//! target/release/serve_bench [--mib 1024] [--rounds 3]
//! ```
//!
//! The blob lives on /dev/shm. The agent gets it through the swarm from a `shoal peer seed`
//! first (not measured), then serves it from its cache; the registry gets it by a monolithic
//! upload; nginx serves the file itself.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_perf::procs::{Proc, Scratch, Shoal, cpu_seconds, random_file, sha256_file};

#[derive(Parser, Debug)]
#[command(about = "A cached blob over HTTP: Shoal's agent, nginx and docker-registry")]
struct Cli {
    /// The `shoal` binary (default: next to this program).
    #[arg(long)]
    shoal: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = match cli.shoal.clone() {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("shoal"),
            Err(error) => {
                eprintln!("serve_bench: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(&cli, binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("serve_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn io(error: std::io::Error) -> String {
    error.to_string()
}

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// Waits until `url` answers (any status), at most [`WAIT`].
fn wait_http(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", url])
            .status()
            .map_err(io)?;
        if status.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{url} never answered"))
}

/// One `curl -o /dev/null` of `url` on CPU 1: (seconds, bytes).
fn fetch(url: &str) -> Result<(f64, u64), String> {
    let started = Instant::now();
    let output = Command::new("taskset")
        .args([
            "-c",
            "1",
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ])
        .output()
        .map_err(io)?;
    if !output.status.success() {
        return Err(format!("curl {url} failed"));
    }
    let bytes = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| "curl printed no size".to_owned())?;
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// CPU seconds of `pids` together.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum()
}

/// Medians of `rounds` measured fetches: (GB/s, server CPU-s/GiB).
fn measure(url: &str, server: &[u32], len: u64, rounds: usize) -> Result<(f64, f64), String> {
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before = cpu_of(server);
        let (seconds, bytes) = fetch(url)?;
        let cpu = cpu_of(server) - before;
        if bytes != len {
            return Err(format!("{url}: {bytes} bytes, expected {len}"));
        }
        rates.push(len as f64 / seconds / 1e9);
        cpus.push(cpu / (len as f64 / (1u64 << 30) as f64));
    }
    rates.sort_by(f64::total_cmp);
    cpus.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], cpus[cpus.len() / 2]))
}

fn run(cli: &Cli, binary: PathBuf) -> Result<(), String> {
    let scratch = Scratch::new("serve-bench").map_err(io)?;
    let len = cli.mib * MIB;
    let blob = scratch.path("blob");
    random_file(&blob, len, 47).map_err(io)?;
    let digest = sha256_file(&blob).map_err(io)?;
    let mut rows = Vec::new();

    // nginx, serving the file with sendfile; one process (no master), so that killing it
    // leaves no worker behind.
    let nginx_port = free_port()?;
    let nginx = start_nginx(&scratch, nginx_port)?;
    let url = format!("http://127.0.0.1:{nginx_port}/blob");
    wait_http(&url)?;
    fetch(&url)?; // warm
    rows.push((
        "nginx 1.22, sendfile on",
        measure(&url, &[nginx.pid()], len, cli.rounds)?,
    ));
    drop(nginx);

    // The distribution registry, the blob uploaded monolithically.
    let registry_port = free_port()?;
    let registry = start_registry(&scratch, registry_port)?;
    let base = format!("http://127.0.0.1:{registry_port}");
    wait_http(&format!("{base}/v2/"))?;
    upload_to_registry(&base, &blob, &digest)?;
    let url = format!("{base}/v2/bench/blobs/{digest}");
    fetch(&url)?;
    rows.push((
        "docker-registry 2.8 (filesystem)",
        measure(&url, &[registry.pid()], len, cli.rounds)?,
    ));
    drop(registry);

    // Shoal: a seeder, then the agent pinned to CPU 0 with one shard; the first GET fills
    // its cache through the swarm.
    let mut shoal = Shoal::new(binary);
    shoal.log = "warn".to_owned();
    let (_tracker, tracker) = shoal.tracker(&scratch)?;
    let (_seeder, seeded) = shoal.seeder("seeder", &scratch, &tracker, &blob, &[])?;
    if seeded != digest {
        return Err(format!("seeder says {seeded}, file is {digest}"));
    }
    let (agent, addr) =
        shoal
            .on_cpus("0")
            .agent("agent", &scratch, &tracker, &["--shards", "1", "--no-pin"])?;
    let url = format!("http://{addr}/v2/bench/blobs/{digest}");
    fetch(&url)?;
    fetch(&url)?;
    rows.push((
        "Shoal agent (cache hit)",
        measure(&url, &[agent.pid()], len, cli.rounds)?,
    ));

    println!(
        "a cached {} MiB blob to curl on loopback, server on CPU 0, curl on CPU 1, medians of {} rounds",
        cli.mib, cli.rounds
    );
    println!("| server | GB/s | server CPU-s/GiB |");
    println!("|---|---|---|");
    for (name, (rate, cpu)) in &rows {
        println!("| {name} | {rate:.2} | {cpu:.3} |");
    }
    Ok(())
}

/// The registry's two-step upload: POST for a session, then PUT of the whole file (curl
/// streams it with `-T`).
fn upload_to_registry(base: &str, blob: &Path, digest: &str) -> Result<(), String> {
    let started = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-D", "-", "-X", "POST"])
        .arg(format!("{base}/v2/bench/blobs/uploads/"))
        .output()
        .map_err(io)?;
    let headers = String::from_utf8_lossy(&started.stdout);
    let location = headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .ok_or("docker-registry gave no upload Location")?;
    let separator = if location.contains('?') { '&' } else { '?' };
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let put = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT", "-T"])
        .arg(blob)
        .arg(format!("{location}{separator}digest={digest}"))
        .status()
        .map_err(io)?;
    if !put.success() {
        return Err("uploading to docker-registry failed".into());
    }
    Ok(())
}

fn start_nginx(scratch: &Scratch, port: u16) -> Result<Proc, String> {
    let root = scratch.root();
    let conf = scratch.path("nginx.conf");
    let text = format!(
        "daemon off;\nmaster_process off;\nerror_log {err} warn;\npid {pid};\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n\
         client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
         uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        err = root.join("nginx-error.log").display(),
        pid = root.join("nginx.pid").display(),
        tmp = root.display(),
        root = root.display(),
    );
    std::fs::write(&conf, text).map_err(io)?;
    let conf = conf.to_string_lossy().into_owned();
    let prefix = root.to_string_lossy().into_owned();
    start_pinned(
        "nginx",
        Path::new("nginx"),
        &["-c", &conf, "-p", &prefix],
        scratch,
    )
}

fn start_registry(scratch: &Scratch, port: u16) -> Result<Proc, String> {
    let storage = scratch.path("registry");
    std::fs::create_dir_all(&storage).map_err(io)?;
    let conf = scratch.path("registry.yml");
    let text = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    std::fs::write(&conf, text).map_err(io)?;
    let conf = conf.to_string_lossy().into_owned();
    start_pinned(
        "registry",
        Path::new("docker-registry"),
        &["serve", &conf],
        scratch,
    )
}

/// Starts `program args` under `taskset -c 0`, guarded like every process here.
fn start_pinned(
    name: &str,
    program: &Path,
    args: &[&str],
    scratch: &Scratch,
) -> Result<Proc, String> {
    let program = program.to_string_lossy();
    let mut wrapped = vec!["-c", "0", &*program];
    wrapped.extend_from_slice(args);
    Proc::start(
        name,
        Path::new("taskset"),
        &wrapped,
        &[],
        scratch.path(&format!("{name}.stderr")),
    )
    .map_err(|e| format!("starting {name}: {e}"))
}
