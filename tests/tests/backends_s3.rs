//! The S3 backend against a real S3-compatible server: moto's server (`moto_server`, from
//! PyPI's `moto[server]`, installed by `.ci/run`), started per test on a loopback port and
//! killed on drop. Objects of several MiB stream both ways; a missing bucket and an
//! unreachable endpoint fail the start-up check by name; with the server down a put fails
//! cleanly and the write-back queue delivers it, across a restart of the queue, once the
//! server is back; eight concurrent misses for one key make one GET (counted in the server's
//! access log); no log line of any of it, at any level, holds a credential.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::Digest as _;
use shoal_perf::procs::{Proc, Scratch};
use shoal_proto::types::Digest;
use shoal_servers::backend::dedup::{Flights, fetch_to_file};
use shoal_servers::backend::writeback::{WriteBack, WriteBackConfig};
use shoal_servers::backend::{Backends, ByteStream, ErrorKind, Key, PageRequest, PutSource};
use shoal_servers::config::backends::BackendsFile;

const BUCKET: &str = "shoal-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr, proc: &Proc) {
    let deadline = Instant::now() + common::WAIT_MAX;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} never listened; stderr:\n{}",
            proc.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// moto's S3 server on `port`, with `BUCKET` created; killed on drop.
fn moto(scratch: &Scratch, port: u16, log: &str) -> Proc {
    let port_text = port.to_string();
    let proc = Proc::start(
        "moto_server",
        Path::new("moto_server"),
        &["-H", "127.0.0.1", "-p", &port_text],
        &[("PYTHONUNBUFFERED", "1")],
        scratch.path(log),
    )
    .expect("moto_server (pip install 'moto[server]'; .ci/run installs it)");
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &proc);
    let made = common::curl(&["-X", "PUT", &format!("http://127.0.0.1:{port}/{BUCKET}")]);
    assert_eq!(made.status, 200, "creating the bucket");
    proc
}

fn s3_config(port: u16, bucket: &str) -> BackendsFile {
    let text = format!(
        r#"
        [[backend]]
        namespace = "**"
        kind = "s3"
        bucket = "{bucket}"
        endpoint = "http://127.0.0.1:{port}"
        allow_http = true
        prefix = "shoal"
        access_key_id = "testing"
        secret_access_key = "testing"
        retries_max = 0
        connect_timeout = "2s"
        "#
    );
    shoal_servers::config::parse(Path::new("backends.toml"), &text).unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::Sha256(sha2::Sha256::digest(bytes).into())
}

async fn read_all(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::with_capacity(stream.len() as usize);
    while let Some(chunk) = stream.next_chunk().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// How many requests of `method` for `path` the server's access log shows.
fn requests_in_log(log: &Path, method: &str, path: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    let needle = format!("\"{method} {path}");
    text.lines().filter(|line| line.contains(&needle)).count()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn objects_stream_in_and_out_of_the_bucket() {
    let scratch = Scratch::new("s3-basic").unwrap();
    let port = free_port();
    let _server = moto(&scratch, port, "moto.log");
    // 20 MiB: a multipart upload (16 MiB parts); 3 MiB: one PUT.
    let big = common::bytes(20 << 20, 7);
    let small = common::bytes(3 << 20, 9);
    let big_key = Key::blob("team/app", &sha256(&big)).unwrap();
    let small_key = Key::blob("team/app", &sha256(&small)).unwrap();
    let big_file = write_file(scratch.root(), "big", &big);
    common::run(async {
        let backends = Backends::start(&s3_config(port, BUCKET)).await.unwrap();
        assert_eq!(backends.stat(&big_key).await.unwrap(), None);
        backends
            .put(
                &big_key,
                PutSource::File(big_file.clone()),
                big.len() as u64,
            )
            .await
            .unwrap();
        // A stream in 1 MiB chunks.
        let chunks: Vec<Result<Bytes, _>> = small
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = ByteStream::new(small.len() as u64, futures_util::stream::iter(chunks));
        backends
            .put(&small_key, PutSource::Stream(stream), small.len() as u64)
            .await
            .unwrap();

        assert_eq!(
            backends.stat(&big_key).await.unwrap(),
            Some(big.len() as u64)
        );
        assert_eq!(
            backends.stat(&small_key).await.unwrap(),
            Some(small.len() as u64)
        );
        let whole = backends.get(&big_key, None).await.unwrap();
        assert_eq!(whole.len(), big.len() as u64);
        assert!(read_all(whole).await == big, "whole object differs");
        // A range across the part boundary, and one cut at the end.
        let part = 16u64 << 20;
        let range = part - 1000..part + 5000;
        let got = read_all(backends.get(&big_key, Some(range.clone())).await.unwrap()).await;
        assert!(got == big[range.start as usize..range.end as usize]);
        let n = big.len() as u64;
        let got = read_all(backends.get(&big_key, Some(n - 10..n + 10)).await.unwrap()).await;
        assert!(got == big[big.len() - 10..]);
        let error = backends.get(&big_key, Some(n..n + 1)).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");

        // Listing in pages.
        let first = backends
            .list("team/app", "blobs", PageRequest::first(1))
            .await
            .unwrap();
        assert_eq!(first.entries.len(), 1);
        let after = first.next.clone().unwrap();
        let second = backends
            .list(
                "team/app",
                "blobs",
                PageRequest {
                    after: Some(&after),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        let mut listed: Vec<String> = first
            .entries
            .iter()
            .chain(&second.entries)
            .map(|e| e.path.clone())
            .collect();
        listed.sort();
        let mut expected = vec![big_key.path().to_owned(), small_key.path().to_owned()];
        expected.sort();
        assert_eq!(listed, expected);
        assert_eq!(second.next, None);

        // The objects are in the bucket, under the prefix.
        let listing = common::curl(&[&format!("http://127.0.0.1:{port}/{BUCKET}?list-type=2")]);
        let text = String::from_utf8_lossy(&listing.body);
        assert!(
            text.contains(&format!("<Key>shoal/{}</Key>", big_key.path())),
            "{text}"
        );

        backends.delete(&big_key).await.unwrap();
        backends.delete(&big_key).await.unwrap();
        assert_eq!(backends.stat(&big_key).await.unwrap(), None);
        assert!(
            backends
                .get(&big_key, None)
                .await
                .unwrap_err()
                .is_not_found()
        );

        // A short source fails and leaves no object.
        let short = ByteStream::from_bytes(Bytes::from(vec![1u8; 100]));
        let error = backends
            .put(&big_key, PutSource::Stream(short), 200)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        let error = backends
            .put(
                &big_key,
                PutSource::File(big_file.clone()),
                big.len() as u64 + 1,
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        assert_eq!(backends.stat(&big_key).await.unwrap(), None);
    });
}

#[test]
fn a_missing_bucket_or_endpoint_fails_the_start_up_by_name() {
    let scratch = Scratch::new("s3-startup").unwrap();
    let port = free_port();
    let _server = moto(&scratch, port, "moto.log");
    common::run(async {
        let error = Backends::start(&s3_config(port, "no-such-bucket"))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Config, "{error}");
        let message = error.to_string();
        assert!(message.contains("\"no-such-bucket\""), "{message}");
        assert!(
            message.contains(&format!("http://127.0.0.1:{port}")),
            "{message}"
        );
        assert!(message.contains("backend[0]"), "{message}");

        let closed = free_port();
        let error = Backends::start(&s3_config(closed, BUCKET))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("127.0.0.1:{closed}")),
            "{message}"
        );
        assert!(!message.contains("testing"), "a credential in {message}");
    });
}

#[test]
fn the_write_back_queue_delivers_after_an_outage_and_a_restart() {
    let scratch = Scratch::new("s3-writeback").unwrap();
    let port = free_port();
    let mut server = moto(&scratch, port, "moto-1.log");
    let body = common::bytes(5 << 20, 3);
    let file = write_file(scratch.root(), "blob", &body);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    let journal = scratch.path("journal");
    let config = WriteBackConfig {
        entries_max: 16,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    };
    let backends = Arc::new(common::run(Backends::start(&s3_config(port, BUCKET))).unwrap());
    server.kill();

    common::run(async {
        // The server is down: a direct put fails cleanly, as retryable.
        let error = backends
            .put(&key, PutSource::File(file.clone()), body.len() as u64)
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains(&port.to_string()), "{error}");

        // Queued, attempted (and failing) for a while, then the process "stops".
        let queue = Rc::new(WriteBack::open(&journal, backends.clone(), config.clone()).unwrap());
        queue
            .enqueue(key.clone(), file.clone(), body.len() as u64)
            .await
            .unwrap();
        let driver = {
            let queue = queue.clone();
            compio::runtime::spawn(async move { queue.run().await })
        };
        assert!(!queue.wait_empty(Duration::from_secs(2)).await);
        drop(driver);
        assert_eq!(queue.len(), 1);
    });

    // The server comes back (empty: moto keeps objects in memory), the queue restarts.
    let _server = moto(&scratch, port, "moto-2.log");
    common::run(async {
        let queue = Rc::new(WriteBack::open(&journal, backends.clone(), config.clone()).unwrap());
        assert_eq!(queue.len(), 1, "the entry survived the restart");
        let driver = {
            let queue = queue.clone();
            compio::runtime::spawn(async move { queue.run().await })
        };
        assert!(queue.wait_empty(common::WAIT_MAX).await, "delivered");
        drop(driver);
        assert_eq!(backends.stat(&key).await.unwrap(), Some(body.len() as u64));
        assert!(read_all(backends.get(&key, None).await.unwrap()).await == body);
    });
    let left: Vec<_> = std::fs::read_dir(&journal).unwrap().collect();
    assert!(left.is_empty(), "journal emptied: {left:?}");
}

#[test]
fn eight_concurrent_misses_make_one_get() {
    let scratch = Scratch::new("s3-dedup").unwrap();
    let port = free_port();
    let _server = moto(&scratch, port, "moto.log");
    let body = common::bytes(4 << 20, 5);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    common::run(async {
        let backends = Rc::new(Backends::start(&s3_config(port, BUCKET)).await.unwrap());
        let stream = ByteStream::from_bytes(Bytes::from(body.clone()));
        backends
            .put(&key, PutSource::Stream(stream), body.len() as u64)
            .await
            .unwrap();
        let flights = Rc::new(Flights::<u64>::new(64));
        let dest = scratch.path("fetched");
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
        assert!(std::fs::read(&dest).unwrap() == body);
    });
    let path = format!("/{BUCKET}/shoal/{}", key.path());
    // The server logs a request once it has answered it: wait for the line, then count.
    let log = scratch.path("moto.log");
    common::wait_until("the access log line", || {
        requests_in_log(&log, "GET", &path) >= 1
    });
    assert_eq!(requests_in_log(&log, "GET", &path), 1);
}

/// Collects every log line of the process.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_log_line_holds_a_credential() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Global: the backend runtime's threads log too. Every level, every crate (object_store,
    // reqwest, hyper included).
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let scratch = Scratch::new("s3-logs").unwrap();
    let port = free_port();
    let mut server = moto(&scratch, port, "moto.log");
    let text = format!(
        r#"
        [[backend]]
        namespace = "team/**"
        kind = "s3"
        bucket = "{BUCKET}"
        endpoint = "http://127.0.0.1:{port}"
        allow_http = true
        access_key_id = "AKIALOGSECRETONE"
        secret_access_key = "log-secret-two"
        session_token = "log-secret-three"
        retries_max = 1

        [[backend]]
        namespace = "**"
        kind = "registry"
        url = "http://127.0.0.1:{port}"
        username = "robot"
        password = "log-secret-four"
        "#
    );
    let file: BackendsFile =
        shoal_servers::config::parse(Path::new("backends.toml"), &text).unwrap();
    let body = common::bytes(1 << 20, 1);
    let blob = write_file(scratch.root(), "blob", &body);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    let backends = Arc::new(Backends::build(&file).unwrap());
    common::run(async {
        backends
            .put(&key, PutSource::File(blob.clone()), body.len() as u64)
            .await
            .unwrap();
        assert!(read_all(backends.get(&key, None).await.unwrap()).await == body);
    });
    server.kill();
    common::run(async {
        let queue = Rc::new(
            WriteBack::open(
                &scratch.path("journal"),
                backends.clone(),
                WriteBackConfig {
                    entries_max: 4,
                    backoff_min: Duration::from_millis(20),
                    backoff_max: Duration::from_millis(100),
                },
            )
            .unwrap(),
        );
        queue
            .enqueue(key.clone(), blob.clone(), body.len() as u64)
            .await
            .unwrap();
        // To the read-only registry: set aside, logged as an error.
        let upstream = Key::blob("other/app", &sha256(&body)).unwrap();
        queue
            .enqueue(upstream, blob.clone(), body.len() as u64)
            .await
            .unwrap();
        let driver = {
            let queue = queue.clone();
            compio::runtime::spawn(async move { queue.run().await })
        };
        compio::time::sleep(Duration::from_millis(500)).await;
        drop(driver);
        assert_eq!(queue.len(), 1);
    });
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("write-back failed; will retry"), "{logs}");
    assert!(logs.contains("write-back failed for good"), "{logs}");
    for secret in [
        "AKIALOGSECRETONE",
        "log-secret-two",
        "log-secret-three",
        "log-secret-four",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}
