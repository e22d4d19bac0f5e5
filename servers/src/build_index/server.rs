//! The build-index's internal HTTP API over one [`TagStore`]: what the proxy writes tags
//! through and agents resolve them with.
//!
//! - `GET /internal/tags/<repo>/<tag>` → 200 `{"digest":…,"media_type":…,"version":N}`,
//!   404 `MANIFEST_UNKNOWN` if the tag does not exist.
//! - `PUT /internal/tags/<repo>/<tag>` with `{"digest":…,"media_type":…,
//!   "expected_version":N}` (`expected_version` optional: a compare-and-set, 0 meaning "must
//!   not exist"; body at most [`PUT_BODY_BYTES_MAX`], else 413 `SIZE_INVALID`) → 200 with the
//!   new record's JSON. A conflict is **409 with code `DENIED`** and the detail
//!   `{"expected":N,"current":M|null}`. A malformed body or media type is 400
//!   `MANIFEST_INVALID`, a malformed digest 400 `DIGEST_INVALID`.
//! - `DELETE /internal/tags/<repo>/<tag>` → 202, or 404 `MANIFEST_UNKNOWN`.
//! - `GET /internal/tags/<repo>?n=N&last=T` → 200 `{"name":…,"tags":[…]}`, with
//!   `Link: </internal/tags/<repo>?n=N&last=LAST>; rel="next"` when more follow; 404
//!   `NAME_UNKNOWN` for a repository without tags.
//! - `GET /internal/repositories?n=N&last=R` → 200 `{"repositories":[…]}`, same `Link` rule.
//! - `GET /internal/manifests/<repo>/<digest>` → 200 with the manifest record
//!   `{"digest","media_type","size"?,"subject"?,"artifact_type"?,"annotations"?}` when the
//!   repository holds the manifest, else 404 `MANIFEST_UNKNOWN`.
//! - `PUT /internal/manifests/<repo>/<digest>` with that record (body at most
//!   [`PUT_BODY_BYTES_MAX`]; its `digest` must be the path's) → 200: the repository holds
//!   the manifest and, when it has a `subject`, it is listed as a referrer of it. Invalid
//!   record: 400 `MANIFEST_INVALID`; a subject with
//!   [`REFERRERS_PER_SUBJECT_MAX`](super::REFERRERS_PER_SUBJECT_MAX) referrers already:
//!   403 `DENIED`.
//! - `DELETE /internal/manifests/<repo>/<digest>` → 202 `{"tags":[…],"referrer_removed":b}`:
//!   the repository's tags naming it, its referrer record and its membership are removed;
//!   404 `MANIFEST_UNKNOWN` if the repository neither holds it nor has a tag naming it.
//! - `GET /internal/referrers/<repo>/<subject>` → 200 `{"manifests":[descriptor…]}` (OCI
//!   descriptors, digest order, at most `REFERRERS_PER_SUBJECT_MAX`; none for an unknown
//!   subject).
//!
//! **Which GET is a listing.** Repository names hold `/`, so `GET /internal/tags/a/b` could
//! be tag `b` of `a` or the tags of `a/b`. The rule: a GET is a listing when the request has
//! a query string (`?n=…`, `?last=…`, even a bare `?`), when the path ends with `/`
//! (`/internal/tags/a/b/`: a tag is never empty), or when the path has one segment only;
//! otherwise it is the tag named by the last segment. So a client lists `library/ubuntu`
//! with `GET /internal/tags/library/ubuntu?n=100` (or `…/ubuntu/`), and resolves a tag with
//! no query string.
//!
//! Bad repository names and bad tags are both 400 `NAME_INVALID` (the OCI error table has no
//! tag code); `n` that is not a decimal number is 400 `SIZE_INVALID`. `n` is capped at
//! [`PAGE_LEN_MAX`] (also the default); `n=0` is an empty page.
//!
//! With storage backends ([`BuildIndex::with_backing`], `backing.rs`): tag PUTs and DELETEs
//! (and the tags a manifest DELETE removes) are journaled for the repository's backend
//! before they are answered (503 `UNAVAILABLE` if that cannot be done; nothing changed); a
//! tag GET that misses locally is read back from the backend (503 `UNAVAILABLE` if it cannot
//! be reached, 500 `UNKNOWN` if what it holds is unusable); tag listings include the
//! backend's tags.
//!
//! No cache: every GET reads the store, so a PUT is visible to the very next GET (mutable
//! tags). Every store call runs on compio's blocking pool (`spawn_blocking`): the store does
//! blocking file I/O and fsyncs.

use std::path::Path;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Deserialize;

use shoal_proto::Digest;

use super::backing::{BackedError, Backing};
use super::{
    IndexError, ManifestRecord, PAGE_LEN_MAX, RecoveryReport, TagRecord, TagStore,
    validate_repository, validate_tag,
};
use crate::backend::ErrorKind;
use crate::http::blob::header_value;
use crate::http::route::parse_digest;
use crate::http::{ErrorCode, Handler, LocalBody, OciError, method_not_allowed};

/// Prefix of the tag endpoints.
pub const TAGS_PATH: &str = "/internal/tags/";
/// The catalog endpoint.
pub const REPOSITORIES_PATH: &str = "/internal/repositories";
/// Prefix of the manifest membership endpoints.
pub const MANIFESTS_PATH: &str = "/internal/manifests/";
/// Prefix of the referrers endpoint.
pub const REFERRERS_PATH: &str = "/internal/referrers/";
/// Largest PUT body: a tag record, or a manifest record with annotations of at most
/// [`super::ANNOTATIONS_BYTES_MAX`] bytes.
pub const PUT_BODY_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(PUT_BODY_BYTES_MAX > super::MANIFEST_RECORD_LEN_MAX);

/// The build-index's HTTP handler.
#[derive(Debug, Clone)]
pub struct BuildIndex {
    store: Arc<TagStore>,
    /// The storage backends tags are written through to and read back from (none: the
    /// local store is the only copy).
    backing: Option<Arc<Backing>>,
}

/// An error and the status it is sent with (its code's, but for the few the API fixes
/// apart: 409 for a conflict, 413 for a body too large).
#[derive(Debug)]
struct Failure {
    error: OciError,
    status: StatusCode,
}

impl From<OciError> for Failure {
    fn from(error: OciError) -> Failure {
        let status = error.code.status();
        Failure { error, status }
    }
}

/// The PUT body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutTag {
    digest: String,
    media_type: String,
    #[serde(default)]
    expected_version: Option<u64>,
}

/// What a request names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Tag { repo: &'a str, tag: &'a str },
    Tags { repo: &'a str },
    Repositories,
    Manifest { repo: &'a str, digest: Digest },
    Referrers { repo: &'a str, subject: Digest },
}

/// A listing's query.
#[derive(Debug, Default)]
struct Page<'a> {
    n: Option<usize>,
    last: Option<&'a str>,
}

impl Handler for BuildIndex {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let (parts, body) = request.into_parts();
        match self.route(&parts, body).await {
            Ok(response) => response,
            Err(Failure { error, status }) => {
                if status.is_server_error() {
                    tracing::warn!(method = %parts.method, path = parts.uri.path(), %error, "request failed");
                }
                error.into_response_with_status(status)
            }
        }
    }
}

impl BuildIndex {
    pub fn new(store: Arc<TagStore>) -> BuildIndex {
        BuildIndex {
            store,
            backing: None,
        }
    }

    /// Serves `backing`'s store, writing tags through to its backends and reading missing
    /// ones back from them.
    pub fn with_backing(backing: Arc<Backing>) -> BuildIndex {
        BuildIndex {
            store: Arc::clone(backing.store()),
            backing: Some(backing),
        }
    }

    /// Opens the tag store under `root` (blocking: call it before the runtime starts, or
    /// on a blocking pool) and serves it.
    pub fn open(root: &Path) -> Result<(BuildIndex, RecoveryReport), IndexError> {
        let (store, report) = TagStore::open(root)?;
        Ok((BuildIndex::new(Arc::new(store)), report))
    }

    pub fn store(&self) -> &Arc<TagStore> {
        &self.store
    }

    async fn route(&self, parts: &Parts, body: Incoming) -> Result<Response<LocalBody>, Failure> {
        let method = &parts.method;
        let query = parts.uri.query();
        match endpoint(method, parts.uri.path(), query.is_some())? {
            Endpoint::Tag { repo, tag } => {
                if method == Method::GET {
                    self.get(repo, tag).await
                } else if method == Method::PUT {
                    self.put(repo, tag, &parts.headers, body).await
                } else if method == Method::DELETE {
                    self.delete(repo, tag).await
                } else {
                    Ok(method_not_allowed(method, "GET, PUT, DELETE"))
                }
            }
            Endpoint::Tags { repo } if method == Method::GET => {
                self.list_tags(repo, parse_page(query)?).await
            }
            Endpoint::Repositories if method == Method::GET => {
                self.list_repositories(parse_page(query)?).await
            }
            Endpoint::Manifest { repo, digest } => {
                if method == Method::GET {
                    self.get_manifest(repo, digest).await
                } else if method == Method::PUT {
                    self.put_manifest(repo, digest, &parts.headers, body).await
                } else if method == Method::DELETE {
                    self.delete_manifest(repo, digest).await
                } else {
                    Ok(method_not_allowed(method, "GET, PUT, DELETE"))
                }
            }
            Endpoint::Referrers { repo, subject } if method == Method::GET => {
                self.referrers(repo, subject).await
            }
            Endpoint::Tags { .. } | Endpoint::Repositories | Endpoint::Referrers { .. } => {
                Ok(method_not_allowed(method, "GET"))
            }
        }
    }

    /// Runs `f` on the store in the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TagStore) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, Failure> {
        let store = Arc::clone(&self.store);
        compio::runtime::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| OciError::new(ErrorCode::Unknown, "a tag store task panicked"))?
            .map_err(index_error)
    }

    /// Runs a tag write `f` on the store in the blocking pool, under the write-through
    /// journal when there are backends (`f` marks the tags it changes before changing them;
    /// without backends marking does nothing).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &TagStore,
            &mut dyn FnMut(&str, &str) -> Result<(), IndexError>,
        ) -> Result<T, IndexError>
        + Send
        + 'static,
    ) -> Result<T, Failure> {
        let sync = self.backing.as_ref().map(|b| Arc::clone(b.sync()));
        self.blocking(move |store| match sync {
            Some(sync) => sync.write(|marks| f(store, &mut |repo, tag| marks.mark(repo, tag))),
            None => f(store, &mut |_, _| Ok(())),
        })
        .await
    }

    /// With backends, makes sure a tag missing locally is read back (before a write that
    /// depends on whether it exists).
    async fn read_back(&self, repo: &str, tag: &str) -> Result<(), Failure> {
        if let Some(backing) = &self.backing {
            backing.get(repo, tag).await.map_err(backed_error)?;
        }
        Ok(())
    }

    async fn get(&self, repo: &str, tag: &str) -> Result<Response<LocalBody>, Failure> {
        let (owned_repo, owned_tag) = (repo.to_owned(), tag.to_owned());
        let found = match &self.backing {
            Some(backing) => backing.get(repo, tag).await.map_err(backed_error)?,
            None => {
                self.blocking(move |store| store.get(&owned_repo, &owned_tag))
                    .await?
            }
        };
        match found {
            Some(record) => Ok(json_response(StatusCode::OK, &record_json(&record))),
            None => Err(tag_unknown(repo, tag).into()),
        }
    }

    async fn put(
        &self,
        repo: &str,
        tag: &str,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Response<LocalBody>, Failure> {
        // Names first: a bad name is refused before the body is read.
        validate_repository(repo).map_err(|e| index_error(e.into()))?;
        validate_tag(tag).map_err(|e| index_error(e.into()))?;
        let bytes = read_put_body(headers, body).await?;
        let request: PutTag = serde_json::from_slice(&bytes).map_err(|e| {
            OciError::new(
                ErrorCode::ManifestInvalid,
                format!("the body is not {{\"digest\",\"media_type\",\"expected_version\"?}}: {e}"),
            )
        })?;
        let digest = parse_digest(&request.digest)?;
        if request.expected_version.is_some() {
            // A compare-and-set is against the tag as the backend knows it too (a store
            // that lost its disk reads it back first).
            self.read_back(repo, tag).await?;
        }
        let (owned_repo, owned_tag) = (repo.to_owned(), tag.to_owned());
        let record = self
            .write(move |store, mark| {
                mark(&owned_repo, &owned_tag)?;
                store.put(
                    &owned_repo,
                    &owned_tag,
                    digest,
                    &request.media_type,
                    request.expected_version,
                )
            })
            .await?;
        tracing::info!(repo, tag, digest = %record.digest, version = record.version, "tag put");
        Ok(json_response(StatusCode::OK, &record_json(&record)))
    }

    async fn delete(&self, repo: &str, tag: &str) -> Result<Response<LocalBody>, Failure> {
        // A tag only the backend holds is deleted there too.
        self.read_back(repo, tag).await?;
        let (owned_repo, owned_tag) = (repo.to_owned(), tag.to_owned());
        if self
            .write(move |store, mark| {
                mark(&owned_repo, &owned_tag)?;
                store.delete(&owned_repo, &owned_tag)
            })
            .await?
        {
            tracing::info!(repo, tag, "tag deleted");
            let mut response = Response::new(LocalBody::empty());
            *response.status_mut() = StatusCode::ACCEPTED;
            return Ok(response);
        }
        Err(tag_unknown(repo, tag).into())
    }

    async fn get_manifest(
        &self,
        repo: &str,
        digest: Digest,
    ) -> Result<Response<LocalBody>, Failure> {
        let owned_repo = repo.to_owned();
        match self
            .blocking(move |store| store.manifest(&owned_repo, &digest))
            .await?
        {
            Some(record) => Ok(json_response(StatusCode::OK, &record.to_json())),
            None => Err(manifest_unknown(repo, &digest).into()),
        }
    }

    async fn put_manifest(
        &self,
        repo: &str,
        digest: Digest,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Response<LocalBody>, Failure> {
        let bytes = read_put_body(headers, body).await?;
        let record = ManifestRecord::from_json(&bytes).map_err(|e| {
            OciError::new(
                ErrorCode::ManifestInvalid,
                format!("the body is not a manifest record: {e}"),
            )
        })?;
        if record.digest != digest {
            return Err(OciError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "the record is of {}, the path names {digest}",
                    record.digest
                ),
            )
            .into());
        }
        let (owned_repo, stored) = (repo.to_owned(), record.clone());
        self.blocking(move |store| store.put_manifest(&owned_repo, &stored))
            .await?;
        tracing::info!(repo, %digest, subject = ?record.subject.map(|s| s.to_string()), "manifest recorded");
        Ok(json_response(StatusCode::OK, &record.to_json()))
    }

    async fn delete_manifest(
        &self,
        repo: &str,
        digest: Digest,
    ) -> Result<Response<LocalBody>, Failure> {
        let owned_repo = repo.to_owned();
        let Some(deleted) = self
            .write(move |store, mark| {
                for tag in store.tags_naming(&owned_repo, &digest)? {
                    mark(&owned_repo, &tag)?;
                }
                store.delete_manifest(&owned_repo, &digest)
            })
            .await?
        else {
            return Err(manifest_unknown(repo, &digest).into());
        };
        tracing::info!(repo, %digest, tags = ?deleted.tags, referrer = deleted.referrer_removed,
            "manifest deleted");
        let body = serde_json::json!({
            "tags": deleted.tags,
            "referrer_removed": deleted.referrer_removed,
        });
        Ok(json_response(StatusCode::ACCEPTED, &body))
    }

    async fn referrers(&self, repo: &str, subject: Digest) -> Result<Response<LocalBody>, Failure> {
        let owned_repo = repo.to_owned();
        let referrers = self
            .blocking(move |store| store.referrers(&owned_repo, &subject))
            .await?;
        let manifests: Vec<serde_json::Value> = referrers
            .iter()
            .map(ManifestRecord::descriptor_json)
            .collect();
        let body = serde_json::json!({ "manifests": manifests });
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn list_tags(&self, repo: &str, page: Page<'_>) -> Result<Response<LocalBody>, Failure> {
        validate_repository(repo).map_err(|e| index_error(e.into()))?;
        let (tags, next) = if page.n == Some(0) {
            (Vec::new(), None)
        } else {
            let listed = match &self.backing {
                Some(backing) => backing
                    .list_tags(repo, page.last, page.n)
                    .await
                    .map_err(backed_error)?,
                None => {
                    let owned_repo = repo.to_owned();
                    let last = page.last.map(str::to_owned);
                    let n = page.n;
                    self.blocking(move |store| store.list_tags(&owned_repo, last.as_deref(), n))
                        .await?
                }
            };
            (listed.tags, listed.next)
        };
        let body = serde_json::json!({ "name": repo, "tags": tags });
        let path = format!("{TAGS_PATH}{repo}");
        with_next_link(json_response(StatusCode::OK, &body), &path, page.n, next)
    }

    async fn list_repositories(&self, page: Page<'_>) -> Result<Response<LocalBody>, Failure> {
        let (repositories, next) = if page.n == Some(0) {
            (Vec::new(), None)
        } else {
            let last = page.last.map(str::to_owned);
            let n = page.n;
            let listed = self
                .blocking(move |store| store.list_repositories(last.as_deref(), n))
                .await?;
            (listed.repositories, listed.next)
        };
        let body = serde_json::json!({ "repositories": repositories });
        with_next_link(
            json_response(StatusCode::OK, &body),
            REPOSITORIES_PATH,
            page.n,
            next,
        )
    }
}

/// What `path` names (see the module documentation for the listing rule). Names are
/// checked here, so every handler gets valid ones.
fn endpoint<'a>(method: &Method, path: &'a str, has_query: bool) -> Result<Endpoint<'a>, OciError> {
    if path == REPOSITORIES_PATH {
        return Ok(Endpoint::Repositories);
    }
    for (prefix, referrers) in [(MANIFESTS_PATH, false), (REFERRERS_PATH, true)] {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        let (repo, digest) = rest.rsplit_once('/').unwrap_or(("", rest));
        validate_repository(repo).map_err(name_invalid)?;
        let digest = parse_digest(digest)?;
        return Ok(if referrers {
            Endpoint::Referrers {
                repo,
                subject: digest,
            }
        } else {
            Endpoint::Manifest { repo, digest }
        });
    }
    let Some(rest) = path.strip_prefix(TAGS_PATH) else {
        return Err(OciError::new(
            ErrorCode::NameUnknown,
            format!("no endpoint at {path}"),
        ));
    };
    let listing = |repo: &'a str| {
        validate_repository(repo)
            .map(|()| Endpoint::Tags { repo })
            .map_err(name_invalid)
    };
    if let Some(repo) = rest.strip_suffix('/') {
        return listing(repo);
    }
    match rest.rsplit_once('/') {
        Some((repo, tag)) if !(method == Method::GET && has_query) => {
            validate_repository(repo).map_err(name_invalid)?;
            validate_tag(tag).map_err(name_invalid)?;
            Ok(Endpoint::Tag { repo, tag })
        }
        _ => listing(rest),
    }
}

/// `n` and `last` from a query string; other keys are ignored.
fn parse_page(query: Option<&str>) -> Result<Page<'_>, OciError> {
    let mut page = Page::default();
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "n" => {
                let n = value.parse::<usize>().map_err(|_| {
                    OciError::new(
                        ErrorCode::SizeInvalid,
                        format!("n={value:?} is not a page length"),
                    )
                })?;
                page.n = Some(n.min(PAGE_LEN_MAX));
            }
            "last" if !value.is_empty() => page.last = Some(value),
            _ => {}
        }
    }
    Ok(page)
}

/// Adds `Link: <path?n=N&last=NEXT>; rel="next"` when `next` is set.
fn with_next_link(
    mut response: Response<LocalBody>,
    path: &str,
    n: Option<usize>,
    next: Option<String>,
) -> Result<Response<LocalBody>, Failure> {
    if let Some(next) = next {
        let n = n.unwrap_or(PAGE_LEN_MAX);
        let link = format!("<{path}?n={n}&last={next}>; rel=\"next\"");
        response.headers_mut().insert(LINK, header_value(link)?);
    }
    Ok(response)
}

fn record_json(record: &TagRecord) -> serde_json::Value {
    serde_json::json!({
        "digest": record.digest.to_string(),
        "media_type": record.media_type,
        "version": record.version,
    })
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<LocalBody> {
    let mut response = Response::new(LocalBody::full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A PUT body: refused before it is read when its declared length is past
/// [`PUT_BODY_BYTES_MAX`], and while it is read past it.
async fn read_put_body(headers: &http::HeaderMap, body: Incoming) -> Result<Vec<u8>, Failure> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > PUT_BODY_BYTES_MAX as u64) {
        return Err(body_too_large());
    }
    read_bounded(body).await
}

/// Reads a body of at most [`PUT_BODY_BYTES_MAX`] bytes.
async fn read_bounded(mut body: Incoming) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            OciError::new(
                ErrorCode::SizeInvalid,
                format!("the body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > PUT_BODY_BYTES_MAX {
                return Err(body_too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn body_too_large() -> Failure {
    Failure {
        error: OciError::new(
            ErrorCode::SizeInvalid,
            format!("a tag or manifest record body is at most {PUT_BODY_BYTES_MAX} bytes"),
        ),
        status: StatusCode::PAYLOAD_TOO_LARGE,
    }
}

fn tag_unknown(repo: &str, tag: &str) -> OciError {
    OciError::new(
        ErrorCode::ManifestUnknown,
        format!("{repo}:{tag} is not tagged"),
    )
    .with_detail(serde_json::json!({ "name": repo, "tag": tag }))
}

fn manifest_unknown(repo: &str, digest: &Digest) -> OciError {
    OciError::new(
        ErrorCode::ManifestUnknown,
        format!("{repo} holds no manifest {digest}"),
    )
    .with_detail(serde_json::json!({ "name": repo, "digest": digest.to_string() }))
}

fn name_invalid(error: super::NameError) -> OciError {
    OciError::new(ErrorCode::NameInvalid, error.to_string())
}

/// A backed read's failures: the store's as below, a backend's as 503 `UNAVAILABLE` (it
/// may come back) or, for what the backend holds that cannot be used (a tag object that is
/// not a digest, a manifest that does not hash to it), 502-like `UNKNOWN` (500).
fn backed_error(error: BackedError) -> Failure {
    match error {
        BackedError::Index(error) => index_error(error),
        BackedError::Backend(error) => {
            let code = match error.kind {
                ErrorKind::Invalid
                | ErrorKind::Unsupported
                | ErrorKind::Config
                | ErrorKind::Corrupt => ErrorCode::Unknown,
                ErrorKind::NotFound | ErrorKind::Unavailable => ErrorCode::Unavailable,
            };
            OciError::new(code, format!("storage backend: {error}")).into()
        }
    }
}

/// The tag store's failures as OCI errors (the one place they are mapped).
fn index_error(error: IndexError) -> Failure {
    let code = match &error {
        IndexError::Name(_) => ErrorCode::NameInvalid,
        IndexError::MediaType(_) => ErrorCode::ManifestInvalid,
        IndexError::Conflict {
            expected, current, ..
        } => {
            let detail = serde_json::json!({ "expected": expected, "current": current });
            return Failure {
                error: OciError::new(ErrorCode::Denied, error.to_string()).with_detail(detail),
                status: StatusCode::CONFLICT,
            };
        }
        IndexError::RepositoryUnknown { .. } => ErrorCode::NameUnknown,
        IndexError::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
        IndexError::TooManyReferrers { .. } => ErrorCode::Denied,
        IndexError::Poisoned | IndexError::Journal { .. } => ErrorCode::Unavailable,
        IndexError::Corrupt { .. }
        | IndexError::CorruptManifest { .. }
        | IndexError::Io { .. }
        | IndexError::Locked { .. }
        | IndexError::VersionsExhausted => ErrorCode::Unknown,
    };
    OciError::new(code, error.to_string()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(
        method: Method,
        path: &str,
        has_query: bool,
        expected: Result<Endpoint<'_>, ErrorCode>,
    ) {
        let parsed = endpoint(&method, path, has_query).map_err(|e| e.code);
        assert_eq!(parsed, expected, "{method} {path} query={has_query}");
    }

    #[test]
    fn endpoints() {
        use Endpoint::*;
        check(
            Method::GET,
            "/internal/repositories",
            true,
            Ok(Repositories),
        );
        check(
            Method::GET,
            "/internal/tags/a/b/latest",
            false,
            Ok(Tag {
                repo: "a/b",
                tag: "latest",
            }),
        );
        check(
            Method::PUT,
            "/internal/tags/a/b/latest",
            true,
            Ok(Tag {
                repo: "a/b",
                tag: "latest",
            }),
        );
        check(
            Method::GET,
            "/internal/tags/a/b",
            true,
            Ok(Tags { repo: "a/b" }),
        );
        check(
            Method::GET,
            "/internal/tags/a/b/",
            false,
            Ok(Tags { repo: "a/b" }),
        );
        check(
            Method::GET,
            "/internal/tags/a",
            false,
            Ok(Tags { repo: "a" }),
        );
        check(
            Method::PUT,
            "/internal/tags/a",
            false,
            Ok(Tags { repo: "a" }),
        );
        check(
            Method::GET,
            "/internal/tags/A/latest",
            false,
            Err(ErrorCode::NameInvalid),
        );
        check(
            Method::GET,
            "/internal/tags/a/-x",
            false,
            Err(ErrorCode::NameInvalid),
        );
        check(
            Method::GET,
            "/internal/tags/a/../b/x",
            false,
            Err(ErrorCode::NameInvalid),
        );
        check(
            Method::GET,
            "/internal/tags/",
            false,
            Err(ErrorCode::NameInvalid),
        );
        check(
            Method::GET,
            "/internal/other",
            false,
            Err(ErrorCode::NameUnknown),
        );
        check(Method::GET, "/v2/", false, Err(ErrorCode::NameUnknown));

        let digest = Digest::sha256_of(b"m");
        let sha = digest.to_string();
        check(
            Method::PUT,
            &format!("/internal/manifests/a/b/{sha}"),
            false,
            Ok(Manifest {
                repo: "a/b",
                digest,
            }),
        );
        check(
            Method::GET,
            &format!("/internal/referrers/a/{sha}"),
            true,
            Ok(Referrers {
                repo: "a",
                subject: digest,
            }),
        );
        for bad_name in [
            format!("/internal/manifests/{sha}"),
            format!("/internal/manifests/../a/{sha}"),
            format!("/internal/referrers/a//{sha}"),
            format!("/internal/referrers/a/%2e%2e/{sha}"),
        ] {
            check(Method::GET, &bad_name, false, Err(ErrorCode::NameInvalid));
        }
        for bad_digest in [
            "/internal/manifests/a/latest",
            "/internal/manifests/a/sha256:00",
            "/internal/referrers/a/",
            "/internal/referrers/a/..",
        ] {
            check(
                Method::GET,
                bad_digest,
                false,
                Err(ErrorCode::DigestInvalid),
            );
        }
    }

    #[test]
    fn pages() {
        let page = parse_page(Some("n=5&last=v1")).unwrap();
        assert_eq!((page.n, page.last), (Some(5), Some("v1")));
        let page = parse_page(Some("n=999999&x=y")).unwrap();
        assert_eq!((page.n, page.last), (Some(PAGE_LEN_MAX), None));
        let page = parse_page(None).unwrap();
        assert_eq!((page.n, page.last), (None, None));
        assert_eq!(
            parse_page(Some("n=x")).unwrap_err().code,
            ErrorCode::SizeInvalid
        );
        assert_eq!(
            parse_page(Some("n=-1")).unwrap_err().code,
            ErrorCode::SizeInvalid
        );
    }
}
