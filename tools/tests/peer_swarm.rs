//! The engine as real processes on 127.0.0.1: a `shoal tracker`, `shoal peer seed` and
//! `shoal peer get` processes moving real blobs over real sockets and disks.
//!
//! Every process is killed when its guard drops (also when an assertion fails), every wait
//! is bounded, and every scratch directory is removed. Data lives under /dev/shm when it
//! exists, so that ten processes do not queue behind one disk's fsyncs.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// Longest wait for any one thing a test waits for (a line of output, a download).
const WAIT_MAX: Duration = Duration::from_secs(180);

fn shoal() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("shoal-swarm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `shoal` process; killed on drop. Its stdout lines arrive on a channel.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    fn start(name: &str, args: &[&str], scratch: &Scratch) -> Proc {
        let stderr = scratch.path(&format!("{name}.stderr"));
        let mut child = Command::new(shoal())
            .args(args)
            .env("SHOAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line that starts with `prefix` (others are skipped).
    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no line starting with {prefix:?} (exit: {:?}); stderr:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Waits for the process to exit (bounded) and returns whether it succeeded.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + WAIT_MAX;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{}: did not exit", self.name);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_tracker(scratch: &Scratch) -> (Proc, String) {
    let mut tracker = Proc::start("tracker", &["tracker", "--listen", "127.0.0.1:0"], scratch);
    let line = tracker.line_starting("tracker listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (tracker, addr)
}

/// `shoal peer seed` of `file`; returns the process and the blob's digest.
fn start_seeder(
    name: &str,
    scratch: &Scratch,
    tracker: &str,
    file: &Path,
    extra: &[&str],
) -> (Proc, String) {
    let data = scratch.path(name);
    let mut args = vec![
        "peer",
        "seed",
        "--data-dir",
        data.to_str().unwrap(),
        "--tracker",
        tracker,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    let mut seeder = Proc::start(name, &args, scratch);
    let line = seeder.line_starting("seeding ");
    let digest = line.split(' ').nth(1).unwrap().to_owned();
    (seeder, digest)
}

fn start_getter(
    name: &str,
    scratch: &Scratch,
    tracker: &str,
    digest: &str,
    extra: &[&str],
) -> Proc {
    let data = scratch.path(name);
    let out = scratch.path(&format!("{name}.out"));
    let mut args = vec![
        "peer",
        "get",
        "--data-dir",
        data.to_str().unwrap(),
        "--tracker",
        tracker,
        "--listen",
        "127.0.0.1:0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(digest);
    Proc::start(name, &args, scratch)
}

/// The JSON line a getter prints when its blob is complete.
fn completion(getter: &mut Proc) -> serde_json::Value {
    let line = getter.line_starting("{");
    serde_json::from_str(&line).unwrap()
}

fn random_file(path: &Path, len: usize, seed: u64) {
    // xorshift: fast, and no two tests share bytes.
    let mut state = seed | 1;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", shoal_proto::types::hex(&hasher.finalize()))
}

/// The complete blob in a store.
fn cached_blob(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// The persisted piece bitfield of a download in progress.
fn pieces_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir
        .join("downloads")
        .join(format!("sha256-{hex}"))
        .join("pieces")
}

fn count_ones(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|bytes| bytes.iter().map(|b| u64::from(b.count_ones())).sum())
        .unwrap_or(0)
}

/// Runs a swarm of one seeder and `n_getters` downloaders (which keep seeding) and checks
/// that every copy, in the cache and as streamed out, is the source byte for byte.
fn swarm(test: &str, blob_len: usize, n_getters: usize, extra: &[&str]) {
    let scratch = Scratch::new(test);
    let source = scratch.path("blob");
    random_file(&source, blob_len, blob_len as u64 ^ n_getters as u64);
    let expected = sha256_file(&source);
    let (_tracker, tracker) = start_tracker(&scratch);
    let (_seeder, digest) = start_seeder("seeder", &scratch, &tracker, &source, extra);
    assert_eq!(digest, expected);
    let mut args = vec!["--seed-after"];
    args.extend_from_slice(extra);
    let mut getters: Vec<Proc> = (0..n_getters)
        .map(|i| start_getter(&format!("getter{i}"), &scratch, &tracker, &digest, &args))
        .collect();
    for (i, getter) in getters.iter_mut().enumerate() {
        let done = completion(getter);
        assert_eq!(done["digest"], digest.as_str());
        assert_eq!(done["pieces_failed"], 0);
        let name = format!("getter{i}");
        assert_eq!(
            sha256_file(&cached_blob(&scratch.path(&name), &digest)),
            expected,
            "{name}'s cached copy"
        );
        assert_eq!(
            sha256_file(&scratch.path(&format!("{name}.out"))),
            expected,
            "{name}'s streamed copy"
        );
    }
}

#[test]
fn one_seeder_eight_downloaders_get_identical_copies() {
    swarm("eight", 256 << 20, 8, &[]);
}

#[test]
fn swarm_works_on_the_polling_driver() {
    swarm("poll", 64 << 20, 4, &["--driver", "poll"]);
}

#[test]
fn killed_download_resumes_without_refetching_stored_pieces() {
    let scratch = Scratch::new("resume");
    let source = scratch.path("blob");
    let blob_len = 128 << 20;
    random_file(&source, blob_len, 7);
    let expected = sha256_file(&source);
    let (_tracker, tracker) = start_tracker(&scratch);
    // A slow seeder (32 MiB/s), so that the kill lands mid-transfer.
    let (mut seeder, digest) = start_seeder(
        "seeder",
        &scratch,
        &tracker,
        &source,
        &["--egress-limit", "33554432"],
    );
    let data = scratch.path("getter");
    let pieces = pieces_file(&data, &digest);
    let mut getter = start_getter("getter", &scratch, &tracker, &digest, &[]);
    let deadline = Instant::now() + WAIT_MAX;
    while count_ones(&pieces) < 16 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    getter.kill(); // SIGKILL
    let stored_before = count_ones(&pieces);
    assert!(
        (16..128).contains(&stored_before),
        "{stored_before}"
    );
    seeder.kill();
    let (_seeder, _) = start_seeder("seeder2", &scratch, &tracker, &source, &[]);

    let mut getter = start_getter("getter", &scratch, &tracker, &digest, &[]);
    let done = completion(&mut getter);
    assert_eq!(done["pieces_resumed"], stored_before);
    assert_eq!(
        done["pieces_fetched_resumed"], 0,
        "a stored piece was fetched again"
    );
    assert!(done["pieces_fetched"].as_u64().unwrap() >= 128 - stored_before);
    assert!(getter.wait_exit());
    assert_eq!(sha256_file(&cached_blob(&data, &digest)), expected);
    assert_eq!(sha256_file(&scratch.path("getter.out")), expected);
}

#[test]
fn reader_started_before_completion_gets_the_whole_blob() {
    let scratch = Scratch::new("stream");
    let source = scratch.path("blob");
    random_file(&source, 64 << 20, 11);
    let expected = sha256_file(&source);
    let (_tracker, tracker) = start_tracker(&scratch);
    // 16 MiB/s: the download takes about four seconds, the reader starts at once.
    let (_seeder, digest) = start_seeder(
        "seeder",
        &scratch,
        &tracker,
        &source,
        &["--egress-limit", "16777216"],
    );
    let mut getter = start_getter("getter", &scratch, &tracker, &digest, &[]);
    let done = completion(&mut getter);
    assert_eq!(done["first_chunk_before_complete"], true);
    assert_eq!(sha256_file(&scratch.path("getter.out")), expected);
}

#[test]
fn corrupt_peer_is_dropped_and_the_others_finish() {
    let scratch = Scratch::new("corrupt");
    let source = scratch.path("blob");
    let blob_len = 32 << 20;
    random_file(&source, blob_len, 13);
    let expected = sha256_file(&source);
    let (_tracker, tracker) = start_tracker(&scratch);
    // The honest copy is an origin: peers ask it only for pieces nobody else has, so they
    // go to the liar first.
    let (_origin, digest) = start_seeder("origin", &scratch, &tracker, &source, &["--origin"]);
    let (_liar, _) = start_seeder("liar", &scratch, &tracker, &source, &[]);
    // The liar's disk goes bad: every byte of its cached copy changes, in place (it keeps
    // serving from the same file).
    let liar_copy = cached_blob(&scratch.path("liar"), &digest);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&liar_copy)
        .unwrap();
    file.write_all(&vec![0x5a; blob_len]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let mut getters: Vec<Proc> = (0..3)
        .map(|i| start_getter(&format!("getter{i}"), &scratch, &tracker, &digest, &[]))
        .collect();
    let mut failed = 0;
    for (i, getter) in getters.iter_mut().enumerate() {
        let done = completion(getter);
        failed += done["pieces_failed"].as_u64().unwrap();
        assert_eq!(
            sha256_file(&scratch.path(&format!("getter{i}.out"))),
            expected
        );
    }
    assert!(failed >= 1, "nobody was sent a corrupt piece");
    let log = std::fs::read_to_string(scratch.path("getter0.stderr")).unwrap();
    assert!(
        log.contains("blacklisted"),
        "getter0 did not blacklist the liar:\n{log}"
    );
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI runs as root)"
        );
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_ends_the_download_with_a_clear_error() {
    let scratch = Scratch::new("full");
    let source = scratch.path("blob");
    random_file(&source, 64 << 20, 17);
    let (_tracker, tracker) = start_tracker(&scratch);
    let (_seeder, digest) = start_seeder("seeder", &scratch, &tracker, &source, &[]);
    let small = Tmpfs::mount(scratch.path("small"), "16m");
    let data = small.0.join("data");
    let mut getter = Proc::start(
        "getter",
        &[
            "peer",
            "get",
            "--data-dir",
            data.to_str().unwrap(),
            "--tracker",
            &tracker,
            "--listen",
            "127.0.0.1:0",
            &digest,
        ],
        &scratch,
    );
    assert!(!getter.wait_exit(), "the download cannot fit");
    let log = std::fs::read_to_string(&getter.stderr).unwrap();
    assert!(log.contains("no space"), "unclear error:\n{log}");
    // Nothing half-written is left: no blob, no download directory.
    assert!(!cached_blob(&data, &digest).exists());
    let downloads: Vec<_> = std::fs::read_dir(data.join("downloads")).unwrap().collect();
    assert!(downloads.is_empty(), "{downloads:?}");
}
