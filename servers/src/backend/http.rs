//! The plain HTTP backend (read-only: `HEAD` and `GET` of `<url>/<key path>`), and what it
//! shares with the registry backend: turning a (possibly ranged) response into a
//! [`ByteStream`], checking a whole blob's digest as it streams, bounded body reads.
//!
//! HTTP and HTTPS go through `reqwest` (with rustls), which `object_store` already brings,
//! on the shared backend runtime: one HTTP client stack for every remote backend. The
//! servers' own client (`http::client`, hyper on compio) stays the data plane's, for
//! plain-HTTP internal APIs.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::{StatusCode, Url, header};
use sha2::Digest as _;
use shoal_proto::types::Digest;

use super::{
    Backend, BackendError, BackendFuture, ByteStream, ErrorKind, Key, Page, PageRequest, PutSource,
    resolve_range, runtime,
};
use crate::config::backends::{HttpConfig, RemoteTuning};

/// Redirects followed for one request.
pub const REDIRECTS_MAX: usize = 5;

/// Idle connections kept per upstream host.
pub const IDLE_CONNECTIONS_PER_HOST_MAX: usize = 8;

/// The reqwest client of a remote backend: timeouts from `tuning`, no overall request
/// timeout (a 100 GB body takes its time), a bounded pool and redirect chain.
pub(crate) fn client(tuning: &RemoteTuning) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .connect_timeout(tuning.connect_timeout)
        .read_timeout(tuning.read_timeout)
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST_MAX)
        .redirect(reqwest::redirect::Policy::limited(REDIRECTS_MAX))
        .build()
        .map_err(|e| BackendError::new(ErrorKind::Config, format!("building an HTTP client: {e}")))
}

/// Parses a base URL (http or https), with a trailing `/` so paths join below it.
pub(crate) fn base_url(text: &str) -> Result<Url, BackendError> {
    let mut url = Url::parse(text)
        .map_err(|e| BackendError::new(ErrorKind::Config, format!("url {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BackendError::new(
            ErrorKind::Config,
            format!("url {text:?}: only http and https are supported"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BackendError::new(
            ErrorKind::Config,
            "url: put no credentials in a URL (use username and password)",
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send>>;

/// What a body stream does on its way: skip the bytes before the range (a server that
/// ignored `Range`), stop after the range, hash a whole blob.
struct Shaping {
    inner: ChunkStream,
    skip: u64,
    left: u64,
    verify: Option<(Hasher, Digest)>,
    what: String,
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(digest: &Digest) -> Hasher {
        match digest {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn matches(self, digest: &Digest) -> bool {
        match self {
            Hasher::Sha256(h) => h.finalize()[..] == *digest.as_bytes(),
            Hasher::Sha512(h) => h.finalize()[..] == *digest.as_bytes(),
        }
    }
}

fn shaped(s: Shaping) -> impl Stream<Item = Result<Bytes, BackendError>> + Send {
    futures_util::stream::unfold(Some(s), |state| async move {
        let mut s = state?;
        loop {
            if s.left == 0 {
                if let Some((hasher, digest)) = s.verify.take()
                    && !hasher.matches(&digest)
                {
                    // The reason first: messages travel on in bounded fields (the tracker
                    // protocol's 256 bytes) and may be cut.
                    let error = BackendError::new(
                        ErrorKind::Corrupt,
                        format!("the upstream's bytes do not match {digest}: {}", s.what),
                    );
                    return Some((Err(error), None));
                }
                return None;
            }
            let mut chunk = match s.inner.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let error = BackendError::unavailable(format!(
                        "{}: the body ended {} bytes early",
                        s.what, s.left
                    ));
                    return Some((Err(error), None));
                }
            };
            if s.skip > 0 {
                let n = s.skip.min(chunk.len() as u64);
                // n <= chunk.len(): fits in usize.
                let _ = chunk.split_to(n as usize);
                s.skip -= n;
            }
            if chunk.is_empty() {
                continue;
            }
            if chunk.len() as u64 > s.left {
                // left < chunk.len(): fits in usize.
                chunk.truncate(s.left as usize);
            }
            s.left -= chunk.len() as u64;
            if let Some((hasher, _)) = &mut s.verify {
                hasher.update(&chunk);
            }
            return Some((Ok(chunk), Some(s)));
        }
    })
}

/// A parsed `Content-Range: bytes a-b/total` (total may be `*`).
fn content_range(headers: &header::HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let text = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = text.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((start.parse().ok()?, end.parse().ok()?, total))
}

/// The `Content-Length` a response declares (reqwest's `content_length` is the body's size,
/// which is 0 for a `HEAD`).
pub(crate) fn declared_len(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `Range` header value for `range` (non-empty).
pub(crate) fn range_header(range: &Range<u64>) -> String {
    format!("bytes={}-{}", range.start, range.end - 1)
}

/// Turns a GET's response into the bytes of `range` (or of the whole object), checking the
/// digest of a whole blob when `verify` names it. Runs on the backend runtime; the result is
/// the length and the (`Send`) stream to hand to [`runtime::stream_from`].
pub(crate) fn body_of(
    response: reqwest::Response,
    key: &Key,
    range: Option<Range<u64>>,
    verify: Option<Digest>,
    what: &str,
) -> Result<(u64, ChunkStream), BackendError> {
    let status = response.status();
    let (skip, len, whole) = match status {
        StatusCode::PARTIAL_CONTENT => {
            let Some((start, end, total)) = content_range(response.headers()) else {
                return Err(BackendError::unavailable(format!(
                    "{what}: a 206 without a valid Content-Range"
                )));
            };
            let asked = range.clone().unwrap_or(0..u64::MAX);
            if start != asked.start || end < start {
                return Err(BackendError::unavailable(format!(
                    "{what}: asked for bytes from {}, got {start}-{end}",
                    asked.start
                )));
            }
            let len = (end - start + 1).min(asked.end - asked.start);
            let whole = start == 0 && total.is_some_and(|t| t == len);
            (0, len, whole)
        }
        StatusCode::OK => {
            let Some(total) = declared_len(&response) else {
                return Err(BackendError::unavailable(format!(
                    "{what}: the response has no Content-Length"
                )));
            };
            let range = if total == 0 && range.is_none() {
                0..0
            } else {
                resolve_range(key, range, total)?
            };
            let whole = range.start == 0 && range.end == total;
            (range.start, range.end - range.start, whole)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return Err(BackendError::invalid(format!(
                "{what}: the range is outside the object (416)"
            )));
        }
        StatusCode::NOT_FOUND => {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("{what}: not found"),
            ));
        }
        status => return Err(status_error(what, status)),
    };
    let what_chunks = what.to_owned();
    let inner: ChunkStream = Box::pin(response.bytes_stream().map(move |chunk| {
        chunk.map_err(|e| BackendError::unavailable(format!("{what_chunks}: {e}")))
    }));
    let verify = verify
        .filter(|_| whole)
        .map(|digest| (Hasher::new(&digest), digest));
    let stream = shaped(Shaping {
        inner,
        skip,
        left: len,
        verify,
        what: what.to_owned(),
    });
    Ok((len, Box::pin(stream)))
}

/// An unexpected status as an error: 5xx and 429 are worth retrying, the rest are not.
pub(crate) fn status_error(what: &str, status: StatusCode) -> BackendError {
    let kind = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        ErrorKind::Unavailable
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        ErrorKind::Config
    } else {
        ErrorKind::Invalid
    };
    BackendError::new(kind, format!("{what}: the upstream answered {status}"))
}

/// A request that failed before a response: unreachable, timed out, reset.
pub(crate) fn send_error(what: &str, e: &reqwest::Error) -> BackendError {
    BackendError::unavailable(format!("{what}: {e}"))
}

/// Reads a whole (small) response body, refusing one longer than `max` bytes.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Bytes, BackendError> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(BackendError::invalid(format!(
            "{what}: the body is longer than {max} bytes"
        )));
    }
    let mut out = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BackendError::unavailable(format!("{what}: {e}")))?
    {
        if out.len() + chunk.len() > max {
            return Err(BackendError::invalid(format!(
                "{what}: the body is longer than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// `kind = "http"`.
#[derive(Debug)]
pub struct HttpBackend {
    inner: Arc<HttpInner>,
}

#[derive(Debug)]
struct HttpInner {
    client: reqwest::Client,
    base: Url,
    describe: String,
}

impl HttpBackend {
    pub fn new(c: &HttpConfig) -> Result<HttpBackend, BackendError> {
        let tuning = c
            .tuning()
            .map_err(|e| BackendError::new(ErrorKind::Config, e))?;
        let base = base_url(&c.url)?;
        Ok(HttpBackend {
            inner: Arc::new(HttpInner {
                client: client(&tuning)?,
                describe: format!("http server {base}"),
                base,
            }),
        })
    }
}

impl HttpInner {
    fn url(&self, key: &Key) -> Result<Url, BackendError> {
        // Key paths are plain segments ([A-Za-z0-9._-]): joining cannot climb out of base.
        self.base
            .join(key.path())
            .map_err(|e| BackendError::invalid(format!("{}: key {key}: {e}", self.describe)))
    }

    fn read_only(&self, op: &str) -> BackendError {
        BackendError::new(
            ErrorKind::Unsupported,
            format!(
                "{}: {op} is not supported (read-only backend)",
                self.describe
            ),
        )
    }
}

impl Backend for HttpBackend {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        Box::pin(async move {
            let url = self.inner.url(key)?;
            let inner = Arc::clone(&self.inner);
            let what = format!("{}: stat {key}", self.inner.describe);
            runtime::run(async move {
                let response = inner
                    .client
                    .head(url)
                    .send()
                    .await
                    .map_err(|e| send_error(&what, &e))?;
                match response.status() {
                    StatusCode::NOT_FOUND => Ok(None),
                    status if status.is_success() => {
                        declared_len(&response).map(Some).ok_or_else(|| {
                            BackendError::unavailable(format!("{what}: no Content-Length"))
                        })
                    }
                    status => Err(status_error(&what, status)),
                }
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        Box::pin(async move {
            let url = self.inner.url(key)?;
            let inner = Arc::clone(&self.inner);
            let what = format!("{}: get {key}", self.inner.describe);
            let key_owned = key.clone();
            let verify = key.as_blob();
            let what_run = what.clone();
            let (len, stream) = runtime::run(async move {
                let mut request = inner.client.get(url);
                if let Some(range) = range.as_ref().filter(|r| !r.is_empty()) {
                    request = request.header(header::RANGE, range_header(range));
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| send_error(&what_run, &e))?;
                body_of(response, &key_owned, range, verify, &what_run)
            })
            .await?;
            runtime::stream_from(len, what, stream)
        })
    }

    fn put<'a>(&'a self, _key: &'a Key, _source: PutSource, _len: u64) -> BackendFuture<'a, ()> {
        Box::pin(async move { Err(self.inner.read_only("put")) })
    }

    fn list<'a>(
        &'a self,
        _namespace: &'a str,
        _prefix: &'a str,
        _page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        Box::pin(async move { Err(self.inner.read_only("list")) })
    }

    fn delete<'a>(&'a self, _key: &'a Key) -> BackendFuture<'a, ()> {
        Box::pin(async move { Err(self.inner.read_only("delete")) })
    }

    fn read_only(&self) -> bool {
        true
    }

    fn check(&self) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let inner = Arc::clone(&self.inner);
            let describe = self.inner.describe.clone();
            runtime::run(async move {
                // Any answer will do: the server is there.
                inner
                    .client
                    .head(inner.base.clone())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        BackendError::new(
                            ErrorKind::Config,
                            format!("{describe} cannot be reached: {e}"),
                        )
                    })
            })
            .await
        })
    }
}
