//! The engine as real processes on 127.0.0.1: a `shoal tracker`, `shoal peer seed` and
//! `shoal peer get` processes moving real blobs over real sockets and disks.
//!
//! Every process is killed when its guard drops (also when an assertion fails), every wait
//! is bounded, and every scratch directory is removed. Data lives under /dev/shm when it
//! exists, so that ten processes do not queue behind one disk's fsyncs.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_perf::procs::{
    Proc, Scratch, Shoal, Tmpfs, cached_blob_path as cached_blob, pieces_file_path as pieces_file,
    sha256_file,
};

/// Longest wait for any one thing a test waits for (a line of output, a download).
const WAIT_MAX: Duration = Duration::from_secs(180);

fn shoal() -> Shoal {
    let mut shoal = Shoal::new(PathBuf::from(env!("CARGO_BIN_EXE_shoal")));
    shoal.wait_max = WAIT_MAX;
    shoal
}

fn scratch(test: &str) -> Scratch {
    Scratch::new(&format!("swarm-{test}")).unwrap()
}

fn random_file(path: &Path, len: usize, seed: u64) {
    shoal_perf::procs::random_file(path, len as u64, seed).unwrap();
}

fn start_tracker(scratch: &Scratch) -> (Proc, String) {
    shoal().tracker(scratch).unwrap()
}

fn start_seeder(
    name: &str,
    scratch: &Scratch,
    tracker: &str,
    file: &Path,
    extra: &[&str],
) -> (Proc, String) {
    shoal().seeder(name, scratch, tracker, file, extra).unwrap()
}

/// A getter that streams the blob to `<scratch>/<name>.out`.
fn start_getter(
    name: &str,
    scratch: &Scratch,
    tracker: &str,
    digest: &str,
    extra: &[&str],
) -> Proc {
    let out = scratch.path(&format!("{name}.out"));
    let mut args = vec!["--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    shoal()
        .getter(name, scratch, tracker, digest, &args)
        .unwrap()
}

/// The JSON line a getter prints when its blob is complete.
fn completion(getter: &mut Proc) -> serde_json::Value {
    shoal().completion(getter).unwrap()
}

fn sha256(path: &Path) -> String {
    sha256_file(path).unwrap()
}

fn count_ones(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|bytes| bytes.iter().map(|b| u64::from(b.count_ones())).sum())
        .unwrap_or(0)
}

/// Runs a swarm of one seeder and `n_getters` downloaders (which keep seeding) and checks
/// that every copy, in the cache and as streamed out, is the source byte for byte.
fn swarm(test: &str, blob_len: usize, n_getters: usize, extra: &[&str]) {
    let scratch = scratch(test);
    let source = scratch.path("blob");
    random_file(&source, blob_len, blob_len as u64 ^ n_getters as u64);
    let expected = sha256(&source);
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
            sha256(&cached_blob(&scratch.path(&name), &digest)),
            expected,
            "{name}'s cached copy"
        );
        assert_eq!(
            sha256(&scratch.path(&format!("{name}.out"))),
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
    let scratch = scratch("resume");
    let source = scratch.path("blob");
    let blob_len = 128 << 20;
    random_file(&source, blob_len, 7);
    let expected = sha256(&source);
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
    assert!((16..128).contains(&stored_before), "{stored_before}");
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
    assert_eq!(getter.wait_exit(WAIT_MAX), Some(true));
    assert_eq!(sha256(&cached_blob(&data, &digest)), expected);
    assert_eq!(sha256(&scratch.path("getter.out")), expected);
}

#[test]
fn reader_started_before_completion_gets_the_whole_blob() {
    let scratch = scratch("stream");
    let source = scratch.path("blob");
    random_file(&source, 64 << 20, 11);
    let expected = sha256(&source);
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
    // The reader was open while the download ran, and, since the piece it waits for is
    // fetched before the rarest-first ones, its first bytes came long before the end.
    assert_eq!(done["reader_started_before_complete"], true);
    assert_eq!(done["first_chunk_before_complete"], true);
    assert_eq!(sha256(&scratch.path("getter.out")), expected);
}

#[test]
fn corrupt_peer_is_dropped_and_the_others_finish() {
    let scratch = scratch("corrupt");
    let source = scratch.path("blob");
    let blob_len = 32 << 20;
    random_file(&source, blob_len, 13);
    let expected = sha256(&source);
    let (_tracker, tracker) = start_tracker(&scratch);
    let (_liar, digest) = start_seeder("liar", &scratch, &tracker, &source, &[]);
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

    // At first the liar is the only source: every getter is sent a bad piece and drops it.
    let mut getters: Vec<Proc> = (0..3)
        .map(|i| start_getter(&format!("getter{i}"), &scratch, &tracker, &digest, &[]))
        .collect();
    let deadline = Instant::now() + WAIT_MAX;
    for getter in &getters {
        loop {
            let log = std::fs::read_to_string(getter.stderr_path()).unwrap_or_default();
            if log.contains("blacklisted") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a getter never blacklisted the liar"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Then an honest origin appears, and everyone finishes with the right bytes.
    let (_origin, _) = start_seeder("origin", &scratch, &tracker, &source, &["--origin"]);
    for (i, getter) in getters.iter_mut().enumerate() {
        let done = completion(getter);
        assert!(done["pieces_failed"].as_u64().unwrap() >= 1);
        assert_eq!(sha256(&scratch.path(&format!("getter{i}.out"))), expected);
    }
}

#[test]
fn full_disk_ends_the_download_with_a_clear_error() {
    let scratch = scratch("full");
    let source = scratch.path("blob");
    random_file(&source, 64 << 20, 17);
    let (_tracker, tracker) = start_tracker(&scratch);
    let (_seeder, digest) = start_seeder("seeder", &scratch, &tracker, &source, &[]);
    let small = Tmpfs::mount(scratch.path("small"), "16m").unwrap();
    let data = small.path().join("data");
    // The getter's store is on the small tmpfs, not in the scratch directory.
    let mut getter = Proc::start(
        "getter",
        &shoal().binary,
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
        &[("SHOAL_LOG", "info")],
        scratch.path("getter.stderr"),
    )
    .unwrap();
    assert_eq!(
        getter.wait_exit(WAIT_MAX),
        Some(false),
        "the download cannot fit"
    );
    let log = std::fs::read_to_string(getter.stderr_path()).unwrap();
    assert!(log.contains("no space"), "unclear error:\n{log}");
    // Nothing half-written is left: no blob, no download directory.
    assert!(!cached_blob(&data, &digest).exists());
    let downloads: Vec<_> = std::fs::read_dir(data.join("downloads")).unwrap().collect();
    assert!(downloads.is_empty(), "{downloads:?}");
}
