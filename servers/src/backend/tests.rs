#![allow(clippy::unwrap_used)]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shoal_proto::types::Digest;

use super::dedup::{Flights, fetch_to_file};
use super::local::LocalBackend;
use super::writeback::{WriteBack, WriteBackConfig};
use super::*;
use crate::config::backends::BackendsFile;

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("shoal-backend-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run<F: Future>(f: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(f)
}

fn digest_of(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest::Sha256(sha2::Sha256::digest(bytes).into())
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

async fn read_all(mut stream: ByteStream) -> Result<Vec<u8>, BackendError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next_chunk().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A stream of `bytes` in pieces of `piece` bytes, then `tail` (an error, say).
fn stream_of(bytes: Vec<u8>, piece: usize, len: u64, tail: Option<BackendError>) -> ByteStream {
    let mut items: Vec<Result<Bytes, BackendError>> = bytes
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if let Some(error) = tail {
        items.push(Err(error));
    }
    ByteStream::new(len, futures_util::stream::iter(items))
}

#[test]
fn keys_follow_the_layout_and_refuse_escapes() {
    let digest = digest_of(b"x");
    let key = Key::blob("library/alpine", &digest).unwrap();
    assert_eq!(key.path(), format!("blobs/sha256/{}", digest.encoded()));
    assert_eq!(key.as_blob(), Some(digest));
    let tag = Key::tag("library/alpine", "3.20").unwrap();
    assert_eq!(tag.path(), "tags/library/alpine/3.20");
    assert_eq!(tag.as_tag(), Some(("library/alpine", "3.20")));
    assert_eq!(parse_tag_object(&tag_object(&digest)).unwrap(), digest);
    for bad in [
        "",
        "/abs",
        "a//b",
        "a/",
        "../x",
        "a/../b",
        "a/./b",
        ".tmp/1",
        "a/.hidden",
        "a b",
        "a\\b",
        "a/%2e%2e",
    ] {
        let error = Key::new("library/alpine", bad).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{bad:?}");
    }
    assert!(Key::new("library/alpine", &"a".repeat(KEY_PATH_LEN_MAX + 1)).is_err());
    assert!(Key::new("Bad/Name", "x").is_err());
    assert!(Key::tag("library/alpine", ".bad").is_err());
    assert!(Key::tag("library/alpine", "a/b").is_err());
}

#[test]
fn local_put_get_stat_list_delete() {
    let scratch = Scratch::new("local-basic");
    let backend = LocalBackend::new(&scratch.0.join("root")).unwrap();
    run(async {
        backend.check().await.unwrap();
        let body = data(3 * CHUNK_BYTES_MAX + 123);
        let key = Key::blob("library/app", &digest_of(&body)).unwrap();
        assert_eq!(backend.stat(&key).await.unwrap(), None);
        assert!(backend.get(&key, None).await.unwrap_err().is_not_found());

        // From a stream.
        let stream = stream_of(body.clone(), 100_000, body.len() as u64, None);
        backend
            .put(&key, PutSource::Stream(stream), body.len() as u64)
            .await
            .unwrap();
        assert_eq!(backend.stat(&key).await.unwrap(), Some(body.len() as u64));
        let all = read_all(backend.get(&key, None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(all, body);
        // Ranges: inside, across chunks, cut at the end, outside.
        let got = backend.get(&key, Some(10..20)).await.unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(read_all(got).await.unwrap(), &body[10..20]);
        let start = CHUNK_BYTES_MAX as u64 - 5;
        let got = backend.get(&key, Some(start..start + 10)).await.unwrap();
        assert_eq!(
            read_all(got).await.unwrap(),
            &body[start as usize..start as usize + 10]
        );
        let n = body.len() as u64;
        let got = backend.get(&key, Some(n - 3..n + 100)).await.unwrap();
        assert_eq!(read_all(got).await.unwrap(), &body[body.len() - 3..]);
        let error = backend.get(&key, Some(n..n + 1)).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");

        // From a file.
        let src = scratch.0.join("src");
        std::fs::write(&src, b"digest-text-and-more").unwrap();
        let tag = Key::tag("library/app", "v1").unwrap();
        backend
            .put(&tag, PutSource::File(src.clone()), 11)
            .await
            .unwrap();
        let got = read_all(backend.get(&tag, None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"digest-text");
        for t in ["v2", "v3", "a"] {
            let k = Key::tag("library/app", t).unwrap();
            backend
                .put(&k, PutSource::File(src.clone()), 3)
                .await
                .unwrap();
        }

        // Listing, in pages, in path order.
        let page = backend
            .list("library/app", "tags/library/app", PageRequest::first(2))
            .await
            .unwrap();
        let paths: Vec<&str> = page.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tags/library/app/a", "tags/library/app/v1"]);
        assert_eq!(page.entries[1].len, Some(11));
        let next = page.next.clone().unwrap();
        let page = backend
            .list(
                "library/app",
                "tags/library/app",
                PageRequest {
                    after: Some(&next),
                    limit: 2,
                },
            )
            .await
            .unwrap();
        let paths: Vec<&str> = page.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tags/library/app/v2", "tags/library/app/v3"]);
        let everything = backend
            .list("library/app", "", PageRequest::first(100))
            .await
            .unwrap();
        assert_eq!(everything.entries.len(), 5);
        assert_eq!(everything.entries[0].path, key.path());
        assert_eq!(everything.next, None);
        let error = backend
            .list("library/app", "../etc", PageRequest::first(1))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);

        backend.delete(&key).await.unwrap();
        backend.delete(&key).await.unwrap(); // nothing there: still fine
        assert_eq!(backend.stat(&key).await.unwrap(), None);
    });
}

#[test]
fn local_failed_puts_leave_nothing() {
    let scratch = Scratch::new("local-failed");
    let root = scratch.0.join("root");
    let backend = LocalBackend::new(&root).unwrap();
    let visible = |root: &Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                } else {
                    found.push(entry.path().display().to_string());
                }
            }
        }
        found
    };
    run(async {
        let body = data(2 * CHUNK_BYTES_MAX);
        let key = Key::blob("library/app", &digest_of(&body)).unwrap();
        let len = body.len() as u64;

        // A stream that fails half-way.
        let half = body[..body.len() / 2].to_vec();
        let failing = stream_of(
            half.clone(),
            65536,
            len,
            Some(BackendError::unavailable("peer gone")),
        );
        let error = backend
            .put(&key, PutSource::Stream(failing), len)
            .await
            .unwrap_err();
        assert!(error.message.contains("peer gone"), "{error}");
        // A stream shorter than it said.
        let short = stream_of(half.clone(), 65536, len, None);
        let error = backend
            .put(&key, PutSource::Stream(short), len)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        // A stream longer than it said.
        let long = stream_of(body.clone(), 65536, len - 1, None);
        let error = backend
            .put(&key, PutSource::Stream(long), len - 1)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        // A file shorter than the length, and a missing file.
        let src = scratch.0.join("short");
        std::fs::write(&src, &half).unwrap();
        let error = backend
            .put(&key, PutSource::File(src), len)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        let error = backend
            .put(&key, PutSource::File(scratch.0.join("missing")), len)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        assert_eq!(backend.stat(&key).await.unwrap(), None);

        // A put cancelled mid-way (its future dropped) after some chunks were written.
        let (sender, receiver) = flume::bounded::<Result<Bytes, BackendError>>(1);
        let stalled = ByteStream::new(len, receiver.into_stream());
        let put = backend.put(&key, PutSource::Stream(stalled), len);
        sender.send(Ok(Bytes::from(half.clone()))).unwrap();
        let cancelled = compio::time::timeout(Duration::from_millis(300), put).await;
        assert!(
            cancelled.is_err(),
            "the put should still be waiting for bytes"
        );
        assert_eq!(backend.stat(&key).await.unwrap(), None);
    });
    assert_eq!(visible(&root), Vec::<String>::new(), "no file left behind");

    // A crash mid-put leaves a temporary file; reopening the backend removes it.
    std::fs::write(root.join(".tmp").join("99999-0"), b"half a blob").unwrap();
    let reopened = LocalBackend::new(&root).unwrap();
    assert_eq!(visible(&root), Vec::<String>::new());
    run(async {
        let listed = reopened
            .list("library/app", "", PageRequest::first(10))
            .await
            .unwrap();
        assert!(listed.entries.is_empty());
    });
}

#[test]
fn routing_picks_the_first_matching_namespace() {
    let scratch = Scratch::new("routing");
    let text = format!(
        r#"
        [[backend]]
        namespace = "team/*"
        kind = "local"
        root = "{0}/team"

        [[backend]]
        namespace = "**"
        kind = "local"
        root = "{0}/rest"
        "#,
        scratch.0.display()
    );
    let file: BackendsFile = crate::config::parse(Path::new("b.toml"), &text).unwrap();
    let backends = Backends::build(&file).unwrap();
    assert!(
        backends
            .for_namespace("team/app")
            .unwrap()
            .describe()
            .ends_with("/team")
    );
    assert!(
        backends
            .for_namespace("team/a/b")
            .unwrap()
            .describe()
            .ends_with("/rest")
    );
    assert!(
        backends
            .for_namespace("library/x")
            .unwrap()
            .describe()
            .ends_with("/rest")
    );
    run(async { backends.check().await.unwrap() });

    let only: BackendsFile = crate::config::parse(
        Path::new("b.toml"),
        &format!(
            "[[backend]]\nnamespace = \"team/*\"\nkind = \"local\"\nroot = \"{}/t\"\n",
            scratch.0.display()
        ),
    )
    .unwrap();
    let error = Backends::build(&only)
        .unwrap()
        .for_namespace("other/app")
        .unwrap_err();
    assert!(error.message.contains("\"other/app\""), "{error}");
}

/// Counts the gets that reach a backend.
#[derive(Debug)]
struct Counting {
    inner: LocalBackend,
    gets: AtomicUsize,
}

impl Backend for Counting {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        self.inner.stat(key)
    }
    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // Slow enough that every caller arrives while the first get runs.
            compio::time::sleep(Duration::from_millis(200)).await;
            self.inner.get(key, range).await
        })
    }
    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()> {
        self.inner.put(key, source, len)
    }
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        self.inner.list(namespace, prefix, page)
    }
    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()> {
        self.inner.delete(key)
    }
    fn check(&self) -> BackendFuture<'_, ()> {
        self.inner.check()
    }
}

#[test]
fn concurrent_misses_share_one_get() {
    let scratch = Scratch::new("dedup");
    let counting = Arc::new(Counting {
        inner: LocalBackend::new(&scratch.0.join("root")).unwrap(),
        gets: AtomicUsize::new(0),
    });
    let backends = Rc::new(Backends::single(counting.clone()));
    let flights = Rc::new(Flights::<u64>::new(16));
    let body = data(CHUNK_BYTES_MAX + 17);
    let key = Key::blob("library/app", &digest_of(&body)).unwrap();
    let dest = scratch.0.join("fetched");
    run(async {
        backends
            .put(
                &key,
                PutSource::Stream(ByteStream::from_bytes(Bytes::from(body.clone()))),
                body.len() as u64,
            )
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (backends, flights, key, dest) =
                    (backends.clone(), flights.clone(), key.clone(), dest.clone());
                compio::runtime::spawn(async move {
                    fetch_to_file(&flights, &backends, &key, &dest).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), body.len() as u64);
        }
        assert_eq!(counting.gets.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
        assert_eq!(std::fs::read(&dest).unwrap(), body);

        // A miss: every waiter gets the error; nothing is written.
        let missing = Key::blob("library/app", &digest_of(b"absent")).unwrap();
        let absent = scratch.0.join("absent");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (backends, flights, key, dest) = (
                    backends.clone(),
                    flights.clone(),
                    missing.clone(),
                    absent.clone(),
                );
                compio::runtime::spawn(async move {
                    fetch_to_file(&flights, &backends, &key, &dest).await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().unwrap_err().is_not_found());
        }
        assert_eq!(counting.gets.load(Ordering::SeqCst), 2);
        assert!(!absent.exists());

        // A leader that is cancelled hands its waiters an error. Its operation never ends,
        // so only the cancellation ends it; on one compio thread a spawned task has been
        // polled (and joined the flight) once the spawner awaited anything.
        let (_never, pending) = flume::bounded::<()>(1);
        let leader = {
            let flights = flights.clone();
            compio::runtime::spawn(async move {
                flights
                    .run("k", || async move {
                        let _ = pending.recv_async().await;
                        Ok(1)
                    })
                    .await
            })
        };
        compio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(flights.len(), 1);
        let waiter = {
            let flights = flights.clone();
            compio::runtime::spawn(async move { flights.run("k", || async { Ok(2) }).await })
        };
        compio::time::sleep(Duration::from_millis(1)).await;
        drop(leader);
        let error = waiter.await.unwrap().unwrap_err();
        assert!(error.message.contains("cancelled"), "{error}");
        assert!(flights.is_empty());
        // The next run for the key is a new flight.
        assert_eq!(flights.run("k", || async { Ok(3) }).await.unwrap(), 3);
        assert!(flights.is_empty());
    });
}

#[test]
fn flights_are_bounded() {
    run(async {
        let flights = Rc::new(Flights::<u64>::new(1));
        let (sender, receiver) = flume::bounded::<()>(1);
        let first = {
            let flights = flights.clone();
            compio::runtime::spawn(async move {
                flights
                    .run("a", || async move {
                        let _ = receiver.recv_async().await;
                        Ok(1)
                    })
                    .await
            })
        };
        compio::time::sleep(Duration::from_millis(20)).await;
        let error = flights.run("b", || async { Ok(2) }).await.unwrap_err();
        assert!(error.message.contains("bound"), "{error}");
        sender.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(flights.run("b", || async { Ok(2) }).await.unwrap(), 2);
    });
}

#[test]
fn write_back_survives_a_restart_and_sets_aside_what_cannot_work() {
    let scratch = Scratch::new("writeback-local");
    let backend = Arc::new(LocalBackend::new(&scratch.0.join("root")).unwrap());
    let backends = Arc::new(Backends::single(backend.clone()));
    let journal = scratch.0.join("journal");
    let config = WriteBackConfig {
        entries_max: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    };
    let file = scratch.0.join("blob");
    let body = data(5000);
    std::fs::write(&file, &body).unwrap();
    let key = Key::blob("library/app", &digest_of(&body)).unwrap();
    run(async {
        // Queued without a driver, then the queue "crashes" (dropped).
        let queue = WriteBack::open(&journal, backends.clone(), config.clone()).unwrap();
        queue
            .enqueue(key.clone(), file.clone(), body.len() as u64)
            .await
            .unwrap();
        queue
            .enqueue(
                Key::blob("library/app", &digest_of(b"gone")).unwrap(),
                scratch.0.join("no-such-file"),
                4,
            )
            .await
            .unwrap();
        queue.enqueue(key.clone(), file.clone(), 10).await.unwrap();
        let error = queue
            .enqueue(key.clone(), file.clone(), 1)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("full (3 entries)"), "{error}");
        drop(queue);
        assert_eq!(backend.stat(&key).await.unwrap(), None);

        // Reopened: the entries are back and get delivered; the one whose file is gone is
        // set aside.
        let queue = Rc::new(WriteBack::open(&journal, backends.clone(), config.clone()).unwrap());
        assert_eq!(queue.len(), 3);
        let driver = {
            let queue = queue.clone();
            compio::runtime::spawn(async move { queue.run().await })
        };
        assert!(queue.wait_empty(Duration::from_secs(10)).await);
        drop(driver);
        // The later entry (10 bytes) was the last written.
        assert_eq!(backend.stat(&key).await.unwrap(), Some(10));
    });
    let mut names: Vec<String> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.failed"]);
}
