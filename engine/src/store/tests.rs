//! Store tests: real files in temporary directories under /tmp, inside compio runtimes (the
//! io_uring driver unless a test forces the polling one).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use compio::driver::DriverType;
use shoal_proto::metainfo::{Metainfo, MetainfoParams, PieceCheck, PieceLengthTable};
use shoal_proto::{Bitfield, Digest, PieceIndex, Rng, limits};

use super::download::{FailPoint, bitfield_byte, write_bitfield_bytes};
use super::evict::{Candidate, select};
use super::layout::{self, BlobFileKind};
use super::*;

/// Smallest piece length: many pieces through small blobs.
const P: u32 = limits::PIECE_LEN_MIN;
const P64: u64 = P as u64;

// ---- harness ------------------------------------------------------------------------------

use crate::test_runtime::{run, runtime};

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("shoal-store-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn blob_of_len(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut blob = Vec::with_capacity(len + 8);
    while blob.len() < len {
        blob.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    blob.truncate(len);
    blob
}

fn metainfo_of(blob: &[u8], pieces_per_stripe: u32) -> Metainfo {
    let params = MetainfoParams {
        piece_lengths: PieceLengthTable::uniform(P).unwrap(),
        pieces_per_stripe,
        ..MetainfoParams::default()
    };
    Metainfo::build(Digest::sha256_of(blob), blob, &params).unwrap()
}

/// A blob and its metainfo.
struct TestBlob {
    data: Vec<u8>,
    metainfo: Metainfo,
}

impl TestBlob {
    fn new(len: usize, seed: u64, pieces_per_stripe: u32) -> TestBlob {
        let data = blob_of_len(len, seed);
        let metainfo = metainfo_of(&data, pieces_per_stripe);
        TestBlob { data, metainfo }
    }

    fn digest(&self) -> Digest {
        self.metainfo.digest()
    }

    fn n_pieces(&self) -> u32 {
        self.metainfo.n_pieces()
    }

    fn piece(&self, index: u32) -> Vec<u8> {
        let piece = PieceIndex(index);
        let start = self.metainfo.piece_offset(piece) as usize;
        let len = self.metainfo.piece_len_of(piece) as usize;
        self.data[start..start + len].to_vec()
    }
}

/// No eviction rules by default, so that tests opt in to the one they check.
fn test_config() -> StoreConfig {
    StoreConfig {
        evict_idle_after: None,
        evict_age_max: None,
        ..StoreConfig::default()
    }
}

async fn open_store(root: &Path, config: StoreConfig) -> (Store, RecoveryReport) {
    Store::open(root, config).await.expect("store opens")
}

async fn write_piece(download: &Download, blob: &TestBlob, index: u32) {
    let (result, _) = download
        .write_piece(PieceIndex(index), blob.piece(index))
        .await;
    result.unwrap_or_else(|error| panic!("piece {index}: {error}"));
}

/// Writes `pieces` concurrently: one task each, so that the group commit batches them.
async fn write_pieces_concurrently(download: &Download, blob: &TestBlob, pieces: &[u32]) {
    let tasks: Vec<_> = pieces
        .iter()
        .map(|&index| {
            let download = download.clone();
            let data = blob.piece(index);
            compio::runtime::spawn(async move {
                let (result, _) = download.write_piece(PieceIndex(index), data).await;
                result.unwrap_or_else(|error| panic!("piece {index}: {error}"));
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
}

fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    order
}

fn file_digest(path: &Path) -> Digest {
    Digest::sha256_of(&fs::read(path).unwrap())
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

async fn read_blob(store: &Store, digest: &Digest) -> Vec<u8> {
    let file = store
        .open_blob(digest)
        .await
        .unwrap()
        .expect("blob is complete");
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < file.len() {
        let compio::BufResult(result, chunk) =
            file.read_at(Vec::with_capacity(7 * 1024), offset).await;
        let n = result.unwrap();
        assert!(n > 0);
        out.extend_from_slice(&chunk);
        offset += n as u64;
    }
    out
}

// ---- writing and completing ---------------------------------------------------------------

/// Every piece, in random order and concurrently, then completion: the blob file is the
/// source, byte for byte, and the download directory is gone.
async fn check_write_all_then_complete() {
    let dir = TempDir::new("complete");
    let (store, report) = open_store(dir.path(), test_config()).await;
    assert_eq!(report, RecoveryReport::default());
    // 37 full pieces and a short one; stripes of 5 (not a multiple of 8).
    let blob = TestBlob::new(37 * P as usize + 123, 1, 5);
    let download = store.begin_download(&blob.metainfo).await.unwrap();
    assert_eq!(download.n_stored(), 0);
    let data_path = store.inner.layout.download_dir(&blob.digest()).join("data");
    assert_eq!(
        fs::metadata(&data_path).unwrap().len(),
        blob.data.len() as u64
    );

    write_pieces_concurrently(&download, &blob, &shuffled(blob.n_pieces(), 7)).await;
    assert!(download.bitfield().is_full());
    // Stored pieces are readable before completion.
    let (result, piece) = download
        .read_piece(PieceIndex(37), Vec::with_capacity(P as usize))
        .await;
    result.unwrap();
    assert_eq!(piece, blob.piece(37));

    let path = download.complete().await.unwrap();
    assert_eq!(path, store.blob_path(&blob.digest()));
    assert_eq!(file_digest(&path), blob.digest());
    assert_eq!(download.complete().await.unwrap(), path, "idempotent");
    assert!(dir_entries(&dir.path().join("downloads")).is_empty());
    assert!(store.has_blob(&blob.digest()));
    assert_eq!(read_blob(&store, &blob.digest()).await, blob.data);
    let metainfo = store.blob_metainfo(&blob.digest()).await.unwrap();
    assert_eq!(metainfo.as_ref(), Some(&blob.metainfo));
    // Reads through the download handle still work: its descriptor is the blob's now.
    let (result, piece) = download
        .read_piece(PieceIndex(3), Vec::with_capacity(P as usize))
        .await;
    result.unwrap();
    assert_eq!(piece, blob.piece(3));
}

#[test]
fn write_all_in_random_order_then_complete() {
    run(check_write_all_then_complete());
}

#[test]
fn write_all_then_complete_on_the_polling_driver() {
    let runtime = runtime(Some(DriverType::Poll));
    assert_eq!(runtime.driver_type(), DriverType::Poll);
    runtime.block_on(check_write_all_then_complete());
}

#[test]
fn concurrent_writes_share_commits() {
    run(async {
        let dir = TempDir::new("batching");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(64 * P as usize, 2, 128);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &shuffled(64, 3)).await;
        assert!(download.bitfield().is_full());
        let n_commits = download.n_commits();
        assert!(
            (1..64).contains(&n_commits),
            "64 concurrent writes took {n_commits} commits"
        );
        // One writer at a time: one commit per piece.
        let blob = TestBlob::new(4 * P as usize, 4, 128);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        for index in 0..4 {
            write_piece(&download, &blob, index).await;
        }
        assert_eq!(download.n_commits(), 4);
    });
}

#[test]
fn complete_before_every_piece_is_refused() {
    run(async {
        let dir = TempDir::new("incomplete");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(10 * P as usize, 5, 4);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        for index in (0..10).filter(|&index| index != 6) {
            write_piece(&download, &blob, index).await;
        }
        match download.complete().await {
            Err(StoreError::Incomplete { have, n_pieces, .. }) => {
                assert_eq!((have, n_pieces), (9, 10));
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.has_blob(&blob.digest()));
        assert!(store.open_blob(&blob.digest()).await.unwrap().is_none());
        write_piece(&download, &blob, 6).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

#[test]
fn piece_index_length_and_buffer_are_checked() {
    run(async {
        let dir = TempDir::new("checks");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(3 * P as usize + 10, 6, 2);
        let download = store.begin_download(&blob.metainfo).await.unwrap();

        let (result, _) = download.write_piece(PieceIndex(4), vec![0u8; 10]).await;
        assert!(matches!(
            result,
            Err(StoreError::PieceOutOfRange { n_pieces: 4, .. })
        ));
        let (result, _) = download.write_piece(PieceIndex(3), vec![0u8; 11]).await;
        assert!(matches!(
            result,
            Err(StoreError::PieceLength {
                expected: 10,
                actual: 11,
                ..
            })
        ));
        let (result, _) = download
            .read_piece(PieceIndex(0), Vec::with_capacity(P as usize))
            .await;
        assert!(matches!(result, Err(StoreError::PieceMissing { .. })));

        write_piece(&download, &blob, 3).await;
        write_piece(&download, &blob, 3).await; // already stored: a no-op
        let (result, _) = download
            .read_piece(PieceIndex(3), Vec::with_capacity(9))
            .await;
        assert!(matches!(
            result,
            Err(StoreError::BufferTooSmall {
                needed: 10,
                capacity: 9,
                ..
            })
        ));
        // Whatever the buffer held is replaced.
        let mut stale = Vec::with_capacity(P as usize);
        stale.extend_from_slice(&[0xee; 30]);
        let (result, piece) = download.read_piece(PieceIndex(3), stale).await;
        result.unwrap();
        assert_eq!(piece, blob.piece(3));
        assert!(download.has_piece(PieceIndex(3)));
        assert!(!download.has_piece(PieceIndex(2)));
        assert!(!download.has_piece(PieceIndex(99)));
    });
}

#[test]
fn empty_blob_completes() {
    run(async {
        let dir = TempDir::new("empty");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(0, 0, 1);
        assert_eq!(blob.n_pieces(), 0);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let path = download.complete().await.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        let file = store.open_blob(&blob.digest()).await.unwrap().unwrap();
        assert!(file.is_empty());
    });
}

#[test]
fn a_metainfo_that_lies_about_the_digest_is_caught_at_completion() {
    run(async {
        let dir = TempDir::new("liar");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let data = blob_of_len(3 * P as usize, 8);
        let params = MetainfoParams {
            piece_lengths: PieceLengthTable::uniform(P).unwrap(),
            pieces_per_stripe: 4,
            piece_check: PieceCheck::Sha256,
        };
        let metainfo = Metainfo::build(Digest::sha256_of(&data), &data, &params).unwrap();
        let honest = TestBlob { data, metainfo };
        // Piece hashes of `honest`, but the digest of something else.
        let lie = Metainfo::from_parts(
            Digest::sha256_of(b"something else"),
            honest.data.len() as u64,
            P,
            4,
            honest.metainfo.piece_hashes().to_vec(),
        )
        .unwrap();
        let blob = TestBlob {
            data: honest.data.clone(),
            metainfo: lie,
        };
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &[0, 1, 2]).await;
        assert!(matches!(
            download.complete().await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&blob.digest()));
        assert!(!store.blob_path(&blob.digest()).exists());
        assert!(dir_entries(&dir.path().join("downloads")).is_empty());
        let (result, _) = download.write_piece(PieceIndex(0), blob.piece(0)).await;
        assert!(matches!(result, Err(StoreError::Poisoned { .. })));
    });
}

#[test]
fn only_a_metainfo_whose_pieces_do_not_prove_the_digest_is_hashed_again_at_completion() {
    run(async {
        let dir = TempDir::new("second-pass");
        let (store, _) = open_store(dir.path(), test_config()).await;
        for (seed, piece_check) in [(11, PieceCheck::Sha256Chain), (12, PieceCheck::Sha256)] {
            let data = blob_of_len(3 * P as usize, seed);
            let params = MetainfoParams {
                piece_lengths: PieceLengthTable::uniform(P).unwrap(),
                pieces_per_stripe: 4,
                piece_check,
            };
            let metainfo = Metainfo::build(Digest::sha256_of(&data), &data, &params).unwrap();
            let blob = TestBlob { data, metainfo };
            let download = store.begin_download(&blob.metainfo).await.unwrap();
            write_pieces_concurrently(&download, &blob, &[0, 1, 2]).await;
            // Damage the stored bytes behind the store's back: only a second pass sees it.
            let data_path = store.inner.layout.download_dir(&blob.digest()).join("data");
            let mut bytes = fs::read(&data_path).unwrap();
            bytes[5] ^= 1;
            fs::write(&data_path, &bytes).unwrap();
            let completed = download.complete().await;
            match piece_check {
                // Each piece was checked on arrival, and together they are the digest.
                PieceCheck::Sha256Chain => assert!(completed.is_ok(), "{completed:?}"),
                PieceCheck::Sha256 => assert!(
                    matches!(completed, Err(StoreError::DigestMismatch { .. })),
                    "{completed:?}"
                ),
            }
        }
    });
}

#[test]
fn a_dropped_write_does_not_wedge_the_commit() {
    run(async {
        let dir = TempDir::new("cancel");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(8 * P as usize, 9, 8);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        // Start writes and abandon them after one poll, as a cancelled connection would.
        for index in [0, 1] {
            let mut write = Box::pin(download.write_piece(PieceIndex(index), blob.piece(index)));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(write.as_mut().poll(&mut context).is_pending());
        }
        write_pieces_concurrently(&download, &blob, &shuffled(8, 10)).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

/// A failed fsync poisons the download: nothing more is written or completed through it, the
/// bits already on disk stay true, and beginning again resumes from them.
#[test]
fn a_failed_fsync_poisons_the_download_until_it_is_begun_again() {
    run(async {
        let dir = TempDir::new("poison");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(6 * P as usize, 17, 4);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let other_shard = download.handle().open().await.unwrap();
        write_pieces_concurrently(&download, &blob, &[0, 1]).await;
        download.set_fail_point(Some(FailPoint::FailDataSync));
        let (result, _) = download.write_piece(PieceIndex(2), blob.piece(2)).await;
        match result {
            Err(StoreError::Io { op, source, .. }) => {
                assert_eq!(op, "fdatasync");
                assert_eq!(source.raw_os_error(), Some(5));
            }
            other => panic!("{other:?}"),
        }
        download.set_fail_point(None);
        for handle in [&download, &other_shard] {
            let (result, _) = handle.write_piece(PieceIndex(3), blob.piece(3)).await;
            assert!(
                matches!(result, Err(StoreError::Poisoned { .. })),
                "{result:?}"
            );
            assert!(matches!(
                handle.complete().await,
                Err(StoreError::Poisoned { .. })
            ));
        }
        // Durable pieces stay readable.
        let (result, piece) = other_shard
            .read_piece(PieceIndex(1), Vec::with_capacity(P as usize))
            .await;
        result.unwrap();
        assert_eq!(piece, blob.piece(1));
        // While a handle lives, beginning again gives the poisoned download back.
        let again = store.begin_download(&blob.metainfo).await.unwrap();
        assert!(matches!(
            again.complete().await,
            Err(StoreError::Poisoned { .. })
        ));
        drop((download, other_shard, again));

        let download = store.begin_download(&blob.metainfo).await.unwrap();
        assert_eq!(
            download.bitfield().iter_ones().collect::<Vec<_>>(),
            vec![0, 1]
        );
        write_pieces_concurrently(&download, &blob, &[2, 3, 4, 5]).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

#[test]
fn discard_download_removes_an_unused_download() {
    run(async {
        let dir = TempDir::new("discard");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(3 * P as usize, 18, 4);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_piece(&download, &blob, 0).await;
        assert!(matches!(
            store.discard_download(&blob.digest()).await,
            Err(StoreError::Busy { .. })
        ));
        drop(download);
        store.discard_download(&blob.digest()).await.unwrap();
        assert!(dir_entries(&dir.path().join("downloads")).is_empty());
        store.discard_download(&blob.digest()).await.unwrap(); // absent: fine
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        assert_eq!(download.n_stored(), 0);
    });
}

// ---- beginning, resuming, conflicts --------------------------------------------------------

#[test]
fn resume_after_restart_keeps_stored_pieces() {
    let dir = TempDir::new("resume");
    let blob = TestBlob::new(20 * P as usize + 5, 11, 3);
    let first: Vec<u32> = vec![0, 2, 3, 7, 8, 13, 20];
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &first).await;
    });
    run(async {
        let (store, report) = open_store(dir.path(), test_config()).await;
        assert_eq!(
            report.resumable,
            vec![ResumableDownload {
                digest: blob.digest(),
                info_hash: blob.metainfo.info_hash(),
                n_stored: first.len() as u32,
                n_pieces: 21,
            }]
        );
        assert!(report.discarded.is_empty(), "{:?}", report.discarded);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let stored: Vec<usize> = download.bitfield().iter_ones().collect();
        let expected: Vec<usize> = first.iter().map(|&index| index as usize).collect();
        assert_eq!(stored, expected);
        let rest: Vec<u32> = (0..21).filter(|index| !first.contains(index)).collect();
        write_pieces_concurrently(&download, &blob, &rest).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

#[test]
fn a_crash_between_data_and_bit_leaves_the_piece_missing() {
    let dir = TempDir::new("crash");
    let blob = TestBlob::new(6 * P as usize, 12, 4);
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_piece(&download, &blob, 0).await;
        download.set_fail_point(Some(FailPoint::SkipBit));
        write_piece(&download, &blob, 3).await;
        assert!(!download.has_piece(PieceIndex(3)));
        let (result, _) = download
            .read_piece(PieceIndex(3), Vec::with_capacity(P as usize))
            .await;
        assert!(matches!(result, Err(StoreError::PieceMissing { .. })));
    });
    run(async {
        let (store, report) = open_store(dir.path(), test_config()).await;
        assert_eq!(report.resumable[0].n_stored, 1);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        assert!(download.has_piece(PieceIndex(0)));
        assert!(
            !download.has_piece(PieceIndex(3)),
            "piece 3 must be fetched again"
        );
        write_pieces_concurrently(&download, &blob, &[1, 2, 3, 4, 5]).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

/// Garbage where a piece without its bit belongs (a torn write) is never served, and the
/// piece is simply written again.
#[test]
fn garbage_in_a_missing_piece_is_never_served() {
    let dir = TempDir::new("torn");
    let blob = TestBlob::new(5 * P as usize, 13, 8);
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &[0, 1, 3, 4]).await;
    });
    let data_path = dir
        .path()
        .join("downloads")
        .join(layout::download_dir_name(&blob.digest()));
    let data = fs::OpenOptions::new()
        .write(true)
        .open(data_path.join("data"))
        .unwrap();
    data.write_all_at(&[0x5a; 1000], 2 * P64 + 17).unwrap();
    run(async {
        let config = StoreConfig {
            verify_on_start: true,
            ..test_config()
        };
        let (store, report) = open_store(dir.path(), config).await;
        assert_eq!(report.n_pieces_failed_verification, 0);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let (result, _) = download
            .read_piece(PieceIndex(2), Vec::with_capacity(P as usize))
            .await;
        assert!(matches!(result, Err(StoreError::PieceMissing { .. })));
        write_piece(&download, &blob, 2).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

#[test]
fn verify_on_start_clears_pieces_that_fail_their_hash() {
    let dir = TempDir::new("verify");
    // The last piece is short, so the verifier's reused buffer changes length.
    let blob = TestBlob::new(9 * P as usize + 333, 14, 3);
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &[0, 1, 2, 3, 4, 5, 6, 7, 9]).await;
    });
    let download_dir = dir
        .path()
        .join("downloads")
        .join(layout::download_dir_name(&blob.digest()));
    let data = fs::OpenOptions::new()
        .write(true)
        .open(download_dir.join("data"))
        .unwrap();
    data.write_all_at(b"bit rot", P64 + 100).unwrap();
    data.write_all_at(b"bit rot", 5 * P64).unwrap();
    let config = StoreConfig {
        verify_on_start: true,
        ..test_config()
    };
    run(async {
        let (_store, report) = open_store(dir.path(), config.clone()).await;
        assert_eq!(report.n_pieces_failed_verification, 2);
        assert_eq!(report.resumable[0].n_stored, 7);
    });
    // The cleared bits are persisted: a plain restart agrees.
    run(async {
        let (store, report) = open_store(dir.path(), test_config()).await;
        assert_eq!(report.resumable[0].n_stored, 7);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let missing: Vec<u32> = (0..10)
            .filter(|&index| !download.has_piece(PieceIndex(index)))
            .collect();
        assert_eq!(missing, vec![1, 5, 8]);
        write_pieces_concurrently(&download, &blob, &missing).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

#[test]
fn a_different_metainfo_replaces_an_old_download() {
    run(async {
        let dir = TempDir::new("replace");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let old = TestBlob::new(6 * P as usize, 15, 4);
        let new = TestBlob {
            data: old.data.clone(),
            metainfo: metainfo_of(&old.data, 3),
        };
        assert_eq!(old.digest(), new.digest());
        assert_ne!(old.metainfo.info_hash(), new.metainfo.info_hash());

        let download = store.begin_download(&old.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &old, &[0, 1, 2]).await;
        // While the old one is live: a conflict, not a silent replacement.
        assert!(matches!(
            store.begin_download(&new.metainfo).await,
            Err(StoreError::DownloadConflict { .. })
        ));
        // The same metainfo: another handle on the same download.
        let again = store.begin_download(&old.metainfo).await.unwrap();
        assert_eq!(again.n_stored(), 3);
        drop((download, again));

        let download = store.begin_download(&new.metainfo).await.unwrap();
        assert_eq!(
            download.n_stored(),
            0,
            "old pieces discarded with the old metainfo"
        );
        write_pieces_concurrently(&download, &new, &(0..6).collect::<Vec<_>>()).await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), new.digest());
        assert!(matches!(
            store.begin_download(&new.metainfo).await,
            Err(StoreError::AlreadyComplete { .. })
        ));
    });
}

#[test]
fn a_second_store_on_the_same_root_is_refused() {
    run(async {
        let dir = TempDir::new("locked");
        let (_store, _) = open_store(dir.path(), test_config()).await;
        assert!(matches!(
            Store::open(dir.path(), test_config()).await,
            Err(StoreError::Locked { .. })
        ));
    });
}

#[test]
fn config_watermarks_are_validated() {
    let check = |low: f64, high: f64, ok: bool| {
        let config = StoreConfig {
            disk_low_watermark_fraction: low,
            disk_high_watermark_fraction: high,
            ..StoreConfig::default()
        };
        assert_eq!(config.validate().is_ok(), ok, "low {low} high {high}");
    };
    check(0.75, 0.85, true);
    check(0.5, 0.5, true);
    check(1.0, 1.0, true);
    check(0.9, 0.8, false);
    check(0.0, 0.8, false);
    check(0.5, 1.1, false);
    check(f64::NAN, 0.8, false);
}

// ---- shards ---------------------------------------------------------------------------------

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn store_and_download_handle_cross_threads() {
    assert_send_sync::<Store>();
    assert_send_sync::<DownloadHandle>();
}

/// Two runtimes on two threads, each writing the stripes it owns (stripe s on shard s mod 2),
/// with 3-piece stripes so that the shards share bitfield bytes. After a restart every bit is
/// on disk.
#[test]
fn shards_write_their_own_stripes() {
    const N_SHARDS: u32 = 2;
    let dir = TempDir::new("shards");
    let blob = Arc::new(TestBlob::new(40 * P as usize + 77, 16, 3));
    let (store, handle) = run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        (store, download.handle())
    });
    let threads: Vec<_> = (0..N_SHARDS)
        .map(|shard| {
            let handle = handle.clone();
            let blob = Arc::clone(&blob);
            std::thread::spawn(move || {
                run(async move {
                    let download = handle.open().await.unwrap();
                    let mine: Vec<u32> = (0..blob.n_pieces())
                        .filter(|&index| {
                            blob.metainfo.stripe_of(PieceIndex(index)).0 % N_SHARDS == shard
                        })
                        .collect();
                    write_pieces_concurrently(&download, &blob, &mine).await;
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop((store, handle));
    run(async {
        let (store, report) = open_store(dir.path(), test_config()).await;
        assert_eq!(report.resumable[0].n_stored, blob.n_pieces());
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

// ---- start-up recovery ---------------------------------------------------------------------

/// Writes a download directory by hand.
fn plant_download(root: &Path, name: &str, metainfo: &[u8], data_len: Option<u64>, pieces: &[u8]) {
    let dir = root.join("downloads").join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("metainfo"), metainfo).unwrap();
    fs::write(dir.join("pieces"), pieces).unwrap();
    if let Some(len) = data_len {
        fs::File::create(dir.join("data"))
            .unwrap()
            .set_len(len)
            .unwrap();
    }
}

#[test]
fn recovery_discards_everything_it_cannot_vouch_for() {
    let dir = TempDir::new("recovery");
    let root = dir.path();
    let good = TestBlob::new(3 * P as usize, 20, 4);
    let resumable = TestBlob::new(4 * P as usize, 21, 4);
    run(async {
        let (store, _) = open_store(root, test_config()).await;
        let download = store.begin_download(&good.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &good, &[0, 1, 2]).await;
        download.complete().await.unwrap();
        let download = store.begin_download(&resumable.metainfo).await.unwrap();
        write_piece(&download, &resumable, 1).await;
    });

    let mut expected: HashMap<PathBuf, DiscardReason> = HashMap::new();
    let downloads = root.join("downloads");
    let blobs = root.join("blobs");
    let other = |seed| TestBlob::new(2 * P as usize + 1, seed, 1);
    let name = |blob: &TestBlob| layout::download_dir_name(&blob.digest());

    // downloads/
    fs::create_dir_all(downloads.join(".tmp-sha256-abc-1-0")).unwrap();
    expected.insert(
        downloads.join(".tmp-sha256-abc-1-0"),
        DiscardReason::Temporary,
    );
    fs::create_dir_all(downloads.join("not-a-digest")).unwrap();
    expected.insert(downloads.join("not-a-digest"), DiscardReason::UnknownName);
    let c = other(30);
    plant_download(root, &name(&c), b"garbage", Some(c.data.len() as u64), &[0]);
    let corrupt = match Metainfo::decode(b"garbage") {
        Err(error) => DiscardReason::MetainfoCorrupt(error.to_string()),
        Ok(_) => unreachable!(),
    };
    expected.insert(downloads.join(name(&c)), corrupt);
    let d = other(31);
    plant_download(root, &name(&d), &d.metainfo.encode(), Some(5), &[0]);
    expected.insert(
        downloads.join(name(&d)),
        DiscardReason::WrongSize {
            expected: d.data.len() as u64,
            actual: 5,
        },
    );
    let e = other(32);
    plant_download(
        root,
        &name(&e),
        &e.metainfo.encode(),
        Some(e.data.len() as u64),
        &[0x10],
    );
    expected.insert(
        downloads.join(name(&e)),
        DiscardReason::PiecesCorrupt(
            "bitfield of 3 bits has spare bits set in its last byte".into(),
        ),
    );
    let f = other(33);
    plant_download(root, &name(&f), &f.metainfo.encode(), None, &[0]);
    expected.insert(downloads.join(name(&f)), DiscardReason::DataMissing);
    let g = other(34);
    plant_download(
        root,
        &name(&g),
        &other(35).metainfo.encode(),
        Some(g.data.len() as u64),
        &[0],
    );
    expected.insert(
        downloads.join(name(&g)),
        DiscardReason::MetainfoForOtherDigest(Box::new(other(35).digest())),
    );
    let h = other(36);
    plant_download(
        root,
        &name(&h),
        &h.metainfo.encode(),
        Some(h.data.len() as u64),
        &[0, 0],
    );
    expected.insert(
        downloads.join(name(&h)),
        DiscardReason::PiecesCorrupt("2 bytes, expected 1".into()),
    );
    plant_download(
        root,
        &name(&good),
        &good.metainfo.encode(),
        Some(good.data.len() as u64),
        &[0],
    );
    expected.insert(downloads.join(name(&good)), DiscardReason::AlreadyComplete);
    let junk = downloads.join(name(&resumable)).join(".tmp-junk");
    fs::write(&junk, b"x").unwrap();
    expected.insert(junk, DiscardReason::Temporary);
    fs::write(downloads.join("stray-file"), b"x").unwrap();
    expected.insert(downloads.join("stray-file"), DiscardReason::UnknownName);

    // blobs/
    let blob_path = |blob: &TestBlob| {
        let hex = blob.digest().encoded();
        blobs.join("sha256").join(&hex[..2]).join(hex)
    };
    let sidecar_path = |blob: &TestBlob| {
        let hex = blob.digest().encoded();
        blobs
            .join("sha256")
            .join(&hex[..2])
            .join(format!("{hex}.metainfo"))
    };
    let plant_file = |path: &Path, contents: &[u8]| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    };
    let i = other(40);
    plant_file(&blob_path(&i), &i.data);
    expected.insert(blob_path(&i), DiscardReason::BlobWithoutMetainfo);
    let j = other(41);
    plant_file(&sidecar_path(&j), &j.metainfo.encode());
    expected.insert(sidecar_path(&j), DiscardReason::MetainfoWithoutBlob);
    let k = other(42);
    plant_file(&sidecar_path(&k), &k.metainfo.encode());
    plant_file(&blob_path(&k), &k.data[..100]);
    let short = DiscardReason::WrongSize {
        expected: k.data.len() as u64,
        actual: 100,
    };
    expected.insert(sidecar_path(&k), short.clone());
    expected.insert(blob_path(&k), short);
    let good_prefix = blob_path(&good).parent().unwrap().to_path_buf();
    plant_file(&good_prefix.join(".tmp-half-written"), b"x");
    expected.insert(
        good_prefix.join(".tmp-half-written"),
        DiscardReason::Temporary,
    );
    // A valid hex, in the wrong prefix directory.
    let misplaced = blobs.join("sha256").join("zz");
    fs::create_dir_all(&misplaced).unwrap();
    expected.insert(misplaced, DiscardReason::UnknownName);
    let l = other(43);
    let hex = l.digest().encoded();
    let wrong_prefix = if hex.starts_with("00") { "01" } else { "00" };
    let misfiled = blobs.join("sha256").join(wrong_prefix).join(&hex);
    plant_file(&misfiled, &l.data);
    expected.insert(misfiled, DiscardReason::UnknownName);
    fs::create_dir_all(blobs.join("md5")).unwrap();
    expected.insert(blobs.join("md5"), DiscardReason::UnknownName);

    run(async {
        let (store, report) = open_store(root, test_config()).await;
        let found: HashMap<PathBuf, DiscardReason> = report
            .discarded
            .iter()
            .map(|discarded| (discarded.path.clone(), discarded.reason.clone()))
            .collect();
        for (path, reason) in &expected {
            assert_eq!(found.get(path), Some(reason), "{}", path.display());
            assert!(!path.exists(), "{} still exists", path.display());
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        assert_eq!(report.n_discarded, expected.len());
        assert_eq!(report.n_blobs, 1);
        assert_eq!(report.blob_bytes, good.data.len() as u64);
        assert_eq!(report.resumable.len(), 1);
        assert_eq!(report.resumable[0].digest, resumable.digest());
        assert_eq!(report.resumable[0].n_stored, 1);
        assert_eq!(store.blobs(), vec![good.digest()]);
        assert_eq!(read_blob(&store, &good.digest()).await, good.data);
        for blob in [&i, &j, &k, &l] {
            assert!(store.open_blob(&blob.digest()).await.unwrap().is_none());
        }
        // A second start finds nothing more to remove.
        drop(store);
        let (_store, report) = open_store(root, test_config()).await;
        assert!(report.discarded.is_empty(), "{:?}", report.discarded);
    });
}

// ---- disk full ------------------------------------------------------------------------------

/// A small tmpfs mounted for one test, unmounted on drop (also when the test fails).
struct TmpfsMount {
    dir: TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> Result<TmpfsMount, String> {
        let dir = TempDir::new("tmpfs");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(TmpfsMount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Something still holds it: detach it now, the kernel frees it when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn a_full_disk_is_no_space_and_leaves_nothing_behind() {
    let mount = match TmpfsMount::new("8m") {
        Ok(mount) => mount,
        Err(reason) => {
            // Needs root (CAP_SYS_ADMIN); the engine's CI runs as root, so this should not
            // happen there.
            eprintln!("SKIPPED a_full_disk_is_no_space_and_leaves_nothing_behind: {reason}");
            return;
        }
    };
    let root = mount.path().join("store");
    run(async {
        let (store, _) = open_store(&root, test_config()).await;
        // 16 MiB on an 8 MiB filesystem; the piece hashes need not be real.
        let blob_len = 16u64 << 20;
        let n_pieces = (blob_len / P64) as usize;
        let too_big = Metainfo::from_parts(
            Digest::sha256_of(b"too big"),
            blob_len,
            P,
            128,
            vec![[7; 32]; n_pieces],
        )
        .unwrap();
        match store.begin_download(&too_big).await {
            Err(StoreError::NoSpace {
                digest,
                bytes_needed,
                ..
            }) => {
                assert_eq!(*digest, too_big.digest());
                assert!(bytes_needed >= blob_len);
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(dir_entries(&root.join("downloads")).is_empty());
        assert!(dir_entries(&root.join("blobs")).is_empty());
        // The refusal left the store usable: a blob that fits goes through.
        let blob = TestBlob::new(2 << 20, 50, 128);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &(0..blob.n_pieces()).collect::<Vec<_>>())
            .await;
        let path = download.complete().await.unwrap();
        assert_eq!(file_digest(&path), blob.digest());
    });
}

// ---- eviction -------------------------------------------------------------------------------

/// Completes each blob; returns the store's clock reading after.
async fn complete_blobs(store: &Store, blobs: &[&TestBlob]) -> SystemTime {
    for blob in blobs {
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let all: Vec<u32> = (0..blob.n_pieces()).collect();
        write_pieces_concurrently(&download, blob, &all).await;
        download.complete().await.unwrap();
    }
    SystemTime::now()
}

fn evicted(report: &EvictionReport) -> Vec<(Digest, EvictReason)> {
    let mut evicted: Vec<_> = report
        .evicted
        .iter()
        .map(|blob| (blob.digest, blob.reason))
        .collect();
    evicted.sort();
    evicted
}

fn sorted(mut digests: Vec<(Digest, EvictReason)>) -> Vec<(Digest, EvictReason)> {
    digests.sort();
    digests
}

#[test]
fn eviction_by_idle_time_spares_pinned_blobs_and_downloads() {
    run(async {
        let dir = TempDir::new("evict-idle");
        let config = StoreConfig {
            evict_idle_after: Some(Duration::from_secs(100)),
            ..test_config()
        };
        let (store, _) = open_store(dir.path(), config).await;
        let [a, b, c, d] = [60, 61, 62, 63].map(|seed| TestBlob::new(2 * P as usize, seed, 4));
        let now = complete_blobs(&store, &[&a, &b, &c]).await;
        let in_progress = store.begin_download(&d.metainfo).await.unwrap();
        write_piece(&in_progress, &d, 0).await;

        assert!(
            store
                .evict_with_usage(now + Duration::from_secs(50), None)
                .await
                .evicted
                .is_empty()
        );
        // B was last opened long ago; A and C recently.
        store.set_last_access(&b.digest(), now - Duration::from_secs(1000));
        let report = store.evict_with_usage(now, None).await;
        assert_eq!(evicted(&report), vec![(b.digest(), EvictReason::Idle)]);
        assert!(!store.blob_path(&b.digest()).exists());
        assert!(!store.has_blob(&b.digest()));

        // Much later: everything is idle, but the open A is pinned.
        let reader = store.open_blob(&a.digest()).await.unwrap().unwrap();
        let later = now + Duration::from_secs(1000);
        let report = store.evict_with_usage(later, None).await;
        assert_eq!(evicted(&report), vec![(c.digest(), EvictReason::Idle)]);
        assert_eq!(report.n_pinned_skipped, 1);
        assert!(store.blob_path(&a.digest()).exists());
        drop(reader);
        let report = store.evict_with_usage(later, None).await;
        assert_eq!(evicted(&report), vec![(a.digest(), EvictReason::Idle)]);

        // The download in progress was never a candidate.
        assert!(
            store
                .inner
                .layout
                .download_dir(&d.digest())
                .join("data")
                .exists()
        );
        assert_eq!(in_progress.n_stored(), 1);
        // Once complete, its live handle still pins it.
        write_pieces_concurrently(&in_progress, &d, &[1]).await;
        in_progress.complete().await.unwrap();
        let report = store
            .evict_with_usage(later + Duration::from_secs(1000), None)
            .await;
        assert!(report.evicted.is_empty());
        assert_eq!(report.n_pinned_skipped, 1);
        drop(in_progress);
        let report = store
            .evict_with_usage(later + Duration::from_secs(1000), None)
            .await;
        assert_eq!(evicted(&report), vec![(d.digest(), EvictReason::Idle)]);
    });
}

#[test]
fn a_plan_counts_releasable_pins_as_released_and_apply_skips_what_is_still_pinned() {
    run(async {
        let dir = TempDir::new("evict-plan");
        let config = StoreConfig {
            evict_idle_after: Some(Duration::from_secs(100)),
            ..test_config()
        };
        let (store, _) = open_store(dir.path(), config).await;
        let [a, b] = [64, 65].map(|seed| TestBlob::new(2 * P as usize, seed, 4));
        let now = complete_blobs(&store, &[&a, &b]).await;
        let later = now + Duration::from_secs(1000);
        // Both open (A by a holder that will let go if asked, B by a reader).
        let held = store.open_blob(&a.digest()).await.unwrap().unwrap();
        let reader = store.open_blob(&b.digest()).await.unwrap().unwrap();
        let releasable = HashSet::from([a.digest()]);
        let plan = store.plan_eviction(later, None, &releasable);
        assert_eq!(plan.chosen, vec![(a.digest(), EvictReason::Idle)]);
        assert_eq!(plan.n_pinned_skipped, 1);
        // Planning removes nothing; a plan applied while its blob is still held skips it.
        assert!(store.has_blob(&a.digest()));
        let report = store.apply_eviction(plan.clone()).await;
        assert!(report.evicted.is_empty());
        assert_eq!(report.n_pinned_skipped, 2);
        assert!(store.open_blob(&a.digest()).await.unwrap().is_some());
        // Once let go, the same plan removes it, and B stays with its reader.
        drop(held);
        let report = store.apply_eviction(plan).await;
        assert_eq!(evicted(&report), vec![(a.digest(), EvictReason::Idle)]);
        assert!(!store.has_blob(&a.digest()));
        assert!(store.has_blob(&b.digest()));
        drop(reader);
    });
}

#[test]
fn eviction_by_age_ignores_recent_use() {
    run(async {
        let dir = TempDir::new("evict-age");
        let config = StoreConfig {
            evict_age_max: Some(Duration::from_secs(100)),
            ..test_config()
        };
        let (store, _) = open_store(dir.path(), config).await;
        let [a, b] = [70, 71].map(|seed| TestBlob::new(P as usize, seed, 4));
        let now = complete_blobs(&store, &[&a, &b]).await;
        assert!(
            store
                .evict_with_usage(now + Duration::from_secs(50), None)
                .await
                .evicted
                .is_empty()
        );
        drop(store.open_blob(&a.digest()).await.unwrap());
        store.set_last_access(&b.digest(), now + Duration::from_secs(149));
        let report = store
            .evict_with_usage(now + Duration::from_secs(150), None)
            .await;
        assert_eq!(
            evicted(&report),
            sorted(vec![
                (a.digest(), EvictReason::Age),
                (b.digest(), EvictReason::Age)
            ])
        );
        assert!(store.blobs().is_empty());
    });
}

#[test]
fn eviction_by_watermark_removes_least_recently_used_first() {
    run(async {
        let dir = TempDir::new("evict-watermark");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let [a, b, c, d] = [80, 81, 82, 83].map(|seed| TestBlob::new(4 * P as usize, seed, 4));
        let now = complete_blobs(&store, &[&a, &b, &c, &d]).await;
        for (age, blob) in [(40, &a), (30, &b), (20, &c), (10, &d)] {
            store.set_last_access(&blob.digest(), now - Duration::from_secs(age));
        }
        let _pinned_b = store.open_blob(&b.digest()).await.unwrap().unwrap();
        // Restore B's (older) access time: opening it refreshed it.
        store.set_last_access(&b.digest(), now - Duration::from_secs(30));
        let size = sys::allocated_bytes(&fs::metadata(store.blob_path(&a.digest())).unwrap());
        assert!(size >= 4 * P64);

        // Below the high watermark (0.85): nothing.
        let calm = DiskUsage {
            total_bytes: 10 * size,
            used_bytes: 8 * size,
        };
        assert!(
            store
                .evict_with_usage(now, Some(calm))
                .await
                .evicted
                .is_empty()
        );
        // 90% used: down to 75% needs two blobs gone; B is pinned, so A then C.
        let full = DiskUsage {
            total_bytes: 10 * size,
            used_bytes: 9 * size,
        };
        let report = store.evict_with_usage(now, Some(full)).await;
        assert_eq!(
            evicted(&report),
            sorted(vec![
                (a.digest(), EvictReason::DiskWatermark),
                (c.digest(), EvictReason::DiskWatermark),
            ])
        );
        assert_eq!(report.freed_bytes, 2 * size);
        let mut left = store.blobs();
        left.sort();
        let mut expected = vec![b.digest(), d.digest()];
        expected.sort();
        assert_eq!(left, expected);
    });
}

#[test]
fn eviction_policy_cases() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let secs = Duration::from_secs;
    // (digest byte, allocated, completed s before now, accessed s before now, pinned)
    let candidates: Vec<Candidate> = [
        (1, 10, 500, 500, false),
        (2, 10, 500, 5, false),
        (3, 10, 50, 50, false),
        (4, 10, 50, 1, true),
        (5, 10, 5, 5, false),
    ]
    .iter()
    .map(
        |&(byte, allocated_bytes, completed, accessed, pinned)| Candidate {
            digest: Digest::Sha256([byte; 32]),
            allocated_bytes,
            completed_at: t0 - secs(completed),
            last_access: t0 - secs(accessed),
            pinned,
        },
    )
    .collect();
    let check = |config: StoreConfig,
                 usage: Option<(u64, u64)>,
                 expected: &[(u8, EvictReason)],
                 skipped| {
        let usage = usage.map(|(total_bytes, used_bytes)| DiskUsage {
            total_bytes,
            used_bytes,
        });
        let (chosen, n_skipped) = select(&candidates, t0, &config, usage);
        let got: Vec<(u8, EvictReason)> = chosen
            .iter()
            .map(|&(index, reason)| (candidates[index].digest.as_bytes()[0], reason))
            .collect();
        assert_eq!(got, expected, "{config:?} {usage:?}");
        assert_eq!(n_skipped, skipped);
    };
    let none = test_config();
    use EvictReason::*;
    check(none.clone(), None, &[], 0);
    let idle = StoreConfig {
        evict_idle_after: Some(secs(40)),
        ..none.clone()
    };
    check(idle.clone(), None, &[(1, Idle), (3, Idle)], 0);
    let age = StoreConfig {
        evict_age_max: Some(secs(40)),
        ..none.clone()
    };
    check(age.clone(), None, &[(1, Age), (2, Age), (3, Age)], 1);
    let both = StoreConfig {
        evict_age_max: Some(secs(100)),
        evict_idle_after: Some(secs(40)),
        ..none.clone()
    };
    check(both, None, &[(1, Age), (2, Age), (3, Idle)], 0);
    // Watermarks 0.85 / 0.75 on 100 bytes: at 85 nothing; at 90 down to 75 takes two blobs,
    // least recently used first (1, then 3; 4 is pinned).
    check(none.clone(), Some((100, 85)), &[], 0);
    check(
        none.clone(),
        Some((100, 90)),
        &[(1, DiskWatermark), (3, DiskWatermark)],
        0,
    );
    // Age/idle evictions count toward the watermark: idle frees 20, leaving 70 (or 79), below
    // the high watermark, so nothing more goes.
    check(idle.clone(), Some((100, 90)), &[(1, Idle), (3, Idle)], 0);
    check(idle, Some((100, 99)), &[(1, Idle), (3, Idle)], 0);
    // At 100 down to 75: three blobs, least recently used first; 2 and 5 were accessed at
    // the same time, and the digest breaks the tie.
    check(
        none.clone(),
        Some((100, 100)),
        &[(1, DiskWatermark), (3, DiskWatermark), (2, DiskWatermark)],
        0,
    );
    // Down to 10: everything unpinned goes, and it is still not enough; stop there.
    let low = StoreConfig {
        disk_high_watermark_fraction: 0.5,
        disk_low_watermark_fraction: 0.1,
        ..none
    };
    check(
        low,
        Some((100, 100)),
        &[
            (1, DiskWatermark),
            (3, DiskWatermark),
            (2, DiskWatermark),
            (5, DiskWatermark),
        ],
        0,
    );
    // Accessed "in the future" (clock skew) counts as just now.
    let future = vec![Candidate {
        last_access: t0 + secs(100),
        completed_at: t0 + secs(100),
        ..candidates[0].clone()
    }];
    let (chosen, _) = select(&future, t0, &age, None);
    assert!(chosen.is_empty());
}

// ---- pure helpers ---------------------------------------------------------------------------

#[test]
fn download_dir_names() {
    let sha256 = Digest::sha256_of(b"x");
    let sha512 = Digest::sha512_of(b"x");
    let check = |name: &str, expected: Option<Digest>| {
        assert_eq!(layout::parse_download_dir_name(name), expected, "{name:?}");
    };
    check(&layout::download_dir_name(&sha256), Some(sha256));
    check(&layout::download_dir_name(&sha512), Some(sha512));
    check(&format!("sha256:{}", sha256.encoded()), None);
    check(&format!("sha256-{}", sha256.encoded().to_uppercase()), None);
    check(&format!("sha256-{}", &sha256.encoded()[1..]), None);
    check(&format!("md5-{}", sha256.encoded()), None);
    check(&format!(".tmp-sha256-{}", sha256.encoded()), None);
    check("sha256-", None);
    check("-", None);
    check("", None);
}

#[test]
fn blob_file_names() {
    let digest = Digest::sha256_of(b"y");
    let hex = digest.encoded();
    let prefix = &hex[..2];
    let check = |algorithm: &str, prefix: &str, name: &str, expected| {
        assert_eq!(
            layout::parse_blob_file_name(algorithm, prefix, name),
            expected,
            "{algorithm}/{prefix}/{name}"
        );
    };
    check("sha256", prefix, &hex, Some((digest, BlobFileKind::Blob)));
    check(
        "sha256",
        prefix,
        &format!("{hex}.metainfo"),
        Some((digest, BlobFileKind::Metainfo)),
    );
    check("sha512", prefix, &hex, None);
    check("sha256", "zz", &hex, None);
    check("sha256", &hex[..1], &hex, None);
    check("sha256", prefix, &format!("{hex}.tmp"), None);
    check("sha256", prefix, &format!(".tmp-{hex}"), None);
    check("sha256", prefix, &hex[..63], None);
    assert!(layout::is_prefix_dir_name("0f"));
    assert!(!layout::is_prefix_dir_name("0F"));
    assert!(!layout::is_prefix_dir_name("0"));
    assert!(!layout::is_prefix_dir_name("0fa"));
}

#[test]
fn paths_stay_under_the_root() {
    let layout = Layout::new(PathBuf::from("/srv/shoal"));
    let digest = Digest::sha256_of(b"z");
    let hex = digest.encoded();
    assert_eq!(
        layout.blob_path(&digest),
        PathBuf::from(format!("/srv/shoal/blobs/sha256/{}/{hex}", &hex[..2]))
    );
    assert_eq!(
        layout.download_dir(&digest),
        PathBuf::from(format!("/srv/shoal/downloads/sha256-{hex}"))
    );
    let temp = layout.temp_path(Path::new("/srv/shoal/downloads"), "sha256-ab");
    let name = temp.file_name().unwrap().to_str().unwrap();
    assert!(layout::is_temp_name(name), "{name}");
    assert_eq!(temp.parent(), Some(Path::new("/srv/shoal/downloads")));
}

/// Writing the bytes of any set of pieces, in any order of batches, leaves the file equal to
/// the wire form of the bitfield.
#[test]
fn bitfield_bytes_match_the_wire_form() {
    let dir = TempDir::new("bits");
    let mut rng = Rng::new(99);
    for len in [1usize, 7, 8, 9, 63, 64, 65, 200] {
        let path = dir.path().join(format!("pieces-{len}"));
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(&vec![0; Bitfield::byte_len(len)]).unwrap();
        let mut bits = Bitfield::new(len);
        let mut order: Vec<u32> = (0..len as u32).collect();
        rng.shuffle(&mut order);
        for batch in order.chunks(1 + rng.index(5)) {
            for &piece in batch {
                bits.set(piece as usize);
            }
            write_bitfield_bytes(&bits, &file, batch).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bits.to_bytes(), "len {len}");
        }
        for index in 0..Bitfield::byte_len(len) {
            assert_eq!(bitfield_byte(&bits, index), bits.to_bytes()[index]);
        }
    }
}

#[test]
fn errors_name_the_blob_and_the_path() {
    let digest = Digest::sha256_of(b"e");
    let message = StoreError::NoSpace {
        digest: Box::new(digest),
        bytes_needed: 123,
        bytes_available: Some(45),
        path: PathBuf::from("/x/downloads/y"),
    }
    .to_string();
    for part in [&digest.to_string(), "123", "45", "/x/downloads/y"] {
        assert!(message.contains(part), "{message}");
    }
    let message =
        StoreError::io("fdatasync", "/x/data", std::io::Error::from_raw_os_error(5)).to_string();
    assert!(message.contains("fdatasync /x/data"), "{message}");
    assert!(message.contains("Input/output error"), "{message}");
}

mod stream;
