//! Upload store tests: real files in temporary directories under /tmp (and one small tmpfs).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use shoal_proto::{Digest, Rng};

use super::*;

// ---- harness ------------------------------------------------------------------------------

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("shoal-upload-tests")
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

fn small_limits() -> UploadLimits {
    UploadLimits {
        sessions_max: 8,
        blob_bytes_max: 4 << 20,
        chunk_bytes_max: 1 << 20,
        idle_timeout: Duration::from_secs(3600),
    }
}

fn open(root: &Path, limits: UploadLimits) -> (UploadStore, RecoveryReport) {
    UploadStore::open(root, limits).unwrap()
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn data_len(root: &Path, id: &str) -> u64 {
    fs::metadata(root.join("sessions").join(id).join("data"))
        .unwrap()
        .len()
}

/// Appends `blob` in chunks of `chunk` bytes with `Content-Range` starts and lengths.
fn append_in_chunks(store: &UploadStore, id: &str, blob: &[u8], chunk: usize) {
    let mut offset = store.status(id).unwrap().offset;
    for piece in blob.chunks(chunk) {
        let new_offset = store
            .append(id, Some(offset), Some(piece.len() as u64), piece)
            .unwrap();
        assert_eq!(new_offset, offset + piece.len() as u64);
        offset = new_offset;
    }
}

/// A body that yields `good` bytes, then fails.
struct FailingBody {
    good: Vec<u8>,
    at: usize,
}

impl Read for FailingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.good.len() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            ));
        }
        let n = buf.len().min(self.good.len() - self.at).min(1000);
        buf[..n].copy_from_slice(&self.good[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn assert_unchanged(store: &UploadStore, root: &Path, id: &str, offset: u64) {
    assert_eq!(store.status(id).unwrap().offset, offset);
    assert_eq!(data_len(root, id), offset);
}

#[test]
fn the_store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<UploadStore>();
    assert_send_sync::<UploadError>();
}

// ---- chunked uploads ------------------------------------------------------------------------

#[test]
fn chunked_upload_in_several_chunks_ends_with_the_right_digest() {
    let dir = TempDir::new("chunked");
    let (store, report) = open(dir.path(), small_limits());
    assert_eq!(report, RecoveryReport::default());
    let session = store.create("library/ubuntu").unwrap();
    assert_eq!(session.offset, 0);
    assert_eq!(session.repo, "library/ubuntu");
    assert!(names::is_valid_id(&session.id));

    // Uneven chunks, across the copy buffer's size; a chunk without Content-Range or length.
    let blob = bytes(3 * COPY_BUFFER_BYTES + 12345, 1);
    append_in_chunks(&store, &session.id, &blob[..COPY_BUFFER_BYTES + 7], 100_000);
    let rest = &blob[COPY_BUFFER_BYTES + 7..];
    let offset = store.append(&session.id, None, None, rest).unwrap();
    assert_eq!(offset, blob.len() as u64);
    assert_eq!(
        store.status(&session.id).unwrap(),
        UploadStatus {
            repo: "library/ubuntu".into(),
            offset
        }
    );

    let digest = Digest::sha256_of(&blob);
    let completed = store.finish(&session.id, &digest, NO_CHUNK).unwrap();
    assert_eq!(completed.digest, digest);
    assert_eq!(completed.len, blob.len() as u64);
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
    assert!(completed.path.starts_with(dir.path().join("complete")));

    // The session is gone; releasing deletes the staged file.
    assert!(matches!(
        store.status(&session.id),
        Err(UploadError::UnknownSession { .. })
    ));
    assert!(names_in(&dir.path().join("sessions")).is_empty());
    let path = completed.path.clone();
    store.release(completed).unwrap();
    assert!(!path.exists());
}

#[test]
fn the_final_put_may_carry_the_last_chunk() {
    let dir = TempDir::new("last-chunk");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("a/b").unwrap().id;
    let blob = bytes(5000, 2);
    store
        .append(&id, Some(0), Some(3000), &blob[..3000])
        .unwrap();
    let last = Some((Some(3000), Some(2000), &blob[3000..]));
    let completed = store.finish(&id, &Digest::sha256_of(&blob), last).unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), blob);

    // A misplaced final chunk leaves the session as it was.
    let id = store.create("a/b").unwrap().id;
    store.append(&id, Some(0), None, &blob[..10]).unwrap();
    let last = Some((Some(11), None, &blob[10..]));
    let error = store
        .finish(&id, &Digest::sha256_of(&blob), last)
        .unwrap_err();
    assert!(matches!(
        error,
        UploadError::RangeInvalid {
            offset: 10,
            start: 11
        }
    ));
    assert_unchanged(&store, dir.path(), &id, 10);
}

#[test]
fn an_empty_upload_finishes_with_the_empty_digest() {
    let dir = TempDir::new("empty");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("empty").unwrap().id;
    assert_eq!(store.append(&id, Some(0), Some(0), io::empty()).unwrap(), 0);
    let completed = store
        .finish(&id, &Digest::sha256_of(b""), NO_CHUNK)
        .unwrap();
    assert_eq!(completed.len, 0);
}

#[test]
fn an_out_of_order_chunk_is_range_invalid_and_changes_nothing() {
    let dir = TempDir::new("range");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("repo").unwrap().id;
    let blob = bytes(1000, 3);
    store.append(&id, Some(0), Some(400), &blob[..400]).unwrap();

    for start in [0, 399, 401, 10_000] {
        let error = store
            .append(&id, Some(start), Some(600), &blob[400..])
            .unwrap_err();
        match error {
            UploadError::RangeInvalid { offset, start: got } => {
                assert_eq!((offset, got), (400, start));
            }
            other => panic!("expected RangeInvalid, got {other:?}"),
        }
        assert_eq!(error.http_status(), 416);
        assert_eq!(error.oci_code(), "RANGE_INVALID");
        assert_unchanged(&store, dir.path(), &id, 400);
    }

    store
        .append(&id, Some(400), Some(600), &blob[400..])
        .unwrap();
    let completed = store
        .finish(&id, &Digest::sha256_of(&blob), NO_CHUNK)
        .unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
}

#[test]
fn a_body_of_the_wrong_length_or_a_failed_read_leaves_the_offset_unchanged() {
    let dir = TempDir::new("length");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("repo").unwrap().id;
    let blob = bytes(600_000, 4);
    store
        .append(&id, Some(0), Some(1000), &blob[..1000])
        .unwrap();

    // Truncated: declares more than arrives (spanning several copy buffers).
    let error = store
        .append(&id, Some(1000), Some(599_000), &blob[1000..500_000])
        .unwrap_err();
    assert!(
        matches!(
            error,
            UploadError::LengthMismatch {
                declared: 599_000,
                received: 499_000
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.oci_code(), "SIZE_INVALID");
    assert_unchanged(&store, dir.path(), &id, 1000);

    // Overlong: more arrives than declared.
    let error = store
        .append(&id, None, Some(10), &blob[1000..2000])
        .unwrap_err();
    assert!(
        matches!(
            error,
            UploadError::LengthMismatch {
                declared: 10,
                received: 11
            }
        ),
        "{error:?}"
    );
    assert_unchanged(&store, dir.path(), &id, 1000);

    // The client goes away mid-chunk.
    let body = FailingBody {
        good: blob[1000..300_000].to_vec(),
        at: 0,
    };
    let error = store.append(&id, Some(1000), None, body).unwrap_err();
    assert!(
        matches!(
            error,
            UploadError::BodyRead {
                received: 299_000,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.oci_code(), "BLOB_UPLOAD_INVALID");
    assert_unchanged(&store, dir.path(), &id, 1000);

    // The hash was not fed by the failed chunks: the upload still completes correctly.
    store.append(&id, Some(1000), None, &blob[1000..]).unwrap();
    let completed = store
        .finish(&id, &Digest::sha256_of(&blob), NO_CHUNK)
        .unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
}

#[test]
fn a_wrong_digest_is_digest_invalid_and_leaves_nothing() {
    let dir = TempDir::new("digest");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("repo").unwrap().id;
    let blob = bytes(70_000, 5);
    append_in_chunks(&store, &id, &blob, 30_000);
    let wrong = Digest::sha256_of(b"something else");
    let error = store.finish(&id, &wrong, NO_CHUNK).unwrap_err();
    match &error {
        UploadError::DigestInvalid { expected, actual } => {
            assert_eq!(**expected, wrong);
            assert_eq!(**actual, Digest::sha256_of(&blob));
        }
        other => panic!("expected DigestInvalid, got {other:?}"),
    }
    assert_eq!(
        (error.oci_code(), error.http_status()),
        ("DIGEST_INVALID", 400)
    );
    assert!(matches!(
        store.status(&id),
        Err(UploadError::UnknownSession { .. })
    ));
    assert!(names_in(&dir.path().join("sessions")).is_empty());
    assert!(names_in(&dir.path().join("complete")).is_empty());
    assert_eq!(store.n_sessions(), 0);

    // Same for a SHA-512 digest that does not match.
    let id = store.create("repo").unwrap().id;
    append_in_chunks(&store, &id, &blob, 30_000);
    let error = store
        .finish(&id, &Digest::sha512_of(b"x"), NO_CHUNK)
        .unwrap_err();
    assert!(matches!(error, UploadError::DigestInvalid { .. }));
    assert!(names_in(&dir.path().join("sessions")).is_empty());
    assert!(names_in(&dir.path().join("complete")).is_empty());
}

#[test]
fn a_sha512_digest_works_chunked_and_monolithic() {
    let dir = TempDir::new("sha512");
    let (store, _) = open(dir.path(), small_limits());
    let blob = bytes(2 * COPY_BUFFER_BYTES + 3, 6);
    let digest = Digest::sha512_of(&blob);

    let id = store.create("repo").unwrap().id;
    append_in_chunks(&store, &id, &blob, 200_000);
    let completed = store.finish(&id, &digest, NO_CHUNK).unwrap();
    assert_eq!(completed.digest, digest);
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
    store.release(completed).unwrap();

    let completed = store
        .put_monolithic("repo", &digest, Some(blob.len() as u64), &blob[..])
        .unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
}

// ---- monolithic -----------------------------------------------------------------------------

#[test]
fn monolithic_uploads_are_verified_while_streaming() {
    let dir = TempDir::new("monolithic");
    let (store, _) = open(dir.path(), small_limits());
    let blob = bytes(3 << 20, 7); // above chunk_bytes_max: only blob_bytes_max bounds it
    let digest = Digest::sha256_of(&blob);

    let completed = store
        .put_monolithic("repo", &digest, None, &blob[..])
        .unwrap();
    assert_eq!(
        (completed.digest, completed.len),
        (digest, blob.len() as u64)
    );
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
    assert_eq!(store.n_sessions(), 0);
    store.release(completed).unwrap();
    assert!(names_in(&dir.path().join("complete")).is_empty());

    // Wrong digest, wrong length, too large: nothing left behind.
    let error = store
        .put_monolithic("repo", &Digest::sha256_of(b"no"), None, &blob[..])
        .unwrap_err();
    assert!(matches!(error, UploadError::DigestInvalid { .. }));
    let error = store
        .put_monolithic("repo", &digest, Some(blob.len() as u64 + 1), &blob[..])
        .unwrap_err();
    assert!(matches!(error, UploadError::LengthMismatch { .. }));
    let big = bytes((4 << 20) + 1, 8);
    let error = store
        .put_monolithic("repo", &Digest::sha256_of(&big), None, &big[..])
        .unwrap_err();
    assert!(
        matches!(error, UploadError::BlobTooLarge { .. }),
        "{error:?}"
    );
    let error = store
        .put_monolithic("Repo", &digest, None, &blob[..])
        .unwrap_err();
    assert!(matches!(error, UploadError::InvalidRepository { .. }));
    assert!(names_in(&dir.path().join("complete")).is_empty());
}

// ---- cancel and expiry ----------------------------------------------------------------------

#[test]
fn cancel_removes_the_session_and_its_data() {
    let dir = TempDir::new("cancel");
    let (store, _) = open(dir.path(), small_limits());
    let id = store.create("repo").unwrap().id;
    store
        .append(&id, Some(0), None, &bytes(5000, 9)[..])
        .unwrap();
    store.cancel(&id).unwrap();
    assert!(names_in(&dir.path().join("sessions")).is_empty());
    for error in [
        store.status(&id).unwrap_err(),
        store.cancel(&id).unwrap_err(),
        store
            .append(&id, Some(5000), None, io::empty())
            .unwrap_err(),
        store
            .finish(&id, &Digest::sha256_of(b""), NO_CHUNK)
            .unwrap_err(),
    ] {
        assert!(
            matches!(error, UploadError::UnknownSession { .. }),
            "{error:?}"
        );
        assert_eq!(
            (error.oci_code(), error.http_status()),
            ("BLOB_UPLOAD_UNKNOWN", 404)
        );
    }
}

#[test]
fn idle_sessions_expire() {
    let dir = TempDir::new("expire");
    let (store, _) = open(dir.path(), small_limits());
    let old = store.create("repo").unwrap().id;
    let young = store.create("repo").unwrap().id;
    let now = SystemTime::now();
    assert_eq!(store.expire_idle(now), 0);
    assert_eq!(store.n_sessions(), 2);

    // Both are idle an hour on; nothing is left of them.
    assert_eq!(store.expire_idle(now + Duration::from_secs(3601)), 2);
    for id in [&old, &young] {
        assert!(matches!(
            store.status(id),
            Err(UploadError::UnknownSession { .. })
        ));
    }
    assert!(names_in(&dir.path().join("sessions")).is_empty());
}

#[test]
fn a_session_used_after_its_idle_timeout_is_unknown() {
    let dir = TempDir::new("expire-lazy");
    let limits = UploadLimits {
        idle_timeout: Duration::from_millis(20),
        ..small_limits()
    };
    let (store, _) = open(dir.path(), limits);
    let id = store.create("repo").unwrap().id;
    std::thread::sleep(Duration::from_millis(60));
    assert!(matches!(
        store.status(&id),
        Err(UploadError::UnknownSession { .. })
    ));
    let error = store.append(&id, Some(0), None, &b"late"[..]).unwrap_err();
    assert!(matches!(error, UploadError::UnknownSession { .. }));
    assert!(names_in(&dir.path().join("sessions")).is_empty());
}

// ---- limits and names -----------------------------------------------------------------------

#[test]
fn sessions_max_counts_sessions_and_monolithic_uploads() {
    let dir = TempDir::new("sessions-max");
    let limits = UploadLimits {
        sessions_max: 2,
        ..small_limits()
    };
    let (store, _) = open(dir.path(), limits);
    let first = store.create("repo").unwrap().id;
    let _second = store.create("repo").unwrap().id;
    let error = store.create("repo").unwrap_err();
    assert!(matches!(
        error,
        UploadError::TooManySessions { sessions_max: 2 }
    ));
    assert_eq!(
        (error.oci_code(), error.http_status()),
        ("TOOMANYREQUESTS", 429)
    );
    let error = store
        .put_monolithic("repo", &Digest::sha256_of(b""), None, io::empty())
        .unwrap_err();
    assert!(matches!(error, UploadError::TooManySessions { .. }));

    store.cancel(&first).unwrap();
    store
        .put_monolithic("repo", &Digest::sha256_of(b""), None, io::empty())
        .unwrap();
    store.create("repo").unwrap();
}

#[test]
fn blob_and_chunk_bounds_are_enforced_and_change_nothing() {
    let dir = TempDir::new("bounds");
    let (store, _) = open(dir.path(), small_limits()); // chunk 1 MiB, blob 4 MiB
    let id = store.create("repo").unwrap().id;
    let chunk = bytes((1 << 20) + 1, 10);

    // Chunk too large, declared (refused before reading) and not declared (cut off).
    let error = store
        .append(&id, Some(0), Some(chunk.len() as u64), &chunk[..])
        .unwrap_err();
    assert!(matches!(
        error,
        UploadError::ChunkTooLarge {
            chunk_bytes_max: 1_048_576
        }
    ));
    assert_eq!(
        (error.oci_code(), error.http_status()),
        ("SIZE_INVALID", 413)
    );
    let error = store.append(&id, Some(0), None, &chunk[..]).unwrap_err();
    assert!(
        matches!(error, UploadError::ChunkTooLarge { .. }),
        "{error:?}"
    );
    assert_unchanged(&store, dir.path(), &id, 0);

    // Fill to 4 MiB - 10, then the blob bound is the one that bites.
    let full = bytes((4 << 20) - 10, 11);
    append_in_chunks(&store, &id, &full, 1 << 20);
    let offset = full.len() as u64;
    let error = store
        .append(&id, Some(offset), Some(11), &chunk[..11])
        .unwrap_err();
    assert!(
        matches!(error, UploadError::BlobTooLarge { offset: o, blob_bytes_max: 4_194_304 } if o == offset),
        "{error:?}"
    );
    let error = store
        .append(&id, Some(offset), None, &chunk[..11])
        .unwrap_err();
    assert!(
        matches!(error, UploadError::BlobTooLarge { .. }),
        "{error:?}"
    );
    assert_unchanged(&store, dir.path(), &id, offset);

    // Exactly up to the bound is fine.
    store.append(&id, Some(offset), None, &chunk[..10]).unwrap();
    let mut blob = full.clone();
    blob.extend_from_slice(&chunk[..10]);
    store
        .finish(&id, &Digest::sha256_of(&blob), NO_CHUNK)
        .unwrap();
}

#[test]
fn bad_limits_are_refused() {
    let dir = TempDir::new("limits");
    for limits in [
        UploadLimits {
            sessions_max: 0,
            ..small_limits()
        },
        UploadLimits {
            chunk_bytes_max: (4 << 20) + 1,
            ..small_limits()
        },
        UploadLimits {
            blob_bytes_max: 0,
            ..small_limits()
        },
        UploadLimits {
            idle_timeout: Duration::ZERO,
            ..small_limits()
        },
    ] {
        let error = UploadStore::open(dir.path(), limits).unwrap_err();
        assert!(matches!(error, UploadError::Limits(_)), "{error:?}");
    }
    UploadLimits::default().check().unwrap();
}

#[test]
fn bad_ids_are_refused_and_never_used_as_paths() {
    let dir = TempDir::new("ids");
    let (store, _) = open(dir.path(), small_limits());
    let good = store.create("repo").unwrap().id;
    let long = "a".repeat(1000);
    let bad = [
        "../x".to_owned(),
        format!("../{}", &good[3..]),
        good.to_uppercase(),
        good[..31].to_owned(),
        format!("{good}0"),
        String::new(),
        "0123456789abcdef0123456789abcdeg".to_owned(),
        "../../../../../../../../etc/pass".to_owned(),
        long,
    ];
    for id in &bad {
        for error in [
            store.status(id).unwrap_err(),
            store.append(id, None, None, &b"x"[..]).unwrap_err(),
            store
                .finish(id, &Digest::sha256_of(b""), NO_CHUNK)
                .unwrap_err(),
            store.cancel(id).unwrap_err(),
        ] {
            match &error {
                UploadError::InvalidId { id: quoted } => {
                    assert!(quoted.chars().count() <= QUOTE_LEN_MAX);
                }
                other => panic!("{id:?}: expected InvalidId, got {other:?}"),
            }
            assert_eq!(
                (error.oci_code(), error.http_status()),
                ("BLOB_UPLOAD_UNKNOWN", 404)
            );
        }
    }
    // A well-formed id that names nothing.
    let error = store
        .status("0123456789abcdef0123456789abcdef")
        .unwrap_err();
    assert!(matches!(error, UploadError::UnknownSession { .. }));
    assert_eq!(store.status(&good).unwrap().offset, 0);
}

#[test]
fn repository_names_follow_the_oci_grammar() {
    fn check(name: &str, ok: bool) {
        let result = validate_repository(name);
        assert_eq!(result.is_ok(), ok, "{name:?}: {result:?}");
        if let Err(error) = result {
            assert_eq!(
                (error.oci_code(), error.http_status()),
                ("NAME_INVALID", 400)
            );
        }
    }
    for good in [
        "a",
        "library/ubuntu",
        "my-org/my--app/v1.2",
        "a_b/c__d/e.f/g---h",
        "0/1/2",
        "x".repeat(255).as_str(),
    ] {
        check(good, true);
    }
    for bad in [
        "",
        "Library",
        "a/",
        "/a",
        "a//b",
        "a..b",
        "a___b",
        "a_-b",
        "-a",
        "a-",
        "a.",
        "_a",
        "a b",
        "a:b",
        "ü",
        "a/../b",
        "x".repeat(256).as_str(),
    ] {
        check(bad, false);
    }
}

#[test]
fn error_codes_and_statuses_map_in_one_place() {
    let io_error = || io::Error::other("boom");
    let cases = [
        (
            UploadError::LengthMismatch {
                declared: 1,
                received: 0,
            },
            "SIZE_INVALID",
            400,
        ),
        (
            UploadError::NoSpace {
                path: PathBuf::from("/x"),
                source: io_error(),
            },
            "UNKNOWN",
            507,
        ),
        (
            UploadError::Io {
                op: "write",
                path: PathBuf::from("/x"),
                source: io_error(),
            },
            "UNKNOWN",
            500,
        ),
        (
            UploadError::InvalidRepository {
                name: "A".into(),
                reason: "r",
            },
            "NAME_INVALID",
            400,
        ),
    ];
    for (error, code, status) in cases {
        assert_eq!(
            (error.oci_code(), error.http_status()),
            (code, status),
            "{error}"
        );
    }
    let no_space = UploadError::io("write", "/x", io::Error::from(io::ErrorKind::StorageFull));
    assert!(no_space.is_no_space());
}

#[test]
fn a_second_store_on_the_same_root_is_refused() {
    let dir = TempDir::new("lock");
    let (_store, _) = open(dir.path(), small_limits());
    let error = UploadStore::open(dir.path(), small_limits()).unwrap_err();
    assert!(matches!(error, UploadError::Locked { .. }), "{error:?}");
}

// ---- restart and recovery -------------------------------------------------------------------

#[test]
fn a_restart_in_the_middle_of_a_session_resumes_and_finishes_correctly() {
    let dir = TempDir::new("restart");
    let blob = bytes(900_000, 12);
    let (first, second) = {
        let (store, _) = open(dir.path(), small_limits());
        let first = store.create("org/app").unwrap().id;
        append_in_chunks(&store, &first, &blob[..500_000], 200_000);
        let second = store.create("org/app").unwrap().id;
        append_in_chunks(&store, &second, &blob[..300_000], 300_000);
        (first, second)
    };

    let (store, report) = open(dir.path(), small_limits());
    assert_eq!(report.n_discarded, 0, "{:?}", report.discarded);
    let mut recovered = report.sessions.clone();
    recovered.sort_by_key(|session| session.offset);
    assert_eq!(
        recovered,
        vec![
            RecoveredSession {
                id: second.clone(),
                repo: "org/app".into(),
                offset: 300_000
            },
            RecoveredSession {
                id: first.clone(),
                repo: "org/app".into(),
                offset: 500_000
            },
        ]
    );
    assert_eq!(store.status(&first).unwrap().offset, 500_000);

    // The first goes on appending (hash rebuilt on the append); the second finishes at once
    // (hash rebuilt on the finish).
    let error = store.append(&first, Some(0), None, &blob[..1]).unwrap_err();
    assert!(matches!(
        error,
        UploadError::RangeInvalid {
            offset: 500_000,
            ..
        }
    ));
    append_in_chunks(&store, &first, &blob[500_000..], 150_000);
    let completed = store
        .finish(&first, &Digest::sha256_of(&blob), NO_CHUNK)
        .unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), blob);
    let completed = store
        .finish(&second, &Digest::sha256_of(&blob[..300_000]), NO_CHUNK)
        .unwrap();
    assert_eq!(completed.len, 300_000);
}

#[test]
fn recovery_removes_leftovers_and_keeps_good_sessions() {
    let dir = TempDir::new("recovery");
    let root = dir.path();
    let (good, staged) = {
        let (store, _) = open(root, small_limits());
        let good = store.create("repo").unwrap().id;
        store.append(&good, Some(0), None, &b"hello"[..]).unwrap();
        let staged = store
            .put_monolithic("repo", &Digest::sha256_of(b"blob"), None, &b"blob"[..])
            .unwrap();
        (good, staged)
    };
    let sessions = root.join("sessions");
    let id = |n: u8| format!("{:032x}", u128::from(n));
    let plant_session = |name: &str, meta: Option<&str>, data: bool| {
        let dir = sessions.join(name);
        fs::create_dir_all(&dir).unwrap();
        if let Some(meta) = meta {
            fs::write(dir.join("meta"), meta).unwrap();
        }
        if data {
            fs::write(dir.join("data"), b"abc").unwrap();
        }
    };
    let good_meta = fs::read_to_string(sessions.join(&good).join("meta")).unwrap();
    plant_session(&format!(".tmp-{}", id(1)), Some(&good_meta), true);
    plant_session(&format!(".tmp-removed-{}", id(2)), Some(&good_meta), true);
    plant_session(&id(3), None, true);
    plant_session(&id(4), Some("garbage"), true);
    plant_session(&id(5), Some(&good_meta), false);
    plant_session(
        &id(6),
        Some(&good_meta.replace("repo repo", "repo Bad")),
        true,
    );
    plant_session("not-an-id", Some(&good_meta), true);
    fs::write(sessions.join(id(7)), b"a file, not a directory").unwrap();
    fs::write(sessions.join(&good).join(".tmp-meta"), b"half").unwrap();
    fs::write(sessions.join(&good).join("stray"), b"?").unwrap();
    fs::write(root.join("complete").join(".tmp-half"), b"?").unwrap();
    fs::write(root.join("unrelated"), b"left alone").unwrap();

    let (store, report) = open(root, small_limits());
    assert_eq!(
        report.sessions,
        vec![RecoveredSession {
            id: good.clone(),
            repo: "repo".into(),
            offset: 5
        }]
    );
    let reasons: Vec<(String, DiscardReason)> = report
        .discarded
        .iter()
        .map(|discarded| {
            let path = discarded.path.strip_prefix(root).unwrap();
            (
                path.to_string_lossy().into_owned(),
                discarded.reason.clone(),
            )
        })
        .collect();
    let staged_name = staged
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut expected = vec![
        ("complete/.tmp-half".to_owned(), DiscardReason::StagedBlob),
        (format!("complete/{staged_name}"), DiscardReason::StagedBlob),
        (format!("sessions/.tmp-{}", id(1)), DiscardReason::Temporary),
        (
            format!("sessions/.tmp-removed-{}", id(2)),
            DiscardReason::Temporary,
        ),
        (format!("sessions/{}", id(3)), DiscardReason::MetaMissing),
        (
            format!("sessions/{}", id(4)),
            DiscardReason::MetaCorrupt("first line is not \"shoal-upload-meta v1\"".into()),
        ),
        (format!("sessions/{}", id(5)), DiscardReason::DataMissing),
        (format!("sessions/{}", id(7)), DiscardReason::WrongType),
        (
            format!("sessions/{good}/.tmp-meta"),
            DiscardReason::Temporary,
        ),
        (format!("sessions/{good}/stray"), DiscardReason::UnknownName),
        ("sessions/not-an-id".to_owned(), DiscardReason::UnknownName),
    ];
    // id(6)'s meta names an invalid repository: corrupt, whatever the exact message.
    let bad_repo = reasons
        .iter()
        .position(|(path, _)| *path == format!("sessions/{}", id(6)))
        .unwrap();
    assert!(matches!(reasons[bad_repo].1, DiscardReason::MetaCorrupt(_)));
    let mut reasons = reasons;
    reasons.remove(bad_repo);
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(reasons, expected);
    assert_eq!(report.n_discarded, 12);

    assert_eq!(names_in(&sessions), vec![good.clone()]);
    assert_eq!(names_in(&sessions.join(&good)), vec!["data", "meta"]);
    assert!(names_in(&root.join("complete")).is_empty());
    assert!(root.join("unrelated").exists());
    let completed = store
        .finish(&good, &Digest::sha256_of(b"hello"), NO_CHUNK)
        .unwrap();
    assert_eq!(completed.len, 5);
}

#[test]
fn recovery_drops_expired_and_excess_sessions() {
    let dir = TempDir::new("recovery-bounds");
    let ids: Vec<String> = {
        let (store, _) = open(dir.path(), small_limits());
        (0..3).map(|_| store.create("repo").unwrap().id).collect()
    };
    let limits = UploadLimits {
        sessions_max: 2,
        ..small_limits()
    };
    let (store, report) = open(dir.path(), limits);
    assert_eq!(report.sessions.len(), 2);
    assert_eq!(report.n_discarded, 1);
    assert_eq!(report.discarded[0].reason, DiscardReason::OverSessionsMax);
    assert_eq!(store.n_sessions(), 2);
    drop(store);

    // Sessions idle past the timeout at start-up are dropped.
    std::thread::sleep(Duration::from_millis(30));
    let limits = UploadLimits {
        idle_timeout: Duration::from_millis(10),
        ..small_limits()
    };
    let (store, report) = open(dir.path(), limits);
    assert!(report.sessions.is_empty());
    assert_eq!(report.n_discarded, 2);
    assert!(
        report
            .discarded
            .iter()
            .all(|d| d.reason == DiscardReason::Expired)
    );
    assert_eq!(store.n_sessions(), 0);
    assert!(
        ids.iter()
            .all(|id| !dir.path().join("sessions").join(id).exists())
    );
}

// ---- concurrency ----------------------------------------------------------------------------

#[test]
fn appends_to_different_sessions_run_from_many_threads() {
    let dir = TempDir::new("threads");
    let (store, _) = open(dir.path(), small_limits());
    let n_threads = 6;
    std::thread::scope(|scope| {
        let store = &store;
        let handles: Vec<_> = (0..n_threads)
            .map(|t| {
                scope.spawn(move || {
                    let blob = bytes(700_000 + t * 1000, 100 + t as u64);
                    let id = store.create(&format!("repo/t{t}")).unwrap().id;
                    append_in_chunks(store, &id, &blob, 65_536 + t);
                    let completed = store
                        .finish(&id, &Digest::sha256_of(&blob), NO_CHUNK)
                        .unwrap();
                    assert_eq!(fs::read(&completed.path).unwrap(), blob);
                    store.release(completed).unwrap();
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
    assert_eq!(store.n_sessions(), 0);
    assert!(names_in(&dir.path().join("complete")).is_empty());
}

// ---- disk full ------------------------------------------------------------------------------

/// A small tmpfs mounted for one test, unmounted on drop (also when the test fails).
struct TmpfsMount {
    dir: TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> TmpfsMount {
        let dir = TempDir::new("tmpfs");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("cannot run mount");
        assert!(
            output.status.success(),
            "mount -t tmpfs failed (the tests need root): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        TmpfsMount { dir }
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
fn a_full_disk_is_no_space_and_leaves_the_offset_unchanged() {
    let mount = TmpfsMount::new("1m");
    let root = mount.path().join("uploads");
    let (store, _) = open(&root, small_limits());
    let id = store.create("repo").unwrap().id;
    let first = bytes(512 << 10, 13);
    store.append(&id, Some(0), None, &first[..]).unwrap();

    let more = bytes(1 << 20, 14);
    let error = store
        .append(&id, Some(512 << 10), None, &more[..])
        .unwrap_err();
    assert!(error.is_no_space(), "{error:?}");
    assert_eq!(error.http_status(), 507);
    assert!(
        error.to_string().contains(&*root.to_string_lossy()),
        "{error}"
    );
    assert_unchanged(&store, &root, &id, 512 << 10);

    // The session is still good: it finishes with the bytes it acknowledged.
    let completed = store
        .finish(&id, &Digest::sha256_of(&first), NO_CHUNK)
        .unwrap();
    assert_eq!(fs::read(&completed.path).unwrap(), first);
    store.release(completed).unwrap();

    // A monolithic upload that does not fit leaves nothing either.
    let bigger = bytes(2 << 20, 15);
    let error = store
        .put_monolithic("repo", &Digest::sha256_of(&bigger), None, &bigger[..])
        .unwrap_err();
    assert!(error.is_no_space(), "{error:?}");
    assert!(names_in(&root.join("complete")).is_empty());
    drop(store);
}
