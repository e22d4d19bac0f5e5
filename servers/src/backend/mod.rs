//! Storage backends behind one trait: where an origin finds a blob it does not hold, where
//! it writes pushed blobs back, where build-index writes tags through.
//!
//! - [`Backend`]: `stat`, ranged `get` (a [`ByteStream`]), `put` (from a local file or a
//!   stream, with its exact length), `list` (pages), `delete`, and the start-up `check`.
//!   Methods return boxed futures that are not `Send`: they are awaited on a compio task. A
//!   backend value itself is `Send + Sync`, so one [`Backends`] serves every shard.
//! - [`Key`]: the project's own layout. A key is a namespace (the repository that asked, for
//!   routing and for upstream registries) and a path: `blobs/<alg>/<hex>` for a blob or a
//!   manifest ([`Key::blob`]), `tags/<repo>/<tag>` for a tag ([`Key::tag`], whose object holds
//!   the manifest digest as text: [`tag_object`], [`parse_tag_object`]).
//! - Implementations: [`local`] (a directory; atomic puts), [`object`] (S3, GCS, Azure through
//!   `object_store`), [`registry`] (an upstream OCI registry, read-only, token auth), [`http`]
//!   (read-only GET/HEAD under a base URL).
//! - [`runtime`]: the one tokio runtime (two threads, started on first use) every remote
//!   backend of the process runs on, and the channels that bridge it to compio tasks.
//! - [`Backends`]: the configured list; a repository name picks the first backend whose
//!   namespace pattern ([`pattern`]) matches it.
//! - Building blocks for the origin: [`writeback::WriteBack`] (a persistent retry queue of
//!   puts) and [`dedup::Flights`] (concurrent misses for one key share one get).
//!
//! Nothing is held whole in memory: gets and puts stream, with bounded chunks in flight.

pub mod dedup;
pub mod http;
pub mod local;
pub mod object;
pub mod pattern;
pub mod registry;
pub mod runtime;
pub mod writeback;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::LocalBoxStream;
use shoal_proto::types::Digest;

use crate::build_index::{validate_repository, validate_tag};
use crate::config::backends::{BackendEntry, BackendsFile};
use pattern::Pattern;

/// Longest key path, bytes.
pub const KEY_PATH_LEN_MAX: usize = 1024;

/// Most entries in one page of [`Backend::list`].
pub const LIST_PAGE_MAX: usize = 1000;

/// Chunks in flight between a backend's runtime and the compio task reading or writing a
/// stream (each at most [`CHUNK_BYTES_MAX`] for the streams this module makes).
pub const STREAM_CHUNKS_IN_FLIGHT: usize = 4;

/// Largest chunk this module reads from a file or sends between runtimes.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// What went wrong, by what a caller does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist (a get or a delete of nothing).
    NotFound,
    /// A key, range, length or source that can never work: do not retry.
    Invalid,
    /// The backend does not do this (a put to a read-only upstream): do not retry.
    Unsupported,
    /// The backend could not be reached or failed: retry later.
    Unavailable,
    /// The backend answered with bytes that are not the object's (a blob that does not hash
    /// to its digest): another read may do better, but the backend is not to be trusted.
    Corrupt,
    /// A configuration that cannot be used (at start-up).
    Config,
}

/// A backend error. Cloneable (waiters of a shared fetch all get it) and `Send`; the message
/// names the backend, the operation and the key, and never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: ErrorKind,
    pub message: String,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> BackendError {
        BackendError::new(ErrorKind::Invalid, message)
    }

    pub fn unavailable(message: impl Into<String>) -> BackendError {
        BackendError::new(ErrorKind::Unavailable, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Worth trying again later (a write-back retries these, and gives up on the others).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Corrupt)
    }
}

/// Where an object lives: the repository that asks (routing, and the repository an upstream
/// registry is asked for) and the path in the project's layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    namespace: String,
    path: String,
}

impl Key {
    /// `blobs/<alg>/<hex>`: a blob or a manifest by digest, asked for by `repo`. The path does
    /// not hold the repository: content-addressed objects are stored once.
    pub fn blob(repo: &str, digest: &Digest) -> Result<Key, BackendError> {
        check_namespace(repo)?;
        Ok(Key {
            namespace: repo.to_owned(),
            path: format!("blobs/{}/{}", digest.algorithm(), digest.encoded()),
        })
    }

    /// `tags/<repo>/<tag>`: the object holds the tagged manifest's digest ([`tag_object`]).
    pub fn tag(repo: &str, tag: &str) -> Result<Key, BackendError> {
        check_namespace(repo)?;
        validate_tag(tag).map_err(|e| BackendError::invalid(e.to_string()))?;
        Ok(Key {
            namespace: repo.to_owned(),
            path: format!("tags/{repo}/{tag}"),
        })
    }

    /// Any path in `namespace`, checked by [`check_path`].
    pub fn new(namespace: &str, path: &str) -> Result<Key, BackendError> {
        check_namespace(namespace)?;
        check_path(path)?;
        Ok(Key {
            namespace: namespace.to_owned(),
            path: path.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The digest of a `blobs/<alg>/<hex>` key.
    pub fn as_blob(&self) -> Option<Digest> {
        let rest = self.path.strip_prefix("blobs/")?;
        let (algorithm, hex) = rest.split_once('/')?;
        Digest::parse(&format!("{algorithm}:{hex}")).ok()
    }

    /// The repository and tag of a `tags/<repo>/<tag>` key.
    pub fn as_tag(&self) -> Option<(&str, &str)> {
        let rest = self.path.strip_prefix("tags/")?;
        rest.rsplit_once('/')
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (for {})", self.path, self.namespace)
    }
}

pub(crate) fn check_namespace(namespace: &str) -> Result<(), BackendError> {
    validate_repository(namespace).map_err(|e| BackendError::invalid(e.to_string()))
}

/// A key path: `/`-separated segments of `[A-Za-z0-9._-]`, none empty, none starting with
/// `.` (so no `.`, no `..`, and nothing that could name a backend's temporary files), at most
/// [`KEY_PATH_LEN_MAX`] bytes. So a path can never leave a backend's root or prefix.
pub fn check_path(path: &str) -> Result<(), BackendError> {
    let refuse = |reason: &str| {
        let quoted: String = path.chars().take(128).collect();
        Err(BackendError::invalid(format!(
            "invalid key {quoted:?}: {reason}"
        )))
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > KEY_PATH_LEN_MAX {
        return refuse("longer than 1024 bytes");
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return refuse("empty segment (leading, trailing or doubled '/')");
        }
        if segment.starts_with('.') {
            return refuse("a segment starts with '.'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return refuse("a segment holds a character outside [A-Za-z0-9._-]");
        }
    }
    Ok(())
}

/// A list prefix: empty (everything) or a path ([`check_path`]); matched segment-wise, so
/// `tags/a` lists `tags/a/x` but not `tags/ab/x`.
pub fn check_prefix(prefix: &str) -> Result<(), BackendError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_path(prefix)
}

/// The bytes of a tag object: the manifest digest as text.
pub fn tag_object(digest: &Digest) -> Bytes {
    Bytes::from(digest.to_string())
}

/// The digest a tag object names.
pub fn parse_tag_object(bytes: &[u8]) -> Result<Digest, BackendError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| BackendError::invalid("tag object is not UTF-8"))?;
    Digest::parse(text.trim()).map_err(|e| BackendError::invalid(format!("tag object: {e}")))
}

/// A stream of an object's bytes, in order, with the exact number of bytes it yields. Not
/// `Send`. The producer is bounded: at most [`STREAM_CHUNKS_IN_FLIGHT`] chunks wait in it.
pub struct ByteStream {
    inner: LocalBoxStream<'static, Result<Bytes, BackendError>>,
    len: u64,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteStream({} bytes)", self.len)
    }
}

impl ByteStream {
    pub fn new(
        len: u64,
        inner: impl Stream<Item = Result<Bytes, BackendError>> + 'static,
    ) -> ByteStream {
        ByteStream {
            inner: Box::pin(inner),
            len,
        }
    }

    /// One buffer.
    pub fn from_bytes(bytes: Bytes) -> ByteStream {
        let len = bytes.len() as u64;
        ByteStream::new(len, futures_util::stream::iter([Ok(bytes)]))
    }

    /// Bytes this stream yields in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, BackendError>> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, BackendError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// What a put reads from.
#[derive(Debug)]
pub enum PutSource {
    /// The first `len` bytes of a local file (the file must be at least that long).
    File(PathBuf),
    /// A stream that must yield exactly `len` bytes.
    Stream(ByteStream),
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// The object's length, where the backend's listing says it.
    pub len: Option<u64>,
}

/// One page of a listing, in ascending path order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// Which page of a listing: the entries after `after` (exclusive), at most `limit` (capped
/// at [`LIST_PAGE_MAX`]).
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl PageRequest<'_> {
    pub fn first(limit: usize) -> PageRequest<'static> {
        PageRequest { after: None, limit }
    }

    fn limit(&self) -> usize {
        self.limit.clamp(1, LIST_PAGE_MAX)
    }
}

/// A backend operation's future: awaited on the caller's (compio) task, not `Send`.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + 'a>>;

/// A storage backend. Implementations are `Send + Sync` (one value serves every shard);
/// their futures are not.
pub trait Backend: Send + Sync + fmt::Debug {
    /// What and where, for messages and logs (never a credential): `s3 bucket "b" at
    /// http://127.0.0.1:9000`.
    fn describe(&self) -> &str;

    /// The object's length, or `None` if it does not exist.
    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>>;

    /// The bytes of `range` (the whole object for `None`; an end past the object's end is
    /// cut to it; a start at or past it is [`ErrorKind::Invalid`], except for an empty
    /// object read whole). A missing object is [`ErrorKind::NotFound`].
    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream>;

    /// Stores exactly `len` bytes from `source` at `key`, atomically: until it succeeds the
    /// key shows what it held before; a short or failed source leaves nothing behind.
    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()>;

    /// The objects under `prefix` (segment-wise; see [`check_prefix`]), one page.
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page>;

    /// Removes the object; removing what does not exist succeeds.
    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()>;

    /// The start-up check: the backend is reachable and usable (the bucket exists, the root
    /// is writable, the upstream answers). The error names what is wrong.
    fn check(&self) -> BackendFuture<'_, ()>;

    /// Whether puts and deletes are refused (an upstream registry, an HTTP mirror): what is
    /// read from it is someone else's and may change under us. An origin writes pushed blobs
    /// back only to a backend that is not.
    fn read_only(&self) -> bool {
        false
    }

    /// Whether a blob key's answer depends on its namespace: the backend holds blobs *in
    /// repositories* (an upstream registry), so finding one there also says that the
    /// repository holds it. Content-addressed stores (a directory, a bucket) hold a blob once
    /// for every repository and say nothing about which repository has it.
    fn per_repository(&self) -> bool {
        false
    }
}

/// Checks a range against an object's length; the range actually read.
pub(crate) fn resolve_range(
    key: &Key,
    range: Option<Range<u64>>,
    len: u64,
) -> Result<Range<u64>, BackendError> {
    let Some(range) = range else {
        return Ok(0..len);
    };
    if range.start > range.end || range.start >= len {
        return Err(BackendError::invalid(format!(
            "range {}..{} of {key} is outside its {len} bytes",
            range.start, range.end
        )));
    }
    Ok(range.start..range.end.min(len))
}

/// The configured backends, in order: a repository uses the first whose namespace pattern
/// matches it.
#[derive(Debug, Clone)]
pub struct Backends {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    pattern: Pattern,
    backend: Arc<dyn Backend>,
}

impl Backends {
    /// Builds every backend of `file` (no network I/O yet; see [`Backends::check`]; a local
    /// root is created). A pattern or
    /// a backend that cannot be built is an error naming its entry.
    pub fn build(file: &BackendsFile) -> Result<Backends, BackendError> {
        let mut routes = Vec::with_capacity(file.backend.len());
        for (index, entry) in file.backend.iter().enumerate() {
            let name = format!(
                "backend[{index}] (namespace {:?}, kind {})",
                entry.namespace(),
                entry.kind_name()
            );
            let in_entry = |e: BackendError| BackendError::new(e.kind, format!("{name}: {e}"));
            let pattern = Pattern::parse(entry.namespace()).map_err(in_entry)?;
            let backend = build_one(entry).map_err(in_entry)?;
            routes.push(Route { pattern, backend });
        }
        Ok(Backends { routes })
    }

    /// One backend for every repository.
    pub fn single(backend: Arc<dyn Backend>) -> Backends {
        Backends {
            routes: vec![Route {
                pattern: Pattern::any(),
                backend,
            }],
        }
    }

    /// [`Backends::build`], then every backend's [`Backend::check`]: the start-up sequence.
    pub async fn start(file: &BackendsFile) -> Result<Backends, BackendError> {
        let backends = Backends::build(file)?;
        backends.check().await?;
        Ok(backends)
    }

    /// Checks every backend, in order; the first failure names its entry.
    pub async fn check(&self) -> Result<(), BackendError> {
        for (index, route) in self.routes.iter().enumerate() {
            route.backend.check().await.map_err(|e| {
                BackendError::new(
                    e.kind,
                    format!("backend[{index}] (namespace {}): {e}", route.pattern),
                )
            })?;
        }
        Ok(())
    }

    /// The backend for `repository`.
    pub fn for_namespace(&self, repository: &str) -> Result<&Arc<dyn Backend>, BackendError> {
        self.routes
            .iter()
            .find(|route| route.pattern.matches(repository))
            .map(|route| &route.backend)
            .ok_or_else(|| {
                BackendError::new(
                    ErrorKind::NotFound,
                    format!("no backend is configured for repository {repository:?}"),
                )
            })
    }

    pub async fn stat(&self, key: &Key) -> Result<Option<u64>, BackendError> {
        self.for_namespace(key.namespace())?.stat(key).await
    }

    pub async fn get(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BackendError> {
        self.for_namespace(key.namespace())?.get(key, range).await
    }

    pub async fn put(&self, key: &Key, source: PutSource, len: u64) -> Result<(), BackendError> {
        self.for_namespace(key.namespace())?
            .put(key, source, len)
            .await
    }

    pub async fn delete(&self, key: &Key) -> Result<(), BackendError> {
        self.for_namespace(key.namespace())?.delete(key).await
    }

    pub async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        page: PageRequest<'_>,
    ) -> Result<Page, BackendError> {
        self.for_namespace(namespace)?
            .list(namespace, prefix, page)
            .await
    }
}

fn build_one(entry: &BackendEntry) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match entry {
        BackendEntry::Local(c) => Arc::new(local::LocalBackend::new(&c.root)?),
        BackendEntry::S3(c) => Arc::new(object::ObjectBackend::s3(c)?),
        BackendEntry::Gcs(c) => Arc::new(object::ObjectBackend::gcs(c)?),
        BackendEntry::Azure(c) => Arc::new(object::ObjectBackend::azure(c)?),
        BackendEntry::Registry(c) => Arc::new(registry::RegistryBackend::new(c)?),
        BackendEntry::Http(c) => Arc::new(http::HttpBackend::new(c)?),
    })
}

/// Reads a whole (small, bounded) object into memory: tag objects, manifests.
pub async fn read_small(backends: &Backends, key: &Key, max: usize) -> Result<Bytes, BackendError> {
    let mut stream = backends.get(key, None).await?;
    if stream.len() > max as u64 {
        return Err(BackendError::invalid(format!(
            "{key} is {} bytes, more than {max}",
            stream.len()
        )));
    }
    let mut out = bytes::BytesMut::with_capacity(stream.len() as usize);
    while let Some(chunk) = stream.next_chunk().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            return Err(BackendError::invalid(format!("{key} is longer than {max}")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;
