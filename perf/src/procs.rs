//! Running real `shoal` processes from benchmarks and tests: a process guard that kills on
//! drop and hands over stdout line by line, scratch directories, test data, and what
//! `/proc` says about a process (CPU time, peak memory).
//!
//! Every wait is bounded by the caller's limit; every process and directory goes away when
//! its guard drops, also when the caller panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// A scratch directory under /dev/shm (tmpfs: many processes writing at once do not queue
/// behind one disk) or the temporary directory; removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> std::io::Result<Scratch> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("shoal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of a given size mounted at a path, unmounted on drop: a small disk for tests
/// that fill one. Mounting needs root (CI runs as root).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: PathBuf, size: &str) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(&path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "mount -t tmpfs at {} failed ({status}): mounting needs root (CI runs as root)",
                path.display()
            )));
        }
        Ok(Tmpfs(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    /// Unmounts; while something still holds a file there (a process being killed, an
    /// engine not yet dropped), retries for a while, then detaches it lazily (the kernel frees
    /// it once the last file closes), so no mount outlives the test, also on failure.
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        for _ in 0..TMPFS_UMOUNT_TRIES {
            if umount(false) {
                return;
            }
            std::thread::sleep(TMPFS_UMOUNT_PAUSE);
        }
        umount(true);
    }
}

/// How often, and how far apart, [`Tmpfs`] tries a plain unmount before a lazy one.
const TMPFS_UMOUNT_TRIES: u32 = 40;
const TMPFS_UMOUNT_PAUSE: Duration = Duration::from_millis(50);

/// The named processes of one test: each is killed when the group drops (by its own guard),
/// and if the test is panicking the tail of every one's stderr is printed first, so a failed
/// run says what each component said.
#[derive(Debug)]
pub struct ProcGroup {
    program: PathBuf,
    envs: Vec<(String, String)>,
    procs: Vec<(String, Proc)>,
}

impl ProcGroup {
    /// A group whose processes run `program` with `envs` set.
    pub fn new(program: &Path, envs: &[(&str, &str)]) -> ProcGroup {
        ProcGroup {
            program: program.to_path_buf(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            procs: Vec::new(),
        }
    }

    /// Starts `program args` as `name` (stderr in `scratch`, one file per start).
    pub fn start(&mut self, name: &str, args: &[&str], scratch: &Scratch) -> &mut Proc {
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let stderr = scratch.path(&format!("{name}-{}.stderr", self.procs.len()));
        let proc = Proc::start(name, &self.program, args, &envs, stderr)
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_owned(), proc));
        let last = self.procs.len() - 1;
        &mut self.procs[last].1
    }

    /// Kills (SIGKILL) every process started as `name`.
    pub fn kill(&mut self, name: &str) {
        for (n, proc) in &mut self.procs {
            if n == name {
                proc.kill();
            }
        }
    }

    /// The stderr of the process last started as `name` (empty if none or unreadable).
    pub fn stderr_of(&self, name: &str) -> String {
        self.procs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, proc)| std::fs::read_to_string(proc.stderr_path()).ok())
            .unwrap_or_default()
    }
}

impl Drop for ProcGroup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, proc) in &self.procs {
                let tail = proc.stderr_tail(30);
                let _ = writeln!(std::io::stderr(), "--- {name}\n{tail}");
            }
        }
    }
}

/// The address at the end of the `proc`'s first stdout line starting with `prefix` (a
/// component's `… listening on ADDR`), waiting at most `wait_max`.
pub fn listening_addr(proc: &mut Proc, prefix: &str, wait_max: Duration) -> Result<String, String> {
    let line = proc.line_starting(prefix, wait_max)?;
    line.rsplit(' ')
        .next()
        .map(str::to_owned)
        .ok_or_else(|| format!("{prefix:?}: no address in {line:?}"))
}

/// A running process; killed (SIGKILL) on drop. Its stdout lines arrive on a channel; its
/// stderr goes to a file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `program args`, stderr into `stderr_path`, with `envs` set.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        stderr_path: PathBuf,
    ) -> std::io::Result<Proc> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines,
            stderr: stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The next stdout line starting with `prefix` (others are skipped), waiting at most
    /// `wait_max`. The error names the process and quotes the end of its stderr.
    pub fn line_starting(&mut self, prefix: &str, wait_max: Duration) -> Result<String, String> {
        let deadline = Instant::now() + wait_max;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{}: no line starting with {prefix:?} (exit: {:?}); stderr:\n{}",
                        self.name,
                        self.child.try_wait(),
                        self.stderr_tail(30)
                    ));
                }
            }
        }
    }

    /// Waits at most `wait_max` for the process to exit; `Some(success)`, or `None` if it
    /// is still running.
    pub fn wait_exit(&mut self, wait_max: Duration) -> Option<bool> {
        let deadline = Instant::now() + wait_max;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `n` lines of its stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// User + system CPU seconds of the process so far (every thread, io_uring workers
    /// included).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// Peak resident memory (`VmHWM`) in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss_bytes(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// User + system CPU seconds of process `pid`, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let field = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some((field(14)? + field(15)?) / ticks)
}

/// `VmHWM` of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes `len` pseudo-random bytes (xorshift from `seed`) to `path`.
pub fn random_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    let mut state = seed | 1;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!(
        "sha256:{}",
        shoal_proto::types::hex(&hasher.finalize())
    ))
}

/// Where a store keeps the complete blob `digest` (`sha256:<hex>`).
pub fn cached_blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    data_dir
        .join("blobs/sha256")
        .join(hex.get(..2).unwrap_or(""))
        .join(hex)
}

/// Where a store keeps the persisted piece bitfield of a download in progress.
pub fn pieces_file_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    data_dir
        .join("downloads")
        .join(format!("sha256-{hex}"))
        .join("pieces")
}

/// Starts `shoal` processes: a tracker, seeders, getters (`shoal peer …`), agents.
#[derive(Debug, Clone)]
pub struct Shoal {
    /// The `shoal` binary.
    pub binary: PathBuf,
    /// Longest wait for any line of output (a start-up, a whole download).
    pub wait_max: Duration,
    /// `SHOAL_LOG` for every process.
    pub log: String,
    /// Run under `taskset -c <cpus>`.
    pub cpus: Option<String>,
}

impl Shoal {
    pub fn new(binary: PathBuf) -> Shoal {
        Shoal {
            binary,
            wait_max: Duration::from_secs(180),
            log: "info".to_owned(),
            cpus: None,
        }
    }

    /// The same, pinned to `cpus` (a `taskset -c` list).
    pub fn on_cpus(&self, cpus: &str) -> Shoal {
        Shoal {
            cpus: Some(cpus.to_owned()),
            ..self.clone()
        }
    }

    fn start(&self, name: &str, args: &[&str], scratch: &Scratch) -> Result<Proc, String> {
        let stderr = scratch.path(&format!("{name}.stderr"));
        let envs = [("SHOAL_LOG", self.log.as_str())];
        let started = match &self.cpus {
            None => Proc::start(name, &self.binary, args, &envs, stderr),
            Some(cpus) => {
                let binary = self.binary.to_string_lossy();
                let mut wrapped = vec!["-c", cpus, &*binary];
                wrapped.extend_from_slice(args);
                Proc::start(name, Path::new("taskset"), &wrapped, &envs, stderr)
            }
        };
        started.map_err(|e| format!("starting {name}: {e}"))
    }

    /// `shoal tracker` on an ephemeral loopback port; returns it and its address.
    pub fn tracker(&self, scratch: &Scratch) -> Result<(Proc, String), String> {
        let mut tracker =
            self.start("tracker", &["tracker", "--listen", "127.0.0.1:0"], scratch)?;
        let line = tracker.line_starting("tracker listening on ", self.wait_max)?;
        let addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
        Ok((tracker, addr))
    }

    /// `peer <command> --data-dir scratch/<name> --tracker T --listen 127.0.0.1:0 EXTRA… LAST`.
    fn peer_args(
        command: &str,
        scratch: &Scratch,
        name: &str,
        tracker: &str,
        extra: &[&str],
        last: &str,
    ) -> Vec<String> {
        let data = scratch.path(name).to_string_lossy().into_owned();
        let mut args: Vec<String> = ["peer", command, "--data-dir", &data, "--tracker", tracker]
            .iter()
            .chain(&["--listen", "127.0.0.1:0"])
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(last.to_owned());
        args
    }

    /// `shoal peer seed` of `file` with its store in `scratch/<name>`; returns it and the
    /// blob's digest once it seeds.
    pub fn seeder(
        &self,
        name: &str,
        scratch: &Scratch,
        tracker: &str,
        file: &Path,
        extra: &[&str],
    ) -> Result<(Proc, String), String> {
        let file = file.to_string_lossy();
        let args = Self::peer_args("seed", scratch, name, tracker, extra, &file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut seeder = self.start(name, &args, scratch)?;
        let line = seeder.line_starting("seeding ", self.wait_max)?;
        let digest = line.split(' ').nth(1).unwrap_or_default().to_owned();
        Ok((seeder, digest))
    }

    /// `shoal peer get` of `digest` with its store in `scratch/<name>`.
    pub fn getter(
        &self,
        name: &str,
        scratch: &Scratch,
        tracker: &str,
        digest: &str,
        extra: &[&str],
    ) -> Result<Proc, String> {
        let args = Self::peer_args("get", scratch, name, tracker, extra, digest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start(name, &args, scratch)
    }

    /// `shoal agent` with its store in `scratch/<name>` and its pull API on an ephemeral
    /// loopback port; returns it and that address once it serves.
    pub fn agent(
        &self,
        name: &str,
        scratch: &Scratch,
        tracker: &str,
        extra: &[&str],
    ) -> Result<(Proc, String), String> {
        let data = scratch.path(name);
        let data = data.to_string_lossy();
        let mut args = vec![
            "agent",
            "--data-dir",
            &*data,
            "--tracker",
            tracker,
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut agent = self.start(name, &args, scratch)?;
        let line = agent.line_starting("agent listening on ", self.wait_max)?;
        let addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
        Ok((agent, addr))
    }

    /// The JSON object a getter prints when its blob is complete.
    pub fn completion(&self, getter: &mut Proc) -> Result<serde_json::Value, String> {
        let line = getter.line_starting("{", self.wait_max)?;
        serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))
    }
}

/// A running `shoal dev` (every component in one process).
#[derive(Debug)]
pub struct DevCluster {
    pub proc: Proc,
    /// The agent's address: pulls, and pushes it forwards to the proxy.
    pub agent: String,
    /// `--ports-from`: tracker +0, origin +100, build-index +200, proxy +300.
    pub ports_from: u16,
    /// `--data-dir`: `origin/`, `build-index/`, `proxy/`, `agent/` inside.
    pub data: PathBuf,
}

impl Shoal {
    /// Starts `shoal dev` with its stores under `scratch`, on a port range derived from the
    /// process id and `salt` (other ranges tried if one is taken), and waits until it is
    /// ready.
    pub fn dev(&self, scratch: &Scratch, salt: u32) -> Result<DevCluster, String> {
        const ATTEMPTS: u32 = 8;
        let pid = std::process::id();
        for attempt in 0..ATTEMPTS {
            // Ranges of 500 ports between 20,000 and 55,000: below the kernel's ephemeral
            // range, so no outgoing connection holds one of them.
            let slot = pid
                .wrapping_mul(7)
                .wrapping_add(salt * 131 + attempt * 1009)
                % 70;
            let ports_from = 20_000 + (slot as u16) * 500;
            let agent = format!("127.0.0.1:{}", ports_from + 450);
            let name = format!("dev-{salt}-{attempt}");
            let data = scratch.path(&name);
            let data_arg = data.to_string_lossy().into_owned();
            let ports_arg = ports_from.to_string();
            let args = [
                "dev",
                "--data-dir",
                &data_arg,
                "--ports-from",
                &ports_arg,
                "--agent-listen",
                &agent,
            ];
            let mut proc = self.start(&name, &args, scratch)?;
            if proc.line_starting("shoal dev ready", self.wait_max).is_ok() {
                return Ok(DevCluster {
                    proc,
                    agent,
                    ports_from,
                    data,
                });
            }
        }
        Err(format!(
            "shoal dev did not start on any of {ATTEMPTS} port ranges"
        ))
    }
}

/// A free loopback port for a server that must be named before it starts: picked between
/// 20,000 and 32,000, below the kernel's ephemeral range (so no outgoing connection holds
/// it), bound once to check, then released (another process could take it in between,
/// which tests accept).
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000
            + (std::process::id()
                .wrapping_mul(31)
                .wrapping_add(n.wrapping_mul(7919))
                % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port between 20000 and 32000",
    ))
}

/// Waits until something accepts connections at `addr`, at most `wait_max`; the error holds
/// the tail of `proc`'s stderr.
pub fn wait_listening(addr: SocketAddr, proc: &Proc, wait_max: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait_max;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{addr} never listened; stderr:\n{}",
                proc.stderr_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// moto's S3 server (`moto_server`, from PyPI's `moto[server]`) on `127.0.0.1:port` with
/// `bucket` created (moto keeps objects in memory: a restarted server is empty). Its
/// request log goes to `scratch/<log>`.
pub fn moto_server(scratch: &Scratch, port: u16, bucket: &str, log: &str) -> Result<Proc, String> {
    let port_text = port.to_string();
    let proc = Proc::start(
        "moto_server",
        Path::new("moto_server"),
        &["-H", "127.0.0.1", "-p", &port_text],
        &[("PYTHONUNBUFFERED", "1")],
        scratch.path(log),
    )
    .map_err(|e| format!("moto_server (pip install 'moto[server]'): {e}"))?;
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &proc,
        Duration::from_secs(60),
    )?;
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .arg(format!("http://127.0.0.1:{port}/{bucket}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if status.stdout != b"200" {
        return Err(format!("creating bucket {bucket}: {status:?}"));
    }
    Ok(proc)
}

/// Whether an executable named `name` is on `PATH`.
pub fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Whether the tests must fail, rather than skip, when an emulator is not installed
/// (`SHOAL_REQUIRE_EMULATORS` set to anything).
pub fn emulators_required() -> bool {
    std::env::var_os("SHOAL_REQUIRE_EMULATORS").is_some()
}

/// The Google Cloud Storage emulator (`gcp-storage-emulator`, from PyPI) on
/// `127.0.0.1:port`, in memory (a restarted emulator is empty), with `bucket` created. Its
/// request log goes to `scratch/<log>`.
pub fn gcs_emulator(scratch: &Scratch, port: u16, bucket: &str, log: &str) -> Result<Proc, String> {
    let port_text = port.to_string();
    let proc = Proc::start(
        "gcp-storage-emulator",
        Path::new("gcp-storage-emulator"),
        &[
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port_text,
            "--in-memory",
            "--default-bucket",
            bucket,
        ],
        &[("PYTHONUNBUFFERED", "1")],
        scratch.path(log),
    )
    .map_err(|e| format!("gcp-storage-emulator (pip install gcp-storage-emulator): {e}"))?;
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &proc,
        Duration::from_secs(60),
    )?;
    Ok(proc)
}

/// Debian's `docker-registry` (CNCF distribution) serving `storage` on `127.0.0.1:port`,
/// with `extra` (YAML, e.g. an `auth:` section) appended to its config. Its access log (one
/// line per request, `"METHOD PATH HTTP/1.1" STATUS …`, written once the request is
/// answered) goes to `scratch/<name>.log`; see [`requests_in_log`].
pub fn docker_registry(
    scratch: &Scratch,
    name: &str,
    port: u16,
    storage: &Path,
    extra: &str,
) -> Result<Proc, String> {
    let config = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n{extra}",
        storage.display()
    );
    let config_path = scratch.path(&format!("{name}.yml"));
    std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let log = scratch.path(&format!("{name}.log"));
    let (config_text, log_text) = (config_path.to_string_lossy(), log.to_string_lossy());
    // The access log goes to stdout: into the log file (`exec` keeps the pid, so dropping
    // the Proc kills the registry itself).
    let proc = Proc::start(
        name,
        Path::new("sh"),
        &[
            "-c",
            "exec docker-registry serve \"$0\" >>\"$1\"",
            &config_text,
            &log_text,
        ],
        &[],
        scratch.path(&format!("{name}.stderr")),
    )
    .map_err(|e| format!("docker-registry (apt install docker-registry): {e}"))?;
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &proc,
        Duration::from_secs(60),
    )?;
    Ok(proc)
}

/// Requests `METHOD PATH` (exactly that path, no query) in a distribution access log.
pub fn requests_in_log(log: &Path, method: &str, path: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!("\"{method} {path} ");
    text.lines().filter(|line| line.contains(&needle)).count()
}

/// Where distribution's filesystem storage keeps a blob's bytes.
pub fn docker_registry_blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(hex.get(..2).unwrap_or(""))
        .join(hex)
        .join("data")
}

/// Waits (at most `wait_max`) until `addr` can be bound again: after a SIGKILL the kernel
/// releases an io_uring process's sockets only once the ring is torn down, a little after
/// the process is reaped, so a restart on the same port waits for this first.
pub fn wait_port_free(addr: SocketAddr, wait_max: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait_max;
    while std::net::TcpListener::bind(addr).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("{addr} still in use after {wait_max:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
