//! The origin's internal HTTP API: blobs pushed in by the proxy, stored and seeded by one
//! [`Engine`] started as an origin (`EngineConfig::into_origin`), and read back.
//!
//! - `PUT /internal/blobs/<digest>`: the body is the blob. `Content-Length` is required
//!   (411 `SIZE_INVALID` without it) and bounded by [`OriginConfig::blob_bytes_max`] (413
//!   `SIZE_INVALID` beyond). The body streams to a temporary file under
//!   `<data dir>/incoming/` in [`WRITE_BUFFER_BYTES`] writes while it is hashed with the
//!   URL digest's algorithm (sha256 or sha512); a mismatch is 400 `DIGEST_INVALID`, a body
//!   that ends early (the client hung up) 400 `SIZE_INVALID`, and neither keeps anything.
//!   Then [`Engine::ingest_file`] copies it into the store (building the metainfo), the
//!   temporary file goes, and [`Engine::seed`] registers the metainfo with the tracker and
//!   joins the swarm. 201 with `Docker-Content-Digest`. A blob already stored is not
//!   received again: its body is read and discarded, it is (re)seeded, and the answer is 201
//!   (so a PUT that failed at the seeding step, 503, is retried by simply putting again).
//!   PUTs of one digest run one at a time; others wait for it.
//! - `HEAD /internal/blobs/<digest>`: 200 with `Content-Length` if stored, else 404
//!   `BLOB_UNKNOWN`.
//! - `GET /internal/blobs/<digest>`: the stored blob, one `Range` honoured like the agent
//!   ([`crate::http::blob::blob_response`]). Only what the store holds: the origin checks
//!   `store().has_blob` first and never fetches from the swarm for these requests (a blob
//!   evicted between that check and the open could still be fetched: origins do not evict
//!   today).
//! - `GET /internal/metainfo/<digest>`: the canonical encoding of a stored blob's metainfo
//!   (its sidecar, `application/octet-stream`), 404 `BLOB_UNKNOWN` if the blob is not
//!   stored. Trackers fetch it on a miss (metainfo is immutable, so they cache it).
//! - `?repo=<name>` on any of these: the repository the request is made for (checked
//!   against the name grammar: 400 `NAME_INVALID`). A miss is filled from the backend that
//!   serves that repository ([`Storage::read_namespace`]), and a pushed blob is written back
//!   under it ([`Storage::write_namespace`]); without it, the configured default namespace.
//! - `GET /internal/blobs/<digest>?repo=<name>&confirm=upstream`: the read of a manifest
//!   that the build-index does not list for `<name>`, in a pull-through repository. Served
//!   only if `<name>`'s backend holds blobs per repository (an upstream registry) and holds
//!   this digest in `<name>` (seen in a fetch or a stat for `<name>` within
//!   [`UPSTREAM_HOLDS_TTL`], else asked now); otherwise 404 `BLOB_UNKNOWN`, whatever the
//!   store holds. So a repository reads by digest only what its upstream has.
//! - A read (GET of a blob or a metainfo) that misses while the backend is down or
//!   unreachable is 503 `UNAVAILABLE` (whether the blob exists is unknown: clients retry);
//!   so is one whose backend answered wrongly (bytes that do not hash to the digest, a
//!   refused login) or that cannot be ingested, with the reason. Only a backend that says it
//!   lacks the blob makes a 404. HEADs never reach the backend (404 unless stored). Nothing
//!   of a failed fetch is kept.
//! - `GET /metrics`: the engine's counters, Prometheus text ([`crate::http::metrics`]).
//! - Anything else: 404 `NAME_UNKNOWN` for other paths, 405 `UNSUPPORTED` for other
//!   methods, 400 `DIGEST_INVALID` for a malformed digest.
//!
//! At start-up ([`Origin::start`]) leftovers of `incoming/` are removed and every blob in the
//! store is seeded again, so a restarted origin serves the swarm at once.
//!
//! Runs on one compio runtime (see `shoal origin`); the engine's shards are other threads.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use compio::io::AsyncWriteAtExt as _;
use event_listener::Event;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use shoal_engine::Engine;
use shoal_proto::Digest;

use crate::backend::dedup::{Flights, fetch_to_file};
use crate::backend::writeback::{WriteBack, WriteBackConfig};
use crate::backend::{Backends, ErrorKind, Key};
use crate::build_index::validate_repository;
use crate::cluster::{HEALTH_PATH, OriginCluster};
use crate::http::blob::{CONTENT_DIGEST_HEADER, blob_response, engine_error, header_value};
use crate::http::client::{ClientBody, ClientConfig, HttpClient};
use crate::http::metrics::{METRICS_PATH, metrics_response};
use crate::http::query;
use crate::http::route::parse_digest;
use crate::http::{ErrorCode, Handler, LocalBody, OciError, method_not_allowed};
use crate::uploads::disk::Hasher;

/// The prefix of every blob path.
pub const BLOBS_PATH: &str = "/internal/blobs/";

/// The prefix of every metainfo path.
pub const METAINFO_PATH: &str = "/internal/metainfo/";

/// Directory under the store's root where bodies are received before ingestion. The
/// engine's store only looks at its own `blobs/` and `downloads/`.
pub const INCOMING_DIR: &str = "incoming";

/// Largest blob accepted by default: 64 GiB.
pub const BLOB_BYTES_MAX_DEFAULT: u64 = 64 << 30;

/// Body bytes gathered before one write to the temporary file (hyper's frames are small;
/// one write per frame would cost a system call per few KiB).
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Blobs listed per page of `GET /internal/blobs/` at most (and by default).
pub const LIST_PAGE_MAX: usize = 1000;

/// Default of [`Membership::repair_interval`].
pub const REPAIR_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

/// Pages of another origin's listing read in one repair pass at most (bounds a pass at
/// `LIST_PAGE_MAX × REPAIR_PAGES_MAX` blobs per member).
pub const REPAIR_PAGES_MAX: usize = 10_000;

/// Header on the requests one origin makes to another while filling a blob: the other
/// answers from its store only and never fills in turn, so a miss never recurses.
pub const REPLICA_READ_HEADER: http::HeaderName =
    http::HeaderName::from_static("shoal-replica-read");

/// This origin's place in a cluster of origins.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The ring, as every client of the origins sees it.
    pub cluster: OriginCluster,
    /// This origin's internal API address as the ring names it (a member's `ip:port`).
    pub advertise: SocketAddr,
    /// How often the blobs this origin owns are looked for on the other members (and at
    /// start-up, after one health interval).
    pub repair_interval: Duration,
}

/// Where this origin's blobs live beyond its own disk: the storage backends, and the
/// repository name blob keys are routed by when a request names none.
#[derive(Debug, Clone)]
pub struct Storage {
    pub backends: Arc<Backends>,
    /// The namespace of blob keys ([`Key::blob`]) when a request names no repository, or
    /// one that no backend serves: picks the backend by pattern, and is the repository an
    /// upstream registry is asked for.
    pub namespace: String,
    pub writeback: WriteBackConfig,
}

impl Storage {
    /// The namespace a miss of a blob asked for by `repository` is fetched under: the
    /// repository when a backend serves it, else the default namespace.
    pub fn read_namespace<'a>(&'a self, repository: Option<&'a str>) -> &'a str {
        match repository {
            Some(repository) if self.backends.for_namespace(repository).is_ok() => repository,
            _ => &self.namespace,
        }
    }

    /// The namespace a blob pushed for `repository` is written back under: the repository
    /// when a writable backend serves it, else the default namespace when one serves that;
    /// `None` when no writable backend would take it (say, a pull-through repository, and a
    /// default namespace served only by read-only upstreams).
    pub fn write_namespace<'a>(&'a self, repository: Option<&'a str>) -> Option<&'a str> {
        let writable = |namespace: &str| {
            self.backends
                .for_namespace(namespace)
                .is_ok_and(|backend| !backend.read_only())
        };
        match repository {
            Some(repository) if writable(repository) => Some(repository),
            _ if writable(&self.namespace) => Some(&self.namespace),
            _ => None,
        }
    }

    /// Whether `repository` is served by a backend that holds blobs per repository (an
    /// upstream registry): a pull-through repository.
    pub fn pulls_through(&self, repository: &str) -> bool {
        self.backends
            .for_namespace(repository)
            .is_ok_and(|backend| backend.per_repository())
    }
}

/// How long a repository is believed to hold a digest upstream after a fetch or a stat for
/// it said so (then the upstream is asked again).
pub const UPSTREAM_HOLDS_TTL: Duration = Duration::from_secs(600);

/// (repository, digest) pairs remembered at most (beyond, the expired go, then all).
pub const UPSTREAM_HOLDS_MAX: usize = 16_384;

/// The query parameter that names the repository a request is made for.
pub const REPO_PARAM: &str = "repo";

/// `confirm=upstream`: serve only what the repository's upstream holds.
pub const CONFIRM_PARAM: &str = "confirm";
pub const CONFIRM_UPSTREAM: &str = "upstream";

/// Which digests an upstream was seen to hold in which repository, and when.
#[derive(Debug, Default)]
struct UpstreamHolds {
    seen: HashMap<(String, Digest), std::time::Instant>,
}

impl UpstreamHolds {
    fn holds(&self, repository: &str, digest: &Digest) -> bool {
        self.seen
            .get(&(repository.to_owned(), *digest))
            .is_some_and(|seen| seen.elapsed() < UPSTREAM_HOLDS_TTL)
    }

    fn record(&mut self, repository: &str, digest: Digest) {
        if self.seen.len() >= UPSTREAM_HOLDS_MAX {
            self.seen
                .retain(|_, seen| seen.elapsed() < UPSTREAM_HOLDS_TTL);
            if self.seen.len() >= UPSTREAM_HOLDS_MAX {
                self.seen.clear();
            }
        }
        self.seen
            .insert((repository.to_owned(), digest), std::time::Instant::now());
    }
}

/// Backend fetches in flight at once (more misses wait for one of them to end).
pub const FLIGHTS_MAX: usize = 256;

/// [`Storage::namespace`] when the config names none.
pub const NAMESPACE_DEFAULT: &str = "library";

/// Directory under the store's root that holds the write-back journal.
pub const WRITEBACK_DIR: &str = "writeback";

/// The origin's settings (beyond its engine's).
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Largest blob a PUT may carry (its `Content-Length`).
    pub blob_bytes_max: u64,
    /// The cluster this origin belongs to (`None`: a lone origin).
    pub membership: Option<Membership>,
    /// The storage backends (`None`: this origin's disk is the only copy it knows of).
    pub storage: Option<Storage>,
}

impl Default for OriginConfig {
    fn default() -> OriginConfig {
        OriginConfig {
            blob_bytes_max: BLOB_BYTES_MAX_DEFAULT,
            membership: None,
            storage: None,
        }
    }
}

/// What [`Origin::start`] did with the blobs already stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Blobs seeded again.
    pub n_seeded: usize,
    /// Blobs that could not be seeded (logged; a PUT of the blob seeds it again).
    pub n_failed: usize,
}

/// The origin's HTTP handler.
#[derive(Debug)]
pub struct Origin {
    inner: Rc<OriginState>,
}

#[derive(Debug)]
/// The state behind an [`Origin`] (shared with its repair task).
pub struct OriginState {
    engine: Engine,
    config: OriginConfig,
    /// To the other origins (filling a blob, repair).
    client: HttpClient,
    /// `<store root>/incoming`.
    incoming_dir: PathBuf,
    /// Makes temporary names unique (the store's lock makes the process unique).
    next_temp: Cell<u64>,
    /// Fills running in tasks of their own ([`OriginState::fill_detached`]), at most
    /// [`FILLS_DETACHED_MAX`].
    fills_detached: Rc<Cell<usize>>,
    /// Digests being received (a PUT or a fill): one at a time per digest.
    putting: RefCell<HashSet<Digest>>,
    /// Notified whenever a digest leaves `putting`.
    put_done: Event,
    /// Blobs received from other origins by fills and repairs (for tests and logs).
    n_filled: Cell<u64>,
    /// Pushed blobs on their way to the backend (with [`OriginConfig::storage`]).
    writeback: Option<Arc<WriteBack>>,
    /// Backend fetches in flight, shared by concurrent misses.
    flights: Flights<u64>,
    /// Backend stats in flight (`confirm=upstream`), shared by concurrent requests.
    stat_flights: Flights<Option<u64>>,
    /// What upstreams were seen to hold, per repository (`confirm=upstream`).
    upstream_holds: RefCell<UpstreamHolds>,
}

impl std::ops::Deref for Origin {
    type Target = OriginState;
    fn deref(&self) -> &OriginState {
        &self.inner
    }
}

impl Handler for Origin {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let (parts, body) = request.into_parts();
        match self.route(&parts, body).await {
            Ok(response) => response,
            Err(error) => {
                if error.code.status().is_server_error() {
                    tracing::warn!(method = %parts.method, path = parts.uri.path(), %error, "request failed");
                }
                error.into_response()
            }
        }
    }
}

impl Origin {
    /// The origin over `engine` (started with `EngineConfig::into_origin`): empties
    /// `incoming/`, then seeds every blob already stored. Must run inside a compio runtime.
    pub async fn start(engine: Engine, config: OriginConfig) -> io::Result<(Origin, SeedReport)> {
        if config.blob_bytes_max == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "origin config: blob_bytes_max must be positive",
            ));
        }
        let incoming_dir = engine.store().root().join(INCOMING_DIR);
        let dir = incoming_dir.clone();
        compio::runtime::spawn_blocking(move || reset_dir(&dir))
            .await
            .map_err(|_| io::Error::other("resetting the incoming directory panicked"))??;
        let mut report = SeedReport::default();
        for digest in engine.store().blobs() {
            match engine.seed(&digest).await {
                Ok(()) => report.n_seeded += 1,
                Err(error) => {
                    tracing::warn!(%digest, %error, "could not seed a stored blob");
                    report.n_failed += 1;
                }
            }
        }
        tracing::info!(
            seeded = report.n_seeded,
            failed = report.n_failed,
            "origin started"
        );
        let writeback = match &config.storage {
            None => None,
            Some(storage) => {
                let dir = engine.store().root().join(WRITEBACK_DIR);
                let (backends, wb) = (Arc::clone(&storage.backends), storage.writeback.clone());
                let queue =
                    compio::runtime::spawn_blocking(move || WriteBack::open(&dir, backends, wb))
                        .await
                        .map_err(|_| io::Error::other("opening the write-back journal panicked"))?
                        .map_err(|e| io::Error::other(e.to_string()))?;
                let queue = Arc::new(queue);
                let runner = Arc::clone(&queue);
                compio::runtime::spawn(async move { runner.run().await }).detach();
                Some(queue)
            }
        };
        let inner = Rc::new(OriginState {
            engine,
            config,
            client: HttpClient::new(ClientConfig::default()),
            incoming_dir,
            next_temp: Cell::new(0),
            fills_detached: Rc::new(Cell::new(0)),
            putting: RefCell::new(HashSet::new()),
            put_done: Event::new(),
            n_filled: Cell::new(0),
            writeback,
            flights: Flights::new(FLIGHTS_MAX),
            stat_flights: Flights::new(FLIGHTS_MAX),
            upstream_holds: RefCell::new(UpstreamHolds::default()),
        });
        if let Some(membership) = &inner.config.membership {
            membership.cluster.spawn_health_checks(inner.client.clone());
            compio::runtime::spawn(repair_loop(Rc::clone(&inner), membership.clone())).detach();
        }
        Ok((Origin { inner }, report))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &OriginConfig {
        &self.config
    }

    /// Blobs this origin received from other origins (fills on a miss, repairs).
    pub fn n_filled(&self) -> u64 {
        self.n_filled.get()
    }

    async fn route(&self, parts: &Parts, body: Incoming) -> Result<Response<LocalBody>, OciError> {
        let path = parts.uri.path();
        let method = &parts.method;
        if path == METRICS_PATH {
            return Ok(metrics_response(method, &self.engine.stats()));
        }
        if path == HEALTH_PATH {
            return if method == Method::GET || method == Method::HEAD {
                Ok(Response::new(LocalBody::empty()))
            } else {
                Ok(method_not_allowed(method, "GET, HEAD"))
            };
        }
        if path == BLOBS_PATH || path == BLOBS_PATH.trim_end_matches('/') {
            return if method == Method::GET {
                self.list(parts.uri.query().unwrap_or(""))
            } else {
                Ok(method_not_allowed(method, "GET"))
            };
        }
        let query = parts.uri.query().unwrap_or("");
        if let Some(digest) = path.strip_prefix(METAINFO_PATH) {
            let digest = parse_digest(digest)?;
            if parts.method != Method::GET {
                return Ok(method_not_allowed(&parts.method, "GET"));
            }
            let repository = repository_param(query)?;
            return self.metainfo(&digest, repository.as_deref()).await;
        }
        let Some(digest) = path.strip_prefix(BLOBS_PATH) else {
            return Err(OciError::new(
                ErrorCode::NameUnknown,
                format!("no endpoint at {path}"),
            ));
        };
        let digest = parse_digest(digest)?;
        let repository = repository_param(query)?;
        if method == Method::PUT {
            self.put(digest, repository.as_deref(), &parts.headers, body)
                .await
        } else if method == Method::GET || method == Method::HEAD {
            if let Some(confirm) = query::param(query, CONFIRM_PARAM) {
                let (Some(repository), CONFIRM_UPSTREAM, true) =
                    (&repository, confirm.as_str(), method == Method::GET)
                else {
                    return Err(OciError::new(
                        ErrorCode::Unsupported,
                        format!(
                            "{CONFIRM_PARAM}={CONFIRM_UPSTREAM} is the only confirmation, \
                             for a GET with {REPO_PARAM}="
                        ),
                    ));
                };
                if !self.inner.held_upstream(digest, repository).await? {
                    return Err(OciError::new(
                        ErrorCode::BlobUnknown,
                        format!("{repository} does not hold {digest} upstream"),
                    )
                    .with_detail(serde_json::json!({ "digest": digest.to_string() })));
                }
            }
            let mut blob_len = self.engine.store().blob_len(&digest);
            if blob_len.is_none()
                && method == Method::GET
                && !parts.headers.contains_key(REPLICA_READ_HEADER)
                && self
                    .inner
                    .fill_detached(digest, repository.as_deref())
                    .await
                    .map_err(|e| backend_unavailable(&digest, &e))?
            {
                blob_len = self.engine.store().blob_len(&digest);
            }
            let Some(blob_len) = blob_len else {
                return Err(blob_unknown(&digest));
            };
            blob_response(
                &self.engine,
                &digest,
                blob_len,
                &parts.headers,
                method == Method::HEAD,
            )
            .await
        } else {
            Ok(method_not_allowed(method, "GET, HEAD, PUT"))
        }
    }

    /// `GET /internal/blobs/?n=&last=`: stored blobs in digest order after `last`, at most
    /// `n` ([`LIST_PAGE_MAX`]): `{"blobs":["sha256:…",…],"next":"sha256:…"|null}` — `next` is
    /// the `last` of the following page.
    fn list(&self, query: &str) -> Result<Response<LocalBody>, OciError> {
        let n = match query::param(query, "n") {
            None => LIST_PAGE_MAX,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=LIST_PAGE_MAX).contains(n))
                .ok_or_else(|| {
                    OciError::new(
                        ErrorCode::SizeInvalid,
                        format!("n must be 1 to {LIST_PAGE_MAX}"),
                    )
                })?,
        };
        let last = query::param(query, "last");
        let mut blobs: Vec<String> = self
            .engine
            .store()
            .blobs()
            .iter()
            .map(Digest::to_string)
            .filter(|d| last.as_ref().is_none_or(|last| d > last))
            .collect();
        blobs.sort_unstable();
        let next = (blobs.len() > n).then(|| blobs[n - 1].clone());
        blobs.truncate(n);
        let body = serde_json::json!({ "blobs": blobs, "next": next });
        let mut response = Response::new(LocalBody::full(body.to_string()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    /// The stored metainfo sidecar of `digest`, canonically encoded (filled first on a miss,
    /// for `repository`).
    async fn metainfo(
        &self,
        digest: &Digest,
        repository: Option<&str>,
    ) -> Result<Response<LocalBody>, OciError> {
        if !self.engine.store().has_blob(digest) {
            self.inner
                .fill_detached(*digest, repository)
                .await
                .map_err(|e| backend_unavailable(digest, &e))?;
        }
        let metainfo = self
            .engine
            .store()
            .blob_metainfo(digest)
            .await
            .map_err(|e| OciError::new(ErrorCode::Unknown, e.to_string()))?
            .ok_or_else(|| blob_unknown(digest))?;
        let mut response = Response::new(LocalBody::full(metainfo.encode()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        Ok(response)
    }

    async fn put(
        &self,
        digest: Digest,
        repository: Option<&str>,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Response<LocalBody>, OciError> {
        let Some(len) = content_length(headers)? else {
            return Ok(
                OciError::new(ErrorCode::SizeInvalid, "a blob PUT needs a Content-Length")
                    .into_response_with_status(StatusCode::LENGTH_REQUIRED),
            );
        };
        if len > self.config.blob_bytes_max {
            return Ok(OciError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "{len} bytes is more than this origin's {} per blob",
                    self.config.blob_bytes_max
                ),
            )
            .into_response_with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let _turn = self.turn_of(digest).await;
        if self.engine.store().has_blob(&digest) {
            discard(body, len).await?;
        } else {
            let temp = self.temp_path(&digest);
            let result = self.receive_and_ingest(digest, len, body, &temp).await;
            if let Err(error) = compio::fs::remove_file(&temp).await
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %temp.display(), %error, "could not remove a temporary file");
            }
            result?;
            self.write_back(digest, len, repository).await?;
        }
        self.engine.seed(&digest).await.map_err(engine_error)?;
        let mut response = Response::new(LocalBody::empty());
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert(CONTENT_DIGEST_HEADER, header_value(digest.to_string())?);
        Ok(response)
    }
}

impl OriginState {
    /// Receives the body into `temp` (hashing it), checks it, and ingests it.
    async fn receive_and_ingest(
        &self,
        digest: Digest,
        len: u64,
        body: Incoming,
        temp: &Path,
    ) -> Result<(), OciError> {
        let received = receive(&digest, len, body, temp).await?;
        if received != digest {
            return Err(OciError::new(
                ErrorCode::DigestInvalid,
                format!("the body's digest is {received}, not {digest}"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() })));
        }
        self.engine
            .ingest_file(temp, Some(digest))
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    fn temp_path(&self, digest: &Digest) -> PathBuf {
        let n = self.next_temp.get();
        self.next_temp.set(n + 1);
        let name = digest.to_string().replace(':', "-");
        self.incoming_dir.join(format!("{name}.{n}"))
    }

    /// Waits until no other PUT of `digest` runs, then holds the digest until dropped.
    async fn turn_of(&self, digest: Digest) -> Turn<'_> {
        loop {
            if self.putting.borrow_mut().insert(digest) {
                return Turn {
                    origin: self,
                    digest,
                };
            }
            let listener = self.put_done.listen();
            if !self.putting.borrow().contains(&digest) {
                continue;
            }
            listener.await;
        }
    }
}

impl OriginState {
    /// Journals a newly stored blob for the backend of `repository` (see
    /// [`Storage::write_namespace`]; nothing without a writable backend). If it cannot be
    /// journaled, the blob is removed again and the PUT fails (503): the client pushes again,
    /// and nothing is stored that the backend would never get.
    async fn write_back(
        &self,
        digest: Digest,
        len: u64,
        repository: Option<&str>,
    ) -> Result<(), OciError> {
        let (Some(queue), Some(storage)) = (&self.writeback, &self.config.storage) else {
            return Ok(());
        };
        let Some(namespace) = storage.write_namespace(repository) else {
            tracing::debug!(%digest, ?repository, "no writable backend for the blob; not written back");
            return Ok(());
        };
        let queued = match Key::blob(namespace, &digest) {
            Ok(key) => queue
                .enqueue(key, self.engine.store().blob_path(&digest), len)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = queued {
            tracing::error!(%digest, %error, "could not queue a blob for the backend; removing it");
            if let Err(error) = self.engine.remove(&digest).await {
                tracing::warn!(%digest, %error, "could not remove the blob");
            }
            return Err(OciError::new(
                ErrorCode::Unavailable,
                format!("could not queue {digest} for the storage backend: {error}"),
            ));
        }
        Ok(())
    }

    /// Gets `digest` from the storage backend of `repository` ([`Storage::read_namespace`])
    /// into this store (the caller holds its turn): fetched to a temporary file, checked
    /// against the digest by the ingestion, seeded. A fetch from a per-repository backend is
    /// remembered as that repository holding the digest.
    async fn fetch_from_backend(
        &self,
        digest: Digest,
        repository: Option<&str>,
    ) -> Result<bool, String> {
        let Some(storage) = &self.config.storage else {
            return Ok(false);
        };
        let namespace = storage.read_namespace(repository);
        let key = Key::blob(namespace, &digest).map_err(|e| e.to_string())?;
        let temp = self.temp_path(&digest);
        let fetched = fetch_to_file(&self.flights, &storage.backends, &key, &temp).await;
        let result = match fetched {
            Err(error) if error.is_not_found() => Ok(false),
            // Down or unreachable: nobody can tell now whether the blob exists, so a read
            // is answered 503 (clients retry), not 404 (which says it does not exist). A
            // HEAD never fills, and the agent answers its own HEADs 404 when the lookup
            // fails, so a push still goes on through an outage.
            Err(error) if error.kind == ErrorKind::Unavailable => Err(format!(
                "the storage backend is unavailable (whether it holds the blob is unknown): {error}"
            )),
            Err(error) => Err(error.to_string()),
            Ok(len) if len > self.config.blob_bytes_max => Err(format!(
                "{len} bytes is more than this origin's {} per blob",
                self.config.blob_bytes_max
            )),
            Ok(_) => self
                .engine
                .ingest_file(&temp, Some(digest))
                .await
                .map(|_| true)
                .map_err(|e| e.to_string()),
        };
        if let Err(error) = compio::fs::remove_file(&temp).await
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %temp.display(), %error, "could not remove a temporary file");
        }
        if result? {
            if storage.pulls_through(namespace) {
                self.upstream_holds.borrow_mut().record(namespace, digest);
            }
            tracing::info!(%digest, namespace, "blob fetched from the storage backend");
            // Stored: a read can be served whether or not the swarm can have it yet.
            if let Err(error) = self.engine.seed(&digest).await {
                tracing::warn!(%digest, %error, "could not seed a blob fetched from the backend");
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether `repository`'s upstream holds `digest` and this store has it now (fetched
    /// for `repository` if missing): `confirm=upstream`. `false` for a repository that does
    /// not pull through.
    async fn held_upstream(
        self: &Rc<Self>,
        digest: Digest,
        repository: &str,
    ) -> Result<bool, OciError> {
        let Some(storage) = &self.config.storage else {
            return Ok(false);
        };
        if !storage.pulls_through(repository) {
            return Ok(false);
        }
        if !self.engine.store().has_blob(&digest)
            && !self
                .fill_detached(digest, Some(repository))
                .await
                .map_err(|e| backend_unavailable(&digest, &e))?
        {
            return Ok(false);
        }
        if self.upstream_holds.borrow().holds(repository, &digest) {
            return Ok(true);
        }
        let key = Key::blob(repository, &digest)
            .map_err(|e| OciError::new(ErrorCode::NameInvalid, e.to_string()))?;
        let stat_key = format!("{repository}\n{digest}");
        let backends = &storage.backends;
        match self
            .stat_flights
            .run(&stat_key, || async { backends.stat(&key).await })
            .await
        {
            Ok(Some(_)) => {
                self.upstream_holds.borrow_mut().record(repository, digest);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(backend_unavailable(&digest, &error.to_string())),
        }
    }

    /// Fetches `digest` into this store, if this origin is one of its owners (now, or when
    /// every member is up): from the other origins (`first` first, then the digest's read
    /// order), else from the storage backend of `repository`. Concurrent fills and PUTs of
    /// one digest run one at a time. Returns whether the blob is stored now; an error when
    /// it is not and the backend fetch failed (other than by not having it).
    async fn fill(
        &self,
        digest: Digest,
        first: Option<SocketAddr>,
        repository: Option<&str>,
    ) -> Result<bool, String> {
        if let Some(membership) = &self.config.membership {
            let (me, cluster) = (membership.advertise, &membership.cluster);
            if !cluster.is_home_owner(me, &digest) && !cluster.owners(&digest).contains(&me) {
                return Ok(false);
            }
        } else if self.config.storage.is_none() {
            return Ok(false);
        }
        let _turn = self.turn_of(digest).await;
        if self.engine.store().has_blob(&digest) {
            return Ok(true);
        }
        if self.fill_from_members(digest, first).await {
            return Ok(true);
        }
        self.fetch_from_backend(digest, repository)
            .await
            .inspect_err(|error| {
                tracing::warn!(%digest, ?repository, %error, "fetching a blob from the storage backend failed");
            })
    }

    /// [`OriginState::fill`] for a request, in a task of its own: a requester that goes away
    /// (a tracker that stops waiting for a big blob) does not cancel a fill that the next
    /// request will want finished. At most [`FILLS_DETACHED_MAX`] run at once (requests that
    /// come and go for a slow digest would otherwise pile tasks up); past that the request is
    /// answered with an error (503) at once.
    async fn fill_detached(
        self: &Rc<Self>,
        digest: Digest,
        repository: Option<&str>,
    ) -> Result<bool, String> {
        let running = Rc::clone(&self.fills_detached);
        if running.get() >= FILLS_DETACHED_MAX {
            return Err(format!(
                "{FILLS_DETACHED_MAX} fills are in progress already; try again"
            ));
        }
        running.set(running.get() + 1);
        let (inner, repository) = (Rc::clone(self), repository.map(str::to_owned));
        let (done, filled) = flume::bounded(1);
        compio::runtime::spawn(async move {
            let result = inner.fill(digest, None, repository.as_deref()).await;
            running.set(running.get() - 1);
            // The requester may be gone; the blob is stored all the same.
            let _ = done.send(result);
        })
        .detach();
        filled
            .recv_async()
            .await
            .unwrap_or_else(|_| Err("the fill ended without an answer".to_owned()))
    }

    /// The replica half of [`OriginState::fill`] (the caller holds the digest's turn).
    async fn fill_from_members(&self, digest: Digest, first: Option<SocketAddr>) -> bool {
        let Some(membership) = &self.config.membership else {
            return false;
        };
        let (me, cluster) = (membership.advertise, &membership.cluster);
        let mut sources: Vec<SocketAddr> = first.into_iter().collect();
        for addr in cluster.read_order(&digest) {
            if !sources.contains(&addr) {
                sources.push(addr);
            }
        }
        for addr in sources.into_iter().filter(|addr| *addr != me) {
            match self.fill_from(addr, digest).await {
                Ok(true) => {
                    self.n_filled.set(self.n_filled.get() + 1);
                    tracing::info!(%digest, from = %addr, "blob filled from another origin");
                    return true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%digest, from = %addr, %error, "filling a blob failed; trying the next origin");
                }
            }
        }
        false
    }

    /// One attempt of [`OriginState::fill`] from the origin at `addr`: `Ok(false)` if it does not
    /// hold the blob. The body is received and checked like a PUT's, within a time bound of
    /// 30 s plus its length at the client's slowest accepted rate.
    async fn fill_from(&self, addr: SocketAddr, digest: Digest) -> Result<bool, String> {
        let mut headers = HeaderMap::new();
        headers.insert(REPLICA_READ_HEADER, http::HeaderValue::from_static("1"));
        let path = format!("{BLOBS_PATH}{digest}");
        let response = self
            .client
            .request(Method::GET, addr, &path, headers, ClientBody::empty())
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(false),
            status => return Err(format!("answered {status}")),
        }
        let len = content_length(response.headers())
            .ok()
            .flatten()
            .ok_or("no valid Content-Length")?;
        if len > self.config.blob_bytes_max {
            return Err(format!(
                "{len} bytes is more than this origin's {} per blob",
                self.config.blob_bytes_max
            ));
        }
        let rate = self.client.config().body_bytes_per_s_min.max(1);
        let bound = FILL_TIME_BASE + Duration::from_secs(len / rate);
        let temp = self.temp_path(&digest);
        let result = compio::time::timeout(
            bound,
            self.receive_and_ingest(digest, len, response.into_body(), &temp),
        )
        .await;
        if let Err(error) = compio::fs::remove_file(&temp).await
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %temp.display(), %error, "could not remove a temporary file");
        }
        match result {
            Err(_) => return Err(format!("not received within {bound:?}")),
            Ok(Err(error)) => return Err(error.message),
            Ok(Ok(())) => {}
        }
        self.engine.seed(&digest).await.map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Fills in tasks of their own at once ([`OriginState::fill_detached`]).
pub const FILLS_DETACHED_MAX: usize = 256;

/// The fixed part of the time bound of one fill.
const FILL_TIME_BASE: Duration = Duration::from_secs(30);

/// Largest listing page read from another origin (`LIST_PAGE_MAX` digests of at most 135
/// bytes, with room to spare).
const LIST_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// A page of `GET /internal/blobs/`.
#[derive(serde::Deserialize)]
struct ListPage {
    blobs: Vec<String>,
    next: Option<String>,
}

/// Catches up on what this origin owns: one pass after the first health interval, then one
/// every [`Membership::repair_interval`], until the runtime ends.
async fn repair_loop(inner: Rc<OriginState>, membership: Membership) {
    compio::time::sleep(membership.cluster.config().health_interval).await;
    loop {
        let filled = repair_pass(&inner, &membership).await;
        if filled > 0 {
            tracing::info!(filled, "repair pass: blobs caught up from other origins");
        }
        compio::time::sleep(membership.repair_interval).await;
    }
}

/// Reads every other healthy member's listing and fills each listed blob this origin owns
/// and lacks. Returns the number filled.
async fn repair_pass(inner: &OriginState, membership: &Membership) -> usize {
    let me = membership.advertise;
    let cluster = &membership.cluster;
    let mut filled = 0;
    for member in cluster.members() {
        if member == me || cluster.is_healthy(member) != Some(true) {
            continue;
        }
        let mut last: Option<String> = None;
        for _ in 0..REPAIR_PAGES_MAX {
            let page = match list_page(inner, member, last.as_deref()).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(origin = %member, %error, "repair: listing failed");
                    break;
                }
            };
            for text in &page.blobs {
                let Ok(digest) = Digest::parse(text) else {
                    tracing::warn!(origin = %member, "repair: listing holds a malformed digest");
                    continue;
                };
                if inner.engine.store().has_blob(&digest) || !cluster.is_home_owner(me, &digest) {
                    continue;
                }
                if inner
                    .fill(digest, Some(member), None)
                    .await
                    .unwrap_or(false)
                {
                    filled += 1;
                }
            }
            match page.next {
                Some(next) => last = Some(next),
                None => break,
            }
        }
    }
    filled
}

async fn list_page(
    inner: &OriginState,
    member: SocketAddr,
    last: Option<&str>,
) -> Result<ListPage, String> {
    let mut path = format!("{BLOBS_PATH}?n={LIST_PAGE_MAX}");
    if let Some(last) = last {
        path.push_str("&last=");
        path.push_str(&query::encode(last));
    }
    let mut headers = HeaderMap::new();
    headers.insert(REPLICA_READ_HEADER, http::HeaderValue::from_static("1"));
    let response = inner
        .client
        .request(Method::GET, member, &path, headers, ClientBody::empty())
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    inner
        .client
        .read_json(response.into_body(), LIST_RESPONSE_BYTES_MAX)
        .await
        .map_err(|e| e.to_string())
}

/// One PUT's hold on its digest.
struct Turn<'a> {
    origin: &'a OriginState,
    digest: Digest,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.origin.putting.borrow_mut().remove(&self.digest);
        self.origin.put_done.notify(usize::MAX);
    }
}

/// The repository a request is made for (`?repo=`), checked against the name grammar.
fn repository_param(query: &str) -> Result<Option<String>, OciError> {
    let named = query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(REPO_PARAM));
    if !named {
        return Ok(None);
    }
    let invalid = |message: String| OciError::new(ErrorCode::NameInvalid, message);
    let repository = query::param(query, REPO_PARAM)
        .ok_or_else(|| invalid(format!("{REPO_PARAM}= is not percent-encoded UTF-8")))?;
    validate_repository(&repository).map_err(|e| invalid(format!("{REPO_PARAM}=: {e}")))?;
    Ok(Some(repository))
}

/// A miss the storage backend could not fill. The reason comes first (the message may be
/// cut on its way to a client: the tracker protocol's error messages are short); the digest
/// is the request's, and in the detail.
fn backend_unavailable(digest: &Digest, error: &str) -> OciError {
    OciError::new(
        ErrorCode::Unavailable,
        format!("the storage backend failed: {error}"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

fn blob_unknown(digest: &Digest) -> OciError {
    OciError::new(
        ErrorCode::BlobUnknown,
        format!("this origin does not hold {digest}"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

/// The request's `Content-Length`, `None` if absent; 400 `SIZE_INVALID` if malformed.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, OciError> {
    let Some(value) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| OciError::new(ErrorCode::SizeInvalid, "malformed Content-Length"))
}

/// A body that ended before its `Content-Length` (hyper reports the early end as an error).
fn body_error(error: &hyper::Error) -> OciError {
    OciError::new(
        ErrorCode::SizeInvalid,
        format!("the body ended before its Content-Length: {error}"),
    )
}

/// Streams `body` (`len` bytes) into a new file at `temp`, hashing it with `digest`'s
/// algorithm; returns the digest of what arrived.
async fn receive(
    digest: &Digest,
    len: u64,
    mut body: Incoming,
    temp: &Path,
) -> Result<Digest, OciError> {
    let local = |op: &str, error: io::Error| {
        OciError::new(
            ErrorCode::Unknown,
            format!("{op} {}: {error}", temp.display()),
        )
    };
    let mut file = compio::fs::File::create(temp)
        .await
        .map_err(|e| local("create", e))?;
    let mut hasher = Hasher::like(digest);
    // Fits in usize: at most WRITE_BUFFER_BYTES.
    let buffer_len = len.min(WRITE_BUFFER_BYTES as u64) as usize;
    let mut buffer = Vec::with_capacity(buffer_len);
    let mut offset = 0u64;
    let mut received = 0u64;
    loop {
        let frame = match body.frame().await {
            None => None,
            Some(frame) => Some(frame.map_err(|e| body_error(&e))?),
        };
        let end = frame.is_none();
        if let Some(Ok(data)) = frame.map(http_body::Frame::into_data) {
            received += data.len() as u64;
            if received > len {
                return Err(OciError::new(
                    ErrorCode::SizeInvalid,
                    format!("the body is longer than its Content-Length {len}"),
                ));
            }
            hasher.update(&data);
            buffer.extend_from_slice(&data);
        }
        if buffer.len() >= WRITE_BUFFER_BYTES || (end && !buffer.is_empty()) {
            let written = buffer.len() as u64;
            let compio::BufResult(result, returned) = file.write_all_at(buffer, offset).await;
            result.map_err(|e| local("write", e))?;
            offset += written;
            buffer = returned;
            buffer.clear();
        }
        if end {
            break;
        }
    }
    file.close().await.map_err(|e| local("close", e))?;
    if received != len {
        return Err(OciError::new(
            ErrorCode::SizeInvalid,
            format!("the body is {received} bytes, not its Content-Length {len}"),
        ));
    }
    Ok(hasher.finish())
}

/// Reads and drops a body of `len` bytes (a PUT of a blob already stored).
async fn discard(mut body: Incoming, len: u64) -> Result<(), OciError> {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&e))?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
        }
    }
    if received != len {
        return Err(OciError::new(
            ErrorCode::SizeInvalid,
            format!("the body is {received} bytes, not its Content-Length {len}"),
        ));
    }
    Ok(())
}

/// Removes `dir` and everything in it (leftovers of a crash), then makes it again, empty.
fn reset_dir(dir: &Path) -> io::Result<()> {
    let context = |op: &str, error: io::Error| {
        io::Error::new(error.kind(), format!("{op} {}: {error}", dir.display()))
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(context("remove", error)),
    }
    std::fs::create_dir_all(dir).map_err(|e| context("create", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::backends::BackendsFile;

    /// Backends for `pt/**` (an upstream registry), `web/**` (plain HTTP, read-only) and
    /// `team/**` (a local directory under `root`), with `default` as the namespace.
    fn storage(root: &Path, default: &str) -> Storage {
        let text = format!(
            "[[backend]]\nnamespace = \"pt/**\"\nkind = \"registry\"\nurl = \"http://127.0.0.1:9\"\n\
             [[backend]]\nnamespace = \"web/**\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n\
             [[backend]]\nnamespace = \"team/**\"\nkind = \"local\"\nroot = \"{}\"\n",
            root.display()
        );
        let file: BackendsFile = crate::config::parse(Path::new("backends.toml"), &text).unwrap();
        Storage {
            backends: Arc::new(Backends::build(&file).unwrap()),
            namespace: default.to_owned(),
            writeback: WriteBackConfig::default(),
        }
    }

    #[test]
    fn repositories_route_reads_and_write_backs() {
        let root = std::env::temp_dir().join(format!("shoal-origin-routes-{}", std::process::id()));
        let check = |storage: &Storage, repo: Option<&str>, read: &str, write: Option<&str>| {
            assert_eq!(storage.read_namespace(repo), read, "read {repo:?}");
            assert_eq!(storage.write_namespace(repo), write, "write {repo:?}");
        };
        let writable_default = storage(&root, "team/default");
        let s = &writable_default;
        check(s, None, "team/default", Some("team/default"));
        check(s, Some("team/app"), "team/app", Some("team/app"));
        // Read-only backends are read under the repository, written back to the default.
        check(s, Some("pt/a/b"), "pt/a/b", Some("team/default"));
        check(s, Some("web/x"), "web/x", Some("team/default"));
        // No backend for the repository: the default namespace's.
        check(s, Some("other/app"), "team/default", Some("team/default"));
        assert!(s.pulls_through("pt/a/b"));
        assert!(!s.pulls_through("web/x"));
        assert!(!s.pulls_through("team/app"));
        assert!(!s.pulls_through("other/app"));

        // A default namespace with only a read-only backend: nothing to write back to.
        let read_only_default = storage(&root, "pt/default");
        let s = &read_only_default;
        check(s, None, "pt/default", None);
        check(s, Some("pt/x"), "pt/x", None);
        check(s, Some("team/app"), "team/app", Some("team/app"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn upstream_holds_are_per_repository_and_bounded() {
        let mut holds = UpstreamHolds::default();
        let digest = Digest::sha256_of(b"manifest");
        holds.record("pt/a", digest);
        assert!(holds.holds("pt/a", &digest));
        assert!(!holds.holds("pt/b", &digest));
        assert!(!holds.holds("pt/a", &Digest::sha256_of(b"other")));
        for n in 1..UPSTREAM_HOLDS_MAX as u64 {
            holds.record("pt/many", Digest::sha256_of(&n.to_le_bytes()));
        }
        assert_eq!(holds.seen.len(), UPSTREAM_HOLDS_MAX);
        // Full of fresh entries: cleared to make room, and the newest kept.
        let last = Digest::sha256_of(b"last");
        holds.record("pt/a", last);
        assert!(holds.holds("pt/a", &last));
        assert!(!holds.holds("pt/a", &digest));
        assert_eq!(holds.seen.len(), 1);
    }
}
