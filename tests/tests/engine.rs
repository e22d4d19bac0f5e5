//! The engine's API in one process: two or three `Engine`s (each with its own shards and
//! store) and a real tracker server, over loopback. The multi-process swarm tests (real
//! `shoal` processes, SIGKILL, disk full) are in `tools/tests/peer_swarm.rs`.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_engine::{BlobState, Driver, Engine, EngineConfig, EngineError};
use shoal_perf::procs::{Scratch, Tmpfs};
use shoal_proto::Digest;
use shoal_servers::tracker::{TrackerServerConfig, serve};

fn run<F: Future>(body: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(body)
}

/// A real tracker on its own thread and runtime, for the whole test process.
fn tracker() -> SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(async move {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, TrackerServerConfig::default(), 7)
                .await
                .unwrap();
        });
    });
    receiver.recv().unwrap()
}

/// A scratch directory (tmpfs when there is one), removed on drop.
struct Dir(Scratch);

impl Dir {
    fn new(name: &str) -> Dir {
        Dir(Scratch::new(&format!("engine-{name}")).unwrap())
    }

    fn path(&self) -> &Path {
        self.0.root()
    }
}

fn engine(
    dir: &Path,
    name: &str,
    tracker: SocketAddr,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Engine {
    let mut config = EngineConfig::new(dir.join(name), vec![tracker]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.shards = 2;
    config.pin_threads = false;
    tweak(&mut config);
    Engine::start(config).unwrap()
}

fn blob_file(dir: &Path, len: usize, seed: u8) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect();
    let path = dir.join(format!("blob-{seed}"));
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Reads a whole stream.
async fn read_all(mut stream: shoal_engine::BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        let (result, chunk) = stream.next_chunk(buf).await;
        result.unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
        buf = chunk;
    }
}

#[test]
fn a_range_read_through_a_running_download_is_exact() {
    let dir = Dir::new("range");
    let tracker = tracker();
    // 20 MiB in 1 MiB pieces: one stripe.
    let (path, bytes) = blob_file(dir.path(), 20 << 20, 1);
    let seeder = engine(dir.path(), "seeder", tracker, |_| {});
    let getter = engine(dir.path(), "getter", tracker, |_| {});
    run(async {
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        // Starts mid-piece, ends mid-piece.
        let range = (3 << 20) + 12_345..(17 << 20) + 99;
        let stream = getter.open(&digest, Some(range.clone())).await.unwrap();
        let read = read_all(stream).await;
        assert_eq!(read, bytes[range.start as usize..range.end as usize]);
        getter.wait_complete(&digest).await.unwrap();
        let whole = read_all(getter.open(&digest, None).await.unwrap()).await;
        assert_eq!(whole, bytes);
        let status = getter.status(&digest).unwrap();
        assert_eq!(status.state, BlobState::Seeding);
        assert_eq!(status.pieces_stored, status.n_pieces);
        assert_eq!(status.pieces_failed, 0);
        let stats = getter.stats();
        assert_eq!(stats.shards.len(), 2);
        assert!(stats.total.pieces_verified >= u64::from(status.n_pieces));
        assert!(stats.total.bytes_in_from_agents >= bytes.len() as u64);
        assert!(seeder.stats().total.bytes_out_to_agents >= bytes.len() as u64);
    });
    getter.shutdown();
    seeder.shutdown();
}

#[test]
fn a_blob_of_several_stripes_uses_every_shard() {
    let dir = Dir::new("stripes");
    let tracker = tracker();
    // 1 MiB pieces, 512 per stripe: just over one stripe makes two, one per shard.
    let (path, bytes) = blob_file(dir.path(), (512 << 20) + (3 << 20), 2);
    let seeder = engine(dir.path(), "seeder", tracker, |_| {});
    let getter = engine(dir.path(), "getter", tracker, |c| c.driver = Driver::Poll);
    run(async {
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        getter.fetch(&digest).await.unwrap();
        getter.wait_complete(&digest).await.unwrap();
        let read = read_all(getter.open(&digest, None).await.unwrap()).await;
        assert!(read == bytes, "copy differs");
        let stats = getter.stats();
        assert!(
            stats.shards.iter().all(|s| s.pieces_verified > 0),
            "a shard stored nothing: {stats:?}"
        );
    });
    getter.shutdown();
    seeder.shutdown();
}

#[test]
fn unknown_digest_is_not_found_and_removal_wakes_readers() {
    let dir = Dir::new("remove");
    let tracker = tracker();
    let (path, bytes) = blob_file(dir.path(), 16 << 20, 3);
    // The seeder sends its first piece at once (the limiter's 1 MiB burst), then 64 KiB/s:
    // a piece every 16 s, so the reader is still waiting when the blob is removed.
    let seeder = engine(dir.path(), "seeder", tracker, |c| {
        c.egress_bytes_per_s = Some(64 << 10);
    });
    let getter = engine(dir.path(), "getter", tracker, |_| {});
    run(async {
        let unknown = Digest::sha256_of(b"nobody has this");
        match getter.open(&unknown, None).await {
            Err(EngineError::NotFound { .. }) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("opened a blob nobody has"),
        }
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        let mut stream = getter.open(&digest, None).await.unwrap();
        // Remove it once some piece (whichever came first) is stored.
        for _ in 0..3000 {
            if getter.status(&digest).unwrap().pieces_stored > 0 {
                break;
            }
            compio::runtime::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(getter.status(&digest).unwrap().pieces_stored > 0);
        getter.remove(&digest).await.unwrap();
        // Read: whatever had arrived in order comes out right, then the reader is told why
        // the rest never will.
        let mut read = Vec::new();
        let mut buf = Vec::with_capacity(1 << 20);
        let error = loop {
            let (result, chunk) = stream.next_chunk(buf).await;
            if let Err(error) = result {
                break error;
            }
            assert!(!chunk.is_empty(), "the removed blob completed");
            read.extend_from_slice(&chunk);
            buf = chunk;
        };
        assert_eq!(read[..], bytes[..read.len()]);
        assert!(error.to_string().contains("removed"), "{error}");
        drop(stream);
        assert!(getter.status(&digest).is_none());
        // Its download directory goes once the reader let go (bounded wait).
        let downloads = dir.path().join("getter/downloads");
        let mut left = usize::MAX;
        for _ in 0..500 {
            left = std::fs::read_dir(&downloads).unwrap().count();
            if left == 0 {
                break;
            }
            compio::runtime::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, 0, "the removed download's directory stayed");
    });
    getter.shutdown();
    seeder.shutdown();
}

#[test]
fn the_per_blob_connection_limit_holds() {
    let dir = Dir::new("limit");
    let tracker = tracker();
    let (path, bytes) = blob_file(dir.path(), 4 << 20, 4);
    // The seeder takes one connection for its blob: of two getters, one is refused until
    // the other is done, and both still finish (the refused one retries).
    let seeder = engine(dir.path(), "seeder", tracker, |c| {
        c.connections_per_blob_max = 1;
        c.egress_bytes_per_s = Some(8 << 20);
    });
    let getters = [
        engine(dir.path(), "getter0", tracker, |_| {}),
        engine(dir.path(), "getter1", tracker, |_| {}),
    ];
    run(async {
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        for getter in &getters {
            getter.fetch(&digest).await.unwrap();
        }
        let mut max_seen = 0;
        for _ in 0..2000 {
            let connections = seeder.status(&digest).unwrap().connections;
            max_seen = max_seen.max(connections);
            if getters.iter().all(|g| g.store().has_blob(&digest)) {
                break;
            }
            compio::runtime::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(max_seen <= 1, "{max_seen} connections for the blob");
        for getter in &getters {
            getter.wait_complete(&digest).await.unwrap();
            let read = read_all(getter.open(&digest, None).await.unwrap()).await;
            assert!(read == bytes);
        }
    });
    for getter in &getters {
        getter.shutdown();
    }
    seeder.shutdown();
}

#[test]
fn the_swarm_holds_at_most_swarm_blobs_max_blobs() {
    let dir = Dir::new("swarm-max");
    let tracker = tracker();
    let (path_a, _) = blob_file(dir.path(), 2 << 20, 5);
    let (path_b, _) = blob_file(dir.path(), 2 << 20, 6);
    let (path_c, _) = blob_file(dir.path(), 2 << 20, 7);
    let seeder = engine(dir.path(), "seeder", tracker, |c| c.swarm_blobs_max = 1);
    // A getter whose one slot is taken by a download that cannot finish (nobody seeds it).
    let getter = engine(dir.path(), "getter", tracker, |c| c.swarm_blobs_max = 1);
    run(async {
        let a = seeder.ingest_file(&path_a, None).await.unwrap();
        let b = seeder.ingest_file(&path_b, None).await.unwrap();
        seeder.seed(&a).await.unwrap();
        assert_eq!(seeder.status(&a).unwrap().state, BlobState::Seeding);
        // Seeding B takes A's place; A stays in the cache.
        seeder.seed(&b).await.unwrap();
        assert_eq!(seeder.status(&b).unwrap().state, BlobState::Seeding);
        assert_eq!(seeder.status(&a).unwrap().state, BlobState::Cached);
        assert!(seeder.store().has_blob(&a));

        // The getter downloads C, which only a seeder that then leaves ever had: its slot
        // stays taken by a download, and a second download is refused, not queued.
        let c = seeder.ingest_file(&path_c, None).await.unwrap();
        let lone = engine(dir.path(), "lone", tracker, |_| {});
        lone.ingest_file(&path_c, None).await.unwrap();
        lone.seed(&c).await.unwrap();
        lone.shutdown();
        getter.fetch(&c).await.unwrap();
        assert_eq!(getter.status(&c).unwrap().state, BlobState::Downloading);
        match getter.fetch(&b).await {
            Err(EngineError::TooManyBlobs { limit: 1 }) => {}
            other => panic!("{other:?}"),
        }
    });
    getter.shutdown();
    seeder.shutdown();
}

#[test]
fn peer_connections_use_the_configured_congestion_control() {
    let dir = Dir::new("congestion");
    let tracker = tracker();
    // A name the kernel does not have is refused at start, with what it has.
    let mut config = EngineConfig::new(dir.path().join("refused"), vec![tracker]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.tcp_congestion = Some("no_such_cc".to_owned());
    match Engine::start(config) {
        Err(EngineError::Config(message)) => {
            assert!(
                message.contains("no_such_cc") && message.contains("available"),
                "{message}"
            );
        }
        other => panic!("started with an unknown congestion control: {other:?}"),
    }
    // Reno (always built in) on both sides: the seeder's accepted connection inherits it
    // from the listener, the getter sets it on the one it dials. The transfer is slowed down
    // so that `ss` sees the connection while it runs.
    let (path, bytes) = blob_file(dir.path(), 24 << 20, 5);
    let reno = |c: &mut EngineConfig| c.tcp_congestion = Some("reno".to_owned());
    let seeder = engine(dir.path(), "seeder", tracker, |c| {
        reno(c);
        c.egress_bytes_per_s = Some(6 << 20);
    });
    let getter = engine(dir.path(), "getter", tracker, reno);
    let port = seeder.listen_addr().port();
    run(async {
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        getter.fetch(&digest).await.unwrap();
        let mut seen = None;
        // Bounded: the transfer takes about 4 s; a loaded machine may take longer to start it.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let output = std::process::Command::new("ss")
                .args([
                    "-tinH",
                    "state",
                    "established",
                    &format!("( sport = :{port} or dport = :{port} )"),
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            // Per connection, a line of addresses and a line of TCP info naming its
            // congestion control: both ends of the one peer connection.
            let infos: Vec<&str> = text.lines().filter(|l| l.contains("rtt:")).collect();
            if infos.len() >= 2 {
                seen = Some(text.clone());
                assert!(
                    infos.iter().all(|l| l.trim_start().starts_with("reno")),
                    "{text}"
                );
                break;
            }
            if getter.store().has_blob(&digest) {
                break;
            }
            compio::runtime::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen.is_some(), "ss never saw the peer connection");
        getter.wait_complete(&digest).await.unwrap();
        let read = read_all(getter.open(&digest, None).await.unwrap()).await;
        assert!(read == bytes, "copy differs");
    });
    getter.shutdown();
    seeder.shutdown();
}

/// The digests a pass evicted, sorted.
fn evicted(report: &shoal_engine::store::EvictionReport) -> Vec<Digest> {
    let mut digests: Vec<Digest> = report.evicted.iter().map(|e| e.digest).collect();
    digests.sort();
    digests
}

#[test]
fn eviction_stops_seeding_idle_blobs_and_spares_one_being_read() {
    let dir = Dir::new("evict-idle");
    let tracker = tracker();
    let (path_a, bytes_a) = blob_file(dir.path(), 3 << 20, 11);
    let (path_b, bytes_b) = blob_file(dir.path(), 3 << 20, 12);
    let seeder = engine(dir.path(), "seeder", tracker, |c| c.evict_interval = None);
    // Passes run by hand here; idle means not opened for half a second.
    let getter = engine(dir.path(), "getter", tracker, |c| {
        c.evict_interval = None;
        c.store.evict_idle_after = Some(Duration::from_millis(500));
    });
    run(async {
        let a = seeder.ingest_file(&path_a, None).await.unwrap();
        let b = seeder.ingest_file(&path_b, None).await.unwrap();
        for digest in [a, b] {
            seeder.seed(&digest).await.unwrap();
            getter.fetch(&digest).await.unwrap();
            getter.wait_complete(&digest).await.unwrap();
            assert_eq!(getter.status(&digest).unwrap().state, BlobState::Seeding);
        }
        // A client reads B while both become idle.
        let reader = getter.open(&b, None).await.unwrap();
        compio::runtime::time::sleep(Duration::from_millis(700)).await;
        let report = getter.evict().await;
        assert_eq!(evicted(&report), vec![a]);
        assert_eq!(report.n_pinned_skipped, 1, "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
        // A left its swarm and the cache.
        assert!(getter.status(&a).is_none());
        assert!(!getter.store().has_blob(&a));
        // B left its swarm but stays cached for its reader, which reads it whole.
        assert_eq!(getter.status(&b).unwrap().state, BlobState::Cached);
        assert_eq!(read_all(reader).await, bytes_b);

        // With its reader gone and idle again, the next pass removes B.
        compio::runtime::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(evicted(&getter.evict().await), vec![b]);
        assert!(getter.status(&b).is_none());
        assert!(getter.list().is_empty());

        // An evicted blob is fetched again like any other.
        getter.fetch(&a).await.unwrap();
        getter.wait_complete(&a).await.unwrap();
        assert_eq!(
            read_all(getter.open(&a, None).await.unwrap()).await,
            bytes_a
        );
    });
    getter.shutdown();
    seeder.shutdown();
}

#[test]
fn a_download_makes_room_by_evicting_the_least_recently_used_blobs() {
    let dir = Dir::new("evict-room");
    let tracker = tracker();
    // Three blobs of 14 MiB and a 40 MiB disk: the third fits only if the first goes.
    let blobs: Vec<_> = (0..3)
        .map(|i| blob_file(dir.path(), 14 << 20, 20 + i))
        .collect();
    let small = Tmpfs::mount(dir.path().join("small"), "40m").unwrap();
    let seeder = engine(dir.path(), "seeder", tracker, |c| c.evict_interval = None);
    // No idle or age rule, and a periodic pass too rare to matter: only the check before
    // each download acts (watermarks 0.85 / 0.75 of 40 MiB).
    let getter = engine(small.path(), "getter", tracker, |c| {
        c.evict_interval = Some(Duration::from_secs(3600));
        c.store.evict_idle_after = None;
    });
    run(async {
        let mut digests = Vec::new();
        for (path, _) in &blobs {
            let digest = seeder.ingest_file(path, None).await.unwrap();
            seeder.seed(&digest).await.unwrap();
            digests.push(digest);
        }
        for digest in &digests {
            getter.fetch(digest).await.unwrap();
            getter.wait_complete(digest).await.unwrap();
        }
        // The first blob (least recently used) made room for the third.
        assert!(!getter.store().has_blob(&digests[0]));
        assert!(getter.status(&digests[0]).is_none());
        for (digest, (_, bytes)) in digests.iter().zip(&blobs).skip(1) {
            assert_eq!(getter.status(digest).unwrap().state, BlobState::Seeding);
            assert_eq!(
                &read_all(getter.open(digest, None).await.unwrap()).await,
                bytes
            );
        }
    });
    getter.shutdown();
    seeder.shutdown();
    // The getter's store (its lock file) is on the small tmpfs: let go of it before unmounting.
    drop(getter);
    drop(small);
}

#[test]
fn the_periodic_pass_evicts_without_being_asked() {
    let dir = Dir::new("evict-periodic");
    let tracker = tracker();
    let (path, _) = blob_file(dir.path(), 2 << 20, 30);
    let seeder = engine(dir.path(), "seeder", tracker, |c| c.evict_interval = None);
    let getter = engine(dir.path(), "getter", tracker, |c| {
        c.evict_interval = Some(Duration::from_millis(100));
        c.store.evict_idle_after = Some(Duration::from_millis(300));
    });
    run(async {
        let digest = seeder.ingest_file(&path, None).await.unwrap();
        seeder.seed(&digest).await.unwrap();
        getter.fetch(&digest).await.unwrap();
        getter.wait_complete(&digest).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while getter.store().has_blob(&digest) {
            assert!(std::time::Instant::now() < deadline, "never evicted");
            compio::runtime::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(getter.status(&digest).is_none());
    });
    getter.shutdown();
    seeder.shutdown();
}
